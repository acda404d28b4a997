"""``flask partnerstack endpoints ...``: manual webhook endpoints, one per connected account."""

from __future__ import annotations

from typing import Any

import click
import sqlalchemy as sa
from flask import current_app, url_for
from flask.cli import AppGroup, with_appcontext

from . import accounts
from .cli_options import public_url
from .extension import get_state
from .redaction import mask

endpoints_cli = AppGroup("endpoints", help="Manual webhook endpoints, one per connected account.")


def endpoint_url(endpoint_id: str, base_url: str | None) -> str:
    with current_app.test_request_context(base_url=base_url or "http://localhost"):
        url = url_for(
            "partnerstack_stripe.endpoint_webhook", endpoint_id=endpoint_id, _external=True
        )
    return url if base_url else url.removeprefix("http://localhost")


@endpoints_cli.command("create")
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


@endpoints_cli.command("set-secret")
@click.argument("endpoint_id")
@click.argument("secret", required=False)
@with_appcontext
def set_secret(endpoint_id: str, secret: str | None) -> None:
    """Store the signing secret Stripe shows for ENDPOINT_ID.

    Without SECRET it is asked for, unechoed (or read from stdin), so that it stays out of
    the shell's history and the process list.
    """
    if secret is None:
        state = get_state()
        if accounts.find_endpoint(state.db.session(), state.models, endpoint_id) is None:
            raise click.ClickException(f"No webhook endpoint {endpoint_id!r}.")
        state.db.session.rollback()  # no transaction left open while someone types
        secret = click.prompt("Signing secret (whsec_…)", hide_input=True)
    try:
        get_state().extension.set_endpoint_secret(endpoint_id, secret)
    except LookupError as error:
        raise click.ClickException(str(error)) from None
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    click.echo(f"Signing secret stored for {endpoint_id}: {mask(secret)}")


@endpoints_cli.command("list")
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


@endpoints_cli.command("delete")
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
