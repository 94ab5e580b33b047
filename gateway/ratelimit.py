"""Rate limits shared by every gateway instance through the log, and a per-IP safety net.

Every request that passes the limits is a ``RequestAdmitted`` event on ``tollgate.requests`` (a 429
is a ``RequestThrottled``). Each instance folds the admitted events of the last minute, its own and
every other instance's, into sliding windows per organization and per key, and decides from those
windows plus what it admitted itself and has not yet read back. Tokens are counted from
``HoldCaptured`` (the tokens a request really used), which every instance already folds from the
ledger topic.

Slack: an instance does not see another instance's admissions until they come back through the
log, ``d`` later (the propagation delay, measured here for every foreign event). While an
organization is at its limit, N instances together admit at most
``limit + (N - 1) x r x d_max`` in a window, where ``r`` is the rate at which one instance admits that
organization's requests. The tokens limit has a second slack: requests in flight when the window
fills still complete and count (a request is admitted while the window has room, its tokens are
counted when it is charged).

The windows are ``SlidingWindow``: fixed buckets over the last minute, pure (the clock is passed in).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from eventlog import EventLog, Outgoing, topics
from eventlog.metrics import LagReporter
from eventlog.read import Follower
from eventlog.settings import Settings
from gateway.errors import ApiError, send_error
from ledger.limits import Check, Decision, decide, organization_limits, window_s
from projections.views import ApiToken, TenantsView
from schemas.codec import encode
from schemas.events import Event, HoldCaptured, RequestAdmitted, RequestThrottled
from schemas.ids import random_hex
from schemas.units import Units

logger = logging.getLogger(__name__)

bucket_ms = 1000
propagation_samples_max = 10_000
own_pending_max = 1_000_000  # admitted here, not yet read back; bounded against a stuck follower
holds_remembered_max = 100_000  # holds whose tokens one of answer and capture counted (a minute's worth)
windows_max = 1_000_000  # tracked (scope, id, kind) windows; idle ones are dropped first


class SlidingWindow:
    """Units counted in buckets of ``bucket_ms`` over the last ``window_ms``. The total at ``now``
    covers the buckets of (now - window, now], and buckets ahead of ``now`` (another instance's clock
    a little ahead of ours), so nothing admitted is forgotten early."""

    __slots__ = ("_buckets", "_n", "_size_ms", "_total")

    def __init__(self, window_ms: int = window_s * 1000, size_ms: int = bucket_ms) -> None:
        assert window_ms % size_ms == 0 and window_ms > 0
        self._size_ms = size_ms
        self._n = window_ms // size_ms
        self._buckets: dict[int, int] = {}
        self._total = 0

    def _prune(self, now_ms: int) -> None:
        first = now_ms // self._size_ms - self._n + 1
        if self._buckets and min(self._buckets) < first:
            for index in [i for i in self._buckets if i < first]:
                self._total -= self._buckets.pop(index)

    def add(self, at_ms: int, amount: int, now_ms: int) -> None:
        index = at_ms // self._size_ms
        if index < now_ms // self._size_ms - self._n + 1 or amount == 0:
            return  # already outside the window
        self._buckets[index] = self._buckets.get(index, 0) + amount
        self._total += amount

    def total(self, now_ms: int) -> int:
        self._prune(now_ms)
        return self._total

    def reset_ms(self, now_ms: int, limit: int, amount: int) -> int:
        """How long until the window has room for ``amount`` more (0: now). With ``amount`` 0, how
        long until the oldest counted unit leaves (when room next grows)."""
        used = self.total(now_ms)
        excess = max(used + amount - limit, 1 if amount == 0 and used else 0)
        if excess <= 0:
            return 0
        freed = 0
        for index in sorted(self._buckets):
            freed += self._buckets[index]
            if freed >= excess:
                return max((index + self._n) * self._size_ms - now_ms, 1)
        return self._n * self._size_ms


@dataclass(frozen=True, slots=True)
class Admission:
    decision: Decision
    event: RequestAdmitted | RequestThrottled


class RateLimiter:
    """Shared windows per (organization | key, kind), folded from the log; decisions are pure
    (``ledger.limits.decide``). Thread-safe: the follower thread and the event loop share it."""

    def __init__(self, settings: Settings, tenants: TenantsView, clock: Any = time.time) -> None:
        self.settings = settings
        self.tenants = tenants
        self.instance_id = settings.instance_id
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: OrderedDict[tuple[str, str, str], SlidingWindow] = OrderedDict()
        self._own: OrderedDict[str, int] = OrderedDict()  # event id -> admitted at (ms)
        # Holds whose tokens this instance counted when it answered: their capture is not counted again.
        self._own_charges: OrderedDict[str, None] = OrderedDict()
        # Captures counted as read, for the answers that come after them (not counted again).
        self._captures_counted: OrderedDict[str, None] = OrderedDict()
        self.propagation_ms: deque[int] = deque(maxlen=propagation_samples_max)
        self.admitted = 0
        self.throttled = 0
        self.throttled_by_kind: Counter[str] = Counter()  # read by the metrics scrape
        self._follower: Follower | None = None

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _window(self, scope: str, owner: str, kind: str) -> SlidingWindow:
        key = (scope, owner, kind)
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= windows_max:
                self._windows.popitem(last=False)
            window = self._windows[key] = SlidingWindow()
        else:
            self._windows.move_to_end(key)
        return window

    # --- deciding ---

    def limits_for(self, token: ApiToken) -> dict[str, int]:
        org = self.tenants.organizations.get(token.org_id)
        return organization_limits(org.plan if org else "free", self.tenants.limit_overrides.get(token.org_id, {}))

    def _checks(self, token: ApiToken, amounts: dict[str, int], now_ms: int) -> tuple[Check, ...]:
        org_limits = self.limits_for(token)
        checks = []
        for kind, amount in amounts.items():
            owners: list[tuple[str, str, int]] = [("organization", token.org_id, org_limits[kind])]
            if kind in token.rate_limits:
                owners.append(("token", token.token_id, token.rate_limits[kind]))
            # Tokens are counted when charged, so a request only needs the window not to be full.
            need = max(amount, 1)
            for scope, owner, limit in owners:
                window = self._window(scope, owner, kind)
                used = window.total(now_ms)
                reset = window.reset_ms(now_ms, limit, need if used + need > limit else 0)
                checks.append(Check(kind, scope, limit, used, need, reset))  # type: ignore[arg-type]
        return tuple(checks)

    def admit(self, token: ApiToken, amounts: dict[str, int], request_id: str, endpoint: str) -> Admission:
        """Decide, and count an admitted request at once (before the log brings it back)."""
        with self._lock:
            now_ms = self.now_ms()
            decision = decide(self._checks(token, amounts, now_ms))
            occurred_at = datetime.fromtimestamp(now_ms / 1000, UTC)
            if decision.admitted:
                counted = {k: v for k, v in amounts.items() if k != "tokens" and v}
                event: RequestAdmitted | RequestThrottled = RequestAdmitted(
                    event_id=f"evt_{random_hex()}",
                    occurred_at=occurred_at,
                    org_id=token.org_id,
                    correlation_id=request_id,
                    request_id=request_id,
                    token_id=token.token_id,
                    endpoint=endpoint,
                    amounts=counted,
                    instance_id=self.instance_id,
                )
                self._count(token.org_id, token.token_id, counted, now_ms, now_ms)
                if len(self._own) >= own_pending_max:
                    self._own.popitem(last=False)
                self._own[event.event_id] = now_ms
                self.admitted += 1
            else:
                binding = decision.binding
                assert binding is not None
                event = RequestThrottled(
                    event_id=f"evt_{random_hex()}",
                    occurred_at=occurred_at,
                    org_id=token.org_id,
                    correlation_id=request_id,
                    request_id=request_id,
                    token_id=token.token_id,
                    endpoint=endpoint,
                    kind=binding.kind,
                    scope=binding.scope,
                    limit=binding.limit,
                    retry_after_ms=binding.reset_ms,
                    instance_id=self.instance_id,
                )
                self.throttled += 1
                self.throttled_by_kind[binding.kind] += 1
        return Admission(decision, event)

    def _count(self, org_id: str, token_id: str, amounts: dict[str, int], at_ms: int, now_ms: int) -> None:
        if at_ms <= now_ms - window_s * 1000:
            return  # history (the ledger replayed from the start): no window needed for it
        for kind, amount in amounts.items():
            self._window("organization", org_id, kind).add(at_ms, amount, now_ms)
            self._window("token", token_id, kind).add(at_ms, amount, now_ms)

    def window_totals(self, scope: str, owner: str, kinds: tuple[str, ...]) -> dict[str, int]:
        """What the last minute's window of an organization (or key) holds, per kind."""
        with self._lock:
            now_ms = self.now_ms()
            return {
                kind: (window.total(now_ms) if (window := self._windows.get((scope, owner, kind))) else 0)
                for kind in kinds
            }

    # --- folding the log ---

    def apply(self, event: Event) -> None:
        """Count another instance's admission, or the tokens of a charge; own admissions once only."""
        if isinstance(event, RequestAdmitted):
            at_ms = int(event.occurred_at.timestamp() * 1000)
            with self._lock:
                now_ms = self.now_ms()
                if self._own.pop(event.event_id, None) is not None:
                    return
                if event.instance_id != self.instance_id:
                    self.propagation_ms.append(now_ms - at_ms)
                self._count(event.org_id, event.token_id, dict(event.amounts), at_ms, now_ms)
        elif isinstance(event, HoldCaptured):
            used = charged_tokens(event.units)
            if used:
                with self._lock:
                    if event.hold_id in self._own_charges:
                        del self._own_charges[event.hold_id]
                        return  # counted when this instance answered it
                    at_ms, now_ms = int(event.occurred_at.timestamp() * 1000), self.now_ms()
                    if at_ms <= now_ms - window_s * 1000:
                        return  # history: out of every window, and never answered again
                    self._count(event.org_id, event.token_id, {"tokens": used}, at_ms, now_ms)
                    self._remember(self._captures_counted, event.hold_id)

    def count_answered(self, org_id: str, token_id: str, hold_id: str, units: Units) -> None:
        """The tokens of a charge this instance answers, counted as it answers: the client's next
        request may come before the ledger's capture is read back (a request answered on the worker's
        outcome), and must see them. Each hold's tokens count once: whichever of the answer and the
        capture comes first counts them."""
        used = charged_tokens(units)
        if not used:
            return
        with self._lock:
            if hold_id in self._captures_counted:
                del self._captures_counted[hold_id]
                return  # the capture was read first (a request answered after the ledger captured)
            now_ms = self.now_ms()
            self._count(org_id, token_id, {"tokens": used}, now_ms, now_ms)
            self._remember(self._own_charges, hold_id)

    @staticmethod
    def _remember(holds: OrderedDict[str, None], hold_id: str) -> None:
        if len(holds) >= holds_remembered_max:
            holds.popitem(last=False)
        holds[hold_id] = None

    def start(self, log: EventLog, wait_s_max: float = 120.0, lag: LagReporter | None = None) -> None:
        """Follow ``tollgate.requests`` from one window ago, so a restarted instance knows the
        admissions of the last minute before it serves."""
        consumer = log.consumer(
            [topics.REQUESTS],
            client_id=f"tollgate-gateway-limits-{self.instance_id}",
            start_ms=self.now_ms() - window_s * 1000,
        )
        self._follower = Follower(
            consumer, self.apply, "follow-limits", self.settings.batch_records_max, self.settings.poll_wait_ms, lag
        )
        self._follower.start()
        if not self._follower.wait_caught_up(wait_s_max):
            raise RuntimeError("the gateway could not read tollgate.requests to its end; is the broker reachable?")

    def stop(self) -> None:
        if self._follower is not None:
            self._follower.stop()

    def stats(self) -> dict[str, Any]:
        samples = sorted(self.propagation_ms)

        def pct(p: float) -> int | None:
            return samples[min(int(len(samples) * p), len(samples) - 1)] if samples else None

        return {
            "admitted": self.admitted,
            "throttled": self.throttled,
            "propagation_samples": len(samples),
            "propagation_ms_p50": pct(0.5),
            "propagation_ms_p99": pct(0.99),
            "propagation_ms_max": samples[-1] if samples else None,
        }


