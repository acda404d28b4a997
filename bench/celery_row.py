"""The Celery row of ``make bench``: the webhook's acknowledgement in celery mode (its peak
rate against inline mode's, and its p99 at half that peak), and the rate at which 1 and 2
Celery workers apply a queued burst, on PostgreSQL and the machine's Redis.

``celery -A bench.celery_row worker`` is the workers' app (BENCH_* in the environment).
"""

from __future__ import annotations

import gc
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from celery import Celery, Task
from flask import Flask

from .workload import BARE_ACK, OURS, Mix, create_app, reset_tables

ROOT = Path(__file__).resolve().parents[1]
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def celery_app_for(app: Flask, queue: str) -> Celery:
    class FlaskTask(Task):  # type: ignore[type-arg]
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery("bench", task_cls=FlaskTask)
    celery_app.conf.update(
        broker_url=REDIS, task_default_queue=queue, task_ignore_result=True,
        worker_prefetch_multiplier=4,
    )  # fmt: skip
    app.extensions["partnerstack_stripe"].extension.init_celery(celery_app)
    return celery_app


def celery_mode_app(url: str, queue: str) -> Flask:
    app = create_app(url, PARTNERSTACK_STRIPE_PROCESSING="celery")
    app.extensions["celery"] = celery_app_for(app, queue)
    return app


def paced_p99(client: Any, batch: list[tuple[bytes, dict[str, str]]], rate: float) -> float:
    """The p99 latency in milliseconds of posts sent at ``rate`` ev/s (open loop).

    Each latency runs from the post's scheduled time, so a post that waits for a slow one
    before it counts that wait too, as a sender at a steady rate would see it.
    """
    times = []
    # As before every timed run here: a full collection this process is due for, of the
    # load generator's objects as much as the server's, does not land inside the run.
    gc.collect()
    start = time.perf_counter()
    for index, (body, headers) in enumerate(batch):
        scheduled = start + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        response = client.post(OURS, data=body, headers=headers)
        times.append(time.perf_counter() - scheduled)
        if response.status_code != 200:
            raise RuntimeError(f"answered {response.status_code}: {response.data[:200]!r}")
    return statistics.quantiles(times, n=100)[98] * 1000


def count_received(app: Flask) -> int:
    with app.app_context():
        db = app.extensions["sqlalchemy"]
        WebhookEvent = app.extensions["partnerstack_stripe"].models.WebhookEvent
        left = db.session.scalar(
            sa.select(sa.func.count()).where(WebhookEvent.status == "received")
        )
        db.session.remove()
        return int(left or 0)


def applied_rate(url: str, events: int, workers: int) -> float:
    """Queue ``events`` with no worker running, then time ``workers`` workers applying them."""
    queue = f"bench-{uuid.uuid4().hex[:10]}"
    app = celery_mode_app(url, queue)
    reset_tables(app)
    client = app.test_client()
    posted(client, Mix(prefix=f"applied-{queue}").batch(events))
    app.extensions["partnerstack_stripe"].publisher.flush(60)  # all in the queue first
    env = {**os.environ, "BENCH_DATABASE_URL": url, "BENCH_QUEUE": queue, "PYTHONPATH": str(ROOT)}
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.celery_row",
                "worker",
                "--pool",
                "solo",
                "-Q",
                queue,
                "-n",
                f"bench{n}-{queue}@%h",
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
                "-l",
                "WARNING",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n in range(workers)
    ]
    start = time.perf_counter()
    try:
        while count_received(app) > 0:
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=15)
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()
    # Includes the workers' start (about a second): a conservative figure.
    return events / elapsed


def posted(client: Any, batch: list[tuple[bytes, dict[str, str]]], path: str = OURS) -> list[float]:
    """Each post's latency in seconds."""
    times = []
    for body, headers in batch:
        before = time.perf_counter()
        response = client.post(path, data=body, headers=headers)
        times.append(time.perf_counter() - before)
        if response.status_code != 200:
            raise RuntimeError(f"answered {response.status_code}: {response.data[:200]!r}")
    return times


#: Inline and celery mode take turns, this many events each, so that both rates see the
#: same machine: on a shared one, the load moves between two runs a minute apart more
#: than the ratio the target is about.
ROUND = 50


