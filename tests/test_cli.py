"""``flask partnerstack ...``: send-test-event, replay, prune, backfill, check."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from flask_partnerstack_stripe import testing
from flask_partnerstack_stripe.extension import get_state
from flask_partnerstack_stripe.models import utcnow
from flask_partnerstack_stripe.scenarios import EVENT_TYPES

from .apphost import NO_DATABASE, create_app
from .conftest import free_port


def run(app, *args: str):
    result = app.test_cli_runner().invoke(args=["partnerstack", *args])
    return result


# --- send-test-event -----------------------------------------------------------------


def test_send_test_event_records_and_shows_the_customer(app, rows, models):
    result = run(app, "send-test-event", "customer.created", "--customer-key", "user-7",
                 "--partner-key", "partner-x", "--email", "seven@example.com")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "HTTP 200 processed" in result.output
    assert "user-7" in result.output and "partner-x" in result.output
    [customer] = rows(models.Customer)
    assert (customer.customer_key, customer.partner_key, customer.email) == (
        "user-7",
        "partner-x",
        "seven@example.com",
    )
    charge = run(app, "send-test-event", "charge.succeeded", "--customer-key", "user-7",
                 "--amount", "4200", "--currency", "eur", "--product-key", "team")  # fmt: skip
    assert "42.00 EUR" in charge.output and "team" in charge.output
    [transaction] = rows(models.Transaction)
    assert (transaction.amount, transaction.currency, transaction.customer_id) == (
        4200,
        "eur",
        customer.id,
    )
    # In the currency's own minor unit, exactly (it went through a float before).
    yen = run(app, "send-test-event", "charge.succeeded", "--customer-key", "user-7",
              "--amount", "4200", "--currency", "jpy")  # fmt: skip
    assert "4200 JPY" in yen.output
    most = run(app, "send-test-event", "charge.succeeded", "--customer-key", "user-7",
               "--amount", str(2**63 - 1))  # fmt: skip
    assert "92233720368547758.07 USD" in most.output


@pytest.mark.parametrize(
    "app_config",
    [{"PARTNERSTACK_STRIPE_REFUND_POLICY": "prorate",
      "PARTNERSTACK_STRIPE_REWARDS": [{"percent": 20}, {"percent": 40, "product_key": "team"}]}],
)  # fmt: skip
def test_a_test_refund_of_a_recorded_charge_keeps_its_product(app, rows, models):
    """As Stripe sends the whole charge again: the refund's charge carries the product key
    the command line did not repeat, so the team rule's 40% still applies to what is left."""
    run(app, "send-test-event", "customer.created", "--customer-key", "u1", "--partner-key", "p1")
    run(app, "send-test-event", "charge.succeeded", "--customer-key", "u1", "--charge", "ch_t1",
        "--amount", "10000", "--product-key", "team")  # fmt: skip
    result = run(app, "send-test-event", "refund.created", "--charge", "ch_t1", "--amount", "5000")
    assert result.exit_code == 0, result.output
    result = run(app, "send-test-event", "charge.updated", "--charge", "ch_t1", "--amount", "10000")
    assert result.exit_code == 0, result.output
    [transaction] = rows(models.Transaction)
    assert (transaction.product_key, transaction.amount) == ("team", 5000)
    [commission] = rows(models.Commission)
    assert commission.amount == 2000


@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_REFUND_POLICY": "prorate"}])
def test_a_test_refund_of_a_recorded_charge_refunds_its_amount_in_its_currency(app, rows, models):
    """Without --amount, the refund is of the whole recorded charge (prorated, a refund of
    the default 1000 would leave 4000 standing)."""
    run(app, "send-test-event", "charge.succeeded", "--customer-key", "u1", "--charge", "ch_t2",
        "--amount", "5000", "--currency", "eur")  # fmt: skip
    result = run(app, "send-test-event", "charge.refunded", "--charge", "ch_t2")
    assert result.exit_code == 0, result.output
    [transaction] = rows(models.Transaction)
    assert (transaction.currency, transaction.deleted_reason) == ("eur", "refund")


def test_a_test_event_about_a_live_charge_keeps_its_product(app, rows, models):
    """Payments are unique per account and key, whatever the mode: a test-mode event about
    a live charge updates that row, so it is the row to recall."""
    run(app, "send-test-event", "charge.succeeded", "--customer-key", "u2", "--charge", "ch_l",
        "--amount", "5000", "--product-key", "gold", "--live")  # fmt: skip
    result = run(app, "send-test-event", "charge.updated", "--charge", "ch_l")
    assert result.exit_code == 0, result.output
    [transaction] = rows(models.Transaction)
    assert (transaction.product_key, transaction.amount) == ("gold", 5000)


def test_a_recalled_charge_without_a_stripe_customer_is_sent_without_one(app, client, rows, models):
    charge = testing.charge("ch_k", metadata={"customer_key": "k1"})
    assert charge["customer"] is None
    testing.post_event(client, testing.event("charge.succeeded", charge))
    result = run(app, "send-test-event", "charge.updated", "--charge", "ch_k")
    assert result.exit_code == 0, result.output
    [transaction] = rows(models.Transaction)
    assert (transaction.customer_key, transaction.stripe_customer_id) == ("k1", None)


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_send_test_event_knows_every_type_we_handle(app, event_type):
    result = run(app, "send-test-event", event_type, "--customer-key", "u1",
                 "--partner-key", "p1", "--account", "acct_test_1")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "HTTP 200" in result.output


