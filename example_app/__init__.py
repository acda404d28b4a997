"""An example host app: a small SaaS that pays partners a commission on what their customers pay.

The commissions are the extension's (``PARTNERSTACK_STRIPE_REWARDS``): the app only shows
them, and runs payouts from its payouts page.

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
#: Commission per product key; products not listed earn the default rule's 15%.
REWARDS = [
    {"percent": 15},
    {"percent": 20, "product_key": "starter"},
    {"percent": 25, "product_key": "team"},
    {"percent": 30, "product_key": "enterprise"},
]
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
        # The partner program: a rate per product, 15% on anything else.
        PARTNERSTACK_STRIPE_REWARDS=REWARDS,
        # A real program holds commissions through its refund window (30 days by
        # default); the demo approves them at once so that its payouts page has work.
        PARTNERSTACK_STRIPE_COMMISSION_HOLD_DAYS=int(os.environ.get("COMMISSION_HOLD_DAYS", 0)),
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

    from . import views

    app.register_blueprint(views.blueprint)
    return app
