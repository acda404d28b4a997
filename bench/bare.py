"""The bare-minimum receiver the benchmark compares us with: the least the job needs.

Read the body, ``stripe.WebhookSignature.verify_header``, ``json.loads``, then one
transaction: insert the event id ON CONFLICT DO NOTHING, look the customer up by its
Stripe id, upsert the transaction row. No models, no signals, no ordering rules.

``/bare/least-webhook`` is the bare minimum's job done that way (below): a hand-tuned
receiver, for the default rows' reference (the bare minimum itself is written the
straightforward way, statements built per request and the customer read by a SELECT of
its own, and the targets are set against it).

Three more routes give the floor of three targets, the least any receiver with that
guarantee can cost on the machine, so that a miss below the floor reads as the
machine's, not ours. To be a floor they do the bare minimum's job in as few statements
as it takes, each built once with placeholders (as ours are): the customer is looked
up inside the statement that needs it, not by a SELECT of its own.

- ``/bare/outbox-webhook``: plus what a durable signal needs at the least: one outbox
  row in the transaction, and after the commit one ``UPDATE`` marking it sent, alone in
  its transaction (on PostgreSQL with ``synchronous_commit`` off for it, as ours does).
  One per new event: a little more than ours, which signals only changed data.
- ``/bare/rewards-webhook``: plus what a commission needs at the least: one upsert per
  charge event of 20% of what the charge keeps, for its customer's partner
  (``INSERT ... SELECT`` from the customer row), in the same transaction.
- ``/bare/ack``: what a queued acknowledgement needs at the least: the signature and one
  durable insert of the event id with its payload (what the worker applies later),
  nothing published.
"""

from __future__ import annotations

