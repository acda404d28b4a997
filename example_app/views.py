"""The example app's pages: a landing page for partner links, signup, and the partner report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from flask_partnerstack_stripe import decode_partner_key

from . import db, partnerstack
from .commissions import Commission

blueprint = Blueprint("example", __name__)


@blueprint.get("/")
def landing() -> ResponseReturnValue:
    partner = None
    if request.args.get("ps_partner_key"):
        try:
            partner = decode_partner_key(request.args["ps_partner_key"])
        except ValueError:
            partner = None
    return render_template("landing.html", partner=partner)


@blueprint.post("/signup")
def signup() -> ResponseReturnValue:
    email = request.form.get("email", "").strip()
    if "@" not in email:
        flash("Please enter an email address.")
        return redirect(url_for(".landing"))
    customer_key = "user-" + email.split("@")[0].lower()
    customer = partnerstack.create_customer(customer_key, email, name=request.form.get("name"))
    flash(f"Welcome {email}! Partner: {customer.partner_key or 'none (direct signup)'}.")
    return redirect(url_for(".partners"))


@dataclass
class PartnerRow:
    partner_key: str
    customers: list[Any] = field(default_factory=list)
    transactions: list[Any] = field(default_factory=list)
    customer_keys: dict[int, str] = field(default_factory=dict)
    revenue: dict[str, int] = field(default_factory=dict)
    commission: dict[str, int] = field(default_factory=dict)


def partner_report() -> list[PartnerRow]:
    """Every partner with its customers, standing transactions, revenue and commission."""
    Customer, Transaction = partnerstack.models.Customer, partnerstack.models.Transaction
    report: dict[str, PartnerRow] = {}
    for customer in db.session.scalars(db.select(Customer).order_by(Customer.id)):
        key = customer.partner_key or "(no partner)"
        report.setdefault(key, PartnerRow(key)).customers.append(customer)
    rows = db.session.execute(
        db.select(Transaction, Customer, Commission)
        .join(Customer, Transaction.customer_id == Customer.id, isouter=True)
        .join(Commission, Commission.transaction_id == Transaction.id, isouter=True)
        .order_by(Transaction.id)
    )
    for transaction, customer, commission in rows:
        key = (customer.partner_key if customer else None) or "(no partner)"
        row = report.setdefault(key, PartnerRow(key))
        row.transactions.append(transaction)
        if customer is not None:
            row.customer_keys[customer.id] = customer.customer_key
        if transaction.deleted_at is None:
            currency = transaction.currency
            row.revenue[currency] = row.revenue.get(currency, 0) + transaction.amount
            if commission is not None and not commission.voided:
                row.commission[currency] = row.commission.get(currency, 0) + commission.amount
    return sorted(report.values(), key=lambda row: row.partner_key)


@blueprint.get("/partners")
def partners() -> ResponseReturnValue:
    report = partner_report()
    top = max((sum(row.revenue.values()) for row in report), default=0) or 1
    return render_template("partners.html", report=report, top=top)
