"""An organization's wallet: pure decisions over an eventsourcing aggregate.

``decide(wallet, command, now, prices)`` returns the events a command causes, or a rejection
code. ``evolve(wallet, event)`` applies one event. Neither does IO nor reads the clock (time is
passed in), so the ledger role, replay and tests all run the same code.

The aggregate's ``@event`` methods define the evolve step. ``evolve`` applies events that were
decided already, so it runs their bodies as eventsourcing does when it replays stored events:
without recording each one again as a new domain event (see ``_replayed``).

Money model (integer micros):
- ``balance`` = what the grants still hold - ``debt`` (charges beyond the grants, within the credit
  limit). In the double-entry book it is the ``{org}/wallet`` account plus the ``{org}/held`` account
  (a hold moves money from the first to the second), so ``{org}/wallet`` alone is ``available``.
- ``spendable`` = balance - held + credit limit. A hold needs ``amount ≤ spendable``; nothing ever
  takes spendable below zero, so concurrent requests can never pass the limit.
- Charges burn grants at capture, in burn order: grants already expired (their money was reserved
  before expiry) first, then higher ``priority``, then promotional before paid, then earlier expiry,
  then older. A new grant repays debt first.
- A grant's unused remainder moves to breakage at its expiry, except what open holds still need
  (holds are backed by grants before the credit line): that part expires when those holds resolve.
- A slice reserves part of the spendable balance for one gateway instance (``GrantSlice``), which
  places holds against it in memory: a hold that names an open slice covering it is carved out of it
  (``held`` does not change), and the rest of such a hold goes back to the slice when it is captured
  or released, while the slice is open. What is left of a slice goes back to the wallet when its
  gateway returns it or it expires. ``held`` is the open holds plus what is left of the open slices,
  plus the interval each running resource holds.
- Time-metered resources and monthly plans (``ledger/resources.py``): a running resource holds its
  current interval in ``held`` and is charged out of it when the interval is over (the next one held
  in the same event); a plan's month is charged outright. Both burn grants in the same order.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from eventsourcing.domain import Aggregate, CommandMethodDecorator, event

from ledger.pricing import PriceBook, PriceBooks, price_micros, unit_quantities
from ledger.resources import Resource, Subscription, decide_resource_command, evolve_resource_event
from schemas.commands import (
    AdjustCredits,
    AnyCommand,
    CancelJob,
    CaptureHold,
    ConfigureAutoTopUp,
    GrantCredits,
    GrantSlice,
    PlaceHold,
    RefundCredits,
    ReleaseHold,
    ResourceCommand,
    ReturnSlice,
    SetCreditLimit,
    StartJob,
)
from schemas.events import (
    AutoTopUpConfigured,
    AutoTopUpTriggered,
    CreditLimitSet,
    CreditsAdjusted,
    CreditsGranted,
    CreditsRefunded,
    Event,
    GrantBurn,
    GrantExpired,
    HoldCaptured,
    HoldPlaced,
    HoldRejected,
    HoldReleased,
    JobCancelRequested,
    JobDeadLettered,
    JobLeased,
    JobLeaseLost,
    JobQueued,
    ResourceEvent,
    SliceGranted,
    SliceReturned,
)
from schemas.ids import event_id_for
from schemas.units import Units

Prices = PriceBook | PriceBooks  # a single book (tests, tools) or every published version
hold_expired_reason = "hold_expired"
cancelled_reason = "cancelled"
dead_letter_reason = "dead_letter"
_event_id_namespace = uuid.UUID("6c4d7d1e-59a4-4c55-9b0a-6f1f0c8e2a11")
_never = datetime.max.replace(tzinfo=None)


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
    grant_already_expired = "grant_already_expired"
    reference_not_found = "reference_not_found"
    refund_exceeds_charge = "refund_exceeds_charge"
    limit_must_not_be_negative = "limit_must_not_be_negative"
    limit_below_current_use = "limit_below_current_use"
    amount_must_not_be_zero = "amount_must_not_be_zero"
    invalid_auto_topup = "invalid_auto_topup"
    price_version_unknown = "price_version_unknown"
    job_cancelled = "job_cancelled"
    lease_must_be_positive = "lease_must_be_positive"
    run_superseded = "run_superseded"
    slice_not_found = "slice_not_found"
    ttl_must_be_positive = "ttl_must_be_positive"
    model_not_a_fallback = "model_not_a_fallback"
    # Time-metered resources and plans (ledger/resources.py).
    resource_class_not_priced = "resource_class_not_priced"
    resource_not_found = "resource_not_found"
    resource_running = "resource_running"
    resource_not_running = "resource_not_running"
    plan_not_priced = "plan_not_priced"
    subscription_exists = "subscription_exists"
    subscription_not_found = "subscription_not_found"
    subscription_ended = "subscription_ended"
    subscription_cancelled = "subscription_cancelled"


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
    price_version: str = ""
    captured_micros: int = 0
    refunded_micros: int = 0
    # The job's life as the ledger sees it: how long the hold waits for a (re)run, which run holds
    # the lease, how many runs there were, and whether the client asked to stop.
    pool: str = ""
    ttl_s: int = 0
    attempts_max: int = 3
    attempts: int = 0
    run_id: str = ""
    run_started_at: datetime | None = None
    superseded_run_ids: tuple[str, ...] = ()  # earlier runs (at most attempts_max): their heartbeats are refused
    leased: bool = False
    cancel_requested: bool = False
    slice_id: str = ""  # the slice it was carved out of ("": the wallet)
    source: str = ""  # where its request came from ("": api) and what that names (JobSpec.source)
    source_id: str = ""


@dataclass(slots=True)
class Slice:
    slice_id: str
    instance_id: str
    amount_micros: int
    left_micros: int  # reserved, not carved into holds yet
    expires_at: datetime
    open: bool = True


@dataclass(frozen=True, slots=True)
class AutoTopUp:
    threshold_micros: int
    amount_micros: int
    target_micros: int

    def amount_for(self, balance_micros: int) -> int:
        return self.amount_micros or self.target_micros - balance_micros


@dataclass(slots=True)
class Grant:
    grant_id: str
    kind: str
    amount_micros: int
    remaining_micros: int
    expires_at: datetime | None
    priority: int
    sequence: int
    expired: bool = False

    def burn_key(self) -> tuple[int, int, int, datetime, int]:
        # Compare instants: convert to UTC before dropping the offset (naive _never sorts last).
        expiry = self.expires_at.astimezone(UTC).replace(tzinfo=None) if self.expires_at else _never
        return (0 if self.expired else 1, -self.priority, 0 if self.kind == "promo" else 1, expiry, self.sequence)


def burn_plan(grants: list[Grant], amount_micros: int) -> tuple[list[tuple[Grant, int]], int]:
    """Which grants pay ``amount_micros`` and how much each; the rest is new debt. Pure."""
    plan: list[tuple[Grant, int]] = []
    left = amount_micros
    for grant in sorted((g for g in grants if g.remaining_micros > 0), key=Grant.burn_key):
        if left == 0:
            break
        take = min(grant.remaining_micros, left)
        plan.append((grant, take))
        left -= take
    return plan, left


class Wallet(Aggregate):
    """State of one organization's credits. Integer micros only."""

    def __init__(self, org_id: str) -> None:
        self.org_id = org_id
        self.grants: dict[str, Grant] = {}
        self.debt_micros = 0
        self.held_micros = 0
        self.captured_micros = 0
        self.credit_limit_micros = 0
        self.auto_topup: AutoTopUp | None = None
        self.auto_topup_armed = True
        self.holds: dict[str, Hold] = {}
        self.slices: dict[str, Slice] = {}
        self.refunds: dict[str, int] = {}
        self.adjustments: dict[str, int] = {}
        # Time-metered resources and monthly plans (ledger/resources.py), by id.
        self.resources: dict[str, Resource] = {}
        self.subscriptions: dict[str, Subscription] = {}

    @staticmethod
    def create_id(org_id: str) -> uuid.UUID:
        return uuid.uuid5(_event_id_namespace, "wallet:" + org_id)

    @property
    def granted_remaining_micros(self) -> int:
        return sum(g.remaining_micros for g in self.grants.values())

    @property
    def balance_micros(self) -> int:
        return self.granted_remaining_micros - self.debt_micros

    @property
    def available_micros(self) -> int:
        """Balance not reserved by holds (negative while the credit limit is in use)."""
        return self.balance_micros - self.held_micros

    @property
    def spendable_micros(self) -> int:
        return self.available_micros + self.credit_limit_micros

    @property
    def sliced_micros(self) -> int:
        """What gateways' open slices still reserve (not carved into holds yet)."""
        return sum(s.left_micros for s in self.slices.values() if s.open)

    @property
    def holds_micros(self) -> int:
        """What open holds reserve: the requests in flight (``held_micros`` less the slices)."""
        return self.held_micros - self.sliced_micros

    def open_slice(self, slice_id: str) -> Slice | None:
        found = self.slices.get(slice_id) if slice_id else None
        return found if found is not None and found.open else None

    def check(self) -> None:
        self._check()

    def planned_burns(self, amount_micros: int) -> tuple[GrantBurn, ...]:
        """Which grants a charge of ``amount_micros`` would burn (the rest: debt). Pure."""
        plan, _ = burn_plan(list(self.grants.values()), amount_micros)
        return tuple(GrantBurn(grant_id=g.grant_id, amount_micros=take) for g, take in plan)

    def charge(self, amount_micros: int) -> None:
        """A charge that is not a hold's capture (a resource's interval, paid out of its reservation,
        which the caller takes out of ``held``; a plan's month): burn it."""
        self.captured_micros += amount_micros
        self._burn(amount_micros)

    def _check(self) -> None:
        assert self.held_micros >= 0, "holds never reserve a negative amount"
        assert self.debt_micros >= 0, "debt is never negative"
        assert self.spendable_micros >= 0, "nothing takes an organization past its credit limit"

    def _credit(self, grant: Grant) -> None:
        """A new grant repays debt first."""
        repaid = min(self.debt_micros, grant.remaining_micros)
        self.debt_micros -= repaid
        grant.remaining_micros -= repaid
        self.grants[grant.grant_id] = grant

    def _burn(self, amount_micros: int) -> list[tuple[Grant, int]]:
        plan, debt = burn_plan(list(self.grants.values()), amount_micros)
        for grant, take in plan:
            grant.remaining_micros -= take
        self.debt_micros += debt
        return plan

    @event("CreditsGranted")
    def record_grant(self, grant: Grant) -> None:
        self._credit(grant)
        self._check()

    @event("GrantExpired")
    def record_grant_expiry(self, grant_id: str, amount_micros: int) -> None:
        grant = self.grants[grant_id]
        assert 0 <= amount_micros <= grant.remaining_micros, "breakage never exceeds what a grant holds"
        grant.expired = True
        grant.remaining_micros -= amount_micros
        self._check()

    @event("HoldPlaced")
    def record_hold(self, hold: Hold) -> None:
        self.holds[hold.hold_id] = hold
        carved = self.open_slice(hold.slice_id)
        if carved is not None:
            assert hold.amount_micros <= carved.left_micros, "a hold is carved only out of a slice that covers it"
            carved.left_micros -= hold.amount_micros  # reserved already: held does not change
        else:
            assert not hold.slice_id, "a hold names only an open slice"
            self.held_micros += hold.amount_micros
        self._check()

    def _back_to_slice(self, slice_id: str, amount_micros: int) -> None:
        """What a resolved hold gives back goes to its open slice (still reserved) or the wallet."""
        back = self.open_slice(slice_id)
        if back is not None:
            back.left_micros += amount_micros
            self.held_micros += amount_micros
        else:
            assert not slice_id, "a rest goes back only to an open slice"

    @event("HoldCaptured")
    def record_capture(self, hold_id: str, amount_micros: int, slice_id: str) -> None:
        hold = self.holds[hold_id]
        assert hold.status is HoldStatus.open, "a hold is captured at most once"
        assert 0 <= amount_micros <= hold.amount_micros, "a capture never exceeds its hold"
        hold.status = HoldStatus.captured
        hold.captured_micros = amount_micros
        self.held_micros -= hold.amount_micros
        self.captured_micros += amount_micros
        self._burn(amount_micros)
        self._back_to_slice(slice_id, hold.amount_micros - amount_micros)
        self._check()

    @event("SliceGranted")
    def record_slice(self, granted: Slice) -> None:
        assert granted.slice_id not in self.slices, "a slice is granted once"
        self.slices[granted.slice_id] = granted
        self.held_micros += granted.left_micros
        self._check()

    @event("SliceReturned")
    def record_slice_return(self, slice_id: str, amount_micros: int) -> None:
        returned = self.slices[slice_id]
        assert returned.open and amount_micros == returned.left_micros, "a slice returns what is left of it, once"
        returned.open = False
        returned.left_micros = 0
        self.held_micros -= amount_micros
        self._check()

    @event("JobChanged")
    def record_job(
        self,
        hold_id: str,
        run_id: str,
        run_started_at: datetime | None,
        attempts: int,
        leased: bool,
        expires_at: datetime,
        cancel_requested: bool,
    ) -> None:
        hold = self.holds[hold_id]
        assert hold.status is HoldStatus.open, "only an open hold's job changes"
        assert attempts <= hold.attempts_max, "a job never runs more often than it may"
        if hold.run_id and run_id != hold.run_id:
            hold.superseded_run_ids += (hold.run_id,)
        hold.run_id, hold.run_started_at, hold.attempts, hold.leased = run_id, run_started_at, attempts, leased
        hold.expires_at, hold.cancel_requested = expires_at, cancel_requested

    @event("HoldReleased")
    def record_release(self, hold_id: str, slice_id: str) -> None:
        hold = self.holds[hold_id]
        assert hold.status is HoldStatus.open, "only an open hold is released"
        hold.status = HoldStatus.released
        self.held_micros -= hold.amount_micros
        self._back_to_slice(slice_id, hold.amount_micros)
        self._check()

    @event("CreditsRefunded")
    def record_refund(self, refund_id: str, hold_id: str, amount_micros: int, grant: Grant) -> None:
        self.refunds[refund_id] = amount_micros
        self.holds[hold_id].refunded_micros += amount_micros
        self._credit(grant)
        self._check()

    @event("CreditsAdjusted")
    def record_adjustment(self, adjustment_id: str, amount_micros: int, grant: Grant | None) -> None:
        self.adjustments[adjustment_id] = amount_micros
        if grant is not None:
            self._credit(grant)
        else:
            self._burn(-amount_micros)
        self._check()

    @event("CreditLimitSet")
    def record_credit_limit(self, limit_micros: int) -> None:
        self.credit_limit_micros = limit_micros
        self._check()

    @event("AutoTopUpConfigured")
    def record_auto_topup(self, setting: AutoTopUp | None) -> None:
        self.auto_topup = setting
        self.auto_topup_armed = True

    @event("AutoTopUpTriggered")
    def record_auto_topup_triggered(self) -> None:
        assert self.auto_topup_armed, "a top-up triggers once per crossing of the threshold"
        self.auto_topup_armed = False

    def rearm_auto_topup(self) -> None:
        """Armed again only once the balance is back at or above the threshold."""
        if self.auto_topup is not None and self.balance_micros >= self.auto_topup.threshold_micros:
            self.auto_topup_armed = True

    def burn_sequence(self) -> int:
        return len(self.grants)


