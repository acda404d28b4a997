"""DESIGN section 4: what each Stripe event does to customers and transactions."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from flask_partnerstack_stripe import signals, testing


def deliver(client, type: str, obj: dict[str, Any], **envelope: Any) -> dict[str, Any]:
    response = testing.post_event(client, testing.event(type, obj, **envelope))
    assert response.status_code == 200, response.json
    return response.json


def signup_customer(
    client, cus="cus_A", key="user-A", partner="partner-1", *, email=None, name=None, **envelope
):
    metadata = {"customer_key": key, "partner_key": partner}
    obj = testing.customer(cus, metadata=metadata, email=email, name=name)
    return deliver(client, "customer.created", obj, **envelope)


def standing(rows, models, **filters):
    return [t for t in rows(models.Transaction, **filters) if t.deleted_at is None]


# --- customers -------------------------------------------------------------------------


def test_customer_with_keys_is_created_and_attributed(client, rows, models):
    with testing.record_signals(signals.customer_created) as sent:
        answer = signup_customer(client, email="Ann@Example.com", name="Ann")
    assert answer["status"] == "processed"
    [customer] = rows(models.Customer)
    assert (customer.customer_key, customer.partner_key) == ("user-A", "partner-1")
    assert (customer.stripe_customer_id, customer.email, customer.name) == (
        "cus_A",
        "ann@example.com",
        "Ann",
    )
    assert customer.stripe_account_id is None and customer.livemode is False
    assert [s.kwargs["customer"].customer_key for s in sent] == ["user-A"]
    assert sent[0].kwargs["event"]["type"] == "customer.created"


def test_customer_without_both_keys_is_not_created(client, rows, models):
    only_key = testing.customer("cus_B", metadata={"customer_key": "user-B"})
    answer = deliver(client, "customer.created", only_key)
    assert answer["status"] == "ignored" and "partner_key" in answer["reason"]
    assert deliver(client, "customer.created", testing.customer("cus_C"))["status"] == "ignored"
    assert rows(models.Customer) == []


def test_customer_id_metadata_is_an_alias_of_customer_key(client, rows, models):
    metadata = {"customer_id": "user-Z", "partner_key": "p"}
    deliver(client, "customer.created", testing.customer("cus_Z", metadata=metadata))
    assert rows(models.Customer)[0].customer_key == "user-Z"


def test_customer_updated_matches_by_key_then_stripe_id_then_email(client, rows, models, state):
    with client.application.app_context():
        state.extension.create_customer("user-K", "k@example.com", partner_key="p1")
        state.extension.create_customer("user-E", "e@example.com", partner_key="p2")
    # By key: links the Stripe id to the signup.
    deliver(
        client, "customer.updated", testing.customer("cus_K", metadata={"customer_key": "user-K"})
    )
    # By Stripe id: a later update without metadata renames it.
    deliver(
        client, "customer.updated", testing.customer("cus_K", name="Kay", email="k2@example.com")
    )
    # By email.
    deliver(client, "customer.updated", testing.customer("cus_E", email="E@example.com"))
    by_key = {c.customer_key: c for c in rows(models.Customer)}
    assert (by_key["user-K"].stripe_customer_id, by_key["user-K"].name) == ("cus_K", "Kay")
    assert by_key["user-K"].email == "k2@example.com"
    assert by_key["user-E"].stripe_customer_id == "cus_E"


@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_MATCH_EMAIL": False}])
def test_email_matching_can_be_turned_off(client, rows, models, state):
    with client.application.app_context():
        state.extension.create_customer("user-E", "e@example.com", partner_key="p2")
    answer = deliver(client, "customer.updated", testing.customer("cus_E", email="e@example.com"))
    assert answer["status"] == "ignored"
    assert rows(models.Customer)[0].stripe_customer_id is None


@pytest.mark.parametrize(
    "app_config",
    [{"PARTNERSTACK_STRIPE_MATCH_EMAIL": True}, {"PARTNERSTACK_STRIPE_MATCH_EMAIL": False}],
)
def test_a_new_customers_email_finds_a_known_one_before_anything_is_created(
    app, client, rows, models, state, app_config
):
    """customer.created with a new key and a partner, whose email a signup already has: with
    email matching on, the signup gets the Stripe id (its partner stays) and no second
    customer is created; with it off, it is a new customer."""
    match_email = app_config["PARTNERSTACK_STRIPE_MATCH_EMAIL"]
    with app.app_context():
        state.extension.create_customer("user-E", "e@example.com", partner_key="p2")
    metadata = {"customer_key": "user-X", "partner_key": "p9"}
    obj = testing.customer("cus_X", email="E@example.com", metadata=metadata)
    with testing.record_signals(signals.customer_created) as created:
        deliver(client, "customer.created", obj)
    customers = {c.customer_key: (c.stripe_customer_id, c.partner_key)
                 for c in rows(models.Customer)}  # fmt: skip
    if match_email:
        assert customers == {"user-E": ("cus_X", "p2")}
        assert created == []
    else:
        assert customers == {"user-E": (None, "p2"), "user-X": ("cus_X", "p9")}
        assert len(created) == 1


def test_partner_attribution_is_never_overwritten(client, rows, models):
    signup_customer(client, partner="first-partner")
    moved = {"customer_key": "user-A", "partner_key": "second-partner"}
    deliver(client, "customer.updated", testing.customer("cus_A", metadata=moved, name="Ann"))
    [customer] = rows(models.Customer)
    assert customer.partner_key == "first-partner"
    assert customer.name == "Ann"


def test_older_customer_event_never_overwrites_a_newer_one(client, rows, models):
    signup_customer(client, created=1000)
    deliver(client, "customer.updated", testing.customer("cus_A", email="new@x.io"), created=3000)
    with testing.record_signals(signals.customer_updated) as sent:
        deliver(
            client, "customer.updated", testing.customer("cus_A", email="old@x.io"), created=2000
        )
    assert rows(models.Customer)[0].email == "new@x.io"
    assert sent == []


def test_customer_deleted_unlinks_and_keeps_everything(client, rows, models):
    signup_customer(client)
    deliver(client, "charge.succeeded", testing.charge("ch_1", customer="cus_A", amount=500))
    with testing.record_signals(signals.customer_updated) as sent:
        deliver(client, "customer.deleted", testing.customer("cus_A"))
    [customer] = rows(models.Customer)
    assert customer.stripe_customer_id is None and customer.partner_key == "partner-1"
    [transaction] = standing(rows, models)
    assert transaction.customer_id == customer.id
    assert len(sent) == 1


@pytest.mark.parametrize("deleted_first", [False, True], ids=["in-order", "deleted-first"])
def test_a_replacement_stripe_customer_is_linked_whichever_arrives_first(
    client, rows, models, deleted_first
):
    """The host replaces the Stripe customer: creates cus_B for the same customer key,
    then deletes cus_A; Stripe may deliver the deletion first."""
    signup_customer(client, "cus_A", "user-A", created=1000)
    metadata = {"customer_key": "user-A", "partner_key": "partner-1"}
    events = [
        ("customer.created", testing.customer("cus_B", metadata=metadata), 2000),
        ("customer.deleted", testing.customer("cus_A"), 2001),
    ]
    for type_, obj, created in reversed(events) if deleted_first else events:
        deliver(client, type_, obj, created=created)
    deliver(client, "charge.succeeded", testing.charge("ch_B", customer="cus_B"), created=3000)
    [customer] = rows(models.Customer)
    assert customer.stripe_customer_id == "cus_B"
    assert [t.customer_id for t in rows(models.Transaction)] == [customer.id]


def test_a_replacement_created_before_the_old_customers_last_update_is_linked(client, rows, models):
    """cus_B was created (4000) before cus_A's last update (5000) and deletion (6000), and
    is delivered last: older than what the customer row saw, it still links, as nobody
    else holds cus_B; but an older event never takes a Stripe id from another customer."""
    signup_customer(client, "cus_A", "user-A", created=1000)
    deliver(client, "customer.updated", testing.customer("cus_A", name="Ann"), created=5000)
    deliver(client, "customer.deleted", testing.customer("cus_A"), created=6000)
    metadata = {"customer_key": "user-A", "partner_key": "partner-1"}
    other = {"customer_key": "user-C", "partner_key": "partner-2"}
    deliver(client, "customer.created", testing.customer("cus_C", metadata=other), created=7000)
    deliver(client, "customer.updated", testing.customer("cus_C", metadata=metadata), created=4500)
    links = {c.customer_key: c.stripe_customer_id for c in rows(models.Customer)}
    assert links == {"user-A": None, "user-C": "cus_C"}
    deliver(client, "customer.created", testing.customer("cus_B", metadata=metadata), created=4000)
    links = {c.customer_key: c.stripe_customer_id for c in rows(models.Customer)}
    assert links == {"user-A": "cus_B", "user-C": "cus_C"}


@pytest.mark.parametrize("order", ["created", "replacement first"])
def test_a_payment_of_a_replaced_stripe_customer_is_attached_whatever_the_order(
    client, rows, models, order
):
    """cus_A is created, pays, and is replaced by cus_B (same metadata). Delivered as
    cus_B, the payment, cus_A: cus_A's late event does not take the Stripe id back from
    the newer cus_B, but its payment is still the customer's, as in the natural order."""
    metadata = {"customer_key": "user-1", "partner_key": "partner-1"}
    events = [
        ("customer.created", testing.customer("cus_A", metadata=metadata), 1000),
        ("charge.succeeded", testing.charge("ch_1", customer="cus_A"), 1001),
        ("customer.created", testing.customer("cus_B", metadata=metadata), 1002),
    ]
    if order == "replacement first":
        events = [events[2], events[1], events[0]]
    with testing.record_signals(signals.transaction_updated, signals.transaction_recorded) as sent:
        for event_type, obj, created in events:
            deliver(client, event_type, obj, created=created)
    [customer] = rows(models.Customer)
    [payment] = rows(models.Transaction)
    assert (customer.stripe_customer_id, payment.customer_id) == ("cus_B", customer.id)
    assert sent[-1].kwargs["transaction"].customer_id == customer.id  # receivers were told


