"""Blinker signals the extension sends.

The sender is always the Flask app; everything else is a keyword argument, so
receivers are written ``def receiver(app, **extra)``. Signals about data are sent
after the database transaction that made the change has committed: a receiver
never hears of something that was rolled back. A receiver that raises is logged
and does not affect the others, the stored data or the answer Stripe gets.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: A customer was created, by a Stripe event or by ``create_customer``.
#: Keyword arguments: ``customer``, ``event`` (the Stripe event dict, or None).
customer_created = _signals.signal("customer-created")

#: A known customer's Stripe id, email, name or partner changed.
#: Keyword arguments: ``customer``, ``event`` (or None).
customer_updated = _signals.signal("customer-updated")

#: A transaction was recorded for the first time.
#: Keyword arguments: ``transaction``, ``event``.
transaction_recorded = _signals.signal("transaction-recorded")

#: A standing transaction changed: its customer was attached, or its amount lowered
#: by a partial refund. Keyword arguments: ``transaction``, ``event`` (or None).
transaction_updated = _signals.signal("transaction-updated")

#: A refund or a failure deleted a transaction (``deleted_at`` is set).
#: Keyword arguments: ``transaction``, ``event``.
transaction_deleted = _signals.signal("transaction-deleted")

#: A webhook event was applied and committed. Keyword arguments: ``event``, ``webhook_event``.
event_processed = _signals.signal("event-processed")

#: A webhook event was accepted but changed nothing.
#: Keyword arguments: ``event``, ``reason`` (a short sentence).
event_ignored = _signals.signal("event-ignored")

#: Applying a webhook event raised; it was rolled back and stored as ``failed``.
#: Keyword arguments: ``event``, ``error`` (the exception).
event_failed = _signals.signal("event-failed")

#: A Stripe account was connected. Keyword arguments: ``account``.
account_installed = _signals.signal("account-installed")

#: A Stripe account was disconnected. Keyword arguments: ``account``, ``event`` (or None).
account_uninstalled = _signals.signal("account-uninstalled")

#: A payment earned a commission (it stands, its customer has a partner and a reward rule
#: applies). Keyword arguments: ``commission``, ``transaction``, ``event`` (or None).
commission_created = _signals.signal("commission-created")

#: A commission changed: its payment's amount changed (a prorated refund lowered it, a
#: failed refund restored it) or it was approved. Keyword arguments:
#: ``commission``, ``transaction`` (None for approval and payout), ``event`` (or None).
commission_updated = _signals.signal("commission-updated")

#: The payment a commission rewards was deleted (refund, failure, lost dispute): its
#: ``amount`` is 0; if it had been paid, the next payout claws it back. Keyword
#: arguments: ``commission``, ``transaction``, ``event``.
commission_reversed = _signals.signal("commission-reversed")