def _envelope(command: AnyCommand, now: datetime) -> dict[str, Any]:
    return {
        "occurred_at": now,
        "org_id": command.org_id,
        "correlation_id": command.correlation_id,
        "causation_id": command.command_id,
    }


def decide(wallet: Wallet, command: AnyCommand, now: datetime, prices: Prices) -> list[Event] | Rejection:
    """The events ``command`` causes against ``wallet`` at ``now``; [] for an exact duplicate."""
    if isinstance(command, PlaceHold):
        return _decide_place_hold(wallet, command, now)
    if isinstance(command, CaptureHold):
        return _decide_capture(wallet, command, now, prices)
    if isinstance(command, ReleaseHold):
        return _decide_release(wallet, command, now)
    if isinstance(command, GrantCredits):
        return _decide_grant(wallet, command, now)
    if isinstance(command, RefundCredits):
        return _decide_refund(wallet, command, now)
    if isinstance(command, AdjustCredits):
        return _decide_adjustment(wallet, command, now)
    if isinstance(command, StartJob):
        return _decide_start_job(wallet, command, now)
    if isinstance(command, CancelJob):
        return _decide_cancel_job(wallet, command, now)
    if isinstance(command, ConfigureAutoTopUp):
        return _decide_auto_topup_setting(wallet, command, now)
    if isinstance(command, GrantSlice):
        return _decide_grant_slice(wallet, command, now)
    if isinstance(command, ReturnSlice):
        return _decide_return_slice(wallet, command, now)
    if isinstance(command, ResourceCommand):
        decided = decide_resource_command(wallet, command, now, prices)
        return Rejection(decided) if isinstance(decided, str) else decided
    return _decide_credit_limit(wallet, command, now)