def test_a_customer_that_loses_its_stripe_id_to_another_is_signalled(client, rows, models):
    """customer.updated of cus_1 names user-2's key: cus_1 moves to user-2, and user-1,
    which held it, changed too: both customers' receivers hear of it."""
    signup_customer(client, "cus_1", "user-1")
    signup_customer(client, "cus_2", "user-2")
    moved = testing.customer("cus_1", metadata={"customer_key": "user-2"})
    with testing.record_signals(signals.customer_updated) as sent:
        deliver(client, "customer.updated", moved)
    links = {c.customer_key: c.stripe_customer_id for c in rows(models.Customer)}
    assert links == {"user-1": None, "user-2": "cus_1"}
    told = [
        (s.kwargs["customer"].customer_key, s.kwargs["customer"].stripe_customer_id) for s in sent
    ]
    assert told == [("user-1", None), ("user-2", "cus_1")]


@pytest.mark.parametrize("database_url", ["postgresql", "mariadb"], indirect=True)
def test_a_deletion_racing_the_link_of_a_replacement_leaves_the_replacement(
    app, rows, models, state
):
    """customer.deleted of cus_A while another worker's customer.created gives user-A
    cus_B and has not committed yet: the deletion must not unlink cus_B."""
    signup_customer(app.test_client(), "cus_A", "user-A", created=1000)
    inside = threading.Event()

    @state.extension.handler("customer.created")
    def hold(event: dict[str, Any]) -> None:  # runs inside the event's transaction
        if event["data"]["object"]["id"] == "cus_B":
            inside.set()
            time.sleep(1.0)

    metadata = {"customer_key": "user-A", "partner_key": "partner-1"}
    created = testing.event("customer.created", testing.customer("cus_B", metadata=metadata))
    answers = []
    worker = threading.Thread(
        target=lambda: answers.append(testing.post_event(app.test_client(), created).status_code)
    )
    worker.start()
    assert inside.wait(10)
    deleted = testing.event("customer.deleted", testing.customer("cus_A"))
    answers.append(testing.post_event(app.test_client(), deleted).status_code)
    worker.join()
    assert answers == [200, 200]
    assert [c.stripe_customer_id for c in rows(models.Customer)] == ["cus_B"]


