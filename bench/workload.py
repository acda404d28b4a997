"""The benchmark's app (ours and the bare minimum, side by side) and its event mix."""

from __future__ import annotations

import json
import os
import random
from typing import Any

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_partnerstack_stripe import PartnerStackStripe, testing

from .bare import create_bare_blueprint, metadata

SECRET = "whsec_benchmark_secret"
TOLERANCE = 24 * 3600  # signatures are made before the run; a long run must not expire them
OURS, BARE = "/partnerstack/webhook", "/bare/webhook"
#: The floors (``bare.py``): the bare minimum with commissions, with a durable outbox, and
#: a bare queued acknowledgement.
BARE_REWARDS, BARE_OUTBOX = "/bare/rewards-webhook", "/bare/outbox-webhook"
BARE_ACK = "/bare/ack"
#: The bare minimum's job hand-tuned (``bare.py``): the default rows' reference.
BARE_LEAST = "/bare/least-webhook"

Delivery = tuple[bytes, dict[str, str]]


def shown(ratio: float, at_least: float) -> str:
    """``ratio`` to two decimals, or three where two would round a miss up to ``at_least``
    (0.897 is not 0.90)."""
    text = f"{ratio:.2f}"
    if ratio < at_least <= float(text):
        text = f"{ratio:.3f}"
    return f"{text}x"


def create_app(database_url: str | None = None, **config: Any) -> Flask:
    """Ours at /partnerstack/webhook and the bare minimum at /bare/webhook, on one database."""
    url = database_url or os.environ["BENCH_DATABASE_URL"]
    app = Flask("bench")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=url,
        PARTNERSTACK_STRIPE_WEBHOOK_SECRETS=[SECRET],
        PARTNERSTACK_STRIPE_SIGNATURE_TOLERANCE=TOLERANCE,
    )
    app.config.update(config)
    db = SQLAlchemy()
    db.init_app(app)
    PartnerStackStripe(app)
    with app.app_context():
        engine = db.engine
    app.register_blueprint(create_bare_blueprint(engine, SECRET, TOLERANCE), url_prefix="/bare")
    return app


def reset_tables(app: Flask) -> None:
    drop_tables(app)
    db = app.extensions["sqlalchemy"]
    with app.app_context():
        db.create_all()
        metadata.create_all(db.engine)


def drop_tables(app: Flask) -> None:
    """Ours and the bare minimum's."""
    db = app.extensions["sqlalchemy"]
    with app.app_context():
        db.drop_all()
        metadata.drop_all(db.engine)


def signed(event: dict[str, Any]) -> Delivery:
    payload = json.dumps(event)
    return payload.encode(), {
        "Stripe-Signature": testing.sign(payload, SECRET),
        "Content-Type": "application/json",
    }


#: Every charge's metadata, on its first event and on every later one, as Stripe sends it.
CHARGE_METADATA = {"product_key": "team"}


class Mix:
    """A realistic stream: new customers, new charges, updates, redeliveries, refunds."""

    WEIGHTS = {"customer": 20, "charge": 40, "update": 15, "redelivery": 15, "refund": 10}

    def __init__(self, prefix: str, seed: int = 7) -> None:
        self.prefix = prefix
        self.random = random.Random(seed)
        self.customers: list[str] = []
        self.charges: list[tuple[str, str, int]] = []
        self.sent: list[Delivery] = []
        self.count = 0

    def _id(self, kind: str) -> str:
        self.count += 1
        return f"{kind}_{self.prefix}_{self.count}"

    def next(self) -> Delivery:
        kinds, weights = zip(*self.WEIGHTS.items(), strict=True)
        kind = self.random.choices(kinds, weights)[0]
        if kind == "customer" or not self.customers:
            return self.customer()
        if kind == "redelivery" and self.sent:
            return self.random.choice(self.sent)
        if kind in ("update", "refund") and self.charges:
            charge_id, customer, amount = self.random.choice(self.charges)
            refunded = amount if kind == "refund" else 0
            charge = testing.charge(
                charge_id,
                customer=customer,
                amount=amount,
                amount_refunded=refunded,
                metadata=CHARGE_METADATA,
            )
            event_type = "charge.refunded" if kind == "refund" else "charge.updated"
            return self._remember(signed(testing.event(event_type, charge, id=self._id("evt"))))
        return self.charge()

    def customer(self) -> Delivery:
        stripe_id = self._id("cus")
        self.customers.append(stripe_id)
        metadata = {"customer_key": f"user-{stripe_id}", "partner_key": f"p{self.count % 50}"}
        obj = testing.customer(stripe_id, email=f"{stripe_id}@example.com", metadata=metadata)
        return self._remember(signed(testing.event("customer.created", obj, id=self._id("evt"))))

    def charge(self) -> Delivery:
        charge_id, customer = self._id("ch"), self.random.choice(self.customers)
        amount = self.random.randrange(500, 50_000)
        self.charges.append((charge_id, customer, amount))
        obj = testing.charge(charge_id, customer=customer, amount=amount, metadata=CHARGE_METADATA)
        return self._remember(signed(testing.event("charge.succeeded", obj, id=self._id("evt"))))

    def _remember(self, delivery: Delivery) -> Delivery:
        self.sent.append(delivery)
        if len(self.sent) > 500:
            del self.sent[: len(self.sent) - 500]
        return delivery

    def batch(self, n: int) -> list[Delivery]:
        return [self.next() for _ in range(n)]
