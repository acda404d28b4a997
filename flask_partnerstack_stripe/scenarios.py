"""``flask partnerstack send-test-event``: signed test events, and the state they leave."""

from __future__ import annotations

import base64
import http.client
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import click
import sqlalchemy as sa
from click.core import ParameterSource
from flask import current_app
from flask.cli import with_appcontext

from . import testing
from .extension import get_state
from .values import is_http_url, money

EVENT_TYPES = (
    "customer.created",
    "customer.updated",
    "customer.deleted",
    "charge.succeeded",
    "charge.captured",
    "charge.updated",
    "charge.refunded",
    "charge.failed",
    "invoice.payment_succeeded",
    "invoice.paid",
    "invoice.payment_failed",
    "refund.created",
    "refund.failed",
    "charge.dispute.created",
    "charge.dispute.closed",
    "checkout.session.completed",
    "account.application.deauthorized",
)


@dataclass
class TestEvent:
    """What a test event is about; unset ids are derived, so calls can refer to each other."""

    customer_key: str | None = None
    partner_key: str | None = None
    email: str | None = None
    amount: int = 1000
    currency: str = "usd"
    product_key: str | None = None
    account: str | None = None
    livemode: bool = False
    stripe_customer: str | None = None
    charge: str | None = None
    invoice: str | None = None
    #: Whether a charge names a Stripe customer when it has a customer key but no
    #: ``stripe_customer`` (one is derived from the key unless a recalled charge had none).
    names_stripe_customer: bool = True

    @property
    def stripe_customer_id(self) -> str:
        if self.stripe_customer:
            return self.stripe_customer
        base = re.sub(r"[^A-Za-z0-9]", "", self.customer_key or self.email or "") or "customer"
        return f"cus_test_{base}"

    def metadata(self, *names: str) -> dict[str, str]:
        values = {name: getattr(self, name) for name in names}
        return {name: value for name, value in values.items() if value}

    def build(self, event_type: str) -> dict[str, Any]:
        """A realistic event of ``event_type`` about this customer and payment."""
        envelope = {"livemode": self.livemode, "account": self.account}
        if event_type.startswith("charge.dispute."):
            status = "lost" if event_type == "charge.dispute.closed" else "needs_response"
            obj = testing.dispute(
                charge=self.charge or testing.new_id("ch"),
                amount=self.amount,
                currency=self.currency,
                status=status,
            )
        elif event_type.startswith("customer."):
            obj = testing.customer(
                self.stripe_customer_id,
                email=self.email,
                metadata=self.metadata("customer_key", "partner_key"),
                livemode=self.livemode,
            )
        elif event_type.startswith("charge."):
            gone = {
                "charge.refunded": {"amount_refunded": self.amount},
                "charge.failed": {"status": "failed", "captured": False},
            }.get(event_type, {})
            obj = testing.charge(
                self.charge or testing.new_id("ch"),
                customer=self.stripe_customer_id
                if self.stripe_customer or (self.customer_key and self.names_stripe_customer)
                else None,
                amount=self.amount,
                currency=self.currency,
                email=self.email,
                metadata=self.metadata("product_key", "customer_key", "partner_key"),
                invoice=self.invoice,
                livemode=self.livemode,
                **gone,  # type: ignore[arg-type]
            )
        elif event_type.startswith("invoice."):
            obj = testing.invoice(
                self.invoice or testing.new_id("in"),
                customer=self.stripe_customer_id,
                subtotal=self.amount,
                currency=self.currency,
                email=self.email,
                metadata=self.metadata("product_key"),
                status="open" if event_type == "invoice.payment_failed" else "paid",
                livemode=self.livemode,
            )
        elif event_type.startswith("refund."):
            status = "failed" if event_type == "refund.failed" else "succeeded"
            obj = testing.refund(
                charge=self.charge or testing.new_id("ch"),
                amount=self.amount,
                currency=self.currency,
                status=status,
            )
        elif event_type == "checkout.session.completed":
            obj = testing.checkout_session(
                customer=self.stripe_customer_id,
                client_reference_id=self.customer_key,
                email=self.email,
                metadata=self.metadata("partner_key"),
                amount_total=self.amount,
                currency=self.currency,
                livemode=self.livemode,
            )
        elif event_type == "account.application.deauthorized":
            obj = {"id": "ca_test", "object": "application", "name": None}
        else:  # pragma: no cover - click's Choice keeps other types out
            raise ValueError(event_type)
        return testing.event(event_type, obj, **envelope)  # type: ignore[arg-type]


