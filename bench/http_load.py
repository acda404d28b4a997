"""Over HTTP: gunicorn sync with 1 and 4 workers and gthread with 2 workers of 4 threads,
and a load generator in other processes."""

from __future__ import annotations

import http.client
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .workload import BARE, OURS, Mix, create_app, reset_tables, shown

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(port: int, path: str, body: bytes, headers: dict[str, str]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{path} answered {response.status}")
    finally:
        connection.close()


#: The most a closed-loop load can post, all clients together (ev/s): what each client
#: signs beforehand. Well above any server's rate here; a client that runs out stops early
#: and its own elapsed time keeps the rate right.
CEILING = 4000

Job = tuple[int, str, str, float, float, int]


def _client(job: Job, ready: Any, results: Any) -> None:
    """One load-generator process: closed loop (rate 0) or open loop at ``rate`` ev/s.

    Its events are made and signed first, then it waits for every other client (a
    barrier), so no client's preparation eats into another's measured time.
    """
    port, path, prefix, duration, rate, count = job
    deliveries = Mix(prefix=prefix, seed=hash(prefix) % 1000).batch(count)
    ready.wait()
    start = time.time()
    done, latencies = 0, []
    for index, (body, headers) in enumerate(deliveries):
        scheduled = start + index / rate if rate else time.time()
        if scheduled > start + duration:
            break
        if rate:
            delay = scheduled - time.time()
            if delay > 0:
                time.sleep(delay)
        _post(port, path, body, headers)
        latencies.append(time.time() - scheduled)
        done += 1
        if time.time() > start + duration:
            break
    results.put((done, latencies, time.time() - start))


def load(
    port: int, path: str, clients: int, duration: float, rate: float = 0.0
) -> tuple[float, list[float]]:
    """Events/s and latencies of ``clients`` processes posting to ``path`` for ``duration`` s."""
    context = multiprocessing.get_context("fork")
    ready, results = context.Barrier(clients), context.Queue()
    per_client = int((rate or CEILING) / clients * duration) + 10
    jobs: list[Job] = [
        (port, path, f"h{os.getpid()}-{time.monotonic_ns()}-{n}", duration, rate / clients,
         per_client)
        for n in range(clients)
    ]  # fmt: skip
    processes = [context.Process(target=_client, args=(job, ready, results)) for job in jobs]
    for process in processes:
        process.start()
    finished = [results.get(timeout=duration + 120) for _ in processes]
    for process in processes:
        process.join()
    done = sum(count for count, _, _ in finished)
    elapsed = duration if rate else max(duration, *(took for _, _, took in finished))
    return done / elapsed, sorted(lat for _, lats, _ in finished for lat in lats)


def _percentile(values: list[float], fraction: float) -> float:
    return values[min(len(values) - 1, int(fraction * len(values)))] if values else float("nan")


#: (label, gunicorn options, workers x threads): the sync worker a process per request at a
#: time, and gthread, whose threads share one process's engine and pool.
SERVERS = (
    ("sync 1 worker", ["--workers", "1"], 1),
    ("sync 4 workers", ["--workers", "4"], 4),
    ("gthread 2x4", ["--workers", "2", "--worker-class", "gthread", "--threads", "4"], 8),
)


def run(name: str, url: str, workdir: Path, *, quick: bool, target: Callable[..., None]) -> None:
    """Peak rate (closed loop, ours and the bare minimum alternating), then p99 at half of it.

    ``--quick`` takes four turns of 1 s instead of eight of 2.5 s.
    """
    duration = 2.0 if quick else 5.0
    # Short turns in the order ours, bare, bare, ours, ...: a slow spell of a shared
    # machine (seconds long) falls on both alike, and neither always goes first.
    turn = 1.0 if quick else 2.5
    alternation = [OURS, BARE, BARE, OURS] * (1 if quick else 2)
    for label, options, concurrency in SERVERS:
        app = create_app(url)
        reset_tables(app)
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()
        port = _free_port()
        log_path = workdir / f"gunicorn-{name}-{label.replace(' ', '-')}.log"
        log = log_path.open("w")
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                *options,
                "--bind",
                f"127.0.0.1:{port}",
                "--backlog",
                "2048",
                "bench.workload:create_app()",
            ],
            cwd=ROOT,
            env={**os.environ, "BENCH_DATABASE_URL": url},
            stdout=log,
            stderr=log,
        )
        try:
            _wait_for(port)
            clients = min(2 * concurrency + 2, 10)
            # Gunicorn listens before its workers have loaded the app: the first load
            # would time their start-up (seconds on a busy machine), not the app.
            for path in (OURS, BARE):
                load(port, path, clients, 1.0)
            rates: dict[str, list[float]] = {OURS: [], BARE: []}
            for path in alternation:
                rates[path].append(load(port, path, clients, turn)[0])
            ours, bare = (sum(rates[p]) / len(rates[p]) for p in (OURS, BARE))
            ratio = ours / bare if bare else 0.0
            print(
                f"  http {name:<12} {label:<15} ours {ours:7.0f} ev/s   bare minimum "
                f"{bare:7.0f} ev/s   ratio {ratio:.2f}",
                flush=True,
            )
            target(
                f"http {name}, {label}: ours >= 0.90x bare minimum",
                ratio >= 0.90,
                shown(ratio, 0.90),
            )
            _, latencies = load(port, OURS, clients, duration, rate=ours / 2)
            p50, p99 = _percentile(latencies, 0.5) * 1000, _percentile(latencies, 0.99) * 1000
            target(
                f"http {name}, {label}: p99 < 50 ms at half the peak rate ({ours / 2:.0f} ev/s)",
                p99 < 50,
                f"p50 {p50:.1f} ms, p99 {p99:.1f} ms",
            )
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
            log.close()
        text = log_path.read_text()
        if "Traceback" in text or "database is locked" in text:
            print(f"  !!! errors in the server log:\n{text[-2000:]}")


def _wait_for(port: int) -> Any:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            time.sleep(0.5)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("gunicorn did not start")
