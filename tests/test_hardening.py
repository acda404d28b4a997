"""Issue 11: inputs that got a 500, a wrong partner or a cut identifier, over real HTTP.

Each test posts what an attacker (or an odd but real Stripe payload) sends, on SQLite
and PostgreSQL, and checks what a user would notice: the answer, and what is stored.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from flask_partnerstack_stripe import ConfigurationError, testing

from .apphost import NO_DATABASE, SECRET, create_app

PRORATE = {"PARTNERSTACK_STRIPE_REFUND_POLICY": "prorate"}


def post_customer(client, stripe_id: str, customer_key: str, partner_key: str, **fields: Any):
    metadata = {"customer_key": customer_key, "partner_key": partner_key}
    obj = testing.customer(stripe_id, metadata=metadata, **fields)
    return testing.post_event(client, testing.event("customer.created", obj))


def post_charge(client, charge_id: str = "ch_1", **fields: Any):
    obj = testing.charge(charge_id, **{"customer": "cus_1", **fields})
    return testing.post_event(client, testing.event("charge.succeeded", obj))


def assert_refused(response, rows, models, *words: str) -> None:
    """A clear 400 naming the problem, and nothing stored: no event, customer or payment."""
    assert response.status_code == 400, response.get_data(as_text=True)
    message = response.json["error"]
    for word in words:
        assert word in message
    assert rows(models.WebhookEvent) == []
    assert rows(models.Transaction) == []


# --- 1. NUL in the endpoint id -------------------------------------------------------


@pytest.mark.parametrize("endpoint_id", ["%00", "abc%00def", "%C3%A9", "x" * 65, "a%20b"])
def test_endpoint_id_that_cannot_exist_is_a_404(client, rows, models, endpoint_id):
    event = testing.event("charge.succeeded", testing.charge("ch_1"))
    response = testing.post_event(client, event, url=f"/partnerstack/webhook/{endpoint_id}")
    assert response.status_code == 404
    assert "no webhook endpoint" in response.json["error"]
    assert rows(models.WebhookEvent) == []


# --- 2. keys longer than 255 characters ----------------------------------------------


def test_long_customer_keys_stay_two_customers(client, rows, models):
    """Stripe allows 500-character metadata values; two keys that share 255 characters
    are two customers, and Bob's payment goes to Bob's partner."""
    alice, bob = "a" * 255 + "ALICE", "a" * 255 + "BOB"
    assert post_customer(client, "cus_t1", alice, "partner-ALICE").status_code == 200
    assert post_customer(client, "cus_t2", bob, "partner-BOB").status_code == 200
    assert post_charge(client, "ch_bob", customer="cus_t2").json["status"] == "processed"

    customers = {c.customer_key: c for c in rows(models.Customer)}
    assert set(customers) == {alice, bob}
    [payment] = rows(models.Transaction)
    assert payment.customer_id == customers[bob].id
    assert customers[bob].partner_key == "partner-BOB"


def test_metadata_values_of_500_characters_are_stored_whole(client, rows, models):
    key, partner, product = "k" * 500, "p" * 499 + "é", "x" * 500
    metadata = {"customer_key": key, "partner_key": partner, "product_key": product}
    response = post_charge(client, "ch_1", customer="cus_9", metadata=metadata)
    assert response.json["status"] == "processed"
    [customer] = rows(models.Customer)
    assert (customer.customer_key, customer.partner_key) == (key, partner)
    [payment] = rows(models.Transaction)
    assert (payment.product_key, payment.customer_key) == (product, key)


@pytest.mark.parametrize(
    ("field", "obj"),
    [
        ("metadata.customer_key", testing.charge("ch_1", metadata={"customer_key": "k" * 501})),
        ("metadata.partner_key", testing.charge("ch_1", metadata={"partner_key": "p" * 501})),
        ("metadata.product_key", testing.charge("ch_1", metadata={"product_key": "x" * 501})),
        ("data.object.id", testing.charge("ch_" + "1" * 253)),
        ("customer", testing.charge("ch_1", customer="cus_" + "1" * 252)),
        ("invoice", {**testing.charge("ch_1"), "invoice": "in_" + "1" * 253}),
        ("name", {**testing.charge("ch_1"), "name": "n" * 501}),
    ],
)
def test_values_longer_than_stripe_sends_are_refused_not_cut(client, rows, models, field, obj):
    response = testing.post_event(client, testing.event("charge.succeeded", obj))
    assert_refused(response, rows, models, field)
    assert rows(models.Customer) == []


def test_long_customer_key_on_a_customer_event_is_refused(client, rows, models):
    response = post_customer(client, "cus_1", "k" * 501, "p1")
    assert_refused(response, rows, models, "metadata.customer_key", "500")
    assert rows(models.Customer) == []


# --- 3. case mapping that changes the length -----------------------------------------


def test_email_whose_lowercase_is_longer_is_stored_as_sent(client, rows, models):
    email = "İ" * 300 + "@x.com"  # "İ".lower() is two characters: 606 > 320
    response = post_customer(client, "cus_1", "u1", "p1", email=email)
    assert response.status_code == 200 and response.json["status"] == "processed"
    [customer] = rows(models.Customer)
    assert customer.email == email


def test_email_longer_than_320_characters_is_refused(client, rows, models):
    response = post_customer(client, "cus_1", "u1", "p1", email="İ" * 320 + "@x.com")
    assert_refused(response, rows, models, "email", "320")
    assert rows(models.Customer) == []


@pytest.mark.parametrize("currency", ["İİİ", "usdx", "u$d", "ß"])
def test_currency_that_is_no_iso_code_is_refused(client, rows, models, currency):
    response = post_charge(client, currency=currency)
    assert_refused(response, rows, models, "currency")


@pytest.mark.parametrize("currency", [None, 840, ""], ids=["null", "number", "empty"])
def test_charge_without_a_currency_is_refused(client, rows, models, currency):
    """A payment recorded in no currency would reach the payouts in none."""
    response = post_charge(client, currency=currency)
    assert_refused(response, rows, models, "currency")


def test_charge_with_no_currency_field_is_refused(client, rows, models):
    charge = testing.charge("ch_1", customer="cus_1")
    del charge["currency"]
    response = testing.post_event(client, testing.event("charge.succeeded", charge))
    assert_refused(response, rows, models, "currency")


def test_currency_is_stored_lowercase(client, rows, models):
    assert post_charge(client, currency="EUR").status_code == 200
    assert rows(models.Transaction)[0].currency == "eur"


# --- 4. amounts ------------------------------------------------------------------------


@pytest.mark.parametrize("app_config", [PRORATE])
def test_refund_larger_than_the_charge_is_a_full_refund(client, rows, models):
    response = post_charge(client, amount=0, amount_refunded=5)
    assert response.status_code == 200
    assert [t for t in rows(models.Transaction) if t.deleted_at is None] == []
    assert all(t.amount >= 0 for t in rows(models.Transaction))


@pytest.mark.parametrize("app_config", [PRORATE])
def test_partial_refund_of_the_largest_amount_prorates_exactly(client, rows, models):
    largest = 2**63 - 1
    assert post_charge(client, amount=largest).json["status"] == "processed"
    refunded = testing.charge("ch_1", customer="cus_1", amount=largest, amount_refunded=1)
    testing.post_event(client, testing.event("charge.refunded", refunded))
    [payment] = rows(models.Transaction)
    assert (payment.amount, payment.deleted_at) == (largest - 1, None)

    full = testing.charge("ch_1", customer="cus_1", amount=10, amount_refunded=largest)
    assert testing.post_event(client, testing.event("charge.refunded", full)).status_code == 200
    assert rows(models.Transaction)[0].deleted_at is not None


@pytest.mark.parametrize("app_config", [PRORATE])
@pytest.mark.parametrize(
    "fields",
    [
        {"amount": 10, "amount_refunded": 2**63},
        {"amount": 10, "amount_refunded": 2**70},
        {"amount": 2**63},
        {"amount": -1},
        {"amount": 10, "amount_refunded": -5},
        {"amount": 10.5},
        {"amount": True},
        {"amount": "10"},
        {"amount": 10, "amount_refunded": "5"},
    ],
)
def test_amounts_outside_0_to_2_63_are_refused(client, rows, models, fields):
    charge = {**testing.charge("ch_1", customer="cus_1", amount=10), **fields}
    response = testing.post_event(client, testing.event("charge.succeeded", charge))
    assert_refused(response, rows, models, "2**63-1")


def test_invoice_subtotal_outside_the_range_is_refused(client, rows, models):
    invoice = {**testing.invoice("in_1", customer="cus_1"), "subtotal": 2**64}
    response = testing.post_event(client, testing.event("invoice.payment_succeeded", invoice))
    assert_refused(response, rows, models, "subtotal")


# --- 5. deeply nested JSON -------------------------------------------------------------


def post_signed(client, payload: str, header: str | None = None):
    header = header if header is not None else testing.sign(payload, SECRET)
    return client.post(
        "/partnerstack/webhook",
        data=payload,
        headers={"Stripe-Signature": header},
        content_type="application/json",
    )


@pytest.mark.parametrize("depth", [100_000, 2_000])
def test_deeply_nested_body_is_a_400(client, rows, models, depth):
    response = post_signed(client, "[" * depth + "]" * depth)
    assert_refused(response, rows, models, "nests deeper")


def test_deeply_nested_event_is_a_400(client, rows, models):
    deep: Any = {}
    for _ in range(70):
        deep = {"x": deep}
    event = testing.event("checkout.session.completed", {"id": "cs_1", "nested": deep})
    response = post_signed(client, json.dumps(event))
    assert_refused(response, rows, models, "nests deeper")


def test_realistic_nesting_is_accepted(client):
    deep: Any = {}
    for _ in range(20):
        deep = {"x": [deep]}
    event = testing.event("checkout.session.completed", {"id": "cs_1", "nested": deep})
    assert post_signed(client, json.dumps(event)).status_code == 200


# --- 6. Stripe-Signature with several t= ----------------------------------------------


def test_unparsable_extra_timestamp_is_a_400(client, rows, models):
    payload = json.dumps(testing.event("charge.succeeded", testing.charge("ch_1")))
    valid = testing.sign(payload, SECRET)  # "t=<now>,v1=<sig>"
    response = post_signed(client, payload, f"x, t=abc,{valid}")
    assert_refused(response, rows, models, "exactly one timestamp")


def test_future_timestamp_hidden_behind_another_t_is_refused(client, rows, models):
    payload = json.dumps(testing.event("charge.succeeded", testing.charge("ch_1")))
    now = int(time.time())
    future = testing.sign(payload, SECRET, timestamp=now + 100_000)
    # stripe-python reads the item named exactly "t"; " t=<now>" must not hide it.
    response = post_signed(client, payload, f" t={now},{future}")
    assert_refused(response, rows, models, "exactly one timestamp")


@pytest.mark.parametrize(
    "header",
    [
        "t={now},t={now},v1={sig}",
        "t={now},t={future},v1={sig}",
        "v1={sig}",
        "t={now}=1,v1={sig}",
        "t=" + "9" * 5000 + ",v1={sig}",
        "t={now},v1=\u00e9",  # not ASCII: no secret needed to send it
        "t={now},v1={sig}\u00ff",
    ],
)
def test_ambiguous_or_broken_signature_headers_are_a_400(client, rows, models, header):
    payload = json.dumps(testing.event("charge.succeeded", testing.charge("ch_1")))
    now = int(time.time())
    sig = testing.sign(payload, SECRET, timestamp=now).split("v1=")[1]
    response = post_signed(client, payload, header.format(now=now, future=now + 10**5, sig=sig))
    assert_refused(response, rows, models, "Signature verification failed")


@pytest.mark.parametrize("body", ["null", "1", "true", "1.5", '"evt"'])
def test_a_signed_json_scalar_is_a_400(client, rows, models, body):
    response = post_signed(client, body, testing.sign(body, SECRET))
    assert_refused(response, rows, models, "not a Stripe event")


def test_plain_signature_still_verifies(client):
    payload = json.dumps(testing.event("charge.succeeded", testing.charge("ch_1")))
    assert post_signed(client, payload).json["status"] == "processed"


# --- 9. create_customer checks its arguments ---------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"customer_key": "u" * 501}, "customer_key"),
        ({"customer_key": "u\x00"}, "customer_key"),
        ({"customer_key": 42}, "customer_key"),
        ({"customer_key": "  "}, "customer_key"),
        ({"partner_key": "p" * 501}, "partner_key"),
        ({"partner_key": "p\x00"}, "partner_key"),
        ({"partner_key": ["p"]}, "partner_key"),
        ({"name": "n" * 501}, "name"),
        ({"name": "line\nbreak"}, "name"),
        ({"email": "e" * 320 + "@x.com"}, "email"),
        ({"email": "a\x00@x.com"}, "email"),
        ({"email": b"a@x.com"}, "email"),
        ({"email": "no-at-sign"}, "email"),
        ({"stripe_account_id": "acct_\x00"}, "stripe_account_id"),
        ({"stripe_account_id": "cus_1"}, "stripe_account_id"),
        ({"livemode": "yes"}, "livemode"),
    ],
)
def test_create_customer_refuses_bad_arguments(app, state, rows, models, arguments, named):
    call = {"customer_key": "u1", "email": "u1@x.com", "partner_key": "p1", **arguments}
    with app.app_context(), pytest.raises(ValueError, match=named):
        state.extension.create_customer(call.pop("customer_key"), call.pop("email"), **call)
    assert rows(models.Customer) == []


def test_create_customer_stores_long_values_whole(app, state, rows, models):
    with app.app_context():
        state.extension.create_customer(
            "u" * 500, " Ann@X.COM ", partner_key="p" * 500, name="N" * 500
        )
    [customer] = rows(models.Customer)
    assert (customer.customer_key, customer.partner_key) == ("u" * 500, "p" * 500)
    assert (customer.email, customer.name) == ("ann@x.com", "N" * 500)


# --- 10. email normalization and INSTALL_REDIRECT ------------------------------------


def test_kelvin_sign_email_does_not_match_an_ascii_k(client, rows, models):
    post_customer(client, "cus_kate", "kate", "partner-kate", email="kate@x.com")
    charge = testing.charge("ch_1", customer=None, email="\u212aate@x.com")
    assert testing.post_event(client, testing.event("charge.succeeded", charge)).status_code == 200
    [payment] = rows(models.Transaction)
    assert payment.customer_id is None
    assert payment.customer_email == "\u212aate@x.com"


def test_accented_email_does_not_match_its_unaccented_letter(client, rows, models):
    # MySQL's default collations would call them equal; every database here does not.
    post_customer(client, "cus_ann", "ann", "partner-ann", email="a@x.com")
    charge = testing.charge("ch_1", customer=None, email="\u00c4@x.com")
    assert testing.post_event(client, testing.event("charge.succeeded", charge)).status_code == 200
    [payment] = rows(models.Transaction)
    assert payment.customer_id is None
    assert payment.customer_email == "\u00c4@x.com"


def test_stripe_ids_differing_in_case_are_two_customers(client, rows, models):
    post_customer(client, "cus_Ab", "upper", "partner-a")
    post_customer(client, "cus_ab", "lower", "partner-b")
    customers = {c.stripe_customer_id: c.customer_key for c in rows(models.Customer)}
    assert customers == {"cus_Ab": "upper", "cus_ab": "lower"}


def test_email_matching_ignores_ascii_case_only(client, rows, models):
    post_customer(client, "cus_kate", "kate", "partner-kate", email="Kate@X.com")
    charge = testing.charge("ch_1", customer=None, email="  KATE@x.COM ")
    testing.post_event(client, testing.event("charge.succeeded", charge))
    [customer] = rows(models.Customer)
    assert customer.email == "kate@x.com"
    assert rows(models.Transaction)[0].customer_id == customer.id


@pytest.mark.parametrize(
    "target",
    [
        "/\t/evil.example",
        "/\n/evil.example",
        "/\r/evil.example",
        "/\x00",
        "/ok\x7f",
        "\t//evil.example",
        " //evil.example",
        "/ok ",
        "javascript:alert(1)",
        "settings.page\n",
        "",
    ],
)
def test_install_redirect_that_a_browser_reads_off_site_is_refused(target):
    with pytest.raises(ConfigurationError, match="INSTALL_REDIRECT"):
        create_app(NO_DATABASE, PARTNERSTACK_STRIPE_INSTALL_REDIRECT=target)


@pytest.mark.parametrize("target", ["/settings", "/settings/stripe?tab=1", "settings.stripe"])
def test_local_install_redirects_are_accepted(target):
    app = create_app(NO_DATABASE, PARTNERSTACK_STRIPE_INSTALL_REDIRECT=target)
    assert app.extensions["partnerstack_stripe"].settings.install_redirect == target


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (("acct_\x00", "whsec_1"), "stripe_account_id"),
        (("acct_" + "1" * 251, "whsec_1"), "stripe_account_id"),
        (("acct_1", "whsec_\x00"), "signing_secret"),
        (("acct_1", "whsec_" + "1" * 250), "signing_secret"),
    ],
)
def test_create_endpoint_refuses_what_cannot_be_stored(app, state, rows, models, arguments, named):
    with app.app_context(), pytest.raises(ValueError, match=named) as raised:
        state.extension.create_endpoint(*arguments)
    assert arguments[1] not in str(raised.value)
    assert rows(models.StripeAccount) == []


def test_set_endpoint_secret_names_an_impossible_id_and_looks_up_a_possible_one(app, state):
    with app.app_context(), pytest.raises(ValueError, match="endpoint_id"):
        state.extension.set_endpoint_secret("abc\x00", "whsec_1")
    with app.app_context(), pytest.raises(LookupError):
        state.extension.set_endpoint_secret("abc", "whsec_1")


def test_create_customer_takes_empty_optional_fields_as_absent(app, state, rows, models):
    with app.app_context():
        state.extension.create_customer("u1", "", partner_key="", name=" ")
    [customer] = rows(models.Customer)
    assert (customer.email, customer.partner_key, customer.name) == (None, None, None)