def charged_tokens(units: Units) -> int:
    """The tokens a charge counts against a tokens-per-minute limit: every kind, prompt and generated."""
    return units.total_tokens


def record(admission: Admission) -> Outgoing:
    return Outgoing(topics.REQUESTS, admission.event.org_id, encode(admission.event))


# --- headers and the 429 ---


def format_duration(ms: int) -> str:
    """OpenAI's style for reset headers: ``20ms``, ``1.5s``, ``6m0s``."""
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest_ms = divmod(ms, 60_000)
    seconds = f"{rest_ms / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def headers_for(decision: Decision) -> dict[str, str]:
    """``x-ratelimit-{limit,remaining,reset}-{kind}`` for each kind checked: the tighter of the
    organization's and the key's limit."""
    by_kind: dict[str, Check] = {}
    for check in decision.checks:
        current = by_kind.get(check.kind)
        if current is None or check.limit - check.used < current.limit - current.used:
            by_kind[check.kind] = check
    headers = {}
    for kind, check in by_kind.items():
        counted = check.amount if (decision.admitted and kind != "tokens") else 0
        headers[f"x-ratelimit-limit-{kind}"] = str(check.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(check.limit - check.used - counted, 0))
        # Admitted into an empty window: this request itself leaves it a full window from now.
        reset_ms = check.reset_ms or (window_s * 1000 if counted and check.used == 0 else 0)
        headers[f"x-ratelimit-reset-{kind}"] = format_duration(reset_ms)
    return headers


