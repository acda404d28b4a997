"""What the tracking rules read from Stripe objects: keys, amounts, refunds, metadata.

Plain functions of the object (no session, no Flask). The same readers run on every
verified event before it is stored (``rules.check_values`` calls the ``check_*``
functions at the end), so a value the rules read is stored whole or the event is
refused, never cut.
"""

from __future__ import annotations

import json
from typing import Any

from .config import INVOICE_AMOUNTS
from .invoices import named_invoice, payment_intent_of
from .payments import Facts, RefundFact
from .values import (
    MAX_AMOUNT,
    NAME_LENGTH,
    STATUS_LENGTH,
    amount,
    currency,
    mapping,
    metadata,
    metadata_value,
    normal_email,
    object_id,
    signed_amount,
    text,
)


def as_dict(stripe_object: Any) -> dict[str, Any]:
    """A ``stripe`` API object as the plain JSON dict Stripe sent (a webhook's ``data.object``).

    Through its JSON form: ``to_dict()`` warns that it is deprecated in the stripe
    versions this package still supports (12 and 13).
    """
    plain: dict[str, Any] = json.loads(str(stripe_object))
    return plain


#: The metadata keys the rules read (customer_id: an older name for customer_key).
METADATA_KEYS = ("customer_key", "customer_id", "partner_key", "product_key")


def customer_key_of(obj: dict[str, Any]) -> str | None:
    meta = metadata(obj)
    return metadata_value(meta, "customer_key") or metadata_value(meta, "customer_id")


def partner_key_of(obj: dict[str, Any]) -> str | None:
    return metadata_value(metadata(obj), "partner_key")


def product_key_of(obj: dict[str, Any]) -> str | None:
    return metadata_value(metadata(obj), "product_key")


def id_of(obj: dict[str, Any]) -> str | None:
    """The object's own id (a customer's, a charge's, an invoice's)."""
    return text(obj.get("id"), field="data.object.id")


def name_of(obj: dict[str, Any]) -> str | None:
    return text(obj.get("name"), NAME_LENGTH, field="name")


def email_of(obj: dict[str, Any]) -> str | None:
    """The first email the object gives: its own, billing, receipt, then invoice's customer."""
    billing_email = mapping(obj.get("billing_details")).get("email")
    return (
        normal_email(obj.get("email"))
        or normal_email(billing_email, field="billing_details.email")
        or normal_email(obj.get("receipt_email"), field="receipt_email")
        or normal_email(obj.get("customer_email"), field="customer_email")
    )


def refunds_listed(obj: dict[str, Any]) -> tuple[RefundFact, ...]:
    """The refunds a charge lists itself (API versions before 2022-11-15 include them)."""
    data = mapping(obj.get("refunds")).get("data")
    if not isinstance(data, list):
        return ()
    facts = (refund_fact(refund) for refund in data if isinstance(refund, dict))
    return tuple(fact for fact in facts if fact is not None)


def refund_fact(refund: dict[str, Any], status: str | None = None) -> RefundFact | None:
    """A refund object's id, amount and status; None if it has no id or no amount."""
    refund_id = text(refund.get("id"), field="refund id")
    refunded = amount(refund.get("amount"), field="refund amount")
    status = status or text(refund.get("status"), STATUS_LENGTH, field="refund status")
    if refund_id is None or refunded is None:
        return None
    return RefundFact(refund_id, refunded, status or "succeeded")


def charge_facts(
    obj: dict[str, Any], paid: int, event_type: str, seen_at: int | None = None
) -> Facts:
    """What a charge object says: settled amount (``amount_captured``), refunds, failure.

    ``seen_at``: the event's ``created``, the time the charge object shows.

    A partial capture releases the rest of the authorization, which Stripe counts in
    ``amount_refunded``: that remainder (``amount - amount_captured``) is not a refund.
    Nothing is captured beyond the charge's ``amount``.
    """
    captured = amount(obj.get("amount_captured"), field="amount_captured")
    settled = _is_settled(obj)
    if settled and captured == 0:
        # A captured charge that says it captured nothing: a payload from before the
        # field (2020-ish fixtures carry 0), not a capture of nothing. Nothing was released.
        captured = None
    gross = (min(captured, paid) if captured is not None else paid) if settled else None
    released = paid - captured if captured is not None and captured <= paid else 0
    if not settled and obj.get("captured") is False:
        released = paid  # an authorization canceled before capture: nothing was paid
    charge_refunded = amount(obj.get("amount_refunded"), field="amount_refunded") or 0
    refunded = max(charge_refunded - released, 0)
    if obj.get("refunded") is True and gross is not None:
        refunded = max(refunded, gross)
    return Facts(
        gross=gross,
        nominal=paid,
        refunded=refunded,
        charge_at=seen_at,
        seen_at=seen_at,
        failed=obj.get("status") == "failed" or event_type == "charge.failed",
        refunds=refunds_listed(obj),
    )


