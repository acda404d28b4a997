"""Connected Stripe accounts: installed, uninstalled, and what each one records."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .database import is_mysql
from .models import Models, utcnow
from .upserts import insert_loading, insert_on_conflict

#: Printable ASCII, as long as the column: what ``create_endpoint`` makes (40 hex digits).
ENDPOINT_ID = re.compile(r"[\x21-\x7e]{1,64}")


def uninstall(session: Session, models: Models, stripe_account_id: str, livemode: bool) -> Any:
    """Mark the account uninstalled in ``livemode``; return it if it was installed, else None.

    An account never seen before is stored as uninstalled, so its later events
    are ignored all the same. The other mode's installation is left alone.
    """
    StripeAccount = models.StripeAccount
    now = utcnow()
    installed = sa.and_(
        StripeAccount.stripe_account_id == stripe_account_id,
        StripeAccount.livemode == livemode,
        StripeAccount.uninstalled_at.is_(None),
    )
    if is_mysql(session):  # no UPDATE ... RETURNING: lock the row, then update it
        uninstalled = session.scalar(
            sa.select(StripeAccount)
            .where(installed)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if uninstalled is not None:
            uninstalled.uninstalled_at = now
            session.flush()
    else:
        uninstalled = session.scalar(
            sa.update(StripeAccount)
            .where(installed)
            .values(uninstalled_at=now)
            .returning(StripeAccount)
            .execution_options(synchronize_session=False)
        )
    if uninstalled is None:
        session.execute(
            insert_on_conflict(
                session,
                StripeAccount.__table__,
                {
                    "stripe_account_id": stripe_account_id,
                    "livemode": livemode,
                    "installed_at": now,
                    "uninstalled_at": now,
                },
            )
        )
    return uninstalled


def install(
    session: Session,
    models: Models,
    stripe_account_id: str,
    livemode: bool,
    *,
    scope: str | None = None,
    access_token: str | None = None,
    refresh_token: str | None = None,
) -> Any:
    """Store the account as installed in ``livemode`` (again, if it was uninstalled).

    A reinstalled account keeps its settings, customers and transactions.
    """
    StripeAccount = models.StripeAccount
    now = utcnow()
    granted = {"scope": scope, "access_token": access_token, "refresh_token": refresh_token}
    table = StripeAccount.__table__
    statement = insert_on_conflict(
        session,
        table,
        {
            "stripe_account_id": stripe_account_id,
            "livemode": livemode,
            "installed_at": now,
            **granted,
        },
        keys=[table.c.stripe_account_id, table.c.livemode],
        update=lambda excluded: {"installed_at": now, "uninstalled_at": None, **granted},
        whole_row=True,
    )
    return insert_loading(session, StripeAccount, statement)


def find_account(session: Session, models: Models, stripe_account_id: str, livemode: bool) -> Any:
    StripeAccount = models.StripeAccount
    return session.scalar(
        sa.select(StripeAccount).where(
            StripeAccount.stripe_account_id == stripe_account_id,
            StripeAccount.livemode == livemode,
        )
    )


def set_endpoint(
    session: Session,
    models: Models,
    stripe_account_id: str,
    livemode: bool,
    endpoint_id: str,
    signing_secret: str | None,
    *,
    reactivate: bool,
) -> Any:
    """Give the account (created if new) a manual webhook endpoint; replaces an older one.

    ``reactivate``: a new endpoint connects the account again if it was uninstalled, as
    reinstalling does; otherwise every event it brings would be ignored.
    """
    StripeAccount = models.StripeAccount
    now = utcnow()
    endpoint = {"endpoint_id": endpoint_id, "endpoint_secret": signing_secret}
    table = StripeAccount.__table__
    statement = insert_on_conflict(
        session,
        table,
        {
            "stripe_account_id": stripe_account_id,
            "livemode": livemode,
            "installed_at": now,
            **endpoint,
        },
        keys=[table.c.stripe_account_id, table.c.livemode],
        update=lambda excluded: {**endpoint, **(_reactivation(table, now) if reactivate else {})},
        whole_row=True,
    )
    return insert_loading(session, StripeAccount, statement)


def _reactivation(table: sa.Table, now: datetime) -> dict[str, Any]:
    """An uninstalled account installed again now; an active one keeps its install date.
    ``installed_at`` first: MySQL assigns in order, and its condition reads the old value."""
    return {
        "installed_at": sa.case(
            (table.c.uninstalled_at.is_(None), table.c.installed_at), else_=now
        ),
        "uninstalled_at": None,
    }


def find_endpoint(session: Session, models: Models, endpoint_id: Any) -> Any:
    """The account whose manual endpoint is ``endpoint_id``, or None.

    An id ``create_endpoint`` could not have made (NUL, non-ASCII, too long) is
    unknown without asking the database, which may refuse to compare it at all
    (PostgreSQL and NUL).
    """
    if not isinstance(endpoint_id, str) or not ENDPOINT_ID.fullmatch(endpoint_id):
        return None
    StripeAccount = models.StripeAccount
    return session.scalar(sa.select(StripeAccount).where(StripeAccount.endpoint_id == endpoint_id))
