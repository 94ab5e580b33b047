"""An organization's wallet: pure decisions over an eventsourcing aggregate.

``decide(wallet, command, now, price_book)`` returns the events a command causes, or a rejection
code. ``evolve(wallet, event)`` applies one event. Neither does IO nor reads the clock (time is
passed in), so the ledger role, replay and tests all run the same code.

The aggregate's ``@event`` methods are the evolve step: replaying the log calls them in order.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from eventsourcing.domain import Aggregate, event

from ledger.pricing import PriceBook, price_micros
from schemas.commands import AnyCommand, CaptureHold, GrantCredits, PlaceHold, ReleaseHold
from schemas.events import (
    CreditsGranted,
    Event,
    HoldCaptured,
    HoldPlaced,
    HoldRejected,
    HoldReleased,
    JobQueued,
)

hold_expired_reason = "hold_expired"
_event_id_namespace = uuid.UUID("6c4d7d1e-59a4-4c55-9b0a-6f1f0c8e2a11")


class Rejection(enum.Enum):
    """Business rejections. Values are part of the API and the log: never rename or reuse one."""

    amount_must_be_positive = "amount_must_be_positive"
    insufficient_credits = "insufficient_credits"
    exists_with_different_amount = "exists_with_different_amount"
    hold_not_found = "hold_not_found"
    hold_already_captured = "hold_already_captured"
    hold_already_released = "hold_already_released"
    units_must_not_be_negative = "units_must_not_be_negative"
    model_not_priced = "model_not_priced"
    hold_expired = "hold_expired"


class HoldStatus(enum.Enum):
    open = "open"
    captured = "captured"
    released = "released"


@dataclass(slots=True)
class Hold:
    hold_id: str
    request_id: str
    job_id: str
    token_id: str
    model: str
    endpoint: str
    amount_micros: int
    expires_at: datetime
    status: HoldStatus = HoldStatus.open


class Wallet(Aggregate):
    """State of one organization's credits. Integer micros only."""

    def __init__(self, org_id: str) -> None:
        self.org_id = org_id
        self.credited_micros = 0
        self.captured_micros = 0
        self.held_micros = 0
        self.grants: dict[str, int] = {}
        self.holds: dict[str, Hold] = {}

    @staticmethod
    def create_id(org_id: str) -> uuid.UUID:
        return uuid.uuid5(_event_id_namespace, "wallet:" + org_id)

    @property
    def available_micros(self) -> int:
        return self.credited_micros - self.captured_micros - self.held_micros

    @event("CreditsGranted")
    def record_grant(self, grant_id: str, amount_micros: int) -> None:
        self.grants[grant_id] = amount_micros
        self.credited_micros += amount_micros

    @event("HoldPlaced")
    def record_hold(self, hold: Hold) -> None:
        self.holds[hold.hold_id] = hold
        self.held_micros += hold.amount_micros

    @event("HoldCaptured")
    def record_capture(self, hold_id: str, amount_micros: int) -> None:
        hold = self.holds[hold_id]
        assert hold.status is HoldStatus.open, "a hold is captured at most once"
        assert 0 <= amount_micros <= hold.amount_micros, "a capture never exceeds its hold"
        hold.status = HoldStatus.captured
        self.held_micros -= hold.amount_micros
        self.captured_micros += amount_micros

    @event("HoldReleased")
    def record_release(self, hold_id: str) -> None:
        hold = self.holds[hold_id]
        assert hold.status is HoldStatus.open, "only an open hold is released"
        hold.status = HoldStatus.released
        self.held_micros -= hold.amount_micros


def event_id_for(command_id: str, kind: str) -> str:
    """Deterministic, so that deciding the same command twice yields the same event ids."""
    return str(uuid.uuid5(_event_id_namespace, f"{command_id}/{kind}"))


def decide(wallet: Wallet, command: AnyCommand, now: datetime, price_book: PriceBook) -> list[Event] | Rejection:
    """The events ``command`` causes against ``wallet`` at ``now``; [] for an exact duplicate."""
    if isinstance(command, PlaceHold):
        return _decide_place_hold(wallet, command, now)
    if isinstance(command, CaptureHold):
        return _decide_capture(wallet, command, now, price_book)
    if isinstance(command, ReleaseHold):
        return _decide_release(wallet, command, now)
    return _decide_grant(wallet, command, now)


def _decide_grant(wallet: Wallet, command: GrantCredits, now: datetime) -> list[Event] | Rejection:
    if command.amount_micros <= 0:
        return Rejection.amount_must_be_positive
    existing = wallet.grants.get(command.grant_id)
    if existing is not None:
        return [] if existing == command.amount_micros else Rejection.exists_with_different_amount
    return [
        CreditsGranted(
            event_id=event_id_for(command.command_id, "credits.granted"),
            occurred_at=now,
            org_id=command.org_id,
            correlation_id=command.correlation_id,
            causation_id=command.command_id,
            grant_id=command.grant_id,
            amount_micros=command.amount_micros,
            kind=command.kind,
        )
    ]


