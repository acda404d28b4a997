"""DESIGN section 5: connecting Stripe accounts by OAuth and by manual webhook endpoints."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
import stripe
from flask import session

from flask_partnerstack_stripe import ConfigurationError, signals, testing
from flask_partnerstack_stripe.models import utcnow

from .apphost import NO_DATABASE, create_app

CLIENT_ID = "ca_platform_client_1"
LIVE_KEY = "sk_live_platform_key_0001"
TEST_KEY = "sk_test_platform_key_0002"
ACCESS_TOKEN = "sk_test_connected_token_secret"
REFRESH_TOKEN = "rt_connected_refresh_secret"
ENDPOINT_SECRET = "whsec_endpoint_secret_one"
SECRETS = (LIVE_KEY, TEST_KEY, ACCESS_TOKEN, REFRESH_TOKEN, ENDPOINT_SECRET)

INSTALL_CONFIG = {
    "PARTNERSTACK_STRIPE_CLIENT_ID": CLIENT_ID,
    "PARTNERSTACK_STRIPE_API_KEY": LIVE_KEY,
    "PARTNERSTACK_STRIPE_TEST_API_KEY": TEST_KEY,
}


@pytest.fixture
def app_config() -> dict[str, Any]:
    return dict(INSTALL_CONFIG)


@pytest.fixture
def guarded(app, state):
    """The host's guard: only a signed-in admin may connect accounts."""

    @state.extension.install_guard
    def only_admins(action: str, stripe_account_id: str | None) -> bool:
        return session.get("user") == "admin"

    return app


@pytest.fixture
def admin(guarded, client):
    with client.session_transaction() as browser_session:
        browser_session["user"] = "admin"
    return client


@pytest.fixture
def stripe_api():
    with testing.fake_stripe_api() as api:
        api.reply("POST", "/oauth/token", token_reply)
        api.reply("POST", "/oauth/deauthorize", {"stripe_user_id": "acct_1"})
        yield api


def token_reply(fake_request) -> dict[str, Any]:
    livemode = fake_request.headers["Authorization"] == f"Bearer {LIVE_KEY}"
    return {
        "access_token": ACCESS_TOKEN,
        "refresh_token": REFRESH_TOKEN,
        "livemode": livemode,
        "scope": "read_write",
        "stripe_user_id": "acct_1",
        "token_type": "bearer",
        "stripe_publishable_key": "pk_test_x",
    }


def start_install(client, query: str = "?mode=test") -> dict[str, list[str]]:
    response = client.get("/partnerstack/install" + query)
    assert response.status_code == 302, response.get_data(as_text=True)
    return parse_qs(urlsplit(response.headers["Location"]).query)


def finish_install(client, state: str, **params: str):
    query = "&".join(f"{k}={v}" for k, v in {"state": state, "code": "ac_code_1", **params}.items())
    return client.get("/partnerstack/install/callback?" + query)


def uninstall(client, account="acct_1", mode="test", origin="http://localhost"):
    headers = {"Origin": origin} if origin else {}
    form = {"stripe_account_id": account, "mode": mode}
    return client.post("/partnerstack/uninstall", data=form, headers=headers)


def post_for(client, account: str, event_type: str, obj: dict[str, Any]):
    return testing.post_event(client, testing.event(event_type, obj, account=account))


NOT_CONNECTED = (
    "This application is not connected to stripe account acct_1, or that account does not exist."
)