def deliver(event: dict[str, Any], url: str | None) -> tuple[int, dict[str, Any]]:
    """Sign ``event`` with the app's first secret and post it: to ``url``, or in-process."""
    secrets = get_state().settings.webhook_secrets
    if not secrets:
        raise click.ClickException("Set PARTNERSTACK_STRIPE_WEBHOOK_SECRETS to sign test events.")
    if url is None:
        # An unreachable database is then one line (the CLI group says so), not the
        # webhook's logged failure and a 500.
        with get_state().db.engine.connect():
            pass
        response = testing.post_event(current_app.test_client(), event, secret=secrets[0])
        return response.status_code, response.get_json(silent=True) or {}
    payload = json.dumps(event)
    if not is_http_url(url):
        raise click.ClickException(f"--url must be an http:// or https:// URL, got {url!r}.")
    headers = {"Stripe-Signature": testing.sign(payload, secrets[0]),
               "Content-Type": "application/json"}  # fmt: skip
    url, credentials = _without_credentials(url)
    request = urllib.request.Request(url, data=payload.encode(), headers=headers)
    if credentials is not None:  # a staging server behind basic auth: user:password@host
        # Unredirected: a redirect to another host never gets them.
        basic = "Basic " + base64.b64encode(credentials.encode()).decode()
        request.add_unredirected_header("Authorization", basic)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), _answer(response.read())
    except urllib.error.HTTPError as error:
        return error.code, _answer(error.read())
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise click.ClickException(f"Could not reach {url}: {reason}") from None


