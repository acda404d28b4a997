"""Payouts: pay what is due on commissions, once. No Flask here.

What a commission has due is ``amount - paid_amount`` once it is approved (or was
paid before): an approved commission its whole amount, a paid one whose payment was
refunded since a negative difference (a clawback), a clawed-back one whose refund
failed a positive one. An export sums what is due per partner and currency, sets each
commission's ``paid_amount`` to its ``amount`` under a new payout id, and records the
lines, all in one database transaction; the commissions are read ``FOR UPDATE``, so a
payment change or a second export at the same moment waits, and then finds nothing
left to pay twice.
"""

from __future__ import annotations

import csv
import io
import secrets
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .commissions import status_of
from .models import Models, utcnow
from .values import MAX_AMOUNT

#: The CSV's columns. ``amount`` is in the currency's minor unit (cents), as Stripe's.
CSV_COLUMNS = ("payout_id", "partner_key", "currency", "amount", "commissions", "created_at")


@dataclass(frozen=True)
class PayoutLine:
    payout_id: str
    partner_key: str
    currency: str
    #: Approved commissions plus clawbacks, netted; negative when clawbacks are larger.
    amount: int
    commissions: int
    created_at: datetime


def new_payout_id() -> str:
    return "po_" + secrets.token_hex(8)


def export_payouts(
    session: Session,
    models: Models,
    *,
    livemode: bool,
    currency: str | None = None,
    now: datetime | None = None,
) -> list[PayoutLine]:
    """Pay everything due on payments of one mode (``livemode``; test-mode payments are
    never paid with live ones), in ``currency`` only if given (lowered); the lines, one per partner
    and currency, sorted. Nothing due: no lines, and nothing is written."""
    Commission, Payout, Transaction = models.Commission, models.Payout, models.Transaction
    now = now or utcnow()
    in_mode = sa.select(Transaction.id).where(Transaction.livemode == livemode)
    due = (
        sa.select(Commission)
        .where(
            Commission.amount != Commission.paid_amount,
            sa.or_(Commission.approved_at.is_not(None), Commission.paid_amount != 0),
            Commission.transaction_id.in_(in_mode),
        )
        .order_by(Commission.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if currency is not None:
        due = due.where(Commission.currency == currency)
    payout_id = new_payout_id()
    # Not paid by another export while we waited for its lock.
    owing = [commission for commission in session.scalars(due) if commission.due]
    totals: dict[tuple[str, str], list[int]] = {}
    for commission in owing:
        total = totals.setdefault((commission.partner_key, commission.currency), [0, 0])
        total[0] += commission.due
        total[1] += 1
    lines = [
        PayoutLine(payout_id, partner, code, amount, count, now)
        for (partner, code), (amount, count) in sorted(totals.items())
    ]
    for line in lines:
        if abs(line.amount) > MAX_AMOUNT:
            # Before any commission is touched: nothing is paid, whoever commits after.
            raise ValueError(
                f"The payout line of {line.partner_key!r} in {line.currency} would be "
                f"{line.amount}, past 2**63-1 minor units: nothing was paid."
            )
    for commission in owing:
        commission.paid_amount = commission.amount
        commission.paid_at = now
        commission.payout_id = payout_id
        commission.status = status_of(commission)
        commission.updated_at = now
    for line in lines:
        session.add(
            Payout(
                payout_id=payout_id,
                partner_key=line.partner_key,
                currency=line.currency,
                amount=line.amount,
                commissions=line.commissions,
                created_at=now,
            )
        )
    session.flush()
    return lines


def payouts_csv(lines: list[PayoutLine]) -> str:
    """The lines as CSV, with a header row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for line in lines:
        writer.writerow(
            (line.payout_id, spreadsheet_safe(line.partner_key), line.currency, line.amount,
             line.commissions, line.created_at.isoformat())
        )  # fmt: skip
    return out.getvalue()


#: What a spreadsheet reads as the start of a formula (OWASP's list for CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """``text`` with a leading ``'`` where a spreadsheet would run it as a formula: a
    partner key comes from a link anyone can open (``?ps_partner_key=``), and the payouts
    file is opened by whoever pays the partners."""
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text
