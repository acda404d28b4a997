"""``make bench``: our webhook against the bare minimum, in-process and over HTTP, with targets.

python -m bench.run [--quick] [--only SECTION ...] [--markdown PATH]

Prints one line per measurement and one per target (PASS / MISS), then every target as a
markdown table (also written to PATH) with the machine and versions it ran on, and the SQL
round-trip tables. Nothing here is a test: the figures depend on the machine; the README
keeps a table from a recent run.

Sections (``--only``, repeatable): in-process, roundtrips, scale, memory, http, celery.
On an idle 2-core machine the whole run takes about 20 minutes (memory, 100,000 events on
each server, is the longest part) and ``--quick`` about 5; each section prints its time.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from . import http_load, roundtrips, scale
from .workload import (
    BARE,
    BARE_LEAST,
    BARE_OUTBOX,
    BARE_REWARDS,
    OURS,
    Mix,
    create_app,
    reset_tables,
    shown,
)

SECTIONS = ("in-process", "roundtrips", "scale", "memory", "http", "celery")

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
#: The database servers' versions, for the summary's header line.
VERSIONS: dict[str, str] = {}


def target(name: str, passed: bool, measured: str) -> None:
    TARGETS.append((name, passed, measured))
    print(f"  TARGET {'PASS' if passed else 'MISS'}  {name}: {measured}", flush=True)


def create_database(url: sa.URL) -> str:
    """Create the database ``url`` names when its server lacks it; the server's version."""
    if url.get_backend_name() == "postgresql":
        engine = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            exists = connection.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                {"name": url.database},
            ).first()
            if exists is None:
                connection.exec_driver_sql(f'CREATE DATABASE "{url.database}"')
            version = connection.exec_driver_sql("SHOW server_version").scalar()
    else:  # MariaDB or MySQL
        engine = sa.create_engine(url.set(database="mysql"))
        with engine.connect() as connection:
            connection.exec_driver_sql(
                f"CREATE DATABASE IF NOT EXISTS `{url.database}` CHARACTER SET utf8mb4"
            )
            version = connection.exec_driver_sql("SELECT VERSION()").scalar()
    engine.dispose()
    return str(version)


def postgres_available() -> bool:
    try:
        VERSIONS["PostgreSQL"] = create_database(sa.make_url(POSTGRES_URL))
        return True
    except Exception:
        return False


def mariadb_available() -> bool:
    try:
        VERSIONS["MariaDB"] = create_database(sa.make_url(MARIADB_URL))
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


def larger_twin(name: str, url: str, workdir: Path) -> str:
    """A second database on ``url``'s server, for the scale row's million rows (created
    when missing: ``partnerstack_bench_large`` beside ``partnerstack_bench``)."""
    if name == "sqlite-file":
        return f"sqlite:///{workdir / 'bench-large.db'}"
    twin = sa.make_url(url)
    twin = twin.set(database=f"{twin.database}_large")
    create_database(twin)
    return twin.render_as_string(hide_password=False)


def post_all(client: Any, path: str, batch: list[tuple[bytes, dict[str, str]]]) -> float:
    start = time.perf_counter()
    for body, headers in batch:
        response = client.post(path, data=body, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.data[:200]!r}")
    return time.perf_counter() - start


def dispose(app: Any) -> None:
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()


#: Events a path posts before the next path takes its turn: short turns, so that a slow
#: spell of a shared machine (seconds long) falls on every path alike.
TURN = 100


def compare(
    app: Any, name: str, rounds: int, per_round: int, floor: str | None = None
) -> tuple[float, float, float | None]:
    """Ours and the bare minimum in ev/s, taking turns of :data:`TURN` events on the same
    events; and the ``floor`` route's rate, if given, on events of the same kinds in the
    same order under ids of their own (it shares the bare minimum's event table)."""
    client = app.test_client()
    paths = [OURS, BARE, *([floor] if floor else [])]
    for path in paths:
        post_all(client, path, Mix(prefix=f"{name}-warm-{path}").batch(min(300, per_round)))
    times = dict.fromkeys(paths, 0.0)
    turn = 0
    for round_number in range(rounds):
        batch = Mix(prefix=f"{name}-{round_number}", seed=round_number).batch(per_round)
        events = {path: batch for path in paths}
        if floor:
            floor_mix = Mix(prefix=f"{name}-{round_number}-floor", seed=round_number)
            events[floor] = floor_mix.batch(per_round)
        for first in range(0, per_round, TURN):
            # Forwards, then backwards: each path's mean place in the turns is the same.
            order = paths if turn % 2 == 0 else paths[::-1]
            turn += 1
            for path in order:
                gc.collect()
                times[path] += post_all(client, path, events[path][first : first + TURN])
    total = rounds * per_round
    least = total / times[floor] if floor else None
    return total / times[OURS], total / times[BARE], least


