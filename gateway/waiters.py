"""Waiters: how events folded by the log followers (threads) become HTTP answers (the event loop).

A request waits on a key (its request id, a command id or an event id) until a predicate over the
events seen for that key says it is done; a streamed request also gets every event in order. The
follower thread hands an event and, when it completes the wait, the end of the stream to the event
loop in one callback, so a stream never finds its last event delivered but its end not yet known
(that gap used to cost a stream a whole poll timeout, about 1 s, once in ten).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from schemas.events import (
    CommandRejected,
    Event,
    HoldCaptured,
    HoldPlaced,
    HoldRejected,
    HoldReleased,
    JobCancelled,
    JobCompleted,
    JobDeadLettered,
    JobFailed,
)

logger = logging.getLogger(__name__)

stream_events_max = 4096  # events a streamed request may have waiting for its client

Seen = dict[type, Event]
Done = Callable[[Seen], bool]


class _End:
    """Put after a stream's last event."""


_end = _End()


@dataclass(slots=True)
class _Waiter:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Seen]
    is_done: Done
    seen: Seen = field(default_factory=dict)
    stream: asyncio.Queue[Event | _End] | None = None


class Subscription:
    """A streamed request's events, in order, ending with the one that completed it."""

    def __init__(self, future: asyncio.Future[Seen], queue: asyncio.Queue[Event | _End]) -> None:
        self.future = future
        self._queue = queue

    async def events(self, deadline: float) -> AsyncIterator[Event]:
        """Every event until the end; TimeoutError once the loop's clock passes ``deadline``."""
        loop = asyncio.get_running_loop()
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            item = await asyncio.wait_for(self._queue.get(), remaining)
            if isinstance(item, _End):
                return
            yield item


class Waiters:
    """Futures keyed by request id (or command or event id), resolved by the follower threads. A key
    may have several waiters: a retry of a request (its Idempotency-Key) waits for the same events as
    the attempt still running."""

    def __init__(self) -> None:
        self._waiting: dict[str, list[_Waiter]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sum(len(waiters) for waiters in self._waiting.values())

    def _add(self, key: str, waiter: _Waiter) -> None:
        with self._lock:
            self._waiting.setdefault(key, []).append(waiter)

    def expect(self, key: str, is_done: Done) -> asyncio.Future[Seen]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Seen] = loop.create_future()
        self._add(key, _Waiter(loop, future, is_done))
        return future

    def subscribe(self, key: str, is_done: Done) -> Subscription:
        """Like ``expect``, and every event for ``key`` also goes to the subscription, in order."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Seen] = loop.create_future()
        queue: asyncio.Queue[Event | _End] = asyncio.Queue(stream_events_max)
        self._add(key, _Waiter(loop, future, is_done, stream=queue))
        return Subscription(future, queue)

    def forget(self, key: str, future: asyncio.Future[Seen]) -> None:
        with self._lock:
            waiters = self._waiting.get(key)
            if waiters is None:
                return
            waiters[:] = [waiter for waiter in waiters if waiter.future is not future]
            if not waiters:
                del self._waiting[key]

    def seed(self, key: str, future: asyncio.Future[Seen], earlier: Seen, is_done: Done | None = None) -> None:
        """Give a waiter the events its key saw before it waited (a retry learning what the first
        attempt's events were): what it has seen since stays; ``is_done`` replaces its end. On the
        waiter's event loop."""
        with self._lock:
            waiters = self._waiting.get(key, [])
            waiter = next((w for w in waiters if w.future is future), None)
            if waiter is None:
                return
            waiter.seen = {**earlier, **waiter.seen}
            if is_done is not None:
                waiter.is_done = is_done
            done = waiter.is_done(waiter.seen)
            if done:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiting[key]
        if done and not future.done():
            future.set_result(waiter.seen)

    def offer(self, key: str, event: Event) -> None:
        if key not in self._waiting:  # the common case, checked without the lock
            return
        delivered: list[tuple[_Waiter, bool]] = []
        with self._lock:
            waiters = self._waiting.get(key)
            if waiters is None:
                return
            for waiter in list(waiters):
                waiter.seen[type(event)] = event
                done = waiter.is_done(waiter.seen)
                if done:
                    waiters.remove(waiter)
                # A plain waiter only needs its loop once its wait is done: every earlier event of its
                # request (the hold placed, the lease) would wake the loop for nothing, and each
                # wake-up is a self-pipe write and a GIL hand-over on the hot path.
                if done or waiter.stream is not None:
                    delivered.append((waiter, done))
            if not waiters:
                del self._waiting[key]
        for waiter, done in delivered:
            waiter.loop.call_soon_threadsafe(_deliver, waiter, event, done)


def _deliver(waiter: _Waiter, event: Event, done: bool) -> None:
    """On the event loop: the event to the stream, and when it completed the wait, the end too."""
    if waiter.stream is not None:
        try:
            waiter.stream.put_nowait(event)
        except asyncio.QueueFull:
            logger.warning("a stream's client reads too slowly; dropping %s", type(event).__name__)
        if done:
            while True:  # the end must arrive: make room for it if the client fell that far behind
                try:
                    waiter.stream.put_nowait(_end)
                    break
                except asyncio.QueueFull:
                    waiter.stream.get_nowait()
    if done and not waiter.future.done():
        waiter.future.set_result(waiter.seen)


def keys_of(event: Event) -> set[str]:
    """Who may wait for this event: its request, the command that caused it, or the event itself."""
    keys = {event.event_id}
    if event.causation_id:
        keys.add(event.causation_id)
    request_id = getattr(event, "request_id", None)
    if request_id:
        keys.add(request_id)
    return keys


# Releases the ledger decides itself: no worker outcome follows them (a job cancelled before any run
# took it, a hold that expired unfinished, a job past its attempts).
ledger_release_reasons = frozenset({"cancelled", "hold_expired", "dead_letter"})


def earlier_attempt_settled(seen: Seen) -> bool:
    """An earlier attempt's outcome, as a retry answers it: finished, and a completion also charged by
    the ledger, so that the retry states the charge the ledger took (under the price book of the first
    attempt's hold), not one priced again now."""
    if not request_finished(seen):
        return False
    return JobCompleted not in seen or HoldCaptured in seen or HoldReleased in seen


def request_finished(seen: Seen) -> bool:
    """A metered request is answered once its worker's completion is on the log (the charge is
    determined by then, and the ledger records it off the request's path), or once the ledger has
    settled a request that did not complete (a refusal, a release after a failure, a cancellation),
    so that "nothing was charged" is the ledger's word."""
    released = seen.get(HoldReleased)
    return (
        HoldRejected in seen
        or CommandRejected in seen
        or JobCompleted in seen
        or (JobCancelled in seen and (HoldCaptured in seen or HoldReleased in seen))
        or (JobFailed in seen and HoldReleased in seen)
        or (JobDeadLettered in seen and HoldReleased in seen)
        or (isinstance(released, HoldReleased) and released.reason in ledger_release_reasons)
    )


def request_admitted(seen: Seen) -> bool:
    """An async request is answered once its hold (with its queued job) or its refusal is on the ledger."""
    return HoldPlaced in seen or HoldRejected in seen or CommandRejected in seen
