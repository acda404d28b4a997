"""Rewards: the commission each payment earns, kept right as the payment changes, and paid once."""

from __future__ import annotations

import csv
import io
import itertools
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from flask_sqlalchemy import SQLAlchemy

from flask_partnerstack_stripe import ConfigurationError, PartnerStackStripe, signals, testing
from flask_partnerstack_stripe.extension import get_state

from .apphost import create_app

TWENTY = {"PARTNERSTACK_STRIPE_REWARDS": [{"percent": 20}]}
PRORATE_TWENTY = {**TWENTY, "PARTNERSTACK_STRIPE_REFUND_POLICY": "prorate"}
PAY_NOW = {**PRORATE_TWENTY, "PARTNERSTACK_STRIPE_COMMISSION_HOLD_DAYS": 0}


def post(client, event_type: str, obj: dict) -> None:
    response = testing.post_event(client, testing.event(event_type, obj))
    assert response.status_code == 200, response.json


def customer(client, n: int, partner: str = "partner-1") -> None:
    metadata = {"customer_key": f"user-{n}", "partner_key": partner}
    post(client, "customer.created", testing.customer(f"cus_{n}", metadata=metadata))


def pay(client, n: int, charge: str, amount: int, product: str | None = None, **fields) -> None:
    metadata = {"product_key": product} if product else None
    post(client, "charge.succeeded", testing.charge(
        charge, customer=f"cus_{n}", amount=amount, metadata=metadata, **fields))  # fmt: skip


def commission_of(rows, models, charge: str):
    [transaction] = rows(models.Transaction, key=charge)
    found = rows(models.Commission, transaction_id=transaction.id)
    return found[0] if found else None


def owed(rows, models, charge: str) -> tuple[int, str, str] | None:
    c = commission_of(rows, models, charge)
    return None if c is None else (c.amount, c.currency, c.status)


def cli(app, *args: str):
    result = app.test_cli_runner().invoke(args=["partnerstack", *args])
    assert result.exit_code == 0, result.output
    return result


def export(app) -> list[dict[str, str]]:
    result = app.test_cli_runner().invoke(args=["partnerstack", "payouts", "export"])
    assert result.exit_code == 0, result.output
    return list(csv.DictReader(io.StringIO(result.stdout)))


# --- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"percent": 20}, "must be a list"),
        ([{"percent": 20}, {"flat": 500}], "REWARDS[1]: a flat rule needs 'currency'"),
        ([{"percent": 20, "flat": 5, "currency": "usd"}], "REWARDS[0] must have exactly one"),
        ([{}], "REWARDS[0] must have exactly one"),
        ([{"percent": 0}], "REWARDS[0]: 'percent' must be above 0"),
        ([{"percent": 120}], "at most 100"),
        ([{"percent": "lots"}], "'percent' must be a number"),
        ([{"flat": 4.5, "currency": "usd"}], "'flat' must be a positive integer"),
        ([{"flat": -5, "currency": "usd"}], "'flat' must be a positive integer"),
        ([{"percent": 10, "months": 0}], "'months' must be a positive integer"),
        ([{"percent": 10, "product": "pro"}], "REWARDS[0] has unknown key(s) product"),
        ([{"percent": 10, "partner_key": ""}], "'partner_key' must be a non-empty string"),
        ([{"percent": 10}, {"percent": 20}], "REWARDS[1] has the same product_key"),
        (
            [{"flat": 5, "currency": "usd"}, {"flat": 6, "currency": "USD"}],
            "REWARDS[1] has the same product_key, partner_key and months as rule 0, which "
            "pays in usd too",
        ),
        (  # a percentage pays in every currency: a flat rule after it never applies
            [{"percent": 10}, {"flat": 500, "currency": "usd"}],
            "REWARDS[1] has the same product_key, partner_key and months as rule 0",
        ),
        (
            [{"flat": 500, "currency": "usd"}, {"percent": 10}, {"percent": 20}],
            "REWARDS[2] has the same product_key, partner_key and months as rule 1, which "
            "pays in every currency too",
        ),
        (  # an open-ended rule first wins every month: the months rule after it is dead
            [{"percent": 25}, {"percent": 40, "months": 12}],
            "REWARDS[1] could never apply: rule 0, listed before it, has the same "
            "product_key and partner_key, pays in every currency too and no months limit",
        ),
        (
            [{"percent": 40, "months": 12}, {"percent": 50, "months": 6}],
            "REWARDS[1] could never apply: rule 0",
        ),
        (
            [
                {"percent": 40, "months": 12, "product_key": "team"},
                {"flat": 500, "currency": "usd", "product_key": "team", "months": 3},
            ],
            "REWARDS[1] could never apply: rule 0",
        ),
        ("20%", "must be a list"),
        # An amount no column holds: every payment would fail.
        ([{"flat": 2**63, "currency": "usd"}], "REWARDS[0]: 'flat' must be a positive integer"),
        ([{"percent": 10, "product_key": "p" * 501}], "REWARDS[0]: 'product_key' must be"),
    ],
)
def test_a_wrong_rule_fails_at_init_app_naming_it(tmp_path, rules, message):
    with pytest.raises(ConfigurationError) as error:
        create_app(f"sqlite:///{tmp_path / 'a.db'}", PARTNERSTACK_STRIPE_REWARDS=rules)
    assert "PARTNERSTACK_STRIPE_REWARDS" in str(error.value)
    assert message in str(error.value)