@pytest.mark.parametrize(
    "app_config", [{"PARTNERSTACK_STRIPE_REWARDS": [{"percent": 10}]}], ids=["rewards"]
)
def test_a_payment_stripe_retried_past_the_customers_deletion_is_still_theirs(client, rows, models):
    """A charge whose webhook failed before ``customer.deleted`` arrives after it: it
    names only the deleted Stripe id, which earlier payments tie to their customer."""
    signup_customer(client, created=1000)
    deliver(client, "charge.succeeded", testing.charge("ch_0", customer="cus_A"), created=1500)
    deliver(client, "customer.deleted", testing.customer("cus_A"), created=3000)
    deliver(
        client, "charge.succeeded", testing.charge("ch_1", customer="cus_A", amount=700),
        created=2000,
    )  # fmt: skip
    [customer] = rows(models.Customer)
    transactions = rows(models.Transaction)
    assert {t.key: t.customer_id for t in transactions} == {
        "ch_0": customer.id,
        "ch_1": customer.id,
    }
    assert customer.stripe_customer_id is None  # not linked again
    keys = {t.id: t.key for t in transactions}
    earned = {keys[c.transaction_id]: c.amount for c in rows(models.Commission)}
    assert earned == {"ch_0": 100, "ch_1": 70}


# --- charges ---------------------------------------------------------------------------


