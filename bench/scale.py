"""The scale row of ``make bench``: throughput with a million stored transactions and a
million stored webhook events against a thousand of each.

The rows are made by the database itself, one set-based ``INSERT ... SELECT`` a table
(PostgreSQL's ``generate_series``, SQLite's recursive CTE, MariaDB's SEQUENCE engine):
a million rows take seconds, where batches from Python took minutes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from flask import Flask

from .workload import BARE, OURS, Mix, create_app, drop_tables, reset_tables

SMALL = 1_000


def _select(dialect: str, table: str, n: str) -> str:
    """The SELECT list that fills every NOT NULL column of ``table``, numbered by ``n``."""

    def text(prefix: str, number: str) -> str:  # MariaDB's || is OR, not concatenation
        return f"CONCAT('{prefix}', {number})" if dialect == "mysql" else f"'{prefix}' || {number}"

    if table.endswith("_transaction"):
        return (
            "(key, amount, currency, account_scope, livemode, stripe_customer_id, created_at,"
            " updated_at, gross_amount, charge_refunded, failed, dispute_lost) "
            f"SELECT {text('ch_seed_', n)}, 1000, 'usd', '', :no,"
            f" {text('cus_seed_', f'({n} % 9973)')}, :now, :now, 1000, 0, :no, :no"
        )
    return (
        "(stripe_event_id, type, livemode, status, payload, received_at, processed_at) "
        f"SELECT {text('evt_seed_', n)}, 'charge.succeeded', :no, 'processed', '{{}}',"
        " :now, :now"
    )


def insert_rows(dialect: str, table: str, first: int, last: int) -> sa.TextClause:
    """One statement inserting rows ``first``..``last`` (inclusive) into ``table``."""
    if dialect == "postgresql":
        sql = (
            f"INSERT INTO {table} {_select(dialect, table, 'n')}"
            f" FROM generate_series({first}, {last}) AS s(n)"
        )
    elif dialect == "mysql":
        sql = f"INSERT INTO {table} {_select(dialect, table, 'seq')} FROM seq_{first}_to_{last}"
    else:
        sql = (
            f"WITH RECURSIVE s(n) AS (SELECT {first} UNION ALL SELECT n + 1 FROM s"
            f" WHERE n < {last}) INSERT INTO {table} {_select(dialect, table, 'n')} FROM s"
        )
    if dialect == "mysql":
        sql = sql.replace("(key,", "(`key`,")  # a reserved word there
    return sa.text(sql).bindparams(
        sa.bindparam("now", type_=sa.DateTime(timezone=True)),
        sa.bindparam("no", type_=sa.Boolean()),
    )


def seed(app: Flask, count: int) -> None:
    """Bring the transaction and webhook event tables to ``count`` rows each, then let the
    database settle: statistics gathered, the load's pages written out."""
    state = app.extensions["partnerstack_stripe"]
    tables = [
        model.__table__.name for model in (state.models.Transaction, state.models.WebhookEvent)
    ]
    with app.app_context():
        engine = state.db.engine
    dialect = "mysql" if engine.dialect.name in ("mysql", "mariadb") else engine.dialect.name
    now = datetime.now(timezone.utc)
    with engine.begin() as connection:
        for table in tables:
            have = connection.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar() or 0
            if have < count:
                statement = insert_rows(dialect, table, have + 1, count)
                connection.execute(statement, {"now": now, "no": False})
    # Right after a bulk load the planner knows nothing of the new rows (PostgreSQL's
    # autovacuum and InnoDB's statistics catch up later, at a time of their choosing).
    # SQLite gathers no statistics unless asked, and a long-running app never asks.
    if dialect == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            # VACUUM too: a million new rows are past autovacuum's threshold, and its
            # pass (and the first reads' hint bits) would otherwise land in the timed turns.
            connection.exec_driver_sql("VACUUM (ANALYZE)")
            # The load's WAL and dirty pages are written out now, not by a checkpoint
            # that would fall in the timed rounds (a long-running app pays its own
            # checkpoints, not a bulk load's).
            connection.exec_driver_sql("CHECKPOINT")
    elif dialect == "mysql":
        with engine.connect() as connection:
            connection.exec_driver_sql(f"ANALYZE TABLE {', '.join(tables)}").all()
            # InnoDB (``innodb_max_dirty_pages_pct_lwm`` 0, its default) keeps the load's
            # dirty pages in the buffer pool until it needs the room, which would be in the
            # timed turns: ``FOR EXPORT`` writes out exactly these tables' pages now.
            connection.exec_driver_sql(f"FLUSH TABLES {', '.join(tables)} FOR EXPORT")
            connection.exec_driver_sql("UNLOCK TABLES")
    # The same for the kernel's page cache: the load's dirty pages (SQLite's file, say)
    # reach the disk before the timed rounds, so their write-back does not slow them.
    os.sync()