def test_hold_days_must_not_be_negative(tmp_path):
    with pytest.raises(ConfigurationError, match="COMMISSION_HOLD_DAYS"):
        create_app(f"sqlite:///{tmp_path / 'a.db'}", PARTNERSTACK_STRIPE_COMMISSION_HOLD_DAYS=-1)


def test_a_four_model_host_gets_the_commission_model(tmp_path):
    from flask import Flask

    from flask_partnerstack_stripe import Models

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'b.db'}"
    db = SQLAlchemy(app)
    defaults = PartnerStackStripe(db=db).models  # the default classes, built on db

    models = Models(
        defaults.Customer, defaults.Transaction, defaults.StripeAccount, defaults.WebhookEvent
    )
    PartnerStackStripe(app, db=db, models=models)
    assert get_state(app).models.Commission.__tablename__ == "partnerstack_commission"


# --- rules -------------------------------------------------------------------------------

PRECEDENCE = {
    "PARTNERSTACK_STRIPE_REWARDS": [
        {"percent": 10},
        {"percent": 30, "product_key": "pro"},
        {"percent": 20, "partner_key": "vip"},
        {"flat": 1000, "currency": "usd", "partner_key": "vip", "product_key": "pro"},
        {"flat": 700, "currency": "eur", "product_key": "euro-plan"},
    ]
}


@pytest.mark.parametrize("app_config", [PRECEDENCE])
def test_the_most_specific_rule_wins(client, rows, models):
    customer(client, 1, "plain")
    customer(client, 2, "vip")
    pay(client, 1, "ch_default", 10000)  # default: 10%
    pay(client, 1, "ch_product", 10000, "pro")  # product: 30%
    pay(client, 2, "ch_partner", 10000)  # partner: 20%
    pay(client, 2, "ch_both", 10000, "pro")  # partner and product: flat 10.00
    pay(client, 1, "ch_euro", 5000, "euro-plan", currency="eur")  # flat 7.00 EUR
    pay(client, 1, "ch_euro_in_usd", 5000, "euro-plan")  # flat EUR rule, USD payment: nothing
    assert owed(rows, models, "ch_default") == (1000, "usd", "pending")
    assert owed(rows, models, "ch_product") == (3000, "usd", "pending")
    assert owed(rows, models, "ch_partner") == (2000, "usd", "pending")
    assert owed(rows, models, "ch_both") == (1000, "usd", "pending")
    assert owed(rows, models, "ch_euro") == (700, "eur", "pending")
    assert owed(rows, models, "ch_euro_in_usd") is None
    c = commission_of(rows, models, "ch_both")
    assert (c.partner_key, c.product_key, c.customer_id is not None) == ("vip", "pro", True)


PER_CURRENCY = {
    "PARTNERSTACK_STRIPE_REWARDS": [
        {"percent": 20},
        {"flat": 500, "currency": "usd", "partner_key": "vip"},
        {"flat": 450, "currency": "eur", "partner_key": "vip"},
        {"flat": 300, "currency": "usd", "product_key": "pro"},
        {"percent": 15, "product_key": "pro"},
    ]
}


@pytest.mark.parametrize("app_config", [PER_CURRENCY])
def test_rules_may_differ_by_currency_alone(client, rows, models):
    """The README's advice for flat rules, "a rule per currency if you sell in several",
    can be followed; a flat rule listed before its percentage twin pays its own currency,
    the percentage the others."""
    customer(client, 1, "plain")
    customer(client, 2, "vip")
    pay(client, 2, "ch_vip_usd", 10000)  # vip, USD: flat 5.00
    pay(client, 2, "ch_vip_eur", 10000, currency="eur")  # vip, EUR: flat 4.50
    pay(client, 2, "ch_vip_gbp", 10000, currency="gbp")  # vip, no GBP rule for vip: nothing
    pay(client, 1, "ch_pro_usd", 10000, "pro")  # pro, USD: flat 3.00
    pay(client, 1, "ch_pro_eur", 10000, "pro", currency="eur")  # pro, EUR: 15%
    assert owed(rows, models, "ch_vip_usd") == (500, "usd", "pending")
    assert owed(rows, models, "ch_vip_eur") == (450, "eur", "pending")
    assert owed(rows, models, "ch_vip_gbp") is None
    assert owed(rows, models, "ch_pro_usd") == (300, "usd", "pending")
    assert owed(rows, models, "ch_pro_eur") == (1500, "eur", "pending")


UPGRADED = {"PARTNERSTACK_STRIPE_REWARDS": [{"percent": 10}, {"percent": 30, "product_key": "pro"}]}


