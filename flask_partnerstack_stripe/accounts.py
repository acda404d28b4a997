"""Connected Stripe accounts: installed, uninstalled, and what each one records."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .database import upsert
from .models import Models, utcnow


def uninstall(session: Session, models: Models, stripe_account_id: str, livemode: bool) -> Any:
    """Mark the account uninstalled in ``livemode``; return it if it was installed, else None.

    An account never seen before is stored as uninstalled, so its later events
    are ignored all the same. The other mode's installation is left alone.
    """
    StripeAccount = models.StripeAccount
    now = utcnow()
    uninstalled = session.scalar(
        sa.update(StripeAccount)
        .where(
            StripeAccount.stripe_account_id == stripe_account_id,
            StripeAccount.livemode == livemode,
            StripeAccount.uninstalled_at.is_(None),
        )
        .values(uninstalled_at=now)
        .returning(StripeAccount)
        .execution_options(synchronize_session=False)
    )
    if uninstalled is None:
        session.execute(
            upsert(session, StripeAccount)
            .values(
                stripe_account_id=stripe_account_id,
                livemode=livemode,
                installed_at=now,
                uninstalled_at=now,
            )
            .on_conflict_do_nothing()
        )
    return uninstalled