def test_seed_scenario_shows_the_state_after_each_step(app, rows, models):
    result = run(app, "send-test-event", "--scenario", "seed", "--amount", "2500")
    assert result.exit_code == 0, result.output
    steps = [line for line in result.output.splitlines() if "-> HTTP 200" in line]
    assert [line.split()[0] for line in steps] == [
        "customer.created",
        "charge.succeeded",
        "charge.captured",
        "charge.updated",
        "charge.refunded",
        # A subscription renewal: declined, then Stripe's retry pays.
        "charge.failed",
        "invoice.payment_failed",
        "charge.succeeded",
        "invoice.paid",
        # A dispute, lost.
        "charge.succeeded",
        "charge.dispute.created",
        "charge.dispute.closed",
    ]
    assert "ignored (The dispute is needs_response" in result.output
    assert result.output.rstrip().endswith("deleted (dispute)")
    states = [(t.amount, t.deleted_reason) for t in rows(models.Transaction)]
    assert states == [(2500, "refund"), (2500, "failure"), (2500, None), (2500, "dispute")]


@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_TRANSACTION_SOURCE": "invoice"}])
def test_seed_scenario_in_invoice_mode_records_the_retried_invoice(app, rows, models):
    result = run(app, "send-test-event", "--scenario", "seed", "--amount", "2500")
    assert result.exit_code == 0, result.output
    assert "a retry may still pay the invoice" in result.output
    [invoice] = [t for t in rows(models.Transaction) if t.key.startswith("in_")]
    assert (invoice.amount, invoice.deleted_at) == (2500, None)


def test_send_test_event_to_a_running_app(app, server, rows, models):
    # The command runs with the server's own configuration, so it reads the same database.
    # With basic-auth credentials in the URL (a staging server's): sent, never printed.
    url = f"http://ops:s3cret@127.0.0.1:{server.port}/partnerstack/webhook"
    result = run(app, "send-test-event", "charge.succeeded", "--amount", "777", "--url", url)
    assert result.exit_code == 0, result.output
    assert "HTTP 200 processed" in result.output and "s3cret" not in result.output
    assert [t.amount for t in rows(models.Transaction)] == [777]


def test_send_test_event_never_prints_the_urls_password(app):
    url = "http://ops:s3cret@127.0.0.1:9/partnerstack/webhook"  # nothing listens there
    result = run(app, "send-test-event", "charge.succeeded", "--url", url)
    assert result.exit_code == 1 and "Could not reach http://127.0.0.1:9/" in result.output
    assert "s3cret" not in result.output


def test_seed_scenario_over_url_shows_what_the_server_committed(app, server):
    """The state after each step is read from the database the server writes to; on
    MariaDB a read transaction left open kept its first snapshot and showed no payment."""
    url = f"http://127.0.0.1:{server.port}/partnerstack/webhook"
    result = run(app, "send-test-event", "--scenario", "seed", "--amount", "2500", "--url", url)
    assert result.exit_code == 0, result.output
    shown = [line.split()[:2] for line in result.output.splitlines()]
    assert sum(1 for words in shown if words[:1] == ["transaction"]) >= 12, result.output
    assert result.output.rstrip().endswith("deleted (dispute)")


def test_send_test_event_posts_even_when_the_local_database_cannot_be_read(server, tmp_path):
    """Looking up a recorded --charge reads the local app's database; a --url run whose
    local database has no tables still posts, and only showing the state fails."""
    local = create_app(f"sqlite:///{tmp_path / 'empty_test.db'}")
    url = f"http://127.0.0.1:{server.port}/partnerstack/webhook"
    result = run(local, "send-test-event", "charge.refunded", "--charge", "ch_1", "--url", url)
    assert "HTTP 200" in result.output, result.output


@pytest.mark.parametrize(
    ("path", "said"),
    [
        ("/no-such-webhook", "is not our webhook's JSON"),  # Flask's HTML 404
        ("/partnerstack/webhook/we_not_an_endpoint", "HTTP 404"),
    ],
)
def test_send_test_event_to_a_wrong_url_says_so(app, server, path, said):
    url = f"http://127.0.0.1:{server.port}{path}"
    result = run(app, "send-test-event", "charge.succeeded", "--url", url)
    assert result.exit_code == 1 and said in result.output, result.output
    assert "The webhook refused charge.succeeded" in result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, ValueError)


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("notaurl", "--url must be an http:// or https:// URL"),
        ("http://[::1", "--url must be an http:// or https:// URL"),
        ("http://exa mple.com/", "Could not reach"),
    ],
)
def test_send_test_event_needs_an_http_url(app, url, said):
    result = run(app, "send-test-event", "charge.succeeded", "--url", url)
    assert result.exit_code == 1 and said in result.output, result.output


def test_send_test_event_needs_a_secret(database_url):
    app = create_app(database_url, PARTNERSTACK_STRIPE_WEBHOOK_SECRETS=[])
    result = run(app, "send-test-event", "customer.created")
    assert result.exit_code != 0 and "PARTNERSTACK_STRIPE_WEBHOOK_SECRETS" in result.output


# --- replay and prune ----------------------------------------------------------------


