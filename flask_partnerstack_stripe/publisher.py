"""Publishing queued events to the broker off the webhook's path (``celery`` processing).

The webhook commits the event as ``received``, hands its id to the app's
:class:`Publisher` and answers: a background thread publishes the Celery message. The
row is the record, not the message: an id whose publish fails, or that a dying process
never published, stays ``received``, and ``partnerstack.sweep`` enqueues it again after
``SWEEP_AFTER``. So nothing here has to be durable; it only has to stay off the request.

No Flask and no Celery here: the publisher gets the function that publishes ids (one
message for one id, one for several: see ``tasks.Tasks.enqueue``).
"""

from __future__ import annotations

import atexit

# Imported now, not by the first publish: kombu's Redis transport imports it when it
# first connects, and the import registers a hook with threading, which Python refuses
# once it is shutting down. A process whose first publish is the drain at its exit
# (a script, send-test-event) could then not publish at all.
import concurrent.futures.thread  # noqa: F401
import contextlib
import functools
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Sequence

log = logging.getLogger("flask_partnerstack_stripe")


class _Stop:
    """close()'s mark: ends the thread it names; to a later thread, it is a flush mark."""

    __slots__ = ("thread",)

    def __init__(self, thread: threading.Thread) -> None:
        self.thread = thread


#: Put in the queue by :meth:`Publisher.flush`: publish what was gathered now, without
#: waiting out the linger.
_NOW = object()


