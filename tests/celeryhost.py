"""The test host app on Celery, set up as Flask's documentation shows; the tests' workers run
``celery -A tests.celeryhost worker`` with its settings in the environment.

``PARTNERSTACK_TEST_BROKER`` and ``PARTNERSTACK_TEST_QUEUE`` say where the tasks go
(each test has a queue of its own), ``DATABASE_URL`` the database, and
``PARTNERSTACK_TEST_CONFIG`` (JSON) extra config keys.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from celery import Celery, Task
from flask import Flask

from flask_partnerstack_stripe import signals
from flask_partnerstack_stripe.extension import get_state

from .apphost import create_app

DATA_SIGNALS = [
    value
    for value in vars(signals).values()
    if hasattr(value, "receivers_for") and not value.name.startswith("event-")
]


def celery_config(broker_url: str, queue: str) -> dict[str, Any]:
    return {
        "broker_url": broker_url,
        "task_default_queue": queue,
        "task_ignore_result": True,
        "broker_connection_timeout": 2,
        "broker_connection_retry_on_startup": True,
        "worker_prefetch_multiplier": 1,
        "worker_enable_remote_control": False,
        "worker_hijack_root_logger": False,
        # A message a killed worker held comes back after this long (Redis).
        "broker_transport_options": {"visibility_timeout": 10},
    }


def celery_init_app(app: Flask, **options: Any) -> Celery:
    """Flask's documented pattern, plus the one line the extension asks for."""

    class FlaskTask(Task):  # type: ignore[type-arg]
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    app.extensions["celery"] = celery_app
    get_state(app).extension.init_celery(celery_app, **options)
    return celery_app


def create_celery_app(
    database_url: str, broker_url: str, queue: str, **config: Any
) -> tuple[Flask, Celery]:
    app = create_app(
        database_url,
        PARTNERSTACK_STRIPE_PROCESSING="celery",
        CELERY=celery_config(broker_url, queue),
        **config,
    )
    return app, celery_init_app(app, retry_backoff=1, max_retries=3)


def log_deliveries(app: Flask, path: str) -> None:
    """One line per data signal: ``customer-created 12`` (its name and delivery_id).

    While ``PARTNERSTACK_TEST_KILL_FILE`` exists, the first signal deletes it and
    kills this worker with SIGKILL: after the commit, before the signal is settled.
    """
    kill_file = os.environ.get("PARTNERSTACK_TEST_KILL_FILE")

    def receive(sender: Flask, _name: str, delivery_id: int | None = None, **extra: Any) -> None:
        if kill_file and Path(kill_file).exists():
            Path(kill_file).unlink()
            os.kill(os.getpid(), signal.SIGKILL)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{_name} {delivery_id}\n".encode())
        finally:
            os.close(fd)

    for data_signal in DATA_SIGNALS:

        def bound(sender: Flask, _name: str = data_signal.name, **extra: Any) -> None:
            receive(sender, _name, **extra)

        data_signal.connect(bound, sender=app, weak=False)


def fail_each_once(app: Flask, path: str) -> None:
    """A host handler that fails the first time it sees each ``customer.created`` event
    (the ids it failed are kept in ``path``), and succeeds the next."""

    @get_state(app).extension.handler("customer.created")
    def fail_once(event: dict[str, Any]) -> None:
        failed = Path(path).read_text().split() if Path(path).exists() else []
        if event["id"] not in failed:
            with Path(path).open("a") as file:
                file.write(event["id"] + "\n")
            raise RuntimeError(f"the first attempt at {event['id']} fails")


if os.environ.get("PARTNERSTACK_TEST_BROKER"):  # the worker's process
    flask_app, celery = create_celery_app(
        os.environ["DATABASE_URL"],
        os.environ["PARTNERSTACK_TEST_BROKER"],
        os.environ["PARTNERSTACK_TEST_QUEUE"],
        **json.loads(os.environ.get("PARTNERSTACK_TEST_CONFIG", "{}")),
    )
    if os.environ.get("PARTNERSTACK_TEST_DELIVERY_LOG"):
        log_deliveries(flask_app, os.environ["PARTNERSTACK_TEST_DELIVERY_LOG"])
    if os.environ.get("PARTNERSTACK_TEST_FAIL_ONCE_FILE"):
        fail_each_once(flask_app, os.environ["PARTNERSTACK_TEST_FAIL_ONCE_FILE"])