def test_replay_failed_events_is_idempotent(app, client, state, rows, models):
    broken = {"on": True}

    @state.extension.handler("checkout.session.completed")
    def sometimes_broken(event):
        if broken["on"]:
            raise RuntimeError("not today")

    events = [testing.event("checkout.session.completed", {"id": f"cs_{n}"}) for n in range(3)]
    for event in events:
        assert testing.post_event(client, event).status_code == 500
    broken["on"] = False
    result = run(app, "replay", "--failed")
    assert result.exit_code == 0, result.output
    assert result.output.count(": processed") == 3 and "3 processed" in result.output
    assert {e.status for e in rows(models.WebhookEvent)} == {"processed"}
    again = run(app, "replay", events[0]["id"])
    assert "duplicate" in again.output
    assert "No stored events match" in run(app, "replay", "--failed").output


def test_replay_reports_a_failure_and_exits_non_zero(app, client, state):
    state.extension.handler("checkout.session.completed")(lambda event: 1 / 0)
    event = testing.event("checkout.session.completed", {"id": "cs_1"})
    testing.post_event(client, event)
    result = run(app, "replay", "--type", "checkout.session.completed")
    assert result.exit_code == 1
    assert "failed (ZeroDivisionError" in result.output


def test_replay_names_an_event_id_it_has_not_stored_and_exits_non_zero(app, client):
    event = testing.event("balance.available", {"object": "balance"})
    testing.post_event(client, event)
    result = run(app, "replay", event["id"], "evt_nope")
    assert result.exit_code == 1
    assert "1 ignored" in result.output
    assert "evt_nope: no stored event has this id" in result.output


def test_replay_notes_an_id_its_options_leave_out_without_failing(app, client):
    """A script retrying its failed ids with --failed meets ones fixed since."""
    event = testing.event("balance.available", {"object": "balance"})
    testing.post_event(client, event)
    result = run(app, "replay", "--failed", f"{event['id']} ")
    assert result.exit_code == 0, result.output
    assert f"{event['id']}: stored, but not what the options ask for" in result.output


def test_prune_keeps_failed_and_recent_events(app, client, state, rows, models):
    state.extension.handler("checkout.session.completed")(lambda event: 1 / 0)
    old_ok = testing.event("balance.available", {"object": "balance"})
    old_failed = testing.event("checkout.session.completed", {"id": "cs_1"})
    recent = testing.event("balance.available", {"object": "balance"})
    for event in (old_ok, old_failed, recent):
        testing.post_event(client, event)
    with app.app_context():
        WebhookEvent = models.WebhookEvent
        state.db.session.execute(
            sa.update(WebhookEvent)
            .where(WebhookEvent.stripe_event_id.in_([old_ok["id"], old_failed["id"]]))
            .values(received_at=utcnow() - timedelta(days=100))
        )
        state.db.session.commit()
    result = run(app, "prune")
    assert "Deleted 1 stored events older than 90 days" in result.output
    assert {e.stripe_event_id for e in rows(models.WebhookEvent)} == {
        old_failed["id"],
        recent["id"],
    }


INVOICE_MODE = {"PARTNERSTACK_STRIPE_TRANSACTION_SOURCE": "invoice"}


@pytest.mark.parametrize("app_config", [INVOICE_MODE])
def test_prune_keeps_events_not_applied_and_unmatched_refunds(
    database_url, app, client, state, rows, models
):
    """Only finished work is pruned: an event left received (its enqueue was lost) is still
    to be applied by the sweep, and an unmatched refund is kept visible to be replayed."""
    old_processed = testing.event("customer.created", testing.customer("cus_1"))
    old_ignored = testing.event("balance.available", {"object": "balance"})
    # Invoice mode, basil payload, no API key: the refund cannot be linked to its invoice.
    old_unmatched = testing.event(
        "charge.refunded", testing.charge("ch_1", customer="cus_1", amount_refunded=1000)
    )
    for event in (old_processed, old_ignored, old_unmatched):
        testing.post_event(client, event)
    queued = create_app(database_url, PARTNERSTACK_STRIPE_PROCESSING="celery", **INVOICE_MODE)
    old_received = testing.event("invoice.paid", testing.invoice("in_2", subtotal=500))
    # No init_celery: stored as received, as when the process died before enqueueing it.
    assert testing.post_event(queued.test_client(), old_received).json["status"] == "queued"
    statuses = {e.stripe_event_id: e.status for e in rows(models.WebhookEvent)}
    assert [statuses[e["id"]] for e in (old_ignored, old_unmatched, old_received)] == [
        "ignored", "ignored", "received"
    ]  # fmt: skip
    with app.app_context():
        state.db.session.execute(
            sa.update(models.WebhookEvent).values(received_at=utcnow() - timedelta(days=100))
        )
        state.db.session.commit()

    result = run(app, "prune")
    assert result.exit_code == 0, result.output
    assert "Deleted 2 stored events older than 90 days." in result.output
    assert "Kept 2 older ones still needed: " in result.output
    assert "1 received and never applied" in result.output
    assert "1 unmatched refunds" in result.output
    assert {e.stripe_event_id for e in rows(models.WebhookEvent)} == {
        old_unmatched["id"],
        old_received["id"],
    }
    # The sweep still finds the received event and applies it.
    swept = run(queued, "sweep", "--older-than", "0", "--apply")
    with queued.app_context():
        get_state(queued).db.engine.dispose()
    assert "1 events left received: 1 processed." in swept.output, swept.output
    assert [(t.key, t.amount) for t in rows(models.Transaction)] == [("in_2", 500)]