def _without_credentials(url: str) -> tuple[str, str | None]:
    """``url`` without its ``user:password@`` (never printed; urllib would take it for
    part of the host name), and those credentials, unquoted, if it had them."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    user, password = parts.username, parts.password or ""
    credentials = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), credentials


def _answer(body: bytes) -> dict[str, Any]:
    """The webhook's JSON answer; another server's page (a wrong --url) says so."""
    try:
        answer = json.loads(body or b"{}")
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return {"error": "the answer is not our webhook's JSON (is --url the webhook's URL?)"}
    return answer


def show_state(story: TestEvent, *keys: str | None) -> None:
    """Print the customer and transactions the story is about, as stored now."""
    state = get_state()
    session = state.db.session
    # End the last read's transaction: at MySQL's REPEATABLE READ it would keep its
    # snapshot, and what a server behind --url committed since would not show.
    session.rollback()
    Customer, Transaction = state.models.Customer, state.models.Transaction
    names = [Customer.stripe_customer_id == story.stripe_customer_id]
    if story.customer_key:
        names.append(Customer.customer_key == story.customer_key)
    customers = session.scalars(sa.select(Customer).where(sa.or_(*names))).all()
    wanted = [key for key in keys if key]
    transactions = []
    if wanted:
        transactions = session.scalars(
            sa.select(Transaction).where(Transaction.key.in_(wanted)).order_by(Transaction.id)
        ).all()
    partners = {c.id: c.partner_key for c in customers}
    rows = [("", "key", "partner", "amount", "product", "state")]
    rows += [("customer", c.customer_key, c.partner_key or "-", "", "",
              f"{c.stripe_customer_id or 'unlinked'} {c.email or ''}".strip())
             for c in customers]  # fmt: skip
    for t in transactions:
        partner = partners.get(t.customer_id) or ("?" if t.customer_id else "-")
        standing = "standing" if t.customer_id else "standing, customer unknown yet"
        rows.append(("transaction", t.key, partner, money(t.amount, t.currency),
                     t.product_key or "-",
                     f"deleted ({t.deleted_reason or 'never settled'})" if t.deleted_at
                     else standing))  # fmt: skip
    if len(rows) == 1:
        click.echo("    (nothing recorded)")
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo(
            "    "
            + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def recall_charge(story: TestEvent, given: set[str]) -> None:
    """Fill in what the command line left out (``given``: the options it set) about a
    charge already recorded (``--charge``). Stripe sends the whole charge with each of
    its events, and the newest charge wins, so a refund sent without the product key,
    the amount or the currency would read as the payment changing.

    Read from the app's own database, as the state shown afterwards is; when that cannot
    be read, the event goes as the command line says.
    """
    if story.charge is None:
        return
    state = get_state()
    Transaction = state.models.Transaction
    try:
        # A payment is unique per account and key, whatever the mode: an event about it,
        # test or live, updates that row.
        # Plain columns, not an instance: the rollback below would expire it.
        recorded = state.db.session.execute(
            sa.select(
                Transaction.product_key,
                Transaction.charged_amount,
                Transaction.gross_amount,
                Transaction.currency,
                Transaction.customer_key,
                Transaction.stripe_customer_id,
            ).where(
                Transaction.key == story.charge,
                Transaction.stripe_account_id == story.account,  # IS NULL for the platform
            )
        ).first()
    except sa.exc.SQLAlchemyError:
        return
    finally:
        state.db.session.rollback()
    if recorded is None:
        return
    if "product_key" not in given:
        story.product_key = recorded.product_key
    charged = recorded.charged_amount or recorded.gross_amount
    if "amount" not in given and charged is not None:
        story.amount = charged
    if "currency" not in given and recorded.currency:  # a row from before currency was required
        story.currency = recorded.currency
    if not given & {"customer_key", "stripe_customer"}:
        story.customer_key = recorded.customer_key
        story.stripe_customer = recorded.stripe_customer_id
        # A payment recorded without a Stripe customer is sent without one, not with
        # the customer id the test events derive from a key.
        story.names_stripe_customer = recorded.stripe_customer_id is not None


def run_step(story: TestEvent, event_type: str, url: str | None, *shown: str | None) -> None:
    event = story.build(event_type)
    status, answer = deliver(event, url)
    reason = f" ({answer['reason']})" if answer.get("reason") else ""
    verdict = answer.get("status") or answer.get("error") or ""
    click.echo(f"{event_type} {event['id']} -> HTTP {status} {verdict}{reason}")
    if status >= 500:  # the answer above says why (and the event is stored as failed)
        raise click.ClickException(f"The webhook failed to apply {event_type} (HTTP {status}).")
    if status >= 400:
        raise click.ClickException(f"The webhook refused {event_type} (HTTP {status}).")
    obj = event["data"]["object"]
    if not shown:
        is_payment = obj.get("object") in ("charge", "invoice")
        shown = (obj.get("id") if is_payment else story.charge or story.invoice,)
    show_state(story, *shown)


def play_seed(story: TestEvent, url: str | None) -> None:
    """Three stories: PartnerStack's documented one (a customer with keys, then one
    charge's whole life), a subscription renewal whose first attempt fails and whose
    retry pays, and a payment lost to a dispute."""
    story.customer_key = story.customer_key or "seed-customer"
    story.partner_key = story.partner_key or "seed-partner"
    story.charge = story.charge or testing.new_id("ch")
    click.echo("-- a charge's whole life")
    for event_type in ("customer.created", "charge.succeeded", "charge.captured",
                       "charge.updated", "charge.refunded"):  # fmt: skip
        run_step(story, event_type, url)

    click.echo("-- a subscription renewal: the card is declined, Stripe's retry pays")
    first, retry = testing.new_id("ch"), testing.new_id("ch")
    story.invoice = testing.new_id("in")
    for charge, event_type in ((first, "charge.failed"), (None, "invoice.payment_failed"),
                               (retry, "charge.succeeded"), (None, "invoice.paid")):  # fmt: skip
        story.charge = charge or story.charge
        run_step(story, event_type, url, first, retry, story.invoice)

    click.echo("-- a payment the customer disputes, and the merchant loses")
    story.charge, story.invoice = testing.new_id("ch"), None
    for event_type in ("charge.succeeded", "charge.dispute.created", "charge.dispute.closed"):
        run_step(story, event_type, url, story.charge)


#: Words of a database's name that make it a test one (``myapp_test``, ``test-app.db``).
TEST_WORDS = frozenset({"test", "tests", "testing", "testdb"})


def is_test_database(url: sa.engine.URL) -> bool:
    """The app is TESTING, or its database's name has the word ``test`` (``myapp_test``,
    ``tests.db``): the name only, not its directory, host, user or password, and a word,
    not ``latest`` or ``contest``."""
    if current_app.testing:
        return True
    name = PurePath(url.database or "").name.lower()
    return not TEST_WORDS.isdisjoint(re.split(r"[^a-z0-9]+", name))


def confirm_database(yes: bool) -> None:
    """Say which database test events go into; ask first when it is not a test one."""
    url = get_state().db.engine.url
    shown = url.render_as_string(hide_password=True)
    if not (yes or is_test_database(url)):
        click.confirm(
            f"{shown} is not a test database (the app is not TESTING and its name has no "
            "word 'test'). Write test events into it?",
            abort=True,
        )
    click.echo(f"Database: {shown}")


@click.command("send-test-event")
@click.argument("event_type", required=False, type=click.Choice(EVENT_TYPES))
@click.option("--scenario", type=click.Choice(["seed"]), help="Play a whole story instead.")
@click.option("--customer-key")
@click.option("--partner-key")
@click.option("--email")
@click.option("--amount", type=click.IntRange(min=0), default=1000, show_default=True,
              help="In minor units (cents).")  # fmt: skip
@click.option("--currency", default="usd", show_default=True)
@click.option("--product-key")
@click.option("--account", help="A connected account id (acct_...).")
@click.option("--live", is_flag=True, help="A live-mode event (default: test mode).")
@click.option("--stripe-customer", help="The Stripe customer id (default: from the key).")
@click.option("--charge", "charge_id", help="The charge id, to refund or update a charge.")
@click.option("--invoice", help="The invoice id.")
@click.option("--url", help="Post to this running webhook URL instead of applying in-process.")
@click.option("--yes", is_flag=True, help="Write into a database that is not a test one, unasked.")
@with_appcontext
def send_test_event(event_type: str | None, scenario: str | None, url: str | None, live: bool,
                    charge_id: str | None, yes: bool, **fields: Any) -> None:  # fmt: skip
    """Sign a realistic test event as Stripe would, deliver it, and show what was recorded.

    The events are recorded in the app's configured database (through the running
    app at --url, or in-process): when that is not a test database (the app is not
    TESTING and the database's name has no word "test"), it asks first, unless --yes.
    """
    if event_type is None and scenario is None:
        raise click.UsageError("Give an EVENT_TYPE or --scenario seed.")
    confirm_database(yes)
    story = TestEvent(livemode=live, charge=charge_id, **fields)
    if event_type and event_type.startswith("charge.") and "dispute" not in event_type:
        context = click.get_current_context()
        given = {
            name
            for name in ("product_key", "amount", "currency", "customer_key", "stripe_customer")
            if context.get_parameter_source(name) is not ParameterSource.DEFAULT
        }
        recall_charge(story, given)
    if scenario == "seed":
        play_seed(story, url)
    elif event_type is not None:
        run_step(story, event_type, url)
    else:
        raise click.UsageError("Give an EVENT_TYPE or --scenario seed.")
