"""``flask partnerstack ...`` commands."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import click
import sqlalchemy as sa
import stripe
from flask import current_app
from flask.cli import AppGroup, ScriptInfo, with_appcontext

from . import reachability
from .backfill import backfill
from .cli_check import check
from .cli_endpoints import endpoints_cli
from .cli_options import not_nan
from .cli_rewards import commissions_cli, payouts_cli
from .config import MAX_DAYS, MAX_SECONDS
from .extension import EXTENSION_KEY, State, get_state
from .models import utcnow
from .outbox import Delivered
from .queued import EventFailed, apply_stored, received_before
from .receiver import KEPT_REASONS
from .redaction import error_line
from .scenarios import send_test_event
from .status import Status


class OperationsGroup(AppGroup):
    """``flask partnerstack``: a database that cannot be reached, whichever command reads
    it, is one line (``Error: cannot reach the database: <the driver's message>``) and
    exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        with reachability.watching(_engines(ctx)):
            try:
                return super().invoke(ctx)
            except Exception as error:
                reason = reachability.unreachable(error)
                if reason is None:
                    raise
                raise click.ClickException(f"cannot reach the database: {reason}") from None


def _engines(ctx: click.Context) -> list[Any]:
    """The engines of the app the command runs for (none if the extension is not on it)."""
    app = current_app._get_current_object() if current_app else None  # type: ignore[attr-defined]
    if app is None:
        app = ctx.ensure_object(ScriptInfo).load_app()
    state = app.extensions.get(EXTENSION_KEY)
    if state is None:
        return []
    with app.app_context():
        return list(state.db.engines.values())


partnerstack_cli = OperationsGroup("partnerstack", help="Stripe payment tracking for partners.")


# --- operations --------------------------------------------------------------------------


@partnerstack_cli.command("replay")
@click.argument("event_ids", nargs=-1)
@click.option("--failed", is_flag=True, help="Every event stored as failed.")
@click.option("--ignored", is_flag=True, help="Every event stored as ignored.")
@click.option("--type", "event_type", help="Only events of this type.")
@with_appcontext
def replay(event_ids: tuple[str, ...], failed: bool, ignored: bool, event_type: str | None) -> None:
    """Apply stored events again: failed ones, ignored ones, or EVENT_IDS.

    Idempotent: an event that was processed stays processed and changes nothing.
    """
    state = get_state()
    WebhookEvent = state.models.WebhookEvent
    query = sa.select(WebhookEvent).order_by(WebhookEvent.id)
    statuses = [s for s, wanted in ((Status.FAILED, failed), (Status.IGNORED, ignored)) if wanted]
    if not (event_ids or statuses or event_type):
        raise click.UsageError("Say what to replay: EVENT_IDS, --failed, --ignored or --type.")
    # Stripe ids hold no spaces; a pasted one may (and MariaDB's collation ignores
    # trailing ones, so it would match while the answer said it did not).
    event_ids = tuple(event_id.strip() for event_id in event_ids)
    if event_ids:
        query = query.where(WebhookEvent.stripe_event_id.in_(event_ids))
    if statuses:
        query = query.where(WebhookEvent.status.in_(statuses))
    if event_type:
        query = query.where(WebhookEvent.type == event_type)
    stored = [(row.stripe_event_id, row.type, row.payload, row.stripe_account_id)
              for row in state.db.session.scalars(query)]  # fmt: skip
    state.db.session.rollback()
    if not stored:
        click.echo("No stored events match.")
    counts: dict[str, int] = {}
    for event_id, kind, payload, stripe_account_id in stored:
        result = _replay_one(state, payload, stripe_account_id)
        counts[result.split(" ")[0]] = counts.get(result.split(" ")[0], 0) + 1
        click.echo(f"{event_id} {kind}: {result}")
    if stored:
        click.echo(", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    missing = _not_stored(state, set(event_ids) - {event_id for event_id, *_ in stored})
    if counts.get(Status.FAILED) or missing:
        raise SystemExit(1)


def _not_stored(state: State, unmatched: set[str]) -> list[str]:
    """Say why each id given by name was not replayed; the ones not stored at all, which
    make ``replay`` fail. One stored but left out by ``--failed``, ``--ignored`` or
    ``--type`` is a note only: a script retrying its failed ids meets ones fixed since."""
    if not unmatched:
        return []
    WebhookEvent = state.models.WebhookEvent
    kept = set(
        state.db.session.scalars(
            sa.select(WebhookEvent.stripe_event_id).where(
                WebhookEvent.stripe_event_id.in_(unmatched)
            )
        )
    )
    state.db.session.rollback()
    missing = sorted(unmatched - kept)
    for event_id in sorted(kept):
        click.echo(f"{event_id}: stored, but not what the options ask for; not replayed")
    for event_id in missing:
        click.echo(f"{event_id}: no stored event has this id", err=True)
    return missing


def _replay_one(state: State, payload: str | None, stripe_account_id: str | None) -> str:
    if payload is None:
        return "skipped (its payload was not kept)"
    event = json.loads(payload)
    outcome = state.receiver.run(
        state.db.session(), event, payload, stripe_account_id=stripe_account_id, replay=True
    )
    return outcome.status + (f" ({outcome.reason})" if outcome.reason else "")


@partnerstack_cli.command("deliver")
@click.argument("delivery_ids", nargs=-1, type=int)
@click.option("--dead", is_flag=True, help="The dead deliveries instead of the pending ones.")
@with_appcontext
def deliver_command(delivery_ids: tuple[int, ...], dead: bool) -> None:
    """Send durable signals now: every pending one, the dead ones, or DELIVERY_IDS.

    Receivers get the same ``delivery_id`` each time. Hosts without Celery run this
    from cron; with Celery the ``partnerstack.deliver_signals`` task does it.
    """
    state = get_state()
    stored = _stored_deliveries(state, delivery_ids)
    unknown = sorted(set(delivery_ids) - stored)
    result = Delivered()
    if stored or not delivery_ids:  # no ids: every pending one
        result = state.receiver.deliver_stored(
            state.db.session(), ids=sorted(stored), dead=dead, limit=None
        )
    click.echo(f"{result.delivered} delivered, {result.failed} failed ({result.dead} now dead).")
    if not state.settings.durable_signals:
        click.echo(
            "Durable signals are off (PARTNERSTACK_STRIPE_DURABLE_SIGNALS): signals are sent"
            " once, after the commit, and no delivery is kept to send again."
        )
    unsent = len(stored) - result.delivered - result.failed
    if unsent > 0:
        click.echo(f"Not sent: {unsent} of the ids given (delivered already).")
    for delivery_id in unknown:
        click.echo(f"{delivery_id}: no signal delivery has this id", err=True)
    if result.failed or unknown:
        raise SystemExit(1)


#: The largest id an ``Integer`` primary key holds on PostgreSQL and MySQL.
MAX_DELIVERY_ID = 2**31 - 1


def _stored_deliveries(state: State, delivery_ids: tuple[int, ...]) -> set[int]:
    """The ``delivery_ids`` a stored delivery has: a typo is not "sent already". An id
    past the column's range is none of them, and is not asked for (the query would fail)."""
    possible = [i for i in delivery_ids if 0 < i <= MAX_DELIVERY_ID]
    if not possible:
        return set()
    SignalDelivery = state.models.SignalDelivery
    session = state.db.session()
    stored = set(
        session.scalars(sa.select(SignalDelivery.id).where(SignalDelivery.id.in_(possible)))
    )
    session.rollback()
    return stored


@partnerstack_cli.command("sweep")
@click.option("--older-than", "seconds", type=click.FloatRange(min=0, max=MAX_SECONDS),
              callback=not_nan,
              help="Seconds received (default: PARTNERSTACK_STRIPE_SWEEP_AFTER).")  # fmt: skip
@click.option("--apply", "apply_here", is_flag=True,
              help="Apply them in this process instead of enqueueing them.")  # fmt: skip
@with_appcontext
def sweep_command(seconds: float | None, apply_here: bool) -> None:
    """Enqueue again the events left received (their message was lost), or apply them."""
    state = get_state()
    age = timedelta(seconds=state.settings.sweep_after if seconds is None else seconds)
    stale = received_before(state, age)
    if stale and not (apply_here or state.extension.can_enqueue):
        raise click.ClickException(
            f"{len(stale)} events are left received, and partnerstack.init_celery("
            "celery_app) was not called in this app: nothing can be enqueued. Or use --apply."
        )
    counts: dict[str, int] = {}
    for event_id in stale:
        if apply_here:
            try:
                status = apply_stored(state, event_id)
            except EventFailed:
                status = Status.FAILED
        else:
            try:
                state.extension.enqueue(event_id)
            except Exception as error:  # the broker: kombu's errors, a refused connection
                done = counts.get("enqueued", 0)
                raise click.ClickException(
                    f"Could not enqueue {event_id} ({error_line(error)}); "
                    f"{done} of {len(stale)} enqueued, the rest stay received."
                ) from None
            status = "enqueued"
        counts[status] = counts.get(status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    click.echo(f"{len(stale)} events left received: {summary or 'nothing to do'}.")


@partnerstack_cli.command("prune")
@click.option("--older-than", "days", type=click.IntRange(min=1, max=MAX_DAYS),
              help="Days to keep (default: PARTNERSTACK_STRIPE_EVENT_RETENTION_DAYS).")  # fmt: skip
@with_appcontext
def prune(days: int | None) -> None:
    """Delete stored events older than the retention whose work is done.

    Deletes processed events and ignored ones; keeps, whatever their age, failed events
    (to replay), received ones (never applied: for the sweep) and ignored ones kept on
    purpose (unmatched refunds, to replay once an API key is set).
    """
    state = get_state()
    days = days or state.settings.event_retention_days
    WebhookEvent = state.models.WebhookEvent
    cutoff = utcnow() - timedelta(days=days)
    kept_on_purpose = sa.or_(*(WebhookEvent.error.startswith(r, autoescape=True)
                               for r in KEPT_REASONS))  # fmt: skip
    done = sa.or_(
        WebhookEvent.status == Status.PROCESSED,
        sa.and_(
            WebhookEvent.status == Status.IGNORED,
            sa.or_(WebhookEvent.error.is_(None), sa.not_(kept_on_purpose)),
        ),
    )
    session = state.db.session()
    with state.unit_of_work(session):
        deleted = session.execute(
            sa.delete(WebhookEvent).where(WebhookEvent.received_at < cutoff, done)
        ).rowcount
        kept: dict[str, int] = dict(
            session.execute(
                sa.select(WebhookEvent.status, sa.func.count())
                .where(WebhookEvent.received_at < cutoff)
                .group_by(WebhookEvent.status)
            ).all()
        )
    click.echo(f"Deleted {deleted} stored events older than {days} days.")
    why = {
        Status.FAILED: "failed (to replay)",
        Status.RECEIVED: "received and never applied (for `flask partnerstack sweep`)",
        Status.IGNORED: "unmatched refunds (to replay once PARTNERSTACK_STRIPE_API_KEY is set)",
    }
    reasons = [f"{n} {why.get(status, status)}" for status, n in sorted(kept.items())]
    click.echo(f"Kept {sum(kept.values())} older ones still needed" +
               (f": {', '.join(reasons)}." if reasons else "."))  # fmt: skip


@partnerstack_cli.command("backfill")
@click.option("--since", required=True, type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
              help="Read objects created since this date (UTC).")  # fmt: skip
@click.option("--account", help="A connected account (acct_...) instead of the platform's own.")
@with_appcontext
def backfill_command(since: datetime, account: str | None) -> None:
    """Recover missed webhooks from the Stripe API, through the same tracking rules."""
    state = get_state()
    timestamp = int(since.replace(tzinfo=timezone.utc).timestamp())
    seen = 0

    def progress(event_type: str, result: str) -> None:
        nonlocal seen
        seen += 1
        click.echo(f"\r  {seen} objects read ({event_type}: {result})".ljust(72), nl=False)

    def waiting(attempt: int) -> None:
        click.echo(f"\n  Stripe rate limit: waiting, then resuming (retry {attempt})")

    def failed(stripe_id: str, reason: str) -> None:
        nonlocal seen
        seen += 1
        click.echo(f"\n  {stripe_id} failed, skipped: {reason}")

    def unmatched(stripe_id: str, reason: str) -> None:
        click.echo(f"\n  {stripe_id} unmatched, not stored: {reason}")

    try:
        counts = backfill(state, since=timestamp, stripe_account_id=account,
                          on_object=progress, on_retry=waiting, on_failure=failed,
                          on_unmatched=unmatched)  # fmt: skip
    except RuntimeError as error:
        raise click.ClickException(str(error)) from None
    except stripe.StripeError as error:
        if seen:
            click.echo()  # end the progress line
        raise click.ClickException(
            f"Stripe API error: {error.user_message or error}. What was read is applied;"
            " running it again is safe."
        ) from None
    click.echo()
    click.echo(
        f"Backfill done: {counts['created']} created, {counts['updated']} updated, "
        f"{counts['unchanged']} unchanged, {counts['failed']} failed."
    )
    if counts["unmatched"]:
        click.echo(
            f"{counts['unmatched']} refunds or disputes could not be linked to an invoice"
            " (above): run the backfill again once they can be (its events are not stored,"
            " so there is nothing to replay)."
        )
    if counts["failed"]:
        click.echo("The failed objects were skipped: fix what each says, then run it again.")
        raise SystemExit(1)


partnerstack_cli.add_command(endpoints_cli)
partnerstack_cli.add_command(check)
partnerstack_cli.add_command(send_test_event)
partnerstack_cli.add_command(commissions_cli)
partnerstack_cli.add_command(payouts_cli)