def charge_shown(event_type: str, charge: str, product: str | None, created: int) -> dict:
    metadata = {"product_key": product} if product else None
    obj = testing.charge(charge, customer="cus_1", amount=1000, metadata=metadata)
    return testing.event(event_type, obj, created=created)


def deliver_each(client, events) -> None:
    for event in events:
        response = testing.post_event(client, event)
        assert response.status_code == 200, response.json


@pytest.mark.parametrize("app_config", [UPGRADED])
def test_the_newest_charge_names_the_product_whatever_the_order(client, rows, models):
    """The charge's metadata went from basic to pro (``charge.updated``), then lost its
    product key: the newest object's metadata stands, and its rate, in any order."""
    customer(client, 1)
    now = int(datetime.now(timezone.utc).timestamp())
    for order in itertools.permutations(range(3)):
        charge = "ch_" + "".join(map(str, order))
        shown = [
            charge_shown("charge.succeeded", charge, "basic", now - 120),
            charge_shown("charge.updated", charge, "pro", now - 60),
            charge_shown("charge.updated", charge, "pro", now),
        ]
        deliver_each(client, [shown[n] for n in order])
        [transaction] = rows(models.Transaction, key=charge)
        assert transaction.product_key == "pro", order
        assert owed(rows, models, charge) == (300, "usd", "pending"), order
        assert commission_of(rows, models, charge).product_key == "pro", order
        # The newest object names no product now: the default rate.
        deliver_each(client, [charge_shown("charge.updated", charge, None, now + 60)])
        assert rows(models.Transaction, key=charge)[0].product_key is None, order
        assert owed(rows, models, charge) == (100, "usd", "pending"), order


@pytest.mark.parametrize("app_config", [UPGRADED])
def test_a_refunded_payments_commission_follows_its_product_in_any_order(client, rows, models):
    customer(client, 1)
    now = int(datetime.now(timezone.utc).timestamp())
    for order in itertools.permutations(range(4)):
        charge = "ch_" + "".join(map(str, order))
        refunded = testing.refund(f"re_{charge}", charge=charge, amount=1000)
        events = [
            charge_shown("charge.succeeded", charge, "basic", now - 180),
            charge_shown("charge.updated", charge, "pro", now - 120),
            charge_shown("charge.updated", charge, None, now - 60),
            testing.event("refund.created", refunded, created=now),
        ]
        deliver_each(client, [events[n] for n in order])
        [transaction] = rows(models.Transaction, key=charge)
        assert (transaction.product_key, transaction.deleted_reason) == (None, "refund"), order
        commission = commission_of(rows, models, charge)
        shown = None if commission is None else (commission.status, commission.product_key)
        assert shown in (None, ("reversed", None)), order


@pytest.mark.parametrize(
    "app_config", [{"PARTNERSTACK_STRIPE_REWARDS": [{"percent": 10, "product_key": "pro"}]}]
)
def test_no_rule_no_commission(client, rows, models):
    customer(client, 1)
    pay(client, 1, "ch_basic", 5000, "basic")
    assert owed(rows, models, "ch_basic") is None
    assert rows(models.Commission) == []


@pytest.mark.parametrize(
    "app_config", [{"PARTNERSTACK_STRIPE_REWARDS": [{"percent": 10, "product_key": "pro"}]}]
)
def test_an_update_that_makes_a_payment_earn_creates_its_commission(client, rows, models):
    # An update usually finds its payment's commission (it is looked for first); this one
    # has none yet: the product came with the update.
    customer(client, 1)
    pay(client, 1, "ch_later_pro", 1000)
    assert owed(rows, models, "ch_later_pro") is None
    pro = {"product_key": "pro"}
    post(client, "charge.updated", testing.charge("ch_later_pro", customer="cus_1", metadata=pro))
    assert owed(rows, models, "ch_later_pro") == (100, "usd", "pending")


@pytest.mark.parametrize("app_config", [{"PARTNERSTACK_STRIPE_REWARDS": [{"percent": "12.5"}]}])
def test_percentages_round_half_even_in_minor_units(client, rows, models):
    customer(client, 1)
    # 12.5% of 1001 = 125.125; of 1004 = 125.5 (to even: 126); of 1012 = 126.5 (126); of 3 = 0.375
    for charge, amount in (("ch_a", 1001), ("ch_b", 1004), ("ch_c", 1012), ("ch_d", 3)):
        pay(client, 1, charge, amount)
    assert [owed(rows, models, c)[0] for c in ("ch_a", "ch_b", "ch_c")] == [125, 126, 126]
    assert owed(rows, models, "ch_d") is None  # rounds to nothing: no commission


MONTHS = {"PARTNERSTACK_STRIPE_REWARDS": [{"percent": 50, "months": 3}, {"percent": 10}]}


@pytest.mark.parametrize(
    "app_config",
    [{"PARTNERSTACK_STRIPE_REWARDS": [{"percent": 10}, {"percent": 30, "product_key": " pro "}]}],
)
def test_a_rules_keys_are_trimmed_as_a_payments_are(client, rows, models):
    customer(client, 1)
    pay(client, 1, "ch_pro", 1000, "pro")
    assert owed(rows, models, "ch_pro")[0] == 300


