"""PartnerStack's tracking rules: which Stripe event does what to customers and transactions.

Plain functions of an :class:`EventContext` (the event and an open session); no
Flask. Each rule decides from the Stripe object itself, not only from the event
type, so events can arrive in any order and any number of times.
"""

from __future__ import annotations

from typing import Any

from . import commissions, ledger, payments, signals
from .accounts import uninstall
from .config import INVOICE_AMOUNTS
from .invoices import invoice_of_charge, named_invoice, payment_intent_of
from .ledger import Party
from .payments import Facts, Payment, RefundFact
from .receiver import EventContext
from .values import (
    NAME_LENGTH,
    STATUS_LENGTH,
    amount,
    currency,
    mapping,
    metadata,
    metadata_value,
    normal_email,
    object_id,
    text,
)

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


def party_of(context: EventContext, obj: dict[str, Any], stripe_customer_id: Any) -> Party:
    return Party(
        stripe_account_id=context.stripe_account_id,
        livemode=context.livemode,
        stripe_customer_id=object_id(stripe_customer_id, field="customer"),
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
    # Its payments' commissions: the orphans just attached, or all if it just got a partner.
    commissions.follow_customer_in(context, customer)


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


def charge_facts(obj: dict[str, Any], paid: int, event_type: str) -> Facts:
    """What a charge object says: settled amount (``amount_captured``), refunds, failure.

    A partial capture releases the rest of the authorization, which Stripe counts in
    ``amount_refunded``: that remainder (``amount - amount_captured``) is not a refund.
    Nothing is captured beyond the charge's ``amount``.
    """
    captured = amount(obj.get("amount_captured"), field="amount_captured")
    settled = _is_settled(obj)
    gross = (min(captured, paid) if captured else paid) if settled else None
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
        failed=obj.get("status") == "failed" or event_type == "charge.failed",
        refunds=refunds_listed(obj),
    )


def _payment(key: str, party: Party, obj: dict[str, Any]) -> Payment:
    return Payment(
        key=key,
        party=party,
        currency=currency(obj.get("currency")),
        product_key=product_key_of(obj),
    )


def charge_changed(context: EventContext) -> None:
    """``charge.succeeded`` / ``.captured`` / ``.updated`` / ``.refunded`` / ``.failed``.

    One rule for all five: the charge object says whether it settled, how much was
    captured and refunded, and whether it failed, whatever the event type.
    """
    obj = context.object
    key, paid = id_of(obj), amount(obj.get("amount"))
    if key is None or paid is None:
        return context.ignore("The charge has no id or no valid amount.")
    party = party_of(context, obj, obj.get("customer"))
    facts = charge_facts(obj, paid, context.event["type"])

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
        refund_only = Facts(nominal=paid, refunded=facts.refunded, refunds=facts.refunds)
        payment = Payment(key=invoice_id, party=party, currency=currency(obj.get("currency")))
        return settle(context, payment, refund_only)

    if facts.gross == 0:
        return context.ignore(ZERO_AMOUNT)
    if facts.gross is None and not (facts.failed or facts.refunded or facts.refunds):
        return context.ignore("The charge has not succeeded and been captured yet.")
    return settle(context, _payment(key, party, obj), facts, creates=obj)


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
        for name in METADATA_KEYS:
            value = metadata_value(source, name)
            if value is not None:
                merged.setdefault(name, value)
    return merged


def invoice_amount(invoice: dict[str, Any], field: str) -> int | None:
    """The invoice's amount ``field`` (one of ``INVOICE_AMOUNTS``, or ``total``)."""
    return amount(invoice.get(field), field=field)


def invoice_paid(context: EventContext) -> None:
    """``invoice.payment_succeeded`` / ``invoice.paid``: record the invoice (invoice mode only)."""
    obj = context.object
    if transaction_source(context) != "invoice":
        return context.ignore("Charge mode: payments are recorded from their charges.")
    field = context.settings.invoice_amount
    key, paid = id_of(obj), invoice_amount(obj, field)
    if key is None or paid is None:
        return context.ignore(f"The invoice has no id or no valid {field}.")
    if paid == 0 or invoice_amount(obj, "total") == 0:
        return context.ignore(ZERO_AMOUNT)
    obj = {**obj, "metadata": invoice_metadata(obj)}
    party = party_of(context, obj, obj.get("customer"))
    facts = Facts(gross=paid, nominal=paid)
    return settle(context, _payment(key, party, obj), facts, creates=obj)


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
    partner_key = partner_key_of(creates) if creates is not None else None
    if creates is not None and found is None and party.customer_key and partner_key:
        # The e-commerce case: no signup tracking, the charge names customer and partner.
        customer, created = ledger.create_customer(
            session, models, party, partner_key=partner_key, name=name_of(creates)
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
    if change is not None:
        commissions.follow(context, row)  # the commission follows its payment


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
