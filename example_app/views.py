"""The example app's pages: a landing page for partner links, signup, a welcome page, the
partner report with each payment's commission, and the payouts page."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from flask_partnerstack_stripe import decode_partner_key
from flask_partnerstack_stripe.payouts import PayoutLine, payouts_csv

from . import db, partnerstack

blueprint = Blueprint("example", __name__)

#: The partner whose link the landing page offers to try.
SAMPLE_PARTNER = "partner-alice"


def money(amount: int, currency: str) -> str:
    """``12.34 USD``: every amount the app shows carries its currency."""
    sign = "-" if amount < 0 else ""
    whole, cents = divmod(abs(amount), 100)
    return f"{sign}{whole}.{cents:02d} {currency.upper()}"


@blueprint.app_template_filter("money")
def money_filter(amounts: dict[str, int] | None) -> str:
    """``{"usd": 1234}`` as ``12.34 USD`` (several currencies comma-separated); ``—`` for none."""
    if not amounts:
        return "—"
    return ", ".join(money(amount, currency) for currency, amount in sorted(amounts.items()))


@blueprint.get("/")
def landing() -> ResponseReturnValue:
    partner = None
    if request.args.get("ps_partner_key"):
        try:
            partner = decode_partner_key(request.args["ps_partner_key"])
        except ValueError:
            partner = None
    sample = base64.urlsafe_b64encode(SAMPLE_PARTNER.encode()).decode().rstrip("=")
    sample_link = url_for(".landing", ps_partner_key=sample)
    return render_template(
        "landing.html", partner=partner, sample_link=sample_link, sample_partner=SAMPLE_PARTNER
    )


@blueprint.post("/signup")
def signup() -> ResponseReturnValue:
    email = request.form.get("email", "").strip()
    if "@" not in email:
        flash("Please enter an email address.")
        return redirect(url_for(".landing"))
    customer_key = "user-" + email.split("@")[0].lower()
    customer = partnerstack.create_customer(customer_key, email, name=request.form.get("name"))
    flash(f"Welcome {email}! Partner: {customer.partner_key or 'none (direct signup)'}.")
    return redirect(url_for(".welcome", customer=customer.customer_key))


@blueprint.get("/welcome")
def welcome() -> ResponseReturnValue:
    Customer = partnerstack.models.Customer
    customer = db.session.scalar(
        db.select(Customer).filter_by(customer_key=request.args.get("customer", ""))
    )
    return render_template("welcome.html", customer=customer)


@dataclass
class PartnerRow:
    partner_key: str
    customers: list[Any] = field(default_factory=list)
    #: ``(transaction, customer_key, commission or None)``, newest first.
    payments: list[tuple[Any, str | None, Any]] = field(default_factory=list)
    revenue: dict[str, int] = field(default_factory=dict)
    commission: dict[str, int] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def transactions(self) -> list[Any]:
        return [transaction for transaction, _, _ in self.payments]


def partner_report() -> list[PartnerRow]:
    """Every partner with its customers, payments (each with its commission), revenue and
    commission earned, per currency."""
    models = partnerstack.models
    Customer, Transaction, Commission = models.Customer, models.Transaction, models.Commission
    report: dict[str, PartnerRow] = {}
    for customer in db.session.scalars(db.select(Customer).order_by(Customer.id)):
        key = customer.partner_key or "(no partner)"
        report.setdefault(key, PartnerRow(key)).customers.append(customer)
    rows = db.session.execute(
        db.select(Transaction, Customer, Commission)
        .join(Customer, Transaction.customer_id == Customer.id, isouter=True)
        .join(Commission, Commission.transaction_id == Transaction.id, isouter=True)
        .order_by(Transaction.created_at.desc(), Transaction.id.desc())
    )
    for transaction, customer, commission in rows:
        key = (customer.partner_key if customer else None) or "(no partner)"
        row = report.setdefault(key, PartnerRow(key))
        row.payments.append((transaction, customer.customer_key if customer else None, commission))
        currency = transaction.currency
        row.revenue.setdefault(currency, 0)  # a partner whose payments were all refunded: 0.00 USD
        if transaction.deleted_at is None:
            row.revenue[currency] += transaction.amount
        if commission is not None:
            row.commission[currency] = row.commission.get(currency, 0) + commission.amount
    for row in report.values():
        if row.partner_key != "(no partner)":
            row.summary = partnerstack.partner_summary(row.partner_key)
    return sorted(report.values(), key=lambda row: row.partner_key)


@blueprint.get("/partners")
def partners() -> ResponseReturnValue:
    report = partner_report()
    top = max((sum(row.revenue.values()) for row in report), default=0) or 1
    return render_template("partners.html", report=report, top=top)


@blueprint.get("/payouts")
def payouts() -> ResponseReturnValue:
    Payout, Commission = partnerstack.models.Payout, partnerstack.models.Commission
    lines = db.session.scalars(
        db.select(Payout).order_by(Payout.created_at.desc(), Payout.partner_key, Payout.currency)
    ).all()
    due: dict[str, dict[str, int]] = {}
    pending: dict[str, dict[str, int]] = {}
    for commission in db.session.scalars(db.select(Commission).order_by(Commission.id)):
        if commission.due:
            owed = due.setdefault(commission.partner_key, {})
            owed[commission.currency] = owed.get(commission.currency, 0) + commission.due
        elif commission.status == "pending":
            held = pending.setdefault(commission.partner_key, {})
            held[commission.currency] = held.get(commission.currency, 0) + commission.amount
    return render_template("payouts.html", lines=lines, due=due, pending=pending)


@blueprint.post("/payouts/approve")
def approve() -> ResponseReturnValue:
    approved = partnerstack.approve_commissions()
    flash(f"Approved {len(approved)} commissions past the hold.")
    return redirect(url_for(".payouts"))


@blueprint.post("/payouts/export")
def export() -> ResponseReturnValue:
    lines = partnerstack.export_payouts()
    if not lines:
        flash("Nothing is due: no payout was made.")
        return redirect(url_for(".payouts"))
    flash(f"Payout {lines[0].payout_id}: {len(lines)} lines, marked paid.")
    return redirect(url_for(".payouts"))


@blueprint.get("/payouts/<payout_id>.csv")
def payout_csv(payout_id: str) -> ResponseReturnValue:
    Payout = partnerstack.models.Payout
    rows = db.session.scalars(
        db.select(Payout).filter_by(payout_id=payout_id).order_by(Payout.partner_key)
    ).all()
    lines = [
        PayoutLine(r.payout_id, r.partner_key, r.currency, r.amount, r.commissions, r.created_at)
        for r in rows
    ]
    if not lines:
        return Response("No such payout.", status=404)
    return Response(
        payouts_csv(lines),
        mimetype="text/csv",
        headers={"Content-Disposition": f"attachment; filename={payout_id}.csv"},
    )
