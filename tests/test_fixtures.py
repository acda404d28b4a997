"""Real Stripe payloads from public sources (tests/fixtures/stripe, its SOURCES.md), as they are."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from flask_partnerstack_stripe import testing

#: The repository's own copy, so that a clone alone runs every test.
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "stripe"


def raw(name: str) -> str:
    return (FIXTURES / name).read_text()


def data_only(name: str) -> dict[str, Any]:
    """The ``data.object`` of a data-only fixture (pay-rails keeps just the ``data`` part)."""
    return json.loads(raw(name))["object"]  # type: ignore[no-any-return]


def post_raw(client, body: str):
    """Post a fixture byte for byte, signed now as Stripe would sign it."""
    headers = {"Stripe-Signature": testing.sign(body, client.application.config[
        "PARTNERSTACK_STRIPE_WEBHOOK_SECRETS"][0])}  # fmt: skip
    return client.post("/partnerstack/webhook", data=body.encode(), headers=headers)


# Each whole event fixture, posted alone, and what it must do.
CH0 = "ch_000000000000000000000000"
RUBY = "stripe-ruby-mock/"
EVENTS = [
    (RUBY + "customer.created.json", "ignored", None),
    (RUBY + "customer.updated.json", "ignored", None),
    (RUBY + "customer.deleted.json", "ignored", None),
    (RUBY + "charge.succeeded.json", "processed", (CH0, 2000, False)),
    (RUBY + "charge.captured.json", "processed", (CH0, 100, False)),
    (RUBY + "charge.updated.json", "processed", ("ch_00000000000000", 1000, False)),
    (RUBY + "charge.refunded.json", "processed", (CH0, 100, True)),
    (RUBY + "charge.failed.json", "processed", (CH0, 2000, True)),
    (RUBY + "charge.refund.updated.json", "processed", (CH0, 100, True)),
    (RUBY + "invoice.payment_succeeded.json", "ignored", None),
    (RUBY + "invoice.paid.json", "ignored", None),
    (RUBY + "invoice.payment_failed.json", "ignored", None),
    (RUBY + "payment_intent.succeeded.json", "ignored", None),
    (RUBY + "account.application.deauthorized.json", "ignored", None),
    ("dj-stripe/event_account_application_deauthorized.json", "processed", None),
]  # fmt: skip


@pytest.mark.parametrize(("name", "status", "transaction"), EVENTS, ids=[e[0] for e in EVENTS])
def test_each_real_event_as_it_is(client, rows, models, name, status, transaction):
    response = post_raw(client, raw(name))
    assert response.status_code == 200, response.json
    assert response.json["status"] == status
    [stored] = rows(models.WebhookEvent)
    assert stored.payload == raw(name)
    if transaction is None:
        assert rows(models.Transaction) == []
    else:
        [row] = rows(models.Transaction)
        key, amount, deleted = transaction
        assert (row.key, row.amount, row.deleted_at is not None) == (key, amount, deleted)
        assert row.customer_id is None  # these payloads name no known customer
    assert post_raw(client, raw(name)).json["status"] == "duplicate"


def test_deauthorization_fixture_uninstalls_its_account(client, rows, models):
    post_raw(client, raw("dj-stripe/event_account_application_deauthorized.json"))
    [account] = rows(models.StripeAccount)
    assert account.stripe_account_id == "acct_1Fg9jUA3kq9o1aTc"
    assert account.uninstalled_at is not None and account.livemode is False


def test_ruby_mock_story_with_fresh_event_ids(client, rows, models):
    """The customer-less charge is kept, then attached when its customer is created."""
    succeeded = json.loads(raw(RUBY + "charge.succeeded.json"))
    succeeded["id"] = testing.new_id("evt")
    succeeded["data"]["object"]["customer"] = "cus_00000000000000"
    testing.post_event(client, succeeded)
    customer = json.loads(raw(RUBY + "customer.created.json"))
    customer["id"] = testing.new_id("evt")
    customer["data"]["object"]["metadata"] = {"customer_key": "u-1", "partner_key": "p-1"}
    testing.post_event(client, customer)
    [row] = rows(models.Transaction)
    assert row.customer_id == rows(models.Customer)[0].id
    refunded = json.loads(raw(RUBY + "charge.refunded.json"))
    refunded["id"] = testing.new_id("evt")
    testing.post_event(client, refunded)
    assert rows(models.Transaction)[0].deleted_at is not None


def test_pay_rails_partial_refund_deletes_by_default(client, rows, models):
    metadata = {"customer_key": "u-1", "partner_key": "p-1"}
    testing.post_event(client, testing.event("customer.created", testing.customer(
        "cus_0dUMWLtzCTagWs", metadata=metadata)))  # fmt: skip
    testing.post_event(
        client, testing.event("charge.succeeded", data_only("pay-rails/charge.succeeded.json"))
    )
    [row] = rows(models.Transaction)
    assert (row.key, row.amount, row.customer_id is not None) == ("ch_chargeid", 500, True)
    testing.post_event(
        client, testing.event("charge.refunded", data_only("pay-rails/charge.refunded.json"))
    )
    assert rows(models.Transaction)[0].deleted_at is not None


def test_pay_rails_basil_charge_updated_matches_by_billing_email(client, rows, models, state):
    with client.application.app_context():
        customer_id = state.extension.create_customer(
            "u-live", "customer@example.org", partner_key="p", livemode=True
        ).id
    charge = data_only("pay-rails/charge.updated.json")
    event = testing.event("charge.updated", charge, livemode=True)
    event["data"]["previous_attributes"] = json.loads(raw("pay-rails/charge.updated.json"))[
        "previous_attributes"
    ]
    testing.post_event(client, event)
    [row] = rows(models.Transaction)
    assert (row.key, row.amount, row.livemode, row.customer_id) == (
        "ch_1234",
        24900,
        True,
        customer_id,
    )


@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_TRANSACTION_SOURCE": "invoice"}])
def test_invoice_fixtures_in_invoice_mode(client, rows, models):
    hybrid = json.loads(raw("pay-rails/invoice.json"))
    testing.post_event(client, testing.event("invoice.payment_succeeded", hybrid))
    dj_invoice = json.loads(raw("dj-stripe/invoice_in_fakefakefakefakefake0001.json"))
    testing.post_event(client, testing.event("invoice.payment_succeeded", dj_invoice))
    basil = json.loads(raw("stripe-openapi/basil_2025-03-25/fixtures3.json"))["resources"][
        "invoice"
    ]
    testing.post_event(client, testing.event("invoice.payment_succeeded", basil))
    amounts = {row.key: row.amount for row in rows(models.Transaction)}
    assert amounts == {
        "in_1RFFohKXBGcbgpbZk9MxzDMc": 25230,
        "in_fakefakefakefakefake0001": 2000,
        "in_1Pgc6tB7WZ01zgkWu9fdqL6I": 1000,
    }
    # The pre-basil dj-stripe charge names its invoice: its refund deletes that invoice.
    charge = copy.deepcopy(json.loads(raw("dj-stripe/charge_ch_fakefakefakefakefake0001.json")))
    charge.update(refunded=True, amount_refunded=charge["amount"])
    testing.post_event(client, testing.event("charge.refunded", charge))
    deleted = {row.key for row in rows(models.Transaction) if row.deleted_at is not None}
    assert deleted == {"in_fakefakefakefakefake0001"}


def test_openapi_charges_of_both_eras(client, rows, models):
    for era in ("acacia_2025-02-14", "basil_2025-03-25", "current_2026-07-29"):
        resources = json.loads(raw(f"stripe-openapi/{era}/fixtures3.json"))["resources"]
        answer = testing.post_event(client, testing.event("charge.succeeded", resources["charge"]))
        # Stripe's example charge is authorized but not captured: nothing is recorded yet.
        assert answer.json["status"] == "ignored", era
    assert rows(models.Transaction) == []


# --- the billing flows of DESIGN 4a, with the real payloads that exist ----------------------


def fresh(name: str) -> dict[str, Any]:
    """A whole-event fixture with a fresh event id (stripe-ruby-mock's ids are all zeros)."""
    event = json.loads(raw(name))
    event["id"] = testing.new_id("evt")
    return event  # type: ignore[no-any-return]


@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_TRANSACTION_SOURCE": "invoice"}])
def test_ruby_mock_invoice_events_in_invoice_mode(client, rows, models):
    """stripe-ruby-mock's invoice.paid and invoice.payment_succeeded are the same invoice:
    one transaction; its invoice.payment_failed deletes nothing."""
    for name in ("invoice.payment_failed", "invoice.paid", "invoice.payment_succeeded"):
        answer = testing.post_event(client, fresh(RUBY + name + ".json")).json
        assert answer["status"] == ("ignored" if name == "invoice.payment_failed" else "processed")
    [row] = rows(models.Transaction)
    assert (row.key, row.amount, row.deleted_at) == ("in_000000000000000000000000", 2000, None)


def test_ruby_mock_refund_object_counts_once_with_charge_refunded(client, rows, models):
    """The real charge.refund.updated (a Refund of 100 on ch_0) and charge.refunded (the
    same charge, amount_refunded 100, its refund listed) delete the charge once."""
    for name in ("charge.captured", "charge.refund.updated", "charge.refunded"):
        testing.post_event(client, fresh(RUBY + name + ".json"))
    [row] = rows(models.Transaction)
    assert (row.amount, row.deleted_reason) == (100, "refund")
    assert [(r.refund_id, r.amount) for r in rows(models.Refund)] == [
        ("re_000000000000000000000000", 100)
    ]


@pytest.mark.parametrize("era", ["acacia_2025-02-14", "basil_2025-03-25", "current_2026-07-29"])
def test_openapi_dispute_refund_and_checkout_session(client, rows, models, era):
    """Stripe's own example Dispute, Refund and Checkout Session objects, as they are, then
    with the status that matters."""
    resources = json.loads(raw(f"stripe-openapi/{era}/fixtures3.json"))["resources"]
    charge = copy.deepcopy(resources["charge"])
    charge.update(captured=True, amount_captured=charge["amount"], status="succeeded")
    testing.post_event(client, testing.event("charge.succeeded", charge))
    dispute = resources["dispute"]
    assert dispute["charge"] == charge["id"]
    opened = testing.post_event(client, testing.event("charge.dispute.created", dispute))
    assert opened.json["status"] == "ignored"
    assert [t.deleted_at for t in rows(models.Transaction)] == [None]
    refund = resources["refund"]  # succeeded, 100 of the charge
    testing.post_event(client, testing.event("refund.created", refund))
    failed = {**refund, "status": "failed"}
    testing.post_event(client, testing.event("refund.failed", failed))
    assert [t.deleted_at for t in rows(models.Transaction)] == [None]
    lost = {**dispute, "status": "lost"}
    testing.post_event(client, testing.event("charge.dispute.closed", lost))
    assert [t.deleted_reason for t in rows(models.Transaction)] == ["dispute"]
    # The example session names no customer key, partner or Stripe customer: nothing to link.
    session = resources["checkout.session"]
    answer = testing.post_event(client, testing.event("checkout.session.completed", session))
    assert answer.json["status"] == "ignored"
    assert rows(models.Customer) == []


@pytest.mark.parametrize(
    "app_config",
    [{"PARTNERSTACK_STRIPE_TRANSACTION_SOURCE": "invoice",
      "PARTNERSTACK_STRIPE_INVOICE_AMOUNT": "total_excluding_tax"}],
)  # fmt: skip
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # API version 2020-08-27: no total_excluding_tax (2022-08-01), and a null tax.
        (RUBY + "invoice.paid.json", 2000),
        # Its total of 2000 includes 261 of inclusive tax (`tax` and `total_tax_amounts`).
        ("dj-stripe/invoice_in_fakefakefakefakefake0001.json", 1739),
    ],
)
def test_total_excluding_tax_of_an_invoice_from_before_the_field(
    client, rows, models, name, expected
):
    body = json.loads(raw(name))
    invoice = body["data"]["object"] if body.get("object") == "event" else body
    invoice = {**invoice, "customer": "cus_1"}
    answer = testing.post_event(client, testing.event("invoice.paid", invoice))
    assert answer.json["status"] == "processed", answer.json
    [row] = rows(models.Transaction)
    assert (row.key, row.amount) == (invoice["id"], expected)
