"""Issue 11 for the install flow: the OAuth state and the tokens, over HTTP, both databases."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest
import sqlalchemy as sa
import stripe

from flask_partnerstack_stripe import Models, PartnerStackStripe
from flask_partnerstack_stripe.models import utcnow

from . import test_install
from .conftest import ROOT
from .test_install import (
    ACCESS_TOKEN,
    INSTALL_CONFIG,
    REFRESH_TOKEN,
    assert_no_secret,
    finish_install,
    start_install,
    uninstall,
)

# The install tests' fixtures: a guard, a signed-in admin, the fake Stripe API.
guarded, admin, stripe_api = test_install.guarded, test_install.admin, test_install.stripe_api


@pytest.fixture
def app_config():
    return dict(INSTALL_CONFIG)


# --- 1. NUL in the uninstalled account id ------------------------------------------


@pytest.mark.parametrize("account", ["acct_\x00x", "acct_é", "acct_" + "1" * 251, "acct_ x"])
def test_uninstall_refuses_an_account_id_that_cannot_exist(admin, stripe_api, account):
    response = uninstall(admin, account=account)
    assert response.status_code == 400
    assert "acct_" in response.text
    assert stripe_api.requests == []


# --- 7. OAuth state --------------------------------------------------------------------


@pytest.mark.parametrize("given", ["%C3%A9", "%00", "%FF", "x" * 2000])
def test_non_ascii_state_is_a_400(admin, stripe_api, rows, models, given):
    start_install(admin)
    response = finish_install(admin, given)
    assert response.status_code == 400
    assert "invalid, expired or was already used" in response.get_data(as_text=True)
    assert stripe_api.requests == [] and rows(models.StripeAccount) == []


def test_replayed_session_cookie_cannot_use_a_state_twice(admin, stripe_api, rows, models):
    state = start_install(admin)["state"][0]
    cookie_before_callback = admin.get_cookie("session").value
    assert finish_install(admin, state).status_code == 200

    admin.set_cookie("session", cookie_before_callback)  # the client's copy, replayed
    again = finish_install(admin, state, code="ac_code_2")
    assert again.status_code == 400
    assert [r.path for r in stripe_api.requests] == ["/oauth/token"]
    assert len(rows(models.StripeAccount)) == 1


def test_expired_state_is_refused_and_expired_states_are_deleted(
    admin, stripe_api, app, state, rows, models
):
    nonce = start_install(admin)["state"][0]
    with app.app_context():
        state.db.session.execute(
            sa.update(models.InstallState).values(expires_at=utcnow() - timedelta(seconds=1))
        )
        state.db.session.commit()
    assert finish_install(admin, nonce).status_code == 400
    assert stripe_api.requests == []

    start_install(admin)  # writing a new state deletes the expired ones
    [kept] = rows(models.InstallState)
    assert kept.expires_at.replace(tzinfo=None) > utcnow().replace(tzinfo=None)
    assert nonce not in (kept.state_hash,)  # a digest is kept, not the state


def test_host_with_four_models_gets_the_default_install_state(database_url, stripe_api):
    from flask import Flask, session
    from flask_sqlalchemy import SQLAlchemy

    from flask_partnerstack_stripe.models import (
        CustomerMixin,
        StripeAccountMixin,
        TransactionMixin,
        WebhookEventMixin,
    )

    db = SQLAlchemy()

    class Customer(CustomerMixin, db.Model):
        __tablename__ = "host_customer"

    class Payment(TransactionMixin, db.Model):
        __tablename__ = "host_payment"
        customer_model = "Customer"
        customer_table = "host_customer"

    class Account(StripeAccountMixin, db.Model):
        __tablename__ = "host_account"

    class Event(WebhookEventMixin, db.Model):
        __tablename__ = "host_event"

    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=database_url, SECRET_KEY="k", **INSTALL_CONFIG)
    db.init_app(app)
    partnerstack = PartnerStackStripe(app, models=Models(Customer, Payment, Account, Event))
    partnerstack.install_guard(lambda action, account: session.get("user") == "admin")
    assert partnerstack.models.InstallState.__tablename__ == "partnerstack_install_state"
    with app.app_context():
        db.create_all()
    try:
        client = app.test_client()
        with client.session_transaction() as browser_session:
            browser_session["user"] = "admin"
        nonce = start_install(client)["state"][0]
        assert finish_install(client, nonce).status_code == 200
        assert finish_install(client, nonce).status_code == 400
    finally:
        with app.app_context():
            db.drop_all()
            db.engine.dispose()


# --- 8. tokens in stripe-python's own debug output ---------------------------------------


def test_debug_mode_of_stripe_python_prints_no_token(admin, stripe_api, monkeypatch, capfd):
    monkeypatch.setattr(stripe, "log", "debug")
    assert finish_install(admin, start_install(admin)["state"][0]).status_code == 200
    assert uninstall(admin).status_code == 200
    out, err = capfd.readouterr()
    assert_no_secret(out, err)


def test_stripe_log_debug_environment_prints_no_token(database_url, tmp_path):
    """STRIPE_LOG is read when stripe is imported: a fresh process, as in production."""
    script = textwrap.dedent(
        f"""
        from flask import session
        from flask_partnerstack_stripe import testing
        from tests.apphost import create_app
        from tests.test_install import INSTALL_CONFIG, token_reply

        app = create_app({database_url!r}, **INSTALL_CONFIG)
        state = app.extensions["partnerstack_stripe"]
        state.extension.install_guard(lambda action, account: True)
        with app.app_context():
            state.db.create_all()
        client = app.test_client()
        with testing.fake_stripe_api() as api:
            api.reply("POST", "/oauth/token", token_reply)
            api.reply("POST", "/oauth/deauthorize", {{"stripe_user_id": "acct_1"}})
            api.reply("GET", "/v1/customers", {{"object": "list", "data": [], "has_more": False}})
            start = client.get("/partnerstack/install?mode=test")
            nonce = start.headers["Location"].split("state=")[1].split("&")[0]
            done = client.get(f"/partnerstack/install/callback?state={{nonce}}&code=ac_1")
            assert done.status_code == 200, done.status_code
            gone = client.post(
                "/partnerstack/uninstall",
                data={{"stripe_account_id": "acct_1", "mode": "test"}},
                headers={{"Origin": "http://localhost"}},
            )
            assert gone.status_code == 200, gone.status_code
            import stripe
            stripe.Customer.list(api_key=INSTALL_CONFIG["PARTNERSTACK_STRIPE_TEST_API_KEY"])
        with app.app_context():
            state.db.drop_all()
        print("DONE")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "STRIPE_LOG": "debug"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "DONE" in result.stdout, result.stderr
    # stripe-python does print in this process (its own calls), just never our tokens.
    assert "Request to Stripe api" in result.stderr
    assert_no_secret(result.stdout, result.stderr)
    assert ACCESS_TOKEN not in result.stderr and REFRESH_TOKEN not in result.stderr
