"""Reading and writing customers and transactions, race-free.

Every write is a single statement the database arbitrates (``INSERT ... ON
CONFLICT``, ``UPDATE ... WHERE``), so two workers applying events about the same
object at the same moment cannot both win. Where a rule needs two statements, the
object's advisory lock is taken first (PostgreSQL; SQLite runs one writer at a time).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .database import upsert
from .models import Models, account_scope, utcnow


@dataclass(frozen=True)
class Party:
    """Who a Stripe object says its customer is, in one account and mode."""

    stripe_account_id: str | None
    livemode: bool
    stripe_customer_id: str | None = None
    customer_key: str | None = None
    email: str | None = None

    @property
    def scope(self) -> str:
        return account_scope(self.stripe_account_id)


def normal_email(value: Any) -> str | None:
    """Emails are matched (and stored) trimmed and lowercased."""
    email = text(value, 320)
    return email.lower() if email is not None and "@" in email else None


def text(value: Any, limit: int = 255) -> str | None:
    """A string field from Stripe as the database can store it, or None.

    Anything that is not a string, is blank, or holds what no database column takes
    (NUL, lone surrogates) is treated as absent rather than failing the event.
    """
    if not isinstance(value, str) or "\x00" in value:
        return None
    value = value.strip()[:limit]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value or None


def lock(session: Session, *names: str | None) -> None:
    """Serialize, until commit, the transactions that name any of ``names`` (PostgreSQL)."""
    if session.get_bind().dialect.name != "postgresql":
        return  # SQLite: BEGIN IMMEDIATE already lets one writer in at a time.
    keys = sorted({_lock_key(name) for name in names if name})  # one order: no deadlocks
    if keys:
        session.execute(
            sa.select(*(sa.func.pg_advisory_xact_lock(key) for key in keys)).select_from(
                sa.text("(SELECT 1) AS one")
            )
        )


def _lock_key(name: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True
    )


def party_lock_names(party: Party) -> list[str | None]:
    base = f"{party.scope}|{party.livemode}|"
    return [
        party.stripe_customer_id and base + "cus:" + party.stripe_customer_id,
        party.customer_key and base + "key:" + party.customer_key,
        party.email and base + "email:" + party.email,
    ]


def find_customer(session: Session, models: Models, party: Party, *, match_email: bool) -> Any:
    """The known customer ``party`` names: by customer key, then Stripe id, then email."""
    Customer = models.Customer
    in_scope = (Customer.account_scope == party.scope, Customer.livemode == party.livemode)
    routes = [
        (Customer.customer_key, party.customer_key),
        (Customer.stripe_customer_id, party.stripe_customer_id),
        (Customer.email, party.email if match_email else None),
    ]
    for column, value in routes:
        if value:
            found = session.scalar(
                sa.select(Customer).where(*in_scope, column == value).order_by(Customer.id).limit(1)
            )
            if found is not None:
                return found
    return None


def find_customer_by_stripe_id(session: Session, models: Models, party: Party) -> Any:
    Customer = models.Customer
    return session.scalar(
        sa.select(Customer).where(
            Customer.account_scope == party.scope,
            Customer.livemode == party.livemode,
            Customer.stripe_customer_id == party.stripe_customer_id,
        )
    )


def create_customer(
    session: Session,
    models: Models,
    party: Party,
    *,
    partner_key: str | None,
    name: str | None = None,
    event_created: int | None = None,
) -> tuple[Any, bool]:
    """Insert the customer ``party`` names by its key; ``(customer, created)``.

    If the key is already taken (another worker got there first), that customer
    is returned with ``created`` False and nothing is overwritten.
    """
    Customer = models.Customer
    assert party.customer_key, "a customer is created only with a customer key"
    values = {
        "customer_key": party.customer_key,
        "email": party.email,
        "name": name,
        "partner_key": partner_key,
        "stripe_customer_id": party.stripe_customer_id,
        "stripe_account_id": party.stripe_account_id,
        "account_scope": party.scope,
        "livemode": party.livemode,
        "stripe_event_created": event_created,
    }
    if party.stripe_customer_id:
        unlink_stripe_id(session, models, party)
    created = session.scalar(
        upsert(session, Customer).values(**values).on_conflict_do_nothing().returning(Customer)
    )
    if created is not None:
        return created, True
    existing = find_customer(session, models, party, match_email=False)
    if existing is None:  # pragma: no cover - a unique key conflicted yet nothing matches
        raise RuntimeError(f"Customer {party.customer_key!r} conflicts but cannot be found")
    return existing, False


def unlink_stripe_id(session: Session, models: Models, party: Party, keep: Any = None) -> None:
    """Free ``party``'s Stripe customer id from every other customer (it is unique)."""
    Customer = models.Customer
    session.execute(
        sa.update(Customer)
        .where(
            Customer.account_scope == party.scope,
            Customer.livemode == party.livemode,
            Customer.stripe_customer_id == party.stripe_customer_id,
            Customer.id != (keep.id if keep is not None else -1),
        )
        .values(stripe_customer_id=None)
        .execution_options(synchronize_session=False)
    )


