"""The ledger role around the pure core: batches, expiry by event, rebuild from the log."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from eventlog import Outgoing, Record, topics
from eventlog.embedded import EmbeddedLog
from eventlog.settings import Settings
from ledger.pricing import default_price_book
from ledger.role import LedgerRole, awaited
from schemas.codec import decode_event, encode
from schemas.commands import CaptureHold, GrantCredits, JobSpec, PlaceHold, StartJob
from schemas.events import HoldCaptured, HoldReleased
from schemas.units import Units

start = datetime(2026, 11, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def place(hold_id: str, amount: int, ttl_s: int = 30) -> bytes:
    return encode(
        PlaceHold(
            command_id=hold_id,
            org_id="org",
            issued_at=start,
            hold_id=hold_id,
            request_id=hold_id,
            amount_micros=amount,
            ttl_s=ttl_s,
            job=JobSpec(
                job_id="j-" + hold_id,
                token_id="t",
                model="sim-chat-small",
                endpoint="/v1/chat/completions",
                pool="default",
                payload=msgspec.Raw(b"{}"),
            ),
        )
    )


def grant(amount: int) -> bytes:
    return encode(
        GrantCredits(command_id="g", org_id="org", issued_at=start, grant_id="g", amount_micros=amount, kind="paid")
    )


def test_holds_expire_by_event_when_their_ttl_passes(tmp_path: Path) -> None:
    clock = Clock()
    role = LedgerRole(EmbeddedLog(tmp_path / "log.sqlite3"), Settings(), default_price_book(), clock)
    role.decide_batch([grant(1000), place("h1", 300, ttl_s=30), place("h2", 300, ttl_s=90)])
    assert role.wallets["org"].available_micros == 400
    clock.now = start + timedelta(seconds=29)
    assert role.expire_due(clock.now) == []
    clock.now = start + timedelta(seconds=30)
    released = [decode_event(o.value) for o in role.expire_due(clock.now)]
    assert [(type(e), e.hold_id) for e in released] == [(HoldReleased, "h1")]  # type: ignore[union-attr]
    assert role.wallets["org"].available_micros == 700
    assert role.expire_due(start + timedelta(seconds=31)) == []


def test_a_rebuilt_role_derives_the_same_wallets_and_pending_expiries(tmp_path: Path) -> None:
    clock = Clock()
    log = EmbeddedLog(tmp_path / "log.sqlite3")
    first = LedgerRole(log, Settings(), default_price_book(), clock)
    outputs = first.decide_batch([grant(1000), place("h1", 300, ttl_s=30)])
    producer = log.producer("t")
    producer.send([o for o in outputs if o.topic == topics.LEDGER] + [Outgoing("x", "k", b"")])
    producer.flush(5)
    second = LedgerRole(log, Settings(), default_price_book(), clock)
    second._owned = set(range(log.partitions))
    second.rebuild(set(range(log.partitions)))
    assert second.wallets["org"].available_micros == first.wallets["org"].available_micros == 700
    released = second.expire_due(start + timedelta(seconds=30))
    assert len(released) == 1


def test_grants_expire_by_event_and_wait_for_the_holds_that_need_them(tmp_path: Path) -> None:
    clock = Clock()
    role = LedgerRole(EmbeddedLog(tmp_path / "log.sqlite3"), Settings(), default_price_book(), clock)
    promo = encode(
        GrantCredits(
            command_id="p",
            org_id="org",
            issued_at=start,
            grant_id="promo",
            amount_micros=500,
            kind="promo",
            expires_at=start + timedelta(seconds=60),
        )
    )
    role.decide_batch([promo, place("h1", 200, ttl_s=120)])
    expired = [decode_event(o.value) for o in role.expire_due(start + timedelta(seconds=60))]
    assert [(type(e).__name__, e.amount_micros) for e in expired] == [("GrantExpired", 300)]  # type: ignore[union-attr]
    assert role.wallets["org"].spendable_micros == 0
    # The hold's release frees the rest of the expired grant, which expires in the same pass.
    released = [decode_event(o.value) for o in role.expire_due(start + timedelta(seconds=120))]
    assert [(type(e).__name__, e.amount_micros) for e in released] == [  # type: ignore[union-attr]
        ("HoldReleased", 200),
        ("GrantExpired", 200),
    ]
    assert role.wallets["org"].balance_micros == 0


def _lease_and_capture(run_id: str = "r1") -> tuple[bytes, bytes]:
    lease = StartJob(
        command_id="lease-1",
        org_id="org",
        issued_at=start,
        hold_id="h1",
        job_id="j-h1",
        run_id=run_id,
        worker_id="w",
        lease_s=3,
    )
    capture = CaptureHold(
        command_id="capture-1",
        org_id="org",
        issued_at=start,
        hold_id="h1",
        job_id="j-h1",
        units=Units(input_tokens=10, output_tokens=10),
    )
    return encode(lease), encode(capture)


def test_a_capture_appended_within_its_lease_is_taken_after_a_ledger_outage(tmp_path: Path) -> None:
    """The worker finished at 2 s, within its 3 s lease; the ledger was down and reads the capture at
    10 s. Decided as of when the log took it, the capture is in time: the revenue is kept."""
    clock = Clock()
    role = LedgerRole(EmbeddedLog(tmp_path / "log.sqlite3"), Settings(), default_price_book(), clock)
    lease, capture = _lease_and_capture()
    role.decide_batch([grant(1000), place("h1", 300), lease], [start, start, start])
    clock.now = start + timedelta(seconds=10)
    read_to = {p: start + timedelta(seconds=2) for p in range(4)}  # the backlog is read up to 2 s
    assert role.expire_due(clock.now, read_to) == [], "not due before its partition is read that far"
    outcome = [decode_event(o.value) for o in role.decide_batch([capture], [start + timedelta(seconds=2)])]
    assert [type(e) for e in outcome] == [HoldCaptured], outcome
    assert role.wallets["org"].captured_micros > 0


def test_the_ledger_clock_alone_would_lose_that_capture_after_a_longer_outage(tmp_path: Path) -> None:
    """The same capture decided at the ledger's reading time: past the lease and the time-to-live of
    grace a run's late capture gets (30 s here), refused (hold_expired)."""
    clock = Clock()
    role = LedgerRole(EmbeddedLog(tmp_path / "log.sqlite3"), Settings(), default_price_book(), clock)
    lease, capture = _lease_and_capture()
    role.decide_batch([grant(1000), place("h1", 300), lease])
    clock.now = start + timedelta(seconds=3 + 30)
    outcome = [decode_event(o.value) for o in role.decide_batch([capture])]
    assert [(type(e).__name__, getattr(e, "code", "")) for e in outcome] == [("CommandRejected", "hold_expired")]