@pytest.mark.parametrize(
    ("answer", "uninstalled"),
    [
        # Stripe's answer for an account already disconnected on its side.
        ({"error": "invalid_client", "error_description": NOT_CONNECTED}, True),
        ({"error": "invalid_client", "error_description": NOT_CONNECTED.upper()}, True),
        # A wrong key, a wrong client id: the account stays connected at Stripe.
        (
            {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided"}},
            False,
        ),
        ({"error": "invalid_client", "error_description": "No such application: 'ca_x'"}, False),
        ({"error": "invalid_request", "error_description": "Missing client_id"}, False),
    ],
)
def test_uninstall_marks_uninstalled_only_what_stripe_disconnected(
    admin, stripe_api, rows, models, answer, uninstalled
):
    params = start_install(admin)
    assert finish_install(admin, params["state"][0]).status_code == 200
    stripe_api.reply("POST", "/oauth/deauthorize", (answer, 401))
    response = uninstall(admin)
    assert response.status_code == (200 if uninstalled else 502), response.get_data(as_text=True)
    assert (rows(models.StripeAccount)[0].uninstalled_at is not None) is uninstalled


def test_install_events_uninstall_reinstall(admin, stripe_api, rows, models, caplog):
    caplog.set_level(logging.DEBUG)
    client = admin
    with testing.record_signals(signals.account_installed, signals.account_uninstalled) as sent:
        params = start_install(client)
        assert params["client_id"] == [CLIENT_ID]
        assert params["response_type"] == ["code"]
        assert params["scope"] == ["read_write"]
        assert params["redirect_uri"] == ["http://localhost/partnerstack/install/callback"]
        response = finish_install(client, params["state"][0])
        assert response.status_code == 200
        page = response.get_data(as_text=True)
        assert "installed" in page and "acct_1" in page and "test mode" in page

        [exchange] = stripe_api.requests
        assert (exchange.method, exchange.host, exchange.path) == (
            "POST",
            "connect.stripe.com",
            "/oauth/token",
        )
        assert exchange.params == {"grant_type": ["authorization_code"], "code": ["ac_code_1"]}
        assert exchange.headers["Authorization"] == f"Bearer {TEST_KEY}"
        [account] = rows(models.StripeAccount)
        assert (account.stripe_account_id, account.livemode, account.scope) == (
            "acct_1",
            False,
            "read_write",
        )
        assert account.access_token == ACCESS_TOKEN and account.uninstalled_at is None

        metadata = {"customer_key": "u1", "partner_key": "p1"}
        post_for(client, "acct_1", "customer.created", testing.customer("cus_1", metadata=metadata))
        charge = post_for(
            client, "acct_1", "charge.succeeded", testing.charge("ch_1", customer="cus_1")
        )
        assert charge.json["status"] == "processed"

        response = uninstall(client)
        assert response.status_code == 200 and "uninstalled" in response.get_data(as_text=True)
        deauthorize = stripe_api.requests[-1]
        assert (deauthorize.host, deauthorize.path) == ("connect.stripe.com", "/oauth/deauthorize")
        assert deauthorize.params == {"client_id": [CLIENT_ID], "stripe_user_id": ["acct_1"]}
        assert deauthorize.headers["Authorization"] == f"Bearer {TEST_KEY}"
        assert rows(models.StripeAccount)[0].uninstalled_at is not None
        later = post_for(
            client, "acct_1", "charge.succeeded", testing.charge("ch_2", customer="cus_1")
        )
        assert later.json["status"] == "ignored"

        params = start_install(client)
        assert finish_install(client, params["state"][0]).status_code == 200
        assert rows(models.StripeAccount)[0].uninstalled_at is None
        again = post_for(
            client, "acct_1", "charge.succeeded", testing.charge("ch_3", customer="cus_1")
        )
        assert again.json["status"] == "processed"

    assert [s.name for s in sent] == [
        "account-installed",
        "account-uninstalled",
        "account-installed",
    ]
    # Reinstalling kept the account's customer and its earlier transaction.
    assert {t.key for t in rows(models.Transaction)} == {"ch_1", "ch_3"}
    assert len(rows(models.Customer)) == 1
    assert_no_secret(caplog.text)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def test_live_install_uses_the_live_key(admin, stripe_api, rows, models):
    params = start_install(admin, "")  # a live key is configured: live is the default
    finish_install(admin, params["state"][0])
    assert stripe_api.requests[0].headers["Authorization"] == f"Bearer {LIVE_KEY}"
    assert rows(models.StripeAccount)[0].livemode is True


@pytest.mark.parametrize("first", ["webhook", "route"])
def test_deauthorization_webhook_and_uninstall_route_agree(admin, stripe_api, rows, models, first):
    params = start_install(admin)
    finish_install(admin, params["state"][0])
    application = {"id": CLIENT_ID, "object": "application"}

    def by_webhook():
        answer = post_for(admin, "acct_1", "account.application.deauthorized", application)
        assert answer.status_code == 200

    def by_route():
        assert uninstall(admin).status_code == 200

    for step in (by_webhook, by_route) if first == "webhook" else (by_route, by_webhook):
        step()
    [account] = rows(models.StripeAccount)
    assert account.uninstalled_at is not None
    deauthorizations = [r for r in stripe_api.requests if r.path == "/oauth/deauthorize"]
    assert len(deauthorizations) == (0 if first == "webhook" else 1)


@pytest.mark.parametrize(
    "app_config", [{**INSTALL_CONFIG, "PARTNERSTACK_STRIPE_INSTALL_METHOD": "stripe_app"}]
)
def test_stripe_app_install_link(admin):
    response = admin.get("/partnerstack/install?mode=test")
    location = urlsplit(response.headers["Location"])
    assert (location.scheme, location.netloc, location.path) == (
        "https",
        "marketplace.stripe.com",
        "/oauth/v2/authorize",
    )
    params = parse_qs(location.query)
    assert params["client_id"] == [CLIENT_ID] and params["state"][0]


# --- security ------------------------------------------------------------------------


def test_without_a_guard_install_is_refused(client):
    response = client.get("/partnerstack/install")
    assert response.status_code == 403
    assert response.mimetype == "text/html"  # a page people see, not JSON
    assert "install_guard" in response.text


def test_guard_refuses_anonymous_users(guarded, client, stripe_api):
    assert client.get("/partnerstack/install").status_code == 403
    assert client.get("/partnerstack/install/callback?state=x&code=y").status_code == 403
    assert uninstall(client).status_code == 403
    assert stripe_api.requests == []


@pytest.mark.parametrize(
    "tamper",
    ["missing", "forged", "reused", "other session", "access denied"],
)
def test_callback_refuses_bad_state_without_exchanging(
    admin, stripe_api, rows, models, tamper, app
):
    state = start_install(admin)["state"][0]
    if tamper == "missing":
        response = admin.get("/partnerstack/install/callback?code=ac_1")
    elif tamper == "forged":
        response = finish_install(admin, state[:-2] + "xx")
    elif tamper == "reused":
        assert finish_install(admin, state).status_code == 200
        stripe_api.requests.clear()
        response = finish_install(admin, state)
    elif tamper == "other session":
        other = app.test_client()
        with other.session_transaction() as browser_session:
            browser_session["user"] = "admin"
        response = finish_install(other, state)
    else:
        response = admin.get(f"/partnerstack/install/callback?state={state}&error=access_denied")
    assert response.status_code == 400
    assert "<h1>" in response.get_data(as_text=True)
    assert stripe_api.requests == []
    if tamper != "reused":
        assert rows(models.StripeAccount) == []


@pytest.mark.parametrize(
    "reply", [{"access_token": "sk_x"}, {"stripe_user_id": None}, {"stripe_user_id": ""}]
)
def test_a_token_reply_without_an_account_installs_nothing(admin, stripe_api, rows, models, reply):
    stripe_api.reply("POST", "/oauth/token", reply)
    response = finish_install(admin, start_install(admin)["state"][0])
    assert response.status_code == 400 and "<h1>" in response.get_data(as_text=True)
    assert rows(models.StripeAccount) == []


@pytest.mark.parametrize("target", ["//evil.example", "https://evil.example", "/\\evil.example"])
def test_redirect_parameters_are_ignored(admin, stripe_api, target):
    response = admin.get("/partnerstack/install?mode=test&next=" + target)
    assert urlsplit(response.headers["Location"]).netloc == "connect.stripe.com"
    state = parse_qs(urlsplit(response.headers["Location"]).query)["state"][0]
    done = finish_install(admin, state, next=target, redirect_uri=target, redirect=target)
    assert done.status_code == 200 and "Location" not in done.headers


@pytest.mark.parametrize(
    "app_config", [{**INSTALL_CONFIG, "PARTNERSTACK_STRIPE_INSTALL_REDIRECT": "/settings"}]
)
def test_install_redirects_to_the_configured_page_only(admin, stripe_api):
    state = start_install(admin)["state"][0]
    done = finish_install(admin, state, next="https://evil.example")
    assert done.status_code == 302 and done.headers["Location"] == "/settings"


@pytest.mark.parametrize(
    "app_config", [{**INSTALL_CONFIG, "PARTNERSTACK_STRIPE_INSTALL_REDIRECT": "no.such_endpoint"}]
)
def test_an_install_redirect_naming_no_endpoint_shows_the_page_after_the_commit(
    app, admin, stripe_api, rows, models, caplog
):
    """The account is installed (committed, signal sent): a 500 would say it was not."""
    done = finish_install(admin, start_install(admin)["state"][0])
    assert done.status_code == 200 and "installed for the Stripe account acct_1" in done.text
    assert rows(models.StripeAccount)[0].uninstalled_at is None
    assert "names no endpoint" in caplog.text
    assert uninstall(admin).status_code == 200
    checked = app.test_cli_runner().invoke(args=["partnerstack", "check"])
    assert checked.exit_code == 1 and "'no.such_endpoint' names no endpoint" in checked.output


@pytest.mark.parametrize("failure", ["outage", "rate limit", "our key refused", "network"])
def test_stripe_failing_during_the_code_exchange_is_a_502_not_a_refusal(
    admin, stripe_api, rows, models, failure
):
    answers = {
        "outage": ({"error": {"type": "api_error"}}, 500),
        "rate limit": ({"error": {"type": "rate_limit_error"}}, 429),
        "our key refused": ({"error": {"type": "invalid_request_error"}}, 401),
    }
    if failure in answers:
        stripe_api.reply("POST", "/oauth/token", answers[failure])
    else:

        def unreachable(fake_request):
            raise stripe.APIConnectionError("Could not connect to Stripe.")

        stripe_api.reply("POST", "/oauth/token", unreachable)
    done = finish_install(admin, start_install(admin)["state"][0])
    assert done.status_code == 502 and "Start the installation again" in done.text
    assert rows(models.StripeAccount) == []


def test_a_code_stripe_refuses_is_a_400(admin, stripe_api, rows, models):
    refused = {"error": "invalid_grant", "error_description": "Authorization code expired"}
    stripe_api.reply("POST", "/oauth/token", (refused, 400))
    done = finish_install(admin, start_install(admin)["state"][0])
    assert done.status_code == 400 and "did not accept the authorization" in done.text
    assert rows(models.StripeAccount) == []


@pytest.mark.parametrize("app_config", [{**INSTALL_CONFIG, "SECRET_KEY": None}])
def test_install_without_a_secret_key_stores_nothing(state, client, rows, models, caplog):
    state.extension.install_guard(lambda action, stripe_account_id: True)
    response = client.get("/partnerstack/install?mode=test")
    assert response.status_code == 500 and "not set up for installs" in response.text
    assert "SECRET_KEY" in caplog.text  # for the operator, not the visitor
    assert rows(models.InstallState) == []


def test_a_referral_cookie_lifetime_past_any_date_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="REFERRAL_COOKIE_DAYS"):
        create_app(NO_DATABASE, PARTNERSTACK_STRIPE_REFERRAL_COOKIE_DAYS=100_000_000)


