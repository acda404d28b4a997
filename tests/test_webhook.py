"""The webhook receiver: store once, apply in one transaction, answer as DESIGN section 3 says."""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_partnerstack_stripe import PartnerStackStripe, signals, testing

from .apphost import SECRET


def unhandled_event(**overrides: Any) -> dict[str, Any]:
    return testing.event("balance.available", {"object": "balance", "available": []}, **overrides)


def test_unhandled_event_is_stored_and_ignored(client, rows, models):
    event = unhandled_event()
    with testing.record_signals(signals.event_ignored) as sent:
        response = testing.post_event(client, event)
    assert response.status_code == 200
    assert response.json["status"] == "ignored"
    assert "balance.available" in response.json["reason"]
    [stored] = rows(models.WebhookEvent)
    assert (stored.stripe_event_id, stored.status) == (event["id"], "ignored")
    assert json.loads(stored.payload) == event
    assert sent[0].sender is client.application
    assert sent[0].kwargs["event"]["id"] == event["id"]


@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_STORE_IGNORED_EVENTS": False}])
def test_ignored_events_can_be_left_unstored(client, rows, models):
    response = testing.post_event(client, unhandled_event())
    assert response.json["status"] == "ignored"
    assert rows(models.WebhookEvent) == []


def test_host_handler_runs_inside_the_event_transaction(app, client, rows, models, state):
    calls = []

    @state.extension.handler("checkout.session.completed")
    def on_checkout(event):
        calls.append(event["data"]["object"]["id"])

    with testing.record_signals(signals.event_processed) as sent:
        event = testing.event(
            "checkout.session.completed", {"id": "cs_1", "object": "checkout.session"}
        )
        response = testing.post_event(client, event)
    assert response.status_code == 200
    assert response.json == {"status": "processed", "event": event["id"]}
    assert calls == ["cs_1"]
    [stored] = rows(models.WebhookEvent)
    assert stored.status == "processed" and stored.processed_at is not None
    assert [s.kwargs["event"]["id"] for s in sent] == [event["id"]]


def test_duplicate_delivery_changes_nothing(client, rows, models, state):
    calls = []
    state.extension.handler("checkout.session.completed")(lambda event: calls.append(event["id"]))
    event = testing.event(
        "checkout.session.completed", {"id": "cs_1", "object": "checkout.session"}
    )
    first = testing.post_event(client, event)
    with testing.record_signals() as sent:
        again = testing.post_event(client, event)
    assert first.json["status"] == "processed"
    assert again.status_code == 200 and again.json["status"] == "duplicate"
    assert calls == [event["id"]]
    assert sent == []
    assert len(rows(models.WebhookEvent)) == 1


@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_PROCESSING": "celery"}])
def test_a_queued_event_that_cannot_be_stored_says_so(app, client, state, models):
    """Celery mode: the request only stores the event. When even that fails (its table is
    gone here), the 500 says the event was not stored, not that applying it failed, and
    shows nothing of the database's error."""
    with app.app_context():
        models.WebhookEvent.__table__.drop(state.db.engine)
    failed = testing.post_event(
        client, testing.event("customer.created", testing.customer("cus_q"))
    )
    assert failed.status_code == 500
    assert failed.json["error"].startswith("The event could not be stored; nothing was recorded.")
    assert models.WebhookEvent.__tablename__ not in failed.get_data(as_text=True)


def test_failing_handler_rolls_back_and_redelivery_applies(app, client, rows, models, state):
    """A handler error undoes every effect, is stored as failed, and a redelivery succeeds."""
    attempts = []
    db = state.db

    @state.extension.handler("checkout.session.completed")
    def write_then_maybe_fail(event):
        # A host-side write in the same transaction, through the host's own db.session.
        db.session.add(models.StripeAccount(stripe_account_id=f"acct_{len(attempts)}"))
        db.session.flush()
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("host handler broke")

    event = testing.event(
        "checkout.session.completed", {"id": "cs_1", "object": "checkout.session"}
    )
    with testing.record_signals(signals.event_failed, signals.event_processed) as sent:
        failed = testing.post_event(client, event)
    assert failed.status_code == 500
    assert "stored as failed" in failed.json["error"]
    assert "host handler broke" not in failed.get_data(as_text=True)
    [stored] = rows(models.WebhookEvent)
    assert stored.status == "failed"
    assert "RuntimeError: host handler broke" in stored.error
    assert rows(models.StripeAccount) == []  # the handler's write was rolled back
    assert [s.name for s in sent] == ["event-failed"]

    retried = testing.post_event(client, event)
    assert retried.status_code == 200 and retried.json["status"] == "processed"
    [stored] = rows(models.WebhookEvent)
    assert (stored.status, stored.error) == ("processed", None)
    assert [a.stripe_account_id for a in rows(models.StripeAccount)] == ["acct_1"]
    assert testing.post_event(client, event).json["status"] == "duplicate"