def test_charge_is_recorded_under_its_customer(client, rows, models):
    signup_customer(client)
    charge = testing.charge("ch_1", customer="cus_A", amount=4200, currency="EUR")
    charge["metadata"] = {"product_key": "pro-plan"}
    with testing.record_signals(signals.transaction_recorded) as sent:
        deliver(client, "charge.succeeded", charge)
    [transaction] = rows(models.Transaction)
    [customer] = rows(models.Customer)
    assert (transaction.key, transaction.amount, transaction.currency) == ("ch_1", 4200, "eur")
    assert (transaction.customer_id, transaction.product_key) == (customer.id, "pro-plan")
    assert transaction.deleted_at is None and transaction.livemode is False
    assert sent[0].kwargs["transaction"].key == "ch_1"
    assert sent[0].kwargs["event"]["type"] == "charge.succeeded"


def test_charge_finds_customer_by_metadata_key_and_by_email(client, rows, models, state):
    with client.application.app_context():
        keyed = state.extension.create_customer("user-1", None, partner_key="p").id
        mailed = state.extension.create_customer("user-2", "two@example.com", partner_key="p").id
    deliver(client, "charge.succeeded", testing.charge("ch_k", metadata={"customer_key": "user-1"}))
    deliver(client, "charge.succeeded", testing.charge("ch_b", email="Two@Example.com"))
    receipt_only = testing.charge("ch_r")
    receipt_only["receipt_email"] = "two@example.com"
    receipt_only["billing_details"]["email"] = None
    deliver(client, "charge.succeeded", receipt_only)
    owners = {t.key: t.customer_id for t in rows(models.Transaction)}
    assert owners == {"ch_k": keyed, "ch_b": mailed, "ch_r": mailed}


def test_a_charge_belongs_to_its_stripe_customer_before_the_key_in_its_metadata(
    client, rows, models, state
):
    """DESIGN 4: a charge's customer is found by Stripe customer id, then metadata key."""
    signup_customer(client, "cus_A", "user-A", "partner-1")
    with client.application.app_context():
        other = state.extension.create_customer("user-B", None, partner_key="partner-2").id
    stale_key = testing.charge("ch_1", customer="cus_A", metadata={"customer_key": "user-B"})
    deliver(client, "charge.succeeded", stale_key)
    deliver(client, "charge.succeeded", testing.charge("ch_2", customer="cus_A"))
    # A key that names a customer without a Stripe customer: the payment still is cus_A's.
    deliver(client, "charge.succeeded", testing.charge("ch_3", metadata={"customer_key": "user-B"}))
    customers = {c.customer_key: c for c in rows(models.Customer)}
    owners = {t.key: t.customer_id for t in rows(models.Transaction)}
    assert owners == {"ch_1": customers["user-A"].id, "ch_2": customers["user-A"].id, "ch_3": other}
    assert customers["user-A"].stripe_customer_id == "cus_A"
    assert customers["user-B"].stripe_customer_id is None


def test_an_update_naming_the_stripe_id_links_the_customer_its_charge_found_by_key(
    client, rows, models, state
):
    """A charge recorded under a customer found by its metadata key, with no Stripe
    customer yet; its charge.updated names the Stripe customer: the customer is linked to
    it (customer_updated), and a later charge naming only that Stripe id finds it."""
    with client.application.app_context():
        keyed = state.extension.create_customer("user-1", None, partner_key="p").id
    metadata = {"customer_key": "user-1"}
    deliver(client, "charge.succeeded", testing.charge("ch_1", metadata=metadata))
    with testing.record_signals(signals.customer_updated) as sent:
        deliver(
            client, "charge.updated", testing.charge("ch_1", customer="cus_K", metadata=metadata)
        )
    assert [s.name for s in sent] == ["customer-updated"]
    [customer] = rows(models.Customer)
    assert (customer.id, customer.stripe_customer_id) == (keyed, "cus_K")
    deliver(client, "charge.succeeded", testing.charge("ch_2", customer="cus_K"))
    owners = {t.key: t.customer_id for t in rows(models.Transaction)}
    assert owners == {"ch_1": keyed, "ch_2": keyed}


