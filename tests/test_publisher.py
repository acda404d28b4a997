"""The celery mode's background publisher: ids gathered into messages, published off the
request, and published at once when someone waits for them."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

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


def wait_for(condition, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_full_batch_goes_at_once_without_waiting_out_the_linger() -> None:
    published: list[list[str]] = []
    publisher = Publisher(published.append, linger=60.0, batch=3)
    try:
        for number in range(4):
            publisher.submit(f"evt_{number}")
        assert wait_for(lambda: len(published) >= 1)
        assert published[0] == ["evt_0", "evt_1", "evt_2"]  # the fourth goes in the next
    finally:
        assert publisher.close(timeout=10)
    assert published == [["evt_0", "evt_1", "evt_2"], ["evt_3"]]


def test_ids_that_come_during_the_linger_go_in_one_message() -> None:
    published: list[list[str]] = []
    publisher = Publisher(published.append, linger=0.5, batch=100)
    try:
        for number in range(5):
            publisher.submit(f"evt_{number}")
        assert wait_for(lambda: publisher.pending() == 0)
        assert published == [[f"evt_{number}" for number in range(5)]]
    finally:
        assert publisher.close(timeout=10)


def test_flush_with_nothing_submitted_returns_at_once() -> None:
    published, publisher, _ = collecting()
    started = time.monotonic()
    assert publisher.flush(timeout=10)
    assert time.monotonic() - started < 1
    assert published == []
    assert publisher.pending() == 0


def blocking(
    batch: int = 1, linger: float = 60.0, **options: Any
) -> tuple[list[list[str]], Publisher, threading.Event, threading.Event]:
    """A publisher whose publish waits for ``release``; ``entered`` is set once it started."""
    published: list[list[str]] = []
    entered, release = threading.Event(), threading.Event()

    def publish(ids: Sequence[str]) -> None:
        entered.set()
        assert release.wait(10)
        published.append(list(ids))

    return published, Publisher(publish, linger=linger, batch=batch, **options), entered, release


def test_pending_counts_ids_not_the_flush_marker() -> None:
    published, publisher, entered, release = blocking()
    try:
        publisher.submit("evt_0")
        assert entered.wait(10)  # the thread is publishing evt_0
        assert not publisher.flush(timeout=0.05)  # a caller gives up waiting
        assert publisher.pending() == 1  # one id is not published, not two
        release.set()
        assert publisher.flush(timeout=10)
        assert publisher.pending() == 0
        assert published == [["evt_0"]]
    finally:
        release.set()
        assert publisher.close(timeout=10)


def test_a_flush_racing_close_does_not_wait_forever() -> None:
    published, publisher, entered, release = blocking()
    publisher.submit("evt_0")
    assert entered.wait(10)  # the thread is publishing evt_0
    closing = threading.Thread(target=publisher.close, args=(10,))
    closing.start()  # takes the thread and queues the stop behind evt_0
    time.sleep(0.1)
    flushed: list[bool] = []
    flushing = threading.Thread(target=lambda: flushed.append(publisher.flush(timeout=5)))
    flushing.start()
    time.sleep(0.05)
    release.set()
    closing.join(10)
    flushing.join(10)
    assert flushed == [True]  # evt_0 was published: nothing is left to wait for
    assert publisher.pending() == 0
    assert published == [["evt_0"]]


@pytest.mark.filterwarnings("ignore:This process .* fork:DeprecationWarning")
def test_flush_in_a_forked_child_does_not_wait_for_the_parents_ids() -> None:
    published, publisher, entered, release = blocking()
    try:
        publisher.submit("evt_0")
        assert entered.wait(10)  # the parent's thread holds evt_0 when the child forks
        pid = os.fork()
        if pid == 0:  # the child: its queue is its own, and empty
            code = 0 if publisher.flush(timeout=2) and publisher.pending() == 0 else 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        release.set()
        assert publisher.close(timeout=10)
    assert published == [["evt_0"]]


# A flush or a close behind more than a batch, exactly a full batch, a backlog, and a
# burst after a flush: found by an attack on the thread's one wake per message.


def busy_with_evt_0(publisher: Publisher, entered: threading.Event) -> None:
    """Get the thread publishing evt_0 (blocked in publish), the queue empty."""
    publisher.submit("evt_0")
    publisher.flush(timeout=0)  # puts the mark and wakes the thread
    assert entered.wait(10)


@pytest.mark.parametrize("wait", ["flush", "close"])
def test_a_flush_or_close_behind_more_than_a_batch_returns_promptly(wait: str) -> None:
    _, publisher, entered, release = blocking(batch=2)
    try:
        busy_with_evt_0(publisher, entered)
        for number in range(1, 5):  # a backlog of two batches while it publishes
            publisher.submit(f"evt_{number}")
        result: list[bool] = []
        waiting = threading.Thread(
            target=lambda: result.append(getattr(publisher, wait)(timeout=3))
        )
        waiting.start()
        time.sleep(0.1)  # the mark (or the stop) is queued behind evt_4
        started = time.monotonic()
        release.set()
        waiting.join(10)
        assert result == [True]
        assert time.monotonic() - started < 2
        assert publisher.pending() == 0
    finally:
        release.set()
        publisher.close(timeout=1)


def test_exactly_a_batch_goes_without_waiting_out_the_linger() -> None:
    published: list[list[str]] = []
    publisher = Publisher(published.append, linger=60.0, batch=3)
    try:
        publisher.submit("evt_0")
        time.sleep(0.2)  # the thread took evt_0 and lingers
        publisher.submit("evt_1")
        publisher.submit("evt_2")  # three ids waiting: a full batch
        deadline = time.monotonic() + 3
        while not published and time.monotonic() < deadline:
            time.sleep(0.01)
        assert published == [["evt_0", "evt_1", "evt_2"]]
    finally:
        publisher.close(timeout=1)


def test_a_backlog_drains_at_the_brokers_pace_with_the_defaults() -> None:
    """The broker stalls for a moment during a burst: 1000 ids pile up (50 batches)."""
    published: list[list[str]] = []
    entered, release = threading.Event(), threading.Event()

    def publish(ids: Sequence[str]) -> None:
        entered.set()
        release.wait(20)
        published.append(list(ids))

    publisher = Publisher(publish)  # batch 20, linger 50 ms
    try:
        publisher.submit("evt_0")
        assert entered.wait(10)  # (after the linger) the first message is stuck
        for number in range(1, 1001):
            publisher.submit(f"evt_{number}")
        started = time.monotonic()
        release.set()
        while publisher.pending() and time.monotonic() - started < 10:
            time.sleep(0.01)
        took = time.monotonic() - started
        assert sum(map(len, published)) == 1001
        assert took < 1.0
    finally:
        release.set()
        publisher.close(timeout=10)


def test_after_a_flush_the_next_id_still_lingers() -> None:
    """A flush whose mark the thread takes first leaves _hurry set: the next id (a burst's
    first) goes alone at once instead of gathering the burst."""
    published, publisher, entered, release = blocking(batch=100, linger=0.5)
    try:
        publisher.submit("evt_0")
        assert entered.wait(10)  # after the 0.5 s linger
        assert not publisher.flush(timeout=0.05)  # queue empty: the mark goes in alone
        release.set()
        assert publisher.flush(timeout=5)
        publisher.submit("evt_1")
        time.sleep(0.1)  # the rest of the burst, well inside the 0.5 s linger
        for number in range(2, 6):
            publisher.submit(f"evt_{number}")
        deadline = time.monotonic() + 3
        while publisher.pending() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert published[1:] == [[f"evt_{n}" for n in range(1, 6)]]
    finally:
        release.set()
        publisher.close(timeout=1)


def test_an_id_submitted_while_close_drains_is_published_and_close_returns() -> None:
    """It starts no second thread, which could take the stop mark and leave the first one
    running past the close."""
    published, publisher, entered, release = blocking()
    publisher.submit("evt_0")
    assert entered.wait(10)  # the thread is publishing evt_0
    closed: list[bool] = []
    closing = threading.Thread(target=lambda: closed.append(publisher.close(timeout=5)))
    closing.start()
    time.sleep(0.1)  # the stop is queued behind evt_0
    submitting = threading.Thread(target=publisher.submit, args=("evt_1",))
    submitting.start()
    time.sleep(0.05)
    release.set()
    closing.join(10)
    submitting.join(10)
    assert closed == [True]
    assert sorted(published) == [["evt_0"], ["evt_1"]]
    assert publisher.pending() == 0


@pytest.mark.filterwarnings("ignore:This process .* fork:DeprecationWarning")
def test_a_child_forked_while_the_lock_is_held_publishes_its_own_ids() -> None:
    published: list[list[str]] = []
    publisher = Publisher(published.append, linger=0.01)
    # Held as the parent's thread holds it for a moment around each message: the child
    # has a copy of the lock, held by a thread it does not have.
    with publisher._lock:
        pid = os.fork()
        if pid == 0:
            publisher.submit("evt_child")
            os._exit(0 if publisher.flush(timeout=5) and published == [["evt_child"]] else 1)
    deadline = time.monotonic() + 20
    while (ended := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    if ended == (0, 0):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the child's submit waited for a lock nobody would release")
    assert os.waitstatus_to_exitcode(ended[1]) == 0
    assert published == []  # the parent's publisher is untouched
    assert publisher.close(timeout=10)


def test_a_close_racing_the_idle_exit_leaves_no_stop_for_the_next_thread() -> None:
    """close() counts its stop under the lock and queues it after: a thread going idle in
    between must not end, or the stop waits in the queue to end the next thread, whose
    ids are then never published."""
    published: list[list[str]] = []
    publisher = Publisher(published.append, linger=0.0, batch=10, idle=0.1)
    publisher.submit("evt_0")
    assert publisher.flush(timeout=5)
    work = publisher._queue
    put = work.put

    def preempted(item, block=True, timeout=None):  # the closing thread loses the CPU
        if item is not None and not isinstance(item, str):  # the stop mark
            time.sleep(1.0)  # longer than idle: the thread's wait for work times out
        return put(item, block, timeout)

    work.put = preempted  # type: ignore[method-assign]
    assert publisher.close(timeout=5)
    del work.put
    publisher.submit("evt_1")
    assert publisher.flush(timeout=2)
    assert published == [["evt_0"], ["evt_1"]]
    assert publisher.close(timeout=5)


def test_a_close_whose_stop_did_not_fit_can_be_retried() -> None:
    """The queue was full, so the first close() queued no stop: a later one must, not
    wait for the thread to go idle (30 s)."""
    published, publisher, entered, release = blocking(linger=0.0, size=1, idle=30)
    publisher.submit("evt_0")
    assert entered.wait(5)
    publisher.submit("evt_1")  # the queue (one id) is full
    assert not publisher.close(timeout=0.2)
    release.set()
    assert publisher.flush(timeout=5)
    started = time.monotonic()
    assert publisher.close(timeout=5)
    assert time.monotonic() - started < 2
    assert published == [["evt_0"], ["evt_1"]]


def test_a_publish_that_raises_any_exception_leaves_the_thread_publishing() -> None:
    """Not only an Exception: a BaseException from the broker's client (SystemExit, a
    gevent Timeout) ended the thread while the publisher still counted on it, and every
    later id waited in its queue for nobody."""
    published: list[list[str]] = []

    def publish(ids: Sequence[str]) -> None:
        if ids == ["evt_0"]:
            raise KeyboardInterrupt
        published.append(list(ids))

    publisher = Publisher(publish, linger=0.0, batch=10, idle=30)
    publisher.submit("evt_0")
    assert wait_for(lambda: publisher.pending() == 0)
    publisher.submit("evt_1")
    assert publisher.flush(timeout=5)
    assert published == [["evt_1"]]
    assert publisher.close(timeout=5)


def test_a_thread_that_could_not_start_leaves_the_publisher_working(monkeypatch) -> None:
    """Starting a thread can fail (the process is out of threads): the id is published
    by the caller, as when the queue is full, and the next submit starts one."""
    published: list[list[str]] = []
    publisher = Publisher(published.append, linger=0.0, batch=10, idle=30)
    start, refused = threading.Thread.start, []

    def start_once_refused(thread: threading.Thread) -> None:
        if thread.name == "partnerstack-publisher" and not refused:
            refused.append(thread)
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_once_refused)
    publisher.submit("evt_0")
    assert published == [["evt_0"]]
    publisher.submit("evt_1")
    assert publisher.flush(timeout=5)
    assert published == [["evt_0"], ["evt_1"]]
    assert publisher.close(timeout=5)
