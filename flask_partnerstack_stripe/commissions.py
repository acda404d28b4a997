"""The ledger of commissions: each follows the payment it rewards. No Flask here.

A commission is computed from its transaction as it stands now (amount, currency,
product, whether it stands, its customer's partner) and the reward rules, never from
the event that changed it: so, like the transaction, it ends the same whatever the
order of Stripe's events. :func:`follow_payment` is called in the same database
transaction as every change of a payment, while the payment's row is locked
(``payments.settle_payment`` reads it ``FOR UPDATE``; attaching an orphan updates it),
so the changes of one commission apply one after the other. The row itself is an
``INSERT … ON CONFLICT DO NOTHING … RETURNING`` on its unique ``transaction_id``, and
when it existed already, read ``FOR UPDATE``: never check-then-insert.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from blinker import NamedSignal
from sqlalchemy.orm import Session

from . import signals
from .database import dialect_name, is_mysql
from .models import APPROVED, PAID, PENDING, REVERSED, Models, utcnow
from .rewards import Rule, commission_for, months_between
from .rows import column_keys, loaded, write_changes
from .statements import cached_statement
from .upserts import insert_loading, insert_on_conflict

if TYPE_CHECKING:
    from .config import Settings
    from .receiver import EventContext

Notifications = list[tuple[NamedSignal, dict[str, Any]]]


def status_of(commission: Any) -> str:
    """A commission's status from its amounts: reversed at 0, paid once a payout paid
    it, else approved or pending."""
    if commission.amount == 0:
        return REVERSED
    if commission.paid_amount:
        return PAID
    return APPROVED if commission.approved_at is not None else PENDING


def earned(
    session: Session, models: Models, rules: Sequence[Rule], transaction: Any, *, new: bool = False
) -> tuple[int, str | None]:
    """``(amount, partner_key)``: what ``transaction`` earns now, and its customer's partner.

    The partner is read by a statement of its own, after the payment's row was written:
    on PostgreSQL that row's foreign key check may have waited for a transaction giving
    the customer its partner, and only a new statement sees what that one committed.
    For a payment that may earn something (not :func:`earns_nothing`, where the partner
    need not be read). ``new``: this transaction inserted the payment's row; on
    PostgreSQL the customer row is read ``FOR SHARE`` then (see :func:`_first_commission`).
    """
    table = models.Customer.__table__
    locking = new and dialect_name(session) == "postgresql"

    def build() -> Any:
        statement = sa.select(table.c.partner_key).where(table.c.id == sa.bindparam("id"))
        return statement.with_for_update(read=True) if locking else statement

    statement = cached_statement((table, "partner", locking), build)
    partner_key = session.connection().execute(statement, {"id": transaction.customer_id}).scalar()
    if not partner_key:
        return 0, partner_key
    months_in = 0
    if any(rule.months is not None for rule in rules):  # else no rule asks how long
        Transaction = models.Transaction
        # The first payment: not a declined attempt, nor a row that never settled (a
        # refund seen before its charge), which paid nothing.
        first = session.scalar(
            sa.select(sa.func.min(Transaction.created_at)).where(
                Transaction.customer_id == transaction.customer_id,
                Transaction.failed.is_(False),
                sa.or_(Transaction.gross_amount.is_not(None), Transaction.deleted_at.is_(None)),
            )
        )
        months_in = months_between(_aware(first), _aware(transaction.created_at)) if first else 0
    amount = commission_for(
        rules,
        amount=transaction.amount,
        currency=transaction.currency,
        partner_key=partner_key,
        product_key=transaction.product_key,
        months_in=months_in,
    )
    return amount, partner_key


def partner_blind(rules: Sequence[Rule]) -> bool:
    """Whether ``rules`` pay the same whoever the partner and whenever the payment:
    then only whether the customer has a partner at all is left to read."""
    return all(rule.partner_key is None and rule.months is None for rule in rules)


def earns_nothing(rules: Sequence[Rule], transaction: Any) -> bool:
    """Whether ``transaction`` earns nothing whoever its customer's partner is: it has no
    customer, is deleted, or pays nothing under :func:`partner_blind` rules."""
    if transaction.customer_id is None or transaction.deleted_at is not None:
        return True
    return partner_blind(rules) and _blind_amount(rules, transaction) == 0


def _blind_amount(rules: Sequence[Rule], transaction: Any) -> int:
    """What ``transaction`` earns under :func:`partner_blind` rules, if it has a partner."""
    return commission_for(
        rules,
        amount=transaction.amount,
        currency=transaction.currency,
        partner_key=None,
        product_key=transaction.product_key,
        months_in=0,
    )


def follow_payment(
    session: Session,
    models: Models,
    rules: Sequence[Rule],
    transaction: Any,
    *,
    event: dict[str, Any] | None = None,
    expect_known: bool = False,
    new: bool = False,
) -> Notifications:
    """Bring ``transaction``'s commission in line with it; the signals to send after commit.

    Created when the payment stands, its customer is known and has a partner, and a
    rule pays something; lowered or raised with the payment's amount; reversed (amount
    0) when it is deleted or earns nothing; restored when it stands again.

    ``expect_known``: the payment was updated, so its commission usually exists: it is
    locked first, and created only if there is none (either order gives the same
    result; this one is a round trip less when the guess is right).

    ``expect_known`` for a payment that earns nothing (:func:`earns_nothing`, usually a
    refunded one): its commission is reversed by one ``UPDATE … RETURNING``
    (:func:`_reverse`), not locked, read and then written.

    ``new``: this transaction inserted the payment's row, so it has no commission yet:
    nothing to lock or reverse. With :func:`partner_blind` rules its commission is then
    one statement, which reads the partner itself (:func:`_first_commission`).

    Read and written with Core statements built once; the ORM instance the signals
    carry is made from the row (``rows.loaded``), as for transactions.
    """
    if not rules:
        return []
    if new and partner_blind(rules) and not is_mysql(session):
        return _first_commission(session, models, rules, transaction, event)
    nothing = earns_nothing(rules, transaction)
    if expect_known and nothing and not is_mysql(session):
        reversal = _reverse(session, models, transaction, event)
        if reversal is not None:
            return reversal
    Commission = models.Commission
    table = Commission.__table__
    if nothing:
        target, partner_key = 0, None
    else:
        target, partner_key = earned(session, models, rules, transaction, new=new)
    now = utcnow()
    lock = cached_statement(
        (table, "lock"),
        lambda: (
            sa.select(*table.columns)
            .where(table.c.transaction_id == sa.bindparam("transaction_id"))
            .with_for_update()
        ),
    )

    def locked() -> Any:
        return session.connection().execute(lock, {"transaction_id": transaction.id}).first()

    found = locked() if expect_known else None
    if found is None and target > 0:
        # The new row comes back whole; only an existing one needs reading (and locking).
        values = {**_new_commission(transaction, target, now), "partner_key": partner_key}
        created = insert_loading(
            session, Commission, _create_statement(session, table), values, attach=False
        )
        if created is not None:
            return _signalled(signals.commission_created, created, transaction, event)
        found = locked()  # the insert conflicted: it exists after all
    elif found is None and not (expect_known or new):
        found = locked()
    if found is None:
        return []
    keys = column_keys(Commission)
    stored = dict(zip(keys, found, strict=True))
    commission = SimpleNamespace(**stored)
    before = (commission.amount, commission.status)
    commission.amount = target
    commission.status = status_of(commission)
    commission.product_key = transaction.product_key  # the rate followed it too
    moved = (commission.amount, commission.status) != before
    if moved:
        commission.updated_at = now
        commission.reversed_at = now if commission.status == REVERSED else None
    write_changes(session, table, stored, commission)
    if not moved:
        return []
    instance = loaded(session, Commission, [getattr(commission, key) for key in keys], attach=False)
    reversed_ = commission.status == REVERSED
    signal = signals.commission_reversed if reversed_ else signals.commission_updated
    return _signalled(signal, instance, transaction, event)


def _first_commission(
    session: Session,
    models: Models,
    rules: Sequence[Rule],
    transaction: Any,
    event: dict[str, Any] | None,
) -> Notifications:
    """The commission of a payment this transaction inserted, under :func:`partner_blind`
    rules: ``INSERT … SELECT`` from its customer row when that has a partner, so the
    partner read and the insert are one statement.

    A statement of its own after the payment's row, as :func:`earned`'s read is (it sees
    a partner committed while that row's foreign key check waited). On PostgreSQL it
    reads the customer row ``FOR SHARE``: a customer event giving the customer its
    partner right now gives commissions only to the payments it can see, not to this
    one, so this one waits for that event to commit and reads the partner it gave. (Safe
    for a new payment only: nobody waits on a row not committed yet, so no cycle;
    a known payment's lock comes after the customer's in every event's order.) SQLite has
    one writer at a time. Not on MySQL/MariaDB, where an ``INSERT … SELECT`` holds the
    table's AUTO-INC lock while it waits (for the customer row its foreign key check
    locks).
    """
    if transaction.customer_id is None or transaction.deleted_at is not None:
        return []
    target = _blind_amount(rules, transaction)
    if target == 0:
        return []
    statement = _create_for_partner_statement(session, models)
    values = _new_commission(transaction, target, utcnow())
    created = insert_loading(session, models.Commission, statement, values, attach=False)
    if created is None:
        return []  # the customer has no partner (the row is new: no commission yet)
    return _signalled(signals.commission_created, created, transaction, event)


def _new_commission(transaction: Any, amount: int, now: datetime) -> dict[str, Any]:
    """A new commission's values for ``transaction``, but its partner."""
    return {
        "transaction_id": transaction.id,
        "customer_id": transaction.customer_id,
        "product_key": transaction.product_key,
        "amount": amount,
        "currency": transaction.currency,
        "paid_amount": 0,
        "status": PENDING,
        "created_at": now,
        "updated_at": now,
    }


def _signalled(
    signal: NamedSignal, commission: Any, transaction: Any, event: dict[str, Any] | None
) -> Notifications:
    """The one notification of a commission's change (``event`` is dropped inside a
    webhook event, see :func:`_notify`)."""
    return [(signal, {"commission": commission, "transaction": transaction, "event": event})]


def _reverse(
    session: Session, models: Models, transaction: Any, event: dict[str, Any] | None
) -> Notifications | None:
    """Reverse the commission of ``transaction``, which earns nothing now, in one
    statement: ``UPDATE … WHERE`` it is not reversed yet ``RETURNING`` the row.

    None when no row came back: the commission may be reversed already yet show another
    product key, which :func:`follow_payment`'s usual way brings up to date (it finds no
    commission otherwise, as this did; rare: a payment's events after its reversal
    usually change nothing, and follow nothing). Not on MySQL/MariaDB, whose ``UPDATE``
    returns no rows.
    """
    Commission = models.Commission
    table = Commission.__table__

    def build() -> Any:
        unreversed = sa.or_(table.c.amount != 0, table.c.status != REVERSED)
        return (
            sa.update(table)
            .where(table.c.transaction_id == sa.bindparam("b_transaction_id"), unreversed)
            .values(
                amount=0,
                status=REVERSED,
                updated_at=sa.bindparam("now"),
                reversed_at=sa.bindparam("now"),
                product_key=sa.bindparam("b_product_key", type_=sa.String()),
            )
            .returning(*table.columns)
        )

    statement = cached_statement((table, "reverse"), build)
    parameters = {
        "b_transaction_id": transaction.id,
        "now": utcnow(),
        "b_product_key": transaction.product_key,
    }
    row = session.connection().execute(statement, parameters).first()
    if row is None:
        return None
    instance = loaded(session, Commission, row, attach=False)
    return _signalled(signals.commission_reversed, instance, transaction, event)


def _create_for_partner_statement(session: Session, models: Models) -> Any:
    table, customer = models.Commission.__table__, models.Customer.__table__
    locking = dialect_name(session) == "postgresql"

    def build() -> Any:
        given = [name for name in _COMMISSION_FIELDS if name != "partner_key"]
        payer: Any = sa.select(customer.c.partner_key).where(
            customer.c.id == sa.bindparam("customer_id")
        )
        if locking:
            # Shared, whatever its partner: a condition on the partner would skip a row
            # whose partner is being given by a transaction not committed yet, not wait.
            payer = payer.with_for_update(read=True)
        payer = payer.cte("payer")
        row = sa.select(
            *(sa.bindparam(name, type_=table.c[name].type) for name in given),
            payer.c.partner_key,
        ).where(payer.c.partner_key.is_not(None), payer.c.partner_key != "")
        return insert_on_conflict(
            session, table, row, columns=[*given, "partner_key"],
            keys=[table.c.transaction_id], whole_row=True,
        )  # fmt: skip

    return cached_statement((table, "create for partner", locking), build)


def _create_statement(session: Session, table: Any) -> Any:
    return cached_statement(
        (table, "create"),
        lambda: insert_on_conflict(
            session,
            table,
            {name: sa.bindparam(name) for name in _COMMISSION_FIELDS},
            keys=[table.c.transaction_id],
            whole_row=True,
        ),
    )


_COMMISSION_FIELDS = (
    "transaction_id", "customer_id", "partner_key", "product_key", "amount", "currency",
    "paid_amount", "status", "created_at", "updated_at",
)  # fmt: skip


def follow_customer(
    session: Session,
    models: Models,
    rules: Sequence[Rule],
    customer: Any,
    new_with: Sequence[Any] | None = None,
    *,
    attached: bool = False,
) -> Notifications:
    """Give commissions to ``customer``'s standing payments that have none: its orphans
    just attached, or all of them when it has just got its partner. Usually none.

    ``new_with``: the customer was created in this transaction and was given these
    standing payments (its orphans, locked by the attaching): they are all it has, so
    they are followed without looking for others.

    ``attached``: this transaction attached orphans to the (known) customer. Under a
    ``months`` rule an orphan older than its known payments moves the customer's first
    payment back, and with it every later payment's month: then all its standing
    payments are followed again, so the commissions do not depend on which came first.
    """
    if not rules or not customer.partner_key:
        return []
    if new_with is not None:
        payments = sorted(new_with, key=lambda each: each.id)  # the lock order
    else:
        recount = attached and any(rule.months is not None for rule in rules)
        payments = _standing(session, models, customer, every=recount)
        if recount:
            _lock_commissions(session, models, customer)
    notifications: Notifications = []
    for transaction in payments:
        notifications += follow_payment(session, models, rules, transaction)
    return notifications


def _lock_commissions(session: Session, models: Models, customer: Any) -> None:
    """Lock ``customer``'s commissions in id order, the order approving and paying them
    lock them in: following its payments one by one would lock them in payment order,
    which differs once an older payment's commission came later (a deadlock with
    ``payouts export``)."""
    table = models.Commission.__table__
    statement = cached_statement(
        (table, "lock for customer"),
        lambda: (
            sa.select(table.c.id)
            .where(table.c.customer_id == sa.bindparam("customer_id"))
            .order_by(table.c.id)
            .with_for_update()
        ),
    )
    session.connection().execute(statement, {"customer_id": customer.id}).all()


def _standing(session: Session, models: Models, customer: Any, *, every: bool) -> list[Any]:
    """``customer``'s standing payments that have no commission (``every``: all of its
    standing payments), locked, in id order."""
    Transaction, Commission = models.Transaction, models.Commission
    table = Transaction.__table__

    def build() -> Any:
        standing = [
            table.c.customer_id == sa.bindparam("customer_id"),
            table.c.deleted_at.is_(None),
        ]
        if not every:
            commission = Commission.__table__
            standing.append(~sa.exists().where(commission.c.transaction_id == table.c.id))
        return sa.select(*table.columns).where(*standing).order_by(table.c.id).with_for_update()

    statement = cached_statement((table, "standing", every), build)
    rows = session.connection().execute(statement, {"customer_id": customer.id}).all()
    return [loaded(session, Transaction, row, attach=False) for row in rows]


def _notify(context: EventContext, notifications: Notifications) -> None:
    for signal, kwargs in notifications:
        context.notify(signal, **{k: v for k, v in kwargs.items() if k != "event"})


def follow(
    context: EventContext, transaction: Any, *, expect_known: bool = False, new: bool = False
) -> None:
    """:func:`follow_payment` inside a webhook event: its signals go out after the commit."""
    rewards = context.settings.rewards
    notifications = follow_payment(
        context.session, context.models, rewards, transaction, expect_known=expect_known,
        new=new,
    )  # fmt: skip
    _notify(context, notifications)


def follow_customer_in(
    context: EventContext,
    customer: Any,
    new_with: Sequence[Any] | None = None,
    *,
    attached: bool = False,
) -> None:
    """:func:`follow_customer` inside a webhook event."""
    notifications = follow_customer(
        context.session, context.models, context.settings.rewards, customer, new_with,
        attached=attached,
    )  # fmt: skip
    _notify(context, notifications)


def approve(
    session: Session, models: Models, *, hold_days: int, now: datetime | None = None
) -> list[Any]:
    """Approve the pending commissions created at least ``hold_days`` ago; the approved."""
    Commission = models.Commission
    now = now or utcnow()
    rows = list(
        session.scalars(
            sa.select(Commission)
            .where(
                Commission.status == PENDING,
                Commission.created_at <= now - timedelta(days=hold_days),
            )
            .order_by(Commission.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    )
    approved = []
    for commission in rows:
        if commission.status != PENDING:  # changed while we waited for its lock
            continue
        commission.approved_at = now
        commission.status = status_of(commission)
        commission.updated_at = now
        approved.append(commission)
    session.flush()
    return approved


def list_commissions(
    session: Session, models: Models, *, partner_key: str | None = None, status: str | None = None
) -> list[Any]:
    Commission = models.Commission
    statement = sa.select(Commission).order_by(Commission.created_at, Commission.id)
    if partner_key is not None:
        statement = statement.where(Commission.partner_key == partner_key)
    if status is not None:
        statement = statement.where(Commission.status == status)
    return list(session.scalars(statement))


def counted_mode(
    session: Session, models: Models, settings: Settings, livemode: bool | None
) -> bool:
    """The mode whose payments a payout pays and a partner summary counts: ``livemode``
    if given, else the app's (``LIVEMODE``, or the ``API_KEY``'s). When neither says it,
    live once the app has a live payment (only live money is real; a live-only app that
    set neither still pays its partners), else test (a development app on test events).
    """
    if livemode is not None:
        return livemode
    if settings.mode_known:
        return settings.livemode
    Transaction = models.Transaction
    live = sa.select(Transaction.id).where(Transaction.livemode.is_(True)).limit(1)
    return session.scalar(live) is not None


def partner_summary(
    session: Session,
    models: Models,
    partner_key: str,
    *,
    livemode: bool,
    since: datetime | None = None,
) -> dict[str, Any]:
    """A partner's customers, payments and commissions in one mode (``livemode``), for a
    host's partner page.

    ``payments``: ``{currency: {"count": n, "amount": total}}`` of standing payments.
    ``commissions``: ``{status: {currency: amount}}``; ``due``: ``{currency: amount}``
    the next payout (of that mode) would pay (clawbacks netted).
    """
    Customer, Transaction, Commission = models.Customer, models.Transaction, models.Commission
    customers = sa.select(sa.func.count()).where(
        Customer.partner_key == partner_key, Customer.livemode == livemode
    )
    payments = (
        sa.select(Transaction.currency, sa.func.count(), sa.func.sum(Transaction.amount))
        .join(Customer, Transaction.customer_id == Customer.id)
        .where(
            Customer.partner_key == partner_key,
            Transaction.deleted_at.is_(None),
            Transaction.livemode == livemode,
        )
        .group_by(Transaction.currency)
    )
    in_mode = sa.select(Transaction.id).where(Transaction.livemode == livemode)
    commissions = sa.select(Commission).where(
        Commission.partner_key == partner_key, Commission.transaction_id.in_(in_mode)
    )
    if since is not None:
        customers = customers.where(Customer.created_at >= since)
        payments = payments.where(Transaction.created_at >= since)
        commissions = commissions.where(Commission.created_at >= since)
    by_status: dict[str, dict[str, int]] = {}
    due: dict[str, int] = {}
    for commission in session.scalars(commissions):
        amounts = by_status.setdefault(commission.status, {})
        # A reversed commission counts what it had earned before; paid counts what was paid.
        shown = commission.paid_amount if commission.status == PAID else commission.amount
        amounts[commission.currency] = amounts.get(commission.currency, 0) + shown
        if commission.due:
            due[commission.currency] = due.get(commission.currency, 0) + commission.due
    return {
        "partner_key": partner_key,
        "customers": session.scalar(customers) or 0,
        "payments": {
            currency: {"count": count, "amount": int(total or 0)}
            for currency, count, total in session.execute(payments)
        },
        "commissions": by_status,
        "due": due,
    }


def _aware(value: datetime) -> datetime:
    """SQLite gives naive datetimes back: they are UTC."""
    from datetime import timezone

    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
