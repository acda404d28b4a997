"""``flask partnerstack check``: what is configured, what is missing, what needs a hand."""

from __future__ import annotations

from datetime import timedelta

import click
import sqlalchemy as sa
from flask import current_app, url_for
from flask.cli import with_appcontext
from werkzeug.routing import BuildError

from . import outbox, reachability
from .cli_options import public_url
from .config import PREFIX
from .endpoints_check import endpoint_warnings
from .extension import get_state
from .install import local_url
from .models import utcnow
from .queued import received_before
from .redaction import mask
from .status import Status


@click.command("check")
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
