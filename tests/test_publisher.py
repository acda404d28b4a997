"""The celery mode's background publisher: ids gathered into messages, published off the
request, and published at once when someone waits for them."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from flask_partnerstack_stripe.publisher import Publisher


def collecting() -> tuple[list[list[str]], Publisher, threading.Lock]:
    published: list[list[str]] = []
    lock = threading.Lock()

    def publish(ids: Sequence[str]) -> None:
        with lock:
            published.append(list(ids))

    # A linger far longer than the test: only flush can make the batch go early.
    return published, Publisher(publish, linger=60.0, batch=100), lock


def test_flush_publishes_the_gathered_batch_at_once() -> None:
    published, publisher, lock = collecting()
    try:
        for number in range(3):
            publisher.submit(f"evt_{number}")
        started = time.monotonic()
        assert publisher.flush(timeout=10)
        assert time.monotonic() - started < 5
        with lock:
            assert published == [["evt_0", "evt_1", "evt_2"]]  # still one message
        assert publisher.pending() == 0
        publisher.submit("evt_3")  # the thread gathers again after a flush
        assert publisher.flush(timeout=10)
        with lock:
            assert published[-1] == ["evt_3"]
    finally:
        assert publisher.close(timeout=10)


def test_flush_with_nothing_submitted_returns_at_once() -> None:
    published, publisher, _ = collecting()
    started = time.monotonic()
    assert publisher.flush(timeout=10)
    assert time.monotonic() - started < 1
    assert published == []
    assert publisher.pending() == 0