@pytest.mark.parametrize("app_config", [MONTHS])
def test_a_months_rule_pays_only_within_its_window(app, client, rows, models, state):
    customer(client, 1)
    pay(client, 1, "ch_first", 1000)
    pay(client, 1, "ch_soon", 1000)
    assert owed(rows, models, "ch_first")[0] == owed(rows, models, "ch_soon")[0] == 500
    # Four months pass: the customer's first payment is now that old.
    with app.app_context():
        Transaction = models.Transaction
        state.db.session.execute(
            sa.update(Transaction)
            .where(Transaction.key.in_(["ch_first", "ch_soon"]))
            .values(created_at=datetime.now(timezone.utc) - timedelta(days=125))
        )
        state.db.session.commit()
    pay(client, 1, "ch_later", 1000)
    assert owed(rows, models, "ch_later")[0] == 100  # after the window: the open-ended rule


@pytest.mark.parametrize(
    "rules",
    [
        [{"percent": 50, "months": 3}, {"percent": 30, "months": 12}, {"percent": 10}],
        # Windows that differ by currency or scope do not hide each other.
        [{"flat": 500, "currency": "usd", "months": 12}, {"percent": 50, "months": 3}],
        [{"percent": 10}, {"percent": 50, "months": 3, "product_key": "team"}],
    ],
)
def test_rules_that_can_each_apply_are_accepted(tmp_path, rules):
    app = create_app(f"sqlite:///{tmp_path / 'a.db'}", PARTNERSTACK_STRIPE_REWARDS=rules)
    assert len(get_state(app).settings.rewards) == len(rules)


@pytest.mark.parametrize("app_config", [MONTHS])
@pytest.mark.parametrize("orphan_first", [True, False])
def test_an_older_payment_attached_later_moves_the_months_window(
    app, client, rows, models, state, orphan_first
):
    """The window counts from the customer's first recorded payment, also when that
    payment (a guest checkout, kept without a customer) joins the customer after its
    later payments earned their commissions: the same events in either order leave the
    same commissions."""

    def age_everything() -> None:  # four months pass
        with app.app_context():
            state.db.session.execute(
                sa.update(models.Transaction).values(
                    created_at=datetime.now(timezone.utc) - timedelta(days=125)
                )
            )
            state.db.session.commit()

    def link_guest_email() -> None:
        metadata = {"customer_key": "user-1"}
        post(
            client, "customer.updated", testing.customer("cus_1", email="b@x.io", metadata=metadata)
        )

    customer(client, 1)
    post(client, "charge.succeeded", testing.charge("ch_guest", amount=1000, email="b@x.io"))
    age_everything()
    if not orphan_first:
        pay(client, 1, "ch_new", 1000)
        link_guest_email()
    else:
        link_guest_email()
        pay(client, 1, "ch_new", 1000)
    assert owed(rows, models, "ch_guest")[0] == 500  # the first payment: in its window
    assert owed(rows, models, "ch_new")[0] == 100  # four months after it


@pytest.mark.parametrize("app_config", [MONTHS])
def test_a_declined_card_does_not_start_the_months_window(app, client, rows, models, state):
    """DESIGN 6a: the window counts from the customer's first recorded *payment*. A
    declined attempt (kept as a transaction deleted for "failure") paid nothing."""
    customer(client, 1)
    declined = testing.charge("ch_declined", customer="cus_1", amount=1000, status="failed")
    post(client, "charge.failed", declined)
    with app.app_context():
        Transaction = models.Transaction
        state.db.session.execute(
            sa.update(Transaction)
            .where(Transaction.key == "ch_declined")
            .values(created_at=datetime.now(timezone.utc) - timedelta(days=125))
        )
        state.db.session.commit()
    pay(client, 1, "ch_first_paid", 1000)
    assert owed(rows, models, "ch_first_paid")[0] == 500  # within the window


# --- following the payment ---------------------------------------------------------------


@pytest.mark.parametrize("app_config", [PRORATE_TWENTY])
def test_the_commission_follows_refunds_and_their_failure(client, rows, models):
    customer(client, 1)
    with testing.record_signals(
        signals.commission_created, signals.commission_updated, signals.commission_reversed
    ) as sent:
        pay(client, 1, "ch_1", 10000)
        assert owed(rows, models, "ch_1") == (2000, "usd", "pending")
        post(client, "refund.created", testing.refund("re_1", charge="ch_1", amount=2500,
                                                      status="succeeded"))  # fmt: skip
        assert owed(rows, models, "ch_1") == (1500, "usd", "pending")  # 20% of 75.00
        post(client, "refund.failed", testing.refund("re_1", charge="ch_1", amount=2500,
                                                     status="failed"))  # fmt: skip
        assert owed(rows, models, "ch_1") == (2000, "usd", "pending")  # given back
        post(client, "refund.created", testing.refund("re_2", charge="ch_1", amount=10000,
                                                      status="succeeded"))  # fmt: skip
        assert owed(rows, models, "ch_1") == (0, "usd", "reversed")
    names = [s.signal.name for s in sent]
    assert names == ["commission-created", "commission-updated", "commission-updated",
                     "commission-reversed"]  # fmt: skip
    assert all(s.kwargs["transaction"].key == "ch_1" for s in sent)
    assert all(s.kwargs["event"]["type"] for s in sent)
    assert len(rows(models.Commission)) == 1


