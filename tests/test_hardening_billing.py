"""Issue 11's single validation point over issue 10's event types.

Every value the billing rules read (refund objects, disputes, Checkout Sessions,
``invoice.paid`` / ``invoice.payment_failed``, every ``INVOICE_AMOUNT``,
``amount_captured``, a charge's listed refunds, subscription metadata of both API eras)
is checked before the event is stored: what Stripe cannot send is a 400 with nothing
stored, never a 500 and never cut; what Stripe can send is stored whole. On SQLite and
PostgreSQL, through the signed webhook.
"""

from __future__ import annotations

from typing import Any

import pytest

from flask_partnerstack_stripe import testing
from flask_partnerstack_stripe.rules import BUILTIN_HANDLERS, VALUE_CHECKS

from .test_hardening import assert_refused

INVOICE_MODE = {"PARTNERSTACK_STRIPE_TRANSACTION_SOURCE": "invoice"}
BASIL, ACACIA = testing.API_VERSION, testing.PRE_BASIL_API_VERSION


def test_every_built_in_rule_has_its_values_checked():
    assert VALUE_CHECKS.keys() == BUILTIN_HANDLERS.keys()
    assert [t for t, check in VALUE_CHECKS.items() if check is None] == [
        "account.application.deauthorized"  # reads only the envelope's account
    ]


def refund(**fields: Any) -> dict[str, Any]:
    return {**testing.refund("re_1", charge="ch_1"), **fields}


def dispute(**fields: Any) -> dict[str, Any]:
    return {**testing.dispute("dp_1", charge="ch_1", status="lost"), **fields}


def session(**fields: Any) -> dict[str, Any]:
    base = testing.checkout_session(
        "cs_1", customer="cus_1", client_reference_id="user-1", email="a@example.com",
        metadata={"partner_key": "p1"},
    )  # fmt: skip
    return {**base, **fields}


def invoice(api_version: str = BASIL, **fields: Any) -> dict[str, Any]:
    meta = {"customer_key": "user-1", "partner_key": "p1"}
    base = testing.invoice(
        "in_1", customer="cus_1", subscription_metadata=meta, api_version=api_version
    )
    return {**base, **fields}


def basil_subscription_metadata(**meta: str) -> dict[str, Any]:
    obj = invoice(BASIL)
    obj["parent"]["subscription_details"]["metadata"].update(meta)
    return obj


def acacia_subscription_metadata(**meta: str) -> dict[str, Any]:
    obj = invoice(ACACIA)
    obj["subscription_details"]["metadata"].update(meta)
    return obj


TOO_LONG_ID = "x_" + "1" * 254
REFUSED = [
    # refund objects
    ("refund.created", refund(amount=-1), "refund amount"),
    ("refund.created", refund(amount=2**63), "refund amount"),
    ("refund.updated", refund(amount="500"), "refund amount"),
    ("refund.failed", refund(id=TOO_LONG_ID), "refund id"),
    ("refund.failed", refund(status="f" * 33), "status"),
    ("refund.created", refund(charge=TOO_LONG_ID), "charge"),
    ("refund.created", refund(charge={"id": TOO_LONG_ID}), "charge"),
    ("refund.created", refund(currency="İİİ"), "currency"),
    ("refund.created", refund(currency=None), "currency"),
    ("charge.refund.updated", refund(payment_intent=TOO_LONG_ID), "payment_intent"),
    # disputes
    ("charge.dispute.closed", dispute(amount=2**64), "amount"),
    ("charge.dispute.created", dispute(amount=-5, status="needs_response"), "amount"),
    ("charge.dispute.updated", dispute(currency="usdx"), "currency"),
    ("charge.dispute.closed", dispute(currency=None), "currency"),
    ("charge.dispute.closed", dispute(charge=TOO_LONG_ID), "charge"),
    # Checkout Sessions
    ("checkout.session.completed", session(metadata={"partner_key": "p" * 501}), "partner_key"),
    ("checkout.session.completed", session(metadata={"customer_key": "k" * 501}), "customer_key"),
    ("checkout.session.completed", session(client_reference_id="r" * 201), "client_reference"),
    ("checkout.session.completed", session(customer=TOO_LONG_ID), "customer"),
    (
        "checkout.session.completed",
        session(customer_details={"email": "e" * 320 + "@x.io", "name": None}),
        "customer_details.email",
    ),
    # invoices: every amount INVOICE_AMOUNT may name, and subscription metadata of both eras
    ("invoice.paid", invoice(subtotal=-(2**63)), "subtotal"),  # a credit invoice's is >= -(2**63-1)
    ("invoice.paid", invoice(total=2**63), "total"),
    ("invoice.paid", invoice(amount_paid=2**70), "amount_paid"),
    ("invoice.payment_succeeded", invoice(total_excluding_tax="10"), "total_excluding_tax"),
    ("invoice.paid", invoice(currency="ßßß"), "currency"),
    ("invoice.paid", invoice(currency=None), "currency"),
    ("invoice.payment_failed", invoice(metadata={"product_key": "x" * 501}), "product_key"),
    ("invoice.paid", basil_subscription_metadata(customer_key="k" * 501), "customer_key"),
    ("invoice.paid", acacia_subscription_metadata(partner_key="p" * 501), "partner_key"),
    ("invoice.paid", basil_subscription_metadata(product_key="x" * 501), "product_key"),
    # what billing added to charges: amount_captured and the refunds a charge lists
    (
        "charge.captured",
        {**testing.charge("ch_1", customer="cus_1"), "amount_captured": 2**63},
        "amount_captured",
    ),
    (
        "charge.refunded",
        {
            **testing.charge("ch_1", customer="cus_1"),
            "refunds": {"object": "list", "data": [{"id": "re_1", "amount": -1}]},
        },
        "refund amount",
    ),
]