def in_process_row(
    name: str,
    label: str,
    url: str,
    rounds: int,
    per_round: int,
    at_least: float,
    *,
    floor_path: str | None = None,
    **config: Any,
) -> tuple[float, float]:
    """One configuration against the bare minimum on a fresh database; both in ev/s.

    ``floor_path``: also the bare route that does the least this configuration's
    guarantee needs; the target's line then says what ratio that route reaches. For
    the default configuration it is the hand-tuned bare minimum, a reference only.
    """
    app = create_app(url, **config)
    reset_tables(app)
    ours, bare, least = compare(
        app, f"{name}-{label.replace(' ', '-')}", rounds, per_round, floor_path
    )
    dispose(app)
    print(
        f"  in-process {name:<14} {label:<15} ours {ours:7.0f} ev/s   bare minimum"
        f" {bare:7.0f} ev/s   ratio {ours / bare:.2f}",
        flush=True,
    )
    measured = shown(ours / bare, at_least)
    if least is not None:
        what = "the least it can cost here: a minimal receiver with it"
        if floor_path == BARE_LEAST:
            what = "the bare minimum hand-tuned"
        print(
            f"  in-process {name:<14} {label:<15} {what} runs {least:7.0f} ev/s,"
            f" {least / bare:.2f}x the bare minimum; ours is {ours / least:.2f}x it",
            flush=True,
        )
        measured += f" (floor {least / bare:.2f}x)" if floor_path != BARE_LEAST else ""
    target(
        f"in-process {name}, {label}: ours >= {at_least:.2f}x bare minimum",
        ours / bare >= at_least,
        measured,
    )
    return ours, bare