def run(
    name: str,
    url: str,
    large_url: str,
    *,
    large: int,
    per_round: int,
    post_all: Callable[[Any, str, list[Any]], float],
    target: Callable[[str, bool, str], None],
) -> None:
    """Ours at a thousand rows (on ``url``'s database) and at ``large`` (on
    ``large_url``'s), in turns of ``per_round / 2`` events: large, small, small, large,
    three times over, so that a slow spell of a shared machine falls on both sizes alike
    (and what is left of the seed's after-effects, on the large size first). Measured one
    after the other, a minute apart, the two sizes differed by as much as the 10% the
    target allows from one run to the next.

    The bare minimum runs after ours in each turn, on tables that do not grow: its
    change should be about nil, and a run where it is not says so.
    """
    apps = {SMALL: create_app(url), large: create_app(large_url)}
    try:
        _run(name, apps, large, per_round, post_all, target)
    finally:
        drop_tables(apps[large])  # the million rows are not kept: a later run seeds its own
        for app in apps.values():
            with app.app_context():
                app.extensions["sqlalchemy"].engine.dispose()


#: The order of the sizes' turns (S: 10^3 rows, L: the large size).
TURNS = ("L", "S", "S", "L") * 3


def _run(
    name: str,
    apps: dict[int, Flask],
    large: int,
    per_round: int,
    post_all: Callable[[Any, str, list[Any]], float],
    target: Callable[[str, bool, str], None],
) -> None:
    for app in apps.values():
        reset_tables(app)
    seed(apps[SMALL], SMALL)
    start = time.monotonic()
    seed(apps[large], large)
    seeded = time.monotonic() - start
    clients = {size: app.test_client() for size, app in apps.items()}
    for size, client in clients.items():
        warm = Mix(prefix=f"{name}-scale-warm-{size}").batch(100)
        post_all(client, OURS, warm)
        post_all(client, BARE, warm)
    turn = per_round // 2
    sizes = {"S": SMALL, "L": large}
    took: dict[tuple[int, str], float] = {}
    for number, letter in enumerate(TURNS):
        size = sizes[letter]
        batch = Mix(prefix=f"{name}-scale-{size}-{number}").batch(turn)
        for path in (OURS, BARE):
            took[size, path] = took.get((size, path), 0.0) + post_all(clients[size], path, batch)
    events = {size: TURNS.count(letter) * turn for letter, size in sizes.items()}
    small, big = events[SMALL] / took[SMALL, OURS], events[large] / took[large, OURS]
    change = big / small - 1
    bare_change = (events[large] / took[large, BARE]) / (events[SMALL] / took[SMALL, BARE]) - 1
    print(
        f"  scale {name:<14} {SMALL:,} rows {small:6.0f} ev/s   {large:,} rows {big:6.0f} ev/s"
        f"   ({change:+.1%}; bare minimum {bare_change:+.1%}; seeded in {seeded:.0f} s)",
        flush=True,
    )
    if abs(bare_change) > 0.05:
        print(
            f"  !!! scale {name}: the bare minimum, whose tables do not grow, moved"
            f" {bare_change:+.1%}: the machine was not steady, and this row tells little",
            flush=True,
        )
    target(
        f"scale {name}: {large:,} stored transactions and webhook events within 10% of {SMALL:,}",
        change >= -0.10,
        f"{small:.0f} -> {big:.0f} ev/s ({change:+.1%})",
    )
