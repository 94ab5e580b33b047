"""Time-metered resources and monthly plans (ledger/resources.py): decide and evolve, exact micros,
a run that runs out of balance, renewals; and the postings and the audit that re-derive them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventlog import Record
from eventlog.embedded import EmbeddedLog
from eventlog.settings import Settings
from ledger.accounts import Book, held_account, postings, revenue, wallet_account
from ledger.audit import Auditor
from ledger.chain import ChainHead
from ledger.pricing import PriceBooks, default_price_book
from ledger.resources import (
    add_months,
    decide_plan_due,
    decide_resource_due,
    rejection_codes,
    run_cost_micros,
)
from ledger.role import LedgerRole
from ledger.wallet import Rejection, Wallet, decide, evolve
from projections.role import usage_row
from projections.statements import Tally, build_statement
from schemas.codec import decode_event, encode
from schemas.commands import (
    AdjustCredits,
    AnyCommand,
    CancelPlan,
    ConfigureAutoTopUp,
    GrantCredits,
    SetCreditLimit,
    StartResource,
    StopResource,
    SubscribePlan,
)
from schemas.events import (
    Event,
    PlanCancelled,
    PlanEnded,
    PlanRenewed,
    PlanSubscribed,
    ResourceBalanceLow,
    ResourceCharged,
    ResourceStarted,
)
from schemas.units import Units
from tests.support import examples

t0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
org = "org_gpu"
book = default_price_book()
h100 = book.gpu_classes["h100-nvl"].hourly_micros  # 5.6 credits an hour
basic = book.plans["hosted-agent-basic"].monthly_micros  # 15 credits a month


def at(seconds: float) -> datetime:
    return t0 + timedelta(seconds=seconds)


def grant(amount: int, grant_id: str = "g1") -> GrantCredits:
    return GrantCredits(
        command_id=grant_id, org_id=org, issued_at=t0, grant_id=grant_id, amount_micros=amount, kind="paid"
    )


def start(resource_id: str = "gpu1", gpu: str = "h100-nvl", quantity: int = 1, interval_s: int = 60) -> StartResource:
    return StartResource(
        command_id=f"start:{resource_id}:{quantity}:{gpu}",
        org_id=org,
        issued_at=t0,
        resource_id=resource_id,
        token_id="tok",
        kind="gpu",
        resource_class=gpu,
        quantity=quantity,
        interval_s=interval_s,
    )


def stop(resource_id: str = "gpu1") -> StopResource:
    return StopResource(command_id=f"stop:{resource_id}", org_id=org, issued_at=t0, resource_id=resource_id)


def subscribe(subscription_id: str = "sub1", plan: str = "hosted-agent-basic") -> SubscribePlan:
    return SubscribePlan(
        command_id=f"subscribe:{subscription_id}:{plan}",
        org_id=org,
        issued_at=t0,
        subscription_id=subscription_id,
        token_id="tok",
        kind="hosted_agent",
        plan_slug=plan,
    )


def cancel(subscription_id: str = "sub1") -> CancelPlan:
    return CancelPlan(command_id=f"cancel:{subscription_id}", org_id=org, issued_at=t0, subscription_id=subscription_id)


class Ledger:
    """A wallet with every event it was given, its book and an auditor fed the same records."""

    def __init__(self) -> None:
        self.wallet = Wallet(org_id=org)
        self.book = Book()
        self.events: list[Event] = []

    def apply(self, events: list[Event]) -> list[Event]:
        for event in events:
            evolve(self.wallet, event)
            self.book.apply(event)
            self.events.append(event)
        return events

    def do(self, command: AnyCommand, now: datetime = t0) -> list[Event] | Rejection:
        result = decide(self.wallet, command, now, book)
        return result if isinstance(result, Rejection) else self.apply(result)

    def tick(self, resource_id: str, now: datetime) -> list[Event]:
        return self.apply(decide_resource_due(self.wallet, resource_id, now))

    def run_until(self, resource_id: str, end: datetime) -> None:
        """What the ledger role's clock does: charge every interval that is over by ``end``."""
        while True:
            resource = self.wallet.resources[resource_id]
            if not resource.running or resource.due_at() > end:
                return
            self.tick(resource_id, resource.due_at())

    def audit(self) -> Auditor:
        """``tollgate audit verify``'s fold of these events, chained as the ledger appends them."""
        auditor = Auditor(public_keys=None, prices=PriceBooks(book))
        chain = ChainHead()
        for offset, event in enumerate(self.events):
            value = encode(msgspec.structs.replace(event, prev_hash=chain.head))
            chain.advance(value, org)
            auditor.feed([Record("tollgate.ledger", 0, offset, org.encode(), value, 0)])
        auditor.finish()
        return auditor


