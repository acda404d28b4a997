"""Customers, race-free: find one by how a Stripe object names it, create, unlink, attach.

Every write is a single statement the database arbitrates (``INSERT ... ON
CONFLICT``, ``UPDATE ... WHERE``), so two workers applying events about the same
object at the same moment cannot both win. Where a rule needs two statements, the
object's advisory lock is taken first (``locks.py``). Payments are ``payments.py``'s.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .database import MYSQL, dialect_name
from .models import Models, account_scope, utcnow
from .rows import loaded
from .statements import cached_statement
from .transactions import READ_COMMITTED
from .upserts import insert_loading, insert_on_conflict


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


@dataclass(frozen=True)
class Created:
    """A customer :func:`insert_customer` inserted."""

    customer: Any
    #: Its standing transactions recorded before it was known (:func:`attach_orphans`),
    #: when the INSERT attached them itself; None when that is still to do.
    attached: list[Any] | None = None


def find_customer(
    session: Session,
    models: Models,
    party: Party,
    *,
    match_email: bool,
    load: bool = True,
    payment: bool = False,
) -> Any:
    """The known customer ``party`` names, in the order of :func:`payer_routes`.

    One query: each way of naming reads its own index, and the best match wins.
    ``load=False`` reads only its ``id`` and ``stripe_customer_id``, without the ORM:
    recording a payment needs no more. ``payment``: ``party`` is a payment's payer.
    """
    routes = payer_routes(party, match_email=match_email, payment=payment)
    if not routes:
        return None
    table = models.Customer.__table__
    names = tuple(routes)
    statement = cached_statement(
        (table, "find", names, load, payment),
        lambda: _find_statement(table, names, load, payment=payment),
    )
    values = {"scope": party.scope, "livemode": party.livemode, **routes}
    if load and session.autoflush:
        session.flush()  # what an ORM query does first: it sees the session's changes
    found = session.connection().execute(statement, values).first()
    if found is None or not load:
        return found
    return loaded(session, models.Customer, found)


def _find_statement(table: Any, names: tuple[str, ...], load: bool, *, payment: bool) -> Any:
    in_scope = (
        table.c.account_scope == sa.bindparam("scope"),
        table.c.livemode == sa.bindparam("livemode"),
    )
    # Whole conjunctions in the OR, so that each branch can use its index.
    matches = [sa.and_(*in_scope, table.c[name] == sa.bindparam(name)) for name in names]
    if "email" in names and "stripe_customer_id" in names and not payment:
        # A customer event's email never moves a customer from its Stripe customer to
        # another: a Payment Link's buyer types any email, and would otherwise take over
        # whoever has it. A payment found by email is recorded under that customer (DESIGN
        # 4's order) whatever Stripe customer paid: a customer may have several.
        email = names.index("email")
        matches[email] = sa.and_(matches[email], _no_other_stripe_customer(table, ""))
    rank = sa.case(
        *((table.c[name] == sa.bindparam(name), n) for n, name in enumerate(names)),
        else_=len(names),
    )
    selected = tuple(table.columns) if load else (table.c.id, table.c.stripe_customer_id)
    return sa.select(*selected).where(sa.or_(*matches)).order_by(rank, table.c.id).limit(1)


def _no_other_stripe_customer(table: Any, prefix: str) -> Any:
    """The row has no Stripe customer, or the ``<prefix>stripe_customer_id`` parameter's."""
    stripe_id = table.c.stripe_customer_id
    return sa.or_(stripe_id.is_(None), stripe_id == sa.bindparam(f"{prefix}stripe_customer_id"))


def payer_routes(party: Party, *, match_email: bool, payment: bool = False) -> dict[str, str]:
    """The ways ``party`` names its customer, best first, as :func:`find_customer` reads them
    (the values of its ``customer_key``, ``stripe_customer_id`` and ``email`` parameters).

    A customer event (and a Checkout session) names its customer by customer key first:
    its metadata says whose Stripe customer it is. A payment (``payment``) belongs to the
    Stripe customer who paid: Stripe id first, then the key in its metadata, then email
    (DESIGN 4), so a key in a charge's metadata never moves a known Stripe customer, and
    its later payments, to another customer.
    """
    key, stripe_id = party.customer_key, party.stripe_customer_id
    email = party.email if match_email else None
    if payment:
        routes = {"stripe_customer_id": stripe_id, "customer_key": key, "email": email}
    else:
        routes = {"customer_key": key, "stripe_customer_id": stripe_id, "email": email}
    return {name: value for name, value in routes.items() if value}


