"""Against real servers: concurrent duplicates and races end in one exact ledger.

Every race runs against each server model users deploy (gunicorn sync workers,
gunicorn gthread workers with threads, ``flask run``), on SQLite and PostgreSQL,
with zero 5xx, an exact ledger, every data signal sent exactly once, and a clean log.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import threading
import time
from collections import Counter
from typing import Any

import pytest

from flask_partnerstack_stripe import testing

from .apphost import SECRET
from .conftest import SERVER_COMMANDS, Server

pytestmark = pytest.mark.slow


@pytest.fixture(params=sorted(SERVER_COMMANDS))
def server_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def all_at_once(calls: list[Any]) -> list[Any]:
    """Run the calls in threads released by one barrier, so they hit the server together."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


TROUBLE = (
    "database is locked",
    "closed database",
    "QueuePool limit",
    "IntegrityError",
    "Traceback",
    "deadlock",
)


def assert_clean_log(server: Server) -> None:
    text = server.log_text()
    for trouble in TROUBLE:
        assert trouble not in text, text


def assert_signals_exact(server: Server, rows: Any, models: Any) -> None:
    """Every change the ledger shows was signalled once, and nothing else was.

    A standing transaction was recorded exactly once and never deleted; a deleted one
    was deleted as often as it had been recorded (once, or never when its refund came
    first); the customer a standing transaction ends with was named by one of its
    signals (a deleted one may be attached silently: it earns nothing); each customer
    was created once.
    """
    sent = server.signals()
    counts = Counter(entry[:2] for entry in sent)
    seen_customers: dict[str, set[str]] = {}
    for name, key, *customer_id in sent:
        if name.startswith("transaction-"):
            seen_customers.setdefault(key, set()).update(customer_id)
    for transaction in rows(models.Transaction):
        recorded = counts[("transaction-recorded", transaction.key)]
        deleted = counts[("transaction-deleted", transaction.key)]
        if transaction.deleted_at is not None:
            assert recorded == deleted <= 1, (transaction.key, sent)
            continue
        assert (recorded, deleted) == (1, 0), (transaction.key, sent)
        if transaction.customer_id is not None:
            assert str(transaction.customer_id) in seen_customers[transaction.key], transaction.key
    for customer in rows(models.Customer):
        assert counts[("customer-created", customer.customer_key)] == 1, (customer, sent)
    known = {t.key for t in rows(models.Transaction)} | {
        c.customer_key for c in rows(models.Customer)
    }
    assert {key for _, key in counts} <= known, sent


def test_same_event_from_eight_clients_at_once(server, rows, models):
    event = testing.event("charge.succeeded", testing.charge("ch_dup", amount=1234))
    payload = json.dumps(event)
    for _ in range(3):  # the same delivery, eight copies, three times over
        headers = {"Stripe-Signature": testing.sign(payload, SECRET)}
        results = all_at_once([lambda h=headers: server.post(payload, h)] * 8)
        assert all(status == 200 for status, _ in results), results
    statuses = Counter(body["status"] for status, body in results)
    assert statuses["duplicate"] == 8
    assert len(rows(models.WebhookEvent)) == 1
    [transaction] = rows(models.Transaction)
    assert transaction.amount == 1234
    assert_clean_log(server)
    assert_signals_exact(server, rows, models)


def test_first_round_of_duplicates_has_exactly_one_winner(server, rows, models):
    for n in range(5):
        payload = json.dumps(testing.event("balance.available", {"object": "balance", "n": n}))
        headers = {"Stripe-Signature": testing.sign(payload, SECRET)}
        results = all_at_once([lambda p=payload, h=headers: server.post(p, h)] * 8)
        assert [status for status, _ in results] == [200] * 8
        statuses = Counter(body["status"] for _, body in results)
        assert statuses == {"ignored": 1, "duplicate": 7}, statuses
    assert len(rows(models.WebhookEvent)) == 5
    assert_clean_log(server)
    assert_signals_exact(server, rows, models)


