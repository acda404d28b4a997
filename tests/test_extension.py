"""The extension object: init_app, configuration, per-app state, the blueprint."""

from __future__ import annotations

import pytest
from flask import Flask, url_for
from flask_sqlalchemy import SQLAlchemy

from flask_partnerstack_stripe import (
    ConfigurationError,
    CustomerMixin,
    Models,
    PartnerStackStripe,
    StripeAccountMixin,
    TransactionMixin,
    WebhookEventMixin,
    signals,
    testing,
)
from flask_partnerstack_stripe.extension import get_state

from .apphost import SECRET, create_app


def make_app(database_url: str = "sqlite://", **config) -> tuple[Flask, SQLAlchemy]:
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=database_url, **config)
    db = SQLAlchemy()
    db.init_app(app)
    return app, db


def test_app_factory_with_db_given_up_front():
    db = SQLAlchemy()
    partnerstack = PartnerStackStripe(db=db)
    assert partnerstack.models.Customer.__tablename__ == "partnerstack_customer"
    apps = []
    for _ in range(2):  # several apps in one process, one extension object
        app = Flask(__name__)
        app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
        db.init_app(app)
        partnerstack.init_app(app, url_prefix="/ps")
        apps.append(app)
    assert get_state(apps[0]) is not get_state(apps[1])
    assert get_state(apps[0]).models is get_state(apps[1]).models is partnerstack.models
    for app in apps:
        with app.test_request_context():
            assert url_for("partnerstack_stripe.webhook") == "/ps/webhook"
    assert "extension" not in vars(partnerstack) and "app" not in vars(partnerstack)


def test_plain_form_uses_the_apps_flask_sqlalchemy():
    app, db = make_app()
    partnerstack = PartnerStackStripe(app)
    assert get_state(app).db is db
    assert partnerstack.models.Transaction.__table__.name == "partnerstack_transaction"
    tables = {"partnerstack_customer", "partnerstack_transaction"}
    assert tables <= set(db.metadata.tables)


def test_missing_flask_sqlalchemy_is_explained():
    app = Flask(__name__)
    with pytest.raises(RuntimeError, match=r"needs Flask-SQLAlchemy.*db.init_app\(app\)"):
        PartnerStackStripe(app)


def test_db_not_set_up_on_the_app_is_explained():
    app, _ = make_app()
    with pytest.raises(RuntimeError, match="not set up on this app"):
        PartnerStackStripe(app, db=SQLAlchemy())


def test_second_init_app_is_refused_with_what_to_do():
    app, db = make_app()
    partnerstack = PartnerStackStripe(app)
    with pytest.raises(RuntimeError, match=r"already set up on this app.*once"):
        partnerstack.init_app(app)
    with pytest.raises(RuntimeError, match="already set up"):
        PartnerStackStripe(app, db=db)


def test_state_without_init_app_says_so():
    app, _ = make_app()
    with pytest.raises(RuntimeError, match=r"forget partnerstack\.init_app"):
        get_state(app)
    with pytest.raises(RuntimeError, match="init_app"):
        _ = PartnerStackStripe().models


def test_defaults_are_filled_in_config():
    app, _ = make_app()
    PartnerStackStripe(app)
    assert app.config["PARTNERSTACK_STRIPE_SIGNATURE_TOLERANCE"] == 300
    assert app.config["PARTNERSTACK_STRIPE_MAX_BODY"] == 1048576
    assert app.config["PARTNERSTACK_STRIPE_TRANSACTION_SOURCE"] == "charge"
    assert app.config["PARTNERSTACK_STRIPE_REFUND_POLICY"] == "delete"
    assert app.config["PARTNERSTACK_STRIPE_MATCH_EMAIL"] is True
    assert app.config["PARTNERSTACK_STRIPE_URL_PREFIX"] == "/partnerstack"
    assert app.config["PARTNERSTACK_STRIPE_REFERRAL_COOKIE_DAYS"] == 90
    settings = get_state(app).settings
    assert settings.webhook_secrets == () and settings.api_key is None


