"""Every pool and thread model, in-process: a committed event answers 200 and sends its signals.

DESIGN section 3, "Every server and pool" and "A 500 means nothing committed". The
threaded cases run the app in several threads at once through Flask's test client,
which is how a threaded server (``flask run``, gunicorn gthread) calls it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.pool import NullPool, QueuePool

from flask_partnerstack_stripe import signals, testing
from flask_partnerstack_stripe.extension import get_state

from .apphost import create_app


def charges(count: int, prefix: str = "ch_p") -> list[dict[str, Any]]:
    return [
        testing.event("charge.succeeded", testing.charge(f"{prefix}{n}", amount=100 + n))
        for n in range(count)
    ]


def post_in_threads(app: Flask, events: list[dict[str, Any]], threads: int) -> list[int]:
    """Post ``events`` from ``threads`` threads released together; the status codes."""
    barrier = threading.Barrier(threads)
    statuses: list[int] = []
    lock = threading.Lock()

    def run(share: list[dict[str, Any]]) -> None:
        client = app.test_client()
        barrier.wait()
        for event in share:
            status = testing.post_event(client, event).status_code
            with lock:
                statuses.append(status)

    workers = [threading.Thread(target=run, args=(events[n::threads],)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    return statuses


def ledger(app: Flask) -> dict[str, int]:
    state = get_state(app)
    with app.app_context():
        Transaction = state.models.Transaction
        with state.db.engine.connect() as connection:
            rows = connection.execute(sa.select(Transaction.key, Transaction.amount)).all()
    return dict(rows)  # type: ignore[arg-type]


@pytest.mark.parametrize("app_config", [{"SQLALCHEMY_ENGINE_OPTIONS": {"poolclass": NullPool}}])
def test_null_pool_single_request_answers_200_and_signals(app):
    """NullPool closes a connection as soon as it is handed back: nothing may touch it then."""
    event = charges(1)[0]
    with testing.record_signals(signals.transaction_recorded) as sent:
        response = testing.post_event(app.test_client(), event)
    assert response.status_code == 200, response.json
    assert response.json["status"] == "processed"
    assert [s.kwargs["transaction"].key for s in sent] == ["ch_p0"]
    assert ledger(app) == {"ch_p0": 100}


@pytest.mark.parametrize(
    "app_config",
    [
        {"SQLALCHEMY_ENGINE_OPTIONS": options}
        for options in (
            {"poolclass": NullPool},
            {"poolclass": QueuePool, "pool_size": 1, "max_overflow": 0, "pool_timeout": 60},
            {"poolclass": QueuePool, "pool_size": 2, "max_overflow": 4},
        )
    ],
    ids=["null-pool", "queue-pool-1", "queue-pool-overflow"],
)
def test_threads_on_any_pool_record_every_event_once(app):
    """Eight threads, forty events and their redeliveries: every one 200, every signal once."""
    events = charges(40)
    with testing.record_signals(signals.transaction_recorded) as sent:
        statuses = post_in_threads(app, events + events, threads=8)
    assert Counter(statuses) == {200: 80}
    assert Counter(s.kwargs["transaction"].key for s in sent) == {f"ch_p{n}": 1 for n in range(40)}
    assert ledger(app) == {f"ch_p{n}": 100 + n for n in range(40)}


@pytest.fixture
def memory_app() -> Any:
    """In-memory SQLite: Flask-SQLAlchemy shares one connection between every thread."""
    app = create_app("sqlite://")
    db = get_state(app).db
    with app.app_context():
        db.create_all()
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_in_memory_sqlite_under_threads(memory_app):
    events = charges(30, prefix="ch_m")
    with testing.record_signals(signals.transaction_recorded) as sent:
        statuses = post_in_threads(memory_app, events + events, threads=6)
    assert Counter(statuses) == {200: 60}
    assert len(sent) == 30
    assert ledger(memory_app) == {f"ch_m{n}": 100 + n for n in range(30)}


def test_failure_after_the_commit_answers_200_and_signals(app, client, rows, models, state):
    """A host's after-commit hook raising (the commit stands) changes neither answer nor signals."""

    def fail_after_commit(session: Any) -> None:
        raise RuntimeError("a post-commit hook of the host failed")

    sa.event.listen(state.db.session, "after_commit", fail_after_commit)
    try:
        with testing.record_signals(signals.transaction_recorded, signals.event_failed) as sent:
            response = testing.post_event(client, charges(1)[0])
            again = testing.post_event(client, testing.event("balance.available", {}))
    finally:
        sa.event.remove(state.db.session, "after_commit", fail_after_commit)
    assert response.status_code == 200, response.json
    assert response.json["status"] == "processed"
    assert again.status_code == 200
    assert [s.signal for s in sent] == [signals.transaction_recorded]
    assert [t.key for t in rows(models.Transaction)] == ["ch_p0"]
    assert {e.status for e in rows(models.WebhookEvent)} == {"processed", "ignored"}


