"""The bare-minimum receiver the benchmark compares us with: the least the job needs.

Read the body, ``stripe.WebhookSignature.verify_header``, ``json.loads``, then one
transaction: insert the event id ON CONFLICT DO NOTHING, look the customer up by its
Stripe id, upsert the transaction row. No models, no signals, no ordering rules.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
import stripe
from flask import Blueprint, jsonify, request
from sqlalchemy.dialects import postgresql, sqlite

metadata = sa.MetaData()
bare_event = sa.Table(
    "bare_event", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("stripe_event_id", sa.String(255), nullable=False, unique=True),
)  # fmt: skip
bare_customer = sa.Table(
    "bare_customer", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("stripe_customer_id", sa.String(255), nullable=False, unique=True),
    sa.Column("partner_key", sa.String(255)),
)  # fmt: skip
bare_transaction = sa.Table(
    "bare_transaction", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("key", sa.String(255), nullable=False, unique=True),
    sa.Column("customer_id", sa.Integer),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
)  # fmt: skip


def create_bare_blueprint(engine: sa.Engine, secret: str, tolerance: int) -> Blueprint:
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    blueprint = Blueprint("bare", __name__)

    @blueprint.post("/webhook")
    def webhook() -> Any:
        payload = request.get_data().decode("utf-8")
        try:
            stripe.WebhookSignature.verify_header(
                payload, request.headers.get("Stripe-Signature"), secret, tolerance
            )
        except stripe.SignatureVerificationError:
            return jsonify(error="bad signature"), 400
        event = json.loads(payload)
        obj = event["data"]["object"]
        with engine.begin() as connection:
            new = connection.execute(
                insert(bare_event).values(stripe_event_id=event["id"])
                .on_conflict_do_nothing().returning(bare_event.c.id)
            ).first()  # fmt: skip
            if new is not None and event["type"].startswith("customer."):
                connection.execute(
                    insert(bare_customer)
                    .values(stripe_customer_id=obj["id"],
                            partner_key=obj["metadata"].get("partner_key"))
                    .on_conflict_do_nothing()
                )  # fmt: skip
            elif new is not None and event["type"].startswith("charge."):
                customer_id = connection.execute(
                    sa.select(bare_customer.c.id).where(
                        bare_customer.c.stripe_customer_id == obj.get("customer")
                    )
                ).scalar()
                statement = insert(bare_transaction).values(
                    key=obj["id"], customer_id=customer_id, amount=obj["amount"],
                    currency=obj["currency"],
                )  # fmt: skip
                connection.execute(
                    statement.on_conflict_do_update(
                        index_elements=[bare_transaction.c.key],
                        set_={"amount": statement.excluded.amount,
                              "customer_id": statement.excluded.customer_id},
                    )
                )  # fmt: skip
        return jsonify(status="ok")

    return blueprint