@pytest.mark.parametrize("app_config", [PRORATE_TWENTY])
def test_a_commission_is_reversed_once(client, rows, models):
    # A refund leaves 0.02 standing, which earns nothing (20% rounds to 0): the commission
    # is reversed then. Refunding the rest deletes the payment, and changes nothing more.
    customer(client, 1)
    with testing.record_signals(signals.commission_reversed) as sent:
        pay(client, 1, "ch_1", 10000)
        post(client, "refund.created", testing.refund("re_1", charge="ch_1", amount=9998,
                                                      status="succeeded"))  # fmt: skip
        assert owed(rows, models, "ch_1") == (0, "usd", "reversed")
        first = commission_of(rows, models, "ch_1")
        post(client, "refund.created", testing.refund("re_2", charge="ch_1", amount=2,
                                                      status="succeeded"))  # fmt: skip
    [transaction] = rows(models.Transaction, key="ch_1")
    assert transaction.deleted_at is not None
    again = commission_of(rows, models, "ch_1")
    assert (again.amount, again.status) == (0, "reversed")
    assert (again.reversed_at, again.updated_at) == (first.reversed_at, first.updated_at)
    assert [s.signal.name for s in sent] == ["commission-reversed"]


@pytest.mark.parametrize("app_config", [TWENTY])
def test_a_lost_dispute_reverses_the_commission(client, rows, models):
    customer(client, 1)
    pay(client, 1, "ch_1", 4000)
    post(client, "charge.dispute.closed", testing.dispute("dp_1", charge="ch_1", status="lost"))
    assert owed(rows, models, "ch_1") == (0, "usd", "reversed")
    assert commission_of(rows, models, "ch_1").reversed_at is not None


@pytest.mark.parametrize("app_config", [TWENTY])
def test_an_orphan_payment_earns_once_its_customer_is_known(client, rows, models):
    pay(client, 1, "ch_early", 5000)  # the customer is not known yet
    assert owed(rows, models, "ch_early") is None
    with testing.record_signals(signals.commission_created) as sent:
        customer(client, 1)
    assert owed(rows, models, "ch_early") == (1000, "usd", "pending")
    assert [s.kwargs["transaction"].key for s in sent] == ["ch_early"]


@pytest.mark.parametrize("app_config", [TWENTY])
def test_signup_attaches_an_orphan_and_its_commission(app, client, rows, models, state):
    post(client, "charge.succeeded",
         testing.charge("ch_shop", amount=3000, email="ann@example.com"))  # fmt: skip
    with app.test_request_context(), testing.record_signals(signals.commission_created) as sent:
        state.extension.create_customer("user-ann", "ann@example.com", partner_key="p-ann")
    assert owed(rows, models, "ch_shop") == (600, "usd", "pending")
    assert commission_of(rows, models, "ch_shop").partner_key == "p-ann"
    assert len(sent) == 1


@pytest.mark.parametrize("app_config", [TWENTY])
def test_a_customer_without_a_partner_earns_nothing(client, rows, models):
    post(client, "customer.created", testing.customer("cus_9", email="x@example.com"))
    post(client, "charge.succeeded",
         testing.charge("ch_9", customer="cus_9", amount=3000,
                        metadata={"customer_key": "user-9"}))  # fmt: skip
    assert rows(models.Commission) == []


def test_without_rules_no_commission_is_written(client, rows, models):
    customer(client, 1)
    pay(client, 1, "ch_1", 5000)
    assert rows(models.Commission) == []


# --- approval and payouts ----------------------------------------------------------------


@pytest.mark.parametrize("app_config", [PRORATE_TWENTY])
def test_approve_waits_for_the_hold(app, client, rows, models):
    customer(client, 1)
    pay(client, 1, "ch_1", 1000)
    assert "Approved 0 commissions" in cli(app, "commissions", "approve").output
    assert owed(rows, models, "ch_1")[2] == "pending"
    assert export(app) == []  # nothing approved, nothing paid