def _decide_grant(wallet: Wallet, command: GrantCredits, now: datetime) -> list[Event] | Rejection:
    if command.amount_micros <= 0:
        return Rejection.amount_must_be_positive
    existing = wallet.grants.get(command.grant_id)
    if existing is not None:
        return [] if existing.amount_micros == command.amount_micros else Rejection.exists_with_different_amount
    if command.expires_at is not None and command.expires_at <= now:
        return Rejection.grant_already_expired
    return [
        CreditsGranted(
            event_id=event_id_for(command.command_id, "credits.granted"),
            grant_id=command.grant_id,
            amount_micros=command.amount_micros,
            kind=command.kind,
            expires_at=command.expires_at,
            priority=command.priority,
            reference=command.reference,
            **_envelope(command, now),
        )
    ]


def _decide_place_hold(wallet: Wallet, command: PlaceHold, now: datetime) -> list[Event] | Rejection:
    if command.amount_micros <= 0:
        return Rejection.amount_must_be_positive
    existing = wallet.holds.get(command.hold_id)
    if existing is not None:
        return [] if existing.amount_micros == command.amount_micros else Rejection.exists_with_different_amount
    envelope = _envelope(command, now)
    job = command.job
    carved = wallet.open_slice(command.slice_id)
    if carved is not None and (now >= carved.expires_at or carved.left_micros < command.amount_micros):
        carved = None  # the slice cannot cover it: the wallet decides, as for any hold
    if carved is None and command.amount_micros > wallet.spendable_micros:
        # A rejected hold is still a fact on the log: the gateway answers 402 from it, audit sees it.
        return [
            HoldRejected(
                event_id=event_id_for(command.command_id, "hold.rejected"),
                hold_id=command.hold_id,
                request_id=command.request_id,
                token_id=job.token_id,
                model=job.model,
                endpoint=job.endpoint,
                code=Rejection.insufficient_credits.value,
                requested_micros=command.amount_micros,
                available_micros=wallet.spendable_micros,
                source=job.source,
                source_id=job.source_id,
                **envelope,
            )
        ]
    placed = HoldPlaced(
        event_id=event_id_for(command.command_id, "hold.placed"),
        hold_id=command.hold_id,
        request_id=command.request_id,
        job_id=job.job_id,
        token_id=job.token_id,
        model=job.model,
        endpoint=job.endpoint,
        amount_micros=command.amount_micros,
        expires_at=now + timedelta(seconds=command.ttl_s),
        price_version=command.price_version,
        pool=job.pool,
        attempts_max=job.attempts_max,
        slice_id=carved.slice_id if carved is not None else "",
        source=job.source,
        source_id=job.source_id,
        **envelope,
    )
    if job.dispatched:
        return [placed]  # the gateway queued the job itself, against its slice
    return [
        placed,
        queued_job(command, now),
    ]


