"""The SQL round-trip row of ``make bench``: what one event of each kind costs in trips to
the database, ours against the bare minimum.

A round trip is a statement on the DBAPI cursor, or a BEGIN, COMMIT or ROLLBACK the driver
sends: SQLAlchemy's engine events on PostgreSQL and SQLite; on MySQL/MariaDB every command
PyMySQL sends (raw-cursor statements and the pool's rollback-on-return included). Counted
once the app is warm, so a first connection's set-up queries are left out. A redelivery is counted
twice: to the process that settled the event (ours remembers recent ids in memory) and
to another one, which has only the database to ask.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import Flask

from flask_partnerstack_stripe import testing

from .workload import BARE, OURS, Delivery, create_app, reset_tables, signed

KINDS = (
    "new customer",
    "known-customer charge",
    "orphan charge",
    "charge update",
    "refund",
    "redelivery",
    "redelivery, another process",
)


def deliveries(prefix: str) -> list[tuple[str, Delivery]]:
    """One event of each kind, in an order that makes each what its name says."""
    customer, charge = f"cus_{prefix}", f"ch_{prefix}"
    metadata = {"customer_key": f"user-{prefix}", "partner_key": "p1"}

    def event(number: int, type: str, obj: dict[str, Any]) -> Delivery:
        return signed(testing.event(type, obj, id=f"evt_{prefix}_{number}"))

    paid = event(
        2,
        "charge.succeeded",
        testing.charge(charge, customer=customer, amount=1000, metadata={"product_key": "team"}),
    )
    events = [
        event(1, "customer.created", testing.customer(customer, email=f"{prefix}@example.com",
                                                      metadata=metadata)),
        paid,
        event(3, "charge.succeeded",
              testing.charge(f"ch_{prefix}_orphan", customer=f"cus_{prefix}_unknown")),
        event(4, "charge.updated", testing.charge(charge, customer=customer, amount=1000)),
        event(5, "charge.refunded",
              testing.charge(charge, customer=customer, amount=1000, amount_refunded=1000)),
        paid,
        paid,
    ]  # fmt: skip
    return list(zip(KINDS, events, strict=True))


class Counter:
    """Round trips on the watched engines since the last ``take()``."""

    def __init__(self) -> None:
        self.count = 0
        self._pymysql: Any = None

    def watch(self, engine: sa.Engine) -> None:
        if engine.dialect.name in ("mysql", "mariadb"):
            self._watch_pymysql()
            return
        # psycopg sends a BEGIN of its own and skips the pool's rollback-on-return when
        # nothing is open; pysqlite does as psycopg, in-process.
        sa.event.listen(engine, "before_cursor_execute", self._one)
        sa.event.listen(engine, "commit", self._one)
        sa.event.listen(engine, "rollback", self._one)
        sa.event.listen(engine, "begin", self._one)

    def _watch_pymysql(self) -> None:
        """PyMySQL: every command the driver sends (it sends no BEGIN), counted where it
        sends it: statements on a raw cursor (the named locks' release, the isolation
        level given back) and the pool's rollback-on-return included."""
        if self._pymysql is not None:
            return
        import pymysql.connections

        connection_class = pymysql.connections.Connection
        original = connection_class._execute_command
        self._pymysql = (connection_class, original)

        def counting(connection: Any, command: int, sql: Any) -> Any:
            self.count += 1
            return original(connection, command, sql)

        connection_class._execute_command = counting

    def unwatch(self) -> None:
        if self._pymysql is not None:
            connection_class, original = self._pymysql
            connection_class._execute_command = original
            self._pymysql = None

    def _one(self, *args: Any) -> None:
        self.count += 1

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


def measure(
    app: Flask, other: Flask | None, counter: Counter, path: str, prefix: str
) -> dict[str, int | None]:
    """Each kind's round trips; the last one is posted to ``other``, a second app (None for
    an in-memory SQLite database, which a second app would not share)."""
    found: dict[str, int | None] = {}
    for kind, (body, headers) in deliveries(prefix):
        into = other if kind.endswith("another process") else app
        if into is None:
            found[kind] = None
            continue
        counter.take()
        response = into.test_client().post(path, data=body, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.data[:200]!r}")
        found[kind] = counter.take()
    return found


def _cell(count: int | None) -> str:
    return "n/a" if count is None else str(count)


def run(name: str, url: str) -> str:
    """Print (and return) the markdown table of ``name``'s round trips per event kind."""
    app = create_app(url)
    other = None if url == "sqlite://" else create_app(url)
    reset_tables(app)
    engines = []
    for each in (app, other) if other else (app,):
        with each.app_context():
            engines.append(each.extensions["sqlalchemy"].engine)
    counter = Counter()
    for engine in engines:
        counter.watch(engine)
    for path in (OURS, BARE):
        measure(app, other, counter, path, f"{name}_warm")
    ours = measure(app, other, counter, OURS, f"{name}_counted")
    bare = measure(app, other, counter, BARE, f"{name}_counted")
    note = (
        " (in-process: round trips are statements, SQLite has no server)"
        if name.startswith("sqlite")
        else ""
    )
    lines = [
        f"SQL round trips per event, {name}{note}:",
        "",
        "| event | ours | bare minimum |",
        "|---|--:|--:|",
        *(f"| {kind} | {_cell(ours[kind])} | {_cell(bare[kind])} |" for kind in KINDS),
        "",
    ]
    text = "\n".join(lines)
    print(text, flush=True)
    counter.unwatch()
    for engine in engines:
        engine.dispose()
    return text
