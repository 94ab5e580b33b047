"""Stored files and their storage charges (ledger/storage.py), alone and in the ledger role: the
limit, byte-days per UTC day, one charge per day, never past what the wallet can spend, and the same
decisions after a rebuild from the log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from eventlog import Outgoing, topics
from eventlog.embedded import EmbeddedLog
from eventlog.settings import Settings
from ledger.pricing import default_price_book, price_micros
from ledger.role import LedgerRole
from ledger.storage import Storage, decide_file, next_storage_charge, storage_model
from projections.jobs import JobsView
from projections.role import usage_row
from projections.statements import load_statement
from projections.usage import UsageStore
from schemas.codec import decode_event, encode
from schemas.commands import DeleteFile, GrantCredits, StoreFile
from schemas.events import CommandRejected, Event, FileDeleted, FileStored, HoldCaptured, HoldRejected
from schemas.units import Units
from tests.support import capture_posting

start = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)  # noon: half of the first day is stored
book = default_price_book()
rate = book.models[storage_model]
GB = 1_000_000_000


def store(file_id: str, size: int, limit: int = 10 * GB, org: str = "org") -> StoreFile:
    return StoreFile(
        command_id=f"store:{file_id}",
        org_id=org,
        issued_at=start,
        file_id=file_id,
        filename="f",
        purpose="user_data",
        bytes=size,
        sha256="",
        blob_key=f"{org}/{file_id}",
        limit_bytes=limit,
    )


def delete(file_id: str) -> DeleteFile:
    return DeleteFile(command_id=f"delete:{file_id}", org_id="org", issued_at=start, file_id=file_id)


def applied(storage: Storage, events: list[Event]) -> list[Event]:
    for event in events:
        storage.apply(event)
    return events


def test_the_limit_counts_stored_bytes_and_deletions_free_them() -> None:
    storage = Storage()
    assert isinstance(applied(storage, decide_file(storage, store("a", 600, limit=1000), start))[0], FileStored)
    refused = decide_file(storage, store("b", 500, limit=1000), start)
    assert isinstance(refused[0], CommandRejected) and refused[0].code == "storage_limit_exceeded"
    assert decide_file(storage, store("a", 600, limit=1000), start) == []  # an exact duplicate
    assert isinstance(applied(storage, decide_file(storage, delete("a"), start))[0], FileDeleted)
    assert isinstance(decide_file(storage, delete("a"), start)[0], CommandRejected)  # gone
    assert isinstance(decide_file(storage, store("b", 500, limit=1000), start)[0], FileStored)


def test_a_day_is_charged_for_the_byte_seconds_stored_in_it() -> None:
    storage = Storage()
    applied(storage, decide_file(storage, store("a", GB), start))
    state = storage.of("org")
    assert next_storage_charge(state, "org", start + timedelta(hours=11), book, 10**9) is None  # the day is not over
    charge = next_storage_charge(state, "org", start + timedelta(hours=12, seconds=1), book, 10**9)
    assert charge is not None
    place, capture = charge
    assert capture.units == Units(storage_byte_days=GB // 2)  # stored from noon
    assert place.amount_micros == price_micros(rate, capture.units) == 2_000  # 0.004 per GB-day
    assert place.hold_id == "storage:org:2026-11-01" and place.job.dispatched


def test_the_hold_is_never_more_than_what_the_wallet_can_spend() -> None:
    storage = Storage()
    applied(storage, decide_file(storage, store("a", GB), start))
    charge = next_storage_charge(storage.of("org"), "org", start + timedelta(days=1), book, 700)
    assert charge is not None and charge[0].amount_micros == 700


def grant(amount: int) -> bytes:
    return encode(
        GrantCredits(command_id="g", org_id="org", issued_at=start, grant_id="g", amount_micros=amount, kind="paid")
    )


def charges(outputs: list[Outgoing]) -> list[HoldCaptured | HoldRejected]:
    events = [decode_event(o.value) for o in outputs]
    return [e for e in events if isinstance(e, (HoldCaptured, HoldRejected))]


def test_the_ledger_charges_each_day_once_and_a_rebuilt_ledger_does_not_charge_again(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log.sqlite3")
    role = LedgerRole(log, Settings(), book)
    outputs = role.decide_batch([grant(1_000_000), encode(store("a", 2 * GB)), encode(store("b", GB))], [start] * 3)
    deleted_at = start + timedelta(hours=18)  # b: the second day until 06:00
    outputs += role.decide_batch([encode(delete("b"))], [deleted_at])
    charged = role.charge_storage(start + timedelta(days=2, minutes=1))
    captured = charges(charged)
    assert [e.hold_id for e in captured] == ["storage:org:2026-11-01", "storage:org:2026-11-02"]
    first, second = captured
    assert isinstance(first, HoldCaptured) and isinstance(second, HoldCaptured)
    assert first.units.storage_byte_days == 3 * GB // 2
    assert second.units.storage_byte_days == 2 * GB + GB // 4
    assert first.amount_micros == 6_000 and second.amount_micros == 9_000
    assert role.wallets["org"].available_micros == 1_000_000 - 15_000
    assert role.charge_storage(start + timedelta(days=2, hours=3)) == []  # each day once
    jobs = JobsView()
    for output in charged:
        jobs.apply(decode_event(output.value))
    assert jobs.jobs == {}  # a storage charge is no job of GET /v1/jobs

    producer = log.producer("t")
    producer.send([o for o in outputs + charged if o.topic == topics.LEDGER])
    producer.flush(5)
    rebuilt = LedgerRole(log, Settings(), book)
    rebuilt._owned = set(range(log.partitions))
    rebuilt.rebuild(set(range(log.partitions)))
    assert rebuilt.wallets["org"].available_micros == 1_000_000 - 15_000
    assert rebuilt.charge_storage(start + timedelta(days=2, hours=3)) == []
    third = charges(rebuilt.charge_storage(start + timedelta(days=3, minutes=1)))
    assert [(e.hold_id, e.units.storage_byte_days) for e in third if isinstance(e, HoldCaptured)] == [
        ("storage:org:2026-11-03", 2 * GB)
    ]


def test_an_empty_wallet_records_the_day_refused_and_is_never_overdrawn(tmp_path: Path) -> None:
    role = LedgerRole(EmbeddedLog(tmp_path / "log.sqlite3"), Settings(), book)
    role.decide_batch([grant(1_000), encode(store("a", GB))], [start, start])
    first = charges(role.charge_storage(start + timedelta(days=1)))
    assert isinstance(first[0], HoldCaptured) and first[0].amount_micros == 1_000  # capped at what was left
    assert first[0].priced_micros == 2_000
    second = charges(role.charge_storage(start + timedelta(days=2)))
    assert isinstance(second[0], HoldRejected)
    assert role.wallets["org"].spendable_micros == 0
    assert role.charge_storage(start + timedelta(days=2, hours=1)) == []


@pytest.mark.heavy  # an embedded ClickHouse store
def test_storage_charges_are_usage_rows_and_statement_lines(tmp_path: Path) -> None:
    """The projector's rows of the ledger's storage captures: model file-storage, the byte-days at their
    rate, and a statement line that adds up to what the ledger charged."""
    role = LedgerRole(EmbeddedLog(tmp_path / "log.sqlite3"), Settings(), book)
    role.decide_batch([grant(1_000_000), encode(store("a", 3 * GB))], [start, start])
    captured = [e for e in charges(role.charge_storage(start + timedelta(days=3))) if isinstance(e, HoldCaptured)]
    rows = [usage_row(event, book) for event in captured]
    assert all(row is not None for row in rows)
    usage = [row for row in rows if row is not None]
    assert {(row.model, row.endpoint, row.status) for row in usage} == {("file-storage", "/v1/files", "success")}
    assert [row.storage_byte_days for row in usage] == [3 * GB // 2, 3 * GB, 3 * GB]
    assert {row.storage_byte_days_rate for row in usage} == {4}
    store_ = UsageStore(path=tmp_path / "clickhouse")
    try:
        store_.insert(usage, [capture_posting(row) for row in usage])
        statement = load_statement(store_, "org", start - timedelta(hours=12), start + timedelta(days=4))
    finally:
        store_.close()
    charged = sum(e.amount_micros for e in captured)
    assert charged == 6_000 + 12_000 + 12_000
    assert statement.charges_micros == statement.ledger_charges_micros == charged
    lines = [line for line in statement.lines if line.unit == "storage_byte_days"]
    assert [(line.model, line.quantity, line.amount_micros) for line in lines] == [
        ("file-storage", 15 * GB // 2, charged)
    ]
