"""The few database-specific pieces: upserts, and one writing transaction done right on each."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

log = logging.getLogger("flask_partnerstack_stripe")

_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def upsert(session: Session, model: Any) -> Any:
    """An ``INSERT`` for ``model`` that supports ``ON CONFLICT`` on this session's database."""
    dialect = session.get_bind().dialect.name
    try:
        return _INSERTS[dialect](model)
    except KeyError:
        raise RuntimeError(
            f"flask-partnerstack-stripe supports PostgreSQL and SQLite, not {dialect!r}."
        ) from None


def dialect_name(session: Session) -> str:
    return session.get_bind().dialect.name


def loading(model: Any, statement: Any) -> Any:
    """A Core ``INSERT … RETURNING`` that loads ``model`` objects from the rows it returns.

    Cheaper than an ORM-enabled INSERT, which goes through bulk persistence.
    """
    return sa.select(model).from_statement(statement.returning(*model.__table__.columns))


#: ``session.info`` keys: a transaction of ours is open; signals nested calls deferred.
_OPEN_UNIT = "partnerstack_stripe.open_unit"
_DEFERRED = "partnerstack_stripe.deferred_notifications"


class UnitOfWork:
    """The app's writing transactions: ``with unit_of_work(session): ...`` (one per app).

    A block is one transaction: the write lock taken when it begins, a commit that
    keeps loaded objects loaded, a rollback when the work raises. When the block
    ends normally, the work has committed; an error raised by something that runs
    after the commit (a host's ``after_commit`` hook, say) is logged, not raised,
    because the committed work stands. The block raises only when nothing committed.
    """

    def __init__(self, busy_timeout: float, statements: Statements | None = None) -> None:
        self.busy_timeout = busy_timeout
        #: This app's statements, current while one of its units of work is open.
        self.statements = statements if statements is not None else Statements()
        # In-memory SQLite is one connection that every thread shares (Flask-SQLAlchemy
        # gives it a StaticPool): transactions on it must take turns, from before the
        # connection is checked out. Reentrant, for a host handler that writes through
        # the extension inside an event's transaction.
        self._shared_connection = threading.RLock()

    @contextmanager
    def __call__(self, session: Session) -> Iterator[None]:
        if session.info.get(_OPEN_UNIT):
            # Already inside one of our transactions (a host handler that calls
            # create_customer, say): join it, so the event's work commits or rolls
            # back as one, and an early commit can never mark the event processed.
            yield
            return
        session.info[_OPEN_UNIT] = True
        current = _current_statements.set(self.statements)
        try:
            if isinstance(session.get_bind().engine.pool, StaticPool):
                with self._shared_connection, self._transaction(session):
                    yield
            else:
                with self._transaction(session):
                    yield
        finally:
            _current_statements.reset(current)
            session.info.pop(_OPEN_UNIT, None)

    @contextmanager
    def read(self, session: Session) -> Iterator[None]:
        """A short read before the work (no write lock), ended before the block returns.

        Inside a transaction already open on ``session`` (the host's, or ours) the read
        joins it and leaves it open: it is not ours to end. Otherwise the transaction
        the read began is committed at once (nothing was written; loaded objects stay
        loaded), so no transaction stays open while the caller waits on something
        else, say the Stripe API.
        """
        if session.info.get(_OPEN_UNIT) or session.in_transaction():
            yield
            return
        shared = isinstance(session.get_bind().engine.pool, StaticPool)
        with self._shared_connection if shared else _no_lock():
            try:
                yield
            except BaseException:
                session.rollback()
                raise
            if session.in_transaction():
                _commit(session, session.connection())

    @staticmethod
    def is_open(session: Session) -> bool:
        """Whether one of our transactions is open on ``session`` (a new unit would join it)."""
        return bool(session.info.get(_OPEN_UNIT))

    @staticmethod
    def defer(session: Session, notifications: list[Any]) -> bool:
        """Keep ``notifications`` for the open transaction's owner to send after its commit.

        False when no transaction of ours is open: the caller committed and sends them.
        """
        if not session.info.get(_OPEN_UNIT):
            return False
        session.info.setdefault(_DEFERRED, []).extend(notifications)
        return True

    @staticmethod
    def take_deferred(session: Session) -> list[Any]:
        """The notifications nested calls deferred (to send once committed, or to drop)."""
        deferred: list[Any] = session.info.pop(_DEFERRED, [])
        return deferred

    @contextmanager
    def _transaction(self, session: Session) -> Iterator[None]:
        try:
            connection = session.connection()
            if connection.dialect.name == "sqlite":
                _begin_immediate(connection, self.busy_timeout)
            yield
            _commit(session, connection)
        except BaseException:
            session.rollback()
            raise


