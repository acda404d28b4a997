"""``flask partnerstack ...`` commands."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import click
import sqlalchemy as sa
import stripe
from flask import current_app, url_for
from flask.cli import AppGroup, ScriptInfo, with_appcontext
from werkzeug.routing import BuildError

from . import accounts, outbox, reachability
from .backfill import backfill
from .cli_rewards import commissions_cli, payouts_cli
from .config import PREFIX
from .endpoints_check import endpoint_warnings
from .extension import EXTENSION_KEY, State, get_state
from .install import local_url
from .models import utcnow
from .queued import EventFailed, apply_stored, received_before
from .receiver import KEPT_REASONS
from .redaction import error_line
from .scenarios import send_test_event
from .status import Status
from .values import is_http_url


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


def mask(secret: str | None) -> str:
    """A secret as it may be shown: its kind and last four characters."""
    if not secret:
        return "(not set)"
    kind = secret.split("_", 1)[0] + "_" if "_" in secret else ""
    return f"{kind}…{secret[-4:]}"


def public_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A ``--base-url`` option's value: an absolute http(s) URL (printed URLs build on it)."""
    if value is not None and not is_http_url(value):
        raise click.BadParameter(f"must be an http:// or https:// URL, got {value!r}.")
    return value


def endpoint_url(endpoint_id: str, base_url: str | None) -> str:
    with current_app.test_request_context(base_url=base_url or "http://localhost"):
        url = url_for(
            "partnerstack_stripe.endpoint_webhook", endpoint_id=endpoint_id, _external=True
        )
    return url if base_url else url.removeprefix("http://localhost")


@partnerstack_cli.group("endpoints")
def endpoints() -> None:
    """Manual webhook endpoints, one per connected account."""


@endpoints.command("create")
@click.argument("stripe_account_id")
@click.option("--secret", help="The endpoint's signing secret (whsec_...), if Stripe gave it.")
@click.option("--live", is_flag=True, help="For the account's live mode (default: test).")
@click.option(
    "--base-url", callback=public_url, help="The app's public URL, e.g. https://example.com."
)
@click.option(
    "--replace", is_flag=True, help="Replace the account's endpoint (its URL stops working)."
)
@with_appcontext
def create_endpoint(
    stripe_account_id: str, secret: str | None, live: bool, base_url: str | None, replace: bool
) -> None:
    """Create the endpoint of STRIPE_ACCOUNT_ID and print the URL to give Stripe."""
    state = get_state()
    extension = state.extension
    existing = accounts.find_account(state.db.session(), state.models, stripe_account_id, live)
    if existing is not None and existing.endpoint_id and not replace:
        # A second create would give it a new URL: the one pasted into Stripe would 404.
        raise click.ClickException(
            f"{stripe_account_id} already has an endpoint ({'live' if live else 'test'} "
            f"mode): {endpoint_url(existing.endpoint_id, base_url)}. Pass --replace for a "
            "new one (the old URL then stops working)."
        )
    try:
        account = extension.create_endpoint(stripe_account_id, secret, livemode=live)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    url = endpoint_url(account.endpoint_id, base_url)
    click.echo(f"Endpoint for {stripe_account_id} ({'live' if live else 'test'} mode):")
    click.echo(f"  {url}")
    if not base_url:
        click.echo("  (prefix it with your app's public URL, or pass --base-url)")
    if secret:
        click.echo(f"Signing secret stored: {mask(secret)}")
    else:
        click.echo(
            "Add this URL as a webhook endpoint in the account's Stripe dashboard, then run:\n"
            f"  flask partnerstack endpoints set-secret {account.endpoint_id}"
        )


@endpoints.command("set-secret")
@click.argument("endpoint_id")
@click.argument("secret", required=False)
@with_appcontext
def set_secret(endpoint_id: str, secret: str | None) -> None:
    """Store the signing secret Stripe shows for ENDPOINT_ID.

    Without SECRET it is asked for, unechoed (or read from stdin), so that it stays out of
    the shell's history and the process list.
    """
    if secret is None:
        secret = click.prompt("Signing secret (whsec_…)", hide_input=True)
    try:
        get_state().extension.set_endpoint_secret(endpoint_id, secret)
    except LookupError as error:
        raise click.ClickException(str(error)) from None
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    click.echo(f"Signing secret stored for {endpoint_id}: {mask(secret)}")


@endpoints.command("list")
@click.option("--base-url", callback=public_url, help="The app's public URL, to print full URLs.")
@with_appcontext
def list_endpoints(base_url: str | None) -> None:
    """List the endpoints, their accounts and (masked) secrets."""
    state = get_state()
    StripeAccount = state.models.StripeAccount
    rows: list[Any] = list(
        state.db.session.scalars(
            sa.select(StripeAccount)
            .where(StripeAccount.endpoint_id.is_not(None))
            .order_by(StripeAccount.id)
        )
    )
    if not rows:
        click.echo("No manual webhook endpoints.")
        return
    for account in rows:
        mode = "live" if account.livemode else "test"
        status = "uninstalled" if account.uninstalled_at else "active"
        click.echo(
            f"{account.endpoint_id}  {account.stripe_account_id}  {mode}  {status}  "
            f"secret {mask(account.endpoint_secret)}  {endpoint_url(account.endpoint_id, base_url)}"
        )


