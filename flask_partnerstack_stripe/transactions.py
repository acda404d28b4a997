"""Our writing transactions, done right on each database.

SQLite: the write lock taken when the transaction begins. MySQL/MariaDB: READ COMMITTED
for ours, the host's transactions left at their own level. Everywhere: a commit that
keeps loaded objects loaded, and a one-statement unit outside the session where it can be
(:meth:`UnitOfWork.alone`).
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.pool import Pool, StaticPool

from .database import MYSQL
from .rows import forget_waiting
from .statements import Statements, _current_statements

log = logging.getLogger("flask_partnerstack_stripe")


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
            with self._taking_turns(session.get_bind().engine), self._transaction(session):
                yield
        finally:
            _current_statements.reset(current)
            session.info.pop(_OPEN_UNIT, None)
            session.info.pop(READ_COMMITTED, None)
            forget_waiting(session)  # what no signal's receiver needed

    @contextmanager
    def read(self, session: Session) -> Iterator[None]:
        """A short read before the work (no write lock), ended before the block returns.

        Inside a transaction already open on ``session`` (the host's, or ours) the read
        joins it and leaves it open: it is not ours to end. Otherwise the transaction
        the read began is committed at once (nothing was written; loaded objects stay
        loaded), so no transaction stays open while the caller waits on something
        else, say the Stripe API.

        On MariaDB it runs at whatever level the connection it checks out has (READ
        COMMITTED if our transactions left it so, see :func:`_begin_read_committed`):
        it only spares Stripe calls, the transaction after it judges. Neither setting
        nor restoring a level for it saves a round trip either way.
        """
        if session.info.get(_OPEN_UNIT) or session.in_transaction():
            yield
            return
        with self._taking_turns(session.get_bind().engine), _checking_out_as_ours():
            try:
                yield
            except BaseException:
                session.rollback()
                raise
            if session.in_transaction():
                _commit(session, session.connection())

    def alone(self, session: Session) -> AbstractContextManager[Connection] | None:
        """A connection for one statement that is a whole transaction by itself, outside
        ``session``'s transaction machinery; None where it must run in a unit of work.

        PostgreSQL: autocommit, one round trip instead of three (BEGIN, the statement,
        COMMIT), equally durable; the pool puts the connection's level back when it takes
        it back (psycopg: a flag on the client). SQLite: the statement between our own
        ``BEGIN IMMEDIATE`` (:func:`_begin_immediate`) and its commit, on a connection of
        the pool, with none of the session's bookkeeping around it. MySQL/MariaDB: the
        statement and its ``COMMIT`` at READ COMMITTED, as our units of work run, on a
        connection of the pool, without the session's bookkeeping either (switching a
        pooled connection to autocommit and back would cost two round trips, more than the
        ``COMMIT``). Only with no transaction open, on a session bound to an engine (one
        bound to a connection, say a test's that holds a transaction, must keep the
        transaction it was given).
        """
        engine = session.get_bind()
        if not isinstance(engine, sa.Engine) or session.in_transaction():
            return None
        if engine.dialect.name == "postgresql":
            return _autocommit_connection(engine)
        if engine.dialect.name == "sqlite":
            return self._immediate_connection(engine)
        if engine.dialect.name in MYSQL:
            return _read_committed_connection(engine)
        return None

    @contextmanager
    def _immediate_connection(self, engine: sa.Engine) -> Iterator[Connection]:
        with self._taking_turns(engine), engine.connect() as connection:
            _begin_immediate(connection, self.busy_timeout, _shared(engine))
            yield connection
            connection.commit()

    def _taking_turns(self, engine: sa.Engine) -> AbstractContextManager[Any]:
        """The one connection of an in-memory database is taken in turns; others are not."""
        return self._shared_connection if _shared(engine) else _no_lock()

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
            if session.get_bind().dialect.name in MYSQL:
                connection = _begin_read_committed(session)
            else:
                connection = session.connection()
                if connection.dialect.name == "sqlite":
                    shared = _shared(connection.engine)
                    _begin_immediate(connection, self.busy_timeout, shared)
            yield
            _commit(session, connection)
        except BaseException:
            session.rollback()
            raise


@contextmanager
def _no_lock() -> Iterator[None]:
    yield


def _shared(engine: sa.Engine) -> bool:
    """In-memory SQLite: one connection every thread shares (Flask-SQLAlchemy's StaticPool)."""
    return isinstance(engine.pool, StaticPool)


@contextmanager
def _autocommit_connection(engine: sa.Engine) -> Iterator[Connection]:
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        yield connection


def _begin_immediate(connection: Connection, busy_timeout: float, shared: bool) -> None:
    """Start the transaction with SQLite's write lock, waiting up to ``busy_timeout`` for it.

    pysqlite begins a transaction only before the first write, so two workers could
    both read and then both try to write: one of them would get "database is locked"
    at once, whatever the busy timeout. ``BEGIN IMMEDIATE`` takes the lock before the
    first read of the event's work.

    We wait for it ourselves, trying again every millisecond or two, instead of through
    SQLite's busy timeout: its handler sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50 and
    then 100 ms between tries, so under several writers a webhook could sleep long
    after the lock was free (a p99 of 100 ms with 4 workers on one database file).

    This is SQLAlchemy's pysqlite recipe (emit our own ``BEGIN``), scoped to our own
    transactions: the busy timeout is set to 0 for the tries and put back before
    anything else runs, so nothing needs undoing after the commit hands the connection
    back to the pool, and the host's other transactions keep pysqlite's behaviour (or
    their own recipe). ``shared``: the one connection of an in-memory database, which
    our transactions take turns on (``UnitOfWork``): nobody else can hold its lock.
    """
    driver: Any = connection.connection.driver_connection
    if driver.in_transaction:
        # Someone already began: the host wrote in this transaction before calling us
        # (it holds the lock), or it runs its own BEGINs (its choice of lock stands).
        return
    if shared:
        driver.execute("BEGIN IMMEDIATE")
        return
    (previous_ms,) = driver.execute("PRAGMA busy_timeout").fetchone()
    driver.execute("PRAGMA busy_timeout = 0")
    try:
        deadline = time.monotonic() + busy_timeout
        while True:
            try:
                driver.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() >= deadline:
                    raise
            time.sleep(random.uniform(0.0005, 0.002))  # jittered: waiters do not march
    finally:
        driver.execute(f"PRAGMA busy_timeout = {int(previous_ms)}")


#: ``_ConnectionRecord.info`` key: MariaDB connections whose session level we set to READ
#: COMMITTED; their own level is kept in :data:`_SAVED_LEVEL` until a checkout not ours.
_SESSION_READ_COMMITTED = "partnerstack_stripe.session_read_committed"
_SAVED_LEVEL = "@partnerstack_stripe_isolation"

#: In ``session.info`` while our unit of work runs on MySQL/MariaDB at READ COMMITTED
#: (not in a transaction the host began at its own level): a plain read sees then what
#: is committed now, not a snapshot from the host's first read.
READ_COMMITTED = "partnerstack_stripe_read_committed"
#: While one of our transactions checks a connection out: the pool records checked out.
_our_checkout: ContextVar[list[Any] | None] = ContextVar(
    "partnerstack_stripe.our_checkout", default=None
)


@contextmanager
def _read_committed_connection(engine: sa.Engine) -> Iterator[Connection]:
    """A connection of ``engine``'s pool, outside any session, in a transaction of ours at
    READ COMMITTED (:func:`_at_read_committed`), committed when the block ends."""
    connection, checked_out = _checkout_as_ours(engine, engine.connect)
    with connection:
        _at_read_committed(connection, checked_out)
        yield connection
        connection.commit()


def _begin_read_committed(session: Session) -> Connection:
    """``session``'s connection, its next transaction (ours) at READ COMMITTED.

    MySQL: ``SET TRANSACTION`` (:func:`_read_committed`), one round trip per transaction.

    MariaDB: the pooled connection's *session* level is set to READ COMMITTED the first
    time one of our transactions checks it out, its own level saved in a user variable
    in the same statement, and the connection remembers it (its pool record). Our next
    transactions on it then need no statement at all. The first checkout that is not
    ours (the host's) puts the saved level back before handing the connection out
    (:func:`_restore_level`), so the host's transactions run at their own level. A
    connection the session already held (the host's transaction is open on it) is not
    ours to change: there, ``SET TRANSACTION`` as on MySQL.
    """
    bind = session.get_bind()
    if not getattr(bind.dialect, "is_mariadb", False):
        connection = session.connection()
        committed = _read_committed(connection)
    else:
        connection, checked_out = _checkout_as_ours(bind.engine, session.connection)
        committed = _at_read_committed(connection, checked_out)
    if committed:
        session.info[READ_COMMITTED] = True
    return connection


def _checkout_as_ours(
    engine: sa.Engine, checkout: Callable[[], Connection]
) -> tuple[Connection, list[Any]]:
    """``checkout()``'s connection and the pool records it checked out as ours
    (:func:`_checking_out_as_ours`). The listener that gives other checkouts their level
    back (:func:`_restore_level`) listens first, so that a host's own checkout listeners
    see the host's level."""
    listen_once(engine.pool, "checkout", _restore_level, insert=True)
    with _checking_out_as_ours() as checked_out:
        connection = checkout()
    return connection, checked_out


def _at_read_committed(connection: Connection, checked_out: list[Any]) -> bool:
    """Make ``connection``'s next transaction, ours, READ COMMITTED; ``checked_out``: the
    pool records :func:`_checking_out_as_ours` saw checked out for it (none: it was held
    already, by the host's transaction say; ``SET TRANSACTION`` then, as on MySQL).
    Whether it is (see :func:`_read_committed`)."""
    if not checked_out or not getattr(connection.dialect, "is_mariadb", False):
        return _read_committed(connection)
    # The last: a listener that finds the connection dead makes the pool reconnect and
    # send the checkout again (the record then forgot what it knew, as it should).
    record = checked_out[-1]
    if not record.info.get(_SESSION_READ_COMMITTED):
        # Assignments run left to right: the level is saved before it is changed. No
        # transaction is open on a connection just checked out (the pool rolled it back
        # when it came in), so the new level applies to the next one, ours.
        connection.exec_driver_sql(
            f"SET {_SAVED_LEVEL} = @@session.tx_isolation,"
            " @@session.tx_isolation = 'READ-COMMITTED'"
        )
        record.info[_SESSION_READ_COMMITTED] = True
    return True


def listen_once(pool: Pool, identifier: str, listener: Any, *, insert: bool = False) -> None:
    """Make ``listener`` listen for ``identifier`` on ``pool``, unless it already does.

    Asks the pool's own listeners. ``sa.event.contains`` would answer from a registry
    keyed by the ``id()`` of the pool first listened on, and a pool that
    ``engine.dispose()`` recreates inherits that key: once the first pool is freed,
    a new engine's pool allocated at its address passes for one that listens, and never
    gets the listener (seen in CI: a new app's MariaDB pool without it).
    """
    if listener not in getattr(pool.dispatch, identifier):
        sa.event.listen(pool, identifier, listener, insert=insert)


@contextmanager
def _checking_out_as_ours() -> Iterator[list[Any]]:
    """Within the block, connections checked out are ours (:func:`_restore_level` leaves
    their level as it is); the list gets their pool records."""
    checked_out: list[Any] = []
    token = _our_checkout.set(checked_out)
    try:
        yield checked_out
    finally:
        _our_checkout.reset(token)


def _restore_level(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Pool ``checkout`` listener: tell our checkouts apart; for any other, put back the
    session level :func:`_begin_read_committed` changed."""
    ours = _our_checkout.get()
    if ours is not None:
        ours.append(record)
        return
    if not record.info.pop(_SESSION_READ_COMMITTED, False):
        return
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"SET @@session.tx_isolation = {_SAVED_LEVEL}, {_SAVED_LEVEL} = NULL")
        finally:
            cursor.close()
    except Exception as error:
        # The pool then closes this connection and checks out another (a new one starts
        # at the server's level): a connection left at READ COMMITTED is never handed out.
        raise sa.exc.DisconnectionError("could not restore the isolation level") from error


def _read_committed(connection: Connection) -> bool:
    """Run our transaction (only it) at READ COMMITTED on MySQL/MariaDB.

    InnoDB's default REPEATABLE READ takes gap locks on the ranges our lookups and
    upserts scan, and two deliveries inserting near each other then deadlock. READ
    COMMITTED takes none (PostgreSQL's default level, so the rules see the same).
    ``SET TRANSACTION`` applies to the next transaction only, which is ours: nothing
    is changed on the connection for the host's later transactions. When the host
    already began one on this connection, its level stands.
    """
    try:
        connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
    except sa.exc.OperationalError as error:
        # 1568: the session already read or wrote in this transaction (the host, or our
        # own lookups before the unit began): its level stands. A failed statement does
        # not end a MySQL transaction, so it goes on.
        if getattr(error.orig, "args", (None,))[0] != 1568:
            raise
        return False
    return True


def end_request_transaction(session: Session) -> None:
    """MySQL/MariaDB: commit what the host's code began on ``session`` earlier in this
    request (a ``before_request`` hook's query), so that a webhook's event gets a
    transaction of its own. One already open keeps its level, REPEATABLE READ, and its
    snapshot, taken before the event's customer locks: the rules would not see what
    other workers committed meanwhile. Loaded objects stay loaded; pending changes the
    host has not flushed are left for the event's transaction (committed with it).

    Elsewhere the event joins it, as any transaction of the host's: PostgreSQL and
    SQLite run it at a level where each statement sees what committed before it.
    """
    if not session.in_transaction() or session.get_bind().dialect.name not in MYSQL:
        return
    if UnitOfWork.is_open(session) or session.new or session.dirty or session.deleted:
        return
    _commit(session, session.connection())


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
