"""Locks that serialize the transactions naming the same customer.

PostgreSQL: transaction-scoped advisory locks. MySQL/MariaDB: named locks
(``GET_LOCK``), which belong to the connection, not the transaction: they are
released when the connection goes back to the pool, right after our commit or
rollback (and by the server if the connection dies). SQLite needs none:
``BEGIN IMMEDIATE`` (``transactions.UnitOfWork``) lets one writer in at a time.
"""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .customers import Party
from .database import MYSQL
from .transactions import listen_once

#: How long a MySQL transaction waits for another naming the same customer (seconds).
MYSQL_LOCK_TIMEOUT = 30
_HELD = "partnerstack_stripe.named_locks"


def lock(session: Session, *names: str | None) -> bool:
    """Serialize, until commit, the transactions that name any of ``names``.

    False when there is nothing to lock: SQLite's BEGIN IMMEDIATE already lets one
    writer in at a time.
    """
    dialect = session.get_bind().dialect.name
    if dialect in MYSQL:
        _mysql_lock(session, names)
        return True
    if dialect != "postgresql":
        return False
    keys = _advisory_keys(names)
    if keys:
        # SELECT list items are evaluated in order, so the locks are taken in key order.
        locks = ", ".join(["pg_advisory_xact_lock(%s)"] * len(keys))
        session.connection().exec_driver_sql(f"SELECT {locks}", tuple(keys))
    return True


def advisory_keys(session: Session, *names: str | None) -> list[int] | None:
    """The PostgreSQL advisory lock keys of ``names``, in the order :func:`lock` takes them;
    None on other databases (for :func:`locking_null`)."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    return _advisory_keys(names)


def _advisory_keys(names: tuple[str | None, ...]) -> list[int]:
    return sorted({_lock_key(name) for name in names if name})  # one order: no deadlocks


def locking_null(count: int) -> Any:
    """An expression that takes ``count`` advisory locks, the keys ``lock_0`` ... in order,
    and is NULL: for a statement that locks only when it needs to (``COALESCE(found, this)``
    evaluates it only when nothing was found), before it writes anything."""
    taken = sa.select(
        *(sa.func.pg_advisory_xact_lock(sa.bindparam(f"lock_{n}")) for n in range(count))
    ).subquery("taken")
    return sa.select(sa.cast(sa.null(), sa.Integer)).select_from(taken).scalar_subquery()


def _mysql_lock(session: Session, names: tuple[str | None, ...]) -> None:
    # Lock names are at most 64 characters: a digest of the name, in one order.
    keys = sorted({"psk:" + _digest(name) for name in names if name})
    if not keys:
        return
    connection = session.connection()
    engine = connection.engine
    listen_once(engine.pool, "checkin", _release_named_locks)
    record = connection.connection._connection_record
    if record is not None:
        record.info[_HELD] = True
    # One round trip; the SELECT list is evaluated in order, so the locks are taken in order.
    statement = "SELECT " + ", ".join(["GET_LOCK(%s, %s)"] * len(keys))
    parameters = tuple(value for key in keys for value in (key, MYSQL_LOCK_TIMEOUT))
    got = connection.exec_driver_sql(statement, parameters).one()
    if any(value != 1 for value in got):
        # Those taken are released with the others when the connection is checked in.
        raise TimeoutError(f"Waited {MYSQL_LOCK_TIMEOUT}s for a customer lock")


def _release_named_locks(dbapi_connection: Any, record: Any) -> None:
    """Release our named locks as the connection goes back to the pool (before reuse)."""
    if dbapi_connection is None or not record.info.pop(_HELD, False):
        return
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("DO RELEASE_ALL_LOCKS()")
        finally:
            cursor.close()
    except Exception:
        # Closing the connection is what releases them then: never hand it out again.
        record.invalidate()


def _digest(name: str) -> str:
    return hashlib.blake2b(name.encode(), digest_size=16).hexdigest()


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
