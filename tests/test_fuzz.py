"""Fuzzing: signed bodies of every event type with arbitrary shapes, types, numbers and text.

Whatever arrives, the receiver answers 2xx or 4xx, never 5xx, and the ledger stays
consistent. ``make test`` runs a bounded number of examples; ``make fuzz`` runs many more
(``FUZZ_EXAMPLES``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_partnerstack_stripe import testing
from flask_partnerstack_stripe.scenarios import EVENT_TYPES

from .apphost import SECRET

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))

# Any code point, lone surrogates and NUL included: JSON can carry them all as escapes.
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
huge_ints = st.integers(min_value=-(2**80), max_value=2**80)
scalars = st.none() | st.booleans() | huge_ints | st.floats(allow_nan=False) | any_text
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(any_text, children, max_size=3)
    ),
    max_leaves=8,
)
keys = st.sampled_from(["customer_key", "customer_id", "partner_key", "product_key"]) | any_text
metadata = st.dictionaries(keys, any_text | json_values, max_size=4)


def base_object(event_type: str) -> dict[str, Any]:
    if event_type.startswith("customer."):
        return testing.customer("cus_f", email="f@example.com",
                                metadata={"customer_key": "u", "partner_key": "p"})  # fmt: skip
    if event_type.startswith("charge."):
        return testing.charge("ch_f", customer="cus_f", amount_refunded=0)
    if event_type.startswith("invoice."):
        return testing.invoice("in_f", customer="cus_f")
    return {"id": "ca_f", "object": "application"}


@st.composite
def fuzzed_events(draw: st.DrawFn) -> dict[str, Any]:
    event_type = draw(st.sampled_from(EVENT_TYPES))
    obj = base_object(event_type)
    # Replace, retype or drop some of the object's fields, and add strange ones.
    for field in draw(st.lists(st.sampled_from(sorted(obj)), max_size=6, unique=True)):
        if draw(st.booleans()):
            del obj[field]
        else:
            obj[field] = draw(json_values)
    obj.update(draw(st.dictionaries(any_text, json_values, max_size=2)))
    if draw(st.booleans()):
        obj["metadata"] = draw(metadata)
    if draw(st.booleans()):
        obj["customer"] = draw(st.sampled_from(["cus_f", "cus_g"]) | any_text)
    event = testing.event(event_type, obj, account=draw(st.none() | st.just("acct_f")))
    # The envelope: mostly valid (so the handlers run), sometimes not.
    for field in draw(st.lists(st.sampled_from(["id", "type", "created", "livemode", "data",
                                                "account", "object"]), max_size=2)):  # fmt: skip
        event[field] = draw(json_values)
    if draw(st.booleans()):
        event["created"] = draw(huge_ints)
    return event


def assert_consistent_ledger(rows, models) -> None:
    for event in rows(models.WebhookEvent):
        assert event.status in ("processed", "ignored"), (event.stripe_event_id, event.error)
    for transaction in rows(models.Transaction):
        assert isinstance(transaction.amount, int) and transaction.amount >= 0
        assert len(transaction.currency) <= 3
    keys = [(c.account_scope, c.livemode, c.customer_key) for c in rows(models.Customer)]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("refund_policy", ["delete", "prorate"])
def test_fuzzed_events_never_get_a_5xx(app, rows, models, refund_policy):
    app.extensions["partnerstack_stripe"].settings.__dict__["refund_policy"] = refund_policy
    client = app.test_client()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        derandomize=os.environ.get("FUZZ_RANDOM") != "1",
    )
    @given(event=fuzzed_events(), ascii_only=st.booleans())
    def deliver(event: dict[str, Any], ascii_only: bool) -> None:
        payload = json.dumps(event, ensure_ascii=ascii_only)
        try:
            body = payload.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate cannot be sent raw: send it escaped
            payload = json.dumps(event)
            body = payload.encode()
        headers = {"Stripe-Signature": testing.sign(payload, SECRET)}
        response = client.post("/partnerstack/webhook", data=body, headers=headers)
        assert response.status_code < 500, (response.status_code, response.get_data(as_text=True))

    deliver()
    assert_consistent_ledger(rows, models)
