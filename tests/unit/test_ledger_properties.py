"""Property tests: random command sequences against one wallet, checked against a small reference
model and the double-entry book after every step; then the same invariants through the ledger role.

The reference model below is written from the money model in ledger/wallet.py's docstring, with
plain dicts and ints; it never calls the wallet's internals. The one protocol detail it takes from
the code: a grant's first GrantExpired is emitted when it falls due even if open holds need all of
it (amount 0), and from then on the grant is "already expired" in burn order.

The tests after the properties pin single cases found while writing them (each was a bug, now fixed).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import event as record_event
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from eventlog import topics
from eventlog.embedded import EmbeddedLog
from eventlog.settings import Settings
from ledger.accounts import Book, breakage, held_account, revenue, wallet_account
from ledger.pricing import default_price_book
from ledger.role import LedgerRole
from ledger.wallet import Rejection, Wallet, decide, decide_expiry, decide_grant_expiry, decide_slice_expiry, evolve
from schemas.codec import decode_event, encode
from schemas.commands import (
    AdjustCredits,
    AnyCommand,
    CaptureHold,
    ConfigureAutoTopUp,
    GrantCredits,
    GrantSlice,
    JobSpec,
    PlaceHold,
    RefundCredits,
    ReleaseHold,
    ReturnSlice,
    SetCreditLimit,
)
from schemas.events import (
    AutoTopUpTriggered,
    CommandRejected,
    CreditLimitSet,
    CreditsAdjusted,
    CreditsGranted,
    CreditsRefunded,
    Event,
    GrantExpired,
    HoldCaptured,
    HoldPlaced,
    HoldRejected,
    HoldReleased,
    JobQueued,
    SliceGranted,
    SliceReturned,
)
from schemas.units import Units
from tests.support import examples

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
ORG = "org_prop"
PRICES = default_price_book()
MODEL = "sim-chat-small"
UNPRICED = "no-such-model"
_small = PRICES.models[MODEL]  # rates only (data); the reference prices with its own arithmetic
_far_future = datetime.max.replace(tzinfo=UTC)

# --- the reference model ----------------------------------------------------------------------------

Summary = tuple[Any, ...]  # one event as the fields that matter, or ("rejected", code)


@dataclass
class RefGrant:
    kind: str  # paid, promo, refund, adjustment
    amount: int
    remaining: int
    expires_at: datetime | None
    priority: int
    seq: int
    expired: bool = False


@dataclass
class RefHold:
    amount: int
    expires_at: datetime
    model: str
    status: str = "open"  # open, captured, released
    captured: int = 0
    refunded: int = 0
    slice_id: str = ""


@dataclass
class RefSlice:
    """A slice of the balance reserved for a gateway: holds are carved out of it, their rests go back."""

    left: int
    expires_at: datetime
    open: bool = True


def ref_price(input_tokens: int, output_tokens: int) -> int:
    """Tokens x rate per million, rounded up once, then the minimum charge."""
    scaled = input_tokens * _small.input_token_rate + output_tokens * _small.output_token_rate
    return max((scaled + 999_999) // 1_000_000, _small.minimum_charge_micros)


class Reference:
    def __init__(self) -> None:
        self.grants: dict[str, RefGrant] = {}
        self.holds: dict[str, RefHold] = {}
        self.slices: dict[str, RefSlice] = {}
        self.refunds: dict[str, int] = {}
        self.adjustments: dict[str, int] = {}
        self.debt = 0
        self.limit = 0
        self.revenue = 0
        self.breakage = 0
        self._seq = 0

    @property
    def balance(self) -> int:
        return sum(g.remaining for g in self.grants.values()) - self.debt

    @property
    def held(self) -> int:
        holds = sum(h.amount for h in self.holds.values() if h.status == "open")
        return holds + sum(s.left for s in self.slices.values() if s.open)

    def _back(self, hold: RefHold, amount: int) -> str:
        """A resolved hold's rest goes back to its slice while that is open; the slice's id, or ""."""
        found = self.slices.get(hold.slice_id)
        if found is not None and found.open:
            found.left += amount
            return hold.slice_id
        return ""

    @property
    def spendable(self) -> int:
        return self.balance - self.held + self.limit

    def _credit(self, grant_id: str, kind: str, amount: int, expires_at: datetime | None, priority: int) -> None:
        repaid = min(self.debt, amount)  # a new grant repays debt first
        self.debt -= repaid
        self.grants[grant_id] = RefGrant(kind, amount, amount - repaid, expires_at, priority, self._seq)
        self._seq += 1

    def _burn(self, amount: int) -> tuple[tuple[str, int], ...]:
        def order(item: tuple[str, RefGrant]) -> tuple[bool, int, bool, datetime, int]:
            g = item[1]
            return (not g.expired, -g.priority, g.kind != "promo", g.expires_at or _far_future, g.seq)

        burns = []
        left = amount
        for grant_id, g in sorted(self.grants.items(), key=order):
            if left == 0:
                break
            if g.remaining == 0:
                continue
            take = min(g.remaining, left)
            g.remaining -= take
            left -= take
            burns.append((grant_id, take))
        self.debt += left
        return tuple(burns)

    def decide(self, command: AnyCommand, now: datetime) -> list[Summary]:
        """The expected outcome, as summaries; also applies it to the reference."""
        if isinstance(command, GrantCredits):
            if command.amount_micros <= 0:
                return [("rejected", "amount_must_be_positive")]
            if command.grant_id in self.grants:
                same = self.grants[command.grant_id].amount == command.amount_micros
                return [] if same else [("rejected", "exists_with_different_amount")]
            if command.expires_at is not None and command.expires_at <= now:
                return [("rejected", "grant_already_expired")]
            self._credit(command.grant_id, command.kind, command.amount_micros, command.expires_at, command.priority)
            return [("CreditsGranted", command.grant_id, command.amount_micros)]
        if isinstance(command, PlaceHold):
            if command.amount_micros <= 0:
                return [("rejected", "amount_must_be_positive")]
            if command.hold_id in self.holds:
                same = self.holds[command.hold_id].amount == command.amount_micros
                return [] if same else [("rejected", "exists_with_different_amount")]
            carved = self.slices.get(command.slice_id)
            if carved is None or not carved.open or now >= carved.expires_at or carved.left < command.amount_micros:
                carved = None
            if carved is None and command.amount_micros > self.spendable:
                code = "insufficient_credits"
                return [("HoldRejected", command.hold_id, code, command.amount_micros, self.spendable)]
            expires_at = now + timedelta(seconds=command.ttl_s)
            slice_id = command.slice_id if carved is not None else ""
            if carved is not None:
                carved.left -= command.amount_micros
            self.holds[command.hold_id] = RefHold(
                command.amount_micros, expires_at, command.job.model, slice_id=slice_id
            )
            placed = ("HoldPlaced", command.hold_id, command.amount_micros, expires_at, slice_id)
            return [placed] if command.job.dispatched else [placed, ("JobQueued", command.hold_id)]
        if isinstance(command, GrantSlice):
            if command.amount_micros <= 0 or command.minimum_micros <= 0:
                return [("rejected", "amount_must_be_positive")]
            if command.ttl_s <= 0:
                return [("rejected", "ttl_must_be_positive")]
            if command.slice_id in self.slices:
                return []  # one instance in these programs: a repeat is a duplicate
            amount = min(command.amount_micros, self.spendable // 2)
            if amount < command.minimum_micros:
                return [("rejected", "insufficient_credits")]
            expires_at = now + timedelta(seconds=command.ttl_s)
            self.slices[command.slice_id] = RefSlice(amount, expires_at)
            return [("SliceGranted", command.slice_id, amount, expires_at)]
        if isinstance(command, ReturnSlice):
            found = self.slices.get(command.slice_id)
            if found is None:
                return [("rejected", "slice_not_found")]
            if not found.open:
                return []
            left, found.left, found.open = found.left, 0, False
            return [("SliceReturned", command.slice_id, left, "returned")]
        if isinstance(command, (CaptureHold, ReleaseHold)):
            hold = self.holds.get(command.hold_id)
            if hold is None:
                return [("rejected", "hold_not_found")]
            if hold.status != "open":
                return [("rejected", f"hold_already_{hold.status}")]
            if isinstance(command, ReleaseHold):
                hold.status = "released"
                back = self._back(hold, hold.amount)
                return [("HoldReleased", command.hold_id, hold.amount, command.reason, back)]
            if now >= hold.expires_at:
                return [("rejected", "hold_expired")]
            units = command.units
            if units.input_tokens < 0 or units.output_tokens < 0:
                return [("rejected", "units_must_not_be_negative")]
            if hold.model != MODEL:
                return [("rejected", "model_not_priced")]
            priced = ref_price(units.input_tokens, units.output_tokens)
            charged = min(priced, hold.amount)
            hold.status, hold.captured = "captured", charged
            self.revenue += charged
            burns = self._burn(charged)
            back = self._back(hold, hold.amount - charged)
            return [("HoldCaptured", command.hold_id, charged, hold.amount - charged, priced, burns, back)]
        if isinstance(command, RefundCredits):
            if command.amount_micros <= 0:
                return [("rejected", "amount_must_be_positive")]
            if command.refund_id in self.refunds:
                same = self.refunds[command.refund_id] == command.amount_micros
                return [] if same else [("rejected", "exists_with_different_amount")]
            hold = self.holds.get(command.reference)
            if hold is None or hold.status != "captured":
                return [("rejected", "reference_not_found")]
            if hold.refunded + command.amount_micros > hold.captured:
                return [("rejected", "refund_exceeds_charge")]
            hold.refunded += command.amount_micros
            self.refunds[command.refund_id] = command.amount_micros
            self._credit(command.refund_id, "refund", command.amount_micros, None, 0)
            return [("CreditsRefunded", command.refund_id, command.reference, command.amount_micros)]
        if isinstance(command, AdjustCredits):
            amount = command.amount_micros
            if amount == 0:
                return [("rejected", "amount_must_not_be_zero")]
            if command.adjustment_id in self.adjustments:
                same = self.adjustments[command.adjustment_id] == amount
                return [] if same else [("rejected", "exists_with_different_amount")]
            if amount < 0 and -amount > self.spendable:
                return [("rejected", "insufficient_credits")]
            self.adjustments[command.adjustment_id] = amount
            if amount > 0:
                self._credit(command.adjustment_id, "adjustment", amount, None, 0)
            else:
                self._burn(-amount)
            return [("CreditsAdjusted", command.adjustment_id, amount)]
        assert isinstance(command, SetCreditLimit)
        if command.limit_micros < 0:
            return [("rejected", "limit_must_not_be_negative")]
        if command.limit_micros == self.limit:
            return []
        if self.balance - self.held + command.limit_micros < 0:
            return [("rejected", "limit_below_current_use")]
        self.limit = command.limit_micros
        return [("CreditLimitSet", command.limit_micros)]

    def expire_hold(self, hold_id: str, now: datetime) -> list[Summary]:
        hold = self.holds[hold_id]
        if hold.status != "open" or now < hold.expires_at:
            return []
        hold.status = "released"
        back = self._back(hold, hold.amount)
        return [("HoldReleased", hold_id, hold.amount, "hold_expired", back)]

    def expire_slice(self, slice_id: str, now: datetime) -> list[Summary]:
        found = self.slices[slice_id]
        if not found.open or now < found.expires_at:
            return []
        left, found.left, found.open = found.left, 0, False
        return [("SliceReturned", slice_id, left, "expired")]

    def expire_grant(self, grant_id: str, now: datetime) -> list[Summary]:
        g = self.grants[grant_id]
        if g.expires_at is None or now < g.expires_at or g.remaining == 0:
            return []
        # Open holds are backed by grants before the credit line: only what no hold needs breaks.
        amount = min(g.remaining, max(self.balance - self.held, 0))
        if amount == 0 and g.expired:
            return []
        # The first expiry is a fact even when the holds need all of it: from then on the grant is
        # "already expired" (burns first) and breaks as those holds resolve.
        g.remaining -= amount
        g.expired = True
        self.breakage += amount
        return [("GrantExpired", grant_id, amount)]


def label(text: str) -> None:
    """Count outcomes for --hypothesis-show-statistics (and allow running a case by hand)."""
    if currently_in_test_context():
        record_event(text)


def summary(event: Event) -> Summary:
    if isinstance(event, CreditsGranted):
        return ("CreditsGranted", event.grant_id, event.amount_micros)
    if isinstance(event, HoldPlaced):
        return ("HoldPlaced", event.hold_id, event.amount_micros, event.expires_at, event.slice_id)
    if isinstance(event, JobQueued):
        return ("JobQueued", event.hold_id)
    if isinstance(event, HoldRejected):
        return ("HoldRejected", event.hold_id, event.code, event.requested_micros, event.available_micros)
    if isinstance(event, HoldCaptured):
        burns = tuple((b.grant_id, b.amount_micros) for b in event.grant_burns)
        return (
            "HoldCaptured",
            event.hold_id,
            event.amount_micros,
            event.released_micros,
            event.priced_micros,
            burns,
            event.slice_id,
        )
    if isinstance(event, HoldReleased):
        return ("HoldReleased", event.hold_id, event.amount_micros, event.reason, event.slice_id)
    if isinstance(event, SliceGranted):
        return ("SliceGranted", event.slice_id, event.amount_micros, event.expires_at)
    if isinstance(event, SliceReturned):
        return ("SliceReturned", event.slice_id, event.amount_micros, event.reason)
    if isinstance(event, CreditsRefunded):
        return ("CreditsRefunded", event.refund_id, event.reference, event.amount_micros)
    if isinstance(event, CreditsAdjusted):
        return ("CreditsAdjusted", event.adjustment_id, event.amount_micros)
    if isinstance(event, CreditLimitSet):
        return ("CreditLimitSet", event.limit_micros)
    if isinstance(event, GrantExpired):
        return ("GrantExpired", event.grant_id, event.amount_micros)
    raise AssertionError(f"unexpected event {event!r}")


def summaries(result: list[Event] | Rejection) -> list[Summary]:
    if isinstance(result, Rejection):
        return [("rejected", result.value)]
    return [summary(e) for e in result]


# --- commands from generated operations ---------------------------------------------------------------

Op = tuple[Any, ...]


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Pick a strategy by weight (one_of picks its branches evenly and drops repeated ones)."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda i: table[i])


def amounts(high: int, invalid: tuple[int, ...] = (-1, 0)) -> st.SearchStrategy[int]:
    """Mostly valid amounts, now and then an invalid one."""
    return weighted((9, st.integers(1, high)), (1, st.sampled_from(invalid)))


hold_ids = st.sampled_from([f"h{i}" for i in range(5)])
known_or_unknown_hold = weighted((9, hold_ids), (1, st.just("h-unknown")))
grants = st.tuples(
    st.just("grant"),
    st.sampled_from(["g0", "g1", "g2", "g3"]),
    amounts(60_000),
    st.sampled_from(["paid", "promo"]),
    st.one_of(st.none(), st.integers(-30, 600)),  # expiry, seconds from now
    st.integers(0, 3),  # priority
)
slice_ids = st.sampled_from(["s0", "s1", "s2"])
places = st.tuples(
    st.just("place"),
    hold_ids,
    amounts(25_000),
    st.integers(1, 400),  # ttl_s
    weighted((9, st.just(MODEL)), (1, st.just(UNPRICED))),
    weighted((1, st.just("")), (1, slice_ids)),  # against a gateway's slice (carved out of it if it covers it)
)
slices = st.tuples(
    st.just("slice"),
    slice_ids,
    amounts(80_000),
    weighted((9, st.integers(1, 3_000)), (1, st.just(0))),  # the least the gateway can use
    weighted((9, st.integers(1, 300)), (1, st.just(0))),  # ttl_s
)
captures = st.tuples(
    st.just("capture"),
    known_or_unknown_hold,
    weighted((9, st.integers(0, 40_000)), (1, st.just(-1))),  # input tokens; -1 is refused
    st.integers(0, 40_000),  # output tokens
)
refunds = st.tuples(st.just("refund"), st.sampled_from(["r0", "r1", "r2"]), hold_ids, amounts(12_000))
advances = st.tuples(st.just("advance"), st.integers(0, 240), weighted((3, st.just(True)), (1, st.just(False))))
operations = weighted(
    (2, grants),
    (1, st.tuples(st.just("limit"), amounts(30_000, invalid=(-1,)))),
    (3, places),
    (3, captures),
    (1, st.tuples(st.just("release"), known_or_unknown_hold)),
    (2, refunds),
    (
        1,
        st.tuples(
            st.just("adjust"), st.sampled_from(["a0", "a1", "a2"]), amounts(40_000, (0,)).map(lambda a: a - 20_000)
        ),
    ),
    (2, advances),  # then sweep expiries, or not (a role that lags)
    (2, slices),
    (1, st.tuples(st.just("return"), weighted((9, slice_ids), (1, st.just("s-unknown"))))),
)


def _request(place: Op, capture: Op, refund: Op | None, wait: Op | None) -> list[Op]:
    """A request's life: a hold, maybe a wait, its capture, maybe a refund of it."""
    hold_id = place[1]
    ops = [place, *([wait] if wait else []), ("capture", hold_id, *capture[2:])]
    return ops + ([("refund", refund[1], hold_id, refund[3])] if refund else [])