def test_single_secret_string_is_accepted():
    app, _ = make_app(PARTNERSTACK_STRIPE_WEBHOOK_SECRETS=SECRET)
    PartnerStackStripe(app)
    assert get_state(app).settings.webhook_secrets == (SECRET,)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("WEBHOOK_SECRETS", {"a": 1}),
        ("WEBHOOK_SECRETS", ["whsec_ok", ""]),
        ("WEBHOOK_SECRETS", [None]),
        ("SIGNATURE_TOLERANCE", 0),
        ("SIGNATURE_TOLERANCE", -5),
        ("SIGNATURE_TOLERANCE", "300"),
        ("MAX_BODY", 0),
        ("TRANSACTION_SOURCE", "subscription"),
        ("REFUND_POLICY", "ignore"),
        ("MATCH_EMAIL", "yes"),
        ("API_KEY", 42),
        ("CLIENT_ID", ""),
        ("URL_PREFIX", "partnerstack"),
        ("REFERRAL_COOKIE_DAYS", 0),
        ("STORE_IGNORED_EVENTS", None),
        ("LIVEMODE", "live"),
        # Durations past what a date can hold failed later, at every webhook (the retry
        # delay, with durable signals) or in the commands that read them.
        ("SIGNAL_RETRY_DELAY", float("nan")),
        ("SIGNAL_RETRY_DELAY", 10**20),
        ("SWEEP_AFTER", float("inf")),
        ("SWEEP_AFTER", float("nan")),
        ("COMMISSION_HOLD_DAYS", 1_000_000),
        ("EVENT_RETENTION_DAYS", 10**20),
        ("SQLITE_BUSY_TIMEOUT", float("nan")),
        ("SQLITE_BUSY_TIMEOUT", float("inf")),
    ],
)
def test_bad_config_fails_at_init_app_naming_the_key(key, value):
    app, _ = make_app(**{f"PARTNERSTACK_STRIPE_{key}": value})
    with pytest.raises(ConfigurationError, match=f"PARTNERSTACK_STRIPE_{key}"):
        PartnerStackStripe(app)


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"url_prefix": 5}, "url_prefix"),
        ({"url_prefix": "noslash"}, "url_prefix"),
        ({"register_blueprint": "no"}, "register_blueprint"),
    ],
)
def test_a_wrong_init_app_argument_is_named_and_the_app_can_be_set_up_again(arguments, named):
    app, _ = make_app(PARTNERSTACK_STRIPE_WEBHOOK_SECRETS=[SECRET])
    partnerstack = PartnerStackStripe()
    with pytest.raises(ValueError, match=named):
        partnerstack.init_app(app, **arguments)
    partnerstack.init_app(app, url_prefix="/ps/")  # corrected: not "already set up"
    with app.test_request_context():
        assert url_for("partnerstack_stripe.webhook") == "/ps/webhook"


@pytest.mark.parametrize(
    ("register", "named"),
    [
        (lambda ps: ps.handler(None), "event_type"),
        (lambda ps: ps.handler(5), "event_type"),
        (lambda ps: ps.handler(" charge.succeeded "), "event_type"),
        (lambda ps: ps.handler("charge.succeeded")(None), "decorates a function"),
        (lambda ps: ps.install_guard(5), "install_guard"),
    ],
)
def test_registering_something_that_is_not_a_function_is_named(register, named):
    """At registration, not at the first webhook (a 500) or install (a TypeError)."""
    with pytest.raises(ValueError, match=named):
        register(PartnerStackStripe())


def test_a_secret_read_with_its_final_newline_still_verifies(tmp_path):
    """A secret read from a file or an environment variable often ends with a newline:
    Stripe's secrets hold no whitespace, so it is not part of the secret."""
    app = create_app(
        f"sqlite:///{tmp_path / 'app_test.db'}", PARTNERSTACK_STRIPE_WEBHOOK_SECRETS=" whsec_a1\n"
    )
    with app.app_context():
        get_state(app).db.create_all()
    event = testing.event("charge.succeeded", testing.charge("ch_1"))
    response = testing.post_event(app.test_client(), event, secret="whsec_a1")
    assert response.status_code == 200, response.json


@pytest.mark.parametrize(
    ("secrets", "said"),
    [
        ([None], "item 0 is None .is the environment"),
        (["whsec_ok", " "], "item 1 is empty .is the environment"),
        ([b"whsec"], "item 0 is a bytes$"),
        ([7], "item 0 is an int$"),
    ],
)
def test_a_secrets_list_with_a_bad_item_says_which_and_what(secrets, said):
    """The Quick start reads the secret from an environment variable; unset, it is None."""
    app, _ = make_app(PARTNERSTACK_STRIPE_WEBHOOK_SECRETS=secrets)
    with pytest.raises(ConfigurationError, match=said):
        PartnerStackStripe(app)


