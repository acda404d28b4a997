"""Server-side signup tracking and partner links (DESIGN section 2)."""

from __future__ import annotations

import base64

import pytest
from flask import jsonify

from flask_partnerstack_stripe import decode_partner_key, signals, testing


@pytest.mark.parametrize(
    "encoded",
    [
        base64.b64encode(b"partner-\xfb\xff").decode(),  # standard, padded
        base64.b64encode(b"partner-\xfb\xff").decode().rstrip("="),
        base64.urlsafe_b64encode(b"partner-\xfb\xff").decode(),  # URL-safe, padded
        base64.urlsafe_b64encode(b"partner-\xfb\xff").decode().rstrip("="),
    ],
)
def test_decode_partner_key_accepts_both_alphabets_with_or_without_padding(encoded):
    with pytest.raises(ValueError):
        decode_partner_key(encoded)  # those bytes are not UTF-8
    text = "pk_ünïcode-42/+?"
    for alphabet in (base64.b64encode, base64.urlsafe_b64encode):
        value = alphabet(text.encode()).decode()
        assert decode_partner_key(value) == text
        assert decode_partner_key(value.rstrip("=")) == text


@pytest.mark.parametrize(
    "value",
    ["", "   ", "a", "abc!", "####", "YWJj=ZGVm", "AA==", "\u00e9\u00e9\u00e9\u00e9", "A" * 2000],
)
def test_decode_partner_key_refuses_anything_else(value):
    with pytest.raises(ValueError):
        decode_partner_key(value)


def test_decode_partner_key_takes_keys_as_long_as_the_column_and_says_what_it_refused():
    """A partner key of 500 characters is stored whole from metadata and create_customer:
    its link works too (the link stopped at 255). Non-ASCII input says what it is."""
    longest = "p" * 499 + "ü"
    assert decode_partner_key(base64.urlsafe_b64encode(longest.encode()).decode()) == longest
    with pytest.raises(ValueError, match="does not decode to a usable partner key"):
        decode_partner_key(base64.b64encode(b"p" * 501).decode())
    with pytest.raises(ValueError, match="is not a base64-encoded partner key"):
        decode_partner_key("é…")


def test_decode_partner_key_known_value():
    assert decode_partner_key("cGFydG5lcl8x") == "partner_1"
    assert decode_partner_key("cGFydG5lcl8x==") == "partner_1"


def test_a_partner_link_s_key_is_trimmed_as_every_other_way_in():
    # create_customer(partner_key=" p1 ") and metadata " p1 " store "p1": one partner, one key.
    assert decode_partner_key(base64.b64encode(b" p1 ").decode()) == "p1"


@pytest.fixture
def signup_app(app, state):
    @app.route("/")
    def landing():
        return "welcome"

    @app.post("/signup")
    def signup():
        customer = state.extension.create_customer("user-1", "new@example.com", name="New")
        return jsonify(partner=customer.partner_key)

    return app