requests = st.builds(_request, places, captures, st.one_of(st.none(), refunds), st.one_of(st.none(), advances))


def _session(grant: Op, holds: list[tuple[Op, Op]], wait: Op | None, give_back: bool) -> list[Op]:
    """A gateway's slice: granted, holds carved out of it and resolved, maybe a wait, maybe returned."""
    slice_id = grant[1]
    ops: list[Op] = [grant]
    for place, capture in holds:
        ops += [(*place[:5], slice_id), ("capture", place[1], *capture[2:])]
    return ops + ([wait] if wait else []) + ([("return", slice_id)] if give_back else [])


sessions = st.builds(
    _session, slices, st.lists(st.tuples(places, captures), max_size=4), st.one_of(st.none(), advances), st.booleans()
)
# Start funded most of the time, so that holds and captures get past insufficient_credits.
funding = st.lists(
    st.tuples(
        st.just("grant"),
        st.sampled_from(["g0", "g1"]),
        st.integers(1, 100_000),
        st.sampled_from(["paid", "promo"]),
        st.one_of(st.none(), st.integers(1, 600)),
        st.integers(0, 3),
    ),
    max_size=2,
)
steps = weighted((7, operations.map(lambda op: [op])), (3, requests), (2, sessions))
programs = st.builds(
    lambda head, tail: head + [op for step in tail for op in step], funding, st.lists(steps, min_size=10, max_size=50)
)