@pytest.mark.parametrize("app_config", [PAY_NOW])
def test_a_payout_pays_once_and_claws_back_a_later_refund(app, client, rows, models, state):
    customer(client, 1, "partner-a")
    customer(client, 2, "partner-b")
    pay(client, 1, "ch_1", 10000)
    pay(client, 1, "ch_2", 5000)
    pay(client, 2, "ch_3", 2000)
    pay(client, 2, "ch_eur", 3000, currency="eur")
    assert "Approved 4 commissions" in cli(app, "commissions", "approve").output

    first = export(app)
    assert [(r["partner_key"], r["currency"], r["amount"], r["commissions"]) for r in first] == [
        ("partner-a", "usd", "3000", "2"),
        ("partner-b", "eur", "600", "1"),
        ("partner-b", "usd", "400", "1"),
    ]
    assert len({r["payout_id"] for r in first}) == 1
    assert owed(rows, models, "ch_1") == (2000, "usd", "paid")
    assert export(app) == []  # run again: nothing is paid twice

    # After the payout, ch_1 is refunded in full and ch_2 by a fifth: the next payout
    # carries both as a clawback on partner-a's line.
    post(
        client,
        "charge.refunded",
        testing.charge("ch_1", customer="cus_1", amount=10000, amount_refunded=10000),
    )
    post(
        client,
        "charge.refunded",
        testing.charge("ch_2", customer="cus_1", amount=5000, amount_refunded=1000),
    )
    pay(client, 2, "ch_4", 1000)  # a new payment, approved at once (no hold)
    cli(app, "commissions", "approve")
    assert owed(rows, models, "ch_1") == (0, "usd", "reversed")
    assert owed(rows, models, "ch_2") == (800, "usd", "paid")  # 200 to claw back
    summary = state.extension.partner_summary
    with app.app_context():
        assert summary("partner-a")["due"] == {"usd": -2200}

    second = export(app)
    assert [(r["partner_key"], r["currency"], r["amount"]) for r in second] == [
        ("partner-a", "usd", "-2200"),
        ("partner-b", "usd", "200"),
    ]
    assert second[0]["payout_id"] != first[0]["payout_id"]
    assert export(app) == []
    with app.app_context():
        assert summary("partner-a")["due"] == {}
    Payout = models.Payout
    assert sum(p.amount for p in rows(Payout) if p.partner_key == "partner-a") == 800


@pytest.mark.parametrize("app_config", [PAY_NOW])
def test_a_failed_refund_after_a_clawback_is_paid_again(app, client, rows, models):
    customer(client, 1)
    pay(client, 1, "ch_1", 10000)
    cli(app, "commissions", "approve")
    assert [r["amount"] for r in export(app)] == ["2000"]
    post(
        client,
        "refund.created",
        testing.refund("re_1", charge="ch_1", amount=10000, status="succeeded"),
    )
    assert [r["amount"] for r in export(app)] == ["-2000"]
    post(
        client,
        "refund.failed",
        testing.refund("re_1", charge="ch_1", amount=10000, status="failed"),
    )
    assert owed(rows, models, "ch_1") == (2000, "usd", "approved")
    assert [r["amount"] for r in export(app)] == ["2000"]
    assert owed(rows, models, "ch_1") == (2000, "usd", "paid")
    assert export(app) == []


@pytest.mark.parametrize("app_config", [PAY_NOW])
def test_export_options_and_the_list_command(app, client, rows, models, tmp_path):
    customer(client, 1)
    pay(client, 1, "ch_usd", 1000)
    pay(client, 1, "ch_eur", 2000, currency="eur")
    pay(client, 1, "ch_jpy", 5000, currency="jpy")  # zero-decimal: 5000 yen
    pay(client, 1, "ch_kwd", 7515, currency="kwd")  # three decimals: 7.515 dinars
    cli(app, "commissions", "approve")
    listed = cli(app, "commissions", "list", "--partner", "partner-1", "--status", "approved")
    assert "ch_usd  2.00 USD  approved" in listed.output
    assert "ch_eur  4.00 EUR  approved" in listed.output
    assert "ch_jpy  1000 JPY  approved" in listed.output
    assert "ch_kwd  1.503 KWD  approved" in listed.output
    out = tmp_path / "payouts.csv"
    cli(app, "payouts", "export", "--currency", "eur", "--out", str(out))
    [line] = list(csv.DictReader(io.StringIO(out.read_text())))
    assert (line["currency"], line["amount"]) == ("eur", "400")
    assert owed(rows, models, "ch_usd")[2] == "approved"  # the other currency waits
    assert "No commissions match." in cli(app, "commissions", "list", "--status", "reversed").output
    # Nothing due in euros now: the first payout's file is left as it was.
    cli(app, "payouts", "export", "--currency", "eur", "--out", str(out))
    assert [line["amount"] for line in csv.DictReader(io.StringIO(out.read_text()))] == ["400"]


@pytest.mark.parametrize("app_config", [PAY_NOW])
def test_a_partner_key_a_spreadsheet_would_run_is_exported_as_text(app, client, tmp_path):
    """Anyone can open a partner link with any key; whoever pays opens the CSV."""
    customer(client, 1, partner='=HYPERLINK("http://evil.example","x")')
    pay(client, 1, "ch_1", 1000)
    cli(app, "commissions", "approve")
    out = tmp_path / "payouts.csv"
    cli(app, "payouts", "export", "--out", str(out))
    [line] = list(csv.DictReader(io.StringIO(out.read_text())))
    assert line["partner_key"] == '\'=HYPERLINK("http://evil.example","x")'
    assert line["amount"] == "200"


