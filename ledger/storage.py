"""Stored files and what their storage costs: pure decisions, as the wallet's are.

The ledger records each file (``StoreFile`` → ``FileStored``, refused past the organization's storage
limit: the ledger is the one writer of an organization's partition, so two uploads racing for the
last bytes cannot both pass) and its deletion (``FileDeleted``). From those events it meters storage:
after each UTC midnight, every organization that stored files during the day ending there is charged
for it, as a hold and its capture (``storage:<org>:<day>``) at the price book's ``file-storage``
price, so usage rows, statements, balances and ``audit verify`` treat it as any other charge.

A day's quantity is ``storage_byte_days`` = the bytes stored times the seconds each was stored that
day, divided by 86,400 and rounded up (at most one byte-day more than exact, a fraction of a micro at
any rate a book sets), then priced and rounded up once like every request. The hold is the price, or
what the organization can still spend when that is less (the capture is then capped at it, and the
statement shows the difference as a ``hold_cap`` line): storage never overdraws a wallet. A day whose
hold is refused (nothing spendable) is recorded as refused and not charged again. Days are charged
in order, each only once its partition's commands are read past its end (a deletion decided before
midnight counts), at most ``days_per_decision_max`` days per organization per decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import msgspec

from ledger.pricing import PriceBook, price_micros
from schemas.commands import CaptureHold, DeleteFile, JobSpec, PlaceHold, StoreFile
from schemas.events import CommandRejected, Event, FileDeleted, FileStored, HoldCaptured, HoldRejected
from schemas.ids import event_id_for
from schemas.units import Units

storage_model = "file-storage"  # the price book entry whose storage_byte_day_rate prices storage
storage_endpoint = "/v1/files"
storage_hold_prefix = "storage:"
seconds_per_day = 86_400
days_per_decision_max = 31
storage_hold_ttl_s = 60  # the hold is captured in the same decision; this only bounds a lost one
storage_limit_exceeded = "storage_limit_exceeded"
file_not_found = "file_not_found"
file_exists = "file_exists"


@dataclass(slots=True)
class StoredFile:
    file_id: str
    bytes: int
    stored_at: datetime
    deleted_at: datetime | None = None


@dataclass(slots=True)
class OrgStorage:
    """One organization's files: those stored, those deleted during days not yet charged, and the
    first day not yet charged (None: nothing ever stored)."""

    files: dict[str, StoredFile] = field(default_factory=dict)
    deleted: list[StoredFile] = field(default_factory=list)
    used_bytes: int = 0
    unbilled_from: date | None = None

    def byte_seconds(self, day: date) -> int:
        start = datetime.combine(day, time(), UTC)
        end = start + timedelta(days=1)
        total = 0
        for stored in (*self.files.values(), *self.deleted):
            until = stored.deleted_at or end
            overlap = (min(until, end) - max(stored.stored_at, start)).total_seconds()
            if overlap > 0:
                total += stored.bytes * int(overlap)
        return total


def storage_hold_id(org_id: str, day: date) -> str:
    return f"{storage_hold_prefix}{org_id}:{day.isoformat()}"


def _day_of_hold(hold_id: str) -> date | None:
    if not hold_id.startswith(storage_hold_prefix):
        return None
    try:
        return date.fromisoformat(hold_id.rsplit(":", 1)[1])
    except ValueError:
        return None


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class Storage:
    """Every organization's stored files, folded from ledger events (live, and when rebuilt)."""

    def __init__(self) -> None:
        self.orgs: dict[str, OrgStorage] = {}

    def of(self, org_id: str) -> OrgStorage:
        found = self.orgs.get(org_id)
        if found is None:
            found = self.orgs[org_id] = OrgStorage()
        return found

    def forget(self, keep: set[str]) -> None:
        """Drop organizations this ledger member no longer owns."""
        self.orgs = {org: state for org, state in self.orgs.items() if org in keep}

    def apply(self, event: Event) -> None:
        if isinstance(event, FileStored):
            state = self.of(event.org_id)
            if event.file_id in state.files:
                return
            stored_at = _utc(event.occurred_at)
            state.files[event.file_id] = StoredFile(event.file_id, event.bytes, stored_at)
            state.used_bytes += event.bytes
            if state.unbilled_from is None:
                state.unbilled_from = stored_at.date()
        elif isinstance(event, FileDeleted):
            state = self.of(event.org_id)
            stored = state.files.pop(event.file_id, None)
            if stored is not None:
                stored.deleted_at = _utc(event.occurred_at)
                state.deleted.append(stored)
                state.used_bytes -= stored.bytes
        elif isinstance(event, (HoldCaptured, HoldRejected)):
            day = _day_of_hold(event.hold_id)
            charged = self.orgs.get(event.org_id)
            if day is None or charged is None:
                return
            following = day + timedelta(days=1)
            if charged.unbilled_from is None or following > charged.unbilled_from:
                charged.unbilled_from = following
            start = datetime.combine(following, time(), UTC)
            charged.deleted = [d for d in charged.deleted if d.deleted_at is not None and d.deleted_at > start]


