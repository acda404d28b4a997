"""Which built-in rule handles which Stripe event type, the API look-ups done first, and
the values each rule reads, checked before the event is stored."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .checkout import check_session, checkout_completed
from .invoices import look_up_invoice, may_look_up_invoice
from .readers import charge_facts, check_charge, check_customer, check_invoice
from .receiver import BuiltinHandler, EventContext, Lookup
from .refunds import check_dispute, check_refund, dispute_changed, refund_changed
from .tracking import (
    account_deauthorized,
    charge_changed,
    customer_deleted,
    customer_lock_names,
    customer_upserted,
    invoice_failed,
    invoice_paid,
)
from .values import amount

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
    "invoice.paid": invoice_paid,
    "invoice.payment_failed": invoice_failed,
    "refund.created": refund_changed,
    "refund.updated": refund_changed,
    "refund.failed": refund_changed,
    "charge.refund.updated": refund_changed,
    "charge.dispute.created": dispute_changed,
    "charge.dispute.updated": dispute_changed,
    "charge.dispute.closed": dispute_changed,
    "checkout.session.completed": checkout_completed,
    "account.application.deauthorized": account_deauthorized,
}


def _shows_refund(event: dict[str, Any]) -> bool:
    """Whether a charge event's charge shows a refund: in invoice mode the rest of a
    charge's news (its success, its failure) changes nothing, so needs no invoice."""
    obj = event["data"]["object"]
    paid = amount(obj.get("amount")) if isinstance(obj, dict) else None
    if paid is None:
        return False
    facts = charge_facts(obj, paid, event["type"])
    return facts.refunded > 0 or bool(facts.refunds)


CHARGE_INVOICE = Lookup(
    call=look_up_invoice,
    wanted=lambda settings, event: may_look_up_invoice(settings, event) and _shows_refund(event),
)
INVOICE = Lookup(call=look_up_invoice, wanted=may_look_up_invoice)


#: Stripe API look-ups a rule may need, made before the event's database transaction
#: begins (never while it holds locks); their answers reach the rule in ``context.lookups``.
LOOKUPS: dict[str, Lookup] = {
    **dict.fromkeys(
        ("charge.succeeded", "charge.captured", "charge.updated", "charge.refunded"),
        CHARGE_INVOICE,
    ),
    **dict.fromkeys(
        (
            "refund.created",
            "refund.updated",
            "refund.failed",
            "charge.refund.updated",
            "charge.dispute.created",
            "charge.dispute.updated",
            "charge.dispute.closed",
        ),
        INVOICE,
    ),
}


#: The locks a rule takes before anything else, which the event's claim can take with its
#: own statement (PostgreSQL): a customer event's, always needed. A payment's rule locks
#: only when its customer is unknown, so it keeps its own lock.
CLAIM_LOCKS: dict[str, Callable[[EventContext], Sequence[str | None]]] = {
    "customer.created": customer_lock_names,
    "customer.updated": customer_lock_names,
}


#: Per event type with a built-in rule, what reads the values that rule reads from the
#: event's object (the data.object and the event type). Every type in
#: ``BUILTIN_HANDLERS`` has an entry; ``account.application.deauthorized`` reads only
#: the envelope's ``account``, which ``verification.check_event_shape`` checks.
ValueCheck = Callable[[dict[str, Any], str], None]
VALUE_CHECKS: dict[str, ValueCheck | None] = {
    "customer.created": check_customer,
    "customer.updated": check_customer,
    "customer.deleted": check_customer,
    "charge.succeeded": check_charge,
    "charge.captured": check_charge,
    "charge.updated": check_charge,
    "charge.refunded": check_charge,
    "charge.failed": check_charge,
    "invoice.payment_succeeded": check_invoice,
    "invoice.paid": check_invoice,
    "invoice.payment_failed": check_invoice,
    "refund.created": check_refund,
    "refund.updated": check_refund,
    "refund.failed": check_refund,
    "charge.refund.updated": check_refund,
    "charge.dispute.created": check_dispute,
    "charge.dispute.updated": check_dispute,
    "charge.dispute.closed": check_dispute,
    "checkout.session.completed": check_session,
    "account.application.deauthorized": None,
}
assert VALUE_CHECKS.keys() == BUILTIN_HANDLERS.keys(), "every built-in rule's values are checked"


def check_values(event: dict[str, Any]) -> None:
    """Raise :class:`~.values.InvalidValue` if a built-in rule would read a value the event
    cannot have come from Stripe with: a string longer than what Stripe sends (and the
    column holds), an amount outside 0..2**63-1, a currency that is no ISO code.

    Called on every verified event before it is stored (``verification.verify_event``),
    with the very readers the rules use, so a value that passes here is stored whole,
    never cut, and no rule raises on it later.
    """
    check = VALUE_CHECKS.get(event["type"])
    if check is not None:
        check(event["data"]["object"], event["type"])
