"""Server-side signup tracking: record a customer when it signs up, with its partner."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from blinker import NamedSignal
from sqlalchemy.orm import Session

from . import commissions, customers, locks, signals
from .customers import Party
from .rewards import Rule
from .values import EMAIL_LENGTH, METADATA_LENGTH, NAME_LENGTH, STRIPE_ID, argument

Notifications = list[tuple[NamedSignal, dict[str, Any]]]


def record_signup(
    session: Session,
    models: Any,
    party: Party,
    *,
    partner_key: str | None,
    name: str | None,
    match_email: bool,
    rewards: Sequence[Rule] = (),
) -> tuple[Any, Notifications]:
    """Create the customer, or fill in a known one; the customer and the signals to send.

    A customer that already has a partner keeps it: attribution is never moved.
    """
    locks.lock(session, *locks.party_lock_names(party))
    customer, created = customers.create_customer(
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
    attached = customers.attach_orphans(session, models, customer, match_email=match_email)
    for transaction in attached:
        notifications.append(
            (signals.transaction_updated, {"transaction": transaction, "event": None})
        )
    # Commissions for its payments: the orphans just attached, or all if it got its partner.
    notifications += commissions.follow_customer(
        session, models, rewards, customer, attached=bool(attached)
    )
    return customer, notifications


def signup_party(customer_key: Any, email: Any, *, stripe_account_id: Any, livemode: Any) -> Party:
    """Who signed up, from ``create_customer``'s arguments, each checked where it enters.

    A wrong type, a control character (NUL included), a blank or a value longer than
    its column raises :class:`ValueError` naming the argument: nothing is ever cut.
    """
    key = argument("customer_key", customer_key, METADATA_LENGTH, optional=False)
    if stripe_account_id is not None and not (
        isinstance(stripe_account_id, str)
        and stripe_account_id.startswith("acct_")
        and STRIPE_ID.fullmatch(stripe_account_id)
    ):
        raise ValueError("stripe_account_id must be a Stripe account id (acct_...) or None.")
    if not isinstance(livemode, bool):
        raise ValueError(f"livemode must be True, False or None, got {livemode!r}.")
    return Party(
        stripe_account_id=stripe_account_id,
        livemode=livemode,
        customer_key=key,
        email=argument("email", email, EMAIL_LENGTH, email=True),
    )


def signup_details(partner_key: Any, name: Any) -> tuple[str | None, str | None]:
    """``create_customer``'s ``partner_key`` and ``name``, checked like :func:`signup_party`."""
    return (
        argument("partner_key", partner_key, METADATA_LENGTH),
        argument("name", name, NAME_LENGTH),
    )
