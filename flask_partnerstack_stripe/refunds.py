"""Refund objects and disputes: what they take from a payment, and what they give back.

``refund.created`` / ``refund.updated`` / ``refund.failed`` and ``charge.refund.updated``
carry one Refund; each is kept by its id (``payments.settle_payment``), so an endpoint that
also sends ``charge.refunded`` counts it once, and one that fails or is canceled gives
back what it took. ``charge.dispute.*`` carry a Dispute: only one closed as ``lost``
takes the payment away.
"""

from __future__ import annotations

from typing import Any

from .customers import Party
from .invoices import invoice_of_charge, named_invoice, payment_intent_of
from .payments import Facts, Payment
from .readers import refund_fact
from .receiver import EventContext, Ignored
from .tracking import _unmatched, event_created, settle, transaction_source
from .values import STATUS_LENGTH, amount, currency, object_id, text


def _charge_id(obj: dict[str, Any]) -> str | None:
    return object_id(obj.get("charge"), field="charge")


def _status(obj: dict[str, Any]) -> str | None:
    return text(obj.get("status"), STATUS_LENGTH, field="status")


def _payment_key(context: EventContext, obj: dict[str, Any], charge_id: str) -> str | None:
    """The transaction the object's charge belongs to: the charge, or its invoice."""
    if transaction_source(context) == "invoice":
        return invoice_of_charge(context, obj)
    return charge_id


def _payment(context: EventContext, key: str, obj: dict[str, Any]) -> Payment:
    # Refunds and disputes name no customer: the transaction already knows it, or will.
    party = Party(stripe_account_id=context.stripe_account_id, livemode=context.livemode)
    return Payment(key=key, party=party, currency=currency(obj.get("currency")))


def refund_changed(context: EventContext) -> None:
    """``refund.created`` / ``.updated`` / ``.failed``, ``charge.refund.updated``."""
    obj = context.object
    charge_id = _charge_id(obj)
    failed = "failed" if context.event["type"] == "refund.failed" else None
    status = _status(obj)
    fact = refund_fact(obj, failed if status not in ("failed", "canceled") else status)
    if fact is None or charge_id is None:
        raise Ignored("The refund has no id, no valid amount or no charge.")
    key = _payment_key(context, obj, charge_id)
    if key is None:
        _unmatched(context, charge_id)
    facts = Facts(nominal=fact.amount, refunds=(fact,), seen_at=event_created(context))
    return settle(context, _payment(context, key, obj), facts)


def dispute_changed(context: EventContext) -> None:
    """``charge.dispute.created`` / ``.updated`` / ``.closed``: only a lost dispute deletes."""
    obj = context.object
    charge_id, status = _charge_id(obj), _status(obj)
    if charge_id is None:
        raise Ignored("The dispute names no charge.")
    if status != "lost":
        raise Ignored(
            f"The dispute is {status or 'open'}: the transaction stands unless it is lost."
        )
    key = _payment_key(context, obj, charge_id)
    if key is None:
        _unmatched(context, charge_id)
    facts = Facts(nominal=amount(obj.get("amount")) or 0, dispute_lost=True)
    return settle(context, _payment(context, key, obj), facts)


# --- values (see ``rules.check_values``) -------------------------------------------------


def _check_common(obj: dict[str, Any]) -> None:
    _charge_id(obj)
    _status(obj)
    currency(obj.get("currency"))
    named_invoice(obj)
    payment_intent_of(obj)


def check_refund(obj: dict[str, Any], event_type: str) -> None:
    """A refund: its id, amount and status, its charge, invoice and payment intent."""
    _check_common(obj)
    refund_fact(obj)


def check_dispute(obj: dict[str, Any], event_type: str) -> None:
    """A dispute: its amount and status, its charge, invoice and payment intent."""
    _check_common(obj)
    amount(obj.get("amount"))