# --- backfill ------------------------------------------------------------------------


def stripe_list(objects: list[dict[str, Any]], url: str, page_size: int = 2):
    """A fake list endpoint that pages like Stripe's (``starting_after``, ``has_more``)."""

    def reply(request):
        start = 0
        if "starting_after" in request.params:
            ids = [o["id"] for o in objects]
            start = ids.index(request.params["starting_after"][0]) + 1
        page = objects[start : start + page_size]
        more = start + page_size < len(objects)
        return {"object": "list", "url": url, "has_more": more, "data": page}

    return reply


def no_refunds_or_disputes(api) -> None:
    api.reply("GET", "/v1/refunds", stripe_list([], "/v1/refunds"))
    api.reply("GET", "/v1/disputes", stripe_list([], "/v1/disputes"))


def rate_limited_once(inner):
    calls = {"n": 0}

    def reply(request):
        calls["n"] += 1
        if calls["n"] == 2:  # the second page: Stripe says slow down
            return {"error": {"type": "invalid_request_error", "code": "rate_limit",
                              "message": "Too many requests"}}, 429  # fmt: skip
        return inner(request)

    return reply


@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_API_KEY": "sk_test_backfill"}])
def test_backfill_pages_retries_and_is_idempotent(app, client, rows, models):
    customers = [
        testing.customer(f"cus_{n}", metadata={"customer_key": f"user-{n}", "partner_key": "p"})
        for n in range(5)
    ]
    charges = [testing.charge(f"ch_{n}", customer=f"cus_{n % 5}", amount=100 * (n + 1))
               for n in range(7)]  # fmt: skip
    charges[6] = testing.charge("ch_6", customer="cus_1", amount=700, amount_refunded=700)
    # A webhook already recorded one charge: backfill must not count it again.
    testing.post_event(client, testing.event("charge.succeeded", charges[0]))

    with testing.fake_stripe_api() as api:
        api.reply("GET", "/v1/customers", stripe_list(customers, "/v1/customers"))
        api.reply("GET", "/v1/charges", rate_limited_once(stripe_list(charges, "/v1/charges")))
        no_refunds_or_disputes(api)
        first = run(app, "backfill", "--since", "2026-01-01")
        assert first.exit_code == 0, first.output
        assert "rate limit" in first.output
        # 5 customers and ch_1..ch_5 are new; ch_0 was recorded by its webhook, and the
        # refunded ch_6 never stood.
        assert "Backfill done: 10 created, 0 updated, 2 unchanged, 0 failed." in first.output
        customer_requests = [r for r in api.requests if r.path == "/v1/customers"]
        assert len(customer_requests) == 3  # 5 customers, 2 a page
        assert customer_requests[0].params["created[gte]"] == ["1767225600"]
        assert customer_requests[0].headers["Authorization"] == "Bearer sk_test_backfill"

        second = run(app, "backfill", "--since", "2026-01-01")
        assert "Backfill done: 0 created, 0 updated, 12 unchanged, 0 failed." in second.output

    standing = {t.key: t.amount for t in rows(models.Transaction) if t.deleted_at is None}
    assert standing == {f"ch_{n}": 100 * (n + 1) for n in range(6)}
    assert len(rows(models.Customer)) == 5
    assert all(t.customer_id is not None for t in rows(models.Transaction))


@pytest.mark.parametrize(
    "app_config",
    [{"PARTNERSTACK_STRIPE_API_KEY": "sk_test_backfill",
      "PARTNERSTACK_STRIPE_TRANSACTION_SOURCE": "invoice"}],
)  # fmt: skip
def test_backfill_in_invoice_mode_records_an_invoice_paid_after_a_failed_attempt(app, rows, models):
    """Backfill reads charges before invoices: the failed first attempt must not stop the
    invoice its retry paid from being recorded."""
    version = testing.PRE_BASIL_API_VERSION
    charges = [
        testing.charge("ch_a", amount=2900, status="failed", captured=False, invoice="in_1",
                       api_version=version),
        testing.charge("ch_b", amount=2900, invoice="in_1", api_version=version),
    ]  # fmt: skip
    invoices = [testing.invoice("in_1", subtotal=2900, charge="ch_b", api_version=version)]
    with testing.fake_stripe_api() as api:
        api.reply("GET", "/v1/customers", stripe_list([], "/v1/customers"))
        api.reply("GET", "/v1/charges", stripe_list(charges, "/v1/charges"))
        api.reply("GET", "/v1/invoices", stripe_list(invoices, "/v1/invoices"))
        no_refunds_or_disputes(api)
        result = run(app, "backfill", "--since", "2026-01-01")
    assert result.exit_code == 0, result.output
    assert [(t.key, t.amount, t.deleted_at) for t in rows(models.Transaction)] == [
        ("in_1", 2900, None)
    ]


