"""PartnerStack's tracking rules: which Stripe event does what to customers and transactions.

Plain functions of an :class:`EventContext` (the event and an open session); no
Flask. Each rule decides from the Stripe object itself, not only from the event
type, so events can arrive in any order and any number of times.
"""

from __future__ import annotations

from typing import Any

from . import ledger, signals
from .accounts import uninstall
from .invoices import invoice_of_charge
from .ledger import Party, Payment
from .receiver import BuiltinHandler, EventContext
from .values import (
    METADATA_LENGTH,
    NAME_LENGTH,
    amount,
    currency,
    normal_email,
    text,
)


def metadata(obj: dict[str, Any]) -> dict[str, Any]:
    value = obj.get("metadata")
    return value if isinstance(value, dict) else {}


def _metadata_value(obj: dict[str, Any], name: str) -> str | None:
    return text(metadata(obj).get(name), METADATA_LENGTH, field=f"metadata.{name}")


def customer_key_of(obj: dict[str, Any]) -> str | None:
    return _metadata_value(obj, "customer_key") or _metadata_value(obj, "customer_id")


def partner_key_of(obj: dict[str, Any]) -> str | None:
    return _metadata_value(obj, "partner_key")


def name_of(obj: dict[str, Any]) -> str | None:
    return text(obj.get("name"), NAME_LENGTH, field="name")


def email_of(obj: dict[str, Any]) -> str | None:
    """The first email the object gives: its own, billing, receipt, then invoice's customer."""
    billing = obj.get("billing_details")
    billing_email = billing.get("email") if isinstance(billing, dict) else None
    return (
        normal_email(obj.get("email"))
        or normal_email(billing_email, field="billing_details.email")
        or normal_email(obj.get("receipt_email"), field="receipt_email")
        or normal_email(obj.get("customer_email"), field="customer_email")
    )


def party_of(context: EventContext, obj: dict[str, Any], stripe_customer_id: Any) -> Party:
    return Party(
        stripe_account_id=context.stripe_account_id,
        livemode=context.livemode,
        stripe_customer_id=text(stripe_customer_id, field="customer"),
        customer_key=customer_key_of(obj),
        email=email_of(obj),
    )


def transaction_source(context: EventContext) -> str:
    account = context.account
    if account is not None and account.transaction_source:
        return str(account.transaction_source)
    return context.settings.transaction_source


# --- customers -------------------------------------------------------------------------


def customer_upserted(context: EventContext) -> None:
    """``customer.created`` / ``customer.updated``: create, match and sync the customer."""
    obj = context.object
    party = party_of(context, obj, obj.get("id"))
    if party.stripe_customer_id is None:
        return context.ignore("The customer object has no id.")
    ledger.lock(context.session, *ledger.party_lock_names(party))
    models, session = context.models, context.session
    match_email = context.settings.match_email
    partner_key = partner_key_of(obj)
    customer = ledger.find_customer(session, models, party, match_email=match_email)

    if customer is None:
        if not (party.customer_key and partner_key):
            return context.ignore(
                "The customer matches no known customer and its metadata has no "
                "customer_key and partner_key to create one."
            )
        customer, created = ledger.create_customer(
            session,
            models,
            party,
            partner_key=partner_key,
            name=name_of(obj),
            event_created=context.event["created"],
        )
        if created:
            context.notify(signals.customer_created, customer=customer)
            _attach_orphans(context, customer)
            return None

    if _sync_customer(context, customer, party, obj, partner_key):
        context.notify(signals.customer_updated, customer=customer)
        _attach_orphans(context, customer)
    return None


def _sync_customer(
    context: EventContext, customer: Any, party: Party, obj: dict[str, Any], partner_key: Any
) -> bool:
    """Copy Stripe's view onto ``customer``; True if anything changed.

    An event older than the last one applied only fills in what is still empty.
    An existing partner attribution is never replaced: the first partner wins.
    """
    newer = (customer.stripe_event_created or 0) <= context.event["created"]
    wanted = {
        "stripe_customer_id": party.stripe_customer_id,
        "email": party.email,
        "name": name_of(obj),
        "partner_key": partner_key if customer.partner_key is None else None,
    }
    changed = False
    for field, value in wanted.items():
        current = getattr(customer, field)
        if value is None or value == current or (current is not None and not newer):
            continue
        if field == "stripe_customer_id":
            ledger.unlink_stripe_id(context.session, context.models, party, keep=customer)
        setattr(customer, field, value)
        changed = True
    if newer:
        customer.stripe_event_created = context.event["created"]
    context.session.flush()
    return changed


