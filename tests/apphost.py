"""A minimal host app, as a user would write it; also served by gunicorn in the server tests."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_partnerstack_stripe import PartnerStackStripe

SECRET = "whsec_test_7a1c9e1d0b5f4e2a"


def create_app(database_url: str | None = None, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=database_url or os.environ["DATABASE_URL"],
        PARTNERSTACK_STRIPE_WEBHOOK_SECRETS=[SECRET],
        SECRET_KEY="test-secret-key",
    )
    app.config.update(config)
    db = SQLAlchemy()
    db.init_app(app)
    partnerstack = PartnerStackStripe(app)
    if os.environ.get("PARTNERSTACK_TEST_HANG_FILE"):
        add_hanging_handler(partnerstack, os.environ["PARTNERSTACK_TEST_HANG_FILE"])
    return app


def add_hanging_handler(partnerstack: PartnerStackStripe, hang_file: str) -> None:
    """For the fault tests: while ``hang_file`` exists, a ``checkout.session.completed``
    handler writes its worker's pid there and hangs, mid-transaction, to be killed."""

    @partnerstack.handler("checkout.session.completed")
    def hang(event: dict[str, Any]) -> None:
        path = Path(hang_file)
        if path.exists():
            path.write_text(str(os.getpid()))
            time.sleep(60)