def queued_job(command: PlaceHold, now: datetime) -> JobQueued:
    """The job a hold queues: the ledger's, or the one a gateway dispatched itself (the same event, with
    the same id, so that whoever writes it, it is one job)."""
    job = command.job
    return JobQueued(
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
        attempts_max=job.attempts_max,
        stream=job.stream,
        fallbacks=job.fallbacks,
        context_length=job.context_length,
        **_envelope(command, now),
    )


def _open_hold(wallet: Wallet, hold_id: str) -> Hold | Rejection:
    hold = wallet.holds.get(hold_id)
    if hold is None:
        return Rejection.hold_not_found
    if hold.status is HoldStatus.captured:
        return Rejection.hold_already_captured
    if hold.status is HoldStatus.released:
        return Rejection.hold_already_released
    return hold


def _has_negative(units: Units) -> bool:
    return min(unit_quantities(units)) < 0


def _lapsed_lease_gets_grace(hold: Hold) -> bool:
    """Whether a run's lease that runs out keeps the hold open one more time-to-live
    (``JobLeaseLost``): for a redelivery to another run, or for a cancelled run's late capture. A job
    that used up its attempts (and was not cancelled) is dead-lettered instead."""
    return hold.leased and (hold.cancel_requested or hold.attempts < hold.attempts_max)


def _late_run_capture(hold: Hold, now: datetime) -> bool:
    """A capture after its run's lease ran out, read before the ledger decided that expiry: the expiry
    would keep the hold open one more time-to-live (see decide_expiry), so the run's work is charged
    now as it would be then. Whichever of the two the ledger reads first, the answer is the same (a
    broker outage decides that order)."""
    grace_ends = hold.expires_at + timedelta(seconds=max(hold.ttl_s, 1))
    return _lapsed_lease_gets_grace(hold) and now < grace_ends


