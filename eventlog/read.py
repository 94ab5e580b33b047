"""Reading the log: a follower thread that folds events as they come, and a bounded read of a topic
from its beginning (or a moment) to its current end, for audits, replays and rebuilds."""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TextIO

import msgspec

from eventlog import Consumer, EventLog, Record
from eventlog.metrics import LagReporter
from schemas.codec import decode_event
from schemas.events import Event

logger = logging.getLogger(__name__)

read_batch_records_max = 5000
catch_up_poll_ms = 20
progress_interval_s = 1.0


class Follower:
    """Reads a consumer in a thread of its own and hands every decoded event to ``apply``, in order,
    until stopped. ``caught_up`` is set the first time the consumer has read to the end of the log,
    so a role can wait until it knows the past before it serves. A record that does not decode is
    logged and skipped: one bad record must not stop every read model behind it."""

    def __init__(
        self,
        consumer: Consumer,
        apply: Callable[[Event], None],
        name: str,
        batch_records_max: int,
        poll_wait_ms: int,
        lag: LagReporter | None = None,
        observe: Callable[[Record, Event], None] | None = None,
    ) -> None:
        """``lag`` reports the consumer's lag and the follower's heartbeat (eventlog/metrics.py);
        ``observe`` sees each record with its event before ``apply`` (the gateway's chain watch)."""
        self._consumer = consumer
        self._apply = apply
        self._batch_records_max = batch_records_max
        self._poll_wait_ms = poll_wait_ms
        self._lag = lag
        self._observe = observe
        self._stop = threading.Event()
        self.caught_up = threading.Event()
        # The thread runs in a copy of its creator's context: its log lines name the creator's role.
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=lambda: context.run(self._run), name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_caught_up(self, timeout_s: float) -> bool:
        return self.caught_up.wait(timeout_s)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                # Until caught up, short polls: a role waits for this before it serves, and only an
                # empty poll tells the end was reached (a restarted gateway serves sooner).
                wait_ms = self._poll_wait_ms if self.caught_up.is_set() else min(self._poll_wait_ms, catch_up_poll_ms)
                records = self._consumer.poll(self._batch_records_max, wait_ms)
                for record in records:
                    try:
                        event = decode_event(record.value)
                    except msgspec.DecodeError:
                        logger.error(
                            "skipping an undecodable record at %s/%d@%d", record.topic, record.partition, record.offset
                        )
                        continue
                    if self._observe is not None:
                        self._observe(record, event)
                    self._apply(event)
                if not records and not self.caught_up.is_set() and self._consumer.caught_up():
                    self.caught_up.set()
                if self._lag is not None:
                    self._lag.tick(self._consumer.lags)
        except Exception:
            logger.exception("log follower %s stopped", self._thread.name)
            raise
        finally:
            self._consumer.close()

    def stop(self, timeout_s: float = 5) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)


class Progress:
    """A one-line progress report on a terminal (or every interval in a log): records, rate, time left."""

    def __init__(self, label: str, total: int, out: TextIO = sys.stderr) -> None:
        self.label, self.total, self.out = label, total, out
        self.done = 0
        self.started = self._shown = time.monotonic()

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self._shown >= progress_interval_s:
            self._shown = now
            self.show(final=False)

    def show(self, final: bool = True) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        left = max(self.total - self.done, 0)
        eta = f"{left / rate:.0f}s left" if rate > 0 and not final else f"{elapsed:.1f}s"
        share = min(self.done / self.total, 1.0) if self.total else 1.0
        bar = "#" * int(share * 30)
        end = "\n" if final else "\r"
        self.out.write(f"{self.label} [{bar:<30}] {self.done:,}/{self.total:,} {rate:,.0f}/s {eta}{end}")
        self.out.flush()


def read_topic(
    log: EventLog,
    topic: str,
    partitions: Sequence[int] | None = None,
    label: str = "",
    quiet: bool = False,
    start_ms: int | None = None,
) -> Iterator[list[Record]]:
    """Every committed record of ``topic`` from the beginning (or from the first one stamped at or
    after ``start_ms``) to the end the log had when the read began, in batches of at most
    ``read_batch_records_max``, each partition in order. Progress goes to stderr unless ``quiet``."""
    consumer = log.consumer(
        [topic], client_id=f"tollgate-read-{time.monotonic_ns()}", partitions=partitions, start_ms=start_ms
    )
    progress = Progress(label or topic, consumer.lag(), sys.stderr)
    try:
        while not consumer.caught_up():
            batch = consumer.poll(read_batch_records_max, 200)
            if batch:
                if not quiet:
                    progress.advance(len(batch))
                yield batch
        if not quiet:
            progress.show()
    finally:
        consumer.close()


def topic_length(log: EventLog, topic: str) -> int:
    """Offsets in ``topic`` (an upper bound on its records), for progress and sizing decisions."""
    probe = log.consumer([topic], client_id=f"tollgate-probe-{time.monotonic_ns()}")
    try:
        return probe.lag()
    finally:
        probe.close()
