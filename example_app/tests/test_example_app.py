"""The example app works the way its README says, pages and demo included."""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from example_app import DEMO_WEBHOOK_SECRET, create_app, db
from flask_partnerstack_stripe import testing

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def example(tmp_path):
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'example.db'}"})
    with app.app_context():
        db.create_all()
    yield app
    with app.app_context():
        db.engine.dispose()


def deliver(client, type, obj):
    response = testing.post_event(client, testing.event(type, obj), secret=DEMO_WEBHOOK_SECRET)
    assert response.status_code == 200, response.json
    return response.json


def test_partner_link_then_signup_attributes_the_customer(example):
    client = example.test_client()
    link = "/?ps_partner_key=" + base64.b64encode(b"partner-zoe").decode()
    assert b"partner-zoe" in client.get(link).data
    response = client.post("/signup", data={"email": "kim@example.com"}, follow_redirects=True)
    assert b"Partner: partner-zoe" in response.data
    assert response.request.path == "/welcome"  # a welcome page, not the partner report
    assert b'id="referred-by">partner-zoe<' in response.data


def test_the_landing_page_offers_a_sample_partner_link(example):
    client = example.test_client()
    page = client.get("/").get_data(as_text=True)
    link = "/?ps_partner_key=" + base64.urlsafe_b64encode(b"partner-alice").decode().rstrip("=")
    assert f'id="sample-link" href="{link}"' in page
    assert "partner-alice" in client.get(link).get_data(as_text=True)


def test_partner_page_shows_revenue_commission_and_chart(example):
    client = example.test_client()
    metadata = {"customer_key": "u1", "partner_key": "partner-zoe"}
    deliver(client, "customer.created", testing.customer("cus_1", metadata=metadata))
    deliver(client, "charge.succeeded", testing.charge(
        "ch_1", customer="cus_1", amount=10000, metadata={"product_key": "team"}))  # fmt: skip
    deliver(client, "charge.succeeded", testing.charge("ch_2", customer="cus_1", amount=5000))
    deliver(client, "charge.refunded", testing.charge(
        "ch_2", customer="cus_1", amount=5000, amount_refunded=5000))  # fmt: skip
    page = client.get("/partners").get_data(as_text=True)
    assert 'data-partner="partner-zoe"' in page
    assert "100.00 USD" in page  # revenue: the refunded charge does not count
    assert "25.00 USD" in page  # 25% commission on the team product
    assert 'id="revenue-chart"' in page and 'class="bar"' in page
    # Each payment shows its commission and the commission's status.
    assert "25.00 USD</td>" in page and "pending</td>" in page  # ch_1: 25% of 100.00
    assert "reversed</td>" in page  # ch_2 was refunded
    assert re.search(r"\d+\.\d\d(?! [A-Z]{3})", page) is None  # no amount without currency


def test_payouts_page_pays_once_then_claws_back_a_refund(example):
    client = example.test_client()
    metadata = {"customer_key": "u1", "partner_key": "partner-zoe"}
    deliver(client, "customer.created", testing.customer("cus_1", metadata=metadata))
    deliver(client, "charge.succeeded", testing.charge("ch_1", customer="cus_1", amount=10000))
    client.post("/payouts/approve")
    page = client.post("/payouts/export", follow_redirects=True).get_data(as_text=True)
    assert "marked paid" in page and "15.00 USD" in page  # the default 15%
    page = client.post("/payouts/export", follow_redirects=True).get_data(as_text=True)
    assert "Nothing is due: no payout was made." in page
    deliver(client, "charge.refunded", testing.charge(
        "ch_1", customer="cus_1", amount=10000, amount_refunded=10000))  # fmt: skip
    page = client.post("/payouts/export", follow_redirects=True).get_data(as_text=True)
    assert "-15.00 USD" in page  # the clawback, on the next payout
    with example.app_context():
        Payout = example.extensions["partnerstack_stripe"].models.Payout
        payout_ids = db.session.scalars(db.select(Payout.payout_id)).all()
    csv_text = client.get(f"/payouts/{payout_ids[-1]}.csv").get_data(as_text=True)
    assert csv_text.splitlines()[1].split(",")[1:5] == ["partner-zoe", "usd", "-1500", "1"]


def test_make_demo_plays_the_story_and_prints_the_partner_table(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "example_app.demo"],
        cwd=ROOT,
        env={**os.environ, "EXAMPLE_APP_INSTANCE": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.split() == ["partner-alice", "2", "2", "148.00", "41.95"] for line in lines)
    # Erin's 49.00 was lost to a dispute; Dana's failed refund gave her 99.00 back.
    assert any(line.split() == ["partner-bob", "1", "0", "0.00", "0.00"] for line in lines)
    assert any(line.split() == ["seed-partner", "1", "1", "49.00", "12.25"] for line in lines)
    assert "deleted (dispute)" in result.stdout and "deleted (failure)" in result.stdout
    assert any(line.split() == ["partner-carol", "1", "1", "25.00", "5.00"] for line in lines)
    assert "duplicate" in result.stdout and "make serve" in result.stdout
    assert "HTTP 5" not in result.stdout


def test_make_demo_celery_ends_in_the_same_table(tmp_path):
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=2).close()
    except OSError as error:
        if os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail(f"REQUIRE_SERVICES=1 but Redis is not reachable: {error}")
        pytest.skip(f"!!! SKIPPED: Redis is not reachable at 127.0.0.1:6379: {error}")
    result = subprocess.run(
        [sys.executable, "-m", "example_app.demo", "--celery"],
        cwd=ROOT,
        env={**os.environ, "EXAMPLE_APP_INSTANCE": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HTTP 200 queued" in result.stdout
    assert "The Celery worker applied every queued event." in result.stdout
    lines = result.stdout.splitlines()
    assert any(line.split() == ["partner-alice", "2", "2", "148.00", "41.95"] for line in lines)
    assert any(line.split() == ["partner-bob", "1", "0", "0.00", "0.00"] for line in lines)
    assert any(line.split() == ["seed-partner", "1", "1", "49.00", "12.25"] for line in lines)
    assert any(line.split() == ["partner-carol", "1", "1", "25.00", "5.00"] for line in lines)