def _attach_orphans(context: EventContext, customer: Any) -> None:
    for transaction in ledger.attach_orphans(
        context.session, context.models, customer, match_email=context.settings.match_email
    ):
        context.notify(signals.transaction_updated, transaction=transaction)


def customer_deleted(context: EventContext) -> None:
    """``customer.deleted``: unlink the Stripe id; the customer and its transactions stay."""
    party = party_of(context, context.object, context.object.get("id"))
    customer = ledger.find_customer_by_stripe_id(context.session, context.models, party)
    if customer is None:
        return context.ignore("The deleted Stripe customer is not linked to a known customer.")
    customer.stripe_customer_id = None
    context.session.flush()
    context.notify(signals.customer_updated, customer=customer)
    return None


# --- payments --------------------------------------------------------------------------


def _refund_state(obj: dict[str, Any], paid: int) -> tuple[bool, int]:
    """``(fully_refunded, amount_refunded)`` read from the object itself.

    A refund of the whole amount or more is a full refund, whatever ``refunded``
    says, so a prorated amount never goes below zero.
    """
    refunded = amount(obj.get("amount_refunded"), field="amount_refunded") or 0
    return obj.get("refunded") is True or (refunded >= paid and refunded > 0), refunded


def _payment(context: EventContext, key: str, party: Party, amount: int, obj: Any) -> Payment:
    return Payment(
        key=key,
        party=party,
        amount=amount,
        currency=currency(obj.get("currency")),
        product_key=_metadata_value(obj, "product_key"),
    )


def charge_changed(context: EventContext) -> None:
    """``charge.succeeded`` / ``.captured`` / ``.updated`` / ``.refunded`` / ``.failed``.

    One rule for all five: the charge object says whether it stands (succeeded,
    captured, not refunded) or is gone (failed, refunded), whatever the event type.
    """
    obj = context.object
    key, paid = text(obj.get("id"), field="id"), amount(obj.get("amount"))
    if key is None or paid is None:
        return context.ignore("The charge has no id or no valid amount.")
    party = party_of(context, obj, obj.get("customer"))
    fully_refunded, amount_refunded = _refund_state(obj, paid)
    failed = obj.get("status") == "failed" or context.event["type"] == "charge.failed"
    prorate = context.settings.refund_policy == "prorate"
    gone = failed or fully_refunded or (amount_refunded > 0 and not prorate)

    if transaction_source(context) == "invoice":
        if not gone:
            return context.ignore("Invoice mode: charges are recorded through their invoice.")
        invoice_id = invoice_of_charge(context, obj)
        if invoice_id is None:
            return context.ignore(
                f"Unmatched refund: the charge {key} could not be linked to an invoice "
                "(set PARTNERSTACK_STRIPE_API_KEY to look it up, then replay this event).",
                keep=True,
            )
        return _delete(context, _payment(context, invoice_id, party, paid, obj))

    standing = max(paid - amount_refunded, 0) if prorate else paid  # never below zero
    payment = _payment(context, key, party, standing, obj)
    if gone:
        return _delete(context, payment)
    if not _is_settled(obj):
        return context.ignore("The charge has not succeeded and been captured yet.")
    return _record(context, payment, obj)


def _is_settled(charge: dict[str, Any]) -> bool:
    # Charges from before 2015 carry no status; "paid" said the same then.
    status = charge.get("status", "succeeded" if charge.get("paid") else None)
    return status == "succeeded" and charge.get("captured", True) is True


def invoice_paid(context: EventContext) -> None:
    """``invoice.payment_succeeded``: record the invoice (invoice mode only)."""
    obj = context.object
    if transaction_source(context) != "invoice":
        return context.ignore("Charge mode: payments are recorded from their charges.")
    key, subtotal = text(obj.get("id"), field="id"), amount(obj.get("subtotal"), field="subtotal")
    if key is None or subtotal is None:
        return context.ignore("The invoice has no id or no valid subtotal.")
    return _record(
        context,
        _payment(context, key, party_of(context, obj, obj.get("customer")), subtotal, obj),
        obj,
    )


