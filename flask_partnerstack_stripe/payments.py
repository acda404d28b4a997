"""The payment ledger: each transaction follows from everything Stripe said about its payment.

A payment's events each add facts (its settled amount, the refunded total its newest
charge object reported, its refunds by id, a failure, a lost dispute); facts only
accumulate (a maximum, the newest by the event's ``created``, an OR, a refund status
that only moves forward, the earliest time a refund was seen undone), and the transaction's
``amount``, ``deleted_at`` and ``deleted_reason`` are computed from all of them. So the
final ledger depends on the set of events, never on their order.

Race-free: a new payment is one ``INSERT … ON CONFLICT DO NOTHING RETURNING``; a known one
is read ``FOR UPDATE``, so the events of one payment apply one after the other on
PostgreSQL (SQLite lets one writer in at a time); refunds are upserts on their unique id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from . import locks
from .customers import Party, payer_cte
from .database import MYSQL
from .database import dialect_name as _dialect
from .models import REFUND_RANKS, REFUND_UNDONE, Models, utcnow
from .rows import column_keys, loaded, write_changes
from .statements import cached_statement
from .upserts import insert_loading, insert_on_conflict


@dataclass(frozen=True)
class Payment:
    """A payment as the ledger sees it: one Stripe charge or invoice."""

    key: str
    party: Party
    currency: str
    product_key: str | None = None
    #: The object shown is the charge or invoice itself, whose metadata names the product
    #: (None: it names none); a refund or dispute object, or a charge in invoice mode,
    #: says nothing about it.
    names_product: bool = False


@dataclass(frozen=True)
class RefundFact:
    """One refund as an event shows it."""

    refund_id: str
    amount: int
    status: str

    @property
    def undone(self) -> bool:
        return self.status in REFUND_UNDONE


@dataclass(frozen=True)
class Facts:
    """What one event says about a payment. Each fact only ever adds to what is known.

    ``gross``: the settled amount (captured, or the invoice's), when the event shows the
    payment settled. ``nominal``: the amount to show while it is not (a failed charge's).
    ``refunded``: the refunded total the charge reports, its released remainder excluded,
    as of ``charge_at`` (the event's ``created``; None when the event shows no charge).
    ``charged``: what the payer was charged, the unit refunds come in (None: ``gross``).
    ``seen_at``: the event's ``created``, when a refund it shows failed or was canceled.
    """

    gross: int | None = None
    nominal: int = 0
    refunded: int = 0
    charge_at: int | None = None
    charged: int | None = None
    seen_at: int | None = None
    failed: bool = False
    dispute_lost: bool = False
    refunds: tuple[RefundFact, ...] = ()


#: ``settle_payment``'s answer: which signal the change calls for, if any.
RECORDED, UPDATED, DELETED = "recorded", "updated", "deleted"
#: It does not stand, and only its product changed: no signal, but its commission's
#: ``product_key`` follows it.
RELABELED = "relabeled"


@dataclass(frozen=True)
class Standing:
    """Where a payment's transaction stands, computed from its facts."""

    amount: int
    stands: bool
    reason: str | None


def derive(
    *,
    gross: int | None,
    shown: int,
    charge_refunded: int,
    failed: bool,
    dispute_lost: bool,
    refunds_standing: int,
    refunds_undone: int,
    prorate: bool,
    charged: int | None = None,
) -> Standing:
    """The transaction's amount and state from a payment's facts.

    The refunded total is the higher of what the newest charge object reported (less the
    refunds that failed or were canceled after it was taken: ``refunds_undone``; one
    undone before is already left out by Stripe) and the sum of the refunds known to
    stand: each refund counts once, whichever events told of it.

    Refunds come in the units of what the payer was ``charged``; when the transaction's
    amount is another (an invoice's subtotal, tax and discounts aside) a refund of all of
    it takes all of ``gross``, and a partial one its share (``refunded / charged * gross``,
    rounded half to even). A lost dispute, then a failure, then a refund is the reason it
    does not stand; until a settled amount is known it does not stand either (``shown``
    is then what to show).
    """
    refunded = max(charge_refunded - refunds_undone, refunds_standing, 0)
    if gross is None:
        amount, refunded_away = shown, refunded > 0
    elif prorate:
        if charged and charged != gross:
            refunded = gross if refunded >= charged else _share(refunded, gross, charged)
        amount, refunded_away = max(gross - refunded, 0), refunded >= gross
    else:
        amount, refunded_away = gross, refunded > 0
    reason = (
        "dispute" if dispute_lost
        else "failure" if failed
        else "refund" if refunded_away
        else None
    )  # fmt: skip
    return Standing(amount, gross is not None and reason is None, reason)


def _share(part: int, whole: int, of: int) -> int:
    """``part / of * whole`` in integers, rounded half to even."""
    quotient, remainder = divmod(part * whole, of)
    if 2 * remainder > of or (2 * remainder == of and quotient % 2):
        quotient += 1
    return quotient


_INSERT_FIELDS = (
    "key", "customer_id", "amount", "currency", "product_key", "stripe_account_id",
    "account_scope", "livemode", "stripe_customer_id", "customer_key", "customer_email",
    "created_at", "updated_at", "deleted_at", "deleted_reason", "gross_amount",
    "charge_refunded", "charge_refunded_at", "charged_amount", "failed", "dispute_lost",
)  # fmt: skip


def settle_payment(
    session: Session,
    models: Models,
    payment: Payment,
    customer_id: int | None,
    facts: Facts,
    *,
    prorate: bool,
    expect_known: bool = False,
) -> tuple[str | None, Any]:
    """Add ``facts`` to the payment's transaction; ``(RECORDED | UPDATED | DELETED | RELABELED |
    None, row)``.

    A payment seen for the first time is inserted already computed (one statement); a
    known one is locked, merged and computed again. ``expect_known``: the event is one
    that usually follows the payment's first record (an update, a refund), so the row is
    locked first and the insert tried only if there is none; either order gives the same
    result, this one a round trip less when the guess is right.
    """
    now = utcnow()
    if expect_known:
        locked = _lock(session, models, payment)
        if locked is not None:
            return _update(session, models, payment, customer_id, facts, now, locked, prorate)
    new = _first_standing(facts, prorate)
    row = _insert(session, models, payment, customer_id, facts, new, now)
    if row is not None:
        for refund in facts.refunds:
            _record_refund(session, models, payment, refund, facts.seen_at, now)
        return (RECORDED if new.stands else None), row
    # Another delivery recorded it first (its insert committed before ours conflicted).
    locked = _lock(session, models, payment)
    assert locked is not None, "the insert conflicted on this very row"
    return _update(session, models, payment, customer_id, facts, now, locked, prorate)


def _first_standing(facts: Facts, prorate: bool) -> Standing:
    """Where a payment stands when ``facts`` are all that is known of it."""
    return derive(
        gross=facts.gross,
        shown=facts.gross if facts.gross is not None else facts.nominal,
        charge_refunded=facts.refunded,
        failed=facts.failed,
        dispute_lost=facts.dispute_lost,
        refunds_standing=sum(r.amount for r in facts.refunds if not r.undone),
        # A charge object leaves out the refunds it shows undone itself.
        refunds_undone=0 if facts.charge_at is not None else _undone(facts.refunds),
        prorate=prorate,
        charged=facts.charged,
    )


@dataclass(frozen=True)
class First:
    """A payment :func:`record_first` recorded, with the customer it found (or None)."""

    change: str | None  # RECORDED, or None when it does not stand
    row: Any
    #: Nobody was known and the customer locks were taken (PostgreSQL): look again.
    locked: bool


def records_first(session: Session) -> bool:
    """Whether :func:`record_first` works here: not on MySQL/MariaDB (no ``RETURNING``)."""
    return _dialect(session) not in MYSQL


def record_first(
    session: Session,
    models: Models,
    payment: Payment,
    facts: Facts,
    *,
    prorate: bool,
    payer: dict[str, str],
) -> First | None:
    """Record a payment seen for the first time with its customer, in one statement.

    ``WITH payer AS (the customer ``payer`` names, as ``find_customer`` looks it up)
    INSERT ... SELECT ..., COALESCE(payer.id, <take the customer locks>) WHERE NOT EXISTS
    (a payer still without the payment's Stripe id) ON CONFLICT DO NOTHING RETURNING``.

    When nobody is known the statement takes the locks a customer event takes before it
    writes the row, as ``_find_payer`` does before its second look: the lock order
    (customer locks, customer, payment) stays the one every event keeps, so racing
    events cannot deadlock. The caller looks again under them (a new statement sees
    what committed meanwhile).

    None when nothing was inserted: the payment is recorded already, or its customer
    needs the payment's Stripe id first (both: :func:`settle_payment`). Not on
    MySQL/MariaDB (:func:`records_first`), which cannot return the row.
    """
    dialect = _dialect(session)
    Transaction = models.Transaction
    table = Transaction.__table__
    names = tuple(payer)
    keys = locks.advisory_keys(session, *locks.party_lock_names(payment.party))

    def build() -> Any:
        found = payer_cte(models, names)
        customer_id: Any = sa.select(found.c.id).scalar_subquery()
        if keys:
            customer_id = sa.func.coalesce(customer_id, locks.locking_null(len(keys)))
        fields = [name for name in _INSERT_FIELDS if name != "customer_id"]
        row = sa.select(
            *(sa.bindparam(name, type_=table.c[name].type) for name in fields),
            customer_id,
        )
        if "stripe_customer_id" in names:
            row = row.where(~sa.exists().where(found.c.stripe_customer_id.is_(None)))
        else:
            row = row.where(sa.true())  # SQLite: an upsert's SELECT needs a WHERE
        columns = [*fields, "customer_id"]
        return insert_on_conflict(
            session, table, row, columns=columns, keys=[table.c.account_scope, table.c.key],
            whole_row=True,
        )  # fmt: skip

    statement = cached_statement((table, "record-first", dialect, names, len(keys or ())), build)
    now = utcnow()
    new = _first_standing(facts, prorate)
    values = _insert_values(payment, None, facts, new, now)
    values.update(payer, scope=payment.party.scope)
    values.update({f"lock_{n}": key for n, key in enumerate(keys or ())})
    found = session.connection().execute(statement, values).first()
    if found is None:
        return None
    row = loaded(session, Transaction, found[1:], attach=False)
    for refund in facts.refunds:
        _record_refund(session, models, payment, refund, facts.seen_at, now)
    locked = bool(keys) and row.customer_id is None
    return First(RECORDED if new.stands else None, row, locked)


def give_customer(session: Session, models: Models, row: Any, customer_id: int) -> Any:
    """Give the just-recorded ``row`` (no customer) its customer, found after all."""
    Transaction = models.Transaction
    stored = {key: getattr(row, key) for key in column_keys(Transaction)}
    changed = SimpleNamespace(**stored)
    changed.customer_id = customer_id
    write_changes(session, Transaction.__table__, stored, changed)
    return loaded(session, Transaction, list(vars(changed).values()), attach=False)


def _insert(
    session: Session,
    models: Models,
    payment: Payment,
    customer_id: int | None,
    facts: Facts,
    new: Standing,
    now: datetime,
) -> Any:
    """The new transaction, or None when the payment already has one."""
    Transaction = models.Transaction
    table = Transaction.__table__
    statement = cached_statement(
        (Transaction, "settle-insert", _dialect(session)),
        lambda: insert_on_conflict(
            session,
            table,
            {name: sa.bindparam(name) for name in _INSERT_FIELDS},
            keys=[table.c.account_scope, table.c.key],
            whole_row=True,
        ),
    )
    values = _insert_values(payment, customer_id, facts, new, now)
    return insert_loading(session, Transaction, statement, values)


def _insert_values(
    payment: Payment, customer_id: int | None, facts: Facts, new: Standing, now: datetime
) -> dict[str, Any]:
    """The values of a new transaction (``_INSERT_FIELDS``)."""
    party = payment.party
    return {
        "key": payment.key,
        "customer_id": customer_id,
        "amount": new.amount,
        "currency": payment.currency,
        "product_key": payment.product_key,
        "stripe_account_id": party.stripe_account_id,
        "account_scope": party.scope,
        "livemode": party.livemode,
        "stripe_customer_id": party.stripe_customer_id,
        "customer_key": party.customer_key,
        "customer_email": party.email,
        "created_at": now,
        "updated_at": now,
        "deleted_at": None if new.stands else now,
        "deleted_reason": new.reason,
        "gross_amount": facts.gross,
        "charge_refunded": facts.refunded,
        "charge_refunded_at": facts.charge_at,
        "charged_amount": facts.charged,
        "failed": facts.failed,
        "dispute_lost": facts.dispute_lost,
    }


@dataclass(frozen=True)
class Locked:
    """A payment's transaction row, locked for this transaction, and its known refunds."""

    stored: dict[str, Any]  # every column, by attribute name
    #: ``(amount, status, undone_at)`` rows, when read with the row (None: not read).
    refunds: list[Any] | None


def settle_attached(
    session: Session,
    models: Models,
    payment: Payment,
    facts: Facts,
    *,
    prorate: bool,
    payer: dict[str, str],
) -> tuple[str | None, Any] | None:
    """:func:`settle_payment` for a payment already recorded with its customer, when the
    look-up would change nothing: ``(change, row)``, or None (nothing locked, nothing
    written) otherwise, and the caller looks the customer up first, as before.

    The look-up changes nothing when the payment has its customer and the customer
    ``payer`` names (:func:`customers.payer_routes`) is known and, if the payment names
    a Stripe customer id, has one: then there is no customer to give and no Stripe id to
    link. The locking read checks that in its own condition (:func:`customers.payer_cte`),
    so a payment that needs the look-up is not locked: the customer locks the look-up may
    take come before the payment's lock.

    For an update, a refund or a dispute of a charge that names its customer: the usual
    case, and a round trip less than looking the customer up first.

    Not on MySQL/MariaDB (None at once): there a locking read may keep the lock of a row
    its condition turned away, and the look-up's named locks after it could then wait
    on a transaction waiting for that row, a cycle InnoDB cannot see (the server race
    tests hung on it).
    """
    if _dialect(session) in MYSQL:
        return None
    locked = _lock(session, models, payment, payer=payer)
    if locked is None:
        return None
    return _update(session, models, payment, None, facts, utcnow(), locked, prorate)


def _lock(
    session: Session, models: Models, payment: Payment, *, payer: dict[str, str] | None = None
) -> Locked | None:
    """Lock the payment's transaction and read it; None when it has none yet (nothing is
    locked then). ``payer``: only when :func:`settle_attached` may skip the look-up; else
    None, and nothing is locked either. (On PostgreSQL a row that changed while the
    statement waited for it is checked again; its customer columns only go from NULL to
    a value, unless the host deletes a customer meanwhile, a cycle PostgreSQL's deadlock
    detector would break, answering 500 for nothing committed.)

    SQLite and MySQL/MariaDB read its refunds in the same statement. PostgreSQL cannot:
    a statement that waited for the lock sees the locked row as the other transaction
    committed it, but the rows it joins as they were when the statement began, so the
    refunds that transaction wrote would be missed. (SQLite has one writer at a time;
    InnoDB's locking reads see, and lock, the newest committed rows.)
    """
    Transaction = models.Transaction
    table, refund = Transaction.__table__, models.Refund.__table__
    joined = _dialect(session) != "postgresql"
    party = payment.party
    parameters: dict[str, Any] = {"scope": party.scope, "key": payment.key}
    names = tuple(payer) if payer is not None else None
    if payer is not None:
        parameters.update(payer, livemode=party.livemode)

    def build() -> Any:
        matches = sa.and_(
            table.c.account_scope == sa.bindparam("scope"), table.c.key == sa.bindparam("key")
        )
        if names is not None:
            found = payer_cte(models, names)
            settled = sa.exists().select_from(found)
            if "stripe_customer_id" in names:
                settled = settled.where(found.c.stripe_customer_id.is_not(None))
            matches = sa.and_(matches, table.c.customer_id.is_not(None), settled)
        if not joined:
            return sa.select(*table.columns).where(matches).with_for_update()
        refunds = table.outerjoin(
            refund,
            sa.and_(refund.c.account_scope == table.c.account_scope,
                    refund.c.payment_key == table.c.key),
        )  # fmt: skip
        return (
            sa.select(*table.columns, refund.c.amount, refund.c.status, refund.c.undone_at)
            .select_from(refunds)
            .where(matches)
            .with_for_update()
        )

    statement = cached_statement((table, "settle-lock", joined, names), build)
    found = session.connection().execute(statement, parameters)
    rows = found.all()
    if not rows:
        return None
    width = len(table.columns)
    stored = dict(zip(column_keys(Transaction), rows[0][:width], strict=True))
    if not joined:
        return Locked(stored, None)
    # An outer join: a payment without refunds comes back as one row of NULLs there
    # (a refund's amount is never NULL).
    return Locked(stored, [row[width:] for row in rows if row[width] is not None])


def _update(
    session: Session,
    models: Models,
    payment: Payment,
    customer_id: int | None,
    facts: Facts,
    now: datetime,
    locked: Locked,
    prorate: bool,
) -> tuple[str | None, Any]:
    Transaction = models.Transaction
    party = payment.party
    table = Transaction.__table__
    # Computed on the row's values, written with Core, and only then an ORM instance
    # (for the signals): an ORM query and flush cost twice as much.
    stored = locked.stored
    row = SimpleNamespace(**stored)
    for refund in facts.refunds:
        _record_refund(session, models, payment, refund, facts.seen_at, now)
    refunds = locked.refunds
    if refunds is None or facts.refunds:
        # Read after the upserts, which may have moved a status forward (and before the
        # row changes: a query after would flush it, then flush it again).
        refunds = _known_refunds(session, models, row)
    before = (row.deleted_at is None, row.amount, row.customer_id, row.product_key)

    if row.gross_amount is None and row.deleted_at is None:
        row.gross_amount = row.amount  # stood before gross_amount existed: settled at its amount
    if facts.gross is not None and (row.gross_amount is None or facts.gross > row.gross_amount):
        # What was captured only grows (several captures of one charge), whatever the order.
        row.gross_amount = facts.gross
    shown_at = -1 if row.charge_refunded_at is None else row.charge_refunded_at
    if payment.names_product and facts.charge_at is not None:
        # A charge object: the newest one's metadata names the product, or none (at the
        # same second, the greater key). The same newest object as the refunded total's.
        if (facts.charge_at, payment.product_key or "") > (shown_at, row.product_key or ""):
            row.product_key = payment.product_key
    elif payment.product_key is not None:
        row.product_key = payment.product_key  # an invoice: its events show the same metadata
    if facts.charge_at is not None and (facts.charge_at, facts.refunded) > (
        shown_at,
        row.charge_refunded or 0,
    ):
        row.charge_refunded, row.charge_refunded_at = facts.refunded, facts.charge_at
    if facts.charged is not None:
        row.charged_amount = max(row.charged_amount or 0, facts.charged)
    row.failed = bool(row.failed) or facts.failed
    row.dispute_lost = bool(row.dispute_lost) or facts.dispute_lost
    if row.customer_id is None:
        row.customer_id = customer_id
    for field in ("stripe_customer_id", "customer_key"):
        if getattr(row, field) is None:
            setattr(row, field, getattr(party, field))
    if row.customer_email is None:
        row.customer_email = party.email

    standing, undone = _refund_totals(refunds, row.charge_refunded_at)
    new = derive(
        gross=row.gross_amount,
        shown=max(row.amount, facts.nominal),
        charge_refunded=row.charge_refunded,
        failed=row.failed,
        dispute_lost=row.dispute_lost,
        refunds_standing=standing,
        refunds_undone=undone,
        prorate=prorate,
        charged=row.charged_amount,
    )
    row.amount = new.amount
    row.deleted_reason = new.reason
    if new.stands:
        row.deleted_at = None
    elif row.deleted_at is None:
        row.deleted_at = now
    after = (new.stands, row.amount, row.customer_id, row.product_key)
    if after != before:
        row.updated_at = now
    write_changes(session, table, stored, row)
    row = loaded(session, Transaction, [getattr(row, key) for key in stored], attach=False)
    if new.stands and not before[0]:
        return RECORDED, row
    if before[0] and not new.stands:
        return DELETED, row
    if new.stands and after != before:
        return UPDATED, row
    if after[3] != before[3]:
        return RELABELED, row
    return None, row


def _undone(refunds: tuple[RefundFact, ...]) -> int:
    return sum(r.amount for r in refunds if r.undone)


_REFUND_FIELDS = (
    "refund_id", "payment_key", "account_scope", "amount", "status", "status_rank",
    "undone_at", "created_at", "updated_at",
)  # fmt: skip


def _record_refund(
    session: Session,
    models: Models,
    payment: Payment,
    refund: RefundFact,
    seen_at: int | None,
    now: datetime,
) -> None:
    """Upsert one refund by its id; its status only moves forward (``REFUND_RANKS``), the
    time it was seen undone only back (the earliest event showing it failed or canceled)."""
    table = models.Refund.__table__

    def build() -> Any:
        def forward(new: Any) -> Any:
            return table.c.status_rank < new.status_rank

        def earlier(new: Any) -> Any:
            return sa.and_(
                new.undone_at.is_not(None),
                sa.or_(table.c.undone_at.is_(None), new.undone_at < table.c.undone_at),
            )

        # Each value carries its own condition (it holds whatever the WHERE reads), so
        # on MySQL, where the condition is re-read after each assignment, they still agree.
        return insert_on_conflict(
            session,
            table,
            {name: sa.bindparam(name) for name in _REFUND_FIELDS},
            keys=[table.c.account_scope, table.c.refund_id],
            update=lambda new: {
                "status": sa.case((forward(new), new.status), else_=table.c.status),
                "updated_at": new.updated_at,
                "undone_at": sa.case((earlier(new), new.undone_at), else_=table.c.undone_at),
                "status_rank": sa.case((forward(new), new.status_rank), else_=table.c.status_rank),
            },
            where=lambda new: sa.or_(forward(new), earlier(new)),
        )

    statement = cached_statement((table, "refund", _dialect(session)), build)
    session.execute(
        statement,
        {
            "refund_id": refund.refund_id,
            "payment_key": payment.key,
            "account_scope": payment.party.scope,
            "amount": refund.amount,
            "status": refund.status,
            "status_rank": REFUND_RANKS.get(refund.status, 1),
            "undone_at": seen_at if refund.undone else None,
            "created_at": now,
            "updated_at": now,
        },
    )


def _known_refunds(session: Session, models: Models, row: Any) -> list[Any]:
    """The payment's known refunds: ``(amount, status, undone_at)`` rows."""
    table = models.Refund.__table__
    statement = cached_statement(
        (table, "of-payment"),
        lambda: sa.select(table.c.amount, table.c.status, table.c.undone_at).where(
            table.c.account_scope == sa.bindparam("scope"),
            table.c.payment_key == sa.bindparam("key"),
        ),
    )
    found = session.connection().execute(statement, {"scope": row.account_scope, "key": row.key})
    return list(found)


def _refund_totals(refunds: list[Any], taken: int | None) -> tuple[int, int]:
    """The amounts of the payment's known ``refunds`` that stand, and that were undone
    after the charge object its ``charge_refunded`` comes from was ``taken`` (or at an
    unknown time).

    Summed here, not in SQL: each amount is at most 2**63-1, their sum may not be, and
    SQLite's ``sum()`` raises on an overflow. A payment has a handful of refunds.
    """
    standing = undone = 0
    for refund_amount, status, undone_at in refunds:
        if status in REFUND_UNDONE:
            if taken is None or undone_at is None or undone_at > taken:
                undone += refund_amount
        else:
            standing += refund_amount
    return standing, undone
