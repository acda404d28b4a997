"""An example host app: a small SaaS that pays partners a commission on what their customers pay.

Run it with ``make demo`` (plays a realistic event sequence) or ``make serve``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

from flask_partnerstack_stripe import PartnerStackStripe

db = SQLAlchemy()
migrate = Migrate()
partnerstack = PartnerStackStripe(db=db)

INSTANCE = Path(
    os.environ.get("EXAMPLE_APP_INSTANCE", Path(__file__).resolve().parent / "instance")
)
#: The signing secret the demo signs its events with; a real app takes it from Stripe.
DEMO_WEBHOOK_SECRET = "whsec_example_app_demo_secret"


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__, instance_path=str(INSTANCE))
    INSTANCE.mkdir(exist_ok=True)
    app.config.update(
        SECRET_KEY=os.environ.get("SECRET_KEY", "example-app-only-not-a-secret"),
        SQLALCHEMY_DATABASE_URI=os.environ.get(
            "DATABASE_URL", f"sqlite:///{INSTANCE / 'example.db'}"
        ),
        PARTNERSTACK_STRIPE_WEBHOOK_SECRETS=[
            os.environ.get("STRIPE_WEBHOOK_SECRET", DEMO_WEBHOOK_SECRET)
        ],
    )
    broker = os.environ.get("EXAMPLE_APP_CELERY_BROKER")
    if broker:  # `make demo-celery`: events are applied by a Celery worker
        app.config.update(
            PARTNERSTACK_STRIPE_PROCESSING="celery",
            CELERY={
                "broker_url": broker,
                "task_default_queue": os.environ.get("EXAMPLE_APP_CELERY_QUEUE", "celery"),
                "task_ignore_result": True,
            },
        )
    app.config.update(config or {})

    db.init_app(app)
    migrate.init_app(app, db, directory=str(Path(__file__).resolve().parent / "migrations"))
    partnerstack.init_app(app)
    if app.config.get("PARTNERSTACK_STRIPE_PROCESSING") == "celery":
        from .worker import celery_init_app

        celery_init_app(app)

    from . import commissions, views

    app.register_blueprint(views.blueprint)
    commissions.connect_receivers()
    return app