def test_config_error_never_shows_a_secret():
    app, _ = make_app(PARTNERSTACK_STRIPE_WEBHOOK_SECRETS=["whsec_real_secret", ""])
    with pytest.raises(ConfigurationError) as error:
        PartnerStackStripe(app)
    assert "whsec_real_secret" not in str(error.value)


def test_the_state_s_repr_shows_no_secret_or_key():
    # It reaches debugger pages, error trackers and `pytest -l` reports.
    app, _ = make_app(
        PARTNERSTACK_STRIPE_WEBHOOK_SECRETS=["whsec_hostsecret_ABCDEF"],
        PARTNERSTACK_STRIPE_API_KEY="sk_live_51ProbeLiveKey",
        PARTNERSTACK_STRIPE_TEST_API_KEY="sk_test_51ProbeTestKey",
    )
    PartnerStackStripe(app)
    state = get_state(app)
    shown = repr(state) + str(state.settings)
    for secret in ("whsec_hostsecret_ABCDEF", "sk_live_51ProbeLiveKey", "sk_test_51ProbeTestKey"):
        assert secret not in shown
    assert "signature_tolerance=300" in shown  # the rest is still there to read


def test_url_prefix_from_config_and_from_the_host():
    app, _ = make_app(PARTNERSTACK_STRIPE_URL_PREFIX="/hooks/stripe/")
    PartnerStackStripe(app)
    with app.test_request_context():
        assert url_for("partnerstack_stripe.webhook") == "/hooks/stripe/webhook"

    app, _ = make_app()
    from flask_partnerstack_stripe.views import create_blueprint

    PartnerStackStripe(app, register_blueprint=False)
    assert "partnerstack_stripe" not in app.blueprints
    app.register_blueprint(create_blueprint(app), url_prefix="/billing")
    with app.test_request_context():
        assert url_for("partnerstack_stripe.webhook") == "/billing/webhook"


def test_custom_models_from_the_mixins(database_url):
    db = SQLAlchemy()

    class Partnered(CustomerMixin, db.Model):
        __tablename__ = "partnered_customer"
        plan = db.Column(db.String(20))

    class Payment(TransactionMixin, db.Model):
        __tablename__ = "partner_payment"
        customer_model = "Partnered"
        customer_table = "partnered_customer"

    class Account(StripeAccountMixin, db.Model):
        pass

    class Event(WebhookEventMixin, db.Model):
        pass

    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=database_url, PARTNERSTACK_STRIPE_WEBHOOK_SECRETS=[SECRET]
    )
    db.init_app(app)
    models = Models(Partnered, Payment, Account, Event)
    partnerstack = PartnerStackStripe(app, db=db, models=models)
    # The host's four classes; models added later get their default class.
    assert partnerstack.models[:4] == models[:4]
    assert partnerstack.models.InstallState.__tablename__ == "partnerstack_install_state"
    assert partnerstack.models.Refund.__tablename__ == "partnerstack_refund"
    with app.app_context():
        db.drop_all()
        db.create_all()
    try:
        client = app.test_client()
        metadata = {"customer_key": "u1", "partner_key": "p1"}
        testing.post_event(
            client, testing.event("customer.created", testing.customer("cus_1", metadata=metadata))
        )
        testing.post_event(
            client, testing.event("charge.succeeded", testing.charge("ch_1", customer="cus_1"))
        )
        with app.app_context():
            payment = db.session.scalars(db.select(Payment)).one()
            assert payment.customer.customer_key == "u1"
            assert isinstance(payment.customer, Partnered)
    finally:
        with app.app_context():
            db.drop_all()
            db.engine.dispose()