@pytest.mark.parametrize("by", ["key", "email"])
def test_an_update_links_the_customer_a_signup_attached_its_orphan_to(
    client, rows, models, state, by
):
    """A first charge names cus_K before its customer is known; the signup attaches it
    (by key or email) without the Stripe id. Its update naming cus_K links the customer
    (customer_updated), so that a renewal naming only cus_K finds it. (Found in review:
    an update of an attached payment had skipped the look-up, and the link with it.)"""
    names: dict[str, Any] = (
        {"metadata": {"customer_key": "user-1"}} if by == "key" else {"email": "a@x.io"}
    )
    deliver(client, "charge.succeeded", testing.charge("ch_1", customer="cus_K", **names))
    with client.application.app_context():
        email = "a@x.io" if by == "email" else None
        keyed = state.extension.create_customer("user-1", email, partner_key="p").id
    assert rows(models.Transaction)[0].customer_id == keyed
    with testing.record_signals(signals.customer_updated) as sent:
        deliver(client, "charge.updated", testing.charge("ch_1", customer="cus_K", **names))
    [customer] = rows(models.Customer)
    deliver(client, "charge.succeeded", testing.charge("ch_2", customer="cus_K"))
    owners = {t.key: t.customer_id for t in rows(models.Transaction)}
    assert (customer.stripe_customer_id, [s.name for s in sent], owners) == (
        "cus_K",
        ["customer-updated"],
        {"ch_1": keyed, "ch_2": keyed},
    )


def test_ecommerce_charge_creates_its_customer(client, rows, models):
    metadata = {"customer_key": "order-9", "partner_key": "p-shop", "product_key": "mug"}
    with testing.record_signals(signals.customer_created, signals.transaction_recorded) as sent:
        deliver(
            client, "charge.succeeded", testing.charge("ch_9", metadata=metadata, email="b@x.io")
        )
    [customer] = rows(models.Customer)
    assert (customer.customer_key, customer.partner_key, customer.email) == (
        "order-9",
        "p-shop",
        "b@x.io",
    )
    assert rows(models.Transaction)[0].customer_id == customer.id
    assert [s.name for s in sent] == ["customer-created", "transaction-recorded"]


@pytest.mark.parametrize("signup_first", [True, False])
def test_a_charge_naming_key_and_partner_gives_a_partnerless_customer_its_partner(
    client, rows, models, state, signup_first
):
    """The first partner wins whichever came first: the signup recorded without a
    partner, or the charge whose metadata names the customer's key and a partner."""
    metadata = {"customer_key": "order-9", "partner_key": "p-shop"}

    def signup() -> None:
        with client.application.app_context():
            state.extension.create_customer("order-9", "b@x.io")

    if signup_first:
        signup()
    with testing.record_signals(signals.customer_updated, signals.customer_created) as sent:
        deliver(client, "charge.succeeded", testing.charge("ch_9", metadata=metadata))
    if not signup_first:
        signup()
    [customer] = rows(models.Customer)
    [payment] = rows(models.Transaction)
    assert (customer.partner_key, payment.customer_id) == ("p-shop", customer.id)
    assert [s.name for s in sent] == ["customer-updated" if signup_first else "customer-created"]
    # A partner once given stays: a later charge naming another one changes nothing.
    other = {"customer_key": "order-9", "partner_key": "p-other"}
    deliver(client, "charge.succeeded", testing.charge("ch_10", metadata=other))
    assert rows(models.Customer)[0].partner_key == "p-shop"


def test_a_charge_found_by_another_key_gives_no_partner(client, rows, models, state):
    """The metadata's partner is for the customer its key names: a customer found by
    the charge's Stripe customer under another key keeps having none."""
    with client.application.app_context():
        state.extension.create_customer("user-1", "a@x.io")
    deliver(client, "charge.succeeded", testing.charge("ch_1", customer="cus_1", email="a@x.io"))
    metadata = {"customer_key": "order-2", "partner_key": "p-shop"}
    deliver(client, "charge.succeeded", testing.charge("ch_2", customer="cus_1", metadata=metadata))
    [customer] = rows(models.Customer)
    assert (customer.customer_key, customer.partner_key) == ("user-1", None)
    assert {t.customer_id for t in rows(models.Transaction)} == {customer.id}