def test_run_cost_rounds_up_once_on_the_run_total() -> None:
    assert run_cost_micros(h100, 1, 147) == 228_667  # 5.6 an hour for 147 s: 228,666.67 rounded up
    assert run_cost_micros(650_000, 2, 3600) == 1_300_000
    # Charged in intervals, a run costs what it costs at once.
    assert sum(run_cost_micros(h100, 1, s + 7) - run_cost_micros(h100, 1, s) for s in range(0, 147, 7)) == 228_667


def test_start_holds_the_first_interval_and_refuses_what_the_balance_cannot_cover() -> None:
    ledger = Ledger()
    ledger.do(grant(93_333))  # one minute of an H100 costs 93,334
    assert ledger.do(start()) is Rejection.insufficient_credits
    ledger.do(grant(10_000_000, "g2"))
    started = ledger.do(start())
    assert isinstance(started, list)
    assert isinstance(started[0], ResourceStarted) and started[0].reserved_micros == 93_334
    assert ledger.wallet.held_micros == 93_334 and ledger.wallet.balance_micros == 10_093_333
    assert ledger.do(start()) is Rejection.resource_running


def test_intervals_are_charged_exactly_and_the_owner_stops_to_the_second() -> None:
    ledger = Ledger()
    ledger.do(grant(10_000_000))
    ledger.do(start())
    assert ledger.tick("gpu1", at(59.9)) == []  # not over yet
    charged = ledger.tick("gpu1", at(60.2))
    assert isinstance(charged[0], ResourceCharged)
    assert (charged[0].from_s, charged[0].to_s, charged[0].amount_micros, charged[0].next_reserved_micros) == (
        0,
        60,
        93_334,
        93_333,
    )
    stopped = ledger.do(stop(), at(87.3))  # 28 started seconds into the second interval
    assert isinstance(stopped, list) and isinstance(stopped[0], ResourceCharged)
    assert (stopped[0].from_s, stopped[0].to_s, stopped[0].ended) == (60, 88, "stopped")
    assert stopped[0].amount_micros == run_cost_micros(h100, 1, 88) - 93_334
    resource = ledger.wallet.resources["gpu1"]
    assert resource.billed_micros == run_cost_micros(h100, 1, 88) == 136_889
    assert (ledger.wallet.held_micros, ledger.wallet.balance_micros) == (0, 10_000_000 - 136_889)
    assert ledger.book.balance(revenue) == 136_889 and ledger.book.balance(held_account(org)) == 0
    assert ledger.do(stop(), at(90)) is Rejection.resource_not_running
    assert ledger.tick("gpu1", at(200)) == []  # a stopped run is never charged again
    assert ledger.audit().findings == []


