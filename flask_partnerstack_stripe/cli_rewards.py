"""``flask partnerstack commissions ...`` and ``flask partnerstack payouts ...``."""

from __future__ import annotations

from pathlib import Path

import click
from flask.cli import AppGroup, with_appcontext

from .commissions import counted_mode, list_commissions
from .extension import get_state
from .models import COMMISSION_STATUSES
from .payouts import payouts_csv
from .values import currency_code, money

commissions_cli = AppGroup("commissions", help="Partner commissions (PARTNERSTACK_STRIPE_REWARDS).")
payouts_cli = AppGroup("payouts", help="Pay partners what their commissions earned.")


@commissions_cli.command("approve")
@with_appcontext
def approve_command() -> None:
    """Approve pending commissions older than PARTNERSTACK_STRIPE_COMMISSION_HOLD_DAYS."""
    state = get_state()
    approved = state.extension.approve_commissions()
    days = state.settings.commission_hold_days
    click.echo(f"Approved {len(approved)} commissions pending for {days} days or more.")


@commissions_cli.command("list")
@click.option("--partner", "partner_key", help="Only this partner's commissions.")
@click.option("--status", type=click.Choice(COMMISSION_STATUSES), help="Only this status.")
@with_appcontext
def list_command(partner_key: str | None, status: str | None) -> None:
    """List commissions: id, partner, payment, amount, status, what the next payout owes."""
    state = get_state()
    rows = list_commissions(
        state.db.session(), state.models, partner_key=partner_key, status=status
    )
    if not rows:
        click.echo("No commissions match.")
        return
    for row in rows:
        due = f"  due {money(row.due, row.currency)}" if row.due else ""
        click.echo(
            f"{row.id:>6}  {row.partner_key}  {row.transaction.key}  "
            f"{money(row.amount, row.currency)}  {row.status}  "
            f"{row.created_at:%Y-%m-%d}{due}"
        )


def _currency(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--currency``, checked before anything is paid or written."""
    try:
        return None if value is None else currency_code("--currency", value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


@payouts_cli.command("export")
@click.option(
    "--currency", callback=_currency, help="Only commissions in this currency (e.g. usd)."
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the CSV to this file (default: print it).",
)
@click.option("--live/--test", "livemode", default=None,
              help="Pay commissions on live (or test-mode) payments; default: the "
                   "app's mode (see the README). Never both at once.")  # fmt: skip
@with_appcontext
def export_command(currency: str | None, out: Path | None, livemode: bool | None) -> None:
    """Pay approved commissions and clawbacks: one CSV line per partner and currency."""
    state = get_state()
    mode = livemode
    if mode is None:  # the app's mode, decided once: paid, then said
        session = state.db.session()
        with state.unit_of_work.read(session):
            mode = counted_mode(session, state.models, state.settings, None)
    created = out is not None and not out.exists()
    if out is not None:
        # Before anything is marked paid: a path that cannot be written loses no payout.
        try:
            with out.open("a"):
                pass
        except OSError as error:
            raise click.ClickException(f"Cannot write {out}: {error.strerror}.") from None
    try:
        lines = state.extension.export_payouts(currency=currency, livemode=mode)
    except ValueError as error:
        if created and out is not None:
            out.unlink()
        raise click.ClickException(str(error)) from None
    text = payouts_csv(lines)
    if out is None:
        click.echo(text, nl=False)
    elif not lines:
        if created:
            out.unlink()  # made only to check it could be; an earlier payout's file stays
    else:
        try:
            out.write_text(text)
        except OSError as error:
            # Paid already: the lines must not be lost with the file.
            click.echo(text, nl=False)
            raise click.ClickException(
                f"Payout {lines[0].payout_id} was made but {out} could not be written "
                f"({error.strerror}); its lines are printed above."
            ) from None
    which = "live" if mode else "test-mode"
    if not lines:
        click.echo(f"Nothing is due on {which} payments: no payout was made.", err=True)
    else:
        click.echo(f"Payout {lines[0].payout_id} ({which} payments): {len(lines)} lines.", err=True)
