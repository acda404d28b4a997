"""Which invoice a charge paid, in payloads from before and after Stripe's basil API version.

Before 2025-03-31.basil a charge names its invoice (``charge.invoice``). From basil
on it does not, and refund and dispute objects never do; the link is an
InvoicePayment, listed by the payment intent through the Stripe API when the
platform's key is configured. That call is made by :func:`look_up_invoice` before the
event's database transaction begins, never while it holds locks.
"""

from __future__ import annotations

import logging
from typing import Any

import stripe

from .config import Settings
from .receiver import EventContext
from .values import object_id

log = logging.getLogger("flask_partnerstack_stripe")


def named_invoice(obj: dict[str, Any]) -> str | None:
    """The invoice a charge names itself (before basil), expanded or not."""
    return object_id(obj.get("invoice"), field="invoice")


def payment_intent_of(obj: dict[str, Any]) -> str | None:
    return object_id(obj.get("payment_intent"), field="payment_intent")


def _lookup_key(payment_intent: str) -> str:
    return f"invoice_of:{payment_intent}"


def invoice_of_charge(context: EventContext, obj: dict[str, Any]) -> str | None:
    """The id of the invoice ``obj`` (a charge, refund or dispute) paid, or None.

    From the object itself, else from the look-up :func:`look_up_invoice` made before
    the transaction began.
    """
    named = named_invoice(obj)
    if named is not None:
        return named
    payment_intent = payment_intent_of(obj)
    if payment_intent is None:
        return None
    return context.lookups.get(_lookup_key(payment_intent))


def _api_key(settings: Settings, event: dict[str, Any]) -> str | None:
    """The platform's key for the event's mode: a live key cannot read test-mode objects
    (Stripe refuses the call), nor a test key live ones."""
    return settings.api_key_for(event.get("livemode") is True)


def may_look_up_invoice(settings: Settings, event: dict[str, Any]) -> bool:
    """Whether :func:`look_up_invoice` could call Stripe for ``event`` on some account: a
    key for the event's mode is set and the object has a payment intent but does not name
    its invoice (a dispute only once lost, the only dispute news invoice mode acts on)."""
    obj = event["data"]["object"]
    return (
        _api_key(settings, event) is not None
        and isinstance(obj, dict)
        and payment_intent_of(obj) is not None
        and named_invoice(obj) is None
        and not (obj.get("object") == "dispute" and obj.get("status") != "lost")
    )


def look_up_invoice(
    settings: Settings, event: dict[str, Any], stripe_account_id: str | None, source: str
) -> dict[str, Any]:
    """Ask Stripe which invoice the event's payment intent paid, when the rules need it.

    Only in invoice mode (``source``, the transaction source of the event's account), when
    :func:`may_look_up_invoice`. Runs outside any database transaction.
    """
    if source != "invoice" or not may_look_up_invoice(settings, event):
        return {}
    payment_intent = payment_intent_of(event["data"]["object"])
    api_key = _api_key(settings, event)
    assert payment_intent is not None and api_key is not None  # may_look_up_invoice
    payments = stripe.InvoicePayment.list(
        payment={"type": "payment_intent", "payment_intent": payment_intent},
        limit=1,
        api_key=api_key,
        stripe_account=stripe_account_id,
    )
    for payment in payments.data:
        invoice = getattr(payment, "invoice", None)
        found = object_id(
            invoice if isinstance(invoice, str) else getattr(invoice, "id", None), field="invoice"
        )
        return {_lookup_key(payment_intent): found}
    return {_lookup_key(payment_intent): None}