def test_a_run_that_runs_out_of_balance_is_stopped_within_one_interval_never_overdrawing() -> None:
    ledger = Ledger()
    ledger.do(grant(1_000_000))  # 1 credit: 10 minutes and 42 seconds of an H100
    ledger.do(start(quantity=1, interval_s=60))
    ledger.run_until("gpu1", at(3600))
    resource = ledger.wallet.resources["gpu1"]
    assert not resource.running and resource.ended == "insufficient_credits"
    # It stopped at the end of the last interval the balance could hold: 10 whole minutes.
    assert resource.charged_s == 600 and resource.billed_micros == run_cost_micros(h100, 1, 600) == 933_334
    assert ledger.wallet.balance_micros == 1_000_000 - 933_334 >= 0  # never overdrawn
    assert ledger.wallet.held_micros == 0
    # Warned once, one interval before it ran out.
    warnings = [e for e in ledger.events if isinstance(e, ResourceBalanceLow)]
    assert len(warnings) == 1 and warnings[0].stops_at == at(600)
    ended = [e for e in ledger.events if isinstance(e, ResourceCharged) and e.ended]
    assert len(ended) == 1 and ended[0].occurred_at == at(600)
    auditor = ledger.audit()
    assert auditor.findings == []
    assert auditor.time_charges_checked == 1 + 10  # the start and each minute
    assert auditor.balance(org)["amount_micros"] == ledger.wallet.balance_micros


def test_the_credit_limit_is_the_floor_a_run_may_reach() -> None:
    ledger = Ledger()
    ledger.do(grant(100_000))
    ledger.do(SetCreditLimit(command_id="limit", org_id=org, issued_at=t0, limit_micros=200_000))
    ledger.do(start())
    ledger.run_until("gpu1", at(3600))
    assert ledger.wallet.resources["gpu1"].charged_s == 180  # a fourth minute (373,334) would pass the limit
    assert ledger.wallet.spendable_micros >= 0 and ledger.wallet.balance_micros == 100_000 - 280_000


def test_a_stopped_resource_starts_a_new_run_and_several_gpus_cost_as_many_times() -> None:
    ledger = Ledger()
    ledger.do(grant(10_000_000))
    ledger.do(start("r2", "rtx-4090", quantity=2, interval_s=30))
    ledger.do(stop("r2"), at(10))
    assert ledger.wallet.resources["r2"].billed_micros == run_cost_micros(650_000, 2, 10) == 3_612
    again = ledger.do(start("r2", "rtx-4090", quantity=2, interval_s=30), at(100))
    assert isinstance(again, list) and isinstance(again[0], ResourceStarted) and again[0].run == 2
    ledger.tick("r2", at(130))
    assert ledger.wallet.resources["r2"].billed_micros == 3_612 + run_cost_micros(650_000, 2, 30)
    assert ledger.audit().findings == []


def test_a_new_run_is_priced_as_its_own_start_says() -> None:
    """A stopped resource started again on other hardware (another class, fewer GPUs) holds and is
    charged for that hardware, not the first run's (found by the property test below: the second
    run held one GPU and was charged for two)."""
    ledger = Ledger()
    ledger.do(grant(10_000_000))
    ledger.do(start("r4", "rtx-4090", quantity=2, interval_s=30))
    ledger.do(stop("r4"), at(10))
    h100 = book.gpu_classes["h100-nvl"].hourly_micros
    restart = msgspec.structs.replace(start("r4", "h100-nvl", quantity=1, interval_s=30), command_id="restart")
    ledger.do(restart, at(100))
    resource = ledger.wallet.resources["r4"]
    assert (resource.resource_class, resource.quantity) == ("h100-nvl", 1)
    assert resource.reserved_micros == run_cost_micros(h100, 1, 30) == ledger.wallet.held_micros
    ledger.tick("r4", at(130))
    assert resource.billed_micros == run_cost_micros(650_000, 2, 10) + run_cost_micros(h100, 1, 30)
    assert ledger.audit().findings == []


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (start(gpu="tpu-v9"), Rejection.resource_class_not_priced),
        (start(quantity=0), Rejection.amount_must_be_positive),
        (start(interval_s=0), Rejection.ttl_must_be_positive),
        (stop("nowhere"), Rejection.resource_not_found),
        (subscribe(plan="platinum"), Rejection.plan_not_priced),
        (cancel("nowhere"), Rejection.subscription_not_found),
    ],
)
def test_refusals(command: AnyCommand, code: Rejection) -> None:
    ledger = Ledger()
    ledger.do(grant(100_000_000))
    assert ledger.do(command) is code


