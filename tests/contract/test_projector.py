"""The projector on the embedded log: bounded batches (by count and by wait), ClickHouse written
before offsets are committed, and a crash between the two changes no total after the restart."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from eventlog import Outgoing, topics
from eventlog.embedded import EmbeddedLog
from eventlog.settings import Settings
from ledger.pricing import default_price_book, price_micros
from projections.role import ProjectorRole, usage_row
from projections.usage import PostingRow, UsageRow, UsageStore, create_database, drop_database
from schemas.codec import encode
from schemas.events import HoldCaptured, HoldReleased
from schemas.units import Units
from tollgate.wiring import projector_group

pytestmark = pytest.mark.heavy  # waits on batch flushes and a crash's redelivery

month = datetime(2026, 11, 1, tzinfo=UTC)


def captured(i: int, org: str = "org_p", at: datetime | None = None) -> HoldCaptured:
    units = Units(input_tokens=100 + i, output_tokens=10 + i % 7)
    amount = price_micros(default_price_book().models["sim-chat-large"], units)
    return HoldCaptured(
        event_id=f"evt_{org}_{i}",
        occurred_at=at or month + timedelta(minutes=i),
        org_id=org,
        hold_id=f"req_{i}",
        request_id=f"req_{i}",
        job_id=f"job_{i}",
        token_id="tok_1",
        model="sim-chat-large",
        endpoint="/v1/chat/completions",
        amount_micros=amount,
        released_micros=1000,
        priced_micros=amount,
        price_version="2026-11-01",
        units=units,
        latency_ms=12,
    )


class RecordingStore:
    """The real store, recording each flush; optionally failing once right after a write (a crash
    between the ClickHouse write and the offset commit)."""

    def __init__(self, store: UsageStore, fail_after_write: int | None = None) -> None:
        self.store = store
        self.batches: list[int] = []
        self.written: list[int] = []
        self.flushed_at: list[float] = []  # monotonic
        self.fail_after_write = fail_after_write

    def insert(self, usage: Sequence[UsageRow], ledger: Sequence[PostingRow]) -> int:
        written = self.store.insert(usage, ledger)
        self.batches.append(len(usage))
        self.written.append(written)
        self.flushed_at.append(time.monotonic())
        if self.fail_after_write is not None and len(self.batches) == self.fail_after_write:
            raise RuntimeError("crash after the ClickHouse write, before the commit")
        return written


def publish(log: EmbeddedLog, events: list[HoldCaptured]) -> None:
    producer = log.producer("test")
    producer.send([Outgoing(topics.LEDGER, e.org_id, encode(e)) for e in events])
    producer.flush(5)


def run_until(projector: ProjectorRole, done: Callable[[], bool], timeout_s: float = 20) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            projector.run(stop)
        except BaseException as error:  # the simulated crash ends the role, as it would the process
            errors.append(error)

    thread = threading.Thread(target=target)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while thread.is_alive() and not done() and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    thread.join(30)


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[EmbeddedLog, UsageStore]]:
    log = EmbeddedLog(tmp_path / "log.sqlite3", partitions=topics.partitions_per_topic)
    store = UsageStore(path=tmp_path / "clickhouse")
    yield log, store
    store.close()
    log.close()


def test_batches_are_bounded_by_count_and_flushed_by_wait(parts: tuple[EmbeddedLog, UsageStore]) -> None:
    log, store = parts
    publish(log, [captured(i) for i in range(230)])
    settings = replace(Settings(), sink_batch_rows_max=50, batch_records_max=20, sink_flush_wait_ms_max=5000)
    recording = RecordingStore(store)
    projector = ProjectorRole(log, settings, recording, group="g1")  # type: ignore[arg-type]
    run_until(projector, lambda: sum(recording.batches) >= 230)
    assert sum(recording.batches) == 230
    assert max(recording.batches) <= 50, recording.batches
    # A lone event after the backlog is flushed within the wait, not held for a full batch.
    settings = replace(settings, sink_flush_wait_ms_max=100)
    recording = RecordingStore(store)
    projector = ProjectorRole(log, settings, recording, group="g1")  # type: ignore[arg-type]
    started = time.monotonic()
    publish(log, [captured(999, at=month + timedelta(days=3))])
    run_until(projector, lambda: sum(recording.batches) >= 1)
    assert recording.batches == [1] and time.monotonic() - started < 5
    assert store.raw_totals_by_org()["org_p"][0] == 231


def test_under_a_steady_trickle_it_flushes_about_once_an_interval(parts: tuple[EmbeddedLog, UsageStore]) -> None:
    """Each flush makes a part in every ClickHouse table and view; a row every 50 ms flushed as it
    came (the projector is caught up after each) made twenty parts a second to merge."""
    log, store = parts
    settings = replace(Settings(), sink_flush_wait_ms_max=20, sink_flush_interval_ms_min=500)
    recording = RecordingStore(store)
    projector = ProjectorRole(log, settings, recording, group="g")  # type: ignore[arg-type]
    stop = threading.Event()
    thread = threading.Thread(target=projector.run, args=(stop,))
    thread.start()
    try:
        started = time.monotonic()
        publish(log, [captured(0)])
        while not recording.batches and time.monotonic() - started < 10:
            time.sleep(0.005)
        assert recording.batches == [1]
        assert recording.flushed_at[0] - started < 0.4  # a quiet projector's first row: at once
        trickle_started = time.monotonic()
        for i in range(1, 31):  # 1.5 s of a row every 50 ms
            publish(log, [captured(i)])
            time.sleep(0.05)
        deadline = time.monotonic() + 10
        while sum(recording.batches) < 31 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(30)
    assert sum(recording.batches) == 31
    gaps = [b - a for a, b in zip(recording.flushed_at, recording.flushed_at[1:], strict=False)]
    assert all(gap >= 0.45 for gap in gaps), gaps
    trickle_s = recording.flushed_at[-1] - trickle_started
    assert len(recording.batches) - 1 <= trickle_s / 0.5 + 1, (recording.batches, trickle_s)
    assert store.raw_totals_by_org()["org_p"][0] == 31


def test_a_crash_between_write_and_commit_changes_no_total(parts: tuple[EmbeddedLog, UsageStore]) -> None:
    log, store = parts
    events = [captured(i) for i in range(120)] + [captured(i, org="org_q") for i in range(40)]
    late = captured(500, at=month - timedelta(days=2, minutes=3))  # an event from an earlier day, arriving last
    publish(log, events)
    settings = replace(Settings(), sink_batch_rows_max=40, batch_records_max=40, sink_flush_wait_ms_max=50)
    crashing = RecordingStore(store, fail_after_write=2)
    run_until(ProjectorRole(log, settings, crashing, group="g"), lambda: False, timeout_s=5)  # type: ignore[arg-type]
    assert len(crashing.batches) == 2  # it died after writing its second batch, before committing it
    publish(log, [late])
    recording = RecordingStore(store)
    restarted = ProjectorRole(log, settings, recording, group="g")  # type: ignore[arg-type]
    run_until(restarted, lambda: store.raw_totals_by_org().get("org_q", (0, 0))[0] == 40 and late_in(store))
    # The uncommitted second batch came again first, and wrote nothing new.
    assert (recording.batches[0], recording.written[0]) == (40, 0)
    assert restarted.rows_written == 161 - 40 - 40
    for org in ("org_p", "org_q"):
        expected = [e.amount_micros for e in [*events, late] if e.org_id == org]
        raw = store.raw_totals_by_org()[org]
        assert raw == (len(expected), sum(expected))
        assert store.rollup_totals_by_org("usage_hourly")[org] == store.rollup_totals_by_org("usage_daily")[org] == raw
        assert store.totals_by_org()[org] == (sum(expected), sum(expected))
    day = store.rollup("org_p", "day", "none", None, month - timedelta(days=1), 10)
    assert [(row.period_start, row.requests, row.cost_micros) for row in day] == [
        (datetime(2026, 10, 29), 1, late.amount_micros)
    ]


def late_in(store: UsageStore) -> bool:
    return store.raw_totals_by_org().get("org_p", (0, 0))[0] == 121


@pytest.mark.parametrize(
    ("reason", "status_code"),
    [("job_failed:invalid_audio", 502), ("dead_letter:gpu_oom", 502), ("dead_letter", 502), ("hold_expired", 504)],
)
def test_a_failed_request_is_an_error_row_charged_nothing(reason: str, status_code: int) -> None:
    row = usage_row(released(reason))
    assert row is not None
    assert (row.status, row.status_code, row.error, row.cost_micros) == ("error", status_code, reason, 0)


def test_a_cancelled_request_is_no_error() -> None:
    assert usage_row(released("cancelled")) is None


def released(reason: str) -> HoldReleased:
    return HoldReleased(
        event_id=f"rel-{reason}",
        occurred_at=datetime(2026, 11, 3, tzinfo=UTC),
        org_id="org_a",
        hold_id="h1",
        request_id="req_1",
        token_id="tok_1",
        model="sim-chat-small",
        endpoint="/v1/chat/completions",
        amount_micros=500,
        reason=reason,
    )


def test_it_reads_the_ledger_with_the_background_fill_wait(parts: tuple[EmbeddedLog, UsageStore]) -> None:
    """No request waits on the projector (it inserts about once a second): on Kafka the broker may hold
    its fetches back to fill them (eventlog/kafka.py), instead of waking it for every record."""
    log, store = parts
    asked: list[dict[str, Any]] = []
    consumer = log.consumer

    def recording(topic_names: Sequence[str], **options: Any) -> Any:
        asked.append({"topics": list(topic_names), **options})
        return consumer(topic_names, **options)

    log.consumer = recording  # type: ignore[method-assign,assignment]
    settings = replace(Settings(), projector_fill_wait_ms=432, sink_flush_wait_ms_max=20)
    projector = ProjectorRole(log, settings, store, group="g")
    publish(log, [captured(0)])
    run_until(projector, lambda: bool(store.raw_totals_by_org()))
    ledger_readers = [options for options in asked if topics.LEDGER in options["topics"]]
    assert [options.get("fill_wait_ms") for options in ledger_readers] == [432]


def test_a_second_database_on_the_same_log_is_written_from_the_log_beginning(
    tmp_path: Path, clickhouse_url: str
) -> None:
    """Projectors writing one database share a group, the one made with the database (migration 9).
    With one group name for every server database, a second database on the same log (or one dropped
    and migrated again) took over the positions the first had reached and never got the rows before
    them (seen as tests/kafka/test_faults.py's replay disagreeing after another module's stack)."""
    log = EmbeddedLog(tmp_path / "log.sqlite3", partitions=topics.partitions_per_topic)
    urls = [f"{clickhouse_url}/tollgate_groups_{name}_{uuid.uuid4().hex[:8]}" for name in ("first", "second")]
    stores: list[UsageStore] = []
    try:
        for url in urls:
            create_database(url)
            stores.append(UsageStore(url=url))  # migrated, as `tollgate migrate` does
        first, second = stores
        settings = [replace(Settings(), sink_flush_wait_ms_max=20, clickhouse_url=url) for url in urls]
        groups = [projector_group(s, store) for s, store in zip(settings, stores, strict=True)]
        assert groups[0] != groups[1]

        def rows(store: UsageStore) -> int:
            return store.raw_totals_by_org().get("org_p", (0, 0))[0]

        publish(log, [captured(i) for i in range(5)])
        run_until(ProjectorRole(log, settings[0], first, groups[0]), lambda: rows(first) == 5)
        publish(log, [captured(i) for i in range(5, 8)])
        run_until(ProjectorRole(log, settings[1], second, groups[1]), lambda: rows(second) == 8)
        assert (rows(first), rows(second)) == (5, 8)
        reopened = UsageStore(url=urls[0], migrate=False)  # another projector of the first database
        try:
            assert projector_group(settings[0], reopened) == groups[0]
        finally:
            reopened.close()
    finally:
        for store in stores:
            store.close()
        for url in urls:
            drop_database(url)
        log.close()