def _decide_capture(wallet: Wallet, command: CaptureHold, now: datetime, prices: Prices) -> list[Event] | Rejection:
    hold = _open_hold(wallet, command.hold_id)
    if isinstance(hold, Rejection):
        return hold
    if now >= hold.expires_at and not _late_run_capture(hold, now):
        # Past its time-to-live the hold no longer reserves anything; the expiry event releases it.
        return Rejection.hold_expired
    units = command.units
    if _has_negative(units):
        return Rejection.units_must_not_be_negative
    book = prices.at_version(hold.price_version)
    if book is None:
        return Rejection.price_version_unknown
    served = command.model or hold.model
    if not book.may_serve(hold.model, served):
        return Rejection.model_not_a_fallback
    price = book.model(served)
    if price is None:
        return Rejection.model_not_priced
    # The model that served prices the work, capped by the hold (which covers the priciest fallback).
    priced = price_micros(price, units)
    charged = min(priced, hold.amount_micros)
    plan, _ = burn_plan(list(wallet.grants.values()), charged)
    back = wallet.open_slice(hold.slice_id)
    return [
        HoldCaptured(
            event_id=event_id_for(command.command_id, "hold.captured"),
            hold_id=hold.hold_id,
            request_id=hold.request_id,
            job_id=hold.job_id,
            token_id=hold.token_id,
            model=served,
            endpoint=hold.endpoint,
            amount_micros=charged,
            released_micros=hold.amount_micros - charged,
            priced_micros=priced,
            price_version=book.version,
            units=units,
            latency_ms=command.latency_ms,
            grant_burns=tuple(GrantBurn(grant_id=g.grant_id, amount_micros=take) for g, take in plan),
            slice_id=back.slice_id if back is not None else "",
            requested_model=hold.model if served != hold.model else "",
            source=hold.source,
            source_id=hold.source_id,
            **_envelope(command, now),
        )
    ]


def _released(wallet: Wallet, hold: Hold, event_id: str, now: datetime, reason: str, causation: str) -> HoldReleased:
    back = wallet.open_slice(hold.slice_id)
    return HoldReleased(
        event_id=event_id,
        occurred_at=now,
        org_id=wallet.org_id,
        correlation_id=hold.request_id,
        causation_id=causation,
        hold_id=hold.hold_id,
        request_id=hold.request_id,
        token_id=hold.token_id,
        model=hold.model,
        endpoint=hold.endpoint,
        amount_micros=hold.amount_micros,
        reason=reason,
        slice_id=back.slice_id if back is not None else "",
        source=hold.source,
        source_id=hold.source_id,
    )


def _decide_release(wallet: Wallet, command: ReleaseHold, now: datetime) -> list[Event] | Rejection:
    hold = _open_hold(wallet, command.hold_id)
    if isinstance(hold, Rejection):
        return hold
    event_id = event_id_for(command.command_id, "hold.released")
    return [_released(wallet, hold, event_id, now, command.reason, command.command_id)]


def _job_envelope(wallet: Wallet, hold: Hold, now: datetime, causation: str) -> dict[str, Any]:
    return {
        "occurred_at": now,
        "org_id": wallet.org_id,
        "correlation_id": hold.request_id,
        "causation_id": causation,
        "hold_id": hold.hold_id,
        "job_id": hold.job_id,
        "request_id": hold.request_id,
    }


def _dead_lettered(wallet: Wallet, hold: Hold, now: datetime, cause: str, code: str) -> list[Event]:
    """The job used up its runs: say so (the worker still running it stops) and release the hold."""
    return [
        JobDeadLettered(
            event_id=event_id_for(cause, "job.dead_lettered"),
            pool=hold.pool,
            attempts=hold.attempts,
            code=code,
            **_job_envelope(wallet, hold, now, cause),
        ),
        _released(wallet, hold, event_id_for(cause, "hold.released"), now, dead_letter_reason, cause),
    ]


def _decide_start_job(wallet: Wallet, command: StartJob, now: datetime) -> list[Event] | Rejection:
    """A run takes (new ``run_id``) or renews (same ``run_id``) the lease on its hold's job; a run past
    the job's allowed attempts dead-letters it instead. Runs are counted here, not by workers, so a job
    that kills every worker that takes it still ends.

    A run holds its lease for at most the hold's time-to-live from when it took it: heartbeats come
    from a worker's polling thread, so they would keep a hung backend's hold open for ever. Past that
    end a renewal is ``hold_expired``, and the lease runs out like any other."""
    if command.lease_s <= 0:
        return Rejection.lease_must_be_positive
    hold = _open_hold(wallet, command.hold_id)
    if isinstance(hold, Rejection):
        return hold
    if now >= hold.expires_at:
        return Rejection.hold_expired
    if hold.cancel_requested:
        return Rejection.job_cancelled
    if command.run_id in hold.superseded_run_ids:
        # A run whose lease was lost and that a later run replaced: its heartbeats must not count as
        # new attempts (two live runs taking turns would dead-letter a job that is working).
        return Rejection.run_superseded
    renewal = command.run_id == hold.run_id
    attempt = hold.attempts if renewal else hold.attempts + 1
    if attempt > hold.attempts_max:
        return _dead_lettered(wallet, hold, now, command.command_id, "attempts_exhausted")
    run_started_at = hold.run_started_at if renewal and hold.run_started_at is not None else now
    run_ends_at = run_started_at + timedelta(seconds=max(hold.ttl_s, 1))
    return [
        JobLeased(
            event_id=event_id_for(command.command_id, "job.leased"),
            worker_id=command.worker_id,
            run_id=command.run_id,
            attempt=attempt,
            lease_expires_at=min(now + timedelta(seconds=command.lease_s), run_ends_at),
            **_job_envelope(wallet, hold, now, command.command_id),
        )
    ]


