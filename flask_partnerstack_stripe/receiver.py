"""The receive pipeline: store a verified event once, apply it, commit, signal.

No Flask here: the receiver works on a SQLAlchemy session and sends signals
through the ``send`` function it is given, so the webhook view, the replay
command, backfill and a queue worker all share :meth:`Receiver.run`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import sqlalchemy as sa
from blinker import NamedSignal
from sqlalchemy.orm import Session

from . import locks, outbox, rows, signals
from .config import Settings
from .models import Models, account_scope, utcnow
from .statements import cached_statement
from .status import Status
from .transactions import UnitOfWork
from .upserts import insert_on_conflict, won_id

log = logging.getLogger("flask_partnerstack_stripe")

HostHandler = Callable[[dict[str, Any]], Any]
Notification = tuple[NamedSignal, dict[str, Any]]
#: Sends signals once their data has committed (``notify.send_notifications`` in an app),
#: and says per notification what its first failing receiver raised (or None).
Sender = Callable[[Iterable[Notification]], "Sequence[BaseException | None]"]


#: How a stored event kept on purpose (:class:`Ignored` with ``keep``) is told from the
#: other ignored ones: its reason, stored in ``WebhookEvent.error``, starts with one of
#: these (the README documents "Unmatched refund"). ``flask partnerstack prune`` keeps them.
KEPT_REASONS: Final = ("Unmatched refund",)


class Ignored(Exception):
    """Raised by a built-in handler: the event changes nothing, for ``reason``.

    ``keep`` stores it even when ignored events are not stored, because somebody
    has to look at it (an unmatched refund, say): its reason then starts with one of
    :data:`KEPT_REASONS`, which is how the stored row says so. What the handler wrote
    before raising stays, as part of the event's transaction.
    """

    def __init__(self, reason: str, *, keep: bool = False) -> None:
        if keep and not reason.startswith(KEPT_REASONS):
            raise ValueError(f"A kept reason must start with one of {KEPT_REASONS}: {reason!r}")
        super().__init__(reason)
        self.reason = reason
        self.keep = keep


@dataclass
class Outcome:
    """What receiving one event did (a :class:`~.status.Status`), and why."""

    status: str
    reason: str | None = None
    #: The signals to send once committed; the pipeline sends them itself.
    notifications: list[Notification] = field(default_factory=list)
    #: What applying raised, for a ``failed`` outcome.
    error: BaseException | None = None
    #: For a ``failed`` outcome: False when even storing the failure failed.
    recorded: bool = True


@dataclass
class EventContext:
    """What a built-in handler gets: the event, where it belongs, and the open session."""

    session: Session
    models: Models
    settings: Settings
    event: dict[str, Any]
    stripe_account_id: str | None
    account: Any = None  # the StripeAccount row, when the event's account has one
    #: What the Stripe API answered before the transaction began (see ``Handlers.lookups``).
    lookups: dict[str, Any] = field(default_factory=dict)
    notifications: list[Notification] = field(default_factory=list)
    #: The lock names the claim took already (``Handlers.claim_locks``; PostgreSQL).
    locked: frozenset[str] = frozenset()

    @property
    def object(self) -> dict[str, Any]:
        obj: dict[str, Any] = self.event["data"]["object"]
        return obj

    @property
    def livemode(self) -> bool:
        return bool(self.event["livemode"])

    @property
    def scope(self) -> str:
        return account_scope(self.stripe_account_id)

    def notify(self, signal: NamedSignal, **kwargs: Any) -> None:
        """Send ``signal`` with ``kwargs`` (and the event) after the commit."""
        self.notifications.append((signal, {**kwargs, "event": self.event}))

    def holds(self, names: Sequence[str | None]) -> bool:
        """Whether the claim took every one of the lock ``names`` already."""
        return self.locked.issuperset(name for name in names if name)


BuiltinHandler = Callable[[EventContext], None]


@dataclass(frozen=True)
class Lookup:
    """The Stripe API calls a rule may need, made before the event's transaction begins."""

    #: ``call(settings, event, stripe_account_id, source)``: make them (or not, by what
    #: ``source``, the transaction source of the event's account, says); their answers.
    call: Callable[[Settings, dict[str, Any], str | None, str], dict[str, Any]]
    #: ``wanted(settings, event)``: whether the call could make any, whatever the
    #: account: when not, the receiver reads nothing before the transaction (most
    #: events: a new charge, any event without an API key configured).
    wanted: Callable[[Settings, dict[str, Any]], bool]