@endpoints.command("delete")
@click.argument("endpoint_id")
@with_appcontext
def delete_endpoint(endpoint_id: str) -> None:
    """Remove ENDPOINT_ID: its URL answers 404 from now on."""
    state = get_state()
    session = state.db.session()
    with state.unit_of_work(session):
        account = accounts.find_endpoint(session, state.models, endpoint_id)
        if account is None:
            raise click.ClickException(f"No webhook endpoint {endpoint_id!r}.")
        account.endpoint_id = None
        account.endpoint_secret = None
    click.echo(f"Deleted endpoint {endpoint_id} of {account.stripe_account_id}.")


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
    result = state.receiver.deliver_stored(
        state.db.session(), ids=delivery_ids, dead=dead, limit=None
    )
    click.echo(f"{result.delivered} delivered, {result.failed} failed ({result.dead} now dead).")
    if not state.settings.durable_signals:
        click.echo(
            "Durable signals are off (PARTNERSTACK_STRIPE_DURABLE_SIGNALS): signals are sent"
            " once, after the commit, and no delivery is kept to send again."
        )
    unknown = _unknown_deliveries(state, delivery_ids)
    unsent = len(set(delivery_ids)) - result.delivered - result.failed - len(unknown)
    if unsent > 0:
        click.echo(f"Not sent: {unsent} of the ids given (delivered already).")
    for delivery_id in unknown:
        click.echo(f"{delivery_id}: no signal delivery has this id", err=True)
    if result.failed or unknown:
        raise SystemExit(1)


def _unknown_deliveries(state: State, delivery_ids: tuple[int, ...]) -> list[int]:
    """The ``delivery_ids`` no stored delivery has, in order: a typo is not "sent already"."""
    if not delivery_ids:
        return []
    SignalDelivery = state.models.SignalDelivery
    session = state.db.session()
    known = set(
        session.scalars(sa.select(SignalDelivery.id).where(SignalDelivery.id.in_(delivery_ids)))
    )
    session.rollback()
    return sorted(set(delivery_ids) - known)


