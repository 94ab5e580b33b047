"""Time-metered resources and monthly plans: pure decisions over an organization's wallet (issue 18).

A resource (a GPU instance of a priced class) is billed by the second while it runs, at
``hourly_micros`` per unit per hour; the cost of the first ``s`` seconds of a run is
``run_cost_micros`` = ceil(hourly x units x s / 3600), so that charging a run in intervals never
rounds more than charging it at once. The ledger charges it interval by interval, always holding
the interval ahead:

- ``StartResource`` holds the first interval (refused with ``insufficient_credits`` when the
  spendable balance cannot cover it);
- when an interval is over (``decide_resource_due``, driven by the ledger role's clock like hold
  expiry) its seconds are charged out of its reservation and the next interval is held; when the
  balance cannot cover the next one the run ends there (``insufficient_credits``), so a run never
  takes the balance past the credit limit. The interval before that, ``ResourceBalanceLow`` warns;
- ``StopResource`` (its owner) charges the run to the second, at most to the end of the interval
  held, and releases the rest.

A plan is charged ``monthly_micros`` when accepted (``SubscribePlan``, refused with
``insufficient_credits``) and at the end of each period (``decide_plan_due``) unless cancelled; a
period the balance cannot cover is not renewed (``PlanEnded``). Periods are calendar months from the
moment it was accepted (the 31st renews on the last day of shorter months).

Decisions return events, or a rejection code that ``ledger.wallet.decide`` turns into its Rejection.
Neither reads the clock nor does IO.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from ledger.pricing import PriceBook, PriceBooks
from schemas.commands import CancelPlan, ResourceCommand, StartResource, StopResource, SubscribePlan
from schemas.events import (
    Event,
    GrantBurn,
    PlanCancelled,
    PlanEnded,
    PlanRenewed,
    PlanSubscribed,
    ResourceBalanceLow,
    ResourceCharged,
    ResourceDestroyed,
    ResourceEvent,
    ResourceStarted,
)
from schemas.ids import event_id_for

ended_by_owner = "stopped"
destroyed = "destroyed"
ended_for_credits = "insufficient_credits"
plan_cancelled = "cancelled"
seconds_per_hour = 3600
# The ledger.wallet.Rejection codes only these decisions give (tests/unit/test_resources.py covers each).
rejection_codes = (
    "resource_class_not_priced",
    "resource_not_found",
    "resource_running",
    "resource_not_running",
    "plan_not_priced",
    "subscription_exists",
    "subscription_not_found",
    "subscription_ended",
    "subscription_cancelled",
)


@dataclass(slots=True)
class Resource:
    resource_id: str
    token_id: str
    kind: str
    resource_class: str
    quantity: int
    hourly_micros: int
    interval_s: int
    price_version: str
    created_at: datetime
    label: str = ""
    image: str = ""
    disk_gb: int = 0
    run: int = 0
    running: bool = False
    run_started_at: datetime | None = None
    charged_s: int = 0  # seconds of the run charged so far
    reserved_to_s: int = 0  # the end of the interval held (seconds from the run's start)
    reserved_micros: int = 0
    billed_micros: int = 0  # over every run
    warned: bool = False
    ended: str = ""  # why the last run ended
    stopped_at: datetime | None = None

    def due_at(self) -> datetime:
        """When the interval held is over (the ledger charges it then)."""
        assert self.run_started_at is not None
        return self.run_started_at + timedelta(seconds=self.reserved_to_s)

    def cost(self, seconds: int) -> int:
        return run_cost_micros(self.hourly_micros, self.quantity, seconds)

    def interval_micros(self, from_s: int) -> int:
        return self.cost(from_s + self.interval_s) - self.cost(from_s)


@dataclass(slots=True)
class Subscription:
    subscription_id: str
    token_id: str
    kind: str
    plan_slug: str
    monthly_micros: int
    price_version: str
    anchor: datetime  # when it was accepted: period n ends n calendar months after it
    period: int
    period_start: datetime
    period_end: datetime
    billed_micros: int
    name: str = ""
    agent_type: str = ""
    default_provider: str = ""
    cancelled: bool = False
    cancel_reason: str = ""
    ended: str = ""


class Wallet(Protocol):
    """What these decisions read and change of ``ledger.wallet.Wallet`` (which imports this module)."""

    org_id: str
    held_micros: int
    resources: dict[str, Resource]
    subscriptions: dict[str, Subscription]

    @property
    def spendable_micros(self) -> int: ...

    def planned_burns(self, amount_micros: int) -> tuple[GrantBurn, ...]: ...

    def charge(self, amount_micros: int) -> None: ...

    def check(self) -> None: ...


def run_cost_micros(hourly_micros: int, quantity: int, seconds: int) -> int:
    """The first ``seconds`` of a run: rounded up once, on the run's total."""
    return -(-hourly_micros * quantity * seconds // seconds_per_hour)


def add_months(anchor: datetime, months: int) -> datetime:
    """``months`` calendar months after ``anchor``, on the same day or the last of a shorter month."""
    index = anchor.month - 1 + months
    year, month = anchor.year + index // 12, index % 12 + 1
    return anchor.replace(year=year, month=month, day=min(anchor.day, calendar.monthrange(year, month)[1]))


def _book(prices: PriceBook | PriceBooks, version: str) -> PriceBook | None:
    return prices.at_version(version)


def _envelope(wallet: Wallet, now: datetime, cause: str, correlation: str) -> dict[str, Any]:
    return {"occurred_at": now, "org_id": wallet.org_id, "causation_id": cause, "correlation_id": correlation}


def decide_resource_command(
    wallet: Wallet, command: ResourceCommand, now: datetime, prices: PriceBook | PriceBooks
) -> list[Event] | str:
    if isinstance(command, StartResource):
        return _decide_start(wallet, command, now, prices)
    if isinstance(command, StopResource):
        return _decide_stop(wallet, command, now)
    if isinstance(command, SubscribePlan):
        return _decide_subscribe(wallet, command, now, prices)
    return _decide_cancel(wallet, command, now)


def _decide_start(
    wallet: Wallet, command: StartResource, now: datetime, prices: PriceBook | PriceBooks
) -> list[Event] | str:
    if command.quantity <= 0:
        return "amount_must_be_positive"
    if command.interval_s <= 0:
        return "ttl_must_be_positive"
    book = _book(prices, command.price_version)
    if book is None:
        return "price_version_unknown"
    gpu = book.gpu_classes.get(command.resource_class)
    if gpu is None:
        return "resource_class_not_priced"
    existing = wallet.resources.get(command.resource_id)
    if existing is not None and existing.ended == destroyed:
        return "resource_not_found"
    if existing is not None and existing.running:
        return "resource_running"
    first = run_cost_micros(gpu.hourly_micros, command.quantity, command.interval_s)
    if first > wallet.spendable_micros:
        return "insufficient_credits"
    envelope = _envelope(wallet, now, command.command_id, command.correlation_id or command.resource_id)
    run = existing.run + 1 if existing is not None else 1
    started = ResourceStarted(
        event_id=event_id_for(command.command_id, "resource.started"),
        resource_id=command.resource_id,
        token_id=command.token_id,
        kind=command.kind,
        resource_class=command.resource_class,
        quantity=command.quantity,
        hourly_micros=gpu.hourly_micros,
        interval_s=command.interval_s,
        reserved_micros=first,
        price_version=book.version,
        run=run,
        label=command.label,
        image=command.image,
        disk_gb=command.disk_gb,
        **envelope,
    )
    second = run_cost_micros(gpu.hourly_micros, command.quantity, 2 * command.interval_s) - first
    if wallet.spendable_micros - first >= second:
        return [started]
    low = ResourceBalanceLow(
        event_id=event_id_for(command.command_id, "resource.balance_low"),
        resource_id=command.resource_id,
        run=run,
        spendable_micros=wallet.spendable_micros - first,
        interval_micros=second,
        stops_at=now + timedelta(seconds=command.interval_s),
        **envelope,
    )
    return [started, low]


def _charged(
    wallet: Wallet, resource: Resource, to_s: int, next_micros: int, ended: str, now: datetime, cause: str
) -> ResourceCharged:
    amount = resource.cost(to_s) - resource.cost(resource.charged_s)
    return ResourceCharged(
        event_id=event_id_for(cause, "resource.charged"),
        resource_id=resource.resource_id,
        token_id=resource.token_id,
        kind=resource.kind,
        resource_class=resource.resource_class,
        quantity=resource.quantity,
        run=resource.run,
        from_s=resource.charged_s,
        to_s=to_s,
        amount_micros=amount,
        released_micros=resource.reserved_micros - amount,
        next_reserved_micros=next_micros,
        price_version=resource.price_version,
        grant_burns=wallet.planned_burns(amount),
        ended=ended,
        **_envelope(wallet, now, cause, resource.resource_id),
    )


def _decide_stop(wallet: Wallet, command: StopResource, now: datetime) -> list[Event] | str:
    resource = wallet.resources.get(command.resource_id)
    if resource is None or resource.ended == destroyed:
        return "resource_not_found"
    if (not resource.running or resource.run_started_at is None) and command.reason == destroyed:
        return [
            ResourceDestroyed(
                event_id=event_id_for(command.command_id, "resource.destroyed"),
                resource_id=resource.resource_id,
                **_envelope(wallet, now, command.command_id, resource.resource_id),
            )
        ]
    if not resource.running or resource.run_started_at is None:
        return "resource_not_running"
    elapsed = (now - resource.run_started_at).total_seconds()
    seconds = max(int(-(-elapsed // 1)), resource.charged_s)  # to the second, started seconds count
    to_s = min(seconds, resource.reserved_to_s)  # never past what is held
    return [_charged(wallet, resource, to_s, 0, command.reason or ended_by_owner, now, command.command_id)]


def decide_resource_due(wallet: Wallet, resource_id: str, now: datetime) -> list[Event]:
    """The interval held is over: charge it, and hold the next one or end the run; [] when the
    resource is not running or its interval is not over yet."""
    resource = wallet.resources.get(resource_id)
    if resource is None or not resource.running or now < resource.due_at():
        return []
    to_s = resource.reserved_to_s
    cause = f"meter:{resource_id}:{resource.run}:{to_s}"
    amount = resource.cost(to_s) - resource.cost(resource.charged_s)
    room = wallet.spendable_micros + resource.reserved_micros - amount  # once this interval is settled
    following = resource.interval_micros(to_s)
    if following > room:
        return [_charged(wallet, resource, to_s, 0, ended_for_credits, now, cause)]
    charged = _charged(wallet, resource, to_s, following, "", now, cause)
    after = resource.interval_micros(to_s + resource.interval_s)
    if resource.warned or room - following >= after:
        return [charged]
    low = ResourceBalanceLow(
        event_id=event_id_for(cause, "resource.balance_low"),
        resource_id=resource_id,
        run=resource.run,
        spendable_micros=room - following,
        interval_micros=after,
        stops_at=resource.due_at() + timedelta(seconds=resource.interval_s),
        **_envelope(wallet, now, cause, resource_id),
    )
    return [charged, low]


def _decide_subscribe(
    wallet: Wallet, command: SubscribePlan, now: datetime, prices: PriceBook | PriceBooks
) -> list[Event] | str:
    book = _book(prices, command.price_version)
    if book is None:
        return "price_version_unknown"
    plan = book.plans.get(command.plan_slug)
    if plan is None:
        return "plan_not_priced"
    if command.subscription_id in wallet.subscriptions:
        return "subscription_exists"
    if plan.monthly_micros > wallet.spendable_micros:
        return "insufficient_credits"
    return [
        PlanSubscribed(
            event_id=event_id_for(command.command_id, "plan.subscribed"),
            subscription_id=command.subscription_id,
            token_id=command.token_id,
            kind=command.kind,
            plan_slug=plan.slug,
            amount_micros=plan.monthly_micros,
            period_start=now,
            period_end=add_months(now, 1),
            price_version=book.version,
            grant_burns=wallet.planned_burns(plan.monthly_micros),
            name=command.name,
            agent_type=command.agent_type,
            default_provider=command.default_provider,
            **_envelope(wallet, now, command.command_id, command.correlation_id or command.subscription_id),
        )
    ]


def _decide_cancel(wallet: Wallet, command: CancelPlan, now: datetime) -> list[Event] | str:
    subscription = wallet.subscriptions.get(command.subscription_id)
    if subscription is None:
        return "subscription_not_found"
    if subscription.ended:
        return "subscription_ended"
    if subscription.cancelled:
        return "subscription_cancelled"
    return [
        PlanCancelled(
            event_id=event_id_for(command.command_id, "plan.cancelled"),
            subscription_id=subscription.subscription_id,
            reason=command.reason or plan_cancelled,
            **_envelope(wallet, now, command.command_id, subscription.subscription_id),
        )
    ]


def decide_plan_due(wallet: Wallet, subscription_id: str, now: datetime) -> list[Event]:
    """A period is over: renew it (charged), or end the plan when cancelled or the balance cannot
    cover the next period; [] when it ended already or its period is not over."""
    subscription = wallet.subscriptions.get(subscription_id)
    if subscription is None or subscription.ended or now < subscription.period_end:
        return []
    cause = f"renew:{subscription_id}:{subscription.period}"
    envelope = _envelope(wallet, now, cause, subscription_id)
    reason = ""
    if subscription.cancelled:
        reason = plan_cancelled
    elif subscription.monthly_micros > wallet.spendable_micros:
        reason = ended_for_credits
    if reason:
        return [
            PlanEnded(
                event_id=event_id_for(cause, "plan.ended"), subscription_id=subscription_id, reason=reason, **envelope
            )
        ]
    return [
        PlanRenewed(
            event_id=event_id_for(cause, "plan.renewed"),
            subscription_id=subscription_id,
            token_id=subscription.token_id,
            kind=subscription.kind,
            plan_slug=subscription.plan_slug,
            period=subscription.period + 1,
            amount_micros=subscription.monthly_micros,
            period_start=subscription.period_end,
            period_end=add_months(subscription.anchor, subscription.period + 1),
            price_version=subscription.price_version,
            grant_burns=wallet.planned_burns(subscription.monthly_micros),
            **envelope,
        )
    ]


def evolve_resource_event(wallet: Wallet, event: ResourceEvent) -> None:
    """Apply one decided resource or plan event to the wallet."""
    if isinstance(event, ResourceStarted):
        resource = wallet.resources.get(event.resource_id)
        if resource is None:
            resource = wallet.resources[event.resource_id] = Resource(
                resource_id=event.resource_id,
                token_id=event.token_id,
                kind=event.kind,
                resource_class=event.resource_class,
                quantity=event.quantity,
                hourly_micros=event.hourly_micros,
                interval_s=event.interval_s,
                price_version=event.price_version,
                created_at=event.occurred_at,
                label=event.label,
                image=event.image,
                disk_gb=event.disk_gb,
            )
        assert not resource.running, "a resource runs once at a time"
        # Each run is priced as its start says (the decision reserved its first interval from these):
        # a run that kept an earlier run's class or quantity was charged for hardware it did not hold.
        resource.resource_class, resource.quantity = event.resource_class, event.quantity
        resource.hourly_micros, resource.interval_s, resource.price_version = (
            event.hourly_micros,
            event.interval_s,
            event.price_version,
        )
        resource.run, resource.running, resource.run_started_at = event.run, True, event.occurred_at
        resource.charged_s, resource.reserved_to_s = 0, event.interval_s
        resource.reserved_micros = event.reserved_micros
        resource.warned, resource.ended, resource.stopped_at = False, "", None
        wallet.held_micros += event.reserved_micros
    elif isinstance(event, ResourceCharged):
        resource = wallet.resources[event.resource_id]
        assert resource.running and event.from_s == resource.charged_s, "a run is charged in order, once"
        assert event.to_s <= resource.reserved_to_s, "a charge never passes what is held"
        assert 0 <= event.amount_micros <= resource.reserved_micros, "a charge comes out of its reservation"
        wallet.held_micros -= resource.reserved_micros
        wallet.charge(event.amount_micros)
        resource.charged_s = event.to_s
        resource.billed_micros += event.amount_micros
        if event.ended:
            resource.running, resource.reserved_micros, resource.ended = False, 0, event.ended
            resource.stopped_at = event.occurred_at
        else:
            resource.reserved_micros = event.next_reserved_micros
            resource.reserved_to_s = event.to_s + resource.interval_s
            wallet.held_micros += event.next_reserved_micros
    elif isinstance(event, ResourceBalanceLow):
        wallet.resources[event.resource_id].warned = True
    elif isinstance(event, ResourceDestroyed):
        resource = wallet.resources[event.resource_id]
        assert not resource.running, "a running resource is destroyed by its last charge"
        resource.ended, resource.stopped_at = destroyed, resource.stopped_at or event.occurred_at
    elif isinstance(event, PlanSubscribed):
        assert event.subscription_id not in wallet.subscriptions, "a plan is accepted once"
        wallet.charge(event.amount_micros)
        wallet.subscriptions[event.subscription_id] = Subscription(
            subscription_id=event.subscription_id,
            token_id=event.token_id,
            kind=event.kind,
            plan_slug=event.plan_slug,
            monthly_micros=event.amount_micros,
            price_version=event.price_version,
            anchor=event.period_start,
            period=1,
            period_start=event.period_start,
            period_end=event.period_end,
            billed_micros=event.amount_micros,
            name=event.name,
            agent_type=event.agent_type,
            default_provider=event.default_provider,
        )
    elif isinstance(event, PlanRenewed):
        subscription = wallet.subscriptions[event.subscription_id]
        assert not subscription.ended and event.period == subscription.period + 1, "periods renew in order"
        wallet.charge(event.amount_micros)
        subscription.period, subscription.period_start, subscription.period_end = (
            event.period,
            event.period_start,
            event.period_end,
        )
        subscription.billed_micros += event.amount_micros
    elif isinstance(event, PlanCancelled):
        subscription = wallet.subscriptions[event.subscription_id]
        subscription.cancelled, subscription.cancel_reason = True, event.reason
    elif isinstance(event, PlanEnded):
        wallet.subscriptions[event.subscription_id].ended = event.reason
    wallet.check()


def charge_problem(wallet: Wallet, event: ResourceEvent, prices: PriceBooks) -> str | None:
    """What is wrong with a resource or plan charge, re-derived from the wallet before it and the
    price book version it names (``tollgate audit verify``); None when it is exact."""
    if isinstance(event, ResourceStarted):
        book = prices.at_version(event.price_version)
        gpu = book.gpu_classes.get(event.resource_class) if book is not None else None
        if gpu is None or gpu.hourly_micros != event.hourly_micros:
            return f"started at {event.hourly_micros} micros an hour, which {event.price_version} does not list"
        expected = run_cost_micros(event.hourly_micros, event.quantity, event.interval_s)
        if event.reserved_micros != expected:
            return f"held {event.reserved_micros} for the first interval, which costs {expected}"
        return None
    if isinstance(event, ResourceCharged):
        resource = wallet.resources.get(event.resource_id)
        if resource is None or not resource.running:
            return "a charge of a resource that is not running"
        amount = resource.cost(event.to_s) - resource.cost(event.from_s)
        expected_next = 0 if event.ended else resource.interval_micros(event.to_s)
        if (event.amount_micros, event.released_micros, event.next_reserved_micros) != (
            amount,
            resource.reserved_micros - amount,
            expected_next,
        ):
            return (
                f"charged {event.amount_micros} for seconds {event.from_s}..{event.to_s}, which cost {amount} "
                f"at {resource.hourly_micros} micros an hour x {resource.quantity}"
            )
        return None
    if isinstance(event, PlanSubscribed):
        book = prices.at_version(event.price_version)
        plan = book.plans.get(event.plan_slug) if book is not None else None
        if plan is None or plan.monthly_micros != event.amount_micros:
            return f"charged {event.amount_micros} for plan {event.plan_slug}, not its price in {event.price_version}"
        return None
    if isinstance(event, PlanRenewed):
        subscription = wallet.subscriptions.get(event.subscription_id)
        if subscription is None or subscription.monthly_micros != event.amount_micros:
            return f"renewed for {event.amount_micros}, not the plan's monthly price"
    return None


def resource_price_problems(book: PriceBook) -> list[str]:
    """What makes a book's GPU classes or plans unusable (a publication refuses them)."""
    problems: list[str] = []
    for slug, gpu in book.gpu_classes.items():
        if slug != gpu.slug:
            problems.append(f"GPU class '{slug}': the key must equal its slug")
        if not 0 <= gpu.hourly_micros <= 10**12 or not 1 <= gpu.max_gpus <= 64:
            problems.append(f"GPU class '{slug}': hourly_micros must lie in 0..1e12 and max_gpus in 1..64")
    for slug, plan in book.plans.items():
        if slug != plan.slug:
            problems.append(f"plan '{slug}': the key must equal its slug")
        if not 0 <= plan.monthly_micros <= 10**12:
            problems.append(f"plan '{slug}': monthly_micros must lie in 0..1e12")
    return problems
