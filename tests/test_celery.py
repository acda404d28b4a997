"""Queued processing on real Celery workers (DESIGN section 3a), on Redis and RabbitMQ.

Each test starts its own worker processes (``celery -A tests.celeryhost worker``) on a
queue of its own, so parallel runs never share messages, and posts webhooks through
the test host app in this process, set up with ``PROCESSING = "celery"``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_partnerstack_stripe import testing
from flask_partnerstack_stripe.extension import get_state

from .apphost import create_app
from .celeryhost import create_celery_app, log_deliveries
from .conftest import ROOT, use_mariadb, use_postgres
from .test_faults import Outage

pytestmark = pytest.mark.slow

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
REDIS = ("127.0.0.1", 6379)
RABBITMQ = ("127.0.0.1", 5672)
BROKERS = {
    "redis": (REDIS, "redis://{host}:{port}/0"),
    "rabbitmq": (RABBITMQ, "amqp://guest:guest@{host}:{port}//"),
}
#: Short waits for the tests: a retried signal is due after one second.
FAST = {"PARTNERSTACK_STRIPE_SIGNAL_RETRY_DELAY": 1, "PARTNERSTACK_STRIPE_SWEEP_AFTER": 1}


def broker_url(kind: str, port: int | None = None) -> str:
    (host, default_port), template = BROKERS[kind]
    try:
        socket.create_connection((host, default_port), timeout=2).close()
    except OSError as error:
        problem = f"{kind} is not reachable at {host}:{default_port} ({error})"
        if REQUIRE_SERVICES:
            pytest.fail(f"REQUIRE_SERVICES=1 but {problem}")
        pytest.skip(f"!!! SKIPPED: {problem}")
    return template.format(host=host, port=port or default_port)


@pytest.fixture(params=["postgresql", "mariadb"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Workers in other processes, two at a time: a database server."""
    return use_postgres() if request.param == "postgresql" else use_mariadb()


@pytest.fixture
def broker() -> str:
    return "redis"


@pytest.fixture
def queue() -> str:
    return f"pst-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def app_config(broker: str, queue: str) -> dict[str, Any]:
    return {**FAST}


@pytest.fixture
def web(database_url: str, broker: str, queue: str, app: Flask) -> Iterator[tuple[Flask, Any]]:
    """The webhook side: the host app in celery mode, publishing to this test's queue.

    ``app`` (the fixture) created the tables on the same database.
    """
    flask_app, celery_app = create_celery_app(database_url, broker_url(broker), queue, **FAST)
    yield flask_app, celery_app
    with celery_app.connection_for_write() as connection, contextlib.suppress(Exception):
        connection.default_channel.queue_delete(queue)  # its messages, if any are left
    with flask_app.app_context():
        get_state(flask_app).db.engine.dispose()


class Worker:
    """One ``celery worker`` process (solo pool: a SIGKILL kills the whole worker)."""

    def __init__(self, env: dict[str, str], log: Path, name: str) -> None:
        self.env, self.log, self.name = env, log, name
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        with self.log.open("a") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "tests.celeryhost", "worker",
                 "--pool", "solo", "-Q", self.env["PARTNERSTACK_TEST_QUEUE"],
                 "-n", f"{self.name}@%h", "--without-heartbeat", "--without-gossip",
                 "--without-mingle", "-l", "INFO"],
                cwd=ROOT, env=self.env, stdout=output, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while "ready." not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"celery worker {self.name} did not start:\n{self.log.read_text()}")
            time.sleep(0.1)
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # The test is over: a warm shutdown on RabbitMQ can take ten seconds to close its
        # channel; what the worker had not acknowledged goes back to the queue either way.
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def workers(
    database_url: str, broker: str, queue: str, tmp_path: Path
) -> Iterator[Callable[..., Worker]]:
    """``workers(name, **env)`` starts a worker on this test's queue; all stop afterwards."""
    started: list[Worker] = []

    def start(name: str = "w1", **env: str) -> Worker:
        worker_env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "PARTNERSTACK_TEST_BROKER": broker_url(broker),
            "PARTNERSTACK_TEST_QUEUE": queue,
            "PARTNERSTACK_TEST_CONFIG": json.dumps(FAST),
            "PARTNERSTACK_TEST_DELIVERY_LOG": str(tmp_path / "deliveries.log"),
            **env,
        }
        worker = Worker(worker_env, tmp_path / f"{name}.log", name)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()


