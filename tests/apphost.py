"""A minimal host app, as a user would write it; also served by gunicorn in the server tests."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from blinker import NamedSignal
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_partnerstack_stripe import PartnerStackStripe, signals

SECRET = "whsec_test_7a1c9e1d0b5f4e2a"

#: For tests of configuration that never touch a database: they run once, not per database.
NO_DATABASE = "sqlite://"


def create_app(database_url: str | None = None, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=database_url or os.environ["DATABASE_URL"],
        PARTNERSTACK_STRIPE_WEBHOOK_SECRETS=[SECRET],
        SECRET_KEY="test-secret-key",
    )
    if os.environ.get("PARTNERSTACK_TEST_REWARDS"):  # the server tests' reward rules, as JSON
        app.config["PARTNERSTACK_STRIPE_REWARDS"] = json.loads(
            os.environ["PARTNERSTACK_TEST_REWARDS"]
        )
    app.config.update(config)
    db = SQLAlchemy()
    db.init_app(app)
    partnerstack = PartnerStackStripe(app)
    if os.environ.get("PARTNERSTACK_TEST_SIGNAL_LOG"):
        log_signals(app, os.environ["PARTNERSTACK_TEST_SIGNAL_LOG"])
    if os.environ.get("PARTNERSTACK_TEST_HANG_FILE"):
        add_hanging_handler(partnerstack, os.environ["PARTNERSTACK_TEST_HANG_FILE"])
    return app


def log_signals(app: Flask, path: str) -> None:
    """For the server tests: append one line per data signal this app sends to ``path``.

    ``transaction-recorded ch_1 12`` (the transaction's key and customer id),
    ``customer-created user-1``, or ``commission-created ch_1 200`` (the payment's key
    and the commission's amount). One ``write`` to a file opened for appending, so
    lines from several workers and threads never mix.
    """

    def append(line: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def on_transaction(signal: NamedSignal) -> None:
        def receive(sender: Flask, transaction: Any, **extra: Any) -> None:
            append(f"{signal.name} {transaction.key} {transaction.customer_id}")

        signal.connect(receive, sender=app, weak=False)

    def on_customer(signal: NamedSignal) -> None:
        def receive(sender: Flask, customer: Any, **extra: Any) -> None:
            append(f"{signal.name} {customer.customer_key}")

        signal.connect(receive, sender=app, weak=False)

    for transaction_signal in (
        signals.transaction_recorded,
        signals.transaction_updated,
        signals.transaction_deleted,
    ):
        on_transaction(transaction_signal)
    for customer_signal in (signals.customer_created, signals.customer_updated):
        on_customer(customer_signal)

    def on_commission(signal: NamedSignal) -> None:
        def receive(sender: Flask, commission: Any, transaction: Any, **extra: Any) -> None:
            append(f"{signal.name} {transaction.key} {commission.amount}")

        signal.connect(receive, sender=app, weak=False)

    for commission_signal in (
        signals.commission_created,
        signals.commission_updated,
        signals.commission_reversed,
    ):
        on_commission(commission_signal)


def add_hanging_handler(partnerstack: PartnerStackStripe, hang_file: str) -> None:
    """For the fault tests: while ``hang_file`` exists, a ``checkout.session.completed``
    handler writes its worker's pid there and hangs, mid-transaction, to be killed (or
    until the file is deleted, at most a minute)."""

    @partnerstack.handler("checkout.session.completed")
    def hang(event: dict[str, Any]) -> None:
        path = Path(hang_file)
        if path.exists():
            path.write_text(str(os.getpid()))
            deadline = time.monotonic() + 60
            while path.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
