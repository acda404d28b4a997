"""Which invoice a charge paid, in payloads from before and after Stripe's basil API version.

Before 2025-03-31.basil a charge names its invoice (``charge.invoice``). From basil
on it does not; the link is an InvoicePayment, listed by the charge's payment
intent through the Stripe API when the platform's key is configured.
"""

from __future__ import annotations

import logging
from typing import Any

import stripe

from .receiver import EventContext
from .values import text

log = logging.getLogger("flask_partnerstack_stripe")


def invoice_of_charge(context: EventContext, charge: dict[str, Any]) -> str | None:
    """The id of the invoice ``charge`` paid, or None when it cannot be told."""
    named = charge.get("invoice")
    if isinstance(named, dict):  # expanded
        named = named.get("id")
    if text(named):
        return text(named)
    payment_intent = charge.get("payment_intent")
    if isinstance(payment_intent, dict):
        payment_intent = payment_intent.get("id")
    api_key = context.settings.api_key
    if api_key is None or text(payment_intent) is None:
        return None
    payments = stripe.InvoicePayment.list(
        payment={"type": "payment_intent", "payment_intent": text(payment_intent) or ""},
        limit=1,
        api_key=api_key,
        stripe_account=context.stripe_account_id,
    )
    for payment in payments.data:
        invoice = getattr(payment, "invoice", None)
        return text(invoice if isinstance(invoice, str) else getattr(invoice, "id", None))
    return None
