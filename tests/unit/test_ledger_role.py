"""The ledger role around the pure core: batches, expiry by event, rebuild from the log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from eventlog import Outgoing, topics
from eventlog.embedded import EmbeddedLog
from eventlog.settings import Settings
from ledger.pricing import default_price_book
from ledger.role import LedgerRole
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