def deliveries(tmp_path: Path) -> list[tuple[str, str]]:
    path = tmp_path / "deliveries.log"
    if not path.exists():
        return []
    return [tuple(line.split(" ")) for line in path.read_text().splitlines()]  # type: ignore[misc]


def wait_for(condition: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"Timed out waiting for {what}")
        time.sleep(0.2)


def statuses(rows: Any, models: Any) -> Counter[str]:
    return Counter(row.status for row in rows(models.WebhookEvent))


def customer_created(key: str) -> dict[str, Any]:
    obj = testing.customer(metadata={"customer_key": key, "partner_key": "partner-1"})
    return testing.event("customer.created", obj)


# --- without a worker -----------------------------------------------------------------


def test_the_core_package_does_not_import_celery() -> None:
    code = "import sys, flask_partnerstack_stripe.extension, flask_partnerstack_stripe.cli; "
    code += "assert 'celery' not in sys.modules, 'celery imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_the_webhook_stores_received_answers_queued_and_duplicates(web, rows, models):
    flask_app, _ = web
    client = flask_app.test_client()
    event = customer_created("user-q")
    first = testing.post_event(client, event)
    assert (first.status_code, first.json) == (200, {"status": "queued", "event": event["id"]})
    again = testing.post_event(client, event)
    assert again.json["status"] == "duplicate"
    [stored] = rows(models.WebhookEvent)
    assert stored.status == "received"
    assert rows(models.Customer) == []  # nothing applied in the request


# --- with workers -----------------------------------------------------------------------


def play_seed(app: Flask) -> None:
    result = app.test_cli_runner().invoke(
        args=["partnerstack", "send-test-event", "--scenario", "seed", "--amount", "2500"]
    )
    assert result.exit_code == 0, result.output


def ledger(rows: Any, models: Any) -> list[tuple[Any, ...]]:
    return [(t.amount, t.deleted_reason) for t in rows(models.Transaction)]


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_the_seed_story_ends_as_inline(web, workers, rows, models, tmp_path):
    # Inline, in this process, on a database of its own.
    inline = create_app(f"sqlite:///{tmp_path / 'inline_test.db'}")
    with inline.app_context():
        get_state(inline).db.create_all()
    log_deliveries(inline, str(tmp_path / "inline.log"))
    play_seed(inline)
    inline_signals = [line.split(" ")[0] for line in (tmp_path / "inline.log").read_text().split()]
    inline_signals = [s for s in inline_signals if not s.isdigit() and s != "None"]
    with inline.app_context():
        state = get_state(inline)
        inline_ledger = [
            (t.amount, t.deleted_reason)
            for t in state.db.session.scalars(
                sa.select(state.models.Transaction).order_by(state.models.Transaction.id)
            )
        ]
        # The session's connection goes back to the pool first, or dispose() leaves it
        # open (Python 3.13 warns about an unclosed sqlite3 connection).
        state.db.session.close()
        state.db.engine.dispose()

    flask_app, _ = web
    workers()
    play_seed(flask_app)
    wait_for(lambda: statuses(rows, models)["received"] == 0, what="the workers to apply")
    assert ledger(rows, models) == inline_ledger
    sent = deliveries(tmp_path)
    assert [name for name, _ in sent] == inline_signals
    assert all(delivery_id != "None" for _, delivery_id in sent)
    assert len({delivery_id for _, delivery_id in sent}) == len(sent)
    delivered = {row.status for row in rows(models.SignalDelivery)}
    assert delivered == {"delivered"}


