"""Server-side signup tracking: record a customer when it signs up, with its partner."""

from __future__ import annotations

from typing import Any

from blinker import NamedSignal
from sqlalchemy.orm import Session

from . import ledger, signals
from .ledger import Party, normal_email, text

Notifications = list[tuple[NamedSignal, dict[str, Any]]]


def record_signup(
    session: Session,
    models: Any,
    party: Party,
    *,
    partner_key: str | None,
    name: str | None,
    match_email: bool,
) -> tuple[Any, Notifications]:
    """Create the customer, or fill in a known one; the customer and the signals to send.

    A customer that already has a partner keeps it: attribution is never moved.
    """
    ledger.lock(session, *ledger.party_lock_names(party))
    customer, created = ledger.create_customer(
        session, models, party, partner_key=partner_key, name=name
    )
    notifications: Notifications = []
    if created:
        notifications.append((signals.customer_created, {"customer": customer, "event": None}))
    else:
        changed = False
        for field, value in (("email", party.email), ("name", name), ("partner_key", partner_key)):
            if value is not None and getattr(customer, field) is None:
                setattr(customer, field, value)
                changed = True
        if changed:
            session.flush()
            notifications.append((signals.customer_updated, {"customer": customer, "event": None}))
    for transaction in ledger.attach_orphans(session, models, customer, match_email=match_email):
        notifications.append(
            (signals.transaction_updated, {"transaction": transaction, "event": None})
        )
    return customer, notifications


def signup_party(
    customer_key: Any, email: Any, *, stripe_account_id: str | None, livemode: bool
) -> Party:
    key = text(customer_key)
    if key is None:
        raise ValueError("customer_key must be a non-empty string.")
    if email is not None and normal_email(email) is None:
        raise ValueError(f"{email!r} is not an email address.")
    return Party(
        stripe_account_id=stripe_account_id,
        livemode=livemode,
        customer_key=key,
        email=normal_email(email),
    )