@dataclass(frozen=True)
class Handlers:
    """Who handles which event type; given to the :class:`Receiver` when it is built."""

    #: The tracking rules (``rules.BUILTIN_HANDLERS``), one per event type.
    builtin: Mapping[str, BuiltinHandler]
    #: The host's ``@partnerstack.handler(...)`` functions. The extension's own
    #: mapping, so handlers registered after ``init_app`` count too.
    host: Mapping[str, Sequence[HostHandler]]
    #: Per event type, the Stripe API look-ups made before the transaction begins.
    lookups: Mapping[str, Lookup] = field(default_factory=dict)
    #: Per event type, the lock names (``locks``) its rule takes before anything else;
    #: on PostgreSQL the claim's own statement takes them, a round trip saved.
    claim_locks: Mapping[str, Callable[[EventContext], Sequence[str | None]]] = field(
        default_factory=dict
    )


class SettledIds:
    """The ids of events this process saw settle (processed or ignored), the newest ``size``.

    Those outcomes are final, so Stripe's redeliveries of them are answered without
    the database: the benchmark's redelivery target (2x a new event) needs it. The
    database stays the source of truth: a miss here (another process settled it, or
    it was evicted) falls through to the claim, which answers ``duplicate`` too.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: dict[str, None] = {}  # insertion-ordered: the oldest goes first
        self._lock = threading.Lock()

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def clear(self) -> None:
        """Forget every id, as another process that settled none of them would."""
        with self._lock:
            self._ids.clear()

    def add(self, event_id: str) -> None:
        with self._lock:
            self._ids[event_id] = None
            while len(self._ids) > self.size:
                del self._ids[next(iter(self._ids))]


#: The columns every statement storing an event binds from its envelope.
_EVENT_COLUMNS: dict[str, sa.BindParameter[Any]] = {
    name: sa.bindparam(name)
    for name in ("stripe_event_id", "type", "stripe_account_id", "livemode")
}


def _event_row(
    event: dict[str, Any], payload: str, stripe_account_id: str | None
) -> dict[str, Any]:
    """The values the receive and claim statements store (``_EVENT_COLUMNS``, the payload, now)."""
    return {
        "stripe_event_id": event["id"],
        "type": event["type"],
        "stripe_account_id": stripe_account_id,
        "livemode": event["livemode"],
        "payload": payload,
        "now": utcnow(),
    }


class Receiver:
    """The one receive pipeline: every caller hands it an event and gets an :class:`Outcome`.

    The webhook view (after verifying the request), ``flask partnerstack replay``,
    backfill and a queue worker all call :meth:`run`; a new way of receiving
    changes that one method.
    """

    #: How many settled event ids each receiver (one per app) remembers.
    SETTLED_MEMORY = 10_000

    def __init__(
        self,
        models: Models,
        settings: Settings,
        unit_of_work: UnitOfWork,
        handlers: Handlers,
        send: Sender,
    ) -> None:
        self.models = models
        self.settings = settings
        self.unit_of_work = unit_of_work
        self.handlers = handlers
        self.send = send
        self.settled = SettledIds(self.SETTLED_MEMORY)
        #: ``celery`` processing: hands a stored event's id to the queue after its commit
        #: (set by ``init_celery``). What it raises is logged: the event stays received,
        #: and ``sweep`` enqueues it again.
        self.enqueue: Callable[[str], None] | None = None

    def run(
        self,
        session: Session,
        event: dict[str, Any],
        payload: str | None,
        *,
        stripe_account_id: str | None = None,
        replay: bool = False,
        worker: bool = False,
    ) -> Outcome:
        """Look up, store, apply, commit, signal; return what happened.

        ``event`` is verified already (or read back from the database). ``payload``
        is its raw JSON, stored with it; ``None`` applies an event built from the
        API's current state (backfill) without storing it, which the idempotent
        tracking rules allow. ``replay`` also takes over a copy stored as ignored
        (say, an unmatched refund once an API key is configured); a processed copy
        is never applied twice.

        In ``celery`` processing a webhook's event is only stored, as ``received``, and
        enqueued once committed (a ``queued`` outcome); the queue's worker calls this
        again with ``worker`` set, and the claim takes the received (or failed) row over,
        so that whoever commits first applies it and every other copy is a duplicate.

        A failure of a stored event rolls back, is stored as ``failed`` in its own
        transaction, sends ``event_failed`` and comes back as a ``failed`` outcome;
        an unstored event's failure is raised, since there is nothing to replay.
        """
        if payload is not None and not replay and event["id"] in self.settled:
            return Outcome(Status.DUPLICATE)
        stripe_account_id = stripe_account_id or event.get("account")
        if self.settings.processing == "celery" and payload is not None and not (replay or worker):
            return self._queue(session, event, payload, stripe_account_id)
        try:
            # 1. One short read: is the look-up needed at all (no Stripe call for a
            #    duplicate or an uninstalled account), and which transaction source.
            source = self._before_look_up(session, event, stripe_account_id, payload, replay)
            if source == Status.DUPLICATE:
                self.settled.add(event["id"])
                return Outcome(Status.DUPLICATE)
            # 2. The Stripe API calls the rules need, before any lock is held.
            lookups = self._look_up(event, stripe_account_id, source)
            # 3-5. Store (claim the event id), apply, commit: one transaction.
            with self.unit_of_work(session):
                context = EventContext(
                    session, self.models, self.settings, event, stripe_account_id
                )
                context.lookups = lookups
                if payload is None:
                    outcome = self._apply(context, stored=False)
                elif self._claim(context, payload, replay=replay, worker=worker):
                    outcome = self._apply(context, stored=True)
                else:
                    outcome = Outcome(Status.DUPLICATE)  # processed or ignored: never failed
                # The rules' signals, then those of nested calls; with durable signals
                # the data ones are written to the outbox in this same transaction.
                outcome.notifications += self.unit_of_work.take_deferred(session)
                # The body is the event's JSON only while no host handler had it: one may
                # have changed it, and a retry must send what the first send did.
                handled = self.handlers.host.get(event["type"])
                sent = None if payload is None or handled else (event, payload)
                outcome.notifications = self.record(session, outcome.notifications, sent)
        except Exception as error:
            # unit_of_work raises only when nothing committed.
            self.unit_of_work.take_deferred(session)
            if payload is None:
                raise
            recorded = self._record_failure(session, event, payload, stripe_account_id, error)
            # 6. Signal the failure.
            self.send([(signals.event_failed, {"event": event, "error": error})])
            return Outcome(Status.FAILED, f"{type(error).__name__}: {error}", [], error, recorded)
        if payload is not None:
            self.settled.add(event["id"])
        # 6. Signal, after the commit; a durable delivery is settled once sent.
        self.deliver(session, outcome.notifications)
        return outcome

    def record(
        self,
        session: Session,
        notifications: list[Notification],
        sent: tuple[dict[str, Any], str] | None = None,
    ) -> list[Notification]:
        """Ready the signals to send after the commit, in the open transaction: the rows
        they carry join the session where they have receivers (``rows.attach``); with
        durable signals, the data ones are written to the outbox.

        ``sent``: the event and the body Stripe sent, its JSON already (see ``outbox.encode``).
        """
        rows.attach(session, notifications)
        if not self.settings.durable_signals:
            return notifications
        return outbox.record(session, self.models, self.settings, notifications, sent)

    def deliver(self, session: Session, notifications: list[Notification]) -> None:
        """Send committed signals; mark durable ones delivered (or count the failed attempt)."""
        outbox.send_and_settle(
            session, self.unit_of_work, self.models, self.settings, self.send, notifications
        )

    def deliver_stored(
        self,
        session: Session,
        *,
        ids: Sequence[int] = (),
        dead: bool = False,
        due_only: bool = False,
        limit: int | None = 500,
    ) -> outbox.Delivered:
        """Send the outbox's deliveries again (see ``outbox.deliver``): for the ``deliver``
        command and the ``deliver_signals`` task."""
        return outbox.deliver(
            session, self.unit_of_work, self.models, self.settings, self.send,
            ids=ids, dead=dead, due_only=due_only, limit=limit,
        )  # fmt: skip

    def _queue(
        self, session: Session, event: dict[str, Any], payload: str, stripe_account_id: str | None
    ) -> Outcome:
        """Store the event as received, commit, then enqueue it (``celery`` processing).

        A failed copy is taken over and enqueued again (Stripe redelivered it); a
        received, processed or ignored one makes this a duplicate. ``enqueue`` is the
        app's publisher: it takes the id and publishes it from its own thread, so the
        answer does not wait for the broker; only the committed row has to exist first.
        """
        table = self.models.WebhookEvent.__table__
        try:
            statement = self.unit_of_work.statements.get(
                (table, "receive", session.get_bind().dialect.name),
                lambda: self._receive_statement(session, table),
            )
            values = _event_row(event, payload, stripe_account_id)
            alone = self.unit_of_work.alone(session)
            if alone is not None:
                # The one statement is the whole transaction, outside the session.
                # Inside a transaction the host began, the store joins it.
                with alone as connection:
                    stored = won_id(connection.execute(statement, values)) is not None
            else:
                with self.unit_of_work(session):
                    result = session.connection().execute(statement, values)
                    stored = won_id(result) is not None
        except Exception as error:
            self.unit_of_work.take_deferred(session)
            log.error(
                "Storing Stripe event %s failed: %s: %s", event["id"], type(error).__name__, error
            )
            return Outcome(Status.FAILED, f"{type(error).__name__}: {error}", [], error, False)
        if not stored:
            return Outcome(Status.DUPLICATE)
        if self.enqueue is None:
            log.error(
                "PARTNERSTACK_STRIPE_PROCESSING is 'celery' but init_celery(celery_app) was "
                "not called: Stripe event %s stays received until it is.", event["id"]
            )  # fmt: skip
        else:
            try:
                self.enqueue(event["id"])
            except Exception as error:
                # Stored and committed: `sweep` enqueues it once the broker is back.
                log.warning(
                    "Could not enqueue Stripe event %s (%s: %s); it is stored as received "
                    "and the sweep will enqueue it.", event["id"], type(error).__name__, error
                )  # fmt: skip
        return Outcome(Status.QUEUED)

    @staticmethod
    def _receive_statement(session: Session, table: Any) -> Any:
        return insert_on_conflict(
            session,
            table,
            {
                **_EVENT_COLUMNS,
                "status": Status.RECEIVED,
                "payload": sa.bindparam("payload"),
                "received_at": sa.bindparam("now"),
            },
            keys=[table.c.stripe_event_id],
            update=lambda excluded: {"status": Status.RECEIVED, "error": None},
            where=lambda excluded: table.c.status == Status.FAILED,
        )

    def _before_look_up(
        self,
        session: Session,
        event: dict[str, Any],
        stripe_account_id: str | None,
        payload: str | None,
        replay: bool,
    ) -> str | None:
        """One short read before any Stripe API call: whether the look-up is needed at all.

        Only for an event that may need one (:attr:`Lookup.wanted`). Answers
        :attr:`Status.DUPLICATE` for a stored event already processed (or ignored, unless
        replayed): final outcomes, so no Stripe call, whose failure would turn a duplicate
        into a 500. ``None`` (no look-up) for an event of an uninstalled account, which
        the transaction then ignores as always. Otherwise the transaction source the
        event's account uses (only invoice mode maps a charge to its invoice).

        Read outside the event's transaction and ended before the Stripe call; the
        atomic claim in the transaction still judges: this read only spares calls.
        """
        lookup = self.handlers.lookups.get(event["type"])
        if lookup is None or not lookup.wanted(self.settings, event):
            return None
        WebhookEvent, StripeAccount = self.models.WebhookEvent, self.models.StripeAccount
        with self.unit_of_work.read(session):
            if payload is not None:  # a stored event (backfill's are not)
                status = session.scalar(
                    sa.select(WebhookEvent.status).where(
                        WebhookEvent.stripe_event_id == event["id"]
                    )
                )
                if status == Status.PROCESSED or (status == Status.IGNORED and not replay):
                    return Status.DUPLICATE
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
        lookup = self.handlers.lookups.get(event["type"])
        if lookup is None or source is None:
            return {}
        return lookup.call(self.settings, event, stripe_account_id, source)

    def _apply(self, context: EventContext, *, stored: bool) -> Outcome:
        session, event = context.session, context.event
        reason, keep = self._reason_to_ignore(context), False
        # A host handler runs once per Stripe event: a stored one, whose claim keeps it to
        # once. Backfill's events (not stored, made again on every run) run none.
        run_host = reason is None and stored
        host_handlers = self.handlers.host.get(event["type"], ()) if run_host else ()
        if reason is None:
            builtin = self.handlers.builtin.get(event["type"])
            if builtin is not None:
                try:
                    builtin(context)
                except Ignored as ignored:
                    reason, keep = ignored.reason, ignored.keep
            if host_handlers:
                rows.attach_all(session)  # the host's code finds the rows in the session
            for host_handler in host_handlers:
                host_handler(event)
        if host_handlers:
            # The host handled it: processed, and stored as such, so that no redelivery
            # or replay runs its handlers again, whatever STORE_IGNORED_EVENTS says.
            reason = None
        # The event_* signals speak of stored webhook events only.
        if reason is not None:
            if not stored:
                return Outcome(Status.IGNORED, reason)
            self._mark_ignored(session, event["id"], reason, keep)
            said = (signals.event_ignored, {"event": event, "reason": reason})
            return Outcome(Status.IGNORED, reason, [said])
        if stored:
            context.notifications.append((signals.event_processed, {"event": event}))
        return Outcome(Status.PROCESSED, notifications=context.notifications)

    def _claim(
        self, context: EventContext, payload: str, *, replay: bool, worker: bool = False
    ) -> bool:
        """Insert the event, or take over a failed copy of it; False for a duplicate.

        One statement, so two deliveries racing each other cannot both win: the
        unique event id decides. The row is written as processed already, which
        only becomes visible when the event's effects commit with it.

        On PostgreSQL it also takes the locks the event's rule begins with
        (``Handlers.claim_locks``), before it writes the row, and says so in
        ``context.locked``: the rule's next statement, a new snapshot, sees what the
        transactions it waited for committed, as after a lock statement of its own.
        """
        session = context.session
        connection = session.connection()
        table = self.models.WebhookEvent.__table__
        names, keys = self._claim_lock_names(context)
        statement = cached_statement(
            (table, "claim", connection.dialect.name, replay, worker, len(keys)),
            lambda: self._claim_statement(session, table, replay, worker, len(keys)),
        )
        values = _event_row(context.event, payload, context.stripe_account_id)
        values.update({f"lock_{n}": key for n, key in enumerate(keys)})
        if won_id(connection.execute(statement, values)) is None:
            return False
        context.locked = frozenset(names)
        return True

    def _claim_lock_names(self, context: EventContext) -> tuple[list[str], list[int]]:
        """The lock names the claim takes for ``context``'s rule, and their keys (none
        but on PostgreSQL, or when the event cannot name them: the rule says why)."""
        names_of = self.handlers.claim_locks.get(context.event["type"])
        if names_of is None:
            return [], []
        try:
            names = [name for name in names_of(context) if name]
        except ValueError:
            return [], []
        keys = locks.advisory_keys(context.session, *names)
        return (names, keys) if keys else ([], [])

    @staticmethod
    def _claim_statement(
        session: Session, table: Any, replay: bool, worker: bool, lock_count: int
    ) -> Any:
        now: sa.BindParameter[Any] = sa.bindparam("now")
        status: Any = Status.PROCESSED
        if lock_count:
            # NULL once the locks are taken, in key order, before the row is written.
            status = sa.func.coalesce(
                sa.cast(locks.locking_null(lock_count), sa.String), Status.PROCESSED
            )
        if replay:
            takeover = table.c.status != Status.PROCESSED
        elif worker:  # the queue's copy: the webhook stored it received
            takeover = table.c.status.in_((Status.RECEIVED, Status.FAILED))
        else:
            takeover = table.c.status == Status.FAILED
        return insert_on_conflict(
            session,
            table,
            {
                **_EVENT_COLUMNS,
                "status": status,
                "payload": sa.bindparam("payload"),
                "received_at": now,
                "processed_at": now,
            },
            keys=[table.c.stripe_event_id],
            update=lambda excluded: {
                "status": Status.PROCESSED,
                "error": None,
                "processed_at": excluded.processed_at,
            },
            where=lambda excluded: takeover,
        )

    def _reason_to_ignore(self, context: EventContext) -> str | None:
        event_type = context.event["type"]
        if event_type not in self.handlers.builtin and event_type not in self.handlers.host:
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
                sa.update(WebhookEvent).where(match).values(status=Status.IGNORED, error=reason)
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
        table = self.models.WebhookEvent.__table__
        message = f"{type(error).__name__}: {error}"[:2000]
        statement = insert_on_conflict(
            session,
            table,
            {
                "stripe_event_id": event["id"],
                "type": event["type"],
                "stripe_account_id": stripe_account_id,
                "livemode": event["livemode"],
                "status": Status.FAILED,
                "error": message,
                "payload": payload,
                "received_at": utcnow(),
            },
            keys=[table.c.stripe_event_id],
            update=lambda excluded: {"status": Status.FAILED, "error": excluded.error},
            # A copy that another delivery applied meanwhile stays applied.
            where=lambda excluded: table.c.status != Status.PROCESSED,
        )
        try:
            with self.unit_of_work(session):
                session.execute(statement)
        except Exception:
            log.exception("Could not record the failure of Stripe event %s", event["id"])
            return False
        return True