def test_a_burst_is_applied_by_two_workers_exactly_once(web, workers, rows, models, tmp_path):
    flask_app, _ = web
    workers("w1")
    workers("w2")
    client = flask_app.test_client()
    count = int(os.environ.get("CELERY_BURST_EVENTS", "1000"))
    for n in range(count):
        answer = testing.post_event(client, customer_created(f"user-{n}"))
        assert answer.json["status"] == "queued"
    wait_for(lambda: statuses(rows, models)["processed"] == count, 180, "the burst to apply")
    assert statuses(rows, models) == Counter(processed=count)
    assert len(rows(models.Customer)) == count
    sent = deliveries(tmp_path)
    assert len(sent) == count  # each signal once: no event was applied twice
    assert len({delivery_id for _, delivery_id in sent}) == count
    # Both workers took part.
    for name in ("w1", "w2"):
        assert "succeeded" in (tmp_path / f"{name}.log").read_text()


def test_a_worker_killed_mid_apply_leaves_it_to_the_sweep(web, workers, rows, models, tmp_path):
    flask_app, _ = web
    hang_file = tmp_path / "hang"
    hang_file.write_text("")
    worker = workers("w1", PARTNERSTACK_TEST_HANG_FILE=str(hang_file))
    session = testing.checkout_session(
        customer="cus_kill", client_reference_id="user-kill", metadata={"partner_key": "p"}
    )
    event = testing.event("checkout.session.completed", session)
    assert testing.post_event(flask_app.test_client(), event).json["status"] == "queued"
    wait_for(lambda: hang_file.read_text() != "", what="the worker to hang mid-transaction")
    worker.kill()
    hang_file.unlink()
    assert statuses(rows, models) == Counter(received=1)  # rolled back with the worker
    assert rows(models.Customer) == []
    workers("w2")
    result = flask_app.test_cli_runner().invoke(args=["partnerstack", "sweep", "--older-than", "0"])
    assert result.exit_code == 0, result.output
    assert "1 enqueued" in result.output
    wait_for(lambda: statuses(rows, models) == Counter(processed=1), what="the sweep's apply")
    time.sleep(1)  # a late redelivery of the killed worker's message changes nothing
    [customer] = rows(models.Customer)
    assert customer.customer_key == "user-kill"
    [(_, delivery_id)] = [d for d in deliveries(tmp_path) if d[0] == "customer-created"]
    [delivery] = rows(models.SignalDelivery, signal="customer-created")
    assert delivery_id == str(delivery.id)


def test_a_worker_killed_before_its_signal_repeats_it_with_the_same_id(
    web, workers, rows, models, tmp_path
):
    flask_app, celery_app = web
    kill_file = tmp_path / "kill"
    kill_file.write_text("")
    worker = workers("w1", PARTNERSTACK_TEST_KILL_FILE=str(kill_file))
    testing.post_event(flask_app.test_client(), customer_created("user-k"))
    wait_for(lambda: worker.process is not None and worker.process.poll() is not None,
             what="the worker to die in its signal receiver")  # fmt: skip
    assert statuses(rows, models) == Counter(processed=1)  # committed before it died
    [delivery] = rows(models.SignalDelivery)
    assert delivery.status == "pending"
    workers("w2")
    time.sleep(1.2)  # SIGNAL_RETRY_DELAY: the delivery is due
    celery_app.send_task("partnerstack.deliver_signals")
    wait_for(lambda: rows(models.SignalDelivery)[0].status == "delivered", what="the retry")
    assert deliveries(tmp_path) == [("customer-created", str(delivery.id))]
    assert len(rows(models.Customer)) == 1


@pytest.fixture
def cut() -> Iterator[Outage]:
    proxy = Outage(REDIS)
    yield proxy
    proxy.close()


