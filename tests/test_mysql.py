"""What is particular to MySQL/MariaDB: URLs, named locks, isolation (the rest runs everywhere)."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from flask_partnerstack_stripe import locks, testing
from flask_partnerstack_stripe.customers import Party
from flask_partnerstack_stripe.extension import get_state

from .apphost import create_app
from .conftest import use_mariadb


@pytest.fixture
def database_url() -> str:
    return use_mariadb()


def test_mariadb_url_scheme_works_too(database_url):
    # mariadb+pymysql:// gives SQLAlchemy's "mariadb" dialect name, MySQL's statements.
    url = sa.make_url(database_url).set(drivername="mariadb+pymysql")
    app = create_app(url.render_as_string(hide_password=False))
    state = get_state(app)
    with app.app_context():
        state.db.drop_all()
        state.db.create_all()
        try:
            client = app.test_client()
            event = testing.event("charge.succeeded", testing.charge("ch_m", customer=None))
            assert testing.post_event(client, event).json["status"] == "processed"
            assert testing.post_event(client, event).json["status"] == "duplicate"
            assert [
                t.key for t in state.db.session.scalars(sa.select(state.models.Transaction))
            ] == ["ch_m"]
        finally:
            state.db.session.remove()
            state.db.drop_all()
            state.db.engine.dispose()


def test_customer_locks_are_held_during_the_event_and_released_after(app, client, state):
    # GET_LOCK belongs to the connection: it must not outlive our transaction.
    party = Party(None, False, stripe_customer_id="cus_l", customer_key="l", email="l@x.com")
    names = ["psk:" + locks._digest(name) for name in locks.party_lock_names(party) if name]
    with app.app_context():
        probe = sa.create_engine(state.db.engine.url, poolclass=NullPool)
    held_during: list[Any] = []

    def holders() -> list[Any]:
        with probe.connect() as connection:
            return [
                connection.execute(sa.text("SELECT IS_USED_LOCK(:n)"), {"n": n}).scalar()
                for n in names
            ]

    @state.extension.handler("customer.created")
    def handler(event: dict[str, Any]) -> None:
        held_during.extend(holders())

    customer = testing.customer("cus_l", email="l@x.com", metadata={"customer_key": "l"})
    assert (
        testing.post_event(client, testing.event("customer.created", customer)).status_code == 200
    )
    try:
        assert held_during and all(holder is not None for holder in held_during)
        assert holders() == [None] * len(names)
    finally:
        probe.dispose()


def transaction_level(app: Any, session: Any, table: Any) -> str:
    """The isolation level the session's transaction runs at, from what it sees.

    A row another connection commits between two reads shows in the second at READ
    COMMITTED, not at REPEATABLE READ (the first read fixed the snapshot).
    """
    count = sa.select(sa.func.count()).select_from(table)
    before = session.scalar(count)
    with app.app_context():
        other = sa.create_engine(session.get_bind().url, poolclass=NullPool)
    try:
        with other.begin() as connection:
            connection.execute(table.insert().values(customer_key=secrets.token_hex(8)))
    finally:
        other.dispose()
    return "READ-COMMITTED" if session.scalar(count) > before else "REPEATABLE-READ"


def test_our_transactions_read_committed_the_hosts_keep_their_level(app, state, models):
    seen: dict[str, Any] = {}
    table = models.Customer.__table__

    @state.extension.handler("checkout.session.completed")
    def handler(event: dict[str, Any]) -> None:
        seen["ours"] = transaction_level(app, state.db.session, table)

    event = testing.event(
        "checkout.session.completed", {"id": "cs_i", "object": "checkout.session"}
    )
    assert testing.post_event(app.test_client(), event).status_code == 200
    with app.app_context():
        default = state.db.session.scalar(sa.text("SELECT @@tx_isolation"))
        seen["host"] = transaction_level(app, state.db.session, table)
        state.db.session.rollback()
    assert seen["ours"] == "READ-COMMITTED"
    assert seen["host"] == default == "REPEATABLE-READ"


#: The pool's one connection: the host's transactions run on the one ours ran on.
ONE_CONNECTION = {"SQLALCHEMY_ENGINE_OPTIONS": {"pool_size": 1, "max_overflow": 0}}
DURABLE = {**ONE_CONNECTION, "PARTNERSTACK_STRIPE_DURABLE_SIGNALS": True}
QUEUED = {**ONE_CONNECTION, "PARTNERSTACK_STRIPE_PROCESSING": "celery"}


@pytest.mark.parametrize("app_config", [DURABLE, QUEUED], ids=["durable", "queued"])
def test_a_transaction_outside_the_session_leaves_the_hosts_level(app, state, models):
    """A durable signal's delivery is marked sent, and a queued event stored, in a
    transaction of its own outside the session (the first on a new connection, for the
    queued one): the host's next transaction on that connection runs at its own level."""
    customer = testing.customer(
        "cus_i", email="i@x.com", metadata={"customer_key": "i", "partner_key": "p"}
    )
    response = testing.post_event(app.test_client(), testing.event("customer.created", customer))
    with app.app_context():
        stored = state.db.session.scalar(sa.select(models.WebhookEvent.status))
        delivered = state.db.session.scalars(sa.select(models.SignalDelivery.status)).all()
        state.db.session.rollback()
        level = transaction_level(app, state.db.session, models.Customer.__table__)
        state.db.session.rollback()
    if app.config["PARTNERSTACK_STRIPE_PROCESSING"] == "celery":
        assert (response.json["status"], stored) == ("queued", "received")
    else:
        assert (response.json["status"], delivered) == ("processed", ["delivered"])
    assert level == "REPEATABLE-READ"


def test_a_customer_event_does_not_wait_on_a_payment_being_recorded(app, client, state, models):
    """Attaching orphans finds them by a plain read: InnoDB's locking read waited on every
    uncommitted payment its index search passed, such as a new payment of this very
    customer, whose foreign key check waits in turn on the customer row the event has
    just written: a deadlock, answered 500, under concurrent traffic."""
    import threading

    metadata = {"customer_key": "user-1", "partner_key": "p"}
    created = testing.event("customer.created", testing.customer("cus_1", metadata=metadata))
    assert testing.post_event(client, created).status_code == 200
    with app.app_context():
        other = sa.create_engine(state.db.engine.url, poolclass=NullPool)
    table = models.Transaction.__table__
    answers: list[int] = []
    renamed = testing.customer("cus_1", metadata=metadata, name="Renamed")
    updated = testing.event("customer.updated", renamed)

    def post() -> None:  # a client of its own: a test client is not shared across threads
        answers.append(testing.post_event(app.test_client(), updated).status_code)

    webhook = threading.Thread(target=post)
    with other.connect() as connection:
        # A payment of cus_1 being recorded, not committed yet.
        connection.execute(
            sa.insert(table).values(
                key="ch_1", amount=500, currency="usd", stripe_customer_id="cus_1"
            )
        )
        webhook.start()
        webhook.join(timeout=10)
        finished = not webhook.is_alive()
        connection.rollback()
    webhook.join()
    other.dispose()
    assert finished and answers == [200]