def payer_cte(models: Models, names: tuple[str, ...]) -> Any:
    """:func:`find_customer`'s look-up (id and Stripe id) as a CTE named ``payer``, for a
    statement that records a payment and finds its payer at once. Its parameters are
    ``scope``, ``livemode`` and the ``names`` (:func:`payer_routes`)."""
    return _find_statement(models.Customer.__table__, names, load=False, payment=True).cte("payer")


def former_owner(session: Session, models: Models, party: Party) -> int | None:
    """The customer an earlier payment of ``party``'s Stripe customer went to, for a
    payment whose Stripe customer no customer holds any more.

    ``customer.deleted`` unlinks the Stripe id, but Stripe may still be retrying a
    payment of that customer (its webhook failed before the deletion): it is still that
    customer's payment. Asked only when no customer was found; the Stripe id is not
    linked again.
    """
    if party.stripe_customer_id is None:
        return None
    table = models.Transaction.__table__

    def build() -> Any:
        return (
            sa.select(table.c.customer_id)
            .where(
                table.c.stripe_customer_id == sa.bindparam("stripe_customer_id"),
                table.c.account_scope == sa.bindparam("scope"),
                table.c.livemode == sa.bindparam("livemode"),
                table.c.customer_id.is_not(None),
            )
            .order_by(table.c.id.desc())
            .limit(1)
        )

    statement = cached_statement((table, "former-owner"), build)
    values = {
        "stripe_customer_id": party.stripe_customer_id,
        "scope": party.scope,
        "livemode": party.livemode,
    }
    found: int | None = session.connection().execute(statement, values).scalar()
    return found


def find_customer_by_stripe_id(session: Session, models: Models, party: Party) -> Any:
    only_stripe_id = Party(party.stripe_account_id, party.livemode, party.stripe_customer_id)
    return find_customer(session, models, only_stripe_id, match_email=False)


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
    # No other customer holds the Stripe id: looking the customer up found none by it
    # first. One linked meanwhile by another worker makes this INSERT do nothing.
    created = insert_customer(
        session, models, party, partner_key=partner_key, name=name, event_created=event_created
    )
    if created is not None:
        return created.customer, True
    existing = find_customer(session, models, party, match_email=False)
    if existing is None:  # pragma: no cover - a unique key conflicted yet nothing matches
        raise RuntimeError(f"Customer {party.customer_key!r} conflicts but cannot be found")
    return existing, False


def insert_customer(
    session: Session,
    models: Models,
    party: Party,
    *,
    partner_key: str | None,
    name: str | None = None,
    event_created: int | None = None,
    unless_email: bool = False,
    attach: bool | None = None,
) -> Created | None:
    """The customer ``party`` names, inserted; None if its customer key or Stripe id is
    taken (their unique constraints decide), or, with ``unless_email``, a customer with
    its email exists. So a new customer is one statement, without a look-up first.

    ``attach`` (``match_email`` then, as for :func:`attach_orphans`): on PostgreSQL the
    same statement also attaches the transactions recorded before the customer was
    known, a data-modifying CTE: one round trip for what is otherwise two.
    """
    Customer = models.Customer
    assert party.customer_key, "a customer is created only with a customer key"
    guarded = bool(unless_email and party.email)
    dialect = dialect_name(session)
    attaching = attach is not None and dialect == "postgresql"
    names = _attach_names(party.stripe_customer_id, party.customer_key, party.email, attach)
    statement = cached_statement(
        (Customer, "create", dialect, guarded, tuple(names) if attaching else None),
        lambda: _insert_statement(session, models, guarded, tuple(names) if attaching else ()),
    )
    if guarded and session.autoflush:
        session.flush()  # as find_customer does: the host's pending changes count
    now = utcnow()
    # Named c_*: an UPDATE in the same statement (attaching) would take parameters
    # named after its table's columns as values to set.
    values = {
        f"c_{name}": value
        for name, value in (
            ("customer_key", party.customer_key),
            ("email", party.email),
            ("name", name),
            ("partner_key", partner_key),
            ("stripe_customer_id", party.stripe_customer_id),
            ("stripe_account_id", party.stripe_account_id),
            ("account_scope", party.scope),
            ("livemode", party.livemode),
            ("stripe_event_created", event_created),
            ("created_at", now),
            ("updated_at", now),
        )
    }
    if not attaching:
        customer = insert_loading(session, Customer, statement, values)
        return None if customer is None else Created(customer)
    values.update({f"b_{column}": value for column, value in names.items()})
    values["b_now"] = now
    row = session.connection().execute(statement, values).first()
    if row is None:
        return None
    customer = loaded(session, Customer, row[:-1])
    return Created(customer, _load_transactions(session, models.Transaction, list(row[-1])))


