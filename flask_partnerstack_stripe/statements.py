"""The per-app statement cache: each statement built once per app, and found without
passing the app along (``transactions.UnitOfWork`` makes its app's cache current)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from contextvars import ContextVar
from typing import Any


class Statements:
    """The statements one app's writing transactions run, each built once (per app state).

    Building a statement and its cache key costs more than running it on the hot
    path; a statement built once with ``bindparam`` placeholders costs neither again.
    Keys name the statement, its model or table and its variant (dialect, columns),
    so the cache is bounded by the code, not by the data. A model's column keys
    (:func:`rows.column_keys`) are kept here too: they depend on the app's models.
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
#: reset by :class:`transactions.UnitOfWork`, as Flask sets ``current_app``): the tracking
#: rules take no app and no Flask, and still use their app's statements.
_current_statements: ContextVar[Statements | None] = ContextVar(
    "partnerstack_stripe.statements", default=None
)


def cached_statement(key: Hashable, build: Callable[[], Any]) -> Any:
    """The statement ``build()`` makes, built once per ``key`` for the current app.

    Outside a unit of work it is built each time: correct, only slower.
    """
    statements = _current_statements.get()
    return build() if statements is None else statements.get(key, build)
