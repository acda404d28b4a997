"""For the CLI: tell "the database cannot be reached" from every other database error.

SQLAlchemy raises the same ``OperationalError`` for a refused connection and for, say, a
serialization failure at commit. Its ``handle_error`` event tells them apart: the
exception context has no connection when connecting failed, and says ``is_disconnect``
when the server went away. While a command runs, :func:`watching` notes such errors on
the exception itself (nothing kept anywhere else), and :func:`unreachable` gives the
driver's message for one of them (else None).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Engine, ExceptionContext

#: The attribute an error raised while connecting (or on a disconnect) gets: the
#: driver's message.
_NOTE = "partnerstack_stripe_unreachable"


def driver_message(error: BaseException, url: sa.URL) -> str:
    """The driver's message on one line, without the URL's password."""
    message = " ".join(str(error).split()) or type(error).__name__
    if url.password:
        message = message.replace(str(url.password), "***")
    return message


@contextmanager
def watching(engines: Iterable[Engine]) -> Iterator[None]:
    """Note the connection failures of ``engines`` while the block runs."""
    listeners = []
    for engine in engines:

        def note(context: ExceptionContext, url: sa.URL = engine.url) -> None:
            error = context.sqlalchemy_exception
            if error is not None and (context.connection is None or context.is_disconnect):
                setattr(error, _NOTE, driver_message(context.original_exception, url))

        sa.event.listen(engine, "handle_error", note)
        listeners.append((engine, note))
    try:
        yield
    finally:
        for engine, note in listeners:
            sa.event.remove(engine, "handle_error", note)


def unreachable(error: BaseException) -> str | None:
    """The driver's message if ``error`` says the database could not be reached, else None.

    An error raised while handling such an error (``__cause__``, ``__context__``) counts.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        noted = getattr(current, _NOTE, None)
        if isinstance(noted, str):
            return noted
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