def _insert_statement(
    session: Session, models: Models, guarded: bool, attach_names: tuple[str, ...]
) -> Any:
    table = models.Customer.__table__
    values: Any = {name: sa.bindparam(f"c_{name}") for name in _CUSTOMER_FIELDS}
    if guarded:
        # INSERT ... SELECT <the values> WHERE NOT EXISTS (a customer with this email).
        same_email = sa.exists().where(
            table.c.account_scope == sa.bindparam("c_account_scope"),
            table.c.livemode == sa.bindparam("c_livemode"),
            table.c.email == sa.bindparam("c_email"),
        )
        values = sa.select(
            *(sa.bindparam(f"c_{name}", type_=table.c[name].type) for name in _CUSTOMER_FIELDS)
        ).where(~same_email)
    inserting = insert_on_conflict(session, table, values, columns=_CUSTOMER_FIELDS, whole_row=True)
    if not attach_names:
        return inserting
    # WITH created AS (INSERT ... RETURNING *), attached AS (UPDATE the orphans SET
    # customer_id = created.id ... RETURNING id, deleted_at) SELECT created.*, the ids of
    # the standing ones. The UPDATE runs only if the INSERT returned a row.
    created = inserting.cte("created")  # RETURNING id, then every column
    transactions = models.Transaction.__table__
    attached = (
        _attach_statement(transactions, attach_names, union=False, customer=created)
        .cte("attached")
    )  # fmt: skip
    standing = sa.func.array(
        sa.select(attached.c.id)
        .where(attached.c.deleted_at.is_(None))
        .order_by(attached.c.id)
        .scalar_subquery()
    )
    return sa.select(*list(created.c)[1:], standing)


def _attach_names(
    stripe_customer_id: str | None, customer_key: str | None, email: str | None, match_email: Any
) -> dict[str, str]:
    """The transaction columns a customer's orphans are found by, with its values."""
    names = {
        "stripe_customer_id": stripe_customer_id,
        "customer_key": customer_key,
        "customer_email": email if match_email else None,
    }
    return {name: value for name, value in names.items() if value}


_CUSTOMER_FIELDS = (
    "customer_key", "email", "name", "partner_key", "stripe_customer_id", "stripe_account_id",
    "account_scope", "livemode", "stripe_event_created", "created_at", "updated_at",
)  # fmt: skip