@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_API_KEY": "sk_test_backfill"}])
def test_backfill_reports_and_skips_an_object_it_cannot_apply(app, rows, models):
    """Stripe takes emails of up to 512 characters, the customers table 320: that customer
    is reported and skipped, and every object after it is still read and applied."""
    long_email = "a" * 330 + "@example.com"
    customers = [
        testing.customer("cus_1", metadata={"customer_key": "user-1", "partner_key": "p"}),
        {**testing.customer("cus_2", metadata={"customer_key": "user-2", "partner_key": "p"}),
         "email": long_email},
        testing.customer("cus_3", metadata={"customer_key": "user-3", "partner_key": "p"}),
    ]  # fmt: skip
    charges = [
        # A field of a type Stripe never sends: that charge fails alone, the run goes on.
        {**testing.charge("ch_odd", customer="cus_3"), "amount_refunded": "12"},
        testing.charge("ch_1", customer="cus_3", amount=500),
    ]
    with testing.fake_stripe_api() as api:
        api.reply("GET", "/v1/customers", stripe_list(customers, "/v1/customers"))
        api.reply("GET", "/v1/charges", stripe_list(charges, "/v1/charges"))
        no_refunds_or_disputes(api)
        result = run(app, "backfill", "--since", "2026-01-01")
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
    assert "cus_2 failed, skipped: InvalidValue: email is longer than 320" in result.output
    assert "ch_odd failed, skipped: " in result.output
    assert "Backfill done: 3 created, 0 updated, 0 unchanged, 2 failed." in result.output
    assert long_email not in result.output and "sk_test_backfill" not in result.output
    assert [c.customer_key for c in rows(models.Customer)] == ["user-1", "user-3"]
    [user_3] = rows(models.Customer, customer_key="user-3")
    [payment] = rows(models.Transaction)
    assert (payment.key, payment.amount, payment.customer_id) == ("ch_1", 500, user_3.id)


@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_API_KEY": "sk_test_backfill"}])
def test_backfill_recovers_refunds_and_disputes_of_older_payments_and_runs_no_host_handler(
    app, client, rows, models
):
    """A webhook outage since March loses the refunds and disputes made since then, on
    payments of February too: backfill lists them by their own date. The host's handler
    ran for the Stripe event; backfill's events (made again on every run) run none."""
    handled: list[str] = []
    partnerstack = get_state(app).extension
    partnerstack.handler("charge.succeeded")(lambda event: handled.append(event["id"]))
    customer = testing.customer("cus_1", metadata={"customer_key": "u1", "partner_key": "p"})
    testing.post_event(client, testing.event("customer.created", customer))
    older = [testing.charge(f"ch_{n}", customer="cus_1", amount=1000) for n in (1, 2, 3)]
    for charge in older:
        testing.post_event(client, testing.event("charge.succeeded", charge))
    since_march = [testing.charge("ch_4", customer="cus_1", amount=400)]
    refunds = [testing.refund("re_1", charge="ch_1", amount=1000)]
    disputes = [testing.dispute("dp_2", charge="ch_2", status="lost"),
                testing.dispute("dp_3", charge="ch_3", status="under_review")]  # fmt: skip
    with testing.fake_stripe_api() as api:
        api.reply("GET", "/v1/customers", stripe_list([customer], "/v1/customers"))
        api.reply("GET", "/v1/charges", stripe_list(since_march, "/v1/charges"))
        api.reply("GET", "/v1/refunds", stripe_list(refunds, "/v1/refunds"))
        api.reply("GET", "/v1/disputes", stripe_list(disputes, "/v1/disputes"))
        first = run(app, "backfill", "--since", "2026-03-01")
        again = run(app, "backfill", "--since", "2026-03-01")
    assert first.exit_code == 0, first.output
    assert "Backfill done: 1 created, 2 updated, 2 unchanged, 0 failed." in first.output
    assert "Backfill done: 0 created, 0 updated, 5 unchanged, 0 failed." in again.output
    [refunds_read] = [r for r in api.requests if r.path == "/v1/refunds"][:1]
    assert refunds_read.params["created[gte]"] == ["1772323200"]
    ledger = {t.key: (t.amount, t.deleted_reason) for t in rows(models.Transaction)}
    assert ledger == {"ch_1": (1000, "refund"), "ch_2": (1000, "dispute"),
                      "ch_3": (1000, None), "ch_4": (400, None)}  # fmt: skip
    assert len(handled) == 3 and not any(i.startswith("backfill_") for i in handled)


@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_API_KEY": "sk_live_backfill"}])
def test_backfill_with_a_live_key_applies_refunds_in_live_mode(app, client, rows, models):
    """A Refund object says no livemode: the key that listed it does."""
    customer = testing.customer("cus_1", metadata={"customer_key": "u1", "partner_key": "p"})
    testing.post_event(client, testing.event("customer.created", customer, livemode=True))
    charge = {**testing.charge("ch_1", customer="cus_1", amount=5000), "livemode": True}
    testing.post_event(client, testing.event("charge.succeeded", charge, livemode=True))
    with testing.fake_stripe_api() as api:
        api.reply("GET", "/v1/customers", stripe_list([], "/v1/customers"))
        api.reply("GET", "/v1/charges", stripe_list([], "/v1/charges"))
        api.reply("GET", "/v1/refunds", stripe_list(
            [testing.refund("re_1", charge="ch_1", amount=5000)], "/v1/refunds"))  # fmt: skip
        api.reply("GET", "/v1/disputes", stripe_list([], "/v1/disputes"))
        result = run(app, "backfill", "--since", "2026-03-01")
    assert "Backfill done: 0 created, 1 updated, 0 unchanged, 0 failed." in result.output
    assert [(t.key, t.livemode, t.deleted_reason) for t in rows(models.Transaction)] == [
        ("ch_1", True, "refund")
    ]


