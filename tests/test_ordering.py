"""Stripe delivers at least once, in any order: the end state must not depend on it.

The full life of one payment has eight events (customer, succeeded, captured, updated,
refund.created, charge.refunded, refund.failed, dispute closed): 8! = 40320 orders is
too many for ``make test``. So every order of each meaningful subset is tested (the
charge's own life; a refund that fails; a refund counted by both its object and
``charge.refunded``; a dispute among refunds), plus a seeded random sample of full
orders; every order of a refund that fails followed by another (with a partial
capture too); and, in invoice mode, every order of a failed attempt, its retry, both
paid events and a refund. About 5,000 deliveries per database.

Each event carries the ``created`` of the moment it happened (``play``): Stripe's charge
objects are snapshots, the newest of which tells the refunded total.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence

import pytest

from flask_partnerstack_stripe import testing

#: Every test here also checks the commission (20% of each payment): like the
#: transaction, it must end the same whatever the order.
REWARDS = {"PARTNERSTACK_STRIPE_REWARDS": [{"percent": 20}]}
PRORATE = {**REWARDS, "PARTNERSTACK_STRIPE_REFUND_POLICY": "prorate"}
INVOICE_MODE = {**REWARDS, "PARTNERSTACK_STRIPE_TRANSACTION_SOURCE": "invoice"}


@pytest.fixture
def app_config() -> dict:
    return REWARDS


STEPS = (
    "customer.created",
    "charge.succeeded",
    "charge.captured",
    "charge.updated",
    "charge.refunded",
)
FULL = (
    "customer.created",
    "charge.succeeded",
    "charge.captured",
    "charge.updated",
    "refund.created",
    "charge.refunded",
    "refund.failed",
    "charge.dispute.closed",
)


def pending(amount: int) -> tuple[int, str, str]:
    """A pending commission of ``amount`` for partner-1."""
    return (amount, "pending", "partner-1")


def story(n: int, refund_status: str = "pending") -> dict[str, dict]:
    """The events of one charge's life, for customer number ``n``: authorized and
    captured 2500, a refund of 500 (``refund_status`` when created; it fails in
    ``refund.failed``), a lost dispute."""
    cus, ch, re = f"cus_{n}", f"ch_{n}", f"re_{n}"
    metadata = {"customer_key": f"user-{n}", "partner_key": "partner-1"}
    return {
        "customer.created": testing.customer(cus, metadata=metadata),
        "charge.succeeded": testing.charge(ch, customer=cus, amount=2500, captured=False),
        "charge.captured": testing.charge(ch, customer=cus, amount=2500),
        "charge.updated": testing.charge(ch, customer=cus, amount=2500),
        "charge.refunded": testing.charge(ch, customer=cus, amount=2500, amount_refunded=500),
        "refund.created": testing.refund(re, charge=ch, amount=500, status=refund_status),
        "refund.failed": testing.refund(re, charge=ch, amount=500, status="failed"),
        "charge.dispute.closed": testing.dispute(f"dp_{n}", charge=ch, status="lost"),
    }


def final_state(rows, models, n: int, key: str | None = None) -> tuple:
    customers = rows(models.Customer, customer_key=f"user-{n}")
    [transaction] = rows(models.Transaction, key=key or f"ch_{n}")
    customer = customers[0] if customers else None
    return (
        customer and customer.partner_key,
        customer and customer.stripe_customer_id == f"cus_{n}",
        transaction.customer_id == (customer.id if customer else None),
        transaction.amount,
        transaction.deleted_at is None,
        transaction.deleted_reason,
    )


def final_outcome(rows, models, n: int, key: str | None = None) -> tuple:
    """:func:`final_state` and the payment's commission: what the partner is owed on it,
    its status and partner. A payment that never stood in some order has no commission
    row, one that stood and was deleted has a reversed one: both owe nothing, which is
    what the partner sees, so both read None."""
    [transaction] = rows(models.Transaction, key=key or f"ch_{n}")
    commissions = rows(models.Commission, transaction_id=transaction.id)
    commission = commissions[0] if commissions and commissions[0].amount else None
    return (
        *final_state(rows, models, n, key),
        commission and (commission.amount, commission.status, commission.partner_key),
    )


def play(
    client,
    rows,
    models,
    orders: Sequence[Sequence[str]],
    events: Callable[[int], dict],
    first=0,
    timeline: Sequence[str] = FULL,
    state: Callable[..., tuple] = final_outcome,
) -> list[tuple]:
    """Deliver each order to its own payment; the final ``state`` of each (by default
    :func:`final_outcome`, the commission included).

    Each event carries the ``created`` Stripe gives it: the time it happened, in the
    story's ``timeline``, whatever the order it is delivered in. A step ``type#n`` is the
    n-th event of that type in the story.
    """
    for n, order in enumerate(orders, first):
        built = events(n)
        stamped = {
            step: testing.event(step.split("#")[0], built[step])
            for step in sorted(order, key=timeline.index)
        }
        for step in order:
            response = testing.post_event(client, stamped[step])
            assert response.status_code == 200, (order, response.json)
    return [state(rows, models, n) for n in range(first, first + len(orders))]


def natural(steps: Sequence[str], timeline: Sequence[str] = FULL) -> tuple[str, ...]:
    return tuple(step for step in timeline if step in steps)


def assert_all_like_natural(
    states: list[tuple], orders: list[tuple], expected: tuple, timeline: Sequence[str] = FULL
) -> None:
    assert orders[0] == natural(orders[0], timeline)
    assert states[0] == expected
    for state, order in zip(states, orders, strict=True):
        assert state == expected, order


def test_every_permutation_ends_like_the_natural_order(client, rows, models):
    """All 120 orders of the five events of one charge, each on its own customer."""
    orders = list(itertools.permutations(STEPS))
    states = play(client, rows, models, orders, story)
    expected = ("partner-1", True, True, 2500, False, "refund", None)
    assert_all_like_natural(states, orders, expected)


@pytest.mark.parametrize("app_config", [PRORATE])
def test_a_refund_that_fails_in_any_order_gives_everything_back(client, rows, models):
    """Every order of succeeded, captured, refund.created, charge.refunded, refund.failed."""
    steps = ("charge.succeeded", "charge.captured", "refund.created", "charge.refunded",
             "refund.failed")  # fmt: skip
    orders = list(itertools.permutations(steps))
    states = play(client, rows, models, orders, story)
    assert_all_like_natural(states, orders, (None, None, True, 2500, True, None, None))


@pytest.mark.parametrize("app_config", [PRORATE])
def test_a_refund_told_twice_in_any_order_counts_once(client, rows, models):
    """Every order of customer, succeeded, captured, refund.created (succeeded), charge.refunded."""
    steps = ("customer.created", "charge.succeeded", "charge.captured", "refund.created",
             "charge.refunded")  # fmt: skip
    orders = list(itertools.permutations(steps))
    states = play(client, rows, models, orders, lambda n: story(n, "succeeded"))
    assert_all_like_natural(
        states, orders, ("partner-1", True, True, 2000, True, None, pending(400))
    )


def test_a_lost_dispute_among_refunds_in_any_order(client, rows, models):
    """Every order of customer, captured, refund.created, refund.failed, dispute closed."""
    steps = ("customer.created", "charge.captured", "refund.created", "refund.failed",
             "charge.dispute.closed")  # fmt: skip
    orders = list(itertools.permutations(steps))
    states = play(client, rows, models, orders, story)
    assert_all_like_natural(states, orders, ("partner-1", True, True, 2500, False, "dispute", None))


@pytest.mark.parametrize("app_config", [REWARDS, PRORATE], ids=["delete", "prorate"])
@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (FULL, ("partner-1", True, True, 2500, False, "dispute", None)),
        (FULL[:-1], ("partner-1", True, True, 2500, True, None, pending(500))),  # stands
    ],
    ids=["all-eight", "without-dispute"],
)
def test_a_seeded_sample_of_full_orders(client, rows, models, steps, expected):
    """30 random orders of all eight events, and of the seven without the dispute
    (seeded, so that a failing order can be replayed)."""
    shuffler = random.Random(20261128)
    orders = [tuple(steps)]
    while len(orders) < 30:
        order = list(steps)
        shuffler.shuffle(order)
        orders.append(tuple(order))
    states = play(client, rows, models, orders, story)
    assert_all_like_natural(states, orders, expected)


# --- a refund that fails, then another: Stripe's charge already gives the first one back --

REFUND_AGAIN = ("customer.created", "charge.succeeded", "charge.refunded#1",
                "charge.refund.updated", "charge.refunded#2")  # fmt: skip


def refund_again_story(n: int) -> dict[str, dict]:
    """Charge 1000; refund re_1 (500) shown by ``charge.refunded``; re_1 fails
    (``charge.refund.updated``), Stripe gives its 500 back; refund re_2 (500), whose
    ``charge.refunded`` shows 500 again. An endpoint without ``refund.created``."""
    cus, ch = f"cus_{n}", f"ch_{n}"
    metadata = {"customer_key": f"user-{n}", "partner_key": "partner-1"}
    refunded_500 = testing.charge(ch, customer=cus, amount=1000, amount_refunded=500)
    failed = testing.refund(f"re_1_{n}", charge=ch, amount=500, status="failed")
    return {
        "customer.created": testing.customer(cus, metadata=metadata),
        "charge.succeeded": testing.charge(ch, customer=cus, amount=1000),
        "charge.refunded#1": refunded_500,
        "charge.refund.updated": failed,
        "charge.refunded#2": refunded_500,
    }


@pytest.mark.parametrize(
    ("app_config", "expected"),
    [({}, (1000, False, "refund")), (PRORATE, (500, True, None))],
    ids=["delete", "prorate"],
)
def test_a_refund_after_a_failed_one_counts_in_any_order(client, rows, models, expected):
    """All 120 orders of customer, succeeded, refunded (re_1), re_1 failed, refunded (re_2):
    the second refund stands whatever the delivery order (the failed one gives back only
    what it took, which the later charge object already shows)."""
    orders = list(itertools.permutations(REFUND_AGAIN))
    states = play(
        client, rows, models, orders, refund_again_story, timeline=REFUND_AGAIN, state=final_state
    )
    assert_all_like_natural(states, orders, ("partner-1", True, True, *expected), REFUND_AGAIN)


PARTIAL_CAPTURE = ("charge.succeeded", "charge.captured", "refund.created#B", "charge.refunded#1",
                   "refund.failed", "charge.refund.updated", "charge.updated", "refund.created#A",
                   "charge.refunded#2")  # fmt: skip


def partial_capture_story(n: int) -> dict[str, dict]:
    """Authorized 1000, captured 800 (200 released); refund B (200) is created and fails,
    then refund A (300) succeeds: 500 stands under ``prorate``."""
    ch, cus = f"ch_{n}", f"cus_{n}"

    def charge(**fields) -> dict:
        return testing.charge(ch, customer=cus, amount=1000, **fields)

    refund_b = {"id": f"re_B{n}", "charge": ch, "amount": 200}
    return {
        "charge.succeeded": charge(captured=False),
        "charge.captured": charge(amount_captured=800),
        "refund.created#B": testing.refund(**refund_b, status="pending"),
        "charge.refunded#1": charge(amount_captured=800, amount_refunded=200),
        "refund.failed": testing.refund(**refund_b, status="failed"),
        "charge.refund.updated": testing.refund(**refund_b, status="failed"),
        "charge.updated": charge(amount_captured=800, amount_refunded=0),
        "refund.created#A": testing.refund(f"re_A{n}", charge=ch, amount=300),
        "charge.refunded#2": charge(amount_captured=800, amount_refunded=300),
    }


@pytest.mark.parametrize("app_config", [PRORATE])
@pytest.mark.parametrize(
    "steps",
    [
        PARTIAL_CAPTURE,
        # An endpoint without refund.created and charge.updated: only the charge objects
        # tell of refund A.
        ("charge.captured", "charge.refunded#1", "refund.failed", "charge.refund.updated",
         "charge.refunded#2"),
    ],
    ids=["all-nine", "charge-events-and-failure"],
)  # fmt: skip
def test_a_partial_capture_with_a_failed_then_a_good_refund(client, rows, models, steps):
    """Refund B fails before refund A: 800 captured less A's 300 is 500, in every order
    of the five events an endpoint without ``refund.created`` gets, and in 30 seeded
    random orders of all nine."""
    if len(steps) == len(PARTIAL_CAPTURE):
        shuffler = random.Random(20261128)
        orders = [tuple(steps)]
        while len(orders) < 30:
            order = list(steps)
            shuffler.shuffle(order)
            orders.append(tuple(order))
    else:
        orders = list(itertools.permutations(steps))
    states = play(
        client,
        rows,
        models,
        orders,
        partial_capture_story,
        timeline=PARTIAL_CAPTURE,
        state=final_state,
    )
    assert_all_like_natural(states, orders, (None, None, True, 500, True, None), PARTIAL_CAPTURE)


def test_without_the_refund_every_order_records_once(client, rows, models):
    for n, order in enumerate(itertools.permutations(STEPS[:4])):
        events = story(1000 + n)
        for step in order:
            testing.post_event(client, testing.event(step, events[step]))
    transactions = rows(models.Transaction)
    assert len(transactions) == 24
    assert all(t.deleted_at is None and t.customer_id is not None for t in transactions)
    assert {t.amount for t in transactions} == {2500}
    commissions = rows(models.Commission)
    assert sorted(c.transaction_id for c in commissions) == [t.id for t in transactions]
    assert {(c.amount, c.status) for c in commissions} == {(500, "pending")}


def test_two_event_ids_for_the_same_charge_make_one_transaction(client, rows, models):
    charge = testing.charge("ch_twice", amount=700)
    first = testing.post_event(client, testing.event("charge.succeeded", charge))
    second = testing.post_event(client, testing.event("charge.succeeded", charge))
    assert first.json["status"] == second.json["status"] == "processed"
    assert len(rows(models.Transaction)) == 1
    assert len(rows(models.WebhookEvent)) == 2


# --- invoice mode ------------------------------------------------------------------------

INVOICE_STEPS = ("failed attempt", "retry paid", "invoice.paid", "invoice.payment_succeeded",
                 "refund")  # fmt: skip


def invoice_story(n: int) -> dict[str, tuple[str, dict]]:
    """A subscription invoice (pre-basil shapes: the charges name it) whose first attempt
    fails, whose retry pays it, announced by both paid events, later refunded."""
    version = testing.PRE_BASIL_API_VERSION
    cus, inv = f"cus_{n}", f"in_{n}"
    meta = {"customer_key": f"user-{n}", "partner_key": "partner-1"}

    def charge(id: str, **fields) -> dict:
        return testing.charge(id, customer=cus, amount=3000, invoice=inv, api_version=version,
                              **fields)  # fmt: skip

    paid = testing.invoice(inv, customer=cus, subtotal=3000, charge=f"ch_{n}b",
                           subscription_metadata=meta, api_version=version)  # fmt: skip
    return {
        "failed attempt": ("charge.failed", charge(f"ch_{n}a", status="failed", captured=False)),
        "retry paid": ("charge.succeeded", charge(f"ch_{n}b")),
        "invoice.paid": ("invoice.paid", paid),
        "invoice.payment_succeeded": ("invoice.payment_succeeded", paid),
        "refund": ("charge.refunded", charge(f"ch_{n}b", amount_refunded=3000)),
    }


def play_invoices(client, rows, models, orders) -> list[tuple]:
    for n, order in enumerate(orders):
        built = invoice_story(n)
        stamped = {  # created: the time it happened (the story's order), as in play()
            step: testing.event(*built[step], api_version=testing.PRE_BASIL_API_VERSION)
            for step in sorted(order, key=INVOICE_STEPS.index)
        }
        for step in order:
            response = testing.post_event(client, stamped[step])
            assert response.status_code == 200, (order, response.json)
    return [final_outcome(rows, models, n, key=f"in_{n}") for n in range(len(orders))]


@pytest.mark.parametrize("app_config", [INVOICE_MODE])
def test_invoice_mode_every_order_of_attempts_payments_and_refund(client, rows, models):
    """All 120 orders: the refund deletes; the failed attempt never does."""
    orders = list(itertools.permutations(INVOICE_STEPS))
    states = play_invoices(client, rows, models, orders)
    expected = ("partner-1", True, True, 3000, False, "refund", None)
    assert states[0] == expected
    for state, order in zip(states, orders, strict=True):
        assert state == expected, order


@pytest.mark.parametrize("app_config", [INVOICE_MODE])
def test_invoice_mode_every_order_without_the_refund_records_once(client, rows, models):
    """All 24 orders of failed attempt, retry, invoice.paid, invoice.payment_succeeded."""
    orders = list(itertools.permutations(INVOICE_STEPS[:4]))
    states = play_invoices(client, rows, models, orders)
    for state, order in zip(states, orders, strict=True):
        assert state == ("partner-1", True, True, 3000, True, None, pending(600)), order