def test_the_broker_cut_while_events_arrive(database_url, queue, app, cut, workers, rows, models):
    url = broker_url("redis", cut.port)
    flask_app, _ = create_celery_app(database_url, url, queue, **FAST)
    client = flask_app.test_client()
    workers()  # on Redis itself: only the webhook's side is cut
    events = [customer_created(f"user-{n}") for n in range(10)]
    for event in events[:3]:
        assert testing.post_event(client, event).json["status"] == "queued"
    wait_for(lambda: statuses(rows, models)["processed"] == 3, what="the first events")
    cut.stop_database()
    # The publisher meets the cut, not the requests (the held broker's test shows they do
    # not wait for it: a publish to a refused port fails too fast to tell here).
    for event in events[3:]:
        answer = testing.post_event(client, event)
        assert (answer.status_code, answer.json["status"]) == (200, "queued")
    # Every publish the publisher tried failed (logged); the events stay received.
    assert get_state(flask_app).publisher.flush(60)
    time.sleep(1)
    assert statuses(rows, models) == Counter(processed=3, received=7)
    cut.start_database()
    result = flask_app.test_cli_runner().invoke(args=["partnerstack", "sweep", "--older-than", "0"])
    assert "7 enqueued" in result.output, result.output
    wait_for(lambda: statuses(rows, models) == Counter(processed=10), what="the sweep")
    assert len(rows(models.Customer)) == 10
    with flask_app.app_context():
        get_state(flask_app).db.engine.dispose()


class Held(Outage):
    """A proxy that holds every answer of the broker until :meth:`release`: a broker that
    has not answered yet, however long the machine takes to serve a request."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.released = threading.Event()
        super().__init__(target)

    def release(self) -> None:
        self.released.set()

    def _pipe(self, client: socket.socket, upstream: socket.socket) -> None:
        def answers() -> None:
            with contextlib.suppress(OSError):
                while data := upstream.recv(65536):
                    self.released.wait()
                    client.sendall(data)

        threading.Thread(target=answers, daemon=True).start()
        try:
            while data := client.recv(65536):
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # about the broker
def test_the_webhook_answers_before_the_broker_is_reached(
    database_url, queue, app, workers, rows, models, tmp_path
):
    """The message is published after the answer, by the app's publisher: Stripe's
    requests are answered while the broker has not answered the publisher once."""
    held = Held(REDIS)
    try:
        flask_app, _ = create_celery_app(
            database_url, broker_url("redis", held.port), queue, **FAST
        )
        workers()  # on Redis itself
        client = flask_app.test_client()
        answers: list[str] = []

        def post() -> None:
            for n in range(5):
                answers.append(
                    testing.post_event(client, customer_created(f"user-held-{n}")).json["status"]
                )

        poster = threading.Thread(target=post, daemon=True)
        poster.start()
        poster.join(60)  # a request that waited for the broker would wait here for ever
        assert answers == ["queued"] * 5
        publisher = get_state(flask_app).publisher
        assert publisher.pending() > 0  # the publisher still waits for the broker
        held.release()
        wait_for(lambda: statuses(rows, models) == Counter(processed=5), what="the workers")
        assert len(rows(models.Customer)) == 5
        assert len(deliveries(tmp_path)) == 5  # each applied once
        assert publisher.flush(30)  # its last answers came back
        with flask_app.app_context():
            get_state(flask_app).db.engine.dispose()
    finally:
        held.release()
        held.close()


#: A web process that posts events, forks halfway (as gunicorn forks its workers), and the
#: child posts the rest and exits at once, without waiting for its publisher.
EXITING_WEB = """
import os, sys
from flask_partnerstack_stripe import testing
from tests.celeryhost import create_celery_app
from tests.test_celery import FAST, customer_created