def test_a_plan_is_charged_when_accepted_and_at_each_renewal_until_cancelled() -> None:
    ledger = Ledger()
    ledger.do(grant(14_999_999))
    assert ledger.do(subscribe()) is Rejection.insufficient_credits
    ledger.do(grant(20_000_000, "g2"))
    subscribed = ledger.do(subscribe(), datetime(2027, 1, 31, 9, 0, tzinfo=UTC))
    assert isinstance(subscribed, list) and isinstance(subscribed[0], PlanSubscribed)
    assert subscribed[0].amount_micros == basic and subscribed[0].period_end == datetime(2027, 2, 28, 9, 0, tzinfo=UTC)
    assert ledger.wallet.balance_micros == 34_999_999 - basic
    assert ledger.do(subscribe()) is Rejection.subscription_exists
    assert ledger.apply(decide_plan_due(ledger.wallet, "sub1", datetime(2027, 2, 28, 8, 59, tzinfo=UTC))) == []
    renewed = ledger.apply(decide_plan_due(ledger.wallet, "sub1", datetime(2027, 2, 28, 9, 0, tzinfo=UTC)))
    assert isinstance(renewed[0], PlanRenewed)
    assert (renewed[0].period, renewed[0].period_end) == (2, datetime(2027, 3, 31, 9, 0, tzinfo=UTC))
    assert ledger.wallet.balance_micros == 34_999_999 - 2 * basic
    cancelled = ledger.do(cancel(), datetime(2027, 3, 2, tzinfo=UTC))
    assert isinstance(cancelled, list) and isinstance(cancelled[0], PlanCancelled)
    assert ledger.do(cancel()) is Rejection.subscription_cancelled
    ended = ledger.apply(decide_plan_due(ledger.wallet, "sub1", datetime(2027, 3, 31, 9, 0, tzinfo=UTC)))
    assert isinstance(ended[0], PlanEnded) and ended[0].reason == "cancelled"
    assert ledger.wallet.balance_micros == 34_999_999 - 2 * basic  # cancelled: no third month
    assert ledger.do(cancel()) is Rejection.subscription_ended
    assert ledger.audit().findings == []


def test_a_plan_the_balance_cannot_renew_ends() -> None:
    ledger = Ledger()
    ledger.do(grant(basic + 5))
    ledger.do(subscribe())
    ended = ledger.apply(decide_plan_due(ledger.wallet, "sub1", add_months(t0, 1)))
    assert isinstance(ended[0], PlanEnded) and ended[0].reason == "insufficient_credits"
    assert ledger.wallet.balance_micros == 5
    assert ledger.book.balance(wallet_account(org)) == 5


def test_audit_finds_a_resource_charge_that_is_not_its_price() -> None:
    ledger = Ledger()
    ledger.do(grant(10_000_000))
    ledger.do(start())
    charged = decide_resource_due(ledger.wallet, "gpu1", at(60))
    assert isinstance(charged[0], ResourceCharged)
    forged = msgspec.structs.replace(charged[0], amount_micros=90_000, released_micros=3_334)
    ledger.apply([forged])
    findings = ledger.audit().findings
    assert [f.kind for f in findings] == ["resource_charge_mismatch"]


def test_every_resource_rejection_code_is_a_rejection() -> None:
    assert {Rejection(code) for code in rejection_codes} <= set(Rejection)


def test_months_end_on_the_same_day_or_the_last_of_a_shorter_month() -> None:
    anchor = datetime(2027, 1, 31, tzinfo=UTC)
    assert [add_months(anchor, n).day for n in range(1, 5)] == [28, 31, 30, 31]
    assert add_months(datetime(2026, 12, 15, tzinfo=UTC), 1) == datetime(2027, 1, 15, tzinfo=UTC)