@pytest.mark.parametrize("app_config", [INVOICE_MODE, {}], ids=["invoice", "charge"])
@pytest.mark.parametrize(("event_type", "obj", "named"), REFUSED)
def test_values_stripe_cannot_send_are_refused_in_every_event_type(
    client, rows, models, event_type, obj, named
):
    response = testing.post_event(client, testing.event(event_type, obj))
    assert_refused(response, rows, models, named)
    assert rows(models.Customer) == []
    assert rows(models.Refund) == []


@pytest.mark.parametrize("app_config", [INVOICE_MODE])
@pytest.mark.parametrize("api_version", [BASIL, ACACIA])
def test_subscription_metadata_of_500_characters_is_stored_whole(client, rows, models, api_version):
    key, partner, product = "k" * 499 + "é", "p" * 500, "x" * 500
    meta = {"customer_key": key, "partner_key": partner, "product_key": product}
    obj = testing.invoice(
        "in_1", customer="cus_1", subscription_metadata=meta, api_version=api_version
    )
    response = testing.post_event(client, testing.event("invoice.paid", obj))
    assert response.json["status"] == "processed", response.get_data(as_text=True)
    [customer] = rows(models.Customer)
    assert (customer.customer_key, customer.partner_key) == (key, partner)
    [payment] = rows(models.Transaction)
    assert (payment.customer_key, payment.product_key) == (key, product)


def test_checkout_values_at_stripes_limits_are_stored_whole(client, rows, models):
    reference, partner = "r" * 200, "p" * 499 + "é"
    email = "İ" * 300 + "@x.io"  # its Unicode lowercase would be longer than 320
    obj = session(
        client_reference_id=reference,
        metadata={"partner_key": partner},
        customer_details={"email": email, "name": "n" * 500},
    )
    response = testing.post_event(client, testing.event("checkout.session.completed", obj))
    assert response.json["status"] == "processed", response.get_data(as_text=True)
    [customer] = rows(models.Customer)
    assert (customer.customer_key, customer.partner_key) == (reference, partner)
    assert (customer.email, customer.name) == (email, "n" * 500)


def test_refund_at_the_limits_is_stored_whole(client, rows, models):
    largest = 2**63 - 1
    charge = testing.charge("ch_1", customer="cus_1", amount=largest)
    assert testing.post_event(client, testing.event("charge.succeeded", charge)).status_code == 200
    refund_id = "re_" + "1" * 252
    obj = refund(id=refund_id, amount=largest - 1)
    response = testing.post_event(client, testing.event("refund.created", obj))
    assert response.json["status"] == "processed", response.get_data(as_text=True)
    [stored] = rows(models.Refund)
    assert (stored.refund_id, stored.amount) == (refund_id, largest - 1)
    [payment] = rows(models.Transaction)
    assert payment.deleted_reason == "refund"


@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_REFUND_POLICY": "prorate"}])
def test_refunds_whose_sum_passes_2_63_are_a_full_refund(client, rows, models):
    """Each refund is within 0..2**63-1; their sum is not, and must not overflow a query."""
    largest = 2**63 - 1
    charge = testing.charge("ch_1", customer="cus_1", amount=largest)
    assert testing.post_event(client, testing.event("charge.succeeded", charge)).status_code == 200
    for refund_id in ("re_1", "re_2", "re_3"):
        obj = refund(id=refund_id, amount=2**62)
        response = testing.post_event(client, testing.event("refund.created", obj))
        assert response.status_code == 200, response.get_data(as_text=True)
    [payment] = rows(models.Transaction)
    assert (payment.amount, payment.deleted_reason) == (0, "refund")