def command_for(op: Op, n: int, now: datetime, org: str = ORG) -> AnyCommand:
    kind = op[0]
    envelope: dict[str, Any] = {"command_id": f"{org}-c{n}", "org_id": org, "issued_at": now}
    if kind == "grant":
        _, grant_id, amount, grant_kind, expiry, priority = op
        expires_at = None if expiry is None else now + timedelta(seconds=expiry)
        return GrantCredits(
            **envelope,
            grant_id=grant_id,
            amount_micros=amount,
            kind=grant_kind,
            expires_at=expires_at,
            priority=priority,
        )
    if kind == "limit":
        return SetCreditLimit(**envelope, limit_micros=op[1])
    if kind == "place":
        _, hold_id, amount, ttl_s, model, *against = op
        slice_id = against[0] if against else ""
        job = JobSpec(
            job_id=f"j-{hold_id}",
            token_id="tok",
            model=model,
            endpoint="/v1/chat/completions",
            pool="default",
            payload=msgspec.Raw(b"{}"),
            dispatched=bool(slice_id),  # a gateway dispatches what it places against its slice
        )
        return PlaceHold(
            **envelope,
            hold_id=hold_id,
            request_id=hold_id,
            amount_micros=amount,
            ttl_s=ttl_s,
            job=job,
            slice_id=slice_id,
        )
    if kind == "slice":
        _, slice_id, amount, minimum, ttl_s = op
        return GrantSlice(
            **envelope,
            slice_id=slice_id,
            instance_id="gw-1",
            amount_micros=amount,
            ttl_s=ttl_s,
            minimum_micros=minimum,
        )
    if kind == "return":
        return ReturnSlice(**envelope, slice_id=op[1])
    if kind == "capture":
        _, hold_id, input_tokens, output_tokens = op
        units = Units(input_tokens=input_tokens, output_tokens=output_tokens)
        return CaptureHold(**envelope, hold_id=hold_id, job_id=f"j-{hold_id}", units=units, latency_ms=5)
    if kind == "release":
        return ReleaseHold(**envelope, hold_id=op[1], reason="client_cancelled")
    if kind == "refund":
        _, refund_id, hold_id, amount = op
        return RefundCredits(**envelope, refund_id=refund_id, amount_micros=amount, reason="test", reference=hold_id)
    if kind == "autotopup":
        _, enabled, threshold, amount, target = op
        return ConfigureAutoTopUp(
            **envelope, enabled=enabled, threshold_micros=threshold, amount_micros=amount, target_micros=target
        )
    assert kind == "adjust"
    return AdjustCredits(**envelope, adjustment_id=op[1], amount_micros=op[2], reason="test")