def test_charges_become_usage_rows_and_statement_lines_that_add_up() -> None:
    ledger = Ledger()
    ledger.do(grant(100_000_000))
    ledger.do(start())
    ledger.tick("gpu1", at(60))
    ledger.do(stop(), at(89.5))
    ledger.do(subscribe(), at(100))
    rows = [row for row in (usage_row(event) for event in ledger.events) if row is not None]
    gpu = [row for row in rows if row.source == "gpu_cloud"]
    assert [(row.model, row.variant, row.request_id) for row in gpu] == [
        ("gpu-cloud:h100-nvl", "1x60s", "gpu1"),
        ("gpu-cloud:h100-nvl", "1x30s", "gpu1"),
    ]
    assert sum(row.cost_micros for row in gpu) == run_cost_micros(h100, 1, 90)
    (plan,) = [row for row in rows if row.source == "hosted_agents"]
    assert (plan.model, plan.cost_micros, plan.endpoint) == (
        "hosted-agent:hosted-agent-basic",
        basic,
        "/v1/hosted-agents/instances/sub1",
    )
    tally = Tally()
    for row in rows:
        tally.add(row.model, row.price_version, None, Units(), row.cost_micros, row.priced_micros)
    posted: dict[str, int] = {}
    for event in ledger.events:
        for _, credit, amount in postings(event):
            if credit == revenue:
                kind = str(type(event).__struct_config__.tag)
                posted[kind] = posted.get(kind, 0) + amount
    statement = build_statement(org, t0, t0 + timedelta(days=1), tally.priced_usage(), tally.charged_totals(), posted)
    lines = {(line.model, line.unit): (line.quantity, line.amount_micros) for line in statement.lines}
    assert lines == {
        ("gpu-cloud:h100-nvl", "gpu_intervals"): (2, run_cost_micros(h100, 1, 90)),
        ("hosted-agent:hosted-agent-basic", "plan_months"): (1, basic),
    }
    assert statement.balanced and statement.total_micros == run_cost_micros(h100, 1, 90) + basic


# --- properties: any sequence of grants, starts, stops, clock ticks, limits and debits ---------------

_step = st.one_of(
    st.tuples(st.just("grant"), st.integers(1, 400_000)),
    st.tuples(
        st.just("start"),
        st.sampled_from(["r1", "r2", "r3"]),
        st.sampled_from(["rtx-4090", "h100-nvl"]),
        st.integers(1, 4),
    ),
    st.tuples(st.just("stop"), st.sampled_from(["r1", "r2", "r3"])),
    st.tuples(st.just("wait"), st.integers(1, 200_000)),  # milliseconds
    st.tuples(st.just("limit"), st.integers(0, 200_000)),
    st.tuples(st.just("debit"), st.integers(1, 100_000)),
    st.tuples(st.just("subscribe"), st.sampled_from(["p1", "p2"])),
)


@settings(max_examples=examples(80), deadline=None)
@given(st.lists(_step, max_size=40))
def test_no_sequence_overdraws_and_every_charge_is_exact(steps: list[tuple[Any, ...]]) -> None:
    ledger = Ledger()
    now = t0
    for sequence, step in enumerate(steps):
        kind = step[0]
        if kind == "grant":
            ledger.do(grant(step[1], f"g{sequence}"), now)
        elif kind == "start":
            command = msgspec.structs.replace(
                start(step[1], step[2], step[3], interval_s=30), command_id=f"start{sequence}"
            )
            ledger.do(command, now)
        elif kind == "stop":
            ledger.do(msgspec.structs.replace(stop(step[1]), command_id=f"stop{sequence}"), now)
        elif kind == "wait":
            now += timedelta(milliseconds=step[1])
            for resource_id in list(ledger.wallet.resources):
                ledger.run_until(resource_id, now)
        elif kind == "limit":
            ledger.do(SetCreditLimit(command_id=f"l{sequence}", org_id=org, issued_at=now, limit_micros=step[1]), now)
        elif kind == "debit":
            debit = AdjustCredits(
                command_id=f"a{sequence}",
                org_id=org,
                issued_at=now,
                adjustment_id=f"a{sequence}",
                amount_micros=-step[1],
                reason="x",
            )
            ledger.do(debit, now)
        else:
            ledger.do(msgspec.structs.replace(subscribe(step[1]), command_id=f"sub{sequence}"), now)
        wallet = ledger.wallet
        assert wallet.spendable_micros >= 0, "nothing takes an organization past its credit limit"
        reserved = sum(r.reserved_micros for r in wallet.resources.values())
        assert wallet.held_micros == reserved
        assert ledger.book.balance(held_account(org)) == reserved
        for resource in wallet.resources.values():
            if resource.running:
                assert resource.reserved_micros == resource.cost(resource.reserved_to_s) - resource.cost(
                    resource.charged_s
                )
    charged = sum(e.amount_micros for e in ledger.events if isinstance(e, ResourceCharged))
    months = sum(e.amount_micros for e in ledger.events if isinstance(e, PlanSubscribed))
    assert ledger.book.balance(revenue) == charged + months == ledger.wallet.captured_micros
    assert ledger.audit().findings == []


