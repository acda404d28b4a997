"""Advisory locks that serialize the transactions naming the same customer (PostgreSQL).

SQLite needs none: ``BEGIN IMMEDIATE`` (``database.UnitOfWork``) lets one writer in
at a time.
"""

from __future__ import annotations

import hashlib

from sqlalchemy.orm import Session

from .customers import Party


def lock(session: Session, *names: str | None) -> bool:
    """Serialize, until commit, the transactions that name any of ``names`` (PostgreSQL).

    False when there is nothing to lock: SQLite's BEGIN IMMEDIATE already lets one
    writer in at a time.
    """
    if session.get_bind().dialect.name != "postgresql":
        return False
    keys = sorted({_lock_key(name) for name in names if name})  # one order: no deadlocks
    if keys:
        # SELECT list items are evaluated in order, so the locks are taken in key order.
        locks = ", ".join(["pg_advisory_xact_lock(%s)"] * len(keys))
        session.connection().exec_driver_sql(f"SELECT {locks}", tuple(keys))
    return True


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