def _rejected(command: StoreFile | DeleteFile, now: datetime, code: str) -> CommandRejected:
    return CommandRejected(
        event_id=event_id_for(command.command_id, "command.rejected"),
        occurred_at=now,
        org_id=command.org_id,
        correlation_id=command.correlation_id,
        causation_id=command.command_id,
        command_type=type(command).__struct_config__.tag,  # type: ignore[arg-type]
        code=code,
    )


def decide_file(storage: Storage, command: StoreFile | DeleteFile, now: datetime) -> list[Event]:
    """The events of a file command: stored (or refused past the limit), deleted (or not found);
    [] for an exact duplicate."""
    state = storage.of(command.org_id)
    envelope: dict[str, Any] = {
        "occurred_at": now,
        "org_id": command.org_id,
        "correlation_id": command.correlation_id,
        "causation_id": command.command_id,
    }
    if isinstance(command, StoreFile):
        known = state.files.get(command.file_id)
        if known is not None:
            return [] if known.bytes == command.bytes else [_rejected(command, now, file_exists)]
        if command.bytes < 0 or state.used_bytes + command.bytes > command.limit_bytes:
            return [_rejected(command, now, storage_limit_exceeded)]
        return [
            FileStored(
                event_id=event_id_for(command.command_id, "file.stored"),
                file_id=command.file_id,
                filename=command.filename,
                purpose=command.purpose,
                bytes=command.bytes,
                sha256=command.sha256,
                blob_key=command.blob_key,
                token_id=command.token_id,
                **envelope,
            )
        ]
    stored = state.files.get(command.file_id)
    if stored is None:
        return [_rejected(command, now, file_not_found)]
    return [
        FileDeleted(
            event_id=event_id_for(command.command_id, "file.deleted"),
            file_id=command.file_id,
            bytes=stored.bytes,
            **envelope,
        )
    ]


def next_storage_charge(
    state: OrgStorage, org_id: str, now: datetime, book: PriceBook, spendable_micros: int
) -> tuple[PlaceHold, CaptureHold] | None:
    """The hold and capture of the first uncharged day that ended by ``now``, or None. Days without
    stored bytes are skipped (the state moves past them)."""
    price = book.model(storage_model)
    if price is None or not price.storage_byte_day_rate or state.unbilled_from is None:
        return None
    today = _utc(now).date()
    for _ in range(days_per_decision_max):
        day = state.unbilled_from
        if day >= today:
            return None
        byte_seconds = state.byte_seconds(day)
        if byte_seconds == 0:
            state.unbilled_from = day + timedelta(days=1)
            continue
        units = Units(storage_byte_days=-(-byte_seconds // seconds_per_day))
        cost = price_micros(price, units)
        hold_id = storage_hold_id(org_id, day)
        amount = min(cost, spendable_micros) if spendable_micros > 0 else cost
        place = PlaceHold(
            command_id=hold_id,
            org_id=org_id,
            issued_at=now,
            correlation_id=hold_id,
            hold_id=hold_id,
            request_id=hold_id,
            amount_micros=max(amount, 1),
            ttl_s=storage_hold_ttl_s,
            price_version=book.version,
            job=JobSpec(
                job_id=hold_id,
                token_id="",
                model=storage_model,
                endpoint=storage_endpoint,
                pool="",
                payload=msgspec.Raw(b"{}"),
                dispatched=True,  # no job runs: the ledger measured the usage itself
            ),
        )
        capture = CaptureHold(
            command_id=f"{hold_id}:capture",
            org_id=org_id,
            issued_at=now,
            correlation_id=hold_id,
            hold_id=hold_id,
            job_id=hold_id,
            units=units,
        )
        return place, capture
    return None