def _start_job(hold_id: str) -> bytes:
    return encode(
        StartJob(
            command_id="s-" + hold_id,
            org_id="org",
            issued_at=start,
            hold_id=hold_id,
            job_id="j-" + hold_id,
            run_id="r",
            worker_id="w",
            lease_s=30,
        )
    )


def test_awaited_tells_the_commands_a_request_waits_on() -> None:
    sliced = msgspec.json.encode({**msgspec.json.decode(place("h", 1)), "slice_id": "sl"})
    capture = CaptureHold(command_id="c", org_id="org", issued_at=start, hold_id="h", job_id="j", units=Units())
    assert not awaited(_start_job("h")), "a lease: the worker runs without waiting for it"
    assert not awaited(encode(capture)), "an outcome: the client's answer came from the worker"
    assert not awaited(sliced), "a hold carved from a gateway's slice: the gateway already sent its job"
    assert awaited(place("h", 1)), "a hold decided against the wallet: its request waits"
    assert awaited(grant(1)), "an operator waits for a grant"
    assert awaited(b"not json"), "a malformed command is refused at once"


class _ScriptedProcessor:
    """The processor's poll, as a script of batches (each poll takes the next one); a batch given as
    a callable runs first, as a rebalance inside Kafka's poll calls the role's ``on_assigned``."""

    def __init__(self, *batches: Any) -> None:
        self.batches = list(batches)
        self.waits: list[int] = []

    def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
        self.waits.append(timeout_ms)
        if not self.batches:
            time.sleep(timeout_ms / 1000)
            return []
        batch = self.batches.pop(0)
        return batch() if callable(batch) else batch


def _record(value: bytes, offset: int) -> Record:
    return Record(topics.COMMANDS, 0, offset, b"org", value, 0)


def _gathering_role(tmp_path: Path, linger_ms: int, batch_max: int = 500) -> LedgerRole:
    settings = Settings(ledger_linger_ms=linger_ms, batch_records_max=batch_max)
    return LedgerRole(EmbeddedLog(tmp_path / "log.sqlite3"), settings, default_price_book())


