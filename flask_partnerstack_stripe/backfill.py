"""Recover missed webhooks: read customers and payments from the Stripe API and apply them
through the same tracking rules, idempotently.

Each API object becomes the event a webhook would have carried for its current state
(``customer.updated``, ``charge.succeeded`` / ``.refunded`` / ``.failed``,
``invoice.payment_succeeded``, ``refund.updated``, ``charge.dispute.updated``), dated now,
so the API's state wins over older events. Applying the same state again changes nothing.
Refunds and disputes are listed by their own date: one made since ``since`` on an older
payment is what a webhook outage would have lost too. These events are not Stripe's and are
not stored: the built-in rules apply them, the host's handlers do not (they run once per
Stripe event, and a backfill run again would run them again).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import stripe

from . import signals
from .accounts import find_account
from .config import is_live_key
from .extension import State
from .reachability import unreachable
from .readers import as_dict
from .receiver import KEPT_REASONS, Outcome
from .redaction import error_line
from .status import Status

PAGE_SIZE = 100
RATE_LIMIT_RETRIES = 5

CREATED = (signals.customer_created, signals.transaction_recorded)
UPDATED = (signals.customer_updated, signals.transaction_updated, signals.transaction_deleted)


def each_object(
    resource: Any, params: dict[str, Any], *, on_retry: Callable[[int], None] | None = None
) -> Iterator[Any]:
    """Every object of a Stripe list, through its auto-pagination.

    A rate-limit error part-way is waited out and the listing resumes after the
    last object seen, so nothing is read twice or skipped.
    """
    last_id: str | None = None
    attempt = 0
    while True:
        page_params = dict(params, limit=PAGE_SIZE)
        if last_id is not None:
            page_params["starting_after"] = last_id
        try:
            for obj in resource.list(**page_params).auto_paging_iter():
                yield obj
                last_id = obj.id
            return
        except stripe.RateLimitError:
            attempt += 1
            if attempt > RATE_LIMIT_RETRIES:
                raise
            if on_retry is not None:
                on_retry(attempt)
            time.sleep(min(0.5 * 2**attempt, 8.0))


def _event_for(
    kind: str, obj: dict[str, Any], stripe_account_id: str | None, livemode: bool
) -> dict[str, Any]:
    """The event a webhook would have carried for ``obj``, in the mode of the key that read
    it: a Refund has no ``livemode`` of its own, and every object a key lists is its mode's."""
    if kind == "charge":
        refunded = obj.get("refunded") or (obj.get("amount_refunded") or 0) > 0
        kind = "charge.failed" if obj.get("status") == "failed" else (
            "charge.refunded" if refunded else "charge.succeeded"
        )  # fmt: skip
    event: dict[str, Any] = {
        "id": f"backfill_{obj['id']}",
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "livemode": livemode,
        "data": {"object": obj},
    }
    if stripe_account_id:
        event["account"] = stripe_account_id
    return event


def tally(outcome: Outcome) -> str:
    """``created``, ``updated``, ``unchanged`` or ``unmatched`` (a refund no invoice could be
    found for, which a webhook's event would have been kept for): what applying one object
    did."""
    if outcome.status == Status.IGNORED and (outcome.reason or "").startswith(KEPT_REASONS):
        return "unmatched"
    sent = {signal for signal, _ in outcome.notifications}
    if sent & set(CREATED):
        return "created"
    if sent & set(UPDATED):
        return "updated"
    return "unchanged"


def backfill(
    state: State,
    *,
    since: int,
    stripe_account_id: str | None = None,
    on_object: Callable[[str, str], None] | None = None,
    on_retry: Callable[[int], None] | None = None,
    on_failure: Callable[[str, str], None] | None = None,
    on_unmatched: Callable[[str, str], None] | None = None,
) -> Counter[str]:
    """Apply every customer, then every charge (and, in invoice mode, paid invoice), refund
    and dispute created since the Unix time ``since``, as events of the key's mode.
    Returns the counts of created, updated, unchanged, unmatched and failed.

    An object that cannot be applied (a value the rules refuse, say) is rolled back,
    counted as failed, handed to ``on_failure`` with its Stripe id and why, and skipped:
    the objects after it are still read. A database that cannot be reached stops the run.
    A refund that no invoice could be found for is counted as unmatched and handed to
    ``on_unmatched`` with its id and why: it is not stored, as backfill's events are not.
    """
    settings = state.settings
    api_key = settings.api_key
    if api_key is None:
        raise RuntimeError("Backfill reads the Stripe API: set PARTNERSTACK_STRIPE_API_KEY.")
    livemode = is_live_key(api_key)
    source = settings.transaction_source
    if stripe_account_id is not None:
        account = find_account(state.db.session(), state.models, stripe_account_id, livemode)
        if account is not None and account.transaction_source:
            source = account.transaction_source
    common = {"created": {"gte": since}, "api_key": api_key, "stripe_account": stripe_account_id}
    listings: list[tuple[str, Any, dict[str, Any]]] = [
        ("customer.updated", stripe.Customer, common),
        ("charge", stripe.Charge, common),
    ]
    if source == "invoice":
        listings.append(("invoice.payment_succeeded", stripe.Invoice, {**common, "status": "paid"}))
    # After the payments, so that a refund or dispute finds its payment recorded.
    listings += [("refund.updated", stripe.Refund, common)]
    listings += [("charge.dispute.updated", stripe.Dispute, common)]

    counts: Counter[str] = Counter()
    for kind, resource, params in listings:
        for obj in each_object(resource, params, on_retry=on_retry):
            data = as_dict(obj)
            try:
                # In the try too: an object Stripe would never list (a field of the wrong
                # type) is one failure, not the end of the run.
                event = _event_for(kind, data, stripe_account_id, livemode)
                outcome = state.receiver.run(
                    state.db.session(), event, None, stripe_account_id=stripe_account_id
                )
            except Exception as error:
                if unreachable(error) is not None:
                    raise  # every later object would fail the same way
                # Rolled back (nothing of it stays): said, skipped, and the run goes on.
                counts["failed"] += 1
                if on_failure is not None:
                    on_failure(str(data.get("id")), error_line(error))
                continue
            result = tally(outcome)
            counts[result] += 1
            if result == "unmatched" and on_unmatched is not None:
                on_unmatched(str(event["data"]["object"].get("id")), outcome.reason or "")
            if on_object is not None:
                on_object(event["type"], result)
    return counts