def test_customer_and_charge_racing_end_attached(server, rows, models):
    """Customer and charge events for one customer, posted together (and twice) by 8 clients."""
    customers = 6
    for n in range(customers):
        metadata = {"customer_key": f"user-{n}", "partner_key": f"partner-{n % 2}"}
        customer = testing.event(
            "customer.created", testing.customer(f"cus_{n}", metadata=metadata)
        )
        charges = [
            testing.event("charge.succeeded", testing.charge(f"ch_{n}_{i}", customer=f"cus_{n}"))
            for i in range(3)
        ]
        events = [customer, *charges] * 2
        results = all_at_once([lambda e=e: server.post_event(e) for e in events])
        assert all(status == 200 for status, _ in results), results
    by_key = {c.customer_key: c for c in rows(models.Customer)}
    assert len(by_key) == customers
    transactions = rows(models.Transaction)
    assert len(transactions) == customers * 3
    for transaction in transactions:
        n = transaction.key.split("_")[1]
        assert transaction.customer_id == by_key[f"user-{n}"].id, transaction.key
    assert_clean_log(server)
    assert_signals_exact(server, rows, models)


def test_refunds_racing_successes_leave_exact_ledger(server, rows, models):
    """Each charge's success and refund arrive together: every refunded charge ends deleted."""
    events = []
    for n in range(12):
        charge = testing.charge(f"ch_r{n}", amount=100 + n)
        events.append(testing.event("charge.succeeded", charge))
        if n % 2 == 0:
            refunded = testing.charge(f"ch_r{n}", amount=100 + n, amount_refunded=100 + n)
            events.append(testing.event("charge.refunded", refunded))
    results = all_at_once([lambda e=e: server.post_event(e) for e in events])
    assert all(status == 200 for status, _ in results), results
    ledger = {t.key: t.deleted_at is None for t in rows(models.Transaction)}
    assert ledger == {f"ch_r{n}": n % 2 == 1 for n in range(12)}
    assert_clean_log(server)
    assert_signals_exact(server, rows, models)


def test_chunked_body_over_the_cap_is_413(server, rows, models):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    body = iter([b"{" + b" " * 600_000, b" " * 600_000 + b"}"])
    connection.request(
        "POST", "/partnerstack/webhook", body=body,
        headers={"Stripe-Signature": "t=1,v1=00", "Transfer-Encoding": "chunked"},
        encode_chunked=True,
    )  # fmt: skip
    assert connection.getresponse().status == 413
    connection.close()
    assert rows(models.WebhookEvent) == []


def test_every_event_of_one_charge_at_once(server, rows, models):
    """Customer, success, capture, update and refund of one charge, all together, twice over."""
    for n in range(6):
        metadata = {"customer_key": f"user-{n}", "partner_key": "partner-1"}
        cus, ch = f"cus_e{n}", f"ch_e{n}"
        events = [
            testing.event("customer.created", testing.customer(cus, metadata=metadata)),
            testing.event("charge.succeeded", testing.charge(ch, customer=cus, captured=False)),
            testing.event("charge.captured", testing.charge(ch, customer=cus)),
            testing.event("charge.updated", testing.charge(ch, customer=cus)),
            testing.event(
                "charge.refunded", testing.charge(ch, customer=cus, amount_refunded=1000)
            ),
        ]
        results = all_at_once([lambda e=e: server.post_event(e) for e in events * 2])
        assert all(status == 200 for status, _ in results), results
    customers = {c.stripe_customer_id: c.id for c in rows(models.Customer)}
    for transaction in rows(models.Transaction):
        assert transaction.deleted_at is not None
        assert transaction.customer_id == customers[transaction.key.replace("ch_", "cus_")]
    assert len(rows(models.Transaction)) == 6
    assert_clean_log(server)
    assert_signals_exact(server, rows, models)


REWARDS_ENV = {"PARTNERSTACK_TEST_REWARDS": json.dumps([{"percent": 20}])}