@partnerstack_cli.command("sweep")
@click.option("--older-than", "seconds", type=click.FloatRange(min=0),
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
@click.option("--older-than", "days", type=click.IntRange(min=1),
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

    try:
        counts = backfill(state, since=timestamp, stripe_account_id=account,
                          on_object=progress, on_retry=waiting, on_failure=failed)  # fmt: skip
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
    if counts["failed"]:
        click.echo("The failed objects were skipped: fix what each says, then run it again.")
        raise SystemExit(1)


@partnerstack_cli.command("check")
@click.option(
    "--base-url", callback=public_url, help="The app's public URL, to print full route URLs."
)
@click.option(
    "--stripe", "with_stripe", is_flag=True,
    help="Also read the account's webhook endpoints from Stripe and check their events.",
)  # fmt: skip
@with_appcontext
def check(base_url: str | None, with_stripe: bool) -> None:
    """Say what is configured, what is missing, whether the tables exist, and recent events."""
    state = get_state()
    settings = state.settings
    problems: list[str] = []

    click.echo("Configuration")
    secrets = ", ".join(mask(s) for s in settings.webhook_secrets) or "(none)"
    click.echo(f"  webhook secrets    {secrets}")
    if not settings.webhook_secrets:
        problems.append("PARTNERSTACK_STRIPE_WEBHOOK_SECRETS is empty: every webhook gets 400.")
    click.echo(
        f"  API key            {mask(settings.api_key)}   test key {mask(settings.test_api_key)}"
    )
    click.echo(f"  client id          {settings.client_id or '(not set: install is off)'}")
    click.echo(
        f"  transactions from  {settings.transaction_source}s, refunds {settings.refund_policy}"
    )
    click.echo(f"  match by email     {settings.match_email}")
    click.echo(f"  mode               {_mode_line(settings.livemode)}")
    signals_after = "the commit, durable (outbox)" if settings.durable_signals else "the commit"
    click.echo(f"  processing         {settings.processing}, signals after {signals_after}")
    if settings.processing == "celery" and not state.extension.can_enqueue:
        problems.append(
            "PARTNERSTACK_STRIPE_PROCESSING is 'celery' but partnerstack.init_celery(celery_app)"
            " is not called: webhooks answer queued and nothing is enqueued."
        )
    if not current_app.secret_key:
        problems.append("SECRET_KEY is not set: referral cookies and install state need it.")
    redirect_to = settings.install_redirect
    if redirect_to:
        try:
            with current_app.test_request_context():
                local_url(redirect_to)
        except BuildError:
            problems.append(
                f"PARTNERSTACK_STRIPE_INSTALL_REDIRECT {redirect_to!r} names no endpoint of the"
                " app: install and uninstall show their own page instead."
            )

    click.echo("Tables")
    existing: set[str] = set()
    try:
        existing = set(sa.inspect(state.db.engine).get_table_names())
    except sa.exc.DBAPIError as error:
        reason = reachability.unreachable(error)
        if reason is None:
            raise
        # A problem to report like the others; nothing more is read from it (no tables
        # known, so no events and no deliveries).
        click.echo(f"  cannot reach the database: {reason}")
        problems.append(f"The database cannot be reached: {reason}")
    else:
        for model in state.models:
            present = model.__tablename__ in existing
            click.echo(f"  {model.__tablename__:<32}{'present' if present else 'MISSING'}")
            if not present:
                problems.append(f"Table {model.__tablename__} is missing: run `flask db upgrade`.")

    click.echo("Routes")
    with current_app.test_request_context(base_url=base_url or "http://localhost"):
        for endpoint in ("webhook", "install", "install_callback", "uninstall"):
            name = f"partnerstack_stripe.{endpoint}"
            if name in current_app.view_functions:
                url = url_for(name, _external=True)
                click.echo(
                    f"  {endpoint:<18}{url if base_url else url.removeprefix('http://localhost')}"
                )

    if state.models.WebhookEvent.__tablename__ in existing:
        WebhookEvent = state.models.WebhookEvent
        session = state.db.session
        last = session.scalar(sa.select(WebhookEvent).order_by(WebhookEvent.id.desc()).limit(1))
        failures = session.scalar(
            sa.select(sa.func.count()).where(
                WebhookEvent.status == Status.FAILED,
                WebhookEvent.received_at > utcnow() - timedelta(days=1),
            )
        )
        latest = "(none yet)"
        if last is not None:
            latest = f"{last.stripe_event_id} {last.type} {last.status} at {last.received_at}"
        stuck = len(received_before(state, timedelta(seconds=settings.sweep_after)))
        click.echo("Events")
        click.echo(f"  last received      {latest}")
        click.echo(f"  failed, last day   {failures}")
        click.echo(f"  queued, unapplied  {stuck} (received over {settings.sweep_after:g} s ago)")
        if failures:
            problems.append(
                f"{failures} events failed in the last day: `flask partnerstack replay --failed`."
            )
        if stuck:
            problems.append(
                f"{stuck} events were received over {settings.sweep_after:g} s ago and are not"
                " applied: is a worker running? `flask partnerstack sweep` enqueues them again."
            )

    if state.models.SignalDelivery.__tablename__ in existing:
        session = state.db.session
        pending = outbox.count(session, state.models, outbox.PENDING)
        dead = outbox.count(session, state.models, outbox.DEAD)
        click.echo("Signal deliveries")
        click.echo(f"  pending            {pending}")
        click.echo(f"  dead               {dead}")
        if dead:
            problems.append(
                f"{dead} signal deliveries are dead: fix the receiver, then "
                "`flask partnerstack deliver --dead`."
            )

    if with_stripe:
        click.echo("Stripe webhook endpoints")
        with current_app.test_request_context():
            path = url_for("partnerstack_stripe.webhook")
        warnings = endpoint_warnings(settings, path)
        for warning in warnings:
            click.echo(f"  ! {warning}")
        if not warnings:
            click.echo(
                f"  the endpoint for {path} sends what {settings.transaction_source} mode needs"
            )
        problems += warnings

    if problems:
        click.echo("Missing")
        for problem in problems:
            click.echo(f"  - {problem}")
        raise SystemExit(1)
    if _mode_by_default():
        # Not a problem (a development app is rightly in test mode), but not all either.
        click.echo(
            "Everything a production install needs is in place, once "
            "PARTNERSTACK_STRIPE_LIVEMODE = True there (mode, above)."
        )
    else:
        click.echo("Everything a production install needs is in place.")


def _mode_by_default() -> bool:
    """Test mode only because neither LIVEMODE nor an API_KEY says which: the mode line's
    advice, and the verdict's."""
    config = current_app.config
    return config.get(PREFIX + "LIVEMODE") is None and not config.get(PREFIX + "API_KEY")


def _mode_line(livemode: bool) -> str:
    """The app's mode (signup customers, payouts, partner summaries) and where it came from:
    left to its default, a production app records its signups in test mode, and live
    payments never reach them."""
    if _mode_by_default():
        return (
            "test (PARTNERSTACK_STRIPE_LIVEMODE is not set, nor API_KEY): customers recorded "
            "at signup are test-mode, and live payments will not reach them; set "
            "PARTNERSTACK_STRIPE_LIVEMODE = True in production"
        )
    if current_app.config.get(PREFIX + "LIVEMODE") is not None:
        return f"{'live' if livemode else 'test'} (PARTNERSTACK_STRIPE_LIVEMODE)"
    return "live (API_KEY is a live key)" if livemode else "test (API_KEY is a test key)"


partnerstack_cli.add_command(send_test_event)
partnerstack_cli.add_command(commissions_cli)
partnerstack_cli.add_command(payouts_cli)