class Publisher:
    """One app's background publisher: a bounded queue of event ids and a thread.

    The thread publishes an id once ``linger`` seconds have passed or ``batch`` ids are
    waiting, whichever comes first, as one message: one id while webhooks trickle in,
    up to ``batch`` during a burst. A Celery publish costs about a millisecond of CPU
    whatever it carries, in the web process, under its GIL: fewer messages is what
    leaves the CPU to the requests. For the same reason the thread wakes once per
    message, not once per id: it sleeps out the linger and then takes what came, and
    only a full batch, a flush or a close wakes it early.

    The thread starts with the first id a process submits, so a server that forks its
    workers after loading the app (gunicorn) gets one per worker; it ends after
    ``idle`` seconds without work and starts again with the next id. When the queue
    is full (the broker is slower than the webhooks), the id is published in the
    caller's thread instead, as before there was a publisher: the requests slow down
    to the broker's pace and nothing is dropped; so is an id submitted while
    :meth:`close` drains the queue. At interpreter exit the queue is drained for up to
    ``drain_timeout`` seconds.

    A forked child starts with a publisher of its own (an empty queue, no thread, a new
    lock: another thread of the parent may have held the old one when it forked).
    """

    def __init__(
        self,
        publish: Callable[[Sequence[str]], None],
        *,
        size: int = 10_000,
        batch: int = 20,
        linger: float = 0.05,
        idle: float = 30.0,
        drain_timeout: float = 5.0,
    ) -> None:
        self.publish = publish
        self.size = size
        self.batch = batch
        self.linger = linger
        self.idle = idle
        self.drain_timeout = drain_timeout
        self._lock = threading.Lock()
        self._queue: queue.Queue[object] = queue.Queue(size)
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._ids = 0  # queued or being published: the queue also holds the marks
        #: Set to end the linger early: a full batch is waiting, a flush or a close came.
        self._hurry = threading.Event()
        self._marks = 0  # flush/stop marks in the queue: the thread must not linger
        self._holding = 0  # 1 while the thread lingers with a batch's first id in hand
        #: From close() until its thread ends: the queue ends with its stop mark, and
        #: what is submitted meanwhile is published by the caller, never queued behind it.
        self._closing = False
        self._exit_hook = False
        if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
            os.register_at_fork(after_in_child=functools.partial(_forked, weakref.ref(self)))

    def submit(self, event_id: str) -> None:
        """Publish ``event_id`` soon, from the background thread; now, in this thread, when
        the queue is full, :meth:`close` is draining it, or no thread could start.

        Raises only what publishing in this thread raised.
        """
        with self._lock:
            self._adopt_process()
            if not self._closing:
                try:
                    if self._thread is None:
                        self._start()
                    self._queue.put_nowait(event_id)
                    self._ids += 1
                    if self._queue.qsize() + self._holding >= self.batch:
                        self._hurry.set()
                    return
                except (queue.Full, RuntimeError):  # full, or "can't start new thread"
                    pass
        self.publish([event_id])

    def flush(self, timeout: float | None = None) -> bool:
        """Publish every id submitted so far now, and wait until it was published (or
        failed); False on timeout.

        The batch being gathered goes at once: the linger is there to gather a burst's
        ids while they come in, not to keep one that a caller waits for.
        """
        with self._lock:
            self._adopt_process()  # a forked child waits for its own ids, not the parent's
            work = self._queue
            # Only for a running thread: behind the stop of a close(), or with no thread,
            # nobody would take the mark and the wait would never end.
            if self._thread is not None and not self._closing and work.unfinished_tasks:
                with contextlib.suppress(queue.Full):  # full: the thread gets batches at once
                    work.put_nowait(_NOW)
                    self._marks += 1
                self._hurry.set()
        waiter = work.all_tasks_done
        with waiter:
            return waiter.wait_for(lambda: not work.unfinished_tasks, timeout)

    def pending(self) -> int:
        """How many submitted ids are not published yet (queued or being published)."""
        with self._lock:
            return self._ids if self._pid == os.getpid() else 0

    def close(self, timeout: float | None = None) -> bool:
        """Publish what is queued, then stop the thread; False when it was not done in time.

        Ids left unpublished stay ``received`` in the database, for the sweep.
        """
        with self._lock:
            thread = self._thread if self._pid == os.getpid() else None
            if thread is None:
                return True
            # The thread clears both once it ends; a second close() waits for the same.
            stopping, self._closing = not self._closing, True
            if stopping:
                self._marks += 1
        timeout = self.drain_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if stopping:
            try:
                self._queue.put(_Stop(thread), timeout=timeout)
            except BaseException as error:  # full (still publishing), or interrupted
                with self._lock:
                    # No stop is on its way: the thread may end once idle, and a later
                    # close() queues one again.
                    self._marks -= 1
                    if self._thread is thread:
                        self._closing = False
                if not isinstance(error, queue.Full):
                    raise
            self._hurry.set()
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            log.warning(
                "%d Stripe events were not published before the process exited; they are "
                "stored as received and the sweep will enqueue them.", self.pending()
            )  # fmt: skip
            return False
        return True

    def _adopt_process(self) -> None:
        """In a process forked from the one that started the thread, start afresh.

        The child has a copy of the queue but not the thread; the parent publishes its
        own ids (and an id the child inherited still waits in the parent, or in the
        database for the sweep). ``os.fork`` has done this already, through the at-fork
        hook (:meth:`_forget_the_parent`); this is for a fork that skipped Python's hooks.
        """
        if os.getpid() != self._pid:
            self._start_afresh()

    def _forget_the_parent(self) -> None:
        """Right after a fork, in the child: a new lock too (the parent's may be held)."""
        self._lock = threading.Lock()
        self._start_afresh()

    def _start_afresh(self) -> None:
        self._pid = os.getpid()
        self._queue = queue.Queue(self.size)
        self._hurry = threading.Event()
        self._marks = self._holding = 0
        self._thread = None
        self._closing = False
        self._ids = 0

    def _start(self) -> None:
        thread = threading.Thread(target=self._run, name="partnerstack-publisher", daemon=True)
        self._thread = thread
        if not self._exit_hook:
            # A weak reference: an app dropped by its owner (tests make many) takes its
            # publisher with it; the hook then does nothing.
            atexit.register(_close_at_exit, weakref.ref(self))
            self._exit_hook = True
        try:
            thread.start()
        except BaseException:
            self._thread = None  # else ids would be queued for a thread that never ran
            raise

    def _run(self) -> None:
        work, me = self._queue, threading.current_thread()
        while True:
            try:
                first = work.get(timeout=self.idle)
            except queue.Empty:
                with self._lock:
                    # Under the lock, so an id submitted now either is seen here or
                    # starts a new thread. Even with a close() whose stop is on its way:
                    # the stop names this thread, and the next one takes it as a mark
                    # (no count has to be exact for this thread to end).
                    if work.empty() and self._thread is me:
                        self._thread, self._closing = None, False
                        return
                continue
            taken, stop = [first], isinstance(first, _Stop) and first.thread is me
            if not stop:
                if isinstance(first, str):  # an id, not a flush or stop mark
                    # Sleep out the linger, unwoken by the ids that come meanwhile (each
                    # would cost the requests a switch of the GIL), unless a full batch or
                    # a mark is queued already. _holding is set before the look at the
                    # queue: a submit after it counts the id in hand.
                    self._holding = 1
                    if not self._marks and work.qsize() + 1 < self.batch:
                        self._hurry.wait(self.linger)
                    self._holding = 0
                # Cleared before the queue is read: a set() for a mark it does not reach
                # (behind a full batch) is not needed, _marks keeps the next from waiting.
                self._hurry.clear()
            while not stop and len(taken) < self.batch:
                try:
                    item = work.get_nowait()
                except queue.Empty:
                    break
                taken.append(item)
                stop = isinstance(item, _Stop) and item.thread is me
            ids = [item for item in taken if isinstance(item, str)]
            try:
                if ids:
                    self._publish(ids)
            finally:
                with self._lock:
                    self._ids -= len(ids)
                    self._marks -= len(taken) - len(ids)
                for _ in taken:
                    work.task_done()
            if stop:
                with self._lock:
                    if self._thread is me:
                        self._thread, self._closing = None, False
                return

    def _publish(self, event_ids: list[str]) -> None:
        try:
            self.publish(event_ids)
        except BaseException as error:  # not even KeyboardInterrupt may end the thread
            # Committed as received: the sweep enqueues them once the broker is back.
            log.warning(
                "Could not enqueue Stripe events %s (%s: %s); they are stored as received "
                "and the sweep will enqueue them.",
                ", ".join(event_ids), type(error).__name__, error,
            )  # fmt: skip


def _forked(reference: weakref.ref[Publisher]) -> None:
    """In a forked child (``os.register_at_fork``), before any of its code runs."""
    publisher = reference()
    if publisher is not None:
        publisher._forget_the_parent()


def _close_at_exit(reference: weakref.ref[Publisher]) -> None:
    publisher = reference()
    if publisher is not None:
        publisher.close()
