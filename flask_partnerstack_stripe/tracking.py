"""PartnerStack's tracking rules: which Stripe event does what to customers and transactions.

Plain functions of an :class:`EventContext` (the event and an open session); no
Flask. Each rule decides from the Stripe object itself, not only from the event
type, so events can arrive in any order and any number of times.
"""

from __future__ import annotations

from typing import Any

from . import ledger, payments, signals
from .accounts import uninstall
from .invoices import invoice_of_charge
from .ledger import Party, normal_email, text
from .payments import Facts, Payment, RefundFact
from .receiver import EventContext


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

ZERO_AMOUNT = "zero amount: a payment of 0 (a trial, a 100% coupon) earns nothing"


def amount_of(value: Any) -> int | None:
    """An amount in minor units as Stripe sends it: a non-negative integer, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62:
        return value
    return None


def refunds_listed(obj: dict[str, Any]) -> tuple[RefundFact, ...]:
    """The refunds a charge lists itself (API versions before 2022-11-15 include them)."""
    listing = obj.get("refunds")
    data = listing.get("data") if isinstance(listing, dict) else None
    facts = (refund_fact(refund) for refund in data if isinstance(refund, dict)) if data else ()
    return tuple(fact for fact in facts if fact is not None)


def refund_fact(refund: dict[str, Any], status: str | None = None) -> RefundFact | None:
    refund_id, amount = text(refund.get("id")), amount_of(refund.get("amount"))
    status = status or text(refund.get("status")) or "succeeded"
    if refund_id is None or amount is None:
        return None
    return RefundFact(refund_id, amount, status)


def charge_facts(context: EventContext, obj: dict[str, Any], amount: int) -> Facts:
    """What a charge object says: settled amount (``amount_captured``), refunds, failure.

    A partial capture releases the rest of the authorization, which Stripe counts in
    ``amount_refunded``: that remainder (``amount - amount_captured``) is not a refund.
    """
    captured = amount_of(obj.get("amount_captured"))
    settled = _is_settled(obj)
    gross = (captured if captured is not None and captured > 0 else amount) if settled else None
    released = amount - captured if captured is not None and captured <= amount else 0
    if not settled and obj.get("captured") is False:
        released = amount  # an authorization canceled before capture: nothing was paid
    refunded = max((amount_of(obj.get("amount_refunded")) or 0) - released, 0)
    if obj.get("refunded") is True and gross is not None:
        refunded = max(refunded, gross)
    return Facts(
        gross=gross,
        nominal=amount,
        refunded=refunded,
        failed=obj.get("status") == "failed" or context.event["type"] == "charge.failed",
        refunds=refunds_listed(obj),
    )


def _payment(context: EventContext, key: str, party: Party, obj: Any, meta: Any = None) -> Payment:
    return Payment(
        key=key,
        party=party,
        currency=(text(obj.get("currency"), 3) or "").lower(),
        product_key=text((meta if meta is not None else metadata(obj)).get("product_key")),
    )


def charge_changed(context: EventContext) -> None:
    """``charge.succeeded`` / ``.captured`` / ``.updated`` / ``.refunded`` / ``.failed``.

    One rule for all five: the charge object says whether it settled, how much was
    captured and refunded, and whether it failed, whatever the event type.
    """
    obj = context.object
    key, amount = text(obj.get("id")), amount_of(obj.get("amount"))
    if key is None or amount is None:
        return context.ignore("The charge has no id or no valid amount.")
    party = party_of(context, obj, obj.get("customer"))
    facts = charge_facts(context, obj, amount)

    if transaction_source(context) == "invoice":
        # Invoice mode: the invoice records; its charges only bring refunds. A failed
        # attempt deletes nothing, since a retry may still pay the invoice.
        if facts.refunded == 0 and not facts.refunds:
            if facts.failed:
                return context.ignore(
                    "Invoice mode: a failed payment attempt deletes nothing (a retry may "
                    "still pay the invoice)."
                )
            return context.ignore("Invoice mode: charges are recorded through their invoice.")
        invoice_id = invoice_of_charge(context, obj)
        if invoice_id is None:
            return _unmatched(context, key)
        refund_only = Facts(nominal=amount, refunded=facts.refunded, refunds=facts.refunds)
        return settle(context, _payment(context, invoice_id, party, obj, {}), refund_only)

    if facts.gross == 0:
        return context.ignore(ZERO_AMOUNT)
    if facts.gross is None and not (facts.failed or facts.refunded or facts.refunds):
        return context.ignore("The charge has not succeeded and been captured yet.")
    return settle(context, _payment(context, key, party, obj), facts, creates=obj)


def _unmatched(context: EventContext, charge_id: str) -> None:
    return context.ignore(
        f"Unmatched refund: the charge {charge_id} could not be linked to an invoice "
        "(set PARTNERSTACK_STRIPE_API_KEY to look it up, then replay this event).",
        keep=True,
    )


def _is_settled(charge: dict[str, Any]) -> bool:
    # Charges from before 2015 carry no status; "paid" said the same then.
    status = charge.get("status", "succeeded" if charge.get("paid") else None)
    return status == "succeeded" and charge.get("captured", True) is True


def invoice_metadata(invoice: dict[str, Any]) -> dict[str, Any]:
    """The invoice's metadata, each key filled from its subscription's when missing.

    Stripe copies the subscription's metadata onto its invoices: under
    ``parent.subscription_details.metadata`` from 2025-03-31.basil on, under
    ``subscription_details.metadata`` before.
    """
    parent = invoice.get("parent")
    sources = [
        metadata(invoice),
        metadata(_dict(_dict(parent).get("subscription_details"))),
        metadata(_dict(invoice.get("subscription_details"))),
    ]
    merged: dict[str, Any] = {}
    for source in reversed(sources):
        merged.update({name: value for name, value in source.items() if text(value)})
    return merged


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def invoice_paid(context: EventContext) -> None:
    """``invoice.payment_succeeded`` / ``invoice.paid``: record the invoice (invoice mode only)."""
    obj = context.object
    if transaction_source(context) != "invoice":
        return context.ignore("Charge mode: payments are recorded from their charges.")
    field = context.settings.invoice_amount
    key, amount = text(obj.get("id")), amount_of(obj.get(field))
    if key is None or amount is None:
        return context.ignore(f"The invoice has no id or no valid {field}.")
    if amount == 0 or amount_of(obj.get("total")) == 0:
        return context.ignore(ZERO_AMOUNT)
    obj = {**obj, "metadata": invoice_metadata(obj)}
    party = party_of(context, obj, obj.get("customer"))
    facts = Facts(gross=amount, nominal=amount)
    return settle(context, _payment(context, key, party, obj), facts, creates=obj)


def invoice_failed(context: EventContext) -> None:
    """``invoice.payment_failed``: an attempt failed; Stripe retries, so nothing is deleted."""
    return context.ignore(
        "A failed payment attempt deletes nothing: a retry may still pay the invoice."
    )


def settle(
    context: EventContext, payment: Payment, facts: Facts, creates: dict[str, Any] | None = None
) -> None:
    """Add ``facts`` to the payment's transaction and send the signal the change calls for.

    ``creates``: the charge or invoice object whose metadata may create the customer
    (the e-commerce case); refund and dispute objects name no customer.
    """
    session, models = context.session, context.models
    party = payment.party
    found = _find_payer(context, party)
    customer_id = found.id if found is not None else None
    partner_key = text(metadata(creates).get("partner_key")) if creates is not None else None
    if creates is not None and found is None and party.customer_key and partner_key:
        # The e-commerce case: no signup tracking, the charge names customer and partner.
        customer, created = ledger.create_customer(
            session, models, party, partner_key=partner_key, name=text(creates.get("name"))
        )
        customer_id = customer.id
        if created:
            context.notify(signals.customer_created, customer=customer)
            _attach_orphans(context, customer)
    elif found is not None and party.stripe_customer_id and not found.stripe_customer_id:
        # Found by key or email: the payment tells us its Stripe id too.
        customer = session.get(models.Customer, found.id)
        ledger.unlink_stripe_id(session, models, party, keep=customer)
        customer.stripe_customer_id = party.stripe_customer_id
        session.flush()
        context.notify(signals.customer_updated, customer=customer)
        _attach_orphans(context, customer)

    prorate = context.settings.refund_policy == "prorate"
    change, row = payments.settle_payment(
        session, models, payment, customer_id, facts, prorate=prorate
    )
    if change == payments.RECORDED:
        context.notify(signals.transaction_recorded, transaction=row)
    elif change == payments.UPDATED:
        context.notify(signals.transaction_updated, transaction=row)
    elif change == payments.DELETED:
        context.notify(signals.transaction_deleted, transaction=row)


def _find_payer(context: EventContext, party: Party) -> Any:
    """The id and Stripe id of the customer a payment names, if known.

    When none is known yet, the payment is about to be kept without a customer. The
    customer may be being created at this very moment: take the locks a customer
    event takes and look again, so that one of the two sees the other.
    """
    if not (party.stripe_customer_id or party.customer_key or party.email):
        return None  # a refund or dispute names nobody: its transaction knows the customer
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
