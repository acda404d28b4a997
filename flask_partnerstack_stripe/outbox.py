"""Durable signals: an outbox of data signals, written with the change, sent after the commit.

No Flask and no Celery here: the receive pipeline writes the deliveries in the event's
transaction (:func:`record`), sends them after its commit and settles them
(:func:`send_and_settle`); ``flask partnerstack deliver`` and the
``partnerstack.deliver_signals`` task send the ones still pending (:func:`deliver`).
Either way, what a delivery's receivers left in the session commits with its mark
``delivered``, or is rolled back when one of them raised (:func:`settle`). A delivery is
kept as JSON: a model instance as its field name in :class:`~.models.Models` and its
primary key (read again from the database when it is re-sent), everything else (the
Stripe event) as it is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

import sqlalchemy as sa
from blinker import NamedSignal
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from . import signals
from .config import Settings
from .models import Models, utcnow
from .statements import Statements, cached_statement
from .transactions import UnitOfWork

log = logging.getLogger("flask_partnerstack_stripe")

Notification = tuple[NamedSignal, dict[str, Any]]
#: Sends signals and says, per notification, what its first failing receiver raised.
Sender = Callable[[Iterable[Notification]], "Sequence[BaseException | None]"]

PENDING: Final = "pending"
DELIVERED: Final = "delivered"
DEAD: Final = "dead"

#: The first retry waits ``SIGNAL_RETRY_DELAY``, each next one twice as long, up to this.
MAX_BACKOFF = timedelta(hours=1)

_MODEL = "$model"


def is_data_signal(signal: NamedSignal) -> bool:
    """The signals about data (customers, transactions, commissions, accounts): not event_*."""
    return not signal.name.startswith("event-")


def with_delivery_id(notifications: Iterable[Notification]) -> list[Notification]:
    """Give every data signal a ``delivery_id`` of None when it is not durable."""
    return [
        (signal, kwargs if "delivery_id" in kwargs or not is_data_signal(signal)
         else {**kwargs, "delivery_id": None})
        for signal, kwargs in notifications
    ]  # fmt: skip


def record(
    session: Session,
    models: Models,
    settings: Settings,
    notifications: list[Notification],
    known: tuple[object, str] | None = None,
) -> list[Notification]:
    """Write a delivery for each data signal in the open transaction; give them their ids.

    A delivery its sender has not settled after ``SIGNAL_RETRY_DELAY`` is due for the
    retry task: that process died between the commit and the send. ``known``: see
    :func:`encode`.
    """
    table = models.SignalDelivery.__table__
    statement = cached_statement((table, "record"), lambda: _record_statement(table))
    connection = session.connection()
    recorded = list(notifications)
    for index, (signal, kwargs) in enumerate(notifications):
        if is_data_signal(signal) and "delivery_id" not in kwargs:
            now = utcnow()
            values = {
                "signal": signal.name,
                "arguments": encode(models, kwargs, known),
                "status": PENDING,
                "attempts": 0,
                "created_at": now,
                "next_attempt_at": now + timedelta(seconds=settings.signal_retry_delay),
            }
            result = connection.execute(statement, values)
            inserted = result.inserted_primary_key
            assert inserted is not None, "a one-row INSERT has its primary key"
            recorded[index] = (signal, {**kwargs, "delivery_id": int(inserted[0])})
    return recorded


def _record_statement(table: Any) -> Any:
    """One delivery's ``INSERT``. Its id is the result's ``inserted_primary_key``, which
    SQLAlchemy reads the cheapest way each database allows: ``RETURNING`` on PostgreSQL,
    the cursor's ``lastrowid`` on SQLite and MySQL, or the id sent where the model makes
    it in Python (a default), which the rowid is not then."""
    fields = ("signal", "arguments", "status", "attempts", "created_at", "next_attempt_at")
    return sa.insert(table).values({name: sa.bindparam(name) for name in fields})


def encode(models: Models, kwargs: dict[str, Any], known: tuple[object, str] | None = None) -> str:
    """The keyword arguments as JSON: model instances by model name and primary key.

    ``known``: a value and its JSON (a webhook's event and the body Stripe sent, which it
    was parsed from). The argument that is that very value goes in as that text, not
    encoded again: it is most of a delivery's row, and encoding it most of the cost.
    """
    classes = {model: name for name, model in zip(Models._fields, models, strict=True)}
    encoded: dict[str, Any] = {}
    spliced: list[str] = []
    for key, value in kwargs.items():
        if known is not None and value is known[0]:
            spliced.append(f"{json.dumps(key)}: {known[1]}")
            continue
        name = next((n for m, n in classes.items() if isinstance(value, m)), None)
        encoded[key] = {_MODEL: name, "id": value.id} if name is not None else value
    text = json.dumps(encoded, default=str)
    if not spliced:
        return text
    return "{" + ", ".join([text[1:-1], *spliced] if encoded else spliced) + "}"


def decode(session: Session, models: Models, arguments: str) -> dict[str, Any]:
    """The keyword arguments again, each model instance read from the database."""
    decoded: dict[str, Any] = json.loads(arguments)
    for key, value in decoded.items():
        if isinstance(value, dict) and _MODEL in value:
            decoded[key] = session.get(getattr(models, value[_MODEL]), value["id"])
    return decoded


def backoff(settings: Settings, attempts: int) -> timedelta:
    """How long to wait after the ``attempts``-th failed attempt."""
    first = timedelta(seconds=settings.signal_retry_delay)
    wait: timedelta = first * 2 ** min(max(attempts - 1, 0), 20)
    return min(wait, MAX_BACKOFF)


def send_and_settle(
    session: Session,
    unit_of_work: UnitOfWork,
    models: Models,
    settings: Settings,
    send: Sender,
    notifications: Sequence[Notification],
) -> None:
    """Send committed signals, then settle the durable ones among them (:func:`settle`).

    A delivery whose receivers left a transaction open in the session is settled at
    once, alone: what they left commits with its mark, or is rolled back when one of
    them raised, before the next signal goes out. The others (the common case: the
    receivers left the session as they found it) are settled together at the end, in
    one statement. Without durable signals this only sends them.
    """
    if not any(kwargs.get("delivery_id") is not None for _, kwargs in notifications):
        send(notifications)
        return
    results: list[tuple[int, BaseException | None]] = []
    for notification in notifications:
        [error] = send([notification])
        delivery_id = notification[1].get("delivery_id")
        if delivery_id is None:
            continue
        if session.in_transaction():
            settle(session, unit_of_work, models, settings, [(delivery_id, error)])
        else:
            results.append((delivery_id, error))
    settle(session, unit_of_work, models, settings, results)


def settle(
    session: Session,
    unit_of_work: UnitOfWork,
    models: Models,
    settings: Settings,
    results: Iterable[tuple[int, BaseException | None]],
) -> None:
    """Mark each delivery delivered, or count a failed attempt (dead after the last one).

    What the receivers left in the session commits with the marks when they all
    returned. When one raised, it is rolled back first, never committed with the
    failed attempt: the delivery is sent again with the same ``delivery_id``, every
    receiver runs again, and one that kept the id (the README's idempotent receiver)
    must not find it kept by a run that failed. So ``results`` holds the deliveries
    that left nothing in the session, or one delivery (:func:`send_and_settle`).

    Never raises: the deliveries stay pending, and are sent again, when this fails.
    """
    results = list(results)
    if not results:
        return
    if session.in_transaction() and any(error is not None for _, error in results):
        session.rollback()
    SignalDelivery = models.SignalDelivery
    now = utcnow()
    try:
        table, statements = SignalDelivery.__table__, unit_of_work.statements
        delivered = [delivery_id for delivery_id, error in results if error is None]
        alone = unit_of_work.alone(session) if len(delivered) == len(results) else None
        if alone is not None:
            # The one UPDATE is the whole transaction, outside the session.
            with alone as connection:
                relaxed = connection.dialect.name == "postgresql"
                _mark_delivered(connection, statements, table, delivered, now, relaxed=relaxed)
            return
        with unit_of_work(session):
            if delivered:
                connection = session.connection()
                _mark_delivered(connection, statements, table, delivered, now, relaxed=False)
            for delivery_id, error in results:
                if error is None:
                    continue
                row = session.get(SignalDelivery, delivery_id, populate_existing=True)
                if row is None:
                    continue
                row.attempts += 1
                row.error = f"{type(error).__name__}: {error}"[:2000]
                row.next_attempt_at = now + backoff(settings, row.attempts)
                if row.attempts >= settings.signal_max_attempts:
                    row.status = DEAD
                    log.error(
                        "Signal delivery %s (%s) is dead after %s attempts: %s",
                        row.id, row.signal, row.attempts, row.error,
                    )  # fmt: skip
    except Exception:
        log.exception("Could not record how signal deliveries went; they stay pending")


def _mark_delivered(
    connection: Connection,
    statements: Statements,
    table: Any,
    ids: list[int],
    now: Any,
    *,
    relaxed: bool,
) -> None:
    """Mark the deliveries ``ids`` delivered on ``connection``: usually one, by
    ``id = :id`` then, not an IN list expanded at every execution."""
    one = len(ids) == 1
    statement = statements.get(
        (table, "delivered", connection.dialect.name, one, relaxed),
        lambda: _delivered_statement(table, one=one, relaxed=relaxed),
    )
    connection.execute(statement, {"ids": ids[0] if one else ids, "now": now})


def _delivered_statement(table: Any, *, one: bool, relaxed: bool) -> Any:
    """The ``UPDATE`` that marks deliveries delivered: the ``ids`` (``one``: the id).

    ``relaxed`` (PostgreSQL, the statement alone in its transaction): it also turns
    ``synchronous_commit`` off for that transaction (``set_config(..., true)``, in the
    statement: no round trip of its own). The data and its outbox rows were committed
    durably already; a mark lost to a crash in the next moment only sends that delivery
    again, with the same ``delivery_id``, which receivers are told to expect. Waiting for
    a second WAL flush per event is not worth that. Not when the session holds other
    writes (a receiver's, say): those commit with this, and keep their durability.
    """
    statement = (
        sa.update(table)
        .where(
            table.c.id == sa.bindparam("ids")
            if one
            else table.c.id.in_(sa.bindparam("ids", expanding=True))
        )
        .values(
            status=DELIVERED,
            delivered_at=sa.bindparam("now"),
            attempts=table.c.attempts + 1,
            error=None,
        )
    )
    if relaxed:
        unflushed = sa.func.set_config("synchronous_commit", "off", sa.true())
        statement = statement.where(unflushed.is_not(None))
    return statement


@dataclass
class Delivered:
    """What :func:`deliver` did."""

    delivered: int = 0
    failed: int = 0
    dead: int = 0


def deliver(
    session: Session,
    unit_of_work: UnitOfWork,
    models: Models,
    settings: Settings,
    send: Sender,
    *,
    ids: Sequence[int] = (),
    dead: bool = False,
    due_only: bool = False,
    limit: int | None = 500,
) -> Delivered:
    """Send pending deliveries again (or dead ones with ``dead``, or those ``ids``).

    ``due_only`` sends only those whose backoff has passed (the task); the command
    sends every pending one now. A dead delivery sent again gets ``SIGNAL_MAX_ATTEMPTS``
    more attempts.
    """
    SignalDelivery = models.SignalDelivery
    query = sa.select(SignalDelivery).order_by(SignalDelivery.id)
    if limit is not None:  # the task works in batches; the command sends everything
        query = query.limit(limit)
    if ids:
        query = query.where(SignalDelivery.id.in_(ids), SignalDelivery.status != DELIVERED)
    else:
        query = query.where(SignalDelivery.status == (DEAD if dead else PENDING))
    if due_only:
        query = query.where(SignalDelivery.next_attempt_at <= utcnow())
    rows = [(row.id, row.signal, row.arguments, row.status) for row in session.scalars(query)]
    session.rollback()
    revived = [delivery_id for delivery_id, _, _, status in rows if status == DEAD]
    if revived:
        with unit_of_work(session):
            session.execute(
                sa.update(SignalDelivery)
                .where(SignalDelivery.id.in_(revived))
                .values(status=PENDING, attempts=0)
            )
    by_name = {signal.name: signal for signal in _signals()}
    result = Delivered()
    for delivery_id, name, arguments, _ in rows:
        signal = by_name.get(name)
        if signal is None:
            error: BaseException | None = LookupError(f"No signal is named {name!r}")
        else:
            # The read ends before the send, as after the first send's commit: what the
            # receivers leave in the session is theirs alone (settle commits it with the
            # mark, or rolls it back), and the mark alone keeps PostgreSQL's autocommit.
            with unit_of_work.read(session):
                kwargs = {**decode(session, models, arguments), "delivery_id": delivery_id}
            [error] = send([(signal, kwargs)])
        settle(session, unit_of_work, models, settings, [(delivery_id, error)])
        if error is None:
            result.delivered += 1
        else:
            result.failed += 1
            status = session.scalar(
                sa.select(SignalDelivery.status).where(SignalDelivery.id == delivery_id)
            )
            session.rollback()
            result.dead += status == DEAD
    return result


def _signals() -> list[NamedSignal]:
    return [value for value in vars(signals).values() if isinstance(value, NamedSignal)]


def count(session: Session, models: Models, status: str) -> int:
    """How many deliveries have ``status``."""
    SignalDelivery = models.SignalDelivery
    counted = session.scalar(
        sa.select(sa.func.count())
        .select_from(SignalDelivery)
        .where(SignalDelivery.status == status)
    )
    return int(counted or 0)