@pytest.mark.parametrize(
    ("app_config", "server_env"),
    [({"PARTNERSTACK_STRIPE_REWARDS": [{"percent": 20}]}, REWARDS_ENV)],
    ids=["rewards"],
)
def test_racing_deliveries_make_one_commission_per_payment(server, rows, models):
    """Customer, charges and a refund of each customer, all at once and twice over:
    exactly one commission per payment that earned one, right, each created once."""
    for n in range(6):
        metadata = {"customer_key": f"user-{n}", "partner_key": f"partner-{n % 2}"}
        cus = f"cus_c{n}"
        events = [testing.event("customer.created", testing.customer(cus, metadata=metadata))]
        for i in range(3):
            charge = testing.charge(f"ch_c{n}_{i}", customer=cus, amount=1000 + i)
            events.append(testing.event("charge.succeeded", charge))
        refunded = testing.charge(f"ch_c{n}_0", customer=cus, amount=1000, amount_refunded=1000)
        events.append(testing.event("charge.refunded", refunded))
        results = all_at_once([lambda e=e: server.post_event(e) for e in events * 2])
        assert all(status == 200 for status, _ in results), results
    transactions = {t.id: t for t in rows(models.Transaction)}
    commissions = rows(models.Commission)
    assert len({c.transaction_id for c in commissions}) == len(commissions)
    owed = {transactions[c.transaction_id].key: (c.amount, c.status) for c in commissions}
    for key, transaction in ((t.key, t) for t in transactions.values()):
        if transaction.deleted_at is None:
            assert owed[key] == (transaction.amount // 5, "pending"), key
        else:  # refunded: reversed if it had stood first, else never earned
            assert owed.get(key, (0, "reversed")) == (0, "reversed"), key
    assert len(transactions) == 18
    sent = Counter(entry[:2] for entry in server.signals())
    for key, (_amount, status) in owed.items():
        assert sent[("commission-created", key)] == 1, (key, server.signals())
        assert sent[("commission-reversed", key)] == (status == "reversed"), key
    assert_clean_log(server)
    assert_signals_exact(server, rows, models)


def test_burst_of_ten_times_the_steady_rate(server, rows, models):
    """A steady trickle, then ten times as fast from eight clients: no 5xx, an exact ledger.

    In ``make test`` each client sends a fixed number of payments (``BURST_STORIES``) at
    the burst's pace, so a loaded machine makes the test slower, never different;
    ``make burst`` sets ``BURST_SECONDS`` and keeps the pace up for a full minute.
    """

    def story(n: int) -> list[dict]:
        charge = testing.charge(f"ch_b{n}", amount=100 + n)
        events = [testing.event("charge.succeeded", charge)]
        if n % 3 == 0:
            refunded = testing.charge(f"ch_b{n}", amount=100 + n, amount_refunded=100 + n)
            events.append(testing.event("charge.refunded", refunded))
        return events

    steady = [event for n in range(20) for event in story(n)]
    for event in steady:  # about 20 events a second
        assert server.post_event(event)[0] == 200
        time.sleep(0.05)
    seconds = os.environ.get("BURST_SECONDS")
    deadline = time.monotonic() + float(seconds) if seconds else None
    stories = int(os.environ.get("BURST_STORIES", "12"))

    def client(offset: int) -> list[tuple[int, int]]:
        # Each of the 8 clients sends 10x the steady rate's share: ~25 events a second.
        sent, n = [], 20 + offset
        for count in itertools.count():
            if (time.monotonic() >= deadline) if deadline else (count == stories):
                break
            started = time.monotonic()
            sent += [(n, server.post_event(e)[0]) for e in story(n)]
            n += 8
            time.sleep(max(0.0, 0.04 - (time.monotonic() - started)))
        return sent

    results = [pair for pairs in all_at_once([lambda i=i: client(i) for i in range(8)])
               for pair in pairs]  # fmt: skip
    assert all(status == 200 for _, status in results), results
    charges = set(range(20)) | {n for n, _ in results}
    if deadline is None:
        assert len(charges) == 20 + 8 * stories
    ledger = {t.key: t.deleted_at is None for t in rows(models.Transaction)}
    assert ledger == {f"ch_b{n}": n % 3 != 0 for n in charges}
    assert_clean_log(server)
    assert_signals_exact(server, rows, models)