@pytest.mark.parametrize(
    "app_config",
    [{"PARTNERSTACK_STRIPE_API_KEY": "sk_test_backfill",
      "PARTNERSTACK_STRIPE_TRANSACTION_SOURCE": "invoice"}],
)  # fmt: skip
def test_backfill_says_which_refunds_it_could_not_link_to_an_invoice(app, rows, models):
    """A webhook's unmatched refund is stored to replay; backfill's events are not stored,
    so it names them instead of counting them unchanged."""
    refund = testing.refund("re_2", charge="ch_old", amount=500, payment_intent="pi_2")
    with testing.fake_stripe_api() as api:
        api.reply("GET", "/v1/customers", stripe_list([], "/v1/customers"))
        api.reply("GET", "/v1/charges", stripe_list([], "/v1/charges"))
        api.reply("GET", "/v1/invoices", stripe_list([], "/v1/invoices"))
        api.reply("GET", "/v1/refunds", stripe_list([refund], "/v1/refunds"))
        api.reply("GET", "/v1/disputes", stripe_list([], "/v1/disputes"))
        api.reply("GET", "/v1/invoice_payments", stripe_list([], "/v1/invoice_payments"))
        result = run(app, "backfill", "--since", "2026-03-01")
    assert result.exit_code == 0, result.output
    assert "re_2 unmatched, not stored: Unmatched refund: the charge ch_old" in result.output
    assert "Backfill done: 0 created, 0 updated, 0 unchanged, 0 failed." in result.output
    assert "1 refunds or disputes could not be linked to an invoice" in result.output
    assert rows(models.WebhookEvent) == []


@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_API_KEY": "sk_test_backfill"}])
def test_a_test_event_after_a_backfill_is_newer_than_it(app, client, rows, models):
    """Backfill dates its events now; testing.event's default times follow the wall clock,
    so a test's webhook afterwards is the newer one, as Stripe's would be."""
    metadata = {"customer_key": "u1", "partner_key": "p"}
    with testing.fake_stripe_api() as api:
        api.reply("GET", "/v1/customers", stripe_list(
            [testing.customer("cus_1", email="old@example.com", metadata=metadata)],
            "/v1/customers"))  # fmt: skip
        api.reply("GET", "/v1/charges", stripe_list([], "/v1/charges"))
        no_refunds_or_disputes(api)
        assert run(app, "backfill", "--since", "2026-01-01").exit_code == 0
    updated = testing.customer("cus_1", email="new@example.com", metadata=metadata)
    testing.post_event(client, testing.event("customer.updated", updated))
    assert [c.email for c in rows(models.Customer)] == ["new@example.com"]


def test_backfill_needs_an_api_key(app):
    result = run(app, "backfill", "--since", "2026-01-01")
    assert result.exit_code != 0 and "PARTNERSTACK_STRIPE_API_KEY" in result.output


# --- check ---------------------------------------------------------------------------


def test_check_passes_on_a_complete_install(app):
    result = run(app, "check", "--base-url", "https://shop.example")
    assert result.exit_code == 0, result.output
    assert "https://shop.example/partnerstack/webhook" in result.output
    assert "whsec_…" in result.output and "present" in result.output
    assert "whsec_test_7a1c9e1d0b5f4e2a" not in result.output
    assert "processing         inline, signals after the commit" in result.output
    # No PARTNERSTACK_STRIPE_LIVEMODE and a test key: said, since signups are then test-mode.
    assert "mode               test (PARTNERSTACK_STRIPE_LIVEMODE is not set" in result.output
    # ... and the verdict does not contradict that advice.
    assert result.output.rstrip().endswith(
        "in place, once PARTNERSTACK_STRIPE_LIVEMODE = True there (mode, above)."
    )


@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_LIVEMODE": True}])
def test_check_passes_without_a_but_once_the_mode_is_set(app):
    result = run(app, "check")
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("Everything a production install needs is in place.")


@pytest.mark.parametrize(
    ("config", "said"),
    [
        ({"PARTNERSTACK_STRIPE_LIVEMODE": True}, "live (PARTNERSTACK_STRIPE_LIVEMODE)"),
        ({"PARTNERSTACK_STRIPE_LIVEMODE": False}, "test (PARTNERSTACK_STRIPE_LIVEMODE)"),
        ({"PARTNERSTACK_STRIPE_API_KEY": "sk_live_x"}, "live (API_KEY is a live key)"),
        ({"PARTNERSTACK_STRIPE_API_KEY": "sk_test_x"}, "test (API_KEY is a test key)"),
    ],
)
def test_check_says_the_apps_mode_and_why(config, said):
    result = run(create_app(NO_DATABASE, **config), "check")
    assert f"mode               {said}\n" in result.output


