"""Send signals after a commit, so that one failing receiver cannot hide the others."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from blinker import NamedSignal
from flask import current_app

log = logging.getLogger("flask_partnerstack_stripe")


def send_notifications(notifications: Iterable[tuple[NamedSignal, dict[str, Any]]]) -> None:
    """Send each signal with the current app as sender.

    The data is committed by now, so a receiver that raises must not turn the
    answer into an error (Stripe would redeliver an event that is already
    applied); it is logged with its traceback instead, and the others still run.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    for signal, kwargs in notifications:
        for receiver in signal.receivers_for(app):
            try:
                receiver(app, **kwargs)
            except Exception:
                log.exception("A receiver of the %s signal raised", signal.name)