def in_process(name: str, url: str, rounds: int, per_round: int) -> None:
    """The default configuration, with rewards, with durable signals; then redelivery."""
    default, default_bare = in_process_row(
        name, "default", url, rounds, per_round, 0.90, floor_path=BARE_LEAST
    )
    # Fewer rounds for the two variants: each is a row of its own, not the headline.
    fewer = max(2, rounds // 2)
    in_process_row(
        name,
        "rewards",
        url,
        fewer,
        per_round,
        0.85,
        floor_path=BARE_REWARDS,
        PARTNERSTACK_STRIPE_REWARDS=[{"percent": 20}],
    )
    durable, durable_bare = in_process_row(
        name,
        "durable signals",
        url,
        fewer,
        per_round,
        0.80,
        floor_path=BARE_OUTBOX,
        PARTNERSTACK_STRIPE_DURABLE_SIGNALS=True,
    )
    cost = (1 / durable - 1 / default) * 1e6
    # The two rows ran at different times on a machine whose load may have changed: what
    # each cost over its own run's bare minimum cancels most of that.
    steady = ((1 / durable - 1 / durable_bare) - (1 / default - 1 / default_bare)) * 1e6
    print(
        f"  in-process {name:<14} the signal outbox costs {cost:+.0f} us an event"
        f" ({steady:+.0f} us over each run's bare minimum)",
        flush=True,
    )
    redelivery(name, url, per_round)


def redelivery(name: str, url: str, per_round: int) -> None:
    """A redelivery is answered from the unique event id alone."""
    app = create_app(url)
    reset_tables(app)
    client = app.test_client()
    post_all(client, OURS, Mix(prefix=f"{name}-redeliver-warm").batch(min(300, per_round)))
    fresh = Mix(prefix=f"{name}-redeliver", seed=99)
    fresh.customer()
    new_events = [fresh.charge() for _ in range(per_round)]
    new_time = post_all(client, OURS, new_events)
    again_time = post_all(client, OURS, new_events)
    dispose(app)
    speedup = new_time / again_time
    rates = f"{len(new_events) / again_time:.0f} vs {len(new_events) / new_time:.0f} ev/s"
    target(
        f"in-process {name}: redelivery >= 2x faster than a new event",
        speedup >= 2,
        f"{speedup:.2f}x ({rates})",
    )


def memory_growth(args: tuple[str, str, int, int]) -> tuple[str, float, float]:
    """Resident memory (MB) of this process before and after ``events`` events, after
    ``warm`` events; in a process of its own, so nothing else it ran weighs on it."""
    name, url, events, warm = args
    app = create_app(url)
    reset_tables(app)
    client = app.test_client()
    mix = Mix(prefix=f"memory-{name}")
    post_all(client, OURS, mix.batch(warm))
    gc.collect()
    before = rss_mb()
    done = 0
    while done < events:
        post_all(client, OURS, mix.batch(5_000))
        done += 5_000
    gc.collect()
    after = rss_mb()
    dispose(app)
    return name, before, after


def memory(urls: dict[str, str], events: int, warm: int) -> None:
    """Every backend at once, one process each: memory is not throughput, and the run is
    long (SQLite's commits mostly wait for the disk), so they overlap."""
    jobs = [(name, url, events, warm) for name, url in urls.items()]
    with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
        results = pool.map(memory_growth, jobs)
    for name, before, after in results:
        growth = after - before
        print(f"  memory {name:<14} {before:.1f} MB -> {after:.1f} MB", flush=True)
        target(
            f"memory {name}: growth over {events:,} events < 20 MB",
            growth < 20,
            f"{growth:+.1f} MB",
        )


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(label: str, step: Callable[[], None]) -> None:
    start = time.monotonic()
    step()
    print(f"  ({label}: {time.monotonic() - start:.0f} s)", flush=True)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """The header line: when, on what, with which versions."""
    versions = "".join(f", {server} {version}" for server, version in VERSIONS.items())
    return (
        f"{time.strftime('%Y-%m-%d', time.gmtime())}, {cpu_model()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, SQLAlchemy {sa.__version__}{versions}"
    )


def summary(quick: bool) -> str:
    """Every target as a markdown table, headed by the machine it ran on."""
    lines = [
        f"Measured {machine()}{' (--quick)' if quick else ''}:",
        "",
        "| target | measured | result |",
        "|---|---|---|",
        *(
            f"| {name} | {measured} | {'PASS' if passed else 'MISS'} |"
            for name, passed, measured in TARGETS
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="Smaller runs, for a first look.")
    parser.add_argument(
        "--only", action="append", choices=SECTIONS, metavar="SECTION",
        help=f"Run only this section (repeatable): {', '.join(SECTIONS)}.",
    )  # fmt: skip
    parser.add_argument("--markdown", type=Path, help="Also write the summary table here.")
    args = parser.parse_args()
    sections = args.only or SECTIONS
    rounds, per_round = (2, 200) if args.quick else (4, 1000)
    began = time.monotonic()
    print(
        f"flask-partnerstack-stripe benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    with tempfile.TemporaryDirectory() as workdir:
        urls = backends(Path(workdir))
        print(f"  {machine()}")
        servers = [name for name in ("sqlite-file", "postgresql", "mariadb") if name in urls]
        tables = []
        if "in-process" in sections:
            for name, url in urls.items():
                timed(
                    f"in-process {name}", lambda n=name, u=url: in_process(n, u, rounds, per_round)
                )
        if "roundtrips" in sections:
            for name, url in urls.items():
                timed(
                    f"roundtrips {name}", lambda n=name, u=url: tables.append(roundtrips.run(n, u))
                )
        if "scale" in sections:
            large = 100_000 if args.quick else 1_000_000
            for name in servers:
                timed(
                    f"scale {name}",
                    lambda n=name: scale.run(
                        n,
                        urls[n],
                        larger_twin(n, urls[n], Path(workdir)),
                        large=large,
                        per_round=per_round,
                        post_all=post_all,
                        target=target,
                    ),
                )
        if "memory" in sections:
            events, warm = (20_000, 2_000) if args.quick else (100_000, 5_000)
            timed("memory", lambda: memory({n: urls[n] for n in servers}, events, warm))
        if "http" in sections:
            for name in servers:
                timed(
                    f"http {name}",
                    lambda n=name: http_load.run(
                        n, urls[n], Path(workdir), quick=args.quick, target=target
                    ),
                )
        if "celery" in sections and "postgresql" in urls:
            from . import celery_row

            timed(
                "celery postgresql",
                lambda: celery_row.run(urls["postgresql"], args.quick, target),
            )
    missed = [name for name, passed, _ in TARGETS if not passed]
    print(f"\n{len(TARGETS) - len(missed)} of {len(TARGETS)} targets hold.")
    for name in missed:
        print(f"  MISS: {name}")
    markdown = summary(args.quick) + "".join(f"\n{table}" for table in tables)
    print(f"\n{markdown}")
    if args.markdown:
        args.markdown.write_text(markdown)
    print(f"(whole run: {(time.monotonic() - began) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