def test_charge_before_its_customer_is_kept_and_attached(client, rows, models):
    deliver(client, "charge.succeeded", testing.charge("ch_early", customer="cus_A", amount=300))
    [orphan] = rows(models.Transaction)
    assert orphan.customer_id is None and orphan.deleted_at is None
    with testing.record_signals(signals.transaction_updated) as sent:
        signup_customer(client)
    [customer] = rows(models.Customer)
    assert rows(models.Transaction)[0].customer_id == customer.id
    assert [s.kwargs["transaction"].key for s in sent] == ["ch_early"]


def test_orphan_is_attached_by_signup_call_and_by_a_later_charge(client, rows, models, state):
    deliver(client, "charge.succeeded", testing.charge("ch_a", email="late@x.io"))
    deliver(client, "charge.succeeded", testing.charge("ch_b", customer="cus_L"))
    with client.application.app_context():
        customer = state.extension.create_customer("user-L", "late@x.io", partner_key="p")
    assert rows(models.Transaction, key="ch_a")[0].customer_id == customer.id
    # A later charge names both the Stripe id and the key: the first orphan joins too.
    deliver(
        client,
        "charge.succeeded",
        testing.charge("ch_c", customer="cus_L", metadata={"customer_key": "user-L"}),
    )
    assert {t.key: t.customer_id for t in rows(models.Transaction)} == {
        "ch_a": customer.id,
        "ch_b": customer.id,
        "ch_c": customer.id,
    }


@pytest.mark.parametrize(
    "fields",
    [
        {"status": "failed"},
        {"status": "pending"},
        {"captured": False},
        {"amount_refunded": 1000},
    ],
    ids=["failed", "pending", "uncaptured", "refunded"],
)
def test_charge_object_that_has_not_settled_never_records(client, rows, models, fields):
    signup_customer(client)
    deliver(client, "charge.succeeded", testing.charge("ch_1", customer="cus_A", **fields))
    assert standing(rows, models) == []


def test_uncaptured_charge_records_when_captured(client, rows, models):
    signup_customer(client)
    deliver(client, "charge.succeeded", testing.charge("ch_1", customer="cus_A", captured=False))
    deliver(client, "charge.captured", testing.charge("ch_1", customer="cus_A"))
    assert [t.key for t in standing(rows, models)] == ["ch_1"]


def test_one_transaction_per_charge_whatever_the_events(client, rows, models):
    signup_customer(client)
    charge = testing.charge("ch_1", customer="cus_A")
    for event_type in ("charge.succeeded", "charge.succeeded", "charge.captured", "charge.updated"):
        deliver(client, event_type, charge)  # each a new event id
    assert len(rows(models.Transaction)) == 1


# --- refunds and failures --------------------------------------------------------------


@pytest.mark.parametrize("deleting_type", ["charge.refunded", "charge.failed"])
def test_refund_or_failure_deletes_and_nothing_brings_it_back(client, rows, models, deleting_type):
    signup_customer(client)
    charge = testing.charge("ch_1", customer="cus_A")
    success = testing.event("charge.succeeded", charge)
    testing.post_event(client, success)
    if deleting_type == "charge.refunded":
        gone = testing.charge("ch_1", customer="cus_A", amount_refunded=1000)
    else:
        gone = testing.charge("ch_1", customer="cus_A", status="failed", captured=False)
    with testing.record_signals(signals.transaction_deleted) as sent:
        deliver(client, deleting_type, gone)
    [transaction] = rows(models.Transaction)
    assert transaction.deleted_at is not None
    assert sent[0].kwargs["transaction"].key == "ch_1"
    for late in ("charge.succeeded", "charge.captured", "charge.updated"):
        # Late deliveries of events older than the refund (Stripe's created says so).
        deliver(client, late, charge, created=success["created"])
    assert testing.post_event(client, success).json["status"] == "duplicate"
    assert standing(rows, models) == []
    assert len(rows(models.Transaction)) == 1


def test_refund_before_success_leaves_nothing_standing(client, rows, models):
    signup_customer(client)
    refunded = testing.charge("ch_1", customer="cus_A", amount_refunded=1000)
    deliver(client, "charge.refunded", refunded, created=2000)
    with testing.record_signals(signals.transaction_recorded) as sent:
        deliver(client, "charge.succeeded", testing.charge("ch_1", customer="cus_A"), created=1000)
    assert standing(rows, models) == [] and sent == []


