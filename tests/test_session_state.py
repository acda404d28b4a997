"""What a host sees of the objects the extension loads and writes with Core statements:
its models' load hooks run, its unflushed changes stay, signal receivers read the
committed values and relationships, and each durable signal has its own delivery."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import orm

from flask_partnerstack_stripe import (
    CustomerMixin,
    Models,
    PartnerStackStripe,
    StripeAccountMixin,
    TransactionMixin,
    WebhookEventMixin,
    signals,
    testing,
)
from flask_partnerstack_stripe.extension import get_state

from .apphost import SECRET, create_app


def host_app(database_url: str, session_options=None, **config):
    """A host whose Customer and Transaction keep non-mapped state set on load, the way
    SQLAlchemy says to (``__init__`` is not called for loaded rows: ``@reconstructor``)."""
    db = SQLAlchemy(session_options=session_options or {})

    class Customer(CustomerMixin, db.Model):
        __tablename__ = "review_customer"

        @orm.reconstructor
        def init_on_load(self):
            self.loaded_from_db = True

    class Payment(TransactionMixin, db.Model):
        __tablename__ = "review_payment"
        customer_model, customer_table = "Customer", "review_customer"

        @orm.reconstructor
        def init_on_load(self):
            self.loaded_from_db = True

    return app_with(db, Customer, Payment, database_url, **config), db


def app_with(db, Customer, Transaction, database_url: str, **config):
    """An app of the host's ``Customer`` and ``Transaction`` models on ``db`` (its
    ``partnerstack`` attribute the extension), the tables made."""

    class Account(StripeAccountMixin, db.Model):
        __tablename__ = "review_account"

    class Event(WebhookEventMixin, db.Model):
        __tablename__ = "review_event"

    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=database_url, PARTNERSTACK_STRIPE_WEBHOOK_SECRETS=[SECRET], **config
    )
    db.init_app(app)
    app.partnerstack = PartnerStackStripe(
        app, db=db, models=Models(Customer, Transaction, Account, Event)
    )
    with app.app_context():
        db.drop_all()
        db.create_all()
    return app


def test_signal_instances_went_through_the_models_load_hooks(database_url):
    """A row the extension loads reaches the host's model as a query loads it:
    ``@reconstructor`` (and ``load`` event listeners) ran."""
    app, db = host_app(database_url)
    try:
        client = app.test_client()
        with testing.record_signals() as sent:
            metadata = {"customer_key": "u1", "partner_key": "p1"}
            post(client, "customer.created", testing.customer("cus_1", metadata=metadata))
            post(client, "charge.succeeded", testing.charge("ch_1", customer="cus_1", amount=900))
            post(client, "charge.refunded", testing.charge(
                "ch_1", customer="cus_1", amount=900, amount_refunded=900))  # fmt: skip
        names = {s.name: s.kwargs for s in sent}
        instances = {
            "customer-created": names["customer-created"]["customer"],
            "transaction-recorded": names["transaction-recorded"]["transaction"],
            "transaction-deleted": names["transaction-deleted"]["transaction"],
        }
        assert [n for n, i in instances.items() if not getattr(i, "loaded_from_db", False)] == []
    finally:
        with app.app_context():
            db.drop_all()
            db.engine.dispose()


def test_signal_instances_hold_what_the_database_holds(database_url):
    """The instances a new customer, payment and commission reach receivers in are the rows
    as the database keeps them, a host's own columns (a server default, a Python default)
    and the database's rounding of times included: compared with a fresh read. (Built
    from what was sent instead of what came back, MariaDB's would show times it rounded
    as they were sent.)"""
    db = SQLAlchemy()

    class PartnerStackCustomer(CustomerMixin, db.Model):
        plan: orm.Mapped[str] = orm.mapped_column(sa.String(20), server_default="free")

    class PartnerStackTransaction(TransactionMixin, db.Model):
        region: orm.Mapped[str] = orm.mapped_column(sa.String(20), default="eu")

    app = app_with(
        db, PartnerStackCustomer, PartnerStackTransaction, database_url,
        PARTNERSTACK_STRIPE_REWARDS=[{"percent": 20}],
    )  # fmt: skip
    partnerstack = app.partnerstack
    seen: dict[str, dict] = {}

    def keep(name):
        def receiver(app, **kwargs):
            instance = kwargs[name]
            columns = sa.inspect(instance).mapper.columns
            seen[type(instance).__name__] = {c.key: getattr(instance, c.key) for c in columns}

        return receiver

    receivers = [
        (signals.customer_created, keep("customer")),
        (signals.transaction_recorded, keep("transaction")),
        (signals.commission_created, keep("commission")),
    ]
    for signal, receiver in receivers:
        signal.connect(receiver)
    try:
        client = app.test_client()
        metadata = {"customer_key": "u1", "partner_key": "p1"}
        post(client, "customer.created", testing.customer(
            "cus_1", email="ada@example.com", name="Ada", metadata=metadata))  # fmt: skip
        post(client, "charge.succeeded", testing.charge(
            "ch_1", customer="cus_1", amount=900, metadata={"product_key": "team"}))  # fmt: skip
        with app.app_context():
            written = (
                PartnerStackCustomer,
                PartnerStackTransaction,
                partnerstack.models.Commission,
            )
            stored = {
                model.__name__: dict(db.session.execute(sa.select(model.__table__)).one()._mapping)
                for model in written
            }
        assert seen == stored
        assert seen["PartnerStackCustomer"]["plan"] == "free"
        assert seen["PartnerStackTransaction"]["region"] == "eu"
    finally:
        for signal, receiver in receivers:
            signal.disconnect(receiver)
        with app.app_context():
            db.drop_all()
            db.engine.dispose()


def post(client, event_type: str, obj: dict) -> None:
    response = testing.post_event(client, testing.event(event_type, obj))
    assert response.status_code == 200, response.json
    assert response.json["status"] == "processed", response.json


def test_create_customer_keeps_the_hosts_unflushed_change_of_that_customer(database_url):
    """A host whose session does not autoflush (``session_options={"autoflush": False}``)
    changes a customer, then records its signup: the change is committed with it (the
    customer the look-up finds is the session's own, pending change and all)."""
    app, db = host_app(database_url, session_options={"autoflush": False})
    partnerstack = app.partnerstack
    Customer = partnerstack.models.Customer
    try:
        with app.test_request_context():
            partnerstack.create_customer("u1", "u1@example.com", partner_key="p1")
            db.session.remove()
        with app.test_request_context():
            customer = db.session.scalars(sa.select(Customer)).one()
            customer.name = "Ada"  # the host's own change, not flushed yet
            again = partnerstack.create_customer("u1", "u1@example.com")
            assert again is customer
            assert again.name == "Ada"
            db.session.remove()
        with app.app_context():
            assert db.session.scalars(sa.select(Customer.name)).one() == "Ada"
    finally:
        with app.app_context():
            db.drop_all()
            db.engine.dispose()


DURABLE_REWARDS = {
    "PARTNERSTACK_STRIPE_DURABLE_SIGNALS": True,
    "PARTNERSTACK_STRIPE_REWARDS": [{"percent": 20}],
}


@pytest.mark.parametrize("app_config", [DURABLE_REWARDS])
def test_one_event_many_durable_signals_each_its_own_delivery(client, rows, models):
    """Passes: an orphan found by Stripe id and by email at once is attached once, its
    commission created, and each data signal has its own delivery, marked delivered."""
    post(client, "charge.succeeded", testing.charge(
        "ch_1", customer="cus_1", amount=1000, email="a@example.com"))  # fmt: skip
    post(client, "charge.succeeded", testing.charge(
        "ch_2", customer="cus_1", amount=500, email="a@example.com"))  # fmt: skip
    with testing.record_signals() as sent:
        metadata = {"customer_key": "u1", "partner_key": "p1"}
        post(client, "customer.created", testing.customer(
            "cus_1", email="a@example.com", metadata=metadata))  # fmt: skip
    data = [s for s in sent if "delivery_id" in s.kwargs]
    assert sorted(s.name for s in data) == [
        "commission-created", "commission-created", "customer-created",
        "transaction-updated", "transaction-updated",
    ]  # fmt: skip
    deliveries = {d.id: d for d in rows(models.SignalDelivery)}
    ids = [s.kwargs["delivery_id"] for s in data]
    assert len(set(ids)) == len(ids) and set(ids) <= set(deliveries)
    assert all(deliveries[i].signal == s.name for i, s in zip(ids, data, strict=True))
    assert all(deliveries[i].status == "delivered" for i in ids)
    assert [(c.amount, c.status) for c in rows(models.Commission)] == [
        (200, "pending"),
        (100, "pending"),
    ]
    assert all(t.customer_id is not None for t in rows(models.Transaction))


@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_REWARDS": [{"percent": 20}]}])
def test_receivers_read_committed_values_and_relationships(client, models):
    """Passes: receivers of the instances ``loaded`` made read the committed values and
    lazy relationships after the commit."""
    seen = []

    def deleted(app, transaction, **extra):
        seen.append(("deleted", transaction.amount, transaction.deleted_at is not None,
                     transaction.deleted_reason, transaction.customer.customer_key))  # fmt: skip

    def reversed_(app, commission, transaction, **extra):
        seen.append(("reversed", commission.amount, commission.status,
                     commission.transaction.key, commission.reversed_at is not None))  # fmt: skip

    def updated(app, transaction, **extra):
        seen.append(("updated", transaction.amount, transaction.customer.customer_key))

    signals.transaction_deleted.connect(deleted)
    signals.commission_reversed.connect(reversed_)
    signals.transaction_updated.connect(updated)
    try:
        post(client, "charge.succeeded", testing.charge("ch_0", customer="cus_1", amount=700))
        metadata = {"customer_key": "u1", "partner_key": "p1"}
        post(client, "customer.created", testing.customer("cus_1", metadata=metadata))
        post(client, "charge.succeeded", testing.charge("ch_1", customer="cus_1", amount=900))
        post(client, "charge.refunded", testing.charge(
            "ch_1", customer="cus_1", amount=900, amount_refunded=900))  # fmt: skip
    finally:
        signals.transaction_deleted.disconnect(deleted)
        signals.commission_reversed.disconnect(reversed_)
        signals.transaction_updated.disconnect(updated)
    assert seen == [
        ("updated", 700, "u1"),
        ("deleted", 900, True, "refund", "u1"),
        ("reversed", 0, "reversed", "ch_1", True),
    ]


def test_create_customer_keeps_the_hosts_unflushed_change_of_its_payment(database_url):
    """Passes (kept as a guard). Default session (autoflush on): the host changes one of
    a customer's payments, then gives the customer its partner with ``create_customer``:
    the change is committed and the commission sees it. ``follow_customer``'s Core SELECT
    does not autoflush, and ``loaded`` would reset the payment's attributes to the row's,
    but ``record_signup`` flushes the filled-in partner first, and so the host's change."""
    app, db = host_app(database_url, PARTNERSTACK_STRIPE_REWARDS=[{"percent": 20}])
    partnerstack = app.partnerstack
    Payment, Commission = partnerstack.models.Transaction, partnerstack.models.Commission
    try:
        client = app.test_client()
        post(client, "charge.succeeded", testing.charge("ch_1", email="a@example.com"))
        with app.test_request_context():
            partnerstack.create_customer("u1", "a@example.com")  # no partner yet
            db.session.remove()
        with app.test_request_context():
            payment = db.session.scalars(sa.select(Payment)).one()
            assert payment.customer.customer_key == "u1"
            payment.product_key = "team"  # the host's own change, not flushed yet
            partnerstack.create_customer("u1", None, partner_key="p1")
            db.session.remove()
        with app.app_context():
            assert db.session.scalars(sa.select(Payment.product_key)).one() == "team"
            assert db.session.scalars(sa.select(Commission.product_key)).one() == "team"
    finally:
        with app.app_context():
            db.drop_all()
            db.engine.dispose()


def test_a_before_request_read_does_not_hide_what_other_workers_committed(app, models, rows):
    """A host hook that queries on every request opens the session's transaction before
    the webhook. On MySQL/MariaDB that transaction is REPEATABLE READ, its snapshot taken
    then: a customer another worker commits right after would be invisible to the
    charge's rules, and the charge would stay without its customer for good."""
    db = app.extensions["sqlalchemy"]
    delivered_meanwhile: list[int] = []
    hooked: list[bool] = []
    customer = testing.event(
        "customer.created",
        testing.customer("cus_1", metadata={"customer_key": "u1", "partner_key": "p1"}),
    )

    @app.before_request
    def load_settings() -> None:
        db.session.execute(sa.select(models.WebhookEvent.id).limit(1)).all()
        if not hooked:  # another worker delivers the customer now
            hooked.append(True)
            worker = threading.Thread(
                target=lambda: delivered_meanwhile.append(
                    testing.post_event(app.test_client(), customer, secret=SECRET).status_code
                )
            )
            worker.start()
            worker.join()

    charge = testing.event("charge.succeeded", testing.charge("ch_1", customer="cus_1"))
    response = testing.post_event(app.test_client(), charge, secret=SECRET)
    assert delivered_meanwhile == [200] and response.status_code == 200, response.json
    [found] = rows(models.Customer)
    [transaction] = rows(models.Transaction)
    assert transaction.customer_id == found.id


def test_a_webhook_never_commits_another_requests_event_on_a_shared_connection():
    """In-memory SQLite is one connection all threads share: a webhook that began a
    read there (a manual endpoint looks its account up) must not commit it, or it
    would commit another thread's event halfway, whose 500 would then be a lie."""
    app = create_app("sqlite://")
    state = get_state(app)
    with app.app_context():
        state.db.create_all()
        endpoint_id = state.extension.create_endpoint("acct_1ABC", "whsec_endpoint_1").endpoint_id
    inside, go = threading.Event(), threading.Event()

    @state.extension.handler("charge.succeeded")
    def fails_once_the_other_request_came(event):
        inside.set()
        go.wait(10)
        raise RuntimeError("the host handler fails: the whole event rolls back")

    answers = {}

    def failing():
        event = testing.event("charge.succeeded", testing.charge("ch_fail", amount=5000))
        answers["failing"] = testing.post_event(app.test_client(), event).status_code

    first = threading.Thread(target=failing)
    first.start()
    assert inside.wait(10)
    other = testing.event("customer.created", testing.customer("cus_B"), account="acct_1ABC")
    second = threading.Thread(
        target=lambda: answers.setdefault(
            "other",
            testing.post_event(
                app.test_client(),
                other,
                secret="whsec_endpoint_1",
                url=f"/partnerstack/webhook/{endpoint_id}",
            ).status_code,
        )
    )
    second.start()
    time.sleep(0.5)  # the second request waits for the shared connection
    go.set()
    first.join(20)
    second.join(20)
    assert answers == {"failing": 500, "other": 200}
    with app.app_context(), state.db.engine.connect() as connection:
        events = dict(connection.execute(sa.select(
            state.models.WebhookEvent.stripe_event_id, state.models.WebhookEvent.status
        )).all())  # fmt: skip
        paid = connection.execute(sa.select(state.models.Transaction.key)).all()
    assert paid == [] and sorted(events.values()) == ["failed", "ignored"]


@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_REWARDS": [{"percent": 20}]}])
def test_a_receiver_of_one_signal_gets_session_instances_of_every_row_it_carries(client):
    """Passes: with a receiver on ``commission_created`` only (none on
    ``transaction_recorded``), the commission and the payment it carries are both the
    session's instances, related to each other, as a query would give them."""
    seen = []

    def created(app, commission, transaction, **extra):
        seen.append((
            sa.inspect(commission).persistent, sa.inspect(transaction).persistent,
            commission.transaction is transaction, transaction.customer.customer_key,
            commission.amount,
        ))  # fmt: skip

    signals.commission_created.connect(created)
    try:
        metadata = {"customer_key": "u1", "partner_key": "p1"}
        post(client, "customer.created", testing.customer("cus_1", metadata=metadata))
        post(client, "charge.succeeded", testing.charge("ch_1", customer="cus_1", amount=900))
    finally:
        signals.commission_created.disconnect(created)
    assert seen == [(True, True, True, "u1", 180)]


def test_a_host_handler_that_loads_the_payment_shares_it_with_receivers(client, state, models):
    """Passes: a host handler reads the payment through the ORM and changes it; the
    signal's receiver gets that very instance, change included, as the database has it."""
    db = state.db
    Transaction = models.Transaction

    def tag(event):
        payment = db.session.scalars(
            sa.select(Transaction).where(Transaction.key == event["data"]["object"]["id"])
        ).one()
        payment.product_key = "tagged-by-host"
        handled.append(payment)

    handled, seen = [], []

    def recorded(app, transaction, **extra):
        seen.append((transaction is handled[0], transaction.product_key))

    state.extension.handler("charge.succeeded")(tag)
    signals.transaction_recorded.connect(recorded)
    try:
        post(client, "charge.succeeded", testing.charge("ch_1", customer="cus_1", amount=900))
    finally:
        signals.transaction_recorded.disconnect(recorded)
    assert seen == [(True, "tagged-by-host")]
    with client.application.app_context():
        assert db.session.scalars(sa.select(Transaction.product_key)).one() == "tagged-by-host"


def seen_by_receiver(client, state, signal, read, handler, event_type, obj):
    """Post one event of ``event_type`` with ``handler`` as the host's handler of it; what
    ``read`` took from each ``signal`` sent."""
    seen = []

    def receiver(app, **kwargs):
        seen.append(read(**kwargs))

    state.extension.handler(event_type)(handler)
    signal.connect(receiver)
    try:
        post(client, event_type, obj)
    finally:
        signal.disconnect(receiver)
    return seen


def tag_by_update(db, Transaction, key):
    """An ORM ``UPDATE`` (which brings the session's instances in step)."""
    db.session.execute(
        sa.update(Transaction).where(Transaction.key == key).values(product_key="tagged-by-host")
    )


def tag_by_flush(db, Transaction, key):
    """Load it, change it and flush, keeping no reference to it (the session holds clean
    instances weakly)."""
    payment = db.session.scalars(sa.select(Transaction).where(Transaction.key == key)).one()
    payment.product_key = "tagged-by-host"
    db.session.flush()


@pytest.mark.parametrize("tag", [tag_by_update, tag_by_flush], ids=["orm-update", "flush"])
def test_a_host_handlers_change_of_the_payment_reaches_receivers(client, state, models, tag):
    """Passes: a host handler tags the payment through the ORM: the signal's receiver
    reads the tag."""
    charge = testing.charge("ch_1", customer="cus_1", amount=900)
    seen = seen_by_receiver(
        client, state, signals.transaction_recorded, lambda transaction, **extra:
        transaction.product_key, lambda event: tag(state.db, models.Transaction, "ch_1"),
        "charge.succeeded", charge,
    )  # fmt: skip
    assert seen == ["tagged-by-host"]


@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_REWARDS": [{"percent": 20}]}])
def test_a_host_handler_that_approves_commissions_leaves_the_events_rows_to_its_signals(
    client, state
):
    """Passes: a host handler of ``charge.refunded`` approves commissions (their signals
    join the event's transaction): the event's own signals still carry the session's
    instances, whose relationships load."""
    metadata = {"customer_key": "u1", "partner_key": "p1"}
    post(client, "customer.created", testing.customer("cus_1", metadata=metadata))
    post(client, "charge.succeeded", testing.charge("ch_1", customer="cus_1", amount=900))
    refunded = testing.charge("ch_1", customer="cus_1", amount=900, amount_refunded=900)
    seen = seen_by_receiver(
        client, state, signals.transaction_deleted, lambda transaction, **extra:
        (sa.inspect(transaction).persistent, transaction.customer.customer_key),
        lambda event: state.extension.approve_commissions(), "charge.refunded", refunded,
    )  # fmt: skip
    assert seen == [(True, "u1")]


REWARDS = {"PARTNERSTACK_STRIPE_REWARDS": [{"percent": 20}]}


@pytest.mark.parametrize("app_config", [REWARDS])
def test_a_host_handlers_bulk_update_after_its_create_customer_reaches_receivers(
    client, state, models
):
    """Passes: a host handler gives the payment's customer its partner (``create_customer``,
    which creates the commission in the event's transaction), then tags the commission
    with an ORM ``UPDATE``: the ``commission_created`` receiver reads the tag."""
    db, Commission = state.db, models.Commission

    def signup(event):
        state.extension.create_customer("u1", None, partner_key="p1")
        db.session.execute(sa.update(Commission).values(product_key="tagged-by-host"))

    charge = testing.charge("ch_1", amount=900, metadata={"customer_key": "u1"})
    seen = seen_by_receiver(
        client, state, signals.commission_created, lambda commission, **extra:
        commission.product_key, signup, "charge.succeeded", charge,
    )  # fmt: skip
    with client.application.app_context():
        assert db.session.scalars(sa.select(Commission.product_key)).all() == ["tagged-by-host"]
    assert seen == ["tagged-by-host"]


@pytest.mark.parametrize("app_config", [REWARDS])
def test_a_host_handlers_flushed_change_after_its_create_customer_reaches_receivers(
    client, state, models
):
    """Passes: as above, but the handler loads the new commission, changes it and flushes,
    keeping no reference to it: the receiver reads the change."""
    db, Commission = state.db, models.Commission

    def signup(event):
        state.extension.create_customer("u1", None, partner_key="p1")
        commission = db.session.scalars(sa.select(Commission)).one()
        commission.product_key = "tagged-by-host"
        db.session.flush()

    charge = testing.charge("ch_1", amount=900, metadata={"customer_key": "u1"})
    seen = seen_by_receiver(
        client, state, signals.commission_created, lambda commission, **extra:
        commission.product_key, signup, "charge.succeeded", charge,
    )  # fmt: skip
    assert seen == ["tagged-by-host"]


@pytest.mark.parametrize("app_config", [REWARDS])
def test_a_hosts_before_commit_hook_finds_the_events_rows_in_the_session(client, state, models):
    """Passes: a host's ``before_commit`` hook (say, a cache invalidation) looks for the
    payments and commissions the event's transaction holds: it finds them, receivers or
    not."""
    db = state.db
    seen = []

    def before_commit(session):
        seen.append(sorted(
            "commission" if isinstance(obj, models.Commission) else "transaction"
            for obj in session.identity_map.values()
            if isinstance(obj, (models.Transaction, models.Commission))
        ))  # fmt: skip

    metadata = {"customer_key": "u1", "partner_key": "p1"}
    post(client, "customer.created", testing.customer("cus_1", metadata=metadata))
    sa.event.listen(db.session, "before_commit", before_commit)
    try:
        post(client, "charge.succeeded", testing.charge("ch_1", customer="cus_1", amount=900))
    finally:
        sa.event.remove(db.session, "before_commit", before_commit)
    assert [names for names in seen if names] == [["commission", "transaction"]]
