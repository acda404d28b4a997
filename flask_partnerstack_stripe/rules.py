"""Which built-in rule handles which Stripe event type, and the API look-ups done first."""

from __future__ import annotations

from .checkout import checkout_completed
from .invoices import look_up_invoice
from .receiver import BuiltinHandler, Lookup
from .refunds import dispute_changed, refund_changed
from .tracking import (
    account_deauthorized,
    charge_changed,
    customer_deleted,
    customer_upserted,
    invoice_failed,
    invoice_paid,
)

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

#: Stripe API look-ups a rule may need, made before the event's database transaction
#: begins (never while it holds locks); their answers reach the rule in ``context.lookups``.
LOOKUPS: dict[str, Lookup] = {
    event_type: look_up_invoice
    for event_type in (
        "charge.refunded",
        "refund.created",
        "refund.updated",
        "refund.failed",
        "charge.refund.updated",
        "charge.dispute.created",
        "charge.dispute.updated",
        "charge.dispute.closed",
    )
}
