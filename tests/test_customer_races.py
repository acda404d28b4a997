"""Races between a customer being written and a payment that names it, held open on purpose.

The server race tests start events together and check the end state; these hold one side
open at the exact point that matters, so the other side must wait for it (DESIGN 3).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from flask_partnerstack_stripe import locks, signals, testing
from flask_partnerstack_stripe.extension import get_state
from flask_partnerstack_stripe.models import account_scope, utcnow


def add_customer(
    connection: Any, models: Any, key: str, email: str, partner: str | None = "p1"
) -> None:
    connection.execute(
        models.Customer.__table__.insert().values(
            customer_key=key, email=email, partner_key=partner, account_scope=account_scope(None),
            livemode=False, created_at=utcnow(), updated_at=utcnow(),
        )
    )  # fmt: skip


@contextlib.contextmanager
def signup_in_progress(
    database_url: str, models: Any, key: str, email: str
) -> Iterator[tuple[sa.Engine, Callable[[], None]]]:
    """A signup (``key``, ``email``, no Stripe id) being written under the email's customer
    lock, on a connection of its own. Yields an engine on the database and ``finish``,
    which commits the signup and lets its locks go (MariaDB's named locks go with the
    connection). If the block raises first, the signup is rolled back: nothing waits."""
    other = sa.create_engine(database_url, poolclass=NullPool)
    signup = other.connect()
    try:
        held = signup.begin()
        email_lock = f"{account_scope(None)}|False|email:{email}"
        if database_url.startswith("postgresql"):
            signup.exec_driver_sql(
                "SELECT pg_advisory_xact_lock(%s)", (locks._lock_key(email_lock),)
            )
        else:
            signup.exec_driver_sql("SELECT GET_LOCK(%s, 30)", ("psk:" + locks._digest(email_lock),))
        add_customer(signup, models, key, email)

        def finish() -> None:
            held.commit()
            signup.close()

        yield other, finish
    finally:
        signup.close()
        other.dispose()


def post_in_background(app: Any, event: dict[str, Any]) -> tuple[threading.Thread, list[int]]:
    """A thread posting ``event`` (started), and the list its status code goes to."""
    codes: list[int] = []
    posting = threading.Thread(
        target=lambda: codes.append(testing.post_event(app.test_client(), event).status_code)
    )
    posting.start()
    return posting, codes


def lock_waiters(engine: sa.Engine, locktype: str | None = None) -> int:
    """Sessions of this test's database waiting for a lock (of ``locktype``, if given):
    locks are the whole server's, and another test session may be waiting on one of its
    own at this moment."""
    query = (
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE NOT l.granted AND a.datname = current_database()"
    )
    if locktype is not None:
        query += " AND l.locktype = %s"
    with engine.connect() as probe:
        parameters = (locktype,) if locktype is not None else ()
        return int(probe.exec_driver_sql(query, parameters).scalar() or 0)


def while_held_open(
    app: Any, held: dict[str, Any], meanwhile: dict[str, Any], waits: Callable[[Any], bool]
) -> tuple[int, int, bool]:
    """Post ``held``, whose transaction a handler of its type holds open after the built-in
    rule, then ``meanwhile``; let ``held`` go once ``waits(thread posting meanwhile)``
    said whether ``meanwhile`` waits for it. Both status codes and that answer."""
    paused, release = threading.Event(), threading.Event()

    @get_state(app).extension.handler(held["type"])
    def hold_open(event: dict[str, Any]) -> None:
        if event["id"] == held["id"]:
            paused.set()
            release.wait(20)

    first, first_status = post_in_background(app, held)
    try:
        assert paused.wait(20), "the held event never reached its handler"
        second, second_status = post_in_background(app, meanwhile)
        waited = waits(second)
    finally:
        release.set()
        first.join(30)
    second.join(30)
    return first_status[0], second_status[0], waited


def waits_for_a_lock(engine: sa.Engine) -> Callable[[Any], bool]:
    """PostgreSQL: whether the thread ends up waiting for a lock (seen in ``pg_locks``)."""

    def waits(thread: Any) -> bool:
        deadline = time.monotonic() + 10
        while lock_waiters(engine) == 0 and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.05)
        return bool(thread.is_alive())

    return waits


def still_running_after_a_second(thread: Any) -> bool:
    thread.join(1.0)
    return bool(thread.is_alive())


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_REWARDS": [{"percent": 20}]}])
def test_a_payment_waiting_for_its_customer_signals_itself_before_its_commission(
    app, database_url, rows, models
):
    """A signup (key, email, no Stripe id) is being written under the email's customer lock
    while the customer's first charge arrives: the charge waits for it, ends attached, and
    says transaction_recorded before its commission_created."""
    seen: list[str] = []
    for signal in (signals.transaction_recorded, signals.commission_created,
                   signals.customer_updated):  # fmt: skip
        signal.connect(lambda sender, _s=signal, **kw: seen.append(_s.name), sender=app,
                       weak=False)  # fmt: skip
    charge = testing.charge("ch_1", customer="cus_1", email="a@x.com")
    with signup_in_progress(database_url, models, "u1", "a@x.com") as (other, finish):
        posting, codes = post_in_background(app, testing.event("charge.succeeded", charge))
        deadline = time.monotonic() + 20
        while lock_waiters(other, "advisory") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock_waiters(other, "advisory") == 1, "the charge should wait for the signup's lock"
        finish()
    posting.join(30)
    assert codes == [200]
    [customer] = rows(models.Customer)
    [payment] = rows(models.Transaction)
    assert (payment.customer_id, customer.stripe_customer_id) == (customer.id, "cus_1")
    assert seen.index("transaction-recorded") < seen.index("commission-created"), seen


@pytest.mark.parametrize("database_url", ["postgresql", "mariadb"], indirect=True)
def test_a_charge_naming_only_a_stripe_id_being_linked_waits_and_is_attached(
    app, database_url, rows, models
):
    """Charge A finds a signup by email and links the Stripe id to it; before A commits,
    charge B names only that Stripe id. B waits for A's customer locks and ends attached
    (it used to be kept without a customer for good)."""
    state = get_state(app)
    other = sa.create_engine(database_url, poolclass=NullPool)
    with other.begin() as connection:
        add_customer(connection, models, "u2", "b@x.com")
    other.dispose()
    paused, release = threading.Event(), threading.Event()
    event_a = testing.event("charge.succeeded", testing.charge("ch_A", customer="cus_2",
                                                               email="b@x.com"))  # fmt: skip
    event_b = testing.event("charge.succeeded", testing.charge("ch_B", customer="cus_2"))

    @state.extension.handler("charge.succeeded")
    def hold_a_open(event: dict[str, Any]) -> None:
        if event["id"] == event_a["id"]:
            paused.set()
            release.wait(20)

    codes: dict[str, int] = {}

    def post(name: str, event: dict[str, Any]) -> None:
        codes[name] = testing.post_event(app.test_client(), event).status_code

    first = threading.Thread(target=post, args=("A", event_a))
    first.start()
    assert paused.wait(20), "A never reached the handler"
    second = threading.Thread(target=post, args=("B", event_b))
    second.start()
    second.join(1.0)
    b_waited = second.is_alive()
    release.set()
    first.join(30)
    second.join(30)
    assert codes == {"A": 200, "B": 200}
    assert b_waited, "B should wait for A's customer locks"
    [customer] = rows(models.Customer)
    attached = {t.key: t.customer_id for t in rows(models.Transaction)}
    assert attached == {"ch_A": customer.id, "ch_B": customer.id}


@pytest.mark.parametrize("database_url", ["postgresql", "mariadb"], indirect=True)
def test_a_customer_event_waiting_for_a_signup_by_email_matches_it(app, database_url, rows, models):
    """A signup (key u1, email c@x.com, no Stripe id) is being written under the email's
    customer lock when Stripe's customer.created for that email arrives, with another key.
    The event waits for the signup, then matches it by email: one customer, linked to its
    Stripe id, never a second customer with the same email."""
    obj = testing.customer(
        "cus_3", email="c@x.com", metadata={"customer_key": "k2", "partner_key": "p1"}
    )
    with signup_in_progress(database_url, models, "u1", "c@x.com") as (_, finish):
        posting, codes = post_in_background(app, testing.event("customer.created", obj))
        posting.join(1.0)
        assert posting.is_alive(), "the customer event should wait for the signup's lock"
        finish()
    posting.join(30)
    assert codes == [200]
    [customer] = rows(models.Customer)
    assert (customer.customer_key, customer.stripe_customer_id) == ("u1", "cus_3")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_REWARDS": [{"percent": 20}]}])
def test_a_payment_recorded_while_its_customer_gets_its_partner_earns_its_commission(
    app, database_url, rows, models
):
    # A signup (no partner, no Stripe id) gets both from a customer.created held open after
    # its rule; meanwhile a charge names the customer by key, and its row's foreign key
    # check waits for the customer's row lock. The customer event's commission pass ran
    # before the payment was visible: the charge alone can give it its commission, so it
    # must read the partner after that wait. (Found by review: a version that read the
    # partner in the payment's own INSERT, as of its start, earned nothing here.)
    other = sa.create_engine(database_url, poolclass=NullPool)
    with other.begin() as connection:
        add_customer(connection, models, "u1", "a@x.com", partner=None)
    metadata = {"customer_key": "u1", "partner_key": "p1"}
    created = testing.event(
        "customer.created", testing.customer("cus_1", email="a@x.com", metadata=metadata)
    )
    charge = testing.event(
        "charge.succeeded", testing.charge("ch_B", amount=1000, metadata={"customer_key": "u1"})
    )
    codes = while_held_open(app, created, charge, waits_for_a_lock(other))
    other.dispose()
    assert codes == (200, 200, True), "the charge should wait for the customer's row"
    [customer] = rows(models.Customer)
    assert (customer.partner_key, customer.stripe_customer_id) == ("p1", "cus_1")
    [payment] = rows(models.Transaction)
    assert payment.customer_id == customer.id
    assert [(c.amount, c.partner_key) for c in rows(models.Commission)] == [(200, "p1")]


@pytest.mark.parametrize("database_url", ["postgresql", "mariadb"], indirect=True)
@pytest.mark.parametrize(
    "app_config",
    [
        {"PARTNERSTACK_STRIPE_REWARDS": [{"percent": 20}]},
        # A rule for one partner: the partner is read before the commission is written.
        {"PARTNERSTACK_STRIPE_REWARDS": [{"percent": 20, "partner_key": "p1"}]},
    ],
)
def test_a_known_customers_new_payment_earns_while_the_customer_gets_its_partner(
    app, database_url, rows, models
):
    # A known customer (Stripe id, no partner yet) gets its partner from a customer.updated
    # held open after its rule; meanwhile a charge names it by Stripe id. The charge's row
    # waits for nothing (its foreign key check shares the customer row with the update),
    # and the customer event's commission pass ran before that row existed: the charge
    # alone can give the commission, so it reads the partner under the customer row's
    # lock, after the update committed. (PostgreSQL: it reads that row FOR SHARE. InnoDB's
    # foreign key check locks the customer row in share mode itself: the row waits.)
    other = sa.create_engine(database_url, poolclass=NullPool)
    with other.begin() as connection:
        connection.execute(
            models.Customer.__table__.insert().values(
                customer_key="u1", email="a@x.com", stripe_customer_id="cus_1",
                account_scope=account_scope(None), livemode=False, created_at=utcnow(),
                updated_at=utcnow(),
            )
        )  # fmt: skip
    other.dispose()
    metadata = {"customer_key": "u1", "partner_key": "p1"}
    updated = testing.event(
        "customer.updated", testing.customer("cus_1", email="a@x.com", metadata=metadata)
    )
    charge = testing.event(
        "charge.succeeded", testing.charge("ch_1", customer="cus_1", amount=1000)
    )
    codes = while_held_open(app, updated, charge, still_running_after_a_second)
    assert codes == (200, 200, True), "the charge should wait for the customer's row"
    [customer] = rows(models.Customer)
    assert customer.partner_key == "p1"
    [payment] = rows(models.Transaction)
    assert payment.customer_id == customer.id
    assert [(c.amount, c.partner_key) for c in rows(models.Commission)] == [(200, "p1")]