app, _ = create_celery_app(sys.argv[1], sys.argv[2], sys.argv[3], **FAST)
client = app.test_client()
count = int(sys.argv[4])
for n in range(count // 2):
    assert testing.post_event(client, customer_created(f"user-exit-{n}")).json["status"] == "queued"
# Forked while the publisher is idle, as gunicorn's arbiter, which serves nothing, forks:
# a fork in the middle of the thread's first publish could copy a half-imported module.
assert app.extensions["partnerstack_stripe"].publisher.flush(30)
child = os.fork()
if child == 0:
    client = app.test_client()
    for n in range(count // 2, count):
        answer = testing.post_event(client, customer_created(f"user-exit-{n}"))
        assert answer.json["status"] == "queued"
    sys.exit(0)  # a normal exit, as a gunicorn worker's
_, status = os.waitpid(child, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_events_queued_at_exit_and_after_a_fork_are_published_once(
    database_url, queue, app, workers, rows, models, tmp_path
):
    count = 40
    subprocess.run(
        [sys.executable, "-c", EXITING_WEB, database_url, broker_url("redis"), queue, str(count)],
        cwd=ROOT, check=True, timeout=120,
    )  # fmt: skip
    # Nothing swept: every event was published by the web processes before they exited.
    workers()
    wait_for(lambda: statuses(rows, models) == Counter(processed=count), what="the workers")
    assert len(rows(models.Customer)) == count
    sent = deliveries(tmp_path)
    assert len(sent) == count and len({d for _, d in sent}) == count


#: A short-lived process (a script, ``send-test-event``) whose only publish falls in the
#: drain at exit, after Python's threading shutdown.
POSTS_ONCE_AND_EXITS = """
import sys
from flask_partnerstack_stripe import testing
from tests.celeryhost import create_celery_app
from tests.test_celery import FAST, customer_created

app, _ = create_celery_app(sys.argv[1], sys.argv[2], sys.argv[3], **FAST)
answer = testing.post_event(app.test_client(), customer_created("user-once"))
assert answer.json["status"] == "queued"
"""


def test_a_process_whose_only_publish_is_at_exit_publishes_it(
    database_url, queue, app, workers, rows, models
):
    ran = subprocess.run(
        [sys.executable, "-c", POSTS_ONCE_AND_EXITS, database_url, broker_url("redis"), queue],
        cwd=ROOT, check=True, timeout=120, capture_output=True, text=True,
    )  # fmt: skip
    assert "Could not enqueue" not in ran.stderr, ran.stderr
    workers()
    wait_for(lambda: statuses(rows, models) == Counter(processed=1), what="the worker")


def test_a_batch_message_applies_each_event_once_and_retries_a_failed_one_alone(
    web, workers, rows, models, tmp_path
):
    """``partnerstack.apply_events``, what the publisher sends for a burst: an event that
    fails in it is stored failed and retried on its own, as ``apply_event`` would be."""
    flask_app, celery_app = web
    events = [customer_created(f"user-batch-{n}") for n in range(6)]
    client = flask_app.test_client()
    for event in events:
        assert testing.post_event(client, event).json["status"] == "queued"
    assert get_state(flask_app).publisher.flush(30)
    celery_app.control.purge()  # only the one batch message below reaches the worker
    celery_app.send_task("partnerstack.apply_events", ([event["id"] for event in events],))
    workers("w1", PARTNERSTACK_TEST_FAIL_ONCE_FILE=str(tmp_path / "failed-once"))
    wait_for(lambda: statuses(rows, models) == Counter(processed=6), what="the retries")
    assert (tmp_path / "failed-once").read_text().split() == [event["id"] for event in events]
    assert len(rows(models.Customer)) == 6
    sent = deliveries(tmp_path)
    assert len(sent) == 6 and len({d for _, d in sent}) == 6
    assert "retrying it alone" in (tmp_path / "w1.log").read_text()


def cut_connections(database_url: str) -> int:
    """End every connection to the test's database but the one asking, as a database
    restart does (the pooled connections of the worker die with it); how many ended."""
    engine = sa.create_engine(database_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                query = (
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                return len(connection.exec_driver_sql(query).all())
            query = (
                "SELECT id FROM information_schema.processlist"
                " WHERE db = DATABASE() AND id <> CONNECTION_ID()"
            )
            ids = connection.exec_driver_sql(query).scalars().all()
            for connection_id in ids:
                connection.exec_driver_sql(f"KILL {int(connection_id)}")
            return len(ids)
    finally:
        engine.dispose()


def dispose(*apps: Flask) -> None:
    """Close this process's pooled connections: only the worker's are cut then."""
    for flask_app in apps:
        with flask_app.app_context():
            get_state(flask_app).db.engine.dispose()


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_an_event_after_the_database_restarted_is_applied_without_the_sweep(
    web, app, workers, rows, models, tmp_path, database_url
):
    """The worker's pooled connection died between two events: the second one's task
    meets it at its first read, and is retried (with a fresh connection) like any
    failure, not acknowledged and left received for the sweep."""
    flask_app, _ = web
    workers("w1")
    client = flask_app.test_client()
    assert testing.post_event(client, customer_created("user-1")).json["status"] == "queued"
    # Its signal settled too: the worker is done with its connection, which stays pooled.
    wait_for(
        lambda: [row.status for row in rows(models.SignalDelivery)] == ["delivered"],
        what="the first event",
    )
    dispose(flask_app, app)
    assert cut_connections(database_url) >= 1  # the worker's
    assert testing.post_event(client, customer_created("user-2")).json["status"] == "queued"
    # No sweep runs here (nor beat): the task itself, retried, applies it.
    wait_for(lambda: statuses(rows, models) == Counter(processed=2), 30, "the second event")
    assert len(rows(models.Customer)) == 2
    sent = deliveries(tmp_path)
    assert len(sent) == 2 and len({d for _, d in sent}) == 2  # each applied once


def test_a_connection_lost_mid_apply_is_stored_failed_and_retried(
    web, app, workers, rows, models, tmp_path, database_url
):
    """The database restarts while the worker's transaction is open: the failure is
    rolled back, stored as failed with its error, and the task's retry applies it."""
    flask_app, _ = web
    hang_file = tmp_path / "hang"
    hang_file.write_text("")
    workers("w1", PARTNERSTACK_TEST_HANG_FILE=str(hang_file))
    session = testing.checkout_session(
        customer="cus_cut", client_reference_id="user-cut", metadata={"partner_key": "p"}
    )
    event = testing.event("checkout.session.completed", session)
    assert testing.post_event(flask_app.test_client(), event).json["status"] == "queued"
    wait_for(lambda: hang_file.read_text() != "", what="the worker to hang mid-transaction")
    dispose(flask_app, app)
    assert cut_connections(database_url) >= 1
    hang_file.unlink()  # the handler returns; the transaction's next statement fails
    wait_for(lambda: statuses(rows, models) == Counter(processed=1), 30, "the retry")
    log = (tmp_path / "w1.log").read_text()
    assert f"Applying Stripe event {event['id']} (checkout.session.completed) failed" in log
    assert "Retry in" in log
    [customer] = rows(models.Customer)
    assert customer.customer_key == "user-cut"


def test_a_batch_after_the_database_restarted_applies_each_event_once(
    web, app, workers, rows, models, tmp_path, database_url
):
    """``partnerstack.apply_events`` whose first event meets the dead pooled connection:
    that one is retried alone, the others are applied with fresh connections."""
    flask_app, celery_app = web
    workers("w1")
    testing.post_event(flask_app.test_client(), customer_created("user-0"))
    wait_for(
        lambda: [row.status for row in rows(models.SignalDelivery)] == ["delivered"],
        what="the first event",
    )
    # Stored received, and published by nobody (no init_celery): only the batch carries them.
    unpublished = create_app(database_url, PARTNERSTACK_STRIPE_PROCESSING="celery", **FAST)
    events = [customer_created(f"user-batch-{n}") for n in range(1, 4)]
    for event in events:
        assert testing.post_event(unpublished.test_client(), event).json["status"] == "queued"
    dispose(unpublished, flask_app, app)
    assert cut_connections(database_url) >= 1  # the worker's
    celery_app.send_task("partnerstack.apply_events", ([event["id"] for event in events],))
    wait_for(lambda: statuses(rows, models) == Counter(processed=4), 30, "the batch")
    assert len(rows(models.Customer)) == 4
    sent = deliveries(tmp_path)
    assert len(sent) == 4 and len({d for _, d in sent}) == 4
    dispose(unpublished)