def test_a_500_says_what_is_true_when_the_failure_could_not_be_stored(app, client, rows, models):
    """The database refuses every transaction: the 500 does not claim the event was stored."""
    state = get_state(app)

    def refuse_transactions(session: Any, *args: Any) -> None:
        raise RuntimeError("the database refuses transactions")

    sa.event.listen(state.db.session, "after_begin", refuse_transactions)
    try:
        response = testing.post_event(client, charges(1)[0])
    finally:
        sa.event.remove(state.db.session, "after_begin", refuse_transactions)
    assert response.status_code == 500
    assert "could not be stored" in response.json["error"]
    assert "stored as failed" not in response.json["error"]
    assert rows(models.WebhookEvent) == []


def test_sqlite_write_lock_leaves_the_hosts_connections_alone(tmp_path):
    app = create_app(f"sqlite:///{tmp_path / 'host.db'}")
    db = get_state(app).db

    def connection_settings() -> tuple[Any, ...]:
        raw = db.engine.raw_connection()
        try:
            (timeout,) = raw.execute("PRAGMA busy_timeout").fetchone()
            return raw.driver_connection.isolation_level, timeout
        finally:
            raw.close()

    with app.app_context():
        db.create_all()
        before = connection_settings()
        testing.post_event(app.test_client(), testing.event("charge.succeeded", testing.charge()))
        assert connection_settings() == before
        db.engine.dispose()


def test_sqlite_waits_for_another_writer_then_applies_the_event(tmp_path):
    """Another process holds the database file's write lock for a moment: the webhook
    waits for it (SQLITE_BUSY_TIMEOUT), then applies the event."""
    path = tmp_path / "busy.db"
    app = create_app(f"sqlite:///{path}", PARTNERSTACK_STRIPE_SQLITE_BUSY_TIMEOUT=10)
    db = get_state(app).db
    with app.app_context():
        db.create_all()
    # Another writer (a connection of its own, as another process would have).
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(0.3, other.execute, ("COMMIT",)).start()
    response = testing.post_event(app.test_client(), charges(1, "ch_busy")[0])
    assert (response.status_code, response.json["status"]) == (200, "processed")
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(
            get_state(app).models.Transaction.__table__)) == 1  # fmt: skip
        db.engine.dispose()
    other.close()


def test_sqlite_gives_up_after_the_busy_timeout_with_nothing_stored(tmp_path):
    """The write lock stays taken past SQLITE_BUSY_TIMEOUT: a 500 (Stripe retries), after
    waiting at least that long, and the host's busy timeout is as it was."""
    path = tmp_path / "held.db"
    app = create_app(f"sqlite:///{path}", PARTNERSTACK_STRIPE_SQLITE_BUSY_TIMEOUT=0.5)
    db = get_state(app).db
    with app.app_context():
        db.create_all()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        began = time.monotonic()
        response = testing.post_event(app.test_client(), charges(1, "ch_held")[0])
        waited = time.monotonic() - began
    finally:
        other.execute("COMMIT")
        other.close()
    assert response.status_code == 500
    assert waited >= 0.5
    with app.app_context():
        raw = db.engine.raw_connection()
        try:
            assert raw.execute("PRAGMA busy_timeout").fetchone()[0] == 5000  # pysqlite's
        finally:
            raw.close()
        assert db.session.scalar(sa.select(sa.func.count()).select_from(
            get_state(app).models.WebhookEvent.__table__)) == 0  # fmt: skip
        db.engine.dispose()


def test_create_customer_inside_a_handler_joins_the_event(app, client, rows, models, state):
    """A handler that signs a customer up, then fails: nothing of the event stays, and its
    redelivery runs the handler again (an inner commit must not mark the event processed)."""
    failing = {"on": True}

    @state.extension.handler("checkout.session.completed")
    def sign_up(event: dict[str, Any]) -> None:
        state.extension.create_customer("user-cs", "cs@example.com", partner_key="partner-cs")
        if failing["on"]:
            raise RuntimeError("the CRM is down")

    event = testing.event("checkout.session.completed", {"id": "cs_join"})
    with testing.record_signals(signals.customer_created, signals.event_processed) as sent:
        assert testing.post_event(client, event).status_code == 500
        assert rows(models.Customer) == []
        assert [e.status for e in rows(models.WebhookEvent)] == ["failed"]
        assert sent == []
        failing["on"] = False
        response = testing.post_event(client, event)
    assert response.json["status"] == "processed"
    [customer] = rows(models.Customer)
    assert customer.partner_key == "partner-cs"
    assert [s.signal for s in sent] == [signals.event_processed, signals.customer_created]


def test_a_new_pool_where_a_disposed_one_was_gets_our_listeners() -> None:
    # Our pool listeners (the MariaDB level restore, the named locks' release) are added
    # once per pool. A pool recreated by engine.dispose() keeps its predecessor's
    # listeners, and SQLAlchemy's registry the predecessor's id(): a new engine's pool
    # allocated where the predecessor was must still get them (CI once saw it go without).
    from flask_partnerstack_stripe.transactions import listen_once

    def released(dbapi_connection: Any, record: Any) -> None:
        pass

    survivors = []
    for _ in range(20):
        pool = QueuePool(sqlite3.connect)
        listen_once(pool, "checkin", released)
        assert released in pool.dispatch.checkin
        survivors.append(pool.recreate())  # what engine.dispose() does; it lives on
        del pool  # CPython hands its address to the next pool of the same size
