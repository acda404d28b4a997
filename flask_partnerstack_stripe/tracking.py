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
from .ledger import Party, Payment, normal_email, text
from .receiver import BuiltinHandler, EventContext


def metadata(obj: dict[str, Any]) -> dict[str, Any]:
    value = obj.get("metadata")
    return value if isinstance(value, dict) else {}


def customer_key_of(obj: dict[str, Any]) -> str | None:
    meta = metadata(obj)
    return text(meta.get("customer_key")) or text(meta.get("customer_id"))


def party_of(context: EventContext, obj: dict[str, Any], stripe_customer_id: Any) -> Party:
    billing = obj.get("billing_details")
    billing_email = billing.get("email") if isinstance(billing, dict) else None
    email = (
        normal_email(obj.get("email"))
        or normal_email(billing_email)
        or normal_email(obj.get("receipt_email"))
        or normal_email(obj.get("customer_email"))
    )
    return Party(
        stripe_account_id=context.stripe_account_id,
        livemode=context.livemode,
        stripe_customer_id=text(stripe_customer_id),
        customer_key=customer_key_of(obj),
        email=email,
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
    partner_key = text(metadata(obj).get("partner_key"))
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
            name=text(obj.get("name")),
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
        "name": text(obj.get("name")),
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


def _refund_state(obj: dict[str, Any], amount: int) -> tuple[bool, int]:
    """``(fully_refunded, amount_refunded)`` read from the object itself."""
    refunded = obj.get("amount_refunded")
    refunded = refunded if isinstance(refunded, int) and not isinstance(refunded, bool) else 0
    return obj.get("refunded") is True or refunded >= amount > 0, max(refunded, 0)


def _amount(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62:
        return value
    return None


def _payment(context: EventContext, key: str, party: Party, amount: int, obj: Any) -> Payment:
    return Payment(
        key=key,
        party=party,
        amount=amount,
        currency=(text(obj.get("currency"), 3) or "").lower(),
        product_key=text(metadata(obj).get("product_key")),
    )


def charge_changed(context: EventContext) -> None:
    """``charge.succeeded`` / ``.captured`` / ``.updated`` / ``.refunded`` / ``.failed``.

    One rule for all five: the charge object says whether it stands (succeeded,
    captured, not refunded) or is gone (failed, refunded), whatever the event type.
    """
    obj = context.object
    key, amount = text(obj.get("id")), _amount(obj.get("amount"))
    if key is None or amount is None:
        return context.ignore("The charge has no id or no valid amount.")
    party = party_of(context, obj, obj.get("customer"))
    fully_refunded, amount_refunded = _refund_state(obj, amount)
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
        return _delete(context, _payment(context, invoice_id, party, amount, obj))

    payment = _payment(context, key, party, amount - (amount_refunded if prorate else 0), obj)
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
    key, amount = text(obj.get("id")), _amount(obj.get("subtotal"))
    if key is None or amount is None:
        return context.ignore("The invoice has no id or no valid subtotal.")
    return _record(
        context,
        _payment(context, key, party_of(context, obj, obj.get("customer")), amount, obj),
        obj,
    )


def _record(context: EventContext, payment: Payment, obj: dict[str, Any]) -> None:
    session, models = context.session, context.models
    party = payment.party
    found = _find_payer(context, party)
    customer_id = found.id if found is not None else None
    partner_key = text(metadata(obj).get("partner_key"))
    if found is None and party.customer_key and partner_key:
        # The e-commerce case: no signup tracking, the charge names customer and partner.
        customer, created = ledger.create_customer(
            session, models, party, partner_key=partner_key, name=text(obj.get("name"))
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
