"""Faults: the database going away mid-stream, a worker killed mid-transaction, a deadlock.

In every case: 5xx while it lasts (so Stripe retries), nothing marked processed that
was not applied, and every event applied exactly once once redeliveries arrive.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import sqlalchemy as sa

from flask_partnerstack_stripe import testing

from .conftest import use_database, use_mariadb, use_postgres

pytestmark = pytest.mark.slow


# --- PostgreSQL stopped in the middle of a stream ----------------------------------------


class Outage:
    """A TCP proxy in front of PostgreSQL that can cut every connection, as a stopped
    server would, without touching the machine's PostgreSQL."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.down = threading.Event()
        self.stopped = threading.Event()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            if self.down.is_set():
                client.close()  # refused while the database is "stopped"
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.pairs.append((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, client: socket.socket, upstream: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        try:
            while not self.stopped.is_set():
                for key, _ in selector.select(timeout=0.2):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            client.close()
            upstream.close()

    def stop_database(self) -> None:
        self.down.set()
        with self.lock:
            for client, upstream in self.pairs:
                for sock in (client, upstream):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            self.pairs.clear()

    def start_database(self) -> None:
        self.down.clear()

    def close(self) -> None:
        self.stopped.set()
        self.stop_database()
        self.listener.close()


@pytest.fixture(params=["postgresql", "mariadb"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The stream-outage test cuts a database server; the others also run on SQLite below."""
    return use_postgres() if request.param == "postgresql" else use_mariadb()


@pytest.fixture
def outage(database_url: str) -> Any:
    url = urlsplit(database_url)
    default_port = 3306 if database_url.startswith("mysql") else 5432
    proxy = Outage((url.hostname or "127.0.0.1", url.port or default_port))
    yield proxy
    proxy.close()


@pytest.fixture
def server_database_url(outage: Outage, database_url: str) -> str:
    url = urlsplit(database_url)
    netloc = (
        f"{url.username}@127.0.0.1:{outage.port}" if url.username else f"127.0.0.1:{outage.port}"
    )
    return urlunsplit(url._replace(netloc=netloc))


def test_postgres_stopped_mid_stream(server, outage, rows, models):
    charges = [testing.event("charge.succeeded", testing.charge(f"ch_o{n}", amount=100 + n))
               for n in range(30)]  # fmt: skip
    answers: dict[str, int] = {}
    for n, event in enumerate(charges):
        if n == 10:
            outage.stop_database()
        if n == 20:
            outage.start_database()
        try:
            answers[event["id"]] = server.post_event(event)[0]
        except OSError:
            answers[event["id"]] = 599
    failed = [event_id for event_id, status in answers.items() if status >= 500]
    assert any(status >= 500 for status in list(answers.values())[10:20])
    assert all(status < 500 for status in list(answers.values())[:10])

    # Nothing is marked processed that was not applied.
    stored = {e.stripe_event_id: e.status for e in rows(models.WebhookEvent)}
    recorded = {t.key for t in rows(models.Transaction)}
    for event in charges:
        if stored.get(event["id"]) == "processed":
            assert event["data"]["object"]["id"] in recorded

    # Stripe redelivers whatever did not get a 2xx, and more besides, until it does.
    for _ in range(5):
        pending = [e for e in charges if answers[e["id"]] >= 500]
        if not pending:
            break
        for event in pending + charges[:3]:
            answers[event["id"]] = server.post_event(event)[0]
        time.sleep(0.2)
    assert all(status == 200 for status in answers.values()), answers
    assert failed
    transactions = rows(models.Transaction)
    assert sorted(t.key for t in transactions) == sorted(f"ch_o{n}" for n in range(30))
    assert {e.status for e in rows(models.WebhookEvent)} == {"processed"}


# --- a worker killed mid-transaction -----------------------------------------------------


class TestKilledWorker:
    @pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
    def database_url(self, request, tmp_path) -> str:
        return use_database(request.param, tmp_path, "k.db")

    @pytest.fixture
    def server_database_url(self, database_url: str) -> str:
        return database_url

    @pytest.fixture
    def hang_file(self, tmp_path) -> Path:
        return tmp_path / "hang"

    @pytest.fixture
    def server_env(self, hang_file: Path) -> dict[str, str]:
        return {"PARTNERSTACK_TEST_HANG_FILE": str(hang_file)}

    def test_worker_killed_mid_transaction(self, server, hang_file, rows, models):
        hang_file.write_text("")
        event = testing.event(
            "checkout.session.completed", {"id": "cs_k", "object": "checkout.session"}
        )
        outcome: dict[str, Any] = {}

        def deliver() -> None:
            try:
                outcome["status"] = server.post_event(event)[0]
            except OSError as error:
                outcome["status"] = type(error).__name__

        thread = threading.Thread(target=deliver)
        thread.start()
        deadline = time.monotonic() + 20
        while not hang_file.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int(hang_file.read_text())
        # Killed before the file goes: a worker that saw it gone first would commit.
        os.kill(pid, signal.SIGKILL)
        hang_file.unlink()  # the worker that replaces it serves the redelivery
        thread.join(timeout=60)
        assert outcome["status"] != 200
        assert rows(models.WebhookEvent) == []  # rolled back with the worker: not stored

        status, body = server.post_event(event)  # Stripe's redelivery
        assert status == 200 and body["status"] == "processed"
        assert server.post_event(event)[1]["status"] == "duplicate"
        assert [e.status for e in rows(models.WebhookEvent)] == ["processed"]


# --- a deadlock between two host handlers ------------------------------------------------


class TestDeadlock:
    @pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
    def database_url(self, request, tmp_path) -> str:
        return use_database(request.param, tmp_path, "d.db")

    def test_deadlock_is_a_5xx_and_the_redelivery_applies_it(
        self, app, state, rows, models, database_url
    ):
        db, Customer = state.db, models.Customer
        with app.app_context():
            for key in ("x", "y"):
                db.session.add(Customer(customer_key=key, name="0"))
            db.session.commit()
        barrier = threading.Barrier(2, timeout=2)

        def bump(first: str, second: str) -> None:
            for n, key in enumerate((first, second)):
                row = db.session.scalars(
                    sa.select(Customer).filter_by(customer_key=key).with_for_update()
                ).one()
                row.name = str(int(row.name) + 1)
                db.session.flush()
                if n == 0:
                    # Both hold their first row, so opposite orders deadlock; SQLite lets
                    # one writer in at a time, so there the wait just times out.
                    with contextlib.suppress(threading.BrokenBarrierError):
                        barrier.wait()

        @state.extension.handler("checkout.session.completed")
        def handler(event: dict[str, Any]) -> None:
            order = event["data"]["object"]["order"]
            bump(*order)

        events = [
            testing.event("checkout.session.completed", {"id": "cs_a", "order": ["x", "y"]}),
            testing.event("checkout.session.completed", {"id": "cs_b", "order": ["y", "x"]}),
        ]
        statuses: dict[str, int] = {}

        def deliver(event: dict[str, Any]) -> None:
            statuses[event["id"]] = testing.post_event(app.test_client(), event).status_code

        threads = [threading.Thread(target=deliver, args=(e,)) for e in events]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert set(statuses.values()) <= {200, 500}
        if database_url.startswith("postgresql"):
            assert sorted(statuses.values()) == [200, 500]  # PostgreSQL broke the deadlock
        # InnoDB: this FOR UPDATE by customer_key alone scans the table (no index leads with
        # it) and waits on the other's locked row, so the two may take turns instead of
        # deadlocking; either way each event is applied exactly once, checked below.
        barrier.abort()
        for event in events:  # Stripe redelivers the one that got a 5xx
            if statuses[event["id"]] != 200:
                assert testing.post_event(app.test_client(), event).status_code == 200
        counters = {c.customer_key: c.name for c in rows(Customer)}
        assert counters == {"x": "2", "y": "2"}  # each event applied exactly once
        assert {e.status for e in rows(models.WebhookEvent)} == {"processed"}
