"""The one status type: what became of a webhook event, stored and answered."""

from __future__ import annotations

from typing import Final


class Status:
    """The statuses of ``WebhookEvent.status`` and of a receiver's outcome (plain strings).

    Plain ``str`` constants rather than an ``enum.Enum``: they are stored in a string
    column, sent in JSON answers and printed by the CLI exactly as they are.
    """

    #: Stored by the webhook in ``celery`` processing, for a worker to apply.
    RECEIVED: Final = "received"
    #: Applied and committed.
    PROCESSED: Final = "processed"
    #: Changed nothing (no handler, an uninstalled account, a rule's reason); stored with why.
    IGNORED: Final = "ignored"
    #: Applying raised: rolled back, stored with the error, to be redelivered or replayed.
    FAILED: Final = "failed"
    #: An outcome only, never stored: a copy of this event was stored already (received,
    #: processed or ignored).
    DUPLICATE: Final = "duplicate"
    #: An outcome only: stored as received and handed to the queue (``celery`` processing).
    QUEUED: Final = "queued"

    #: The statuses a stored event can have.
    STORED: Final = (RECEIVED, PROCESSED, IGNORED, FAILED)