@pytest.mark.parametrize("target", ["//evil.example", "https://evil.example", "/\\evil.example"])
def test_off_site_install_redirect_is_a_configuration_error(target):
    with pytest.raises(ConfigurationError, match="INSTALL_REDIRECT"):
        create_app(NO_DATABASE, PARTNERSTACK_STRIPE_INSTALL_REDIRECT=target)


def test_uninstall_refuses_get_and_cross_site_posts(admin, stripe_api, rows, models):
    finish_install(admin, start_install(admin)["state"][0])
    assert admin.get("/partnerstack/uninstall").status_code == 405
    assert uninstall(admin, origin=None).status_code == 403
    assert uninstall(admin, origin="https://evil.example").status_code == 403
    assert rows(models.StripeAccount)[0].uninstalled_at is None
    assert [r.path for r in stripe_api.requests] == ["/oauth/token"]


@pytest.mark.parametrize(
    "csrf_config",
    [{"WTF_CSRF_CHECK_DEFAULT": False}, {"WTF_CSRF_ENABLED": False}],
    ids=["checks-chosen-views-only", "checks-off"],
)
def test_uninstall_with_flask_wtf_not_checking_it_still_refuses_cross_site_posts(
    database_url, stripe_api, csrf_config
):
    """CSRFProtect set up but not checking this view: the Origin check still applies."""
    from flask_wtf.csrf import CSRFProtect

    app = create_app(database_url, **INSTALL_CONFIG, **csrf_config)
    CSRFProtect(app)
    app.extensions["partnerstack_stripe"].extension.install_guard(lambda action, account: True)
    db = app.extensions["partnerstack_stripe"].db
    with app.app_context():
        db.create_all()
    try:
        client = app.test_client()
        assert uninstall(client, origin="https://evil.example").status_code == 403
        assert uninstall(client, origin=None).status_code == 403
        assert uninstall(client).status_code == 404  # same site: on to the account
        assert stripe_api.requests == []
    finally:
        with app.app_context():
            db.drop_all()
            db.engine.dispose()


