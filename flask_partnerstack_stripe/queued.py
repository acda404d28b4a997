"""Queued processing without Celery: applying a stored event as a worker, finding lost ones.

The tasks (``tasks.py``) and ``flask partnerstack sweep`` call these; nothing here
imports Celery.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa

from .models import utcnow
from .status import Status

if TYPE_CHECKING:
    from .extension import State


class EventFailed(Exception):
    """Applying a stored event failed: it is stored as failed, and Celery retries the task."""


def apply_stored(state: State, event_id: str) -> str:
    """Apply the stored event ``event_id`` through the receive pipeline, as a worker.

    Raises :class:`EventFailed` when applying it failed (it is stored as failed).
    """
    WebhookEvent = state.models.WebhookEvent
    session = state.db.session()
    row = session.execute(
        sa.select(WebhookEvent.payload, WebhookEvent.stripe_account_id).where(
            WebhookEvent.stripe_event_id == event_id
        )
    ).first()
    session.rollback()
    if row is None or row.payload is None:
        return "missing"
    event = json.loads(row.payload)
    outcome = state.receiver.run(
        session, event, row.payload, stripe_account_id=row.stripe_account_id, worker=True
    )
    if outcome.status == Status.FAILED:
        raise EventFailed(f"Stripe event {event_id}: {outcome.reason}")
    return outcome.status


def received_before(state: State, age: timedelta) -> list[str]:
    """The ids of events stored as received more than ``age`` ago (their message was lost)."""
    WebhookEvent = state.models.WebhookEvent
    session = state.db.session()
    ids = list(
        session.scalars(
            sa.select(WebhookEvent.stripe_event_id)
            .where(
                WebhookEvent.status == Status.RECEIVED, WebhookEvent.received_at < utcnow() - age
            )
            .order_by(WebhookEvent.id)
        )
    )
    session.rollback()
    return ids
