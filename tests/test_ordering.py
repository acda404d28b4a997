"""Stripe delivers at least once, in any order: the end state must not depend on it."""

from __future__ import annotations

import itertools

from flask_partnerstack_stripe import testing

STEPS = (
    "customer.created",
    "charge.succeeded",
    "charge.captured",
    "charge.updated",
    "charge.refunded",
)


def story(n: int) -> dict[str, dict]:
    """The five events of one charge's life, for customer number ``n``, in natural order."""
    cus, ch = f"cus_{n}", f"ch_{n}"
    metadata = {"customer_key": f"user-{n}", "partner_key": "partner-1"}
    return {
        "customer.created": testing.customer(cus, metadata=metadata),
        "charge.succeeded": testing.charge(ch, customer=cus, amount=2500, captured=False),
        "charge.captured": testing.charge(ch, customer=cus, amount=2500),
        "charge.updated": testing.charge(ch, customer=cus, amount=2500),
        "charge.refunded": testing.charge(ch, customer=cus, amount=2500, amount_refunded=2500),
    }


def final_state(rows, models, n: int) -> tuple:
    [customer] = rows(models.Customer, customer_key=f"user-{n}")
    [transaction] = rows(models.Transaction, key=f"ch_{n}")
    return (
        customer.partner_key,
        customer.stripe_customer_id,
        transaction.customer_id == customer.id,
        transaction.deleted_at is not None,
    )


def test_every_permutation_ends_like_the_natural_order(client, rows, models):
    """All 120 orders of the five events of one charge, each on its own customer."""
    orders = list(itertools.permutations(STEPS))
    for n, order in enumerate(orders):
        events = story(n)
        for step in order:
            response = testing.post_event(client, testing.event(step, events[step]))
            assert response.status_code == 200, (order, response.json)
    assert orders[0] == STEPS
    assert final_state(rows, models, 0) == ("partner-1", "cus_0", True, True)
    for n, order in enumerate(orders):
        assert final_state(rows, models, n) == ("partner-1", f"cus_{n}", True, True), order


def test_without_the_refund_every_order_records_once(client, rows, models):
    for n, order in enumerate(itertools.permutations(STEPS[:4])):
        events = story(1000 + n)
        for step in order:
            testing.post_event(client, testing.event(step, events[step]))
    transactions = rows(models.Transaction)
    assert len(transactions) == 24
    assert all(t.deleted_at is None and t.customer_id is not None for t in transactions)
    assert {t.amount for t in transactions} == {2500}


def test_two_event_ids_for_the_same_charge_make_one_transaction(client, rows, models):
    charge = testing.charge("ch_twice", amount=700)
    first = testing.post_event(client, testing.event("charge.succeeded", charge))
    second = testing.post_event(client, testing.event("charge.succeeded", charge))
    assert first.json["status"] == second.json["status"] == "processed"
    assert len(rows(models.Transaction)) == 1
    assert len(rows(models.WebhookEvent)) == 2