def test_uninstall_with_flask_wtf_needs_its_token(database_url, stripe_api):
    from flask_wtf.csrf import CSRFProtect, generate_csrf

    app = create_app(database_url, **INSTALL_CONFIG)
    CSRFProtect(app)
    app.extensions["partnerstack_stripe"].extension.install_guard(lambda action, account: True)

    @app.get("/token")
    def token():
        return generate_csrf()

    db = app.extensions["partnerstack_stripe"].db
    with app.app_context():
        db.create_all()
    try:
        client = app.test_client()
        assert uninstall(client).status_code == 400  # no CSRF token
        csrf_token = client.get("/token").get_data(as_text=True)
        response = client.post(
            "/partnerstack/uninstall",
            data={"stripe_account_id": "acct_1", "mode": "test", "csrf_token": csrf_token},
        )
        assert response.status_code == 404  # past CSRF: the account is not connected
    finally:
        with app.app_context():
            db.drop_all()
            db.engine.dispose()


# --- manual endpoints ----------------------------------------------------------------


def endpoint_post(client, endpoint_id: str, event: dict[str, Any], secret: str):
    return testing.post_event(
        client, event, secret=secret, url=f"/partnerstack/webhook/{endpoint_id}"
    )


def test_manual_endpoint_scopes_events_to_its_account(app, client, state, rows, models, caplog):
    caplog.set_level(logging.DEBUG)
    with app.app_context():
        one = state.extension.create_endpoint("acct_one", ENDPOINT_SECRET).endpoint_id
        two = state.extension.create_endpoint("acct_two", "whsec_endpoint_secret_two").endpoint_id
    assert len(one) >= 32 and one != two

    charge = testing.event("charge.succeeded", testing.charge("ch_1"))
    response = endpoint_post(client, one, charge, ENDPOINT_SECRET)
    assert response.json["status"] == "processed"
    [transaction] = rows(models.Transaction)
    assert transaction.stripe_account_id == "acct_one"

    # Another endpoint's secret, and the platform's own secret, are refused here.
    other = testing.event("charge.succeeded", testing.charge("ch_2"))
    assert endpoint_post(client, one, other, "whsec_endpoint_secret_two").status_code == 400
    assert testing.post_event(client, other, url=f"/partnerstack/webhook/{one}").status_code == 400
    # …and this endpoint's secret is no good on the platform endpoint.
    assert testing.post_event(client, other, secret=ENDPOINT_SECRET).status_code == 400

    unknown = endpoint_post(client, "no-such-endpoint", other, ENDPOINT_SECRET)
    assert unknown.status_code == 404
    assert len(rows(models.WebhookEvent)) == 1
    assert_no_secret(caplog.text, response.get_data(as_text=True), unknown.get_data(as_text=True))