@contextmanager
def _no_lock() -> Iterator[None]:
    yield


def _begin_immediate(connection: Connection, busy_timeout: float) -> None:
    """Start the transaction with SQLite's write lock, waiting up to ``busy_timeout`` for it.

    pysqlite begins a transaction only before the first write, so two workers could
    both read and then both try to write: one of them would get "database is locked"
    at once, whatever the busy timeout. ``BEGIN IMMEDIATE`` takes the lock before the
    first read of the event's work and waits for it.

    This is SQLAlchemy's pysqlite recipe (emit our own ``BEGIN``), scoped to our own
    transactions: the statement goes to the connection this session has checked out,
    right after it began, and the busy timeout is set for the wait and put back before
    anything else runs. Nothing is changed on the connection beyond that, so nothing
    needs undoing after the commit hands it back to the pool, and the host's other
    transactions keep pysqlite's behaviour (or their own recipe).
    """
    driver: Any = connection.connection.driver_connection
    if driver.in_transaction:
        # Someone already began: the host wrote in this transaction before calling us
        # (it holds the lock), or it runs its own BEGINs (its choice of lock stands).
        return
    (previous_ms,) = driver.execute("PRAGMA busy_timeout").fetchone()
    wanted_ms = int(busy_timeout * 1000)
    if previous_ms == wanted_ms:
        driver.execute("BEGIN IMMEDIATE")
        return
    driver.execute(f"PRAGMA busy_timeout = {wanted_ms}")
    try:
        driver.execute("BEGIN IMMEDIATE")
    finally:
        driver.execute(f"PRAGMA busy_timeout = {int(previous_ms)}")


def _commit(session: Session, connection: Connection) -> None:
    """Commit, keeping loaded objects loaded; raise only if the commit did not happen.

    The signals sent right after carry these objects; expiring them would make
    every receiver that reads an attribute query the row again (or fail, once
    the session has ended). Their values are exactly what was committed.
    """
    expire_on_commit = session.expire_on_commit
    session.expire_on_commit = False
    try:
        session.commit()
    except Exception:
        # The connection forgets its transaction only once the database committed it;
        # a COMMIT that failed leaves it there, to be rolled back.
        if connection.get_transaction() is not None:
            raise
        log.exception("The work committed, then something that runs after a commit raised")
        transaction = session.get_transaction()
        if transaction is not None:  # the commit stopped before handing the connection back
            transaction.close()
    finally:
        session.expire_on_commit = expire_on_commit


class Statements:
    """The statements one app's writing transactions run, each built once (per app state).

    Building a statement and its cache key costs more than running it on the hot
    path; a statement built once with ``bindparam`` placeholders costs neither again.
    Keys name the statement, its model or table and its variant (dialect, columns),
    so the cache is bounded by the code, not by the data.
    """

    def __init__(self) -> None:
        self._built: dict[Hashable, Any] = {}

    def __len__(self) -> int:
        return len(self._built)

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        statement = self._built.get(key)
        if statement is None:
            statement = self._built[key] = build()
        return statement


#: The statements of the app whose unit of work is open in this thread or task (set and
#: reset by :class:`UnitOfWork`, as Flask sets ``current_app``): the tracking rules take
#: no app and no Flask, and still use their app's statements.
_current_statements: ContextVar[Statements | None] = ContextVar(
    "partnerstack_stripe.statements", default=None
)


def cached_statement(key: Hashable, build: Callable[[], Any]) -> Any:
    """The statement ``build()`` makes, built once per ``key`` for the current app.

    Outside a unit of work it is built each time: correct, only slower.
    """
    statements = _current_statements.get()
    return build() if statements is None else statements.get(key, build)


#: The former name, for code written against it (payments.py).
prepared = cached_statement
