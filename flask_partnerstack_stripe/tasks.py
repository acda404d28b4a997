"""The extension's Celery tasks, registered on the host's own Celery app by ``init_celery``.

The only module that imports Celery; nothing imports it but ``init_celery``. Each task
works in the Flask app's context: the host's Celery app pushes it (Flask's documented
``FlaskTask`` pattern), or, when it does not, the task pushes the one app the extension
was set up on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from celery import Celery
from flask import current_app, has_app_context

from .queued import EventFailed, apply_stored, received_before

if TYPE_CHECKING:
    from .extension import PartnerStackStripe, State

log = logging.getLogger("flask_partnerstack_stripe")

APPLY_EVENT = "partnerstack.apply_event"
#: Several events in one message: what the webhook's publisher sends for a burst.
APPLY_EVENTS = "partnerstack.apply_events"
DELIVER_SIGNALS = "partnerstack.deliver_signals"
SWEEP = "partnerstack.sweep"

#: Publishing a message from the webhook: one quick retry, then the event is left received
#: for the sweep (a broker that is down must not hold up Stripe's request).
PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}


@dataclass
class Tasks:
    """The tasks ``init_celery`` registered, and how the webhook enqueues events."""

    apply_event: Any
    deliver_signals: Any
    sweep: Any
    apply_events: Any

    def enqueue(self, event_id: str) -> None:
        self.apply_event.apply_async((event_id,), retry=True, retry_policy=PUBLISH_RETRY_POLICY)

    def enqueue_many(self, event_ids: Sequence[str]) -> None:
        """One message for them all: a Celery publish costs about a millisecond of CPU
        each, whatever it carries. One id is an ordinary ``apply_event`` message."""
        if len(event_ids) == 1:
            self.enqueue(event_ids[0])
            return
        self.apply_events.apply_async(
            (list(event_ids),), retry=True, retry_policy=PUBLISH_RETRY_POLICY
        )


def register(
    celery_app: Celery,
    extension: PartnerStackStripe,
    *,
    retry_backoff: int,
    max_retries: int,
    beat: bool,
) -> Tasks:
    """Register the three tasks on ``celery_app`` (see ``PartnerStackStripe.init_celery``)."""

    @celery_app.task(
        name=APPLY_EVENT,
        # Acknowledged once done, and given back to the broker when the worker dies:
        # an event is applied by a worker that finished, never lost with one that died.
        acks_late=True,
        reject_on_worker_lost=True,
        autoretry_for=(EventFailed,),
        retry_backoff=retry_backoff,  # seconds, doubled at each retry
        retry_backoff_max=600,
        retry_jitter=True,
        max_retries=max_retries,
        ignore_result=True,
    )
    def apply_event(event_id: str) -> str:
        with _app_context(extension) as state:
            return apply_stored(state, event_id)

    @celery_app.task(
        name=APPLY_EVENTS, acks_late=True, reject_on_worker_lost=True, ignore_result=True
    )
    def apply_events(event_ids: list[str]) -> dict[str, int]:
        # Each event as apply_event would, one after the other; a worker that dies midway
        # gets the message back, and the events it applied already are duplicates then.
        counts: dict[str, int] = {}
        for event_id in event_ids:
            with _app_context(extension) as state:
                try:
                    status = apply_stored(state, event_id)
                except Exception as error:
                    # Retried on its own, with apply_event's backoff and retries.
                    status = "retrying"
                    log.warning("Stripe event %s: %s; retrying it alone.", event_id, error)
                    apply_event.apply_async((event_id,), countdown=retry_backoff)
                finally:
                    # A fresh session per event, as each apply_event task gets.
                    state.db.session.remove()
            counts[status] = counts.get(status, 0) + 1
        return counts

    @celery_app.task(name=DELIVER_SIGNALS, ignore_result=True)
    def deliver_signals() -> dict[str, int]:
        with _app_context(extension) as state:
            result = state.receiver.deliver_stored(state.db.session(), due_only=True)
            return {"delivered": result.delivered, "failed": result.failed, "dead": result.dead}

    @celery_app.task(name=SWEEP, ignore_result=True)
    def sweep() -> int:
        with _app_context(extension) as state:
            stale = received_before(state, timedelta(seconds=state.settings.sweep_after))
            for event_id in stale:
                apply_event.apply_async((event_id,))
            return len(stale)

    if beat:
        schedule = celery_app.conf.beat_schedule or {}
        schedule.setdefault("partnerstack-sweep", {"task": SWEEP, "schedule": 60.0})
        schedule.setdefault(
            "partnerstack-deliver-signals", {"task": DELIVER_SIGNALS, "schedule": 30.0}
        )
        celery_app.conf.beat_schedule = schedule
    return Tasks(apply_event, deliver_signals, sweep, apply_events)


@contextmanager
def _app_context(extension: PartnerStackStripe) -> Iterator[State]:
    from .extension import get_state

    if has_app_context():
        yield get_state(current_app)
        return
    app = extension.only_app()
    with app.app_context():
        yield get_state(app)
