"""Queued processing without Celery: applying a stored event as a worker, finding lost ones.

The tasks (``tasks.py``) and ``flask partnerstack sweep`` call these; nothing here
imports Celery.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa

from .models import utcnow
from .redaction import error_line
from .status import Status

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from .extension import State

log = logging.getLogger("flask_partnerstack_stripe")


class EventFailed(Exception):
    """Applying a stored event failed: it is stored as failed, and Celery retries the task."""


def apply_stored(state: State, event_id: str) -> str:
    """Apply the stored event ``event_id`` through the receive pipeline, as a worker.

    Raises :class:`EventFailed` when applying it failed (it is stored as failed), and
    when the database failed before the pipeline began: its connection was lost (a
    restart), or it could not be reached. The task then retries, as for any failure.
    """
    WebhookEvent = state.models.WebhookEvent
    session = state.db.session()
    try:
        row = session.execute(
            sa.select(WebhookEvent.payload, WebhookEvent.stripe_account_id).where(
                WebhookEvent.stripe_event_id == event_id
            )
        ).first()
        session.rollback()
    except sa.exc.SQLAlchemyError as error:
        # Before the pipeline's own error handling: end the session's transaction, which
        # gives its connection back (a lost one is discarded, with the pool's other
        # connections from before the loss), so this and the retry get fresh ones.
        session.rollback()
        _record_failure(state, session, event_id, error)
        raise EventFailed(f"Stripe event {event_id}: {error_line(error)}") from error
    if row is None or row.payload is None:
        return "missing"
    event = json.loads(row.payload)
    outcome = state.receiver.run(
        session, event, row.payload, stripe_account_id=row.stripe_account_id, worker=True
    )
    if outcome.status == Status.FAILED:
        raise EventFailed(f"Stripe event {event_id}: {outcome.reason}")
    return outcome.status


def _record_failure(state: State, session: Session, event_id: str, error: BaseException) -> None:
    """Store the received event as failed with ``error``, if the database answers now.

    Only a received (or failed) row changes: a copy another worker applied meanwhile
    stays processed, and the claim still takes a failed one over on the retry. A
    database still down leaves it received: the retry, or else the sweep, applies it.
    """
    WebhookEvent = state.models.WebhookEvent
    log.error("Reading Stripe event %s failed: %s", event_id, error_line(error))
    try:
        with state.receiver.unit_of_work(session):
            session.execute(
                sa.update(WebhookEvent)
                .where(
                    WebhookEvent.stripe_event_id == event_id,
                    WebhookEvent.status.in_((Status.RECEIVED, Status.FAILED)),
                )
                .values(status=Status.FAILED, error=error_line(error))
            )
    except sa.exc.SQLAlchemyError as again:
        log.warning("Could not store Stripe event %s as failed: %s", event_id, error_line(again))


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