def test_the_ledger_gathers_what_no_request_waits_on_until_one_does(tmp_path: Path) -> None:
    role = _gathering_role(tmp_path, linger_ms=5000)
    first, second, third = _record(_start_job("a"), 0), _record(_start_job("b"), 1), _record(grant(1), 2)
    processor = _ScriptedProcessor([second], [], [third], [_record(_start_job("late"), 3)])
    started = time.monotonic()
    gathered = role._gather(processor, [first])  # type: ignore[arg-type]
    assert gathered == [first, second, third], "gathered until the grant, which someone waits on"
    assert time.monotonic() - started < 1, "the grant ended the gathering at once, not the linger"
    assert processor.batches, "nothing was polled after the awaited command"


def test_an_awaited_command_is_not_held_back_and_without_a_linger_nothing_is(tmp_path: Path) -> None:
    awaited_first = _ScriptedProcessor([_record(_start_job("b"), 1)])
    assert _gathering_role(tmp_path, 5000)._gather(awaited_first, [_record(grant(1), 0)]) == [  # type: ignore[arg-type]
        _record(grant(1), 0)
    ]
    no_linger = _ScriptedProcessor([_record(_start_job("b"), 1)])
    assert len(_gathering_role(tmp_path, 0)._gather(no_linger, [_record(_start_job("a"), 0)])) == 1  # type: ignore[arg-type]
    assert awaited_first.waits == no_linger.waits == [], "neither polled again"


def test_the_gathering_stops_at_the_linger_and_at_a_full_batch(tmp_path: Path) -> None:
    lingering = _ScriptedProcessor()
    started = time.monotonic()
    assert len(_gathering_role(tmp_path, 200)._gather(lingering, [_record(_start_job("a"), 0)])) == 1  # type: ignore[arg-type]
    assert 0.15 < time.monotonic() - started < 1.5
    assert sum(lingering.waits) <= 200
    full = _ScriptedProcessor([_record(_start_job("b"), 1)], [_record(_start_job("c"), 2)])
    assert len(_gathering_role(tmp_path, 5000, batch_max=2)._gather(full, [_record(_start_job("a"), 0)])) == 2  # type: ignore[arg-type]
    assert len(full.batches) == 1


def test_a_rebalance_while_gathering_drops_what_came_from_the_partitions_lost(tmp_path: Path) -> None:
    role = _gathering_role(tmp_path, 5000)
    kept, lost = _record(_start_job("a"), 0), Record(topics.COMMANDS, 3, 0, b"org", _start_job("b"), 0)
    after = Record(topics.COMMANDS, 1, 0, b"org", _start_job("c"), 0)

    def rebalance() -> list[Record]:
        role._on_assigned({0, 1})  # as Kafka's poll calls it, before it returns what it read
        return [after]

    processor = _ScriptedProcessor([lost], rebalance, [_record(_start_job("d"), 1)])
    gathered = role._gather(processor, [kept])  # type: ignore[arg-type]
    assert gathered == [kept, after], "partition 3's command is its new owner's; the gathering ends"
    assert processor.batches, "nothing polled after the rebalance"


def test_the_running_ledger_decides_a_lone_lease_after_its_linger_and_a_grant_at_once(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log.sqlite3")
    role = LedgerRole(log, Settings(ledger_linger_ms=1500, poll_wait_ms=50), default_price_book())
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(target=role.run, args=(stop, ready), daemon=True)
    thread.start()
    producer = log.producer("test")
    ledger = log.consumer([topics.LEDGER], client_id="reader")

    def decided(command_id: str) -> float:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for record in ledger.poll(100, 50):
                if decode_event(record.value).causation_id == command_id:
                    return time.monotonic()
        raise AssertionError(f"{command_id} was not decided")

    try:
        assert ready.wait(5)
        sent = time.monotonic()
        producer.send([Outgoing(topics.COMMANDS, "org", _start_job("lone"))])
        assert decided("s-lone") - sent > 1.2, "a lease alone waits out the linger for company"
        sent = time.monotonic()
        producer.send([Outgoing(topics.COMMANDS, "org", _start_job("early"))])
        time.sleep(0.1)
        producer.send([Outgoing(topics.COMMANDS, "org", grant(1000))])
        assert decided("g") - sent < 0.9, "a grant is decided at once, with the lease gathered before it"
    finally:
        stop.set()
        thread.join(5)