def throttled_error(decision: Decision) -> ApiError:
    binding = decision.binding
    assert binding is not None and not decision.admitted
    retry_after_s = max(-(-binding.reset_ms // 1000), 1)
    who = "this organization" if binding.scope == "organization" else "this API key"
    return ApiError(
        429,
        f"Rate limit exceeded: {who} may use {binding.limit} {binding.kind} per minute. "
        f"Retry after {retry_after_s} s, or ask for a higher limit.",
        code="rate_limit",
        headers={**headers_for(decision), "retry-after": str(retry_after_s)},
    )


# --- the per-IP safety net ---


class IpLimiter:
    """A local window per client address, before authentication (DoS protection, as in the
    reference: 5,000 requests / 10 minutes per IP). Per instance, not shared: a flood should not
    become a flood of log records. At most ``ips_tracked_max`` addresses, least recent dropped."""

    def __init__(self, limit: int, window_s_: int, ips_tracked_max: int, clock: Any = time.time) -> None:
        self.limit = limit
        self.window_ms = window_s_ * 1000
        self.size_ms = max(self.window_ms // 60, 1)
        self.window_ms -= self.window_ms % self.size_ms
        self.ips_tracked_max = ips_tracked_max
        self._clock = clock
        self._windows: OrderedDict[str, SlidingWindow] = OrderedDict()
        self.refused = 0

    def admit(self, ip: str) -> int:
        """0 when admitted (and counted), else milliseconds until the address may retry."""
        now_ms = int(self._clock() * 1000)
        window = self._windows.get(ip)
        if window is None:
            if len(self._windows) >= self.ips_tracked_max:
                self._windows.popitem(last=False)
            window = self._windows[ip] = SlidingWindow(self.window_ms, self.size_ms)
        else:
            self._windows.move_to_end(ip)
        if window.total(now_ms) + 1 > self.limit:
            self.refused += 1
            return window.reset_ms(now_ms, self.limit, 1)
        window.add(now_ms, 1, now_ms)
        return 0


class RateLimitMiddleware:
    """ASGI: the per-IP net before anything else, and the ``x-ratelimit-*`` headers that the scope
    guard left in the request state on the way out."""

    def __init__(self, app: Any, ip_limiter: IpLimiter) -> None:
        self.app = app
        self.ip_limiter = ip_limiter

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        wait_ms = self.ip_limiter.admit(client[0] if client else "unknown")
        if wait_ms:
            retry_after_s = max(-(-wait_ms // 1000), 1)
            error = ApiError(
                429,
                f"Too many requests from this address; retry after {retry_after_s} s.",
                code="rate_limit",
                headers={"retry-after": str(retry_after_s)},
            )
            await send_error(send, error, None)
            return
        state = scope.setdefault("state", {})

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                extra = state.get("ratelimit_headers")
                if extra:
                    names = {name.encode() for name in extra}
                    headers = [h for h in message.get("headers", []) if h[0].lower() not in names]
                    headers.extend((name.encode(), value.encode()) for name, value in extra.items())
                    message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
