"""Upserts and deletes that say what they did, on every database.

PostgreSQL and SQLite have ``ON CONFLICT`` and ``RETURNING``. MySQL has neither
(``ON DUPLICATE KEY UPDATE`` has no WHERE) and MariaDB only the second, so there the
statement itself tells whether it won, through ``LAST_INSERT_ID``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session
from sqlalchemy.sql import visitors

from .database import MYSQL, dialect_name, upsert
from .rows import loaded


def insert_on_conflict(
    session: Session,
    table: Any,
    values: dict[str, Any] | sa.Select[Any],
    *,
    keys: list[Any] | None = None,
    update: Callable[[Any], dict[str, Any]] | None = None,
    where: Callable[[Any], Any] | None = None,
    whole_row: bool = False,
    columns: Sequence[str] = (),
) -> Any:
    """``INSERT`` of ``values`` that, on a conflict on ``keys``, applies ``update``.

    ``update`` and ``where`` take the row that was to be inserted (``excluded``) and give
    the new values and the condition for taking them; no ``update`` does nothing. Run it
    with :func:`won_id`: the row's id if this statement inserted it or updated it (when
    ``where`` held), else None.

    PostgreSQL and SQLite: ``ON CONFLICT (keys) DO UPDATE ... WHERE ... RETURNING id``.
    MySQL/MariaDB: ``ON DUPLICATE KEY UPDATE`` has no WHERE and MySQL 8 no RETURNING,
    so each assignment becomes ``col = IF(where, new, col)`` and the first one,
    ``id = IF(where, LAST_INSERT_ID(id), id)``, reports the id of a row it updated
    as the insert id, which is 0 when nothing was inserted nor taken over. The
    assignments run left to right on the updated row, so the columns ``where`` reads
    are assigned last, in ``update``'s order.

    ``whole_row``: also return every column after the id, for :func:`insert_loading`.
    ``values`` may be a ``SELECT`` of the ``columns`` instead (``INSERT ... SELECT``).
    On MariaDB (``INSERT ... RETURNING``, which returns the row whether the statement
    inserted, updated or left it) the id comes back as NULL when the statement lost,
    through a marker in ``LAST_INSERT_ID`` (:func:`_returning_won_row`).
    """
    dialect = session.get_bind().dialect.name
    if whole_row and _returns_inserted_rows(session, dialect):
        return _returning_won_row(table, values, columns, update, where)
    if dialect not in MYSQL:
        statement = _inserting(upsert(session, table), values, columns)
        if update is None:
            statement = statement.on_conflict_do_nothing(index_elements=keys)
        else:
            excluded = statement.excluded
            statement = statement.on_conflict_do_update(
                index_elements=keys,
                set_=update(excluded),
                where=None if where is None else where(excluded),
            )
        return statement.returning(table.c.id, *(table.columns if whole_row else ()))
    statement = _inserting(mysql.insert(table), values, columns)
    if update is None:
        return statement.on_duplicate_key_update([("id", table.c.id)])
    inserted = statement.inserted
    new = update(inserted)
    if where is None:
        assignments: list[tuple[str, Any]] = [("id", sa.func.last_insert_id(table.c.id))]
        assignments += list(new.items())
        return statement.on_duplicate_key_update(assignments)
    condition = where(inserted)
    read = _columns_read(table, condition)
    assignments = [("id", sa.func.if_(condition, sa.func.last_insert_id(table.c.id), table.c.id))]
    assignments += _guarded(table, condition, new, read)
    return statement.on_duplicate_key_update(assignments)


def _guarded(
    table: Any, condition: Any, new: dict[str, Any], read: set[str]
) -> list[tuple[str, Any]]:
    """``col = IF(condition, new, col)`` for each of ``new``, the columns ``condition``
    reads (``read``) last."""
    # When it updates more than one column the condition reads, the later ones see it
    # re-read with the earlier ones' new values: each such value must then carry its own
    # condition (a CASE), as the refund upsert's do.
    ordered = sorted(new.items(), key=lambda item: item[0] in read)
    return [(name, sa.func.if_(condition, value, table.c[name])) for name, value in ordered]


def _columns_read(table: Any, condition: Any) -> set[str]:
    return {
        element.name
        for element in visitors.iterate(condition)
        if isinstance(element, sa.Column) and element.table is table
    }


#: What ``LAST_INSERT_ID`` holds after a MariaDB upsert of :func:`_returning_won_row` lost:
#: the largest BIGINT UNSIGNED, which no id reaches (ids are signed).
_LOST = 2**64 - 1


def _returns_inserted_rows(session: Session, dialect: str) -> bool:
    """MariaDB 10.5+: ``INSERT ... ON DUPLICATE KEY UPDATE ... RETURNING`` (MySQL has none)."""
    return dialect in MYSQL and bool(session.get_bind().dialect.insert_returning)


def _returning_won_row(
    table: Any,
    values: dict[str, Any] | sa.Select[Any],
    columns: Sequence[str],
    update: Callable[[Any], dict[str, Any]] | None,
    where: Callable[[Any], Any] | None,
) -> Any:
    """MariaDB: the upsert of :func:`insert_on_conflict`, returning its row in one round trip.

    ``RETURNING`` gives the row as the statement left it, whether it inserted it, updated
    it or lost; the affected-rows count that tells those apart is not sent with a result
    set. So the statement marks its own outcome in ``LAST_INSERT_ID``, which
    ``LAST_INSERT_ID(x)`` sets at once, in the statement (an id the insert generates only
    reaches it when the statement ends):

    - the inserted id is ``NULLIF(LAST_INSERT_ID(0), 0)``: NULL, so the database picks the
      id as usual, and the mark is cleared before anything else is evaluated (with
      ``INSERT ... SELECT``, an item of the select list; a SELECT of no row returns none);
    - on a duplicate, the first assignment ``id = IF(where, id, IF(LAST_INSERT_ID(LOST),
      id, id))`` keeps the id and marks a lost row;
    - ``RETURNING IF(LAST_INSERT_ID() = LOST, NULL, id), <every column>``.

    The other assignments are those of the plain MySQL form, so the row is updated exactly
    as it is there; only the id's bookkeeping differs.
    """
    cleared = sa.func.nullif(sa.func.last_insert_id(0), 0)
    if isinstance(values, sa.Select):
        if "id" in columns:
            raise ValueError("insert_on_conflict(whole_row=True) lets the database pick the id")
        statement = mysql.insert(table).from_select(
            ["id", *columns], values.with_only_columns(cleared, *values.selected_columns)
        )
    else:
        if "id" in values:
            raise ValueError("insert_on_conflict(whole_row=True) lets the database pick the id")
        statement = mysql.insert(table).values({"id": cleared, **values})
    keep = table.c.id
    lost = sa.func.if_(sa.func.last_insert_id(sa.literal(_LOST, sa.BigInteger)), keep, keep)
    if update is None:
        assignments: list[tuple[str, Any]] = [("id", lost)]
    else:
        new = update(statement.inserted)
        if where is None:
            assignments = [("id", keep), *new.items()]
        else:
            condition = where(statement.inserted)
            assignments = [("id", sa.func.if_(condition, keep, lost))]
            assignments += _guarded(table, condition, new, _columns_read(table, condition))
    won = sa.func.if_(
        sa.func.last_insert_id() == sa.literal(_LOST, sa.BigInteger), sa.null(), table.c.id
    )
    return statement.on_duplicate_key_update(assignments).returning(
        won.label("won_id"), *table.columns
    )


def _inserting(
    statement: Any, values: dict[str, Any] | sa.Select[Any], columns: Sequence[str]
) -> Any:
    if isinstance(values, sa.Select):
        return statement.from_select(list(columns), values)
    return statement.values(values)


def won_id(result: Any) -> int | None:
    """The id :func:`insert_on_conflict` reports: inserted or updated by it, else None."""
    if isinstance(result, CursorResult) and not result.returns_rows:
        return int(result.lastrowid) or None  # MySQL: LAST_INSERT_ID, 0 when we lost
    row = result.first()
    return None if row is None or row[0] is None else int(row[0])


def insert_loading(
    session: Session,
    model: Any,
    statement: Any,
    params: dict[str, Any] | None = None,
    *,
    attach: bool = True,
) -> Any:
    """Run an :func:`insert_on_conflict` built with ``whole_row`` and load the ``model``
    row it won, or None (``attach``: see :func:`rows.loaded`)."""
    dialect = dialect_name(session)
    if dialect not in MYSQL or _returns_inserted_rows(session, dialect):
        row = session.connection().execute(statement, params).first()
        # The id (NULL when MariaDB's upsert lost), then the row's columns in table order.
        return (
            None
            if row is None or row[0] is None
            else loaded(session, model, row[1:], attach=attach)
        )
    row_id = won_id(session.connection().execute(statement, params))
    if row_id is None:
        return None
    return session.scalar(
        sa.select(model).where(model.id == row_id).execution_options(populate_existing=True)
    )


def delete_returning(session: Session, table: Any, where: Any, *columns: Any) -> list[Any]:
    """``DELETE FROM table WHERE where RETURNING columns`` on every database.

    MySQL 8 has no ``DELETE ... RETURNING`` (MariaDB has, and uses it): rows locked,
    read, deleted.
    """
    if session.get_bind().dialect.delete_returning:
        return list(session.execute(sa.delete(table).where(where).returning(*columns)))
    rows = list(session.execute(sa.select(table.c.id, *columns).where(where).with_for_update()))
    if rows:
        session.execute(sa.delete(table).where(table.c.id.in_([row.id for row in rows])))
    return rows