@pytest.mark.parametrize(
    "app_config",
    [{**PAY_NOW, "PARTNERSTACK_STRIPE_REWARDS": [{"percent": 100}]}],
)
def test_a_payout_line_past_what_a_column_holds_pays_nothing(app, client, rows, models, tmp_path):
    customer(client, 1)
    pay(client, 1, "ch_1", 2**63 - 1)
    pay(client, 1, "ch_2", 2**63 - 1)
    cli(app, "commissions", "approve")
    out = tmp_path / "payouts.csv"
    result = app.test_cli_runner().invoke(
        args=["partnerstack", "payouts", "export", "--out", str(out)]
    )
    assert result.exit_code == 1 and "past 2**63-1 minor units" in result.output
    assert "Traceback" not in result.output and not out.exists()
    assert {c.status for c in rows(models.Commission)} == {"approved"}


@pytest.mark.parametrize("app_config", [PAY_NOW])
def test_an_export_to_a_path_that_cannot_be_written_pays_nothing(app, client, rows, models):
    customer(client, 1)
    pay(client, 1, "ch_1", 1000)
    cli(app, "commissions", "approve")
    result = app.test_cli_runner().invoke(
        args=["partnerstack", "payouts", "export", "--out", "/nonexistent/dir/payouts.csv"]
    )
    assert result.exit_code != 0 and "Cannot write /nonexistent/dir/payouts.csv" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert owed(rows, models, "ch_1") == (200, "usd", "approved")  # not paid: still due


@pytest.mark.parametrize("app_config", [PAY_NOW])
def test_partner_summary(app, client, state):
    customer(client, 1)
    customer(client, 2)
    customer(client, 3, "someone-else")
    pay(client, 1, "ch_1", 1000)
    pay(client, 2, "ch_2", 3000)
    pay(client, 2, "ch_3", 500, currency="eur")
    post(
        client,
        "charge.refunded",
        testing.charge("ch_2", customer="cus_2", amount=3000, amount_refunded=3000),
    )
    with app.app_context():
        summary = state.extension.partner_summary("partner-1")
    assert summary == {
        "partner_key": "partner-1",
        "customers": 2,
        "payments": {"usd": {"count": 1, "amount": 1000}, "eur": {"count": 1, "amount": 500}},
        "commissions": {"pending": {"usd": 200, "eur": 100}, "reversed": {"usd": 0}},
        "due": {},
    }


@pytest.mark.parametrize("app_config", [{**PAY_NOW, "PARTNERSTACK_STRIPE_LIVEMODE": True}])
def test_test_mode_payments_are_never_paid_out_with_live_ones(app, client, state):
    """A live Connect endpoint receives its accounts' test-mode events too (Stripe), and
    ``send-test-event`` may be pointed at production: none of that is real money."""
    for livemode in (False, True):
        metadata = {"customer_key": "user-1", "partner_key": "partner-1"}
        customer_created = testing.customer("cus_1", metadata=metadata)
        paid = testing.charge("ch_1" if livemode else "ch_t", customer="cus_1", amount=10000)
        for event in (("customer.created", customer_created), ("charge.succeeded", paid)):
            answer = testing.post_event(client, testing.event(*event, livemode=livemode))
            assert answer.status_code == 200, answer.json
    cli(app, "commissions", "approve")
    with app.app_context():
        summary = state.extension.partner_summary("partner-1")
        test_summary = state.extension.partner_summary("partner-1", livemode=False)
    assert (summary["customers"], summary["payments"], summary["due"]) == (
        1, {"usd": {"count": 1, "amount": 10000}}, {"usd": 2000},
    )  # fmt: skip
    assert test_summary["due"] == {"usd": 2000}
    [line] = export(app)  # the app's mode: live
    assert (line["amount"], line["commissions"]) == ("2000", "1")
    assert export(app) == []
    result = cli(app, "payouts", "export", "--test")
    [line] = list(csv.DictReader(io.StringIO(result.stdout)))
    assert (line["amount"], line["commissions"]) == ("2000", "1")
    assert "(test-mode payments)" in result.stderr
    with app.app_context(), pytest.raises(ValueError, match="livemode must be True"):
        state.extension.export_payouts(livemode="live")


@pytest.mark.parametrize(
    ("app_config", "paid"),
    [(PAY_NOW, True), ({**PAY_NOW, "PARTNERSTACK_STRIPE_LIVEMODE": False}, False)],
    ids=["mode-unset", "test-mode-app"],
)
def test_a_live_app_that_never_said_its_mode_still_pays_its_partners(app, client, state, paid):
    """Neither LIVEMODE nor API_KEY (both optional): live payments are what it has, so
    live payments are what payouts pay and summaries count; an app that says it runs in
    test mode pays test-mode ones only."""
    metadata = {"customer_key": "user-1", "partner_key": "partner-1"}
    for event in (
        ("customer.created", testing.customer("cus_1", metadata=metadata)),
        ("charge.succeeded", testing.charge("ch_1", customer="cus_1", amount=10000)),
    ):
        answer = testing.post_event(client, testing.event(*event, livemode=True))
        assert answer.status_code == 200, answer.json
    cli(app, "commissions", "approve")
    with app.app_context():
        summary = state.extension.partner_summary("partner-1")
    assert summary["due"] == ({"usd": 2000} if paid else {})
    result = cli(app, "payouts", "export")
    assert len(list(csv.DictReader(io.StringIO(result.stdout)))) == (1 if paid else 0)
    assert ("(live payments)" if paid else "on test-mode payments") in result.stderr