# --- the wallet against the reference -----------------------------------------------------------------


class Run:
    def __init__(self) -> None:
        self.wallet = Wallet(org_id=ORG)
        self.wallet.collect_events()
        self.book = Book()
        self.ref = Reference()
        self.now = T0
        self.captures: Counter[str] = Counter()
        self.captured_total = 0

    def apply(self, result: list[Event] | Rejection, expected: list[Summary], what: object) -> None:
        assert summaries(result) == expected, what
        if isinstance(result, Rejection):
            return
        for event in result:
            if isinstance(event, HoldCaptured):
                hold = self.wallet.holds[event.hold_id]
                assert 0 <= event.amount_micros <= hold.amount_micros, "a capture never exceeds its hold"
                assert event.amount_micros + event.released_micros == hold.amount_micros
                self.captures[event.hold_id] += 1
                self.captured_total += event.amount_micros
            evolve(self.wallet, event)
            self.book.apply(event)

    def command(self, command: AnyCommand) -> None:
        expected = self.ref.decide(command, self.now)
        outcome = (expected[0][1] if expected[0][0] == "rejected" else expected[0][0]) if expected else "duplicate"
        carved = bool(expected) and expected[0][0] == "HoldPlaced" and bool(expected[0][4])
        label(f"{type(command).__name__} -> {outcome}" + (" (carved out of a slice)" if carved else ""))
        self.apply(decide(self.wallet, command, self.now, PRICES), expected, command)

    def sweep(self) -> None:
        """What LedgerRole.expire_due does: release due holds, then expire due grants."""
        for hold_id in sorted(self.ref.holds, key=lambda h: self.ref.holds[h].expires_at):
            expected = self.ref.expire_hold(hold_id, self.now)
            if expected:
                label("expiry -> HoldReleased")
            self.apply(decide_expiry(self.wallet, hold_id, self.now), expected, ("expire hold", hold_id))
        for slice_id in sorted(self.ref.slices, key=lambda x: self.ref.slices[x].expires_at):
            expected = self.ref.expire_slice(slice_id, self.now)
            if expected:
                label("expiry -> SliceReturned")
            self.apply(decide_slice_expiry(self.wallet, slice_id, self.now), expected, ("expire slice", slice_id))
        for grant_id in sorted(self.ref.grants, key=lambda g: self.ref.grants[g].seq):
            expected = self.ref.expire_grant(grant_id, self.now)
            if expected:
                label("expiry -> GrantExpired" + (" (partly)" if self.ref.grants[grant_id].remaining else ""))
            self.apply(decide_grant_expiry(self.wallet, grant_id, self.now), expected, ("expire grant", grant_id))

    def check(self) -> None:
        wallet, book, ref = self.wallet, self.book, self.ref
        assert book.total_micros() == 0, "double entry: the book sums to zero"
        # The {org}/wallet account is what is not held: balance - held (see the report on the docstring).
        assert book.balance(wallet_account(ORG)) == wallet.available_micros == ref.balance - ref.held
        assert book.balance(held_account(ORG)) == wallet.held_micros == ref.held
        assert book.balance(wallet_account(ORG)) + book.balance(held_account(ORG)) == wallet.balance_micros
        assert wallet.balance_micros == ref.balance
        assert (wallet.debt_micros, wallet.credit_limit_micros) == (ref.debt, ref.limit)
        assert wallet.spendable_micros == ref.spendable >= 0, "never past the credit limit"
        assert book.balance(revenue) == wallet.captured_micros == self.captured_total == ref.revenue
        assert book.balance(breakage) == ref.breakage
        assert {g: w.remaining_micros for g, w in wallet.grants.items()} == {
            g: r.remaining for g, r in ref.grants.items()
        }
        assert {h: (w.status.value, w.captured_micros, w.refunded_micros) for h, w in wallet.holds.items()} == {
            h: (r.status, r.captured, r.refunded) for h, r in ref.holds.items()
        }
        assert {x: (w.left_micros, w.open) for x, w in wallet.slices.items()} == {
            x: (r.left, r.open) for x, r in ref.slices.items()
        }
        assert all(n == 1 for n in self.captures.values()), "a hold is captured at most once"
        if ref.debt > 0:
            assert all(g.remaining == 0 for g in ref.grants.values()), "debt only once every grant is spent"


@settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs)
def test_wallet_matches_the_reference_model_and_the_book(ops: list[Op]) -> None:
    run = Run()
    for n, op in enumerate(ops):
        if op[0] == "advance":
            run.now += timedelta(seconds=op[1])
            if op[2]:
                run.sweep()
        else:
            run.command(command_for(op, n, run.now))
        run.check()
    run.now += timedelta(days=1)  # everything due: every hold resolves, every expiring grant breaks
    run.sweep()
    run.check()
    assert run.wallet.held_micros == 0


@settings(max_examples=examples(100), deadline=None)
@given(programs)
def test_deciding_an_exact_retry_changes_nothing(ops: list[Op]) -> None:
    """Every command decided again right after is a duplicate ([]), the same refusal, or a rejection."""
    run = Run()
    for n, op in enumerate(ops):
        if op[0] == "advance":
            run.now += timedelta(seconds=op[1])
            continue
        command = command_for(op, n, run.now)
        first = decide(run.wallet, command, run.now, PRICES)
        run.command(command)
        again = decide(run.wallet, command, run.now, PRICES)
        if isinstance(first, list) and first and isinstance(first[0], HoldRejected):
            # A refused hold is not remembered: the retry is decided afresh, to the same event (same id).
            assert again == first
        elif isinstance(
            command, (GrantCredits, PlaceHold, RefundCredits, AdjustCredits, SetCreditLimit, GrantSlice, ReturnSlice)
        ):
            assert isinstance(again, Rejection) or again == [], (command, again)
        else:  # capture and release are not idempotent by command id: the hold is resolved now
            assert isinstance(again, Rejection)