@pytest.mark.parametrize("command", [["check"], ["endpoints", "list"]])
@pytest.mark.parametrize("url", ["notaurl", "shop.example", "ftp://shop.example", "http://[::1"])
def test_a_base_url_must_be_an_http_url(command, url):
    result = run(create_app(NO_DATABASE), *command, "--base-url", url)
    assert result.exit_code == 2 and "must be an http:// or https:// URL" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["prune", "--older-than", "800000"],
        ["prune", "--older-than", "99999999999"],
        ["sweep", "--older-than", "nan"],
        ["sweep", "--older-than", "inf"],
        ["sweep", "--older-than", "1e12"],
    ],
)
def test_an_age_past_any_date_is_a_usage_error(args):
    """Not an OverflowError's traceback: click says which option is wrong."""
    result = run(create_app(NO_DATABASE), *args)
    assert result.exit_code == 2 and "--older-than" in result.output, result.output


def test_check_fails_on_missing_secrets_tables_and_failures(database_url, app, state):
    state.extension.handler("checkout.session.completed")(lambda event: 1 / 0)
    # Not pytest-flask's client: it keeps the last request's app context pushed, and
    # `flask` commands run in whatever app context is current.
    event = testing.event("checkout.session.completed", {"id": "cs_1"})
    testing.post_event(app.test_client(), event)
    result = run(app, "check")
    assert result.exit_code == 1 and "1 events failed in the last day" in result.output

    bare = create_app(database_url, PARTNERSTACK_STRIPE_WEBHOOK_SECRETS=[])
    with bare.app_context():
        bare.extensions["partnerstack_stripe"].db.drop_all()
    result = run(bare, "check")
    with bare.app_context():
        bare.extensions["partnerstack_stripe"].db.engine.dispose()
    assert result.exit_code == 1
    assert "WEBHOOK_SECRETS is empty" in result.output
    assert "MISSING" in result.output and "flask db upgrade" in result.output


@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_PROCESSING": "celery"}])
def test_check_and_sweep_say_when_queued_events_go_nowhere(app, state, rows, models):
    """Celery processing without init_celery: every webhook answers queued, and nothing
    is ever enqueued. check says so, and so do events left received past SWEEP_AFTER."""
    event = testing.event("checkout.session.completed", {"id": "cs_1"})
    assert testing.post_event(app.test_client(), event).json["status"] == "queued"
    result = run(app, "check")
    assert result.exit_code == 1
    assert "init_celery(celery_app) is not called" in result.output
    assert "queued, unapplied  0" in result.output
    with app.app_context():
        state.db.session.execute(
            sa.update(models.WebhookEvent).values(received_at=utcnow() - timedelta(hours=1))
        )
        state.db.session.commit()
    result = run(app, "check")
    assert "1 events were received over 60 s ago and are not applied" in result.output
    swept = run(app, "sweep")
    assert swept.exit_code == 1 and "Or use --apply" in swept.output
    assert "Traceback" not in swept.output
    assert run(app, "sweep", "--apply").exit_code == 0
    assert [e.status for e in rows(models.WebhookEvent)] == ["ignored"]  # applied: no customer


def _endpoints(*endpoints: dict[str, Any]) -> dict[str, Any]:
    """``GET /v1/webhook_endpoints`` as Stripe answers it (API reference, "List all webhook
    endpoints": a list of WebhookEndpoint objects with url, enabled_events, api_version)."""
    data = [
        {"object": "webhook_endpoint", "status": "enabled", "api_version": None, **e}
        for e in endpoints
    ]
    return {"object": "list", "url": "/v1/webhook_endpoints", "has_more": False, "data": data}


@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_API_KEY": "sk_test_platform"}])
def test_check_stripe_warns_about_the_endpoint_of_this_app(app):
    other = {"id": "we_other", "url": "https://elsewhere.example/hook", "enabled_events": ["*"]}
    only_invoices = {
        "id": "we_1", "url": "https://shop.example/partnerstack/webhook",
        "enabled_events": ["invoice.paid", "customer.created"], "api_version": "2026-07-29.dahlia",
    }  # fmt: skip
    with testing.fake_stripe_api() as api:
        api.reply("GET", "/v1/webhook_endpoints", _endpoints(other, only_invoices))
        result = run(app, "check", "--stripe")
    assert result.exit_code == 1, result.output
    assert "we_other" not in result.output
    assert "does not send charge.succeeded, which charge mode needs" in result.output
    assert "does not send charge.refunded or refund.created" in result.output
    assert "sends invoice events, which charge mode does not record from" in result.output
    assert "API version 2026-07-29.dahlia" in result.output
    assert api.requests[0].headers["Authorization"] == "Bearer sk_test_platform"

    complete = {
        "id": "we_2", "url": "https://shop.example/partnerstack/webhook",
        "enabled_events": [
            "charge.succeeded", "charge.failed", "charge.refunded", "refund.failed",
            "charge.dispute.closed", "customer.updated",
        ],
        "api_version": "2025-03-31.basil",
    }  # fmt: skip
    with testing.fake_stripe_api() as api:
        api.reply("GET", "/v1/webhook_endpoints", _endpoints(other, complete))
        result = run(app, "check", "--stripe")
    assert result.exit_code == 0, result.output
    assert "sends what charge mode needs" in result.output


def test_check_stripe_without_an_api_key_says_so(app):
    result = run(app, "check", "--stripe")
    assert result.exit_code == 1
    assert "--stripe needs PARTNERSTACK_STRIPE_API_KEY" in result.output