@pytest.mark.parametrize("app_config", [TWENTY])
@pytest.mark.parametrize("hours", [5, -8])
def test_moments_in_any_time_zone_mean_the_same_instant(app, client, state, hours):
    """``since`` and ``now`` compare as instants, not as wall-clock times."""
    customer(client, 1)
    pay(client, 1, "ch_1", 1000)
    zone = timezone(timedelta(hours=hours))
    now = datetime.now(zone)
    with app.app_context():
        summary = state.extension.partner_summary
        assert summary("partner-1", since=now - timedelta(minutes=10))["payments"] != {}
        assert summary("partner-1", since=now + timedelta(minutes=10))["payments"] == {}
        assert state.extension.approve_commissions(now=now + timedelta(days=29)) == []
        [approved] = state.extension.approve_commissions(now=now + timedelta(days=30, hours=1))
        assert approved.status == "approved"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda ext: ext.partner_summary(""), "partner_key"),
        (lambda ext: ext.partner_summary(5), "partner_key"),
        (lambda ext: ext.partner_summary("p", since="yesterday"), "since must be a datetime"),
        (lambda ext: ext.approve_commissions(now=5), "now must be a datetime"),
        (lambda ext: ext.approve_commissions(now=datetime(1, 1, 1)), "now must be at least"),
        (lambda ext: ext.create_endpoint("acct_", None), "stripe_account_id"),
        (lambda ext: ext.create_endpoint("acct_1", "whsec_"), "signing_secret"),
        (lambda ext: ext.export_payouts(currency="dollars"), "currency"),
        (lambda ext: ext.export_payouts(currency=5), "currency"),
        (lambda ext: ext.set_endpoint_secret("", "whsec_1"), "endpoint_id"),
        (lambda ext: ext.set_endpoint_secret("a\x00b", "whsec_1"), "endpoint_id"),
        (lambda ext: ext.set_endpoint_secret("ep", ""), "signing_secret"),
    ],
)
def test_python_apis_name_the_bad_argument(app, state, call, message):
    with app.app_context(), pytest.raises(ValueError, match=message):
        call(state.extension)


WORKED_EXAMPLE = {
    "PARTNERSTACK_STRIPE_REWARDS": [{"percent": 15}, {"percent": 25, "product_key": "team"}],
    "PARTNERSTACK_STRIPE_COMMISSION_HOLD_DAYS": 0,
}


@pytest.mark.parametrize("app_config", [WORKED_EXAMPLE])
def test_the_readme_worked_example(app, client, rows, models):
    """README, "Rewards", "A worked example" (the hold is 0 here instead of 30 days)."""
    customer(client, 1, "partner-alice")  # Dana
    customer(client, 2, "partner-alice")  # Frank
    pay(client, 1, "ch_dana", 9900, "team")
    pay(client, 2, "ch_frank_1", 4900)
    assert owed(rows, models, "ch_dana")[0] == 2475
    assert owed(rows, models, "ch_frank_1")[0] == 735
    cli(app, "commissions", "approve")
    [line] = export(app)
    assert (line["partner_key"], line["amount"], line["commissions"]) == (
        "partner-alice",
        "3210",
        "2",
    )
    assert line["payout_id"].startswith("po_")
    assert export(app) == []
    refunded = testing.charge("ch_dana", customer="cus_1", amount=9900, amount_refunded=9900)
    post(client, "charge.refunded", refunded)
    with app.app_context():
        assert app.extensions["partnerstack_stripe"].extension.partner_summary("partner-alice")[
            "due"
        ] == {"usd": -2475}
    pay(client, 2, "ch_frank_2", 4900)
    cli(app, "commissions", "approve")
    [line] = export(app)
    assert (line["partner_key"], line["amount"], line["commissions"]) == (
        "partner-alice",
        "-1740",
        "2",
    )


@pytest.mark.parametrize("app_config", [TWENTY])
def test_payments_earn_once_their_customer_gets_a_partner(app, client, rows, models, state):
    """Signed up directly, paid, then the partner arrives with Stripe's customer metadata:
    the payment earns, as it would have had the partner been known first."""
    with app.test_request_context():
        state.extension.create_customer("user-7", "seven@example.com")
    linked = testing.customer(
        "cus_7", email="seven@example.com", metadata={"customer_key": "user-7"}
    )
    post(client, "customer.created", linked)
    pay(client, 7, "ch_7", 2000)
    assert owed(rows, models, "ch_7") is None  # no partner, no commission
    metadata = {"customer_key": "user-7", "partner_key": "late-partner"}
    post(client, "customer.updated", testing.customer("cus_7", metadata=metadata))
    assert owed(rows, models, "ch_7") == (400, "usd", "pending")
    assert commission_of(rows, models, "ch_7").partner_key == "late-partner"
