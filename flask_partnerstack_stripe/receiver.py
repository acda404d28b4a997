"""Store a verified event once, apply it, and commit both together.

No Flask here: the receiver works on a SQLAlchemy session, so the webhook view,
the replay command and the testing helpers all share one code path.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from blinker import NamedSignal
from sqlalchemy.orm import Session

from . import signals
from .config import Settings
from .database import UnitOfWork, prepared, upsert
from .models import FAILED, IGNORED, PROCESSED, Models, account_scope, utcnow

log = logging.getLogger("flask_partnerstack_stripe")

DUPLICATE = "duplicate"

HostHandler = Callable[[dict[str, Any]], Any]


class EventFailed(Exception):
    """Applying an event raised; it was rolled back and stored as ``failed``."""

    def __init__(self, event_id: str, error: BaseException, *, recorded: bool) -> None:
        super().__init__(f"Event {event_id} failed: {type(error).__name__}")
        self.event_id = event_id
        self.error = error
        #: False when even storing the failure failed (the database is down, say).
        self.recorded = recorded


@dataclass
class Outcome:
    """What receiving one event did, and the signals to send once it has committed."""

    status: str
    reason: str | None = None
    notifications: list[tuple[NamedSignal, dict[str, Any]]] = field(default_factory=list)


@dataclass
class EventContext:
    """What a built-in handler gets: the event, where it belongs, and the open session."""

    session: Session
    models: Models
    settings: Settings
    event: dict[str, Any]
    stripe_account_id: str | None
    account: Any = None  # the StripeAccount row, when the event's account has one
    ignored: str | None = None
    keep: bool = False  # store the event even when ignored events are not stored
    #: What the Stripe API answered before the transaction began (see ``Receiver.lookups``).
    lookups: dict[str, Any] = field(default_factory=dict)
    notifications: list[tuple[NamedSignal, dict[str, Any]]] = field(default_factory=list)

    @property
    def object(self) -> dict[str, Any]:
        return self.event["data"]["object"]  # type: ignore[no-any-return]

    @property
    def livemode(self) -> bool:
        return bool(self.event["livemode"])

    @property
    def scope(self) -> str:
        return account_scope(self.stripe_account_id)

    def notify(self, signal: NamedSignal, **kwargs: Any) -> None:
        """Send ``signal`` with ``kwargs`` (and the event) after the commit."""
        self.notifications.append((signal, {**kwargs, "event": self.event}))

    def ignore(self, reason: str, *, keep: bool = False) -> None:
        """Mark the event as changing nothing, with a reason the sender can read.

        ``keep`` stores it even when ignored events are not stored, because
        somebody has to look at it (an unmatched refund, say).
        """
        self.ignored = reason
        self.keep = keep


BuiltinHandler = Callable[[EventContext], None]
#: ``lookup(settings, event, stripe_account_id, source)``: Stripe API calls a rule will
#: need; ``source`` is the transaction source of the event's account.
Lookup = Callable[[Settings, dict[str, Any], "str | None", str], dict[str, Any]]


class Receiver:
    """Dispatches events to built-in tracking handlers and the host's own handlers."""

    #: How many settled event ids each process remembers.
    SETTLED_MEMORY = 10_000

    def __init__(self, models: Models, settings: Settings, unit_of_work: UnitOfWork) -> None:
        self.models = models
        self.settings = settings
        self.unit_of_work = unit_of_work
        self.builtin_handlers: dict[str, list[BuiltinHandler]] = defaultdict(list)
        self.host_handlers: dict[str, list[HostHandler]] = defaultdict(list)
        #: Per event type, the Stripe API look-ups made before the transaction begins.
        self.lookups: dict[str, Lookup] = {}
        # Ids this process saw committed as processed or ignored. Those outcomes are
        # final, so Stripe's redeliveries of them are answered without the database.
        self._settled: dict[str, None] = {}
        self._settled_lock = threading.Lock()

    def receive(
        self,
        session: Session,
        event: dict[str, Any],
        payload: str,
        *,
        stripe_account_id: str | None = None,
        replay: bool = False,
    ) -> Outcome:
        """Store ``event`` once, apply it, commit. Raise :class:`EventFailed` if applying raised.

        ``replay`` also takes over a copy stored as ignored (say, an unmatched refund
        once an API key is configured); a processed copy is never applied twice.
        """
        if not replay and event["id"] in self._settled:
            return Outcome(DUPLICATE)
        stripe_account_id = stripe_account_id or event.get("account")
        try:
            source = self._before_look_up(session, event, stripe_account_id, replay=replay)
            if source == DUPLICATE:
                self._remember_settled(event["id"])
                return Outcome(DUPLICATE)
            lookups = self._look_up(event, stripe_account_id, source)
            with self.unit_of_work(session):
                if self._claim(session, event, payload, stripe_account_id, replay=replay):
                    outcome = self._apply(session, event, stripe_account_id, True, lookups)
                else:
                    outcome = Outcome(DUPLICATE)  # processed or ignored: never failed
        except Exception as error:
            # unit_of_work raises only when nothing committed.
            self.unit_of_work.take_deferred(session)
            recorded = self._record_failure(session, event, payload, stripe_account_id, error)
            raise EventFailed(event["id"], error, recorded=recorded) from error
        outcome.notifications += self.unit_of_work.take_deferred(session)
        self._remember_settled(event["id"])
        return outcome

    def _remember_settled(self, event_id: str) -> None:
        with self._settled_lock:
            self._settled[event_id] = None
            if len(self._settled) > self.SETTLED_MEMORY:
                del self._settled[next(iter(self._settled))]

    def apply_unstored(
        self, session: Session, event: dict[str, Any], *, stripe_account_id: str | None = None
    ) -> Outcome:
        """Apply an event built from the API's current state (backfill), without storing it.

        The tracking rules are idempotent, so applying the same state again changes nothing.
        """
        source = self._before_look_up(session, event, stripe_account_id, stored=False)
        lookups = self._look_up(event, stripe_account_id, source)
        with self.unit_of_work(session):
            outcome = self._apply(session, event, stripe_account_id, False, lookups)
        return outcome

    def _before_look_up(
        self,
        session: Session,
        event: dict[str, Any],
        stripe_account_id: str | None,
        *,
        replay: bool = False,
        stored: bool = True,
    ) -> str | None:
        """One short read before any Stripe API call: whether the look-up is needed at all.

        Only for an event type with a look-up. Answers :data:`DUPLICATE` for a stored
        event already processed (or ignored, unless replayed): final outcomes, so no
        Stripe call, whose failure would turn a duplicate into a 500. ``None`` (no
        look-up) for an event of an uninstalled account, which the transaction then
        ignores as always. Otherwise the transaction source the event's account uses
        (only invoice mode maps a charge to its invoice).

        Read outside the event's transaction and ended before the Stripe call; the
        atomic claim in the transaction still judges: this read only spares calls.
        """
        if event["type"] not in self.lookups:
            return None
        WebhookEvent, StripeAccount = self.models.WebhookEvent, self.models.StripeAccount
        with self.unit_of_work.read(session):
            if stored:
                status = session.scalar(
                    sa.select(WebhookEvent.status).where(
                        WebhookEvent.stripe_event_id == event["id"]
                    )
                )
                if status == PROCESSED or (status == IGNORED and not replay):
                    return DUPLICATE
            if stripe_account_id is None:
                return self.settings.transaction_source
            account = session.execute(
                sa.select(StripeAccount.uninstalled_at, StripeAccount.transaction_source).where(
                    StripeAccount.stripe_account_id == stripe_account_id,
                    StripeAccount.livemode == bool(event["livemode"]),
                )
            ).first()
        if account is None:
            return self.settings.transaction_source
        if account.uninstalled_at is not None:
            return None
        return str(account.transaction_source or self.settings.transaction_source)

    def _look_up(
        self, event: dict[str, Any], stripe_account_id: str | None, source: str | None
    ) -> dict[str, Any]:
        """The pre-transaction step: every Stripe API call the rules need, before any lock.

        ``source``: the transaction source of the event's account, None for no look-up.
        """
        lookup = self.lookups.get(event["type"])
        if lookup is None or source is None:
            return {}
        return lookup(self.settings, event, stripe_account_id, source)

    def _apply(
        self,
        session: Session,
        event: dict[str, Any],
        stripe_account_id: str | None,
        stored: bool,
        lookups: dict[str, Any],
    ) -> Outcome:
        context = EventContext(session, self.models, self.settings, event, stripe_account_id)
        context.lookups = lookups
        context.ignored = self._reason_to_ignore(context)
        host_handlers = self.host_handlers.get(event["type"], ()) if context.ignored is None else ()
        if context.ignored is None:
            for handler in self.builtin_handlers.get(event["type"], ()):
                handler(context)
            for host_handler in host_handlers:
                host_handler(event)
        if host_handlers:
            # The host handled it: processed, and stored as such, so that no redelivery
            # or replay runs its handlers again, whatever STORE_IGNORED_EVENTS says.
            context.ignored = None
        # The event_* signals speak of stored webhook events only.
        if context.ignored is not None:
            if not stored:
                return Outcome(IGNORED, context.ignored)
            self._mark_ignored(session, event["id"], context.ignored, context.keep)
            return Outcome(
                IGNORED,
                context.ignored,
                [(signals.event_ignored, {"event": event, "reason": context.ignored})],
            )
        if stored:
            context.notifications.append((signals.event_processed, {"event": event}))
        return Outcome(PROCESSED, notifications=context.notifications)

    def _claim(
        self,
        session: Session,
        event: dict[str, Any],
        payload: str,
        stripe_account_id: str | None,
        *,
        replay: bool,
    ) -> bool:
        """Insert the event, or take over a failed copy of it; False for a duplicate.

        One statement, so two deliveries racing each other cannot both win: the
        unique event id decides. The row is written as processed already, which
        only becomes visible when the event's effects commit with it.
        """
        connection = session.connection()
        table = self.models.WebhookEvent.__table__
        statement = prepared(
            (table, "claim", connection.dialect.name, replay),
            lambda: self._claim_statement(session, table, replay),
        )
        values = {
            "stripe_event_id": event["id"],
            "type": event["type"],
            "stripe_account_id": stripe_account_id,
            "livemode": event["livemode"],
            "payload": payload,
            "now": utcnow(),
        }
        return connection.execute(statement, values).first() is not None

    @staticmethod
    def _claim_statement(session: Session, table: Any, replay: bool) -> Any:
        now = sa.bindparam("now")
        statement = upsert(session, table).values(
            stripe_event_id=sa.bindparam("stripe_event_id"),
            type=sa.bindparam("type"),
            stripe_account_id=sa.bindparam("stripe_account_id"),
            livemode=sa.bindparam("livemode"),
            status=PROCESSED,
            payload=sa.bindparam("payload"),
            received_at=now,
            processed_at=now,
        )
        takeover = table.c.status != PROCESSED if replay else table.c.status == FAILED
        return statement.on_conflict_do_update(
            index_elements=[table.c.stripe_event_id],
            set_={"status": PROCESSED, "error": None, "processed_at": now},
            where=takeover,
        ).returning(table.c.id)

    def _reason_to_ignore(self, context: EventContext) -> str | None:
        event_type = context.event["type"]
        if event_type not in self.builtin_handlers and event_type not in self.host_handlers:
            return f"No handler for {event_type} events."
        if context.stripe_account_id is None:
            return None
        StripeAccount = self.models.StripeAccount
        context.account = context.session.scalar(
            sa.select(StripeAccount).where(
                StripeAccount.stripe_account_id == context.stripe_account_id,
                StripeAccount.livemode == context.livemode,
            )
        )
        if context.account is not None and context.account.uninstalled_at is not None:
            return f"The account {context.stripe_account_id} is uninstalled."
        return None

    def _mark_ignored(self, session: Session, event_id: str, reason: str, keep: bool) -> None:
        WebhookEvent = self.models.WebhookEvent
        match = WebhookEvent.stripe_event_id == event_id
        if keep or self.settings.store_ignored_events:
            session.execute(
                sa.update(WebhookEvent).where(match).values(status=IGNORED, error=reason)
            )
        else:
            session.execute(sa.delete(WebhookEvent).where(match))

    def _record_failure(
        self,
        session: Session,
        event: dict[str, Any],
        payload: str,
        stripe_account_id: str | None,
        error: BaseException,
    ) -> bool:
        """Store the event as failed, in a transaction of its own, so it can be replayed.

        False if that failed too.
        """
        log.error(
            "Applying Stripe event %s (%s) failed: %s: %s",
            event["id"], event["type"], type(error).__name__, error,
        )  # fmt: skip
        WebhookEvent = self.models.WebhookEvent
        message = f"{type(error).__name__}: {error}"[:2000]
        statement = (
            upsert(session, WebhookEvent)
            .values(
                stripe_event_id=event["id"],
                type=event["type"],
                stripe_account_id=stripe_account_id,
                livemode=event["livemode"],
                status=FAILED,
                error=message,
                payload=payload,
                received_at=utcnow(),
            )
            .on_conflict_do_update(
                index_elements=[WebhookEvent.stripe_event_id],
                set_={"status": FAILED, "error": message},
                # A copy that another delivery applied meanwhile stays applied.
                where=WebhookEvent.status != PROCESSED,
            )
        )
        try:
            with self.unit_of_work(session):
                session.execute(statement)
        except Exception:
            log.exception("Could not record the failure of Stripe event %s", event["id"])
            return False
        return True
