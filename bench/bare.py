"""The bare-minimum receiver the benchmark compares us with: the least the job needs.

Read the body, ``stripe.WebhookSignature.verify_header``, ``json.loads``, then one
transaction: insert the event id ON CONFLICT DO NOTHING, look the customer up by its
Stripe id, upsert the transaction row. No models, no signals, no ordering rules.

Two more routes give the floor of two targets, the least any receiver with that
guarantee can cost on the machine, so that a miss below the floor reads as the
machine's, not ours:

- ``/bare/outbox-webhook``: the same, plus what a durable signal needs at the least:
  one outbox row in the transaction, and after the commit one ``UPDATE`` marking it
  sent, alone in its transaction (on PostgreSQL with ``synchronous_commit`` off for it,
  as ours does).
- ``/bare/rewards-webhook``: the same, plus what a commission needs at the least: one
  upsert per charge event of 20% of what the charge keeps, for its customer's partner
  (``INSERT ... SELECT`` from the customer row), in the same transaction.
- ``/bare/ack``: what a queued acknowledgement needs at the least: the signature and one
  durable insert of the event id, nothing published.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
import stripe
from flask import Blueprint, jsonify, request
from sqlalchemy.dialects import mysql, postgresql, sqlite

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
bare_commission = sa.Table(
    "bare_commission", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("key", sa.String(255), nullable=False, unique=True),
    sa.Column("partner_key", sa.String(255), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
)  # fmt: skip
bare_outbox = sa.Table(
    "bare_outbox", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("event_id", sa.String(255), nullable=False),
    sa.Column("sent", sa.Boolean, nullable=False),
)  # fmt: skip


def create_bare_blueprint(engine: sa.Engine, secret: str, tolerance: int) -> Blueprint:
    dialect = engine.dialect.name
    if dialect == "mariadb":  # a mariadb+pymysql:// URL: MySQL's dialect all the same
        dialect = "mysql"
    insert = {"postgresql": postgresql.insert, "mysql": mysql.insert}.get(dialect, sqlite.insert)

    def insert_new(connection: sa.Connection, table: sa.Table, values: dict[str, Any]) -> bool:
        """INSERT, doing nothing on a conflict; True if it inserted (the bare minimum)."""
        if dialect == "mysql":  # no ON CONFLICT nor RETURNING: the insert id is 0 if not
            statement = mysql.insert(table).values(values)
            done = connection.execute(statement.on_duplicate_key_update(id=table.c.id))
            return bool(done.lastrowid)
        statement = insert(table).values(values).on_conflict_do_nothing()
        return connection.execute(statement.returning(table.c.id)).first() is not None

    def upsert_amount(connection: sa.Connection, values: dict[str, Any]) -> None:
        statement = insert(bare_transaction).values(values)
        if dialect == "mysql":
            connection.execute(
                statement.on_duplicate_key_update(
                    amount=statement.inserted.amount, customer_id=statement.inserted.customer_id
                )
            )
            return
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=[bare_transaction.c.key],
                set_={"amount": statement.excluded.amount,
                      "customer_id": statement.excluded.customer_id},
            )
        )  # fmt: skip

    blueprint = Blueprint("bare", __name__)

    def upsert_commission(connection: sa.Connection, charge: dict[str, Any]) -> None:
        """20% of what the charge keeps, for its customer's partner: one statement."""
        kept = charge["amount"] - charge.get("amount_refunded", 0)
        partner = sa.select(
            sa.literal(charge["id"]), bare_customer.c.partner_key, sa.literal(kept * 20 // 100)
        ).where(
            bare_customer.c.stripe_customer_id == charge.get("customer"),
            bare_customer.c.partner_key.is_not(None),
        )
        statement = insert(bare_commission).from_select(["key", "partner_key", "amount"], partner)
        if dialect == "mysql":
            connection.execute(statement.on_duplicate_key_update(amount=statement.inserted.amount))
            return
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=[bare_commission.c.key], set_={"amount": statement.excluded.amount}
            )
        )

    def mark_sent(outbox_id: int) -> None:
        """One ``UPDATE`` alone in its transaction: on PostgreSQL in autocommit, with
        ``synchronous_commit`` off in the statement itself (one round trip, as ours)."""
        mark = sa.update(bare_outbox).where(bare_outbox.c.id == outbox_id).values(sent=True)
        if dialect != "postgresql":
            with engine.begin() as connection:
                connection.execute(mark)
            return
        relaxed = sa.func.set_config("synchronous_commit", "off", sa.true()).is_not(None)
        with engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").execute(mark.where(relaxed))

    def verified() -> dict[str, Any] | None:
        payload = request.get_data().decode("utf-8")
        try:
            stripe.WebhookSignature.verify_header(
                payload, request.headers.get("Stripe-Signature"), secret, tolerance
            )
        except stripe.SignatureVerificationError:
            return None
        event: dict[str, Any] = json.loads(payload)
        return event

    def record(connection: sa.Connection, event: dict[str, Any], commission: bool = False) -> bool:
        """The bare minimum's transaction (``commission``: with its commission); True if
        the event was new."""
        obj = event["data"]["object"]
        new = insert_new(connection, bare_event, {"stripe_event_id": event["id"]})
        if new and event["type"].startswith("customer."):
            insert_new(
                connection,
                bare_customer,
                {"stripe_customer_id": obj["id"],
                 "partner_key": obj["metadata"].get("partner_key")},
            )  # fmt: skip
        elif new and event["type"].startswith("charge."):
            customer_id = connection.execute(
                sa.select(bare_customer.c.id).where(
                    bare_customer.c.stripe_customer_id == obj.get("customer")
                )
            ).scalar()
            upsert_amount(
                connection,
                {"key": obj["id"], "customer_id": customer_id, "amount": obj["amount"],
                 "currency": obj["currency"]},
            )  # fmt: skip
            if commission:
                upsert_commission(connection, obj)
        return new

    @blueprint.post("/webhook")
    def webhook() -> Any:
        event = verified()
        if event is None:
            return jsonify(error="bad signature"), 400
        with engine.begin() as connection:
            record(connection, event)
        return jsonify(status="ok")

    @blueprint.post("/rewards-webhook")
    def rewards_webhook() -> Any:
        event = verified()
        if event is None:
            return jsonify(error="bad signature"), 400
        with engine.begin() as connection:
            record(connection, event, commission=True)
        return jsonify(status="ok")

    @blueprint.post("/outbox-webhook")
    def outbox_webhook() -> Any:
        event = verified()
        if event is None:
            return jsonify(error="bad signature"), 400
        with engine.begin() as connection:
            outbox_id = None
            if record(connection, event):
                outbox_id = connection.execute(
                    sa.insert(bare_outbox).values(event_id=event["id"], sent=False)
                ).inserted_primary_key[0]
        if outbox_id is not None:  # sent (no receiver here), then marked sent
            mark_sent(outbox_id)
        return jsonify(status="ok")

    @blueprint.post("/ack")
    def ack() -> Any:
        event = verified()
        if event is None:
            return jsonify(error="bad signature"), 400
        # One statement, its own transaction: on PostgreSQL in autocommit (one round trip,
        # as ours stores a queued event; as durable, the commit waits for its flush).
        with engine.connect() as connection:
            if dialect == "postgresql":
                connection.execution_options(isolation_level="AUTOCOMMIT")
            insert_new(connection, bare_event, {"stripe_event_id": event["id"]})
            connection.commit()
        return jsonify(status="queued")

    return blueprint