def attach_orphans(session: Session, models: Models, customer: Any, *, match_email: bool) -> list:
    """Give ``customer`` the transactions recorded before it was known; the standing ones."""
    Transaction = models.Transaction
    names = [
        (Transaction.stripe_customer_id, customer.stripe_customer_id),
        (Transaction.customer_key, customer.customer_key),
        (Transaction.customer_email, customer.email if match_email else None),
    ]
    attached = []
    # One statement per name rather than one OR: each then reads its own index.
    for column, value in names:
        if value:
            attached += session.scalars(
                sa.update(Transaction)
                .where(
                    column == value,
                    Transaction.account_scope == customer.account_scope,
                    Transaction.customer_id.is_(None),
                    Transaction.livemode == customer.livemode,
                )
                .values(customer_id=customer.id, updated_at=utcnow())
                .returning(Transaction)
                .execution_options(synchronize_session=False)
            ).all()
    return [transaction for transaction in attached if transaction.deleted_at is None]


@dataclass(frozen=True)
class Payment:
    """A payment as the ledger sees it: one Stripe charge or invoice."""

    key: str
    party: Party
    amount: int
    currency: str
    product_key: str | None


def _insert_payment(
    session: Session, models: Models, payment: Payment, customer: Any, **extra: Any
) -> Any:
    """``INSERT`` the payment's row unless its (account, key) is taken."""
    party = payment.party
    return (
        upsert(session, models.Transaction)
        .values(
            key=payment.key,
            customer_id=customer.id if customer is not None else None,
            amount=payment.amount,
            currency=payment.currency,
            product_key=payment.product_key,
            stripe_account_id=party.stripe_account_id,
            account_scope=party.scope,
            livemode=party.livemode,
            stripe_customer_id=party.stripe_customer_id,
            customer_key=party.customer_key,
            customer_email=party.email,
            **extra,
        )
        .on_conflict_do_nothing(index_elements=["account_scope", "key"])
    )


def record_payment(session: Session, models: Models, payment: Payment, customer: Any) -> Any:
    """Insert the payment's transaction; return it if new, else None."""
    statement = _insert_payment(session, models, payment, customer)
    return session.scalar(statement.returning(models.Transaction))


def refresh_payment(session: Session, models: Models, payment: Payment, customer: Any) -> Any:
    """Bring a standing transaction up to date; return it if anything changed, else None.

    The amount only ever goes down (a partial refund under ``prorate``), so an
    older event arriving late cannot raise it again. A deleted one stays deleted.
    """
    Transaction = models.Transaction
    changes = [Transaction.amount > payment.amount]
    values: dict[str, Any] = {
        "amount": sa.func.least(Transaction.amount, payment.amount)
        if session.get_bind().dialect.name == "postgresql"
        else sa.func.min(Transaction.amount, payment.amount),
        "updated_at": utcnow(),
    }
    if customer is not None:
        changes.append(Transaction.customer_id.is_(None))
        values["customer_id"] = sa.func.coalesce(Transaction.customer_id, customer.id)
    if payment.product_key:
        changes.append(Transaction.product_key.is_distinct_from(payment.product_key))
        values["product_key"] = payment.product_key
    return session.scalar(
        sa.update(Transaction)
        .where(
            Transaction.account_scope == payment.party.scope,
            Transaction.key == payment.key,
            Transaction.deleted_at.is_(None),
            sa.or_(*changes),
        )
        .values(**values)
        .returning(Transaction)
        .execution_options(synchronize_session=False)
    )


def delete_payment(session: Session, models: Models, payment: Payment, customer: Any) -> Any:
    """Tombstone the payment's transaction; return it if it was standing, else None.

    When no transaction exists yet, a deleted one is written, so a success that
    arrives after its refund or failure finds the key taken and records nothing.
    Either way it belongs to ``customer`` when that is known, as in natural order.
    """
    Transaction = models.Transaction
    now = utcnow()
    customer_id = customer.id if customer is not None else None
    deleted = session.scalar(
        sa.update(Transaction)
        .where(
            Transaction.account_scope == payment.party.scope,
            Transaction.key == payment.key,
            Transaction.deleted_at.is_(None),
        )
        .values(
            deleted_at=now,
            updated_at=now,
            customer_id=sa.func.coalesce(Transaction.customer_id, customer_id),
        )
        .returning(Transaction)
        .execution_options(synchronize_session=False)
    )
    if deleted is None:
        session.execute(_insert_payment(session, models, payment, customer, deleted_at=now))
    return deleted