def test_partial_refund_deletes_under_the_default_policy(client, rows, models):
    signup_customer(client)
    deliver(client, "charge.succeeded", testing.charge("ch_1", customer="cus_A", amount=1500))
    deliver(
        client,
        "charge.refunded",
        testing.charge("ch_1", customer="cus_A", amount=1500, amount_refunded=500),
    )
    assert standing(rows, models) == []


@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_REFUND_POLICY": "prorate"}])
def test_prorate_lowers_on_partial_refund_and_deletes_on_full(client, rows, models):
    signup_customer(client)
    deliver(client, "charge.succeeded", testing.charge("ch_1", customer="cus_A", amount=1500))
    partial = testing.charge("ch_1", customer="cus_A", amount=1500, amount_refunded=500)
    with testing.record_signals(signals.transaction_updated) as sent:
        deliver(client, "charge.refunded", partial)
    assert standing(rows, models)[0].amount == 1000
    assert sent[0].kwargs["transaction"].amount == 1000
    # An older event arriving late never raises the amount again.
    older = testing.charge("ch_1", customer="cus_A", amount=1500)
    deliver(client, "charge.updated", older, created=1)
    assert standing(rows, models)[0].amount == 1000
    full = testing.charge("ch_1", customer="cus_A", amount=1500, amount_refunded=1500)
    deliver(client, "charge.refunded", full)
    assert standing(rows, models) == []


# --- test and live, accounts -----------------------------------------------------------


def test_test_transactions_only_match_test_customers(client, rows, models):
    signup_customer(client, livemode=False)
    live_charge = testing.charge("ch_live", customer="cus_A", livemode=True)
    deliver(client, "charge.succeeded", live_charge, livemode=True)
    [transaction] = rows(models.Transaction)
    assert transaction.livemode is True and transaction.customer_id is None
    metadata = {"customer_key": "user-A", "partner_key": "live-partner"}
    deliver(client, "customer.created", testing.customer("cus_A", metadata=metadata), livemode=True)
    customers = {c.livemode: c for c in rows(models.Customer)}
    assert customers[False].partner_key == "partner-1"
    assert customers[True].partner_key == "live-partner"
    assert rows(models.Transaction)[0].customer_id == customers[True].id


def test_connected_account_scopes_customers_and_transactions(client, rows, models):
    signup_customer(client)  # the platform's own customer cus_A
    metadata = {"customer_key": "user-A", "partner_key": "acct-partner"}
    acct_customer = testing.customer("cus_A", metadata=metadata)
    deliver(client, "customer.created", acct_customer, account="acct_1")
    deliver(client, "charge.succeeded", testing.charge("ch_1", customer="cus_A"), account="acct_1")
    customers = {c.stripe_account_id: c for c in rows(models.Customer)}
    assert set(customers) == {None, "acct_1"}
    [transaction] = rows(models.Transaction)
    assert transaction.stripe_account_id == "acct_1"
    assert transaction.customer_id == customers["acct_1"].id


def test_deauthorized_account_ignores_later_events(client, rows, models):
    with testing.record_signals(signals.account_uninstalled):
        answer = deliver(
            client, "account.application.deauthorized", {"id": "ca_1", "object": "application"},
            account="acct_1",
        )  # fmt: skip
    assert answer["status"] == "processed"
    [account] = rows(models.StripeAccount)
    assert account.uninstalled_at is not None
    later = deliver(client, "charge.succeeded", testing.charge("ch_1"), account="acct_1")
    assert later["status"] == "ignored" and "uninstalled" in later["reason"]
    assert rows(models.Transaction) == []


def test_test_mode_deauthorization_keeps_the_live_installation(app, client, rows, models, state):
    with app.app_context():
        state.db.session.add(models.StripeAccount(stripe_account_id="acct_1", livemode=True))
        state.db.session.commit()
    application = {"id": "ca_1", "object": "application"}
    deliver(client, "account.application.deauthorized", application, account="acct_1")
    live_charge = testing.charge("ch_1", livemode=True)
    answer = deliver(client, "charge.succeeded", live_charge, account="acct_1", livemode=True)
    assert answer["status"] == "processed"
    live = rows(models.StripeAccount, livemode=True)[0]
    assert live.uninstalled_at is None


# --- invoice mode ----------------------------------------------------------------------

INVOICE_MODE = {"PARTNERSTACK_STRIPE_TRANSACTION_SOURCE": "invoice"}