def _decide_cancel_job(wallet: Wallet, command: CancelJob, now: datetime) -> list[Event] | Rejection:
    """Cancel: a job no run holds is released at once; a running one stops at its next progress point
    and its run captures the work done (or its lease runs out and the hold is released as cancelled a
    time-to-live later, see decide_expiry)."""
    hold = _open_hold(wallet, command.hold_id)
    if isinstance(hold, Rejection):
        return hold
    if hold.cancel_requested:
        return []
    requested: list[Event] = [
        JobCancelRequested(
            event_id=event_id_for(command.command_id, "job.cancel_requested"),
            pool=hold.pool,
            reason=command.reason,
            **_job_envelope(wallet, hold, now, command.command_id),
        )
    ]
    if hold.leased:
        return requested
    released = _released(
        wallet, hold, event_id_for(command.command_id, "hold.released"), now, cancelled_reason, command.command_id
    )
    return [*requested, released]


def _decide_refund(wallet: Wallet, command: RefundCredits, now: datetime) -> list[Event] | Rejection:
    if command.amount_micros <= 0:
        return Rejection.amount_must_be_positive
    existing = wallet.refunds.get(command.refund_id)
    if existing is not None:
        return [] if existing == command.amount_micros else Rejection.exists_with_different_amount
    hold = wallet.holds.get(command.reference)
    if hold is None or hold.status is not HoldStatus.captured:
        return Rejection.reference_not_found
    if hold.refunded_micros + command.amount_micros > hold.captured_micros:
        return Rejection.refund_exceeds_charge
    return [
        CreditsRefunded(
            event_id=event_id_for(command.command_id, "credits.refunded"),
            refund_id=command.refund_id,
            amount_micros=command.amount_micros,
            reason=command.reason,
            reference=command.reference,
            **_envelope(command, now),
        )
    ]


def _decide_adjustment(wallet: Wallet, command: AdjustCredits, now: datetime) -> list[Event] | Rejection:
    if command.amount_micros == 0:
        return Rejection.amount_must_not_be_zero
    existing = wallet.adjustments.get(command.adjustment_id)
    if existing is not None:
        return [] if existing == command.amount_micros else Rejection.exists_with_different_amount
    if command.amount_micros < 0 and -command.amount_micros > wallet.spendable_micros:
        return Rejection.insufficient_credits
    return [
        CreditsAdjusted(
            event_id=event_id_for(command.command_id, "credits.adjusted"),
            adjustment_id=command.adjustment_id,
            amount_micros=command.amount_micros,
            reason=command.reason,
            reference=command.reference,
            **_envelope(command, now),
        )
    ]


def _decide_credit_limit(wallet: Wallet, command: SetCreditLimit, now: datetime) -> list[Event] | Rejection:
    if command.limit_micros < 0:
        return Rejection.limit_must_not_be_negative
    if command.limit_micros == wallet.credit_limit_micros:
        return []
    if wallet.available_micros + command.limit_micros < 0:
        return Rejection.limit_below_current_use
    return [
        CreditLimitSet(
            event_id=event_id_for(command.command_id, "credit_limit.set"),
            limit_micros=command.limit_micros,
            **_envelope(command, now),
        )
    ]


def _decide_auto_topup_setting(wallet: Wallet, command: ConfigureAutoTopUp, now: datetime) -> list[Event] | Rejection:
    if command.enabled:
        one_way = (command.amount_micros > 0) != (command.target_micros > 0)
        if command.threshold_micros < 0 or not one_way or 0 < command.target_micros <= command.threshold_micros:
            return Rejection.invalid_auto_topup
    return [
        AutoTopUpConfigured(
            event_id=event_id_for(command.command_id, "auto_topup.configured"),
            enabled=command.enabled,
            threshold_micros=command.threshold_micros,
            amount_micros=command.amount_micros,
            target_micros=command.target_micros,
            **_envelope(command, now),
        )
    ]


slice_share_of_spendable = 2  # a slice takes at most half of what is spendable: room for others


def _decide_grant_slice(wallet: Wallet, command: GrantSlice, now: datetime) -> list[Event] | Rejection:
    """A slice of what is spendable for one gateway instance: at most its share, at least the asked
    minimum (else the gateway sends its requests to the ledger one by one)."""
    if command.amount_micros <= 0 or command.minimum_micros <= 0:
        return Rejection.amount_must_be_positive
    if command.ttl_s <= 0:
        return Rejection.ttl_must_be_positive
    existing = wallet.slices.get(command.slice_id)
    if existing is not None:
        return [] if existing.instance_id == command.instance_id else Rejection.exists_with_different_amount
    share = wallet.spendable_micros // slice_share_of_spendable
    amount = command.amount_micros if command.whole else min(command.amount_micros, share)
    if amount < command.minimum_micros or amount > wallet.spendable_micros:
        return Rejection.insufficient_credits
    return [
        SliceGranted(
            event_id=event_id_for(command.command_id, "slice.granted"),
            slice_id=command.slice_id,
            instance_id=command.instance_id,
            amount_micros=amount,
            expires_at=now + timedelta(seconds=command.ttl_s),
            **_envelope(command, now),
        )
    ]


