"""Send signals after a commit, so that one failing receiver cannot hide the others."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from blinker import NamedSignal
from flask import current_app

from .outbox import with_delivery_id

log = logging.getLogger("flask_partnerstack_stripe")


def send_notifications(
    notifications: Iterable[tuple[NamedSignal, dict[str, Any]]],
) -> list[BaseException | None]:
    """Send each signal with the current app as sender; say what each one's receivers raised.

    The data is committed by now, so a receiver that raises must not turn the
    answer into an error (Stripe would redeliver an event that is already
    applied); it is logged with its traceback instead, and the others still run.
    The answer has, per notification, the first error one of its receivers raised
    (or None): a durable delivery stays pending when one did. A data signal that is
    not durable gets ``delivery_id=None``.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    errors: list[BaseException | None] = []
    for signal, kwargs in with_delivery_id(notifications):
        first: BaseException | None = None
        for receiver in signal.receivers_for(app):
            try:
                receiver(app, **kwargs)
            except Exception as error:
                log.exception("A receiver of the %s signal raised", signal.name)
                first = first or error
        errors.append(first)
    return errors