def _record(context: EventContext, payment: Payment, obj: dict[str, Any]) -> None:
    session, models = context.session, context.models
    party = payment.party
    found = _find_payer(context, party)
    customer_id = found.id if found is not None else None
    partner_key = partner_key_of(obj)
    if found is None and party.customer_key and partner_key:
        # The e-commerce case: no signup tracking, the charge names customer and partner.
        customer, created = ledger.create_customer(
            session, models, party, partner_key=partner_key, name=name_of(obj)
        )
        customer_id = customer.id
        if created:
            context.notify(signals.customer_created, customer=customer)
            _attach_orphans(context, customer)
    elif found is not None and party.stripe_customer_id and not found.stripe_customer_id:
        # Found by key or email: the charge tells us its Stripe id too.
        customer = session.get(models.Customer, found.id)
        ledger.unlink_stripe_id(session, models, party, keep=customer)
        customer.stripe_customer_id = party.stripe_customer_id
        session.flush()
        context.notify(signals.customer_updated, customer=customer)
        _attach_orphans(context, customer)

    recorded = ledger.record_payment(session, models, payment, customer_id)
    if recorded is not None:
        context.notify(signals.transaction_recorded, transaction=recorded)
        return
    updated = ledger.refresh_payment(session, models, payment, customer_id)
    if updated is not None:
        context.notify(signals.transaction_updated, transaction=updated)


def _delete(context: EventContext, payment: Payment) -> None:
    session, models = context.session, context.models
    found = _find_payer(context, payment.party)
    customer_id = found.id if found is not None else None
    deleted = ledger.delete_payment(session, models, payment, customer_id)
    if deleted is not None:
        context.notify(signals.transaction_deleted, transaction=deleted)


def _find_payer(context: EventContext, party: Party) -> Any:
    """The id and Stripe id of the customer a payment names, if known.

    When none is known yet, the payment is about to be kept without a customer. The
    customer may be being created at this very moment: take the locks a customer
    event takes and look again, so that one of the two sees the other.
    """
    session, models = context.session, context.models
    match_email = context.settings.match_email
    found = ledger.find_customer(session, models, party, match_email=match_email, load=False)
    if found is None and ledger.lock(session, *ledger.party_lock_names(party)):
        found = ledger.find_customer(session, models, party, match_email=match_email, load=False)
    return found


# --- accounts --------------------------------------------------------------------------


def account_deauthorized(context: EventContext) -> None:
    """``account.application.deauthorized``: the event's account, in the event's mode, is gone."""
    if context.stripe_account_id is None:
        return context.ignore("The deauthorization names no connected account.")
    account = uninstall(
        context.session, context.models, context.stripe_account_id, context.livemode
    )
    if account is not None:
        context.notify(signals.account_uninstalled, account=account)
    return None


BUILTIN_HANDLERS: dict[str, BuiltinHandler] = {
    "customer.created": customer_upserted,
    "customer.updated": customer_upserted,
    "customer.deleted": customer_deleted,
    "charge.succeeded": charge_changed,
    "charge.captured": charge_changed,
    "charge.updated": charge_changed,
    "charge.refunded": charge_changed,
    "charge.failed": charge_changed,
    "invoice.payment_succeeded": invoice_paid,
    "account.application.deauthorized": account_deauthorized,
}


def check_values(event: dict[str, Any]) -> None:
    """Raise :class:`InvalidValue` if the tracking rules would store a value the event
    cannot have come from Stripe with: a string longer than what Stripe sends (and the
    column holds), an amount outside 0..2**63-1, a currency that is no ISO code.

    Called on every verified event before it is stored, with the very readers the
    rules use, so a value that passes here is stored whole, never cut.
    """
    if event["type"] not in BUILTIN_HANDLERS:
        return
    kind = event["type"].split(".", 1)[0]
    if kind not in ("customer", "charge", "invoice"):
        return
    obj = event["data"]["object"]
    text(obj.get("id"), field="data.object.id")
    text(obj.get("customer"), field="customer")
    email_of(obj)
    customer_key_of(obj)
    partner_key_of(obj)
    name_of(obj)
    if kind == "customer":
        return
    currency(obj.get("currency"))
    _metadata_value(obj, "product_key")
    if kind == "invoice":
        amount(obj.get("subtotal"), field="subtotal")
        return
    _refund_state(obj, amount(obj.get("amount")) or 0)
    for field in ("invoice", "payment_intent"):
        value = obj.get(field)
        text(value.get("id") if isinstance(value, dict) else value, field=field)