def test_endpoint_without_secret_refuses_until_it_is_set(app, client, state, rows, models):
    with app.app_context():
        endpoint_id = state.extension.create_endpoint("acct_one", None).endpoint_id
    event = testing.event("charge.succeeded", testing.charge("ch_1"))
    assert endpoint_post(client, endpoint_id, event, ENDPOINT_SECRET).status_code == 400
    with app.app_context():
        state.extension.set_endpoint_secret(endpoint_id, ENDPOINT_SECRET)
    assert endpoint_post(client, endpoint_id, event, ENDPOINT_SECRET).status_code == 200


def test_endpoint_cli_create_list_set_secret_delete(app, client, rows, models):
    runner = app.test_cli_runner()
    created = runner.invoke(
        args=[
            "partnerstack",
            "endpoints",
            "create",
            "acct_cli",
            "--base-url",
            "https://shop.example",
        ]
    )
    assert created.exit_code == 0, created.output
    [account] = rows(models.StripeAccount)
    url = f"https://shop.example/partnerstack/webhook/{account.endpoint_id}"
    assert url in created.output and "set-secret" in created.output

    stored = runner.invoke(
        args=["partnerstack", "endpoints", "set-secret", account.endpoint_id, ENDPOINT_SECRET]
    )
    assert stored.exit_code == 0 and ENDPOINT_SECRET not in stored.output
    assert "whsec_…_one" in stored.output
    # Without the argument it is asked for, unechoed: not in the shell's history.
    asked = runner.invoke(
        args=["partnerstack", "endpoints", "set-secret", account.endpoint_id],
        input=ENDPOINT_SECRET + "\n",
    )
    assert asked.exit_code == 0, asked.output
    assert "Signing secret (whsec_…):" in asked.output and ENDPOINT_SECRET not in asked.output
    assert "Signing secret stored for" in asked.output
    typo = runner.invoke(args=["partnerstack", "endpoints", "set-secret", "we_nosuch"], input="")
    assert typo.exit_code == 1 and "No webhook endpoint 'we_nosuch'" in typo.output
    assert "Signing secret (" not in typo.output  # not asked for first

    listed = runner.invoke(args=["partnerstack", "endpoints", "list"])
    assert account.endpoint_id in listed.output and "acct_cli" in listed.output
    assert ENDPOINT_SECRET not in listed.output and "whsec_…_one" in listed.output

    event = testing.event("charge.succeeded", testing.charge("ch_1"))
    assert endpoint_post(client, account.endpoint_id, event, ENDPOINT_SECRET).status_code == 200

    # Running create again would give it a new URL, and the one in Stripe would 404.
    again = runner.invoke(args=["partnerstack", "endpoints", "create", "acct_cli"])
    assert again.exit_code == 1 and "already has an endpoint" in again.output
    assert account.endpoint_id in again.output and "--replace" in again.output
    [kept] = rows(models.StripeAccount)
    assert (kept.endpoint_id, kept.endpoint_secret) == (account.endpoint_id, ENDPOINT_SECRET)
    replaced = runner.invoke(args=["partnerstack", "endpoints", "create", "acct_cli", "--replace"])
    assert replaced.exit_code == 0, replaced.output
    [account] = rows(models.StripeAccount)
    assert account.endpoint_id != kept.endpoint_id
    late = testing.event("charge.succeeded", testing.charge("ch_old_url"))
    assert endpoint_post(client, kept.endpoint_id, late, ENDPOINT_SECRET).status_code == 404

    deleted = runner.invoke(args=["partnerstack", "endpoints", "delete", account.endpoint_id])
    assert deleted.exit_code == 0
    late = testing.event("charge.succeeded", testing.charge("ch_2"))
    assert endpoint_post(client, account.endpoint_id, late, ENDPOINT_SECRET).status_code == 404

    bad = runner.invoke(args=["partnerstack", "endpoints", "create", "not-an-account"])
    assert bad.exit_code != 0 and "acct_" in bad.output