def _decide_place_hold(wallet: Wallet, command: PlaceHold, now: datetime) -> list[Event] | Rejection:
    if command.amount_micros <= 0:
        return Rejection.amount_must_be_positive
    existing = wallet.holds.get(command.hold_id)
    if existing is not None:
        return [] if existing.amount_micros == command.amount_micros else Rejection.exists_with_different_amount
    envelope: dict[str, Any] = {
        "occurred_at": now,
        "org_id": command.org_id,
        "correlation_id": command.correlation_id,
        "causation_id": command.command_id,
    }
    if command.amount_micros > wallet.available_micros:
        # A rejected hold is still a fact on the log: the gateway answers 402 from it, audit sees it.
        return [
            HoldRejected(
                event_id=event_id_for(command.command_id, "hold.rejected"),
                hold_id=command.hold_id,
                request_id=command.request_id,
                token_id=command.job.token_id,
                model=command.job.model,
                endpoint=command.job.endpoint,
                code=Rejection.insufficient_credits.value,
                requested_micros=command.amount_micros,
                available_micros=wallet.available_micros,
                **envelope,
            )
        ]
    job = command.job
    return [
        HoldPlaced(
            event_id=event_id_for(command.command_id, "hold.placed"),
            hold_id=command.hold_id,
            request_id=command.request_id,
            job_id=job.job_id,
            token_id=job.token_id,
            model=job.model,
            endpoint=job.endpoint,
            amount_micros=command.amount_micros,
            expires_at=now + timedelta(seconds=command.ttl_s),
            **envelope,
        ),
        JobQueued(
            event_id=event_id_for(command.command_id, "job.queued"),
            job_id=job.job_id,
            request_id=command.request_id,
            hold_id=command.hold_id,
            token_id=job.token_id,
            model=job.model,
            endpoint=job.endpoint,
            pool=job.pool,
            payload=job.payload,
            accepted_at=command.issued_at,
            **envelope,
        ),
    ]


def _open_hold(wallet: Wallet, hold_id: str) -> Hold | Rejection:
    hold = wallet.holds.get(hold_id)
    if hold is None:
        return Rejection.hold_not_found
    if hold.status is HoldStatus.captured:
        return Rejection.hold_already_captured
    if hold.status is HoldStatus.released:
        return Rejection.hold_already_released
    return hold


def _decide_capture(
    wallet: Wallet, command: CaptureHold, now: datetime, price_book: PriceBook
) -> list[Event] | Rejection:
    hold = _open_hold(wallet, command.hold_id)
    if isinstance(hold, Rejection):
        return hold
    if now >= hold.expires_at:
        # Past its time-to-live the hold no longer reserves anything; the expiry event releases it.
        return Rejection.hold_expired
    if any(value < 0 for value in _unit_values(command)):
        return Rejection.units_must_not_be_negative
    price = price_book.model(hold.model)
    if price is None:
        return Rejection.model_not_priced
    priced = price_micros(price, command.units)
    charged = min(priced, hold.amount_micros)
    return [
        HoldCaptured(
            event_id=event_id_for(command.command_id, "hold.captured"),
            occurred_at=now,
            org_id=command.org_id,
            correlation_id=command.correlation_id,
            causation_id=command.command_id,
            hold_id=hold.hold_id,
            request_id=hold.request_id,
            job_id=hold.job_id,
            token_id=hold.token_id,
            model=hold.model,
            endpoint=hold.endpoint,
            amount_micros=charged,
            released_micros=hold.amount_micros - charged,
            priced_micros=priced,
            price_version=price_book.version,
            units=command.units,
            latency_ms=command.latency_ms,
        )
    ]


def _unit_values(command: CaptureHold) -> list[int]:
    units = command.units
    return [getattr(units, name) for name in units.__struct_fields__]


def _decide_release(wallet: Wallet, command: ReleaseHold, now: datetime) -> list[Event] | Rejection:
    hold = _open_hold(wallet, command.hold_id)
    if isinstance(hold, Rejection):
        return hold
    return [
        HoldReleased(
            event_id=event_id_for(command.command_id, "hold.released"),
            occurred_at=now,
            org_id=command.org_id,
            correlation_id=command.correlation_id,
            causation_id=command.command_id,
            hold_id=hold.hold_id,
            request_id=hold.request_id,
            token_id=hold.token_id,
            model=hold.model,
            endpoint=hold.endpoint,
            amount_micros=hold.amount_micros,
            reason=command.reason,
        )
    ]


def decide_expiry(wallet: Wallet, hold_id: str, now: datetime) -> list[Event]:
    """Release a hold whose time-to-live has passed; [] when it is resolved already or not yet due."""
    hold = wallet.holds.get(hold_id)
    if hold is None or hold.status is not HoldStatus.open or now < hold.expires_at:
        return []
    return [
        HoldReleased(
            event_id=event_id_for(f"expire:{hold.hold_id}", "hold.released"),
            occurred_at=now,
            org_id=wallet.org_id,
            correlation_id=hold.request_id,
            causation_id=hold.hold_id,
            hold_id=hold.hold_id,
            request_id=hold.request_id,
            token_id=hold.token_id,
            model=hold.model,
            endpoint=hold.endpoint,
            amount_micros=hold.amount_micros,
            reason=hold_expired_reason,
        )
    ]


def evolve(wallet: Wallet, event: Event) -> None:
    """Apply one ledger event to the wallet (the aggregate records it as its own domain event)."""
    if isinstance(event, HoldCaptured):
        wallet.record_capture(event.hold_id, event.amount_micros)
    elif isinstance(event, HoldPlaced):
        wallet.record_hold(
            Hold(
                hold_id=event.hold_id,
                request_id=event.request_id,
                job_id=event.job_id,
                token_id=event.token_id,
                model=event.model,
                endpoint=event.endpoint,
                amount_micros=event.amount_micros,
                expires_at=event.expires_at,
            )
        )
    elif isinstance(event, HoldReleased):
        wallet.record_release(event.hold_id)
    elif isinstance(event, CreditsGranted):
        wallet.record_grant(event.grant_id, event.amount_micros)
    # HoldRejected and JobQueued change no balance.
    # The aggregate keeps its domain events until collected; Kafka is our store, so drop them.
    wallet.collect_events()
