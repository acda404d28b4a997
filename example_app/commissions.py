"""The host's own business: a commission per transaction, kept in step through signals."""

from __future__ import annotations

from typing import Any

from flask import Flask

from flask_partnerstack_stripe import signals

from . import db, partnerstack

#: Commission rate per product key; products not listed earn the default.
RATES = {"starter": 0.20, "team": 0.25, "enterprise": 0.30}
DEFAULT_RATE = 0.15


class Commission(db.Model):  # type: ignore[name-defined,misc]
    """What the host owes a partner for one transaction."""

    __tablename__ = "commission"

    id = db.Column(db.Integer, primary_key=True)
    transaction_id = db.Column(
        db.Integer, db.ForeignKey("partnerstack_transaction.id"), unique=True, nullable=False
    )
    partner_key = db.Column(db.String(255))
    amount = db.Column(db.BigInteger, nullable=False)
    currency = db.Column(db.String(3), nullable=False)
    voided = db.Column(db.Boolean, nullable=False, default=False)


def commission_for(transaction: Any) -> int:
    rate = RATES.get(transaction.product_key or "", DEFAULT_RATE)
    return round(transaction.amount * rate)


def _partner_of(transaction: Any) -> str | None:
    Customer = partnerstack.models.Customer
    if transaction.customer_id is None:
        return None
    customer = db.session.get(Customer, transaction.customer_id)
    return customer.partner_key if customer else None


def on_transaction_changed(app: Flask, transaction: Any, **extra: Any) -> None:
    """Recorded or updated: (re)compute the commission, credited to the customer's partner."""
    commission = db.session.scalar(
        db.select(Commission).filter_by(transaction_id=transaction.id)
    ) or Commission(transaction_id=transaction.id, currency=transaction.currency)
    commission.amount = commission_for(transaction)
    commission.partner_key = _partner_of(transaction)
    commission.voided = transaction.deleted_at is not None
    db.session.add(commission)
    db.session.commit()


def on_transaction_deleted(app: Flask, transaction: Any, **extra: Any) -> None:
    """Refunded or failed: the commission is voided, kept for the record."""
    db.session.execute(
        db.update(Commission).filter_by(transaction_id=transaction.id).values(voided=True)
    )
    db.session.commit()


def connect_receivers() -> None:
    # Connecting the same function twice is a no-op in blinker, so app factories may
    # call this once per app.
    signals.transaction_recorded.connect(on_transaction_changed)
    signals.transaction_updated.connect(on_transaction_changed)
    signals.transaction_deleted.connect(on_transaction_deleted)
