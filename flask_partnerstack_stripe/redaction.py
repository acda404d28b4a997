"""Keep OAuth tokens and secret keys out of the ``stripe`` package's debug log, and out
of what an error shown to an operator says."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

_TOKEN_FIELD = re.compile(r'("(?:access_token|refresh_token)"\s*:\s*")[^"]*')
_SECRET_KEY = re.compile(r"\b([sr]k_(?:live|test)_)[A-Za-z0-9]+")


def redact(text: str) -> str:
    """``text`` with its secret keys and OAuth token fields masked."""
    return _SECRET_KEY.sub(r"\1[redacted]", _TOKEN_FIELD.sub(r"\1[redacted]", text))


def error_line(error: BaseException) -> str:
    """What went wrong, on one line, without secrets or the SQL's parameters (a database
    error says what its driver said), for an operator: a skipped object, a failed read."""
    cause = error.orig if isinstance(error, sa.exc.StatementError) and error.orig else error
    text = redact(" ".join(f"{type(cause).__name__}: {cause}".split()))
    return text if len(text) <= 300 else text[:299] + "…"


@contextmanager
def parameters_hidden() -> Iterator[None]:
    """Around a write of secrets (OAuth tokens, a signing secret): a database error that
    ends it propagates as it is, but without its SQL parameters, which SQLAlchemy's
    message otherwise quotes in full, in the traceback Flask logs and a shell prints."""
    try:
        yield
    except sa.exc.StatementError as error:
        error.hide_parameters = True
        raise


class RedactTokens(logging.Filter):
    """Mask OAuth tokens and secret keys in the ``stripe`` package's debug log.

    stripe-python logs every API response body at DEBUG; for the OAuth token
    exchange that body holds the connected account's tokens.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def redact_stripe_logs() -> None:
    """Add :class:`RedactTokens` to the ``stripe`` logger, once per process."""
    stripe_log = logging.getLogger("stripe")
    if not any(isinstance(f, RedactTokens) for f in stripe_log.filters):
        stripe_log.addFilter(RedactTokens())


def mask(secret: str | None) -> str:
    """A secret as it may be shown: its kind and last four characters."""
    if not secret:
        return "(not set)"
    kind = secret.split("_", 1)[0] + "_" if "_" in secret else ""
    return f"{kind}…{secret[-4:]}"