def _is_settled(charge: dict[str, Any]) -> bool:
    # Charges from before 2015 carry no status; "paid" said the same then.
    status = charge.get("status", "succeeded" if charge.get("paid") else None)
    return status == "succeeded" and charge.get("captured", True) is True


def invoice_metadata(invoice: dict[str, Any]) -> dict[str, str]:
    """The metadata the rules read from an invoice, each key filled from its subscription's.

    Stripe copies the subscription's metadata onto its invoices: under
    ``parent.subscription_details.metadata`` from 2025-03-31.basil on, under
    ``subscription_details.metadata`` before. The invoice's own value wins.
    """
    parent = mapping(invoice.get("parent"))
    sources = (
        metadata(invoice),
        metadata(mapping(parent.get("subscription_details"))),
        metadata(mapping(invoice.get("subscription_details"))),
    )
    merged: dict[str, str] = {}
    for source in sources:
        own = {name: metadata_value(source, name) for name in METADATA_KEYS}
        # customer_id is customer_key's alias: the invoice's own key, under either name,
        # wins over the subscription's.
        alias = own.pop("customer_id")
        own["customer_key"] = own["customer_key"] or alias
        for name, value in own.items():
            if value is not None:
                merged.setdefault(name, value)
    return merged


def invoice_amount(invoice: dict[str, Any], field: str) -> int | None:
    """The invoice's amount ``field`` (one of ``INVOICE_AMOUNTS``, or ``total``).

    What was paid is never below 0; the totals are when the invoice's credits (a
    downgrade's proration, say) exceed its charges: Stripe credits the difference to
    the customer's balance and sends the invoice as paid all the same.
    """
    if field == "amount_paid":
        return amount(invoice.get(field), field=field)
    if field == "total_excluding_tax" and invoice.get(field) is None:
        return _total_less_tax(invoice)
    return signed_amount(invoice.get(field), field=field)


def _total_less_tax(invoice: dict[str, Any]) -> int | None:
    """``total_excluding_tax`` where the invoice's API version has none (before 2022-08-01
    an invoice says ``tax``; the field's definition: the total less every tax amount).

    None when the invoice has no total, or its tax is not whole amounts: the invoice is
    then ignored as having no such amount, as before, and never refused for a field the
    app may not even read (``check_invoice`` reads every ``INVOICE_AMOUNTS``). A negative
    tax (a credit's) lowers the tax.
    """
    total = signed_amount(invoice.get("total"), field="total")
    taxes = _taxes(invoice)
    if total is None or not all(isinstance(t, int) and not isinstance(t, bool) for t in taxes):
        return None
    less = total - sum(taxes)
    return less if abs(less) <= MAX_AMOUNT else None


def _taxes(invoice: dict[str, Any]) -> list[Any]:
    """The tax amounts an invoice states, as sent: its ``tax`` (one sum), else each of its
    ``total_tax_amounts`` (or basil's ``total_taxes``); none when it states none."""
    if invoice.get("tax") is not None:
        return [invoice["tax"]]
    for name in ("total_tax_amounts", "total_taxes"):
        amounts = invoice.get(name)
        if isinstance(amounts, list) and amounts:
            return [item.get("amount") if isinstance(item, dict) else None for item in amounts]
    return []


# --- values ----------------------------------------------------------------------------
# What each rule reads, read the same way before the event is stored (see
# ``rules.check_values``): a value that passes here is stored whole, never cut.


def check_customer(obj: dict[str, Any], event_type: str) -> None:
    """The values a customer rule reads: id, email, metadata keys, name."""
    id_of(obj)
    customer_key_of(obj)
    partner_key_of(obj)
    email_of(obj)
    name_of(obj)


def _check_payment(obj: dict[str, Any]) -> None:
    """What a charge or invoice gives its payment and, in the e-commerce case, its customer."""
    check_customer(obj, "")
    object_id(obj.get("customer"), field="customer")
    currency(obj.get("currency"))
    product_key_of(obj)


def check_charge(obj: dict[str, Any], event_type: str) -> None:
    """A charge: amounts (``amount``, ``amount_captured``, ``amount_refunded``), the refunds
    it lists, its invoice and payment intent."""
    _check_payment(obj)
    charge_facts(obj, amount(obj.get("amount")) or 0, event_type)
    named_invoice(obj)
    payment_intent_of(obj)


def check_invoice(obj: dict[str, Any], event_type: str) -> None:
    """An invoice: every amount ``INVOICE_AMOUNT`` may name and ``total``; its metadata
    merged with its subscription's."""
    for field in (*INVOICE_AMOUNTS, "total"):
        invoice_amount(obj, field)
    _check_payment({**obj, "metadata": invoice_metadata(obj)})