def test_partner_link_sets_a_signed_cookie_used_at_signup(signup_app, client, rows, models):
    response = client.get("/?ps_partner_key=" + base64.b64encode(b"partner-a").decode())
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("ps_partner_key=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Max-Age=7776000" in cookie
    assert "partner-a" not in cookie.split(";")[0].split(".")[0] or "." in cookie  # signed
    # Last click wins.
    client.get("/?ps_partner_key=" + base64.urlsafe_b64encode(b"partner-b").decode().rstrip("="))
    with testing.record_signals(signals.customer_created) as sent:
        assert client.post("/signup").json == {"partner": "partner-b"}
    [customer] = rows(models.Customer)
    assert (customer.customer_key, customer.email, customer.partner_key) == (
        "user-1",
        "new@example.com",
        "partner-b",
    )
    assert sent[0].kwargs["customer"].customer_key == "user-1"
    assert sent[0].kwargs["event"] is None


@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_REFERRAL_COOKIE_DAYS": 7}])
def test_cookie_lifetime_is_configurable(signup_app, client):
    response = client.get("/?ps_partner_key=cGFydG5lcl8x")
    assert "Max-Age=604800" in response.headers["Set-Cookie"]


def test_tampered_or_invalid_referral_is_ignored(signup_app, client, rows, models):
    assert "Set-Cookie" not in client.get("/?ps_partner_key=not*base64").headers
    client.set_cookie("ps_partner_key", "partner-evil")
    assert client.post("/signup").json == {"partner": None}


@pytest.mark.parametrize("value", ["p\x00nul", "p" * 600, ["p1"]])
def test_a_signed_cookie_that_holds_no_usable_key_is_ignored(signup_app, client, value):
    """Signed with the app's own key and salt (by an older version, or other code of the
    app): read back only if it could be a partner key, never a database error."""
    from itsdangerous import URLSafeSerializer

    serializer = URLSafeSerializer(signup_app.secret_key, salt="flask-partnerstack-stripe.referral")
    client.set_cookie("ps_partner_key", serializer.dumps(value))
    assert client.post("/signup").json == {"partner": None}


def test_signup_never_moves_an_attribution(app, client, rows, models, state):
    with app.app_context():
        state.extension.create_customer("user-1", "a@example.com", partner_key="first")
        again = state.extension.create_customer("user-1", "a@example.com", partner_key="second")
        assert again.partner_key == "first"
    assert len(rows(models.Customer)) == 1


def test_signup_customer_takes_the_mode_of_the_api_key():
    from .apphost import NO_DATABASE, create_app

    for key, expected in (("sk_live_abc", True), ("sk_test_abc", False), (None, False)):
        app = create_app(NO_DATABASE, PARTNERSTACK_STRIPE_API_KEY=key)
        assert app.extensions["partnerstack_stripe"].settings.livemode is expected
    app = create_app(NO_DATABASE, PARTNERSTACK_STRIPE_LIVEMODE=True)
    assert app.extensions["partnerstack_stripe"].settings.livemode is True


def test_a_live_customer_that_matches_no_test_mode_signup_says_why(
    app, client, state, rows, models
):
    """Left to its default (no LIVEMODE, no live key), the app records signups in test
    mode: a live customer event then matches none, and its answer says why."""
    with app.app_context():
        state.extension.create_customer("user-1", None, partner_key="partner-1")
    metadata = {"customer_key": "user-1"}
    obj = testing.customer("cus_1", metadata=metadata)
    answer = testing.post_event(client, testing.event("customer.updated", obj, livemode=True))
    assert answer.json["status"] == "ignored"
    assert "records signups in test mode (PARTNERSTACK_STRIPE_LIVEMODE" in answer.json["reason"]
    test_mode = testing.post_event(client, testing.event("customer.updated", obj))
    assert test_mode.json["status"] == "processed"


def test_create_customer_checks_its_arguments(app, state):
    with app.app_context():
        with pytest.raises(ValueError, match="customer_key"):
            state.extension.create_customer("", "a@example.com")
        with pytest.raises(ValueError, match="email"):
            state.extension.create_customer("user-1", "not-an-email")


def test_create_customer_outside_an_app_context_says_what_is_wrong(state):
    with pytest.raises(RuntimeError, match="application context"):
        state.extension.create_customer("user-1", "a@example.com")


def test_referrals_work_without_the_blueprint():
    """The cookie hook is the app's, not the blueprint's: a host that mounts the
    blueprint itself, or not at all, keeps its referrals."""
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from flask_partnerstack_stripe import PartnerStackStripe

    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI="sqlite://", SECRET_KEY="test-secret-key")
    db = SQLAlchemy()
    db.init_app(app)
    PartnerStackStripe(app, register_blueprint=False)
    app.add_url_rule("/", "landing", lambda: "welcome")
    assert "partnerstack_stripe" not in app.blueprints

    response = app.test_client().get("/?ps_partner_key=cGFydG5lcl8x")
    assert response.headers["Set-Cookie"].startswith("ps_partner_key=")
    with app.test_request_context(headers={"Cookie": response.headers["Set-Cookie"]}):
        from flask import request

        from flask_partnerstack_stripe.referral import referred_partner_key

        assert referred_partner_key(request) == "partner_1"


def test_signup_fills_in_a_customer_known_from_stripe(app, client, rows, models, state):
    """A customer a webhook created (no email, no name) is filled in by the signup call,
    which sends customer_updated; what it had already stays."""
    metadata = {"customer_key": "user-1", "partner_key": "from-stripe"}
    customer = testing.customer("cus_1", metadata=metadata)
    testing.post_event(client, testing.event("customer.created", customer))
    with app.app_context(), testing.record_signals() as sent:
        filled = state.extension.create_customer(
            "user-1", "ann@example.com", partner_key="other", name="Ann"
        )
        assert (filled.email, filled.name, filled.partner_key) == (
            "ann@example.com",
            "Ann",
            "from-stripe",
        )
    assert [s.name for s in sent] == ["customer-updated"]
    assert sent[0].kwargs["customer"] is filled and sent[0].kwargs["event"] is None
    [stored] = rows(models.Customer)
    assert (stored.email, stored.name, stored.stripe_customer_id) == (
        "ann@example.com",
        "Ann",
        "cus_1",
    )


def test_signup_of_a_customer_with_nothing_new_sends_nothing(app, client, rows, models, state):
    with app.app_context():
        state.extension.create_customer("user-1", "ann@example.com", partner_key="p", name="Ann")
        with testing.record_signals() as sent:
            state.extension.create_customer("user-1", "ann@example.com", name="Ann")
    assert sent == []
    assert len(rows(models.Customer)) == 1
