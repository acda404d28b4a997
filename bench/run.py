"""``make bench``: our webhook against the bare minimum, in-process and over HTTP, with targets.

python -m bench.run [--quick]

Prints one line per measurement and one per target (PASS / MISS). Nothing here is a test:
the figures depend on the machine; the README keeps a table from a recent run.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from . import http_load
from .workload import BARE, OURS, Mix, create_app, reset_tables, seed_transactions

#: The PostgreSQL server; the benchmark uses (and creates) a database of its own there, so a
#: test run on the same server (each test session has its own database too) never meets it.
POSTGRES_URL = os.environ.get(
    "PARTNERSTACK_BENCH_POSTGRES_URL",
    "postgresql+psycopg://root@127.0.0.1:5432/partnerstack_bench",
)
#: The MariaDB/MySQL server; the benchmark uses (and creates) a database of its own there.
MARIADB_URL = os.environ.get(
    "PARTNERSTACK_BENCH_MARIADB_URL",
    "mysql+pymysql://root@127.0.0.1:3306/partnerstack_bench?charset=utf8mb4",
)
TARGETS: list[tuple[str, bool, str]] = []


def target(name: str, passed: bool, measured: str) -> None:
    TARGETS.append((name, passed, measured))
    print(f"  TARGET {'PASS' if passed else 'MISS'}  {name}: {measured}", flush=True)


def postgres_available() -> bool:
    url = sa.make_url(POSTGRES_URL)
    try:
        engine = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            exists = connection.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                {"name": url.database},
            ).first()
            if exists is None:
                connection.exec_driver_sql(f'CREATE DATABASE "{url.database}"')
        engine.dispose()
        return True
    except Exception:
        return False


def mariadb_available() -> bool:
    url = sa.make_url(MARIADB_URL)
    try:
        engine = sa.create_engine(url.set(database="mysql"))
        with engine.connect() as connection:
            connection.exec_driver_sql(
                f"CREATE DATABASE IF NOT EXISTS `{url.database}` CHARACTER SET utf8mb4"
            )
        engine.dispose()
        return True
    except Exception:
        return False


def backends(workdir: Path) -> dict[str, str]:
    found = {"sqlite-memory": "sqlite://", "sqlite-file": f"sqlite:///{workdir / 'bench.db'}"}
    if postgres_available():
        found["postgresql"] = POSTGRES_URL
    else:
        print("!!! PostgreSQL unreachable: its rows are missing from this run")
    if mariadb_available():
        found["mariadb"] = MARIADB_URL
    else:
        print("!!! MariaDB unreachable: its rows are missing from this run")
    return found


def post_all(client: Any, path: str, batch: list[tuple[bytes, dict[str, str]]]) -> float:
    start = time.perf_counter()
    for body, headers in batch:
        response = client.post(path, data=body, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.data[:200]!r}")
    return time.perf_counter() - start


def in_process(name: str, url: str, rounds: int, per_round: int) -> None:
    app = create_app(url)
    reset_tables(app)
    client = app.test_client()
    mix = Mix(prefix=f"{name}-warm")
    warm = mix.batch(300)
    post_all(client, OURS, warm)
    post_all(client, BARE, warm)
    times = {OURS: 0.0, BARE: 0.0}
    for round_number in range(rounds):  # alternate, the same events for both
        batch = Mix(prefix=f"{name}-{round_number}", seed=round_number).batch(per_round)
        order = (OURS, BARE) if round_number % 2 == 0 else (BARE, OURS)
        for path in order:
            gc.collect()
            times[path] += post_all(client, path, batch)
    total = rounds * per_round
    ours, bare = total / times[OURS], total / times[BARE]
    print(
        f"  in-process {name:<14} ours {ours:8.0f} ev/s   bare minimum {bare:8.0f} ev/s"
        f"   ratio {ours / bare:.2f}",
        flush=True,
    )
    target(
        f"in-process {name}: ours >= 0.75x bare minimum", ours / bare >= 0.75, f"{ours / bare:.2f}x"
    )

    # A redelivery is answered from the unique event id alone.
    fresh = Mix(prefix=f"{name}-redeliver", seed=99)
    fresh.customer()
    new_events = [fresh.charge() for _ in range(per_round)]
    new_time = post_all(client, OURS, new_events)
    again_time = post_all(client, OURS, new_events)
    speedup = new_time / again_time
    rates = f"{len(new_events) / again_time:.0f} vs {len(new_events) / new_time:.0f} ev/s"
    target(
        f"in-process {name}: redelivery >= 2x faster than a new event",
        speedup >= 2,
        f"{speedup:.2f}x ({rates})",
    )

    if name != "sqlite-memory":
        scale(app, client, name, per_round)
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()


def scale(app: Any, client: Any, name: str, per_round: int) -> None:
    """Throughput with a million stored transactions against a thousand."""

    def rate() -> float:
        batch = Mix(prefix=f"{name}-scale-{time.monotonic_ns()}").batch(per_round)
        return per_round / post_all(client, OURS, batch)

    reset_tables(app)
    seed_transactions(app, 1_000)
    small = statistics.median(rate() for _ in range(3))
    seed_transactions(app, 1_000_000)
    large = statistics.median(rate() for _ in range(3))
    change = large / small - 1
    target(
        f"in-process {name}: 1,000,000 stored transactions within 10% of 1,000",
        change >= -0.10,
        f"{small:.0f} -> {large:.0f} ev/s ({change:+.1%})",
    )


def memory(url: str, events: int) -> None:
    """Resident memory of one process over ``events`` events (after a warm-up)."""
    app = create_app(url)
    reset_tables(app)
    client = app.test_client()
    mix = Mix(prefix="memory")
    post_all(client, OURS, mix.batch(5_000))
    gc.collect()
    before = rss_mb()
    done = 0
    while done < events:
        post_all(client, OURS, mix.batch(5_000))
        done += 5_000
    gc.collect()
    growth = rss_mb() - before
    target(f"memory over {events:,} events (sqlite-file)", growth < 20, f"{growth:+.1f} MB")
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(label: str, step: Callable[[], None]) -> None:
    start = time.monotonic()
    step()
    print(f"  ({label}: {time.monotonic() - start:.0f} s)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="Smaller runs, for a first look.")
    args = parser.parse_args()
    rounds, per_round = (2, 300) if args.quick else (6, 1000)
    print(
        f"flask-partnerstack-stripe benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(
        f"  {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, SQLAlchemy {sa.__version__}"
    )
    with tempfile.TemporaryDirectory() as workdir:
        urls = backends(Path(workdir))
        for name, url in urls.items():
            timed(f"in-process {name}", lambda n=name, u=url: in_process(n, u, rounds, per_round))
        timed("memory", lambda: memory(urls["sqlite-file"], 20_000 if args.quick else 100_000))
        for name in ("sqlite-file", "postgresql", "mariadb"):
            if name in urls:
                timed(
                    f"http {name}",
                    lambda n=name: http_load.run(
                        n, urls[n], Path(workdir), quick=args.quick, target=target
                    ),
                )
        if "postgresql" in urls:
            from . import celery_row

            timed(
                "celery postgresql",
                lambda: celery_row.run(urls["postgresql"], args.quick, target),
            )
    missed = [name for name, passed, _ in TARGETS if not passed]
    print(f"\n{len(TARGETS) - len(missed)} of {len(TARGETS)} targets hold.")
    for name in missed:
        print(f"  MISS: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