def _slice_returned(
    wallet: Wallet, found: Slice, event_id: str, now: datetime, reason: str, cause: str
) -> SliceReturned:
    return SliceReturned(
        event_id=event_id,
        occurred_at=now,
        org_id=wallet.org_id,
        causation_id=cause,
        slice_id=found.slice_id,
        instance_id=found.instance_id,
        amount_micros=found.left_micros,
        reason=reason,
    )


def _decide_return_slice(wallet: Wallet, command: ReturnSlice, now: datetime) -> list[Event] | Rejection:
    found = wallet.slices.get(command.slice_id)
    if found is None:
        return Rejection.slice_not_found
    if not found.open:
        return []  # returned or expired already
    return [
        _slice_returned(
            wallet, found, event_id_for(command.command_id, "slice.returned"), now, "returned", command.command_id
        )
    ]


def decide_slice_expiry(wallet: Wallet, slice_id: str, now: datetime) -> list[Event]:
    """What is left of a slice whose gateway neither used nor returned it in time goes back to the
    wallet (a gateway that died); [] when it is closed already or not yet due."""
    found = wallet.slices.get(slice_id)
    if found is None or not found.open or now < found.expires_at:
        return []
    return [
        _slice_returned(
            wallet, found, event_id_for(f"expire-slice:{slice_id}", "slice.returned"), now, "expired", slice_id
        )
    ]


def decide_auto_topup(wallet: Wallet, now: datetime, cause_id: str) -> list[Event]:
    """Top up once when the balance has fallen below the threshold (the settled balance: a hold that
    dips below it for the length of one request is no reason to charge a card). The card on file is
    assumed to pay at once, so the paid grant follows the trigger in the same decision."""
    setting = wallet.auto_topup
    if setting is None or not wallet.auto_topup_armed or wallet.balance_micros >= setting.threshold_micros:
        return []
    amount = setting.amount_for(wallet.balance_micros)
    topup_id = event_id_for(cause_id, "auto_topup")
    grant_id = f"topup_{topup_id}"
    envelope: dict[str, Any] = {"occurred_at": now, "org_id": wallet.org_id, "causation_id": cause_id}
    return [
        AutoTopUpTriggered(
            event_id=event_id_for(cause_id, "auto_topup.triggered"),
            topup_id=topup_id,
            grant_id=grant_id,
            amount_micros=amount,
            balance_micros=wallet.balance_micros,
            **envelope,
        ),
        CreditsGranted(
            event_id=event_id_for(cause_id, "auto_topup.granted"),
            grant_id=grant_id,
            amount_micros=amount,
            kind="paid",
            reference=topup_id,
            **envelope,
        ),
    ]


def decide_expiry(wallet: Wallet, hold_id: str, now: datetime) -> list[Event]:
    """What a hold's due time means; [] when it is resolved already or not yet due.

    - a job that waited its whole time-to-live without a run: released (``hold_expired``);
    - a lease that ran out (no heartbeat): ``JobLeaseLost``, and the hold waits one more time-to-live
      for the log to redeliver the job to another run, unless the job used up its attempts
      (dead-lettered);
    - a cancelled job's lease that ran out: ``JobLeaseLost`` too, and the hold is released as
      cancelled at the end of that time-to-live. The run that held the lease may have finished in
      time and its capture be late (a broker or ledger outage holds it back): until then it is
      still charged, once, for the work done (a cancelled job is never run again).
    """
    hold = wallet.holds.get(hold_id)
    if hold is None or hold.status is not HoldStatus.open or now < hold.expires_at:
        return []
    cause = f"expire:{hold.hold_id}:{hold.attempts}:{hold.leased}"
    if hold.leased and not _lapsed_lease_gets_grace(hold):
        return _dead_lettered(wallet, hold, now, cause, "lease_expired")
    if hold.leased:
        return [
            JobLeaseLost(
                event_id=event_id_for(cause, "job.lease_lost"),
                attempt=hold.attempts,
                expires_at=now + timedelta(seconds=max(hold.ttl_s, 1)),
                **_job_envelope(wallet, hold, now, hold.hold_id),
            )
        ]
    reason = cancelled_reason if hold.cancel_requested else hold_expired_reason
    return [_released(wallet, hold, event_id_for(cause, "hold.released"), now, reason, hold.hold_id)]


def decide_grant_expiry(wallet: Wallet, grant_id: str, now: datetime) -> list[Event]:
    """Move a due grant's remainder to breakage, except what open holds still need (see module doc)."""
    grant = wallet.grants.get(grant_id)
    if grant is None or grant.expires_at is None or now < grant.expires_at or grant.remaining_micros == 0:
        return []
    # Holds are backed by grants before the credit line, so only money no hold needs may break.
    amount = min(grant.remaining_micros, max(wallet.available_micros, 0))
    if amount == 0 and grant.expired:
        return []
    # A first expiry is recorded even when holds need all of it (amount 0): from then on the grant
    # burns first and breaks as soon as those holds resolve.
    step = grant.amount_micros - grant.remaining_micros + amount  # unique per partial expiry of one grant
    return [
        GrantExpired(
            event_id=event_id_for(f"expire-grant:{grant_id}:{step}", "grant.expired"),
            occurred_at=now,
            org_id=wallet.org_id,
            causation_id=grant_id,
            grant_id=grant_id,
            amount_micros=amount,
        )
    ]


def _grant(event: CreditsGranted, sequence: int) -> Grant:
    return Grant(
        grant_id=event.grant_id,
        kind=event.kind,
        amount_micros=event.amount_micros,
        remaining_micros=event.amount_micros,
        expires_at=event.expires_at,
        priority=event.priority,
        sequence=sequence,
    )