def test_send_test_event_asks_before_writing_into_a_database_that_is_not_a_test_one(tmp_path):
    # pytest's tmp_path says "test" in its folders: only the database's own name counts,
    # and as a word ("latest" is not "test").
    database = tmp_path / "latest.db"
    app = create_app(f"sqlite:///{database}")
    assert not app.testing
    with app.app_context():
        app.extensions["sqlalchemy"].create_all()
    runner = app.test_cli_runner()
    args = ["partnerstack", "send-test-event", "customer.created", "--customer-key", "u1",
            "--partner-key", "p1"]  # fmt: skip

    refused = runner.invoke(args=args, input="n\n")
    assert refused.exit_code == 1 and "is not a test database" in refused.output
    assert "-> HTTP" not in refused.output

    accepted = runner.invoke(args=[*args, "--yes"])
    assert accepted.exit_code == 0, accepted.output
    assert f"Database: sqlite:///{database}" in accepted.output
    assert "-> HTTP 200" in accepted.output
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()

    named = create_app(f"sqlite:///{tmp_path / 'myapp_test.db'}")
    with named.app_context():
        named.extensions["sqlalchemy"].create_all()
    unasked = named.test_cli_runner().invoke(args=args, input="")
    assert unasked.exit_code == 0 and "not a test database" not in unasked.output
    assert "-> HTTP 200" in unasked.output
    with named.app_context():
        named.extensions["sqlalchemy"].engine.dispose()


def test_send_test_event_says_which_database_without_its_password(monkeypatch, capsys):
    from types import SimpleNamespace

    from flask_partnerstack_stripe.extension import get_state
    from flask_partnerstack_stripe.scenarios import confirm_database

    app = create_app("sqlite://")  # touches no database: runs once
    url = sa.make_url("postgresql+psycopg://app:s3cret@db.example/app_test")
    monkeypatch.setattr(get_state(app), "db", SimpleNamespace(engine=SimpleNamespace(url=url)))
    with app.app_context():
        confirm_database(yes=False)  # "test" in the URL: no question asked
    assert capsys.readouterr().out == "Database: postgresql+psycopg://app:***@db.example/app_test\n"


# --- an unreachable database ---------------------------------------------------------


def unreachable_urls() -> list[str]:
    """Database URLs with nothing listening (a free port), each with a password to keep."""
    return [
        f"postgresql+psycopg://app:s3cret-pw@127.0.0.1:{free_port()}/app_test",
        f"mysql+pymysql://app:s3cret-pw@127.0.0.1:{free_port()}/app_test",
    ]


@pytest.mark.parametrize("url", unreachable_urls(), ids=["postgresql", "mariadb"])
@pytest.mark.parametrize(
    "command",
    [["deliver"], ["deliver", "--dead"], ["replay", "--failed"], ["sweep"], ["prune"],
     ["endpoints", "list"], ["commissions", "list"], ["payouts", "export"],
     ["send-test-event", "customer.created"]],
)  # fmt: skip
def test_an_unreachable_database_is_one_line_and_exit_code_1(url, command):
    result = run(create_app(url), *command)
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
    [error] = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert error.startswith("Error: cannot reach the database: ") and "refused" in error, error
    assert "Traceback" not in result.output and "s3cret-pw" not in result.output


@pytest.mark.parametrize("url", unreachable_urls(), ids=["postgresql", "mariadb"])
def test_check_reports_an_unreachable_database_as_a_problem(url):
    result = run(create_app(url), "check")
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
    assert "Tables\n  cannot reach the database: " in result.output
    assert "Missing\n  - The database cannot be reached: " in result.output
    assert "/partnerstack/webhook" in result.output  # what needs no database is still said
    assert "Traceback" not in result.output and "s3cret-pw" not in result.output


def test_send_test_event_says_a_500_failed_to_apply_it(app):
    def broken(event):
        raise RuntimeError("the host's handler")

    get_state(app).extension.handler("charge.succeeded")(broken)
    result = run(app, "send-test-event", "charge.succeeded")
    assert result.exit_code == 1, result.output
    assert "The webhook failed to apply charge.succeeded (HTTP 500)." in result.output
    assert "refused" not in result.output


@pytest.mark.parametrize("delivery_id", ["2147483648", "99999999999999999999", "0"])
def test_deliver_names_an_id_no_delivery_can_have(app, delivery_id):
    result = run(app, "deliver", delivery_id)
    assert result.exit_code == 1 and not isinstance(result.exception, OverflowError)
    assert f"{delivery_id}: no signal delivery has this id" in result.stderr
    assert "0 delivered, 0 failed" in result.stdout and "Traceback" not in result.output


def test_deliver_with_durable_signals_off_says_there_is_nothing_kept(app):
    result = run(app, "deliver")
    assert result.exit_code == 0, result.output
    assert "0 delivered, 0 failed (0 now dead)." in result.output
    assert "Durable signals are off (PARTNERSTACK_STRIPE_DURABLE_SIGNALS)" in result.output


def test_other_database_errors_are_not_called_unreachable(tmp_path):
    app = create_app(f"sqlite:///{tmp_path / 'empty.db'}")  # reachable, but no tables
    result = run(app, "deliver")
    assert isinstance(result.exception, sa.exc.OperationalError), result.output
    assert "cannot reach" not in result.output
    with app.app_context():
        get_state(app).db.engine.dispose()
