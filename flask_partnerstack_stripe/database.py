"""The databases we support, and the few facts about each that the other modules ask:
which dialect a session is on, and the ``INSERT`` construct that takes its upsert clause."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

#: SQLAlchemy's names for MySQL's dialect: ``mysql+...`` URLs, and ``mariadb+...`` ones.
MYSQL = ("mysql", "mariadb")
_INSERTS = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
    "mysql": mysql.insert,
    "mariadb": mysql.insert,
}
SUPPORTED = "PostgreSQL, SQLite and MySQL/MariaDB"
#: The URL backend names of those (``mysql+pymysql://``, ``mariadb+pymysql://``, ...).
SUPPORTED_BACKENDS = frozenset(_INSERTS)


def upsert(session: Session, model: Any) -> Any:
    """An ``INSERT`` for ``model`` that supports ``ON CONFLICT`` on this session's database.

    PostgreSQL and SQLite only: on MySQL/MariaDB use :func:`upserts.insert_on_conflict`.
    """
    dialect = session.get_bind().dialect.name
    try:
        return _INSERTS[dialect](model)
    except KeyError:
        raise RuntimeError(
            f"flask-partnerstack-stripe supports {SUPPORTED}, not {dialect!r}."
        ) from None


def dialect_name(session: Session) -> str:
    return session.get_bind().dialect.name


def is_mysql(session: Session | Connection) -> bool:
    """MySQL or MariaDB (SQLAlchemy's ``mysql`` dialect, also behind ``mariadb+...`` URLs)."""
    bind = session.get_bind() if isinstance(session, Session) else session
    return bind.dialect.name in MYSQL