def test_every_model_can_be_renamed_from_the_package_s_mixins(database_url):
    """The refund and outbox tables too: their mixins are public like the others'."""
    from flask_partnerstack_stripe import RefundMixin, SignalDeliveryMixin

    db = SQLAlchemy()

    class Customer(CustomerMixin, db.Model):
        __tablename__ = "host_customer"

    class Transaction(TransactionMixin, db.Model):
        __tablename__ = "host_transaction"
        customer_model, customer_table = "Customer", "host_customer"

    class Account(StripeAccountMixin, db.Model):
        __tablename__ = "host_account"

    class Event(WebhookEventMixin, db.Model):
        __tablename__ = "host_event"

    class Refund(RefundMixin, db.Model):
        __tablename__ = "host_refund"

    class Delivery(SignalDeliveryMixin, db.Model):
        __tablename__ = "host_delivery"

    first = (Customer, Transaction, Account, Event)
    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=database_url,
        PARTNERSTACK_STRIPE_WEBHOOK_SECRETS=[SECRET],
        PARTNERSTACK_STRIPE_DURABLE_SIGNALS=True,
    )
    db.init_app(app)
    PartnerStackStripe(app, db=db, models=Models(*first, Refund=Refund, SignalDelivery=Delivery))
    with app.app_context():
        db.drop_all()
        db.create_all()
    try:
        client = app.test_client()
        customer = testing.customer("cus_1", metadata={"customer_key": "u1", "partner_key": "p"})
        with testing.record_signals(signals.customer_created) as sent:
            testing.post_event(client, testing.event("customer.created", customer))
        charge = testing.charge("ch_1", customer="cus_1", amount_refunded=300)
        charge["refunds"] = {"object": "list", "data": [testing.refund("re_1", charge="ch_1")]}
        charge["refunds"]["data"][0]["amount"] = 300
        response = testing.post_event(client, testing.event("charge.refunded", charge))
        assert response.status_code == 200, response.get_data(as_text=True)
        with app.app_context():
            assert [r.refund_id for r in db.session.scalars(db.select(Refund))] == ["re_1"]
            deliveries = db.session.execute(db.select(Delivery.id, Delivery.status)).all()
            assert [tuple(row) for row in deliveries] == [
                (sent[0].kwargs["delivery_id"], "delivered")
            ]
            db.session.remove()
    finally:
        with app.app_context():
            db.drop_all()
            db.engine.dispose()


@pytest.mark.parametrize("csrf_first", [True, False], ids=["csrf-first", "csrf-after-init-app"])
def test_webhook_is_exempt_from_flask_wtf_csrf(database_url, csrf_first):
    """Whichever is set up first: app factories often set up CSRFProtect last."""
    from flask_wtf.csrf import CSRFProtect

    app, db = make_app(
        database_url,
        SECRET_KEY="k",
        PARTNERSTACK_STRIPE_WEBHOOK_SECRETS=[SECRET],
    )

    @app.post("/form")
    def form():
        return "ok"

    if csrf_first:
        CSRFProtect(app)
    PartnerStackStripe(app)
    if not csrf_first:
        CSRFProtect(app)
    with app.app_context():
        db.drop_all()
        db.create_all()
    try:
        client = app.test_client()
        assert client.post("/form").status_code == 400  # CSRF still guards the host
        event = testing.event("balance.available", {"object": "balance"})
        assert testing.post_event(client, event).status_code == 200
    finally:
        with app.app_context():
            db.drop_all()
            db.engine.dispose()


def test_handler_decorator_returns_the_function():
    partnerstack = PartnerStackStripe()

    def on_checkout(event):
        return None

    assert partnerstack.handler("checkout.session.completed")(on_checkout) is on_checkout


@pytest.mark.parametrize(
    "uri",
    ["sqlite://", "postgresql+psycopg://u@h/d", "mysql+pymysql://u@h/d", "mariadb+pymysql://u@h/d"],
)
def test_supported_databases_are_accepted_at_init_app(uri):
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=uri, PARTNERSTACK_STRIPE_WEBHOOK_SECRET=SECRET)
    PartnerStackStripe(app, db=SQLAlchemy(app))


def test_an_unsupported_database_is_refused_at_init_app():
    app = Flask(__name__)  # no driver for it here: refused from its URL alone
    app.config.update(
        SQLALCHEMY_DATABASE_URI="mssql+pyodbc://u@h/d", PARTNERSTACK_STRIPE_WEBHOOK_SECRET=SECRET
    )
    with pytest.raises(
        RuntimeError, match="supports PostgreSQL, SQLite and MySQL/MariaDB, not 'mssql'"
    ):
        PartnerStackStripe(app, db=SQLAlchemy())  # refused before its engine is needed
