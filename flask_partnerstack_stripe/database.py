"""The few database-specific pieces: upserts and taking SQLite's write lock up front."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

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


@contextmanager
def write_transaction(session: Session, busy_timeout: float) -> Iterator[None]:
    """Make the session's next transaction take SQLite's write lock when it begins.

    With SQLite's default deferred transactions, two workers can both read and
    then both try to write: one of them gets "database is locked" at once, the
    busy timeout notwithstanding. ``BEGIN IMMEDIATE`` takes the lock first and
    waits for it. Only the connection this session holds is changed, and only
    until the block ends, so the host's other connections keep their settings.
    PostgreSQL needs nothing here: its row locks and ``ON CONFLICT`` do the work.
    """
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        yield
        return
    driver = connection.connection.driver_connection
    isolation = driver.isolation_level  # type: ignore[union-attr]
    (timeout_ms,) = driver.execute("PRAGMA busy_timeout").fetchone()  # type: ignore[union-attr]
    driver.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")  # type: ignore[union-attr]
    # isolation_level None means the host runs its own BEGINs: leave those alone
    # (and setting None back would commit).
    if isolation is not None:
        driver.isolation_level = "IMMEDIATE"  # type: ignore[union-attr]
    try:
        yield
    finally:
        if isolation is not None:
            driver.isolation_level = isolation  # type: ignore[union-attr]
        driver.execute(f"PRAGMA busy_timeout = {timeout_ms}")  # type: ignore[union-attr]


@contextmanager
def unit_of_work(session: Session, busy_timeout: float) -> Iterator[None]:
    """One writing transaction: the write lock up front, a commit that keeps loaded
    objects loaded when the block ends, a rollback when it raises."""
    try:
        with write_transaction(session, busy_timeout):
            yield
            commit(session)
    except BaseException:
        session.rollback()
        raise


def commit(session: Session) -> None:
    """Commit, keeping loaded objects loaded.

    The signals sent right after carry these objects; expiring them would make
    every receiver that reads an attribute query the row again (or fail, once
    the session has ended). Their values are exactly what was committed.
    """
    expire_on_commit = session.expire_on_commit
    session.expire_on_commit = False
    try:
        session.commit()
    finally:
        session.expire_on_commit = expire_on_commit


_prepared: dict[Hashable, Any] = {}


def prepared(key: Hashable, build: Callable[[], Any]) -> Any:
    """The statement ``build()`` makes, built once per ``key`` and reused with bound values.

    Building a statement and its cache key costs more than running it on the hot
    path; a statement built once with ``bindparam`` placeholders costs neither again.
    """
    statement = _prepared.get(key)
    if statement is None:
        statement = _prepared[key] = build()
    return statement