def _replayed(name: str) -> Any:
    """The body of one of ``Wallet``'s ``@event`` methods, run as eventsourcing runs it when it
    replays a stored event. Calling the method instead records a new domain event first, only for
    ``evolve`` to drop it (Kafka, not the aggregate, stores our events): 11 µs of an evolve's 18
    in ``bench/replay.py``'s micro stage, and the largest cost of every fold of the log."""
    decorator = Wallet.__dict__[name]
    assert isinstance(decorator, CommandMethodDecorator), f"Wallet.{name} is an @event method"
    return decorator.decorated_func


_record_grant = _replayed("record_grant")
_record_grant_expiry = _replayed("record_grant_expiry")
_record_hold = _replayed("record_hold")
_record_capture = _replayed("record_capture")
_record_job = _replayed("record_job")
_record_release = _replayed("record_release")
_record_refund = _replayed("record_refund")
_record_adjustment = _replayed("record_adjustment")
_record_credit_limit = _replayed("record_credit_limit")
_record_auto_topup = _replayed("record_auto_topup")
_record_auto_topup_triggered = _replayed("record_auto_topup_triggered")
_record_slice = _replayed("record_slice")
_record_slice_return = _replayed("record_slice_return")


def evolve(wallet: Wallet, event: Event) -> None:
    """Apply one decided ledger event to the wallet (the bodies of its ``@event`` methods)."""
    if isinstance(event, HoldCaptured):
        _record_capture(wallet, event.hold_id, event.amount_micros, event.slice_id)
    elif isinstance(event, HoldPlaced):
        _record_hold(
            wallet,
            Hold(
                hold_id=event.hold_id,
                request_id=event.request_id,
                job_id=event.job_id,
                token_id=event.token_id,
                model=event.model,
                endpoint=event.endpoint,
                amount_micros=event.amount_micros,
                expires_at=event.expires_at,
                price_version=event.price_version,
                pool=event.pool,
                ttl_s=int((event.expires_at - event.occurred_at).total_seconds()),
                attempts_max=event.attempts_max,
                slice_id=event.slice_id,
                source=event.source,
                source_id=event.source_id,
            ),
        )
    elif isinstance(event, JobLeased):
        hold = wallet.holds[event.hold_id]
        new_run = event.run_id != hold.run_id or hold.run_started_at is None
        started_at = event.occurred_at if new_run else hold.run_started_at
        _record_job(
            wallet,
            hold.hold_id,
            event.run_id,
            started_at,
            event.attempt,
            True,
            event.lease_expires_at,
            hold.cancel_requested,
        )
    elif isinstance(event, JobLeaseLost):
        hold = wallet.holds[event.hold_id]
        _record_job(
            wallet,
            hold.hold_id,
            hold.run_id,
            hold.run_started_at,
            hold.attempts,
            False,
            event.expires_at,
            hold.cancel_requested,
        )
    elif isinstance(event, JobCancelRequested):
        hold = wallet.holds[event.hold_id]
        _record_job(
            wallet,
            hold.hold_id,
            hold.run_id,
            hold.run_started_at,
            hold.attempts,
            hold.leased,
            hold.expires_at,
            True,
        )
    elif isinstance(event, HoldReleased):
        _record_release(wallet, event.hold_id, event.slice_id)
    elif isinstance(event, SliceGranted):
        granted = Slice(event.slice_id, event.instance_id, event.amount_micros, event.amount_micros, event.expires_at)
        _record_slice(wallet, granted)
    elif isinstance(event, SliceReturned):
        _record_slice_return(wallet, event.slice_id, event.amount_micros)
    elif isinstance(event, CreditsGranted):
        _record_grant(wallet, _grant(event, wallet.burn_sequence()))
    elif isinstance(event, GrantExpired):
        _record_grant_expiry(wallet, event.grant_id, event.amount_micros)
    elif isinstance(event, CreditsRefunded):
        refund = Grant(
            grant_id=event.refund_id,
            kind="refund",
            amount_micros=event.amount_micros,
            remaining_micros=event.amount_micros,
            expires_at=None,
            priority=0,
            sequence=wallet.burn_sequence(),
        )
        _record_refund(wallet, event.refund_id, event.reference, event.amount_micros, refund)
    elif isinstance(event, CreditsAdjusted):
        credit = None
        if event.amount_micros > 0:
            credit = Grant(
                grant_id=event.adjustment_id,
                kind="adjustment",
                amount_micros=event.amount_micros,
                remaining_micros=event.amount_micros,
                expires_at=None,
                priority=0,
                sequence=wallet.burn_sequence(),
            )
        _record_adjustment(wallet, event.adjustment_id, event.amount_micros, credit)
    elif isinstance(event, CreditLimitSet):
        _record_credit_limit(wallet, event.limit_micros)
    elif isinstance(event, AutoTopUpConfigured):
        setting = AutoTopUp(event.threshold_micros, event.amount_micros, event.target_micros) if event.enabled else None
        _record_auto_topup(wallet, setting)
    elif isinstance(event, AutoTopUpTriggered):
        _record_auto_topup_triggered(wallet)
    elif isinstance(event, ResourceEvent):
        evolve_resource_event(wallet, event)
    if not wallet.auto_topup_armed:
        wallet.rearm_auto_topup()
    # HoldRejected and JobQueued change no balance.
    # A new Wallet holds its own creation event until collected; Kafka is our store, so drop it.
    wallet.collect_events()