def test_signal_receiver_error_does_not_change_the_answer(client, rows, models, state, caplog):
    state.extension.handler("checkout.session.completed")(lambda event: None)

    def broken_receiver(app, **extra):
        raise ValueError("receiver bug")

    event = testing.event(
        "checkout.session.completed", {"id": "cs_1", "object": "checkout.session"}
    )
    with signals.event_processed.connected_to(broken_receiver):
        response = testing.post_event(client, event)
    assert response.status_code == 200
    assert rows(models.WebhookEvent)[0].status == "processed"
    assert "receiver bug" in caplog.text


@pytest.mark.parametrize(
    "app_config", [{"PARTNERSTACK_STRIPE_WEBHOOK_SECRETS": ["whsec_old", SECRET]}]
)
def test_rolled_secrets_and_several_signatures(client, app, rows, models):
    payload = json.dumps(unhandled_event())
    t = now()
    # Stripe sends one v1 per active secret while a secret is being rolled.
    header = ",".join(
        [f"t={t}"]
        + [testing.sign(payload, s, timestamp=t).split(",")[1] for s in ("whsec_other", SECRET)]
    )
    response = client.post(
        "/partnerstack/webhook", data=payload, headers={"Stripe-Signature": header}
    )
    assert response.status_code == 200
    second = unhandled_event()
    assert testing.post_event(client, second, secret="whsec_old").status_code == 200
    assert len(rows(models.WebhookEvent)) == 2


def _signed(payload: str | bytes, secret: str = SECRET, timestamp: int | None = None) -> str:
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
    return testing.sign(text, secret, timestamp=timestamp)


GOOD = json.dumps(testing.event("balance.available", {"object": "balance"}))


def now() -> int:
    return int(time.time())


def bad_requests() -> list[tuple[str, Any, dict[str, Any], int]]:
    not_utf8 = b'{"id": "evt_1", "object": "event", "x": "\xff\xfe"}'
    reserialized = json.dumps(json.loads(GOOD), indent=2)
    return [
        ("no signature header", GOOD, {}, 400),
        ("garbage header", GOOD, {"Stripe-Signature": "garbage"}, 400),
        ("bad timestamp", GOOD, {"Stripe-Signature": "t=abc,v1=00"}, 400),
        ("v0 only", GOOD, {"Stripe-Signature": _signed(GOOD).replace("v1=", "v0=")}, 400),
        ("wrong secret", GOOD, {"Stripe-Signature": _signed(GOOD, "whsec_wrong")}, 400),
        (
            "tampered body",
            GOOD.replace("balance", "balanced", 1),
            {"Stripe-Signature": _signed(GOOD)},
            400,
        ),
        ("re-serialized body", reserialized, {"Stripe-Signature": _signed(GOOD)}, 400),
        (
            "old timestamp",
            GOOD,
            {"Stripe-Signature": lambda: _signed(GOOD, timestamp=now() - 302)},
            400,
        ),
        (
            "future timestamp",
            GOOD,
            {"Stripe-Signature": lambda: _signed(GOOD, timestamp=now() + 302)},
            400,
        ),
        ("non-UTF-8 bytes", not_utf8, {"Stripe-Signature": _signed(not_utf8)}, 400),
        ("invalid JSON", "{not json", {"Stripe-Signature": _signed("{not json")}, 400),
        ("JSON array", "[1, 2]", {"Stripe-Signature": _signed("[1, 2]")}, 400),
        ("JSON string", '"event"', {"Stripe-Signature": _signed('"event"')}, 400),
        (
            "not an event",
            '{"object": "charge"}',
            {"Stripe-Signature": _signed('{"object": "charge"}')},
            400,
        ),
    ]


def wrong_types() -> list[tuple[str, str]]:
    cases = []
    for field, value in [
        ("id", 123), ("id", ""), ("type", None), ("created", "yesterday"), ("created", True),
        ("livemode", "false"), ("data", []), ("data", {"object": "ch_1"}), ("account", 42),
    ]:  # fmt: skip
        event = json.loads(GOOD)
        event[field] = value
        cases.append((f"{field}={value!r}", json.dumps(event)))
    missing = json.loads(GOOD)
    del missing["type"]
    cases.append(("type missing", json.dumps(missing)))
    return cases


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [case[1:] for case in bad_requests()],
    ids=[case[0] for case in bad_requests()],
)
def test_bad_input_is_refused_and_stores_nothing(
    client, rows, models, caplog, body, headers, status
):
    caplog.set_level(logging.DEBUG)
    # Timestamps are signed when the test runs, not when it is collected.
    headers = {name: value() if callable(value) else value for name, value in headers.items()}
    response = client.post("/partnerstack/webhook", data=body, headers=headers)
    assert response.status_code == status
    assert response.json["error"]
    assert rows(models.WebhookEvent) == []
    for text in (response.get_data(as_text=True), caplog.text):
        assert SECRET not in text and "Traceback" not in text