def test_uninstalled_accounts_endpoint_events_are_ignored(app, client, state, rows, models):
    with app.app_context():
        endpoint_id = state.extension.create_endpoint("acct_one", ENDPOINT_SECRET).endpoint_id
    deauthorized = testing.event(
        "account.application.deauthorized", {"id": CLIENT_ID, "object": "application"}
    )
    assert endpoint_post(client, endpoint_id, deauthorized, ENDPOINT_SECRET).status_code == 200
    charge = testing.event("charge.succeeded", testing.charge("ch_1"))
    answer = endpoint_post(client, endpoint_id, charge, ENDPOINT_SECRET)
    assert answer.json["status"] == "ignored"
    assert rows(models.Transaction) == []

    # A new endpoint for it connects it again, as reinstalling does.
    yesterday = utcnow() - timedelta(days=1)
    with app.app_context():
        set_installed_at(state, models, yesterday)
        endpoint_id = state.extension.create_endpoint("acct_one", ENDPOINT_SECRET).endpoint_id
    charge = testing.event("charge.succeeded", testing.charge("ch_2"))
    answer = endpoint_post(client, endpoint_id, charge, ENDPOINT_SECRET)
    assert answer.json["status"] == "processed"
    [again] = rows(models.StripeAccount)
    assert again.uninstalled_at is None
    assert again.installed_at.replace(tzinfo=None) > yesterday.replace(tzinfo=None)
    # Replacing an active account's endpoint keeps its install date.
    with app.app_context():
        set_installed_at(state, models, yesterday)
        state.extension.create_endpoint("acct_one", ENDPOINT_SECRET)
    [replaced] = rows(models.StripeAccount)
    assert replaced.endpoint_id != endpoint_id
    assert abs(replaced.installed_at.replace(tzinfo=None) - yesterday.replace(tzinfo=None)) < (
        timedelta(seconds=1)
    )