def run(url: str, quick: bool, target: Callable[[str, bool, str], None]) -> None:
    events = 300 if quick else 1000
    inline = create_app(url)
    queued = celery_mode_app(url, f"bench-ack-{uuid.uuid4().hex[:10]}")
    reset_tables(inline)  # one database: the same tables for both apps
    inline_client, client = inline.test_client(), queued.test_client()
    publisher = queued.extensions["partnerstack_stripe"].publisher
    posted(inline_client, Mix(prefix="inline-warm").batch(ROUND))  # both warm
    posted(client, Mix(prefix="queued-warm").batch(ROUND))
    publisher.flush(60)
    posted(client, Mix(prefix="floor-warm").batch(ROUND), BARE_ACK)
    inline_batch = Mix(prefix="inline").batch(events)  # the same mix (same seed) for all
    queued_batch = Mix(prefix="queued").batch(events)
    floor_batch = Mix(prefix="floor").batch(events)
    inline_times: list[float] = []
    inline_elapsed = elapsed = answering = floor_elapsed = 0.0
    for first in range(0, events, ROUND):
        gc.collect()  # before each of the three, as the in-process rows do
        # The floor: the least an acknowledgement does (the signature, one durable insert
        # of the event with its payload).
        start = time.perf_counter()
        posted(client, floor_batch[first : first + ROUND], BARE_ACK)
        floor_elapsed += time.perf_counter() - start
        gc.collect()
        start = time.perf_counter()
        inline_times += posted(inline_client, inline_batch[first : first + ROUND])
        inline_elapsed += time.perf_counter() - start
        gc.collect()
        start = time.perf_counter()
        posted(client, queued_batch[first : first + ROUND])
        answering += time.perf_counter() - start
        # The rate counts until every message is published, not only answered: the
        # publisher's queue would otherwise hide publishes not yet paid for (and make
        # the next inline round pay for them).
        publisher.flush(60)
        elapsed += time.perf_counter() - start
    inline_rate, rate, answered = events / inline_elapsed, events / elapsed, events / answering
    floor = events / floor_elapsed
    inline_p99 = statistics.quantiles(inline_times, n=100)[98] * 1000
    with inline.app_context():
        inline.extensions["sqlalchemy"].engine.dispose()
    p99 = paced_p99(client, Mix(prefix="paced").batch(events // 2), rate / 2)
    publisher.flush(60)
    queued.extensions["celery"].control.purge()  # no worker will ever take these
    with queued.app_context():
        queued.extensions["sqlalchemy"].engine.dispose()
    print(
        f"  celery postgresql  acknowledged {rate:6.0f} ev/s (answered {answered:.0f} ev/s,"
        f" published after), p99 {p99:5.1f} ms at {rate / 2:.0f} ev/s   inline"
        f" {inline_rate:6.0f} ev/s p99 {inline_p99:5.1f} ms",
        flush=True,
    )
    print(
        f"  celery postgresql  the least an acknowledgement can cost here (the signature and"
        f" one durable insert of the event, nothing published): {floor:6.0f} ev/s,"
        f" {floor / inline_rate:.2f}x the inline rate",
        flush=True,
    )
    target(
        "celery postgresql: webhook acknowledgement >= 2x the inline rate",
        rate >= 2 * inline_rate,
        f"{rate / inline_rate:.2f}x ({rate:.0f} vs {inline_rate:.0f} ev/s; floor"
        f" {floor / inline_rate:.2f}x)",
    )
    target(
        f"celery postgresql: acknowledgement p99 < 20 ms at half the peak rate"
        f" ({rate / 2:.0f} ev/s)",
        p99 < 20,
        f"{p99:.1f} ms",
    )
    one = applied_rate(url, events, 1)
    two = applied_rate(url, events, 2)
    print(f"  celery postgresql  applied by 1 worker {one:6.0f} ev/s, by 2 {two:6.0f} ev/s")


if os.environ.get("BENCH_QUEUE"):  # a worker's process
    flask_app = celery_mode_app(os.environ["BENCH_DATABASE_URL"], os.environ["BENCH_QUEUE"])
    celery = flask_app.extensions["celery"]