@pytest.mark.parametrize(("case", "body"), wrong_types(), ids=[c[0] for c in wrong_types()])
def test_wrong_field_types_are_refused(client, rows, models, case, body):
    response = client.post(
        "/partnerstack/webhook", data=body, headers={"Stripe-Signature": _signed(body)}
    )
    assert response.status_code == 400, case
    assert "event" in response.json["error"]
    assert rows(models.WebhookEvent) == []


@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_MAX_BODY": 2048}])
def test_body_over_the_cap_is_413_before_reading(client, rows, models):
    event = unhandled_event()
    event["data"]["object"]["padding"] = "x" * 4096
    response = testing.post_event(client, event)
    assert response.status_code == 413
    assert "error" in response.json

    # A chunked body (no Content-Length, as servers such as gunicorn pass it on)
    # is cut off at the cap while it streams in.
    streamed = client.post(
        "/partnerstack/webhook",
        input_stream=io.BytesIO(b"{" + b" " * 8192 + b"}"),
        headers={"Stripe-Signature": "t=1,v1=0", "Transfer-Encoding": "chunked"},
        environ_base={"wsgi.input_terminated": True},
    )
    assert streamed.status_code == 413
    assert rows(models.WebhookEvent) == []


def test_get_on_the_webhook_is_405(client, rows, models):
    assert client.get("/partnerstack/webhook").status_code == 405
    assert rows(models.WebhookEvent) == []


def test_stored_event_fields(client, rows, models):
    event = unhandled_event(livemode=True, account="acct_123")
    testing.post_event(client, event)
    [stored] = rows(models.WebhookEvent)
    assert stored.type == "balance.available"
    assert stored.stripe_account_id == "acct_123"
    assert stored.livemode is True
    assert stored.received_at is not None


def test_unique_event_id_is_a_database_constraint(app, models, state):
    with app.app_context():
        session = state.db.session
        for _ in range(2):
            session.add(
                models.WebhookEvent(stripe_event_id="evt_same", type="x", status="processed")
            )
        with pytest.raises(sa.exc.IntegrityError):
            session.commit()
        session.rollback()


def test_settled_ids_keep_the_newest_only():
    from flask_partnerstack_stripe.receiver import SettledIds

    settled = SettledIds(2)
    for event_id in ("evt_1", "evt_2", "evt_3"):
        settled.add(event_id)
    assert "evt_1" not in settled and "evt_2" in settled and "evt_3" in settled
    settled.add("evt_3")  # again: still two
    assert len(settled) == 2


def test_redelivery_of_an_evicted_event_is_still_a_duplicate(client, rows, models, state):
    """The memory of settled ids is a shortcut: past it, the database answers the same."""
    state.receiver.settled.size = 1
    first, second = unhandled_event(), unhandled_event()
    assert testing.post_event(client, first).json["status"] == "ignored"
    assert testing.post_event(client, second).json["status"] == "ignored"
    assert first["id"] not in state.receiver.settled  # evicted by the second
    with testing.record_signals() as sent:
        again = testing.post_event(client, first)
    assert again.status_code == 200 and again.json["status"] == "duplicate"
    assert sent == []
    assert len(rows(models.WebhookEvent)) == 2


def test_statements_are_per_app_state(client, state):
    from flask_partnerstack_stripe import statements

    from .apphost import create_app

    other = create_app("sqlite://")
    testing.post_event(client, testing.event("customer.created", testing.customer("cus_1")))
    assert len(state.unit_of_work.statements) > 0
    assert len(other.extensions["partnerstack_stripe"].unit_of_work.statements) == 0
    assert statements._current_statements.get() is None  # only while a unit of work is open
    assert not hasattr(statements, "_prepared")


def test_a_fake_request_s_repr_shows_no_api_key():
    # A failed assertion on fake_stripe.requests prints them.
    import stripe

    with testing.fake_stripe_api() as api:
        api.reply("GET", "/v1/customers/cus_1", {"id": "cus_1", "object": "customer"})
        stripe.Customer.retrieve("cus_1", api_key="sk_test_51ProbeKey")
        api.reply("POST", "/oauth/token", {"stripe_user_id": "acct_1", "livemode": False})
        stripe.OAuth.token(grant_type="refresh_token", refresh_token="rt_REFRESHSECRET",
                           api_key="sk_test_51ProbeKey")  # fmt: skip
    shown = repr(api.requests)
    assert "sk_test_51ProbeKey" not in shown and "rt_REFRESHSECRET" not in shown
    assert "'/v1/customers/cus_1'" in shown and "[redacted]" in shown


def test_post_event_without_a_secret_to_sign_with_says_what_to_pass():
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI="sqlite://", PARTNERSTACK_STRIPE_WEBHOOK_SECRETS=[])
    db = SQLAlchemy()
    db.init_app(app)
    PartnerStackStripe(app)
    event = testing.event("customer.created", testing.customer("cus_1"))
    with pytest.raises(ValueError, match=r"PARTNERSTACK_STRIPE_WEBHOOK_SECRETS.*secret="):
        testing.post_event(app.test_client(), event)