@pytest.mark.parametrize("app_config", [INVOICE_MODE])
@pytest.mark.parametrize("api_version", [testing.PRE_BASIL_API_VERSION, testing.API_VERSION])
def test_invoice_mode_records_invoices_not_charges(client, rows, models, api_version):
    signup_customer(client)
    invoice = testing.invoice(
        "in_1", customer="cus_A", subtotal=9000, charge="ch_1", metadata={"product_key": "team"},
        api_version=api_version,
    )  # fmt: skip
    deliver(client, "invoice.payment_succeeded", invoice, api_version=api_version)
    charge = testing.charge(
        "ch_1", customer="cus_A", amount=9900, invoice="in_1", api_version=api_version
    )
    answer = deliver(client, "charge.succeeded", charge, api_version=api_version)
    assert answer["status"] == "ignored"
    [transaction] = rows(models.Transaction)
    assert (transaction.key, transaction.amount, transaction.product_key) == ("in_1", 9000, "team")


@pytest.mark.parametrize("app_config", [INVOICE_MODE])
def test_pre_basil_refund_deletes_the_invoice_transaction(client, rows, models):
    signup_customer(client)
    version = testing.PRE_BASIL_API_VERSION
    refunded = testing.charge(
        "ch_1", customer="cus_A", amount_refunded=1000, invoice="in_1", api_version=version
    )
    # The refund arrives first: the invoice must not record afterwards.
    deliver(client, "charge.refunded", refunded, api_version=version)
    invoice = testing.invoice("in_1", customer="cus_A", charge="ch_1", api_version=version)
    deliver(client, "invoice.payment_succeeded", invoice, api_version=version)
    assert standing(rows, models) == []


@pytest.mark.parametrize(
    "app_config", [{**INVOICE_MODE, "PARTNERSTACK_STRIPE_API_KEY": "sk_test_platform"}]
)
def test_basil_refund_finds_its_invoice_through_the_api(client, rows, models):
    signup_customer(client)
    deliver(client, "invoice.payment_succeeded", testing.invoice("in_1", customer="cus_A"))
    refunded = testing.charge("ch_1", customer="cus_A", amount_refunded=1000, payment_intent="pi_1")
    with testing.fake_stripe_api() as api:
        api.reply(
            "GET",
            "/v1/invoice_payments",
            {
                "object": "list",
                "url": "/v1/invoice_payments",
                "has_more": False,
                "data": [{"id": "inpay_1", "object": "invoice_payment", "invoice": "in_1"}],
            },
        )
        deliver(client, "charge.refunded", refunded, account="acct_9")
        deliver(client, "invoice.payment_succeeded", testing.invoice("in_2", customer="cus_A"))
        deliver(client, "charge.refunded", refunded)
    [request, *_] = api.requests
    assert request.params["payment[payment_intent]"] == ["pi_1"]
    assert request.params["payment[type]"] == ["payment_intent"]
    assert request.headers["Authorization"] == "Bearer sk_test_platform"
    assert request.headers["Stripe-Account"] == "acct_9"
    assert standing(rows, models, key="in_1") == []


@pytest.mark.parametrize(
    "app_config", [{**INVOICE_MODE, "PARTNERSTACK_STRIPE_STORE_IGNORED_EVENTS": False}]
)
def test_basil_refund_without_api_key_is_kept_as_unmatched(client, rows, models):
    signup_customer(client)
    deliver(client, "invoice.payment_succeeded", testing.invoice("in_1", customer="cus_A"))
    refunded = testing.charge("ch_1", customer="cus_A", amount_refunded=1000)
    answer = deliver(client, "charge.refunded", refunded)
    assert answer["status"] == "ignored" and answer["reason"].startswith("Unmatched refund")
    stored = rows(models.WebhookEvent, type="charge.refunded")
    assert stored[0].error.startswith("Unmatched refund")
    assert [t.key for t in standing(rows, models)] == ["in_1"]


def test_account_can_choose_invoice_mode(app, client, rows, models, state):
    with app.app_context():
        account = models.StripeAccount(stripe_account_id="acct_inv", transaction_source="invoice")
        state.db.session.add(account)
        state.db.session.commit()
    deliver(client, "charge.succeeded", testing.charge("ch_1"), account="acct_inv")
    deliver(client, "invoice.payment_succeeded", testing.invoice("in_1"), account="acct_inv")
    deliver(client, "charge.succeeded", testing.charge("ch_2"))  # the platform: charge mode
    assert sorted(t.key for t in rows(models.Transaction)) == ["ch_2", "in_1"]