# --- the same invariants through the ledger role ------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


ORGS = ("org_a", "org_b")
auto_topups = st.tuples(
    st.just("autotopup"),
    st.booleans(),
    st.integers(0, 30_000),  # threshold
    st.sampled_from([0, 5_000, 20_000]),  # amount, or
    st.sampled_from([0, 10_000, 50_000]),  # target (exactly one of them set, else refused)
)
role_steps = weighted((7, operations.map(lambda op: [op])), (3, requests), (1, auto_topups.map(lambda op: [op])))
role_programs = st.builds(
    lambda fund_a, fund_b, steps: (
        [("org_a", op) for op in fund_a]
        + [("org_b", op) for op in fund_b]
        + [(org, op) for org, ops in steps for op in ops]
    ),
    funding,
    funding,
    st.lists(st.tuples(st.sampled_from(ORGS), role_steps), min_size=5, max_size=40),
)


@settings(max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(role_programs)
def test_ledger_role_keeps_the_book_balanced(steps: list[tuple[str, Op]]) -> None:
    clock = FakeClock()
    role = LedgerRole(EmbeddedLog(Path(":memory:")), Settings(), PRICES, clock)
    book = Book()
    replayed = {org: Wallet(org_id=org) for org in ORGS}  # the wallets a rebuild derives from the log
    captures: Counter[tuple[str, str]] = Counter()
    captured_total = 0
    rejected = 0
    batch: list[bytes] = []
    topup_grant: dict[str, tuple[str, int]] = {}  # org -> the grant its AutoTopUpTriggered announced

    def take(outputs: list[Any]) -> None:
        nonlocal captured_total, rejected
        for topic, key, value in outputs:
            event = decode_event(value)
            assert key == event.org_id
            label(f"role -> {type(event).__name__}")
            if event.org_id in topup_grant:  # a top-up's paid grant follows its trigger at once
                announced = topup_grant.pop(event.org_id)
                assert isinstance(event, CreditsGranted) and (event.grant_id, event.amount_micros) == announced
            if isinstance(event, AutoTopUpTriggered):
                assert event.amount_micros > 0
                topup_grant[event.org_id] = (event.grant_id, event.amount_micros)
            if isinstance(event, JobQueued):
                assert topic == topics.dispatch_topic("default")
                continue
            assert topic == topics.LEDGER
            if isinstance(event, CommandRejected):
                rejected += 1
                continue
            if isinstance(event, HoldCaptured):
                hold = replayed[event.org_id].holds[event.hold_id]
                assert 0 <= event.amount_micros <= hold.amount_micros
                captures[event.org_id, event.hold_id] += 1
                captured_total += event.amount_micros
            evolve(replayed[event.org_id], event)
            book.apply(event)

    def check() -> None:
        assert book.total_micros() == 0
        for org in ORGS:
            wallet = role.wallets.get(org) or Wallet(org_id=org)
            assert book.balance(wallet_account(org)) == wallet.available_micros
            assert book.balance(held_account(org)) == wallet.held_micros
            assert wallet.spendable_micros >= 0
            copy = replayed[org]
            assert (copy.balance_micros, copy.held_micros, copy.debt_micros, copy.captured_micros) == (
                wallet.balance_micros,
                wallet.held_micros,
                wallet.debt_micros,
                wallet.captured_micros,
            )
        assert book.balance(revenue) == captured_total == sum(w.captured_micros for w in role.wallets.values())
        assert all(n == 1 for n in captures.values()), "a hold is captured at most once"
        assert rejected == sum(role.rejections.values())

    for n, (org, op) in enumerate(steps):
        if op[0] == "advance":
            take(role.decide_batch(batch))
            batch = []
            clock.now += timedelta(seconds=op[1])
            if op[2]:
                take(role.expire_due(clock.now))
            check()
        else:
            batch.append(encode(command_for(op, n, clock.now, org)))
    take(role.decide_batch(batch))
    clock.now += timedelta(days=1)  # everything due
    take(role.expire_due(clock.now))
    check()
    assert not topup_grant
    for wallet in role.wallets.values():
        assert wallet.held_micros == 0
        # With every hold resolved, every expired grant has broken in full.
        expired = [g for g in wallet.grants.values() if g.expires_at and g.expires_at <= clock.now]
        assert all(g.remaining_micros == 0 for g in expired)


# --- single cases found while writing the properties ------------------------------------------------
# The first four fail on commit 80cd6f3 and pass since 2aaf8db (the grant expiry fixes).


def _grant(
    grant_id: str, amount: int, *, expires_at: datetime | None = None, kind: str = "promo", priority: int = 0
) -> GrantCredits:
    return GrantCredits(
        command_id=f"c-{grant_id}",
        org_id=ORG,
        issued_at=T0,
        grant_id=grant_id,
        amount_micros=amount,
        kind=kind,  # type: ignore[arg-type]
        expires_at=expires_at,
        priority=priority,
    )


def _apply_all(wallet: Wallet, commands: list[AnyCommand], now: datetime) -> list[list[Event]]:
    results = []
    for command in commands:
        result = decide(wallet, command, now, PRICES)
        assert not isinstance(result, Rejection), (command, result)
        for event in result:
            evolve(wallet, event)
        results.append(result)
    return results


def _expire(wallet: Wallet, grant_id: str, now: datetime) -> list[Summary]:
    events = decide_grant_expiry(wallet, grant_id, now)
    for event in events:
        evolve(wallet, event)
    return [summary(e) for e in events]


def test_grant_expiry_keeps_what_open_holds_need_even_with_a_credit_limit() -> None:
    """80cd6f3 broke all 100 (it counted the credit line as room) and the capture became debt."""
    wallet = Wallet(org_id=ORG)
    _apply_all(
        wallet,
        [
            _grant("promo", 100, expires_at=T0 + timedelta(seconds=30)),
            SetCreditLimit(command_id="lim", org_id=ORG, issued_at=T0, limit_micros=1_000),
            command_for(("place", "h1", 80, 60, MODEL), 1, T0),
        ],
        T0,
    )
    later = T0 + timedelta(seconds=30)
    assert _expire(wallet, "promo", later) == [("GrantExpired", "promo", 20)]
    captured = _apply_all(wallet, [command_for(("capture", "h1", 0, 1_000_000), 2, later)], later)[0][0]
    assert isinstance(captured, HoldCaptured)
    assert [(b.grant_id, b.amount_micros) for b in captured.grant_burns] == [("promo", 80)]
    assert wallet.debt_micros == 0


def test_a_due_grant_fully_reserved_by_a_hold_burns_before_later_grants() -> None:
    """80cd6f3 recorded no expiry while holds needed all of the grant, so it never burned first."""
    wallet = Wallet(org_id=ORG)
    place = command_for(("place", "h1", 100, 300, MODEL), 1, T0)
    _apply_all(wallet, [_grant("promo", 100, expires_at=T0 + timedelta(seconds=60)), place], T0)
    later = T0 + timedelta(seconds=70)
    _expire(wallet, "promo", later)  # the hold needs all of it: nothing breaks yet
    assert wallet.grants["promo"].remaining_micros == 100
    _apply_all(wallet, [_grant("vip", 1_000, kind="paid", priority=5)], later)
    captured = _apply_all(wallet, [command_for(("capture", "h1", 0, 1_000_000), 2, later)], later)[0][0]
    assert isinstance(captured, HoldCaptured) and captured.amount_micros == 100
    # The hold's money was reserved from the promo before it expired, so the promo pays (module doc).
    assert [(b.grant_id, b.amount_micros) for b in captured.grant_burns] == [("promo", 100)]


def test_the_role_expires_a_grant_that_was_fully_held_when_due() -> None:
    """80cd6f3: the role re-queued an expiry after a resolve only for grants flagged expired, so a grant
    fully held at its due time never broke and stayed spendable after the hold's release."""
    clock = FakeClock()
    role = LedgerRole(EmbeddedLog(Path(":memory:")), Settings(), PRICES, clock)
    role.decide_batch(
        [
            encode(_grant("promo", 200, expires_at=T0 + timedelta(seconds=60))),
            encode(command_for(("place", "h1", 200, 120, MODEL), 1, T0)),
        ]
    )
    role.expire_due(T0 + timedelta(seconds=60))  # the hold needs all of it
    released = [summary(decode_event(o.value)) for o in role.expire_due(T0 + timedelta(seconds=120))]
    assert released == [("HoldReleased", "h1", 200, "hold_expired", ""), ("GrantExpired", "promo", 200)]
    assert role.wallets[ORG].spendable_micros == 0


def test_burn_order_compares_expiry_instants_across_utc_offsets() -> None:
    """80cd6f3 dropped the offset instead of converting (the admin API keeps the offset it is sent)."""
    wallet = Wallet(org_id=ORG)
    late = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
    early = datetime(2026, 11, 2, 11, 0, tzinfo=timezone(timedelta(hours=5)))  # 06:00 UTC
    place = command_for(("place", "h1", 100, 60, MODEL), 1, T0)
    _apply_all(wallet, [_grant("late", 50, expires_at=late), _grant("early", 50, expires_at=early), place], T0)
    captured = _apply_all(wallet, [command_for(("capture", "h1", 0, 50), 2, T0)], T0)[0][0]  # 30 micros
    assert isinstance(captured, HoldCaptured) and captured.amount_micros == 30
    assert [b.grant_id for b in captured.grant_burns] == ["early"]


def test_an_expired_grant_freed_by_a_release_backs_no_new_hold_in_the_same_batch() -> None:
    clock = FakeClock()
    role = LedgerRole(EmbeddedLog(Path(":memory:")), Settings(), PRICES, clock)
    role.decide_batch(
        [
            encode(_grant("promo", 200, expires_at=T0 + timedelta(seconds=60))),
            encode(command_for(("place", "h1", 200, 600, MODEL), 1, T0)),
        ]
    )
    clock.now = T0 + timedelta(seconds=60)
    role.expire_due(clock.now)  # due; the open hold needs all of it
    clock.now = T0 + timedelta(seconds=70)
    release = ReleaseHold(command_id="rel", org_id=ORG, issued_at=clock.now, hold_id="h1", reason="client_cancelled")
    outputs = role.decide_batch([encode(release), encode(command_for(("place", "h2", 150, 600, MODEL), 2, clock.now))])
    decided = [type(decode_event(o.value)).__name__ for o in outputs]
    # The promo expired at 60 s and h1 no longer needs it: it breaks at once, so h2 is refused.
    assert decided == ["HoldReleased", "GrantExpired", "HoldRejected"]


def test_a_grant_a_slice_kept_from_breaking_breaks_when_the_slice_expires_at_the_same_moment() -> None:
    """Found by the role property with slices: a grant and a slice due at the same moment expire in
    the heap's order (the grant first), so the slice's reserve kept part of the grant; the slice's
    return must let the grant break the rest, as a hold's resolution does."""
    clock = FakeClock()
    role = LedgerRole(EmbeddedLog(Path(":memory:")), Settings(), PRICES, clock)
    due = T0 + timedelta(seconds=1)
    role.decide_batch(
        [
            encode(_grant("promo", 2, expires_at=due)),
            encode(
                GrantSlice(
                    command_id="s", org_id=ORG, issued_at=T0, slice_id="s", instance_id="gw", amount_micros=1, ttl_s=1
                )
            ),
        ]
    )
    decided = [summary(decode_event(o.value)) for o in role.expire_due(due)]
    assert decided == [
        ("GrantExpired", "promo", 1),
        ("SliceReturned", "s", 1, "expired"),
        ("GrantExpired", "promo", 1),
    ]
    assert role.wallets[ORG].grants["promo"].remaining_micros == 0
