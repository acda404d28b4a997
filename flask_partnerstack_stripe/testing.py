"""Helpers for testing a host app: build Stripe events, sign them as Stripe does, post them.

::

    from flask_partnerstack_stripe import signals, testing

    def test_partner_gets_credit(app, client):
        with testing.record_signals(signals.transaction_recorded) as sent:
            testing.post_event(client, testing.event("customer.created", testing.customer(
                "cus_1", metadata={"customer_key": "u1", "partner_key": "p1"})))
            testing.post_event(client, testing.event("charge.succeeded", testing.charge(
                "ch_1", customer="cus_1", amount=4200)))
        assert sent[0].kwargs["transaction"].amount == 4200
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from blinker import NamedSignal
from flask import Flask, url_for
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from .extension import get_state
from .fake_stripe import FakeRequest, FakeStripeAPI, fake_stripe_api

__all__ = [
    "API_VERSION",
    "PRE_BASIL_API_VERSION",
    "FakeRequest",
    "FakeStripeAPI",
    "SentSignal",
    "charge",
    "checkout_session",
    "customer",
    "dispute",
    "event",
    "fake_stripe_api",
    "invoice",
    "new_id",
    "post_event",
    "record_signals",
    "refund",
    "sign",
]

#: The API version new events are built with; ``api_version=`` picks another.
API_VERSION = "2025-03-31.basil"
PRE_BASIL_API_VERSION = "2024-12-18.acacia"


class _Clock:
    """Event times that follow the wall clock and still increase call by call: a test's
    events keep their order within a second, and none looks older than what the app
    stamped "now" before it (a backfill's events, say), which the ordering rules would
    then take as newer."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._last = max(int(time.time()), self._last + 1)
            return self._last


_clock = _Clock()


def new_id(prefix: str) -> str:
    """A fresh Stripe-looking id such as ``evt_3f9c...``."""
    return f"{prefix}_{secrets.token_hex(12)}"


def event(
    type: str,
    obj: dict[str, Any],
    *,
    id: str | None = None,
    created: int | None = None,
    livemode: bool = False,
    account: str | None = None,
    api_version: str = API_VERSION,
    previous_attributes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Stripe event envelope around ``obj``. ``created`` is now by default, and later
    than the previous call's."""
    envelope: dict[str, Any] = {
        "id": id or new_id("evt"),
        "object": "event",
        "api_version": api_version,
        "created": created if created is not None else _clock.next(),
        "data": {"object": obj},
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type,
    }
    if previous_attributes is not None:
        envelope["data"]["previous_attributes"] = previous_attributes
    if account is not None:
        envelope["account"] = account
    return envelope


def customer(
    id: str | None = None,
    *,
    email: str | None = None,
    name: str | None = None,
    metadata: dict[str, str] | None = None,
    livemode: bool = False,
) -> dict[str, Any]:
    """A Stripe Customer object."""
    return {
        "id": id or new_id("cus"),
        "object": "customer",
        "created": int(time.time()),
        "email": email,
        "name": name,
        "metadata": metadata or {},
        "livemode": livemode,
        "currency": None,
        "delinquent": False,
        "description": None,
    }


def charge(
    id: str | None = None,
    *,
    customer: str | None = None,
    amount: int = 1000,
    currency: str = "usd",
    metadata: dict[str, str] | None = None,
    status: str = "succeeded",
    captured: bool = True,
    amount_refunded: int = 0,
    amount_captured: int | None = None,
    email: str | None = None,
    invoice: str | None = None,
    payment_intent: str | None = None,
    livemode: bool = False,
    api_version: str = API_VERSION,
) -> dict[str, Any]:
    """A Stripe Charge object. Before basil it names its ``invoice``; from basil on it cannot.

    ``amount_captured`` below ``amount`` is a partial capture: Stripe then releases the
    rest and counts it in ``amount_refunded``, which this builder does too.
    """
    if amount_captured is None:
        amount_captured = amount if captured else 0
    elif captured:
        amount_refunded += amount - amount_captured  # the released remainder
    obj: dict[str, Any] = {
        "id": id or new_id("ch"),
        "object": "charge",
        "amount": amount,
        "amount_captured": amount_captured,
        "amount_refunded": amount_refunded,
        "billing_details": {"email": email, "name": None},
        "captured": captured,
        "created": int(time.time()),
        "currency": currency,
        "customer": customer,
        "livemode": livemode,
        "metadata": metadata or {},
        "paid": status == "succeeded",
        "payment_intent": payment_intent or new_id("pi"),
        "receipt_email": email,
        "refunded": amount_refunded >= amount > 0,
        "status": status,
    }
    if api_version < "2025-03-31":
        obj["invoice"] = invoice
    return obj


def invoice(
    id: str | None = None,
    *,
    customer: str | None = None,
    subtotal: int = 1000,
    total_excluding_tax: int | None = None,
    tax: int = 0,
    currency: str = "usd",
    metadata: dict[str, str] | None = None,
    subscription: str | None = None,
    subscription_metadata: dict[str, str] | None = None,
    charge: str | None = None,
    payment_intent: str | None = None,
    email: str | None = None,
    status: str = "paid",
    livemode: bool = False,
    api_version: str = API_VERSION,
) -> dict[str, Any]:
    """A Stripe Invoice object (paid by default), in the shape of ``api_version``.

    ``total_excluding_tax`` is the amount after discounts (``subtotal`` by default) and
    ``tax`` is added to make ``total`` and ``amount_paid``. A subscription invoice
    carries the subscription's metadata as Stripe copies it: under
    ``parent.subscription_details`` from basil on, ``subscription_details`` before
    (Stripe API reference, "The Invoice object"; basil changelog "Invoice parent").
    Before basil the invoice also names its ``charge`` and ``payment_intent``.
    """
    after_discounts = subtotal if total_excluding_tax is None else total_excluding_tax
    total = after_discounts + tax
    paid = status == "paid"
    obj: dict[str, Any] = {
        "id": id or new_id("in"),
        "object": "invoice",
        "amount_due": total,
        "amount_paid": total if paid else 0,
        "amount_remaining": 0 if paid else total,
        "billing_reason": "subscription_cycle"
        if subscription or subscription_metadata
        else "manual",
        "currency": currency,
        "customer": customer,
        "customer_email": email,
        "livemode": livemode,
        "metadata": metadata or {},
        "status": status,
        "subtotal": subtotal,
        "total": total,
        "total_excluding_tax": after_discounts,
    }
    is_subscription = subscription is not None or subscription_metadata is not None
    subscription = subscription or (new_id("sub") if is_subscription else None)
    details = {"metadata": subscription_metadata or {}}
    if api_version < "2025-03-31":
        obj["charge"] = charge
        obj["payment_intent"] = payment_intent
        obj["paid"] = paid
        obj["subscription"] = subscription
        obj["subscription_details"] = details if is_subscription else {"metadata": None}
    else:
        obj["parent"] = (
            {
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {**details, "subscription": subscription},
            }
            if is_subscription
            else None
        )
    return obj


def refund(
    id: str | None = None,
    *,
    charge: str,
    amount: int = 1000,
    status: str = "succeeded",
    currency: str = "usd",
    payment_intent: str | None = None,
) -> dict[str, Any]:
    """A Stripe Refund object (the ``refund.*`` and ``charge.refund.updated`` events carry one).

    Shape: Stripe API reference, "The Refund object" (and stripe/openapi fixtures3.json
    ``refund``). ``status`` is ``pending``, ``requires_action``, ``succeeded``,
    ``failed`` or ``canceled``; a failed one has a ``failure_reason``.
    """
    obj: dict[str, Any] = {
        "id": id or new_id("re"),
        "object": "refund",
        "amount": amount,
        "balance_transaction": None,
        "charge": charge,
        "created": int(time.time()),
        "currency": currency,
        "metadata": {},
        "payment_intent": payment_intent,
        "reason": None,
        "status": status,
    }
    if status == "failed":
        obj["failure_reason"] = "expired_or_canceled_card"
    return obj


def dispute(
    id: str | None = None,
    *,
    charge: str,
    amount: int = 1000,
    status: str = "needs_response",
    currency: str = "usd",
    payment_intent: str | None = None,
) -> dict[str, Any]:
    """A Stripe Dispute object (``charge.dispute.*`` events carry one).

    Shape: Stripe API reference, "The Dispute object" (and stripe/openapi fixtures3.json
    ``dispute``). ``status`` is ``warning_needs_response``, ``warning_under_review``,
    ``warning_closed``, ``needs_response``, ``under_review``, ``won`` or ``lost``.
    """
    return {
        "id": id or new_id("dp"),
        "object": "dispute",
        "amount": amount,
        "balance_transactions": [],
        "charge": charge,
        "created": int(time.time()),
        "currency": currency,
        "is_charge_refundable": False,
        "livemode": False,
        "metadata": {},
        "payment_intent": payment_intent,
        "reason": "fraudulent",
        "status": status,
    }


def checkout_session(
    id: str | None = None,
    *,
    customer: str | None = None,
    client_reference_id: str | None = None,
    email: str | None = None,
    name: str | None = None,
    metadata: dict[str, str] | None = None,
    mode: str = "payment",
    amount_total: int = 1000,
    currency: str = "usd",
    payment_link: str | None = None,
    livemode: bool = False,
) -> dict[str, Any]:
    """A completed Stripe Checkout Session (``checkout.session.completed`` carries one).

    Shape: Stripe API reference, "The Checkout Session object" (and stripe/openapi
    fixtures3.json ``checkout.session``): the buyer's email is in
    ``customer_details.email``; ``customer`` is None for a guest payment.
    """
    return {
        "id": id or new_id("cs_test"),
        "object": "checkout.session",
        "amount_subtotal": amount_total,
        "amount_total": amount_total,
        "client_reference_id": client_reference_id,
        "created": int(time.time()),
        "currency": currency,
        "customer": customer,
        "customer_details": {"email": email, "name": name, "phone": None, "address": None},
        "customer_email": None,
        "livemode": livemode,
        "metadata": metadata or {},
        "mode": mode,
        "payment_intent": new_id("pi") if mode == "payment" else None,
        "payment_link": payment_link,
        "payment_status": "paid",
        "status": "complete",
        "subscription": new_id("sub") if mode == "subscription" else None,
    }


def sign(payload: str, secret: str, *, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header Stripe would send for ``payload``."""
    # Stripe's scheme (what stripe.WebhookSignature.verify_header checks), written out:
    # not every stripe version we support has a public helper for it.
    timestamp = int(time.time()) if timestamp is None else timestamp
    signed = f"{timestamp}.{payload}".encode()
    signature = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={signature}"


def post_event(
    client: FlaskClient,
    event: dict[str, Any] | str,
    *,
    secret: str | None = None,
    url: str | None = None,
    timestamp: int | None = None,
) -> TestResponse:
    """Serialize (if needed), sign and post ``event`` to the app's webhook URL."""
    app: Flask = client.application
    payload = event if isinstance(event, str) else json.dumps(event)
    if secret is None:
        configured = get_state(app).settings.webhook_secrets
        if not configured:
            raise ValueError(
                "secret: the app has no PARTNERSTACK_STRIPE_WEBHOOK_SECRETS to sign with;"
                " pass secret= (an endpoint's, say)."
            )
        secret = configured[0]
    if url is None:
        with app.test_request_context():
            url = url_for("partnerstack_stripe.webhook")
    headers = {"Stripe-Signature": sign(payload, secret, timestamp=timestamp)}
    return client.post(url, data=payload, headers=headers, content_type="application/json")


@dataclass
class SentSignal:
    """One signal send seen by :func:`record_signals`."""

    signal: NamedSignal
    sender: Any
    kwargs: dict[str, Any]

    @property
    def name(self) -> str:
        return self.signal.name


@contextmanager
def record_signals(*watched: NamedSignal) -> Iterator[list[SentSignal]]:
    """Collect every send of ``watched`` (default: all of the extension's signals)."""
    if not watched:
        from . import signals

        watched = tuple(v for v in vars(signals).values() if isinstance(v, NamedSignal))
    sent: list[SentSignal] = []
    receivers = []
    for signal in watched:

        def receiver(sender: Any, _signal: NamedSignal = signal, **kwargs: Any) -> None:
            sent.append(SentSignal(_signal, sender, kwargs))

        receivers.append(receiver)  # blinker holds receivers weakly
        signal.connect(receiver, weak=False)
    try:
        yield sent
    finally:
        for signal, receiver in zip(watched, receivers, strict=True):
            signal.disconnect(receiver)