def unlink_stripe_id(session: Session, models: Models, party: Party, keep: Any = None) -> bool:
    """Free ``party``'s Stripe customer id from every customer but ``keep`` (it is unique);
    whether a customer held it."""
    Customer = models.Customer
    statement = cached_statement(
        (Customer, "unlink"),
        lambda: (
            sa.update(Customer)
            .where(
                Customer.account_scope == sa.bindparam("b_scope"),
                Customer.livemode == sa.bindparam("b_livemode"),
                Customer.stripe_customer_id == sa.bindparam("b_stripe_customer_id"),
                Customer.id != sa.bindparam("b_keep"),
            )
            .values(stripe_customer_id=None)
            .execution_options(synchronize_session=False)
        ),
    )
    result = session.execute(
        statement,
        {
            "b_scope": party.scope,
            "b_livemode": party.livemode,
            "b_stripe_customer_id": party.stripe_customer_id,
            "b_keep": keep.id if keep is not None else -1,
        },
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def take_stripe_id(session: Session, models: Models, party: Party, customer: Any) -> Any:
    """Free ``party``'s Stripe customer id for ``customer`` (it is unique): the customer
    that held it, its Stripe id now None, for its ``customer_updated``; or None.

    Under the customer locks of ``party``, as every caller is: the holder read here
    is the one the ``UPDATE`` unlinks.
    """
    holder = find_customer_by_stripe_id(session, models, party)
    if holder is None or holder.id == customer.id:
        return None
    if not unlink_stripe_id(session, models, party, keep=customer):
        return None  # a customer.deleted (which takes no customer locks) unlinked it first
    # As it is now (its updated_at moved too), for the signal.
    return session.get(models.Customer, holder.id, populate_existing=True)


def attach_orphans(
    session: Session,
    models: Models,
    customer: Any,
    *,
    match_email: bool,
    of_stripe_id: str | None = None,
) -> list[Any]:
    """Give ``customer`` the transactions recorded before it was known; the standing ones.

    ``of_stripe_id``: only those of that Stripe customer (one whose own customer event
    names this customer's key, but came too late to link it).
    """
    Transaction = models.Transaction
    table = Transaction.__table__
    if of_stripe_id is not None:
        values = _attach_names(of_stripe_id, None, None, False)
    else:
        values = _attach_names(
            customer.stripe_customer_id, customer.customer_key, customer.email, match_email
        )
    columns = tuple(values)
    parameters = {
        **{f"b_{name}": value for name, value in values.items()},
        "b_scope": customer.account_scope,
        "b_livemode": customer.livemode,
        "b_customer_id": customer.id,
        "b_now": utcnow(),
    }
    # Each way of naming must read its own index. PostgreSQL combines the indexes of an
    # OR (a bitmap OR); SQLite's planner would pick the customer_id index for an OR in an
    # UPDATE, so there the ids come from a UNION ALL of one indexed search per name.
    # Core, returning ids: usually there is nothing to attach, and that should cost little.
    dialect = dialect_name(session)
    if dialect in MYSQL:
        rows = _attach_mysql(session, table, columns, parameters)
    else:
        statement = cached_statement(
            (table, "attach", dialect, columns),
            functools.partial(_attach_statement, table, columns, union=dialect == "sqlite"),
        )
        rows = list(session.connection().execute(statement, parameters))
    attached = [row.id for row in rows if row.deleted_at is None]
    return _load_transactions(session, Transaction, attached)


def _load_transactions(session: Session, Transaction: Any, ids: list[int]) -> list[Any]:
    """The transactions ``ids`` as they are now (usually there are none: no query then)."""
    if not ids:
        return []
    return list(
        session.scalars(
            sa.select(Transaction)
            .where(Transaction.id.in_(ids))
            .order_by(Transaction.id)
            .execution_options(populate_existing=True)
        )
    )


def _orphans(
    table: Any, columns: tuple[str, ...], *, union: bool, scope: Any, livemode: Any
) -> Any:
    """The transactions without a customer that ``columns`` name (``b_<column>``
    parameters), in ``scope`` and ``livemode``."""
    in_scope = table.c.account_scope == scope
    named = [sa.and_(table.c[name] == sa.bindparam(f"b_{name}"), in_scope) for name in columns]
    if "customer_email" in columns and "stripe_customer_id" in columns:
        # By email, never an earlier payment of another Stripe customer: the email may be
        # one a buyer typed, and these payments were made before this customer was known.
        email = columns.index("customer_email")
        named[email] = sa.and_(named[email], _no_other_stripe_customer(table, "b_"))
    if union:
        searches = [sa.select(table.c.id).where(condition) for condition in named]
        matching: Any = table.c.id.in_(sa.union_all(*searches))
    else:
        matching = sa.or_(*named)
    return sa.and_(matching, table.c.customer_id.is_(None), table.c.livemode == livemode)


def _attach_statement(
    table: Any, columns: tuple[str, ...], *, union: bool, customer: Any = None
) -> Any:
    """``UPDATE`` the orphans ``columns`` name, giving them ``b_customer_id``; or, given the
    ``customer`` row (a CTE's), its id, in its scope and mode."""
    scope: Any
    livemode: Any
    customer_id: Any
    if customer is None:
        scope, livemode = sa.bindparam("b_scope"), sa.bindparam("b_livemode")
        customer_id = sa.bindparam("b_customer_id")
    else:  # UPDATE ... FROM the CTE: no row there (nothing inserted), nothing updated
        scope, livemode, customer_id = customer.c.account_scope, customer.c.livemode, customer.c.id
    return (
        sa.update(table)
        .where(_orphans(table, columns, union=union, scope=scope, livemode=livemode))
        .values(customer_id=customer_id, updated_at=sa.bindparam("b_now"))
        .returning(table.c.id, table.c.deleted_at)
    )


def _attach_mysql(
    session: Session, table: Any, columns: tuple[str, ...], parameters: dict[str, Any]
) -> list[Any]:
    """:func:`attach_orphans`' ``UPDATE`` on MySQL/MariaDB, which has no ``UPDATE ...
    RETURNING``: the orphans are found, locked, then updated by id. Their
    ``(id, deleted_at)`` rows.

    Found by a plain read, not a locking one: InnoDB's locking read waits on every row
    its index search passes, an uncommitted new payment of this very customer included,
    whose foreign key check waits in turn on the customer row this event has just
    written: a deadlock (a 500). At READ COMMITTED the plain read sees what is
    committed; an orphan being recorded right now is not missed, since its payment's
    look-up waits for this event's customer locks and then finds the customer. Then
    locked through the primary key only (those rows, no others), the condition checked
    again on their newest version. In a transaction the host began at its own level
    (REPEATABLE READ's snapshot may predate an orphan), the locking read as before.
    """
    scope: Any = sa.bindparam("b_scope")
    livemode: Any = sa.bindparam("b_livemode")
    connection = session.connection()
    if not session.info.get(READ_COMMITTED):
        search = cached_statement(
            (table, "attach", "mysql", columns, "locking"),
            lambda: (
                sa.select(table.c.id, table.c.deleted_at)
                .where(_orphans(table, columns, union=False, scope=scope, livemode=livemode))
                .with_for_update()
            ),
        )
        rows = list(connection.execute(search, parameters))
    else:
        search = cached_statement(
            (table, "attach", "mysql", columns),
            lambda: sa.select(table.c.id).where(
                _orphans(table, columns, union=False, scope=scope, livemode=livemode)
            ),
        )
        found = list(connection.execute(search, parameters).scalars())
        if not found:  # usually: one statement then
            return []
        lock = cached_statement(
            (table, "lock orphans", "mysql", columns),
            lambda: (
                sa.select(table.c.id, table.c.deleted_at)
                .where(
                    table.c.id.in_(sa.bindparam("b_ids", expanding=True)),
                    _orphans(table, columns, union=False, scope=scope, livemode=livemode),
                )
                .with_hint(table, "FORCE INDEX (PRIMARY)", "mysql")
                .with_hint(table, "FORCE INDEX (PRIMARY)", "mariadb")
                .order_by(table.c.id)
                .with_for_update()
            ),
        )
        rows = list(connection.execute(lock, {**parameters, "b_ids": found}))
    if rows:
        give = cached_statement(
            (table, "attach by id", "mysql"),
            lambda: (
                sa.update(table)
                .where(table.c.id.in_(sa.bindparam("b_ids", expanding=True)))
                .values(customer_id=sa.bindparam("b_customer_id"), updated_at=sa.bindparam("b_now"))
            ),
        )
        connection.execute(give, {**parameters, "b_ids": [row.id for row in rows]})
    return rows
