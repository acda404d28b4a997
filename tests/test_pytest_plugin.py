"""The pytest plugin, as a host app's own test suite uses it (run through pytester)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

pytest_plugins = ["pytester"]

HOST_CONFTEST = """
import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_partnerstack_stripe import PartnerStackStripe, signals

db = SQLAlchemy()
partnerstack = PartnerStackStripe(db=db)
commissions = []


@signals.transaction_recorded.connect
def pay_commission(app, transaction, event, **extra):
    commissions.append((transaction.key, transaction.amount // 5))


@pytest.fixture
def app(tmp_path):
    app = Flask("host")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'host.db'}",
        PARTNERSTACK_STRIPE_WEBHOOK_SECRETS=["whsec_host"],
    )
    db.init_app(app)
    partnerstack.init_app(app)
    with app.app_context():
        db.create_all()
    return app
"""

HOST_TEST = """
from conftest import commissions
from flask_partnerstack_stripe import testing


def test_partner_gets_a_fifth(stripe_events, partnerstack_signals):
    metadata = {"customer_key": "u1", "partner_key": "p1"}
    created = stripe_events.post("customer.created", testing.customer("cus_1", metadata=metadata))
    assert created.json["status"] == "processed"
    stripe_events.post("charge.succeeded", testing.charge("ch_1", customer="cus_1", amount=5000))
    assert commissions == [("ch_1", 1000)]
    names = [sent.name for sent in partnerstack_signals]
    assert names == [
        "customer-created", "event-processed", "transaction-recorded", "event-processed"
    ]


def test_fake_stripe_is_installed(fake_stripe):
    import stripe

    fake_stripe.reply("GET", "/v1/customers/cus_1", {"id": "cus_1", "object": "customer"})
    assert stripe.Customer.retrieve("cus_1", api_key="sk_test_x").id == "cus_1"
    assert fake_stripe.requests[0].path == "/v1/customers/cus_1"
"""


def test_host_suite_uses_the_plugin_fixtures(pytester):
    pytester.makeconftest(textwrap.dedent(HOST_CONFTEST))
    pytester.makepyfile(test_host=textwrap.dedent(HOST_TEST))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_loading_the_plugin_imports_no_framework():
    """pytest loads the plugin in every run of every project that has the package installed."""
    code = (
        "import sys, flask_partnerstack_stripe.pytest_plugin\n"
        "heavy = sorted(m for m in ('flask', 'stripe', 'sqlalchemy', 'flask_sqlalchemy',"
        " 'werkzeug', 'blinker') if m in sys.modules)\n"
        "print(heavy)\n"
        "from flask_partnerstack_stripe import PartnerStackStripe, signals\n"
        "print(PartnerStackStripe.__name__, signals.transaction_recorded.name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.splitlines() == ["[]", "PartnerStackStripe transaction-recorded"]


def test_stripe_events_without_pytest_flask_says_what_to_install(pytester):
    pytester.makepyfile(
        test_host="""
        def test_needs_client(stripe_events):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:flask")
    result.assert_outcomes(errors=1)
    # (fnmatch reads [...] as a character class: ? stands for the brackets)
    result.stdout.fnmatch_lines(["*pip install 'flask-partnerstack-stripe?testing?'*"])