import json
from collections.abc import Callable
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
bare_received = sa.Table(
    "bare_received", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("stripe_event_id", sa.String(255), nullable=False, unique=True),
    sa.Column("payload", sa.Text, nullable=False),
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

    # The statements' shapes, shared: the bare minimum builds them on every call, as
    # SQLAlchemy's documentation shows; the references below build them once with
    # placeholders, as ours are (building and hashing a statement costs about as much as
    # a local round trip), and look the customer up inside the statement that needs it
    # (ours does; a SELECT of its own is a round trip no receiver has to make). A floor
    # that ours can beat is no floor.
    def inserting_new(table: sa.Table, values: dict[str, Any]) -> Any:
        """INSERT, doing nothing on a conflict (run it with :func:`won`)."""
        if dialect == "mysql":  # no ON CONFLICT nor RETURNING: the insert id is 0 if not
            return mysql.insert(table).values(values).on_duplicate_key_update(id=table.c.id)
        return insert(table).values(values).on_conflict_do_nothing().returning(table.c.id)

    def won(result: Any) -> bool:
        """Whether a :func:`inserting_new` statement inserted its row."""
        if dialect == "mysql":  # the insert id is 0 when it did not
            return bool(result.lastrowid)
        return result.first() is not None

    def upserting(statement: Any, key: sa.Column[Any], columns: tuple[str, ...]) -> Any:
        """``statement`` (an INSERT) taking ``columns`` from the new row on a conflict."""
        if dialect == "mysql":
            return statement.on_duplicate_key_update(
                {name: statement.inserted[name] for name in columns}
            )
        return statement.on_conflict_do_update(
            index_elements=[key], set_={name: statement.excluded[name] for name in columns}
        )

    def insert_new(connection: sa.Connection, table: sa.Table, values: dict[str, Any]) -> bool:
        """The bare minimum's INSERT doing nothing on a conflict; True if it inserted."""
        return won(connection.execute(inserting_new(table, values)))

    def upsert_amount(connection: sa.Connection, values: dict[str, Any]) -> None:
        """The bare minimum's upsert of a transaction's amount and customer."""
        statement = insert(bare_transaction).values(values)
        connection.execute(upserting(statement, bare_transaction.c.key, ("amount", "customer_id")))

    blueprint = Blueprint("bare", __name__)

    customer = sa.bindparam("customer", type_=sa.String)
    key, amount = sa.bindparam("key", type_=sa.String), sa.bindparam("amount", type_=sa.BigInteger)
    of_customer = bare_customer.c.stripe_customer_id == customer

    least_event = inserting_new(bare_event, {"stripe_event_id": sa.bindparam("event_id")})
    least_customer = inserting_new(
        bare_customer,
        {"stripe_customer_id": sa.bindparam("customer"), "partner_key": sa.bindparam("partner")},
    )
    least_amount = upserting(
        insert(bare_transaction).values(
            key=key,
            customer_id=sa.select(bare_customer.c.id).where(of_customer).scalar_subquery(),
            amount=amount,
            currency=sa.bindparam("currency"),
        ),
        bare_transaction.c.key,
        ("amount", "customer_id"),
    )
    # 20% of what the charge keeps, for its customer's partner: one INSERT ... SELECT.
    partner = sa.select(key, bare_customer.c.partner_key, amount).where(
        of_customer, bare_customer.c.partner_key.is_not(None)
    )
    least_commission = upserting(
        insert(bare_commission).from_select(["key", "partner_key", "amount"], partner),
        bare_commission.c.key,
        ("amount",),
    )
    least_outbox = insert(bare_outbox).values(event_id=sa.bindparam("event_id"), sent=False)
    if dialect != "mysql":
        least_outbox = least_outbox.returning(bare_outbox.c.id)
    least_mark = sa.update(bare_outbox).where(bare_outbox.c.id == sa.bindparam("outbox_id"))
    least_mark = least_mark.values(sent=True)
    if dialect == "postgresql":  # synchronous_commit off in the statement itself, as ours
        relaxed = sa.func.set_config("synchronous_commit", "off", sa.true()).is_not(None)
        least_mark = least_mark.where(relaxed)
    least_received = inserting_new(
        bare_received,
        {"stripe_event_id": sa.bindparam("event_id"), "payload": sa.bindparam("payload")},
    )

    def least_record(
        connection: sa.Connection, event: dict[str, Any], commission: bool = False
    ) -> bool:
        """The bare minimum's transaction in as few statements as it takes (``commission``:
        with its commission); True if the event was new."""
        obj = event["data"]["object"]
        new = won(connection.execute(least_event, {"event_id": event["id"]}))
        if new and event["type"].startswith("customer."):
            connection.execute(
                least_customer,
                {"customer": obj["id"], "partner": obj["metadata"].get("partner_key")},
            )
        elif new and event["type"].startswith("charge."):
            connection.execute(
                least_amount,
                {"key": obj["id"], "customer": obj.get("customer"), "amount": obj["amount"],
                 "currency": obj["currency"]},
            )  # fmt: skip
            if commission:
                kept = obj["amount"] - obj.get("amount_refunded", 0)
                connection.execute(
                    least_commission,
                    {"key": obj["id"], "customer": obj.get("customer"),
                     "amount": kept * 20 // 100},
                )  # fmt: skip
        return new

    def mark_sent(outbox_id: int) -> None:
        """One ``UPDATE`` alone in its transaction: on PostgreSQL in autocommit, with
        ``synchronous_commit`` off in the statement itself (one round trip, as ours)."""
        if dialect != "postgresql":
            with engine.begin() as connection:
                connection.execute(least_mark, {"outbox_id": outbox_id})
            return
        with engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").execute(
                least_mark, {"outbox_id": outbox_id}
            )

    def verified() -> tuple[str, dict[str, Any]] | None:
        """The body and its event, when its signature holds."""
        payload = request.get_data().decode("utf-8")
        try:
            stripe.WebhookSignature.verify_header(
                payload, request.headers.get("Stripe-Signature"), secret, tolerance
            )
        except stripe.SignatureVerificationError:
            return None
        return payload, json.loads(payload)

    def record(connection: sa.Connection, event: dict[str, Any]) -> None:
        """The bare minimum's transaction."""
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

    def recording(name: str, record_event: Callable[[sa.Connection, dict[str, Any]], Any]) -> None:
        """A route that verifies, records the event in one transaction and answers."""

        def view() -> Any:
            delivery = verified()
            if delivery is None:
                return jsonify(error="bad signature"), 400
            with engine.begin() as connection:
                record_event(connection, delivery[1])
            return jsonify(status="ok")

        blueprint.add_url_rule(f"/{name}", name.replace("-", "_"), view, methods=["POST"])

    recording("webhook", record)  # the bare minimum
    recording("least-webhook", least_record)
    recording("rewards-webhook", lambda connection, event: least_record(connection, event, True))

    @blueprint.post("/outbox-webhook")
    def outbox_webhook() -> Any:
        delivery = verified()
        if delivery is None:
            return jsonify(error="bad signature"), 400
        event = delivery[1]
        with engine.begin() as connection:
            outbox_id = None
            if least_record(connection, event):
                result = connection.execute(least_outbox, {"event_id": event["id"]})
                outbox_id = result.lastrowid if dialect == "mysql" else result.scalar_one()
        if outbox_id is not None:  # sent (no receiver here), then marked sent
            mark_sent(outbox_id)
        return jsonify(status="ok")

    @blueprint.post("/ack")
    def ack() -> Any:
        delivery = verified()
        if delivery is None:
            return jsonify(error="bad signature"), 400
        payload, event = delivery
        # One statement, its own transaction: on PostgreSQL in autocommit (one round trip,
        # as ours stores a queued event; as durable, the commit waits for its flush). The
        # payload too: the worker that applies the event later reads it from there.
        with engine.connect() as connection:
            if dialect == "postgresql":
                connection.execution_options(isolation_level="AUTOCOMMIT")
            connection.execute(least_received, {"event_id": event["id"], "payload": payload})
            connection.commit()
        return jsonify(status="queued")

    return blueprint