def set_installed_at(state, models, when) -> None:
    StripeAccount = models.StripeAccount
    state.db.session.execute(sa.update(StripeAccount).values(installed_at=when))
    state.db.session.commit()


@pytest.mark.parametrize("livemode", [None, "yes", 1])
def test_create_endpoint_refuses_a_livemode_that_is_not_a_bool(app, state, rows, models, livemode):
    with app.app_context(), pytest.raises(ValueError, match="livemode") as refused:
        state.extension.create_endpoint("acct_one", ENDPOINT_SECRET, livemode=livemode)
    assert ENDPOINT_SECRET not in str(refused.value)
    assert rows(models.StripeAccount) == []


def test_account_transaction_source_survives_reinstall(admin, stripe_api, app, state, rows, models):
    finish_install(admin, start_install(admin)["state"][0])
    with app.app_context():
        account = state.db.session.scalars(state.db.select(models.StripeAccount)).one()
        account.transaction_source = "invoice"
        state.db.session.commit()
    uninstall(admin)
    finish_install(admin, start_install(admin)["state"][0])
    assert rows(models.StripeAccount)[0].transaction_source == "invoice"
    charge = post_for(admin, "acct_1", "charge.succeeded", testing.charge("ch_1"))
    assert charge.json["status"] == "ignored"
    invoice = post_for(admin, "acct_1", "invoice.payment_succeeded", testing.invoice("in_1"))
    assert invoice.json["status"] == "processed"


def refuse_writes(app, state, table: str) -> None:
    """A trigger that makes the database refuse every write to ``table``: a failure
    (a lock timeout, a full disk) at the moment secrets are written."""
    with app.app_context():
        engine = state.db.engine
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            for kind in ("INSERT", "UPDATE"):
                connection.exec_driver_sql(
                    f"CREATE TRIGGER refuse_{kind} BEFORE {kind} ON {table} "
                    "BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
        elif engine.dialect.name == "postgresql":
            connection.exec_driver_sql(
                "CREATE OR REPLACE FUNCTION refuse() RETURNS trigger AS "
                "$$ BEGIN RAISE EXCEPTION 'refused'; END $$ LANGUAGE plpgsql"
            )
            connection.exec_driver_sql(
                f"CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION refuse()"
            )
        else:
            for kind in ("INSERT", "UPDATE"):
                connection.exec_driver_sql(
                    f"CREATE TRIGGER refuse_{kind} BEFORE {kind} ON {table} FOR EACH ROW "
                    "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused'"
                )


def test_a_database_failure_storing_an_install_shows_no_token(
    admin, app, state, stripe_api, rows, models, caplog
):
    refuse_writes(app, state, models.StripeAccount.__tablename__)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # as in production: a 500, logged by Flask
    response = finish_install(admin, start_install(admin)["state"][0])
    assert response.status_code == 500
    assert "refused" in caplog.text  # the error is logged, with its traceback
    assert_no_secret(caplog.text, response.get_data(as_text=True))


def test_a_database_failure_storing_an_endpoint_secret_shows_no_secret(app, state, models):
    import traceback

    with app.app_context():
        endpoint_id = state.extension.create_endpoint("acct_one", None).endpoint_id
    refuse_writes(app, state, models.StripeAccount.__tablename__)
    with app.app_context(), pytest.raises(sa.exc.DatabaseError) as failed:
        state.extension.set_endpoint_secret(endpoint_id, ENDPOINT_SECRET)
    assert "refused" in str(failed.value)
    assert_no_secret("".join(traceback.format_exception(failed.value)))
    result = app.test_cli_runner().invoke(
        args=["partnerstack", "endpoints", "set-secret", endpoint_id, ENDPOINT_SECRET]
    )
    assert result.exit_code != 0
    assert_no_secret(result.output, "".join(traceback.format_exception(result.exception)))


@pytest.mark.parametrize(
    "odd",
    [{"livemode": "false"}, {"scope": "x" * 256}, {"scope": 5}, {"access_token": 5}],
)
def test_a_token_reply_stripe_never_sends_installs_nothing(admin, stripe_api, rows, models, odd):
    stripe_api.reply("POST", "/oauth/token", lambda request: {**token_reply(request), **odd})
    response = finish_install(admin, start_install(admin)["state"][0])
    assert response.status_code == 400 and "<h1>" in response.get_data(as_text=True)
    assert rows(models.StripeAccount) == []