class _Clock:
    def __init__(self) -> None:
        self.now = t0

    def __call__(self) -> datetime:
        return self.now


def test_the_ledger_roles_clock_charges_intervals_stops_the_run_and_renews_plans() -> None:
    """What the role's expiry heap does with resources and plans (the real broker's test is
    tests/kafka/test_gpu_runs_out.py): intervals charged when over, the run stopped when the balance
    cannot cover the next one, a month renewed at its end; and the same dues after a rebuild."""
    clock = _Clock()
    log = EmbeddedLog(Path(":memory:"))
    role = LedgerRole(log, Settings(), book, clock)
    role.decide_batch([encode(grant(basic + 200_000)), encode(start()), encode(subscribe())])
    assert role.expire_due(at(59)) == []
    events = [decode_event(output.value) for output in role.expire_due(at(3600))]
    charged = [e for e in events if isinstance(e, ResourceCharged)]
    assert [c.to_s for c in charged] == [60, 120]  # 200,000 micros: two minutes of an H100, not three
    assert charged[-1].ended == "insufficient_credits" and charged[-1].occurred_at == at(3600)
    assert role.wallets[org].balance_micros == 200_000 - run_cost_micros(h100, 1, 120)
    role.decide_batch([encode(grant(basic, "g2"))])
    renewed = [decode_event(o.value) for o in role.expire_due(add_months(t0, 1))]
    assert [type(e).__name__ for e in renewed] == ["PlanRenewed"]
    assert role.wallets[org].subscriptions["sub1"].period == 2


def test_a_rebuilt_ledger_role_keeps_charging_a_running_resource() -> None:
    clock = _Clock()
    log = EmbeddedLog(Path(":memory:"))
    first = LedgerRole(log, Settings(), book, clock)
    records = first.decide_batch([encode(grant(10_000_000)), encode(start())])
    producer = log.producer("test")
    producer.send([record for record in records])
    producer.flush(5)
    again = LedgerRole(log, Settings(), book, clock)
    again.rebuild(set(range(log.partitions)))
    events = [decode_event(o.value) for o in again.expire_due(at(120))]
    assert [(e.from_s, e.to_s) for e in events if isinstance(e, ResourceCharged)] == [(0, 60), (60, 120)]


def test_automatic_top_up_keeps_a_gpu_running() -> None:
    clock = _Clock()
    role = LedgerRole(EmbeddedLog(Path(":memory:")), Settings(), book, clock)
    topup = ConfigureAutoTopUp(
        command_id="topup", org_id=org, issued_at=t0, enabled=True, threshold_micros=200_000, amount_micros=1_000_000
    )
    role.decide_batch([encode(grant(300_000)), encode(topup), encode(start())])
    events = [decode_event(o.value) for o in role.expire_due(at(3600))]
    assert not [e for e in events if isinstance(e, ResourceCharged) and e.ended]
    assert role.wallets[org].resources["gpu1"].charged_s == 3600
    assert role.wallets[org].balance_micros >= 0
