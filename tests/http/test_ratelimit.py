"""Rate limits: the pure window and decision, two limiters sharing one organization's windows through
events, and the 429 a client sees (OpenAI envelope, Retry-After, x-ratelimit-* headers)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import openai
import pytest

from eventlog import RecordTooLarge
from eventlog.settings import Settings
from gateway.ratelimit import IpLimiter, RateLimiter, SlidingWindow, format_duration
from ledger.limits import Check, decide, organization_limits, plan_limits
from projections.views import ApiToken, Organization, TenantsView
from schemas.events import HoldCaptured
from schemas.units import Units
from tests.harness import Gateway


class Clock:
    def __init__(self, at_s: float = 1_000_000.0) -> None:
        self.at_s = at_s

    def __call__(self) -> float:
        return self.at_s


# --- pure pieces ---


def test_window_counts_the_last_minute_and_says_when_room_returns() -> None:
    window = SlidingWindow(60_000, 1000)
    window.add(0, 3, 0)
    window.add(30_500, 2, 30_500)
    assert window.total(30_500) == 5
    assert window.total(59_999) == 5
    assert window.total(60_000) == 2  # the bucket of t=0 has left
    assert window.total(89_999) == 2 and window.total(90_000) == 0  # buckets: gone 59-60 s after
    window.add(100_000, 4, 100_000)
    assert window.reset_ms(100_000, limit=4, amount=1) == 60_000  # the 4 leave 60 s later
    assert window.reset_ms(100_000, limit=10, amount=1) == 0
    window.add(0, 5, 100_000)  # too old to count
    assert window.total(100_000) == 4


def test_window_counts_a_little_ahead_of_the_clock() -> None:
    window = SlidingWindow(60_000, 1000)
    window.add(5_200, 1, 5_000)  # another instance's clock is 200 ms ahead
    assert window.total(5_000) == 1


@pytest.mark.parametrize(
    ("checks", "admitted", "binding"),
    [
        ([Check("requests", "organization", 10, 9, 1, 0)], True, "organization"),
        ([Check("requests", "organization", 10, 10, 1, 500)], False, "organization"),
        ([Check("requests", "organization", 10, 2, 1, 0), Check("requests", "token", 3, 3, 1, 900)], False, "token"),
        ([Check("requests", "organization", 10, 2, 1, 0), Check("requests", "token", 3, 1, 1, 0)], True, "token"),
        ([Check("tokens", "organization", 100, 0, 500, 0)], True, "organization"),  # bigger than the limit: once
        ([Check("tokens", "organization", 100, 1, 500, 700)], False, "organization"),
    ],
)
def test_decide(checks: list[Check], admitted: bool, binding: str) -> None:
    decision = decide(tuple(checks))
    assert decision.admitted is admitted
    assert decision.binding is not None and decision.binding.scope == binding


def test_plans_and_overrides() -> None:
    assert plan_limits["free"]["requests"] == 60 and plan_limits["free"]["jobs"] == 10
    assert plan_limits["pro"]["requests"] == 600 and plan_limits["pro"]["jobs"] == 100
    assert plan_limits["enterprise"]["requests"] == 6000 and plan_limits["enterprise"]["jobs"] == 1000
    assert organization_limits("pro", {"jobs": 5}) == {"requests": 600, "jobs": 5, "tokens": 400_000}


def test_format_duration() -> None:
    assert [format_duration(ms) for ms in (20, 1000, 1500, 360_000)] == ["20ms", "1s", "1.5s", "6m0s"]


# --- shared windows ---


def _tenants(plan: str = "free") -> TenantsView:
    tenants = TenantsView()
    tenants.organizations["org_a"] = Organization("org_a", "a", plan, datetime.now(UTC))
    return tenants


def _token(token_id: str = "tok_1", **limits: int) -> ApiToken:
    return ApiToken(token_id, "org_a", "k", frozenset(), "tg_", datetime.now(UTC), rate_limits=dict(limits))


def _limiter(tenants: TenantsView, clock: Clock, instance: str) -> RateLimiter:
    return RateLimiter(Settings(instance_id=instance, kafka_bootstrap=""), tenants, clock)


def _captured(at: datetime, units: Units) -> HoldCaptured:
    """The ledger's capture of hold ``h`` (request ``h``) of key ``tok_1`` of ``org_a``."""
    return HoldCaptured(
        event_id="e",
        occurred_at=at,
        org_id="org_a",
        hold_id="h",
        request_id="h",
        job_id="j",
        token_id="tok_1",
        model="m",
        endpoint="/",
        amount_micros=1,
        released_micros=0,
        priced_micros=1,
        price_version="v",
        units=units,
    )


def test_two_limiters_share_one_limit_through_events() -> None:
    """Each instance counts the other's admissions once it reads them: together they admit the plan's
    60, not 60 each. Without the exchange they would admit 120."""
    clock = Clock()
    tenants = _tenants("free")
    one, two = _limiter(tenants, clock, "one"), _limiter(tenants, clock, "two")
    admitted = 0
    for i in range(200):
        mine, other = (one, two) if i % 2 else (two, one)
        admission = mine.admit(_token(), {"requests": 1}, f"req_{i}", "/v1/models")
        mine.apply(admission.event)  # an instance reads its own event back: counted once
        other.apply(admission.event)
        admitted += admission.decision.admitted
        clock.at_s += 0.01
    assert admitted == 60


def test_unseen_admissions_are_the_slack() -> None:
    """With the exchange delayed by d events, the overshoot is bounded by what the other instance
    admitted and had not yet shown: limit + (N - 1) x (admissions during d)."""
    clock = Clock()
    tenants = _tenants("free")
    one, two = _limiter(tenants, clock, "one"), _limiter(tenants, clock, "two")
    in_flight: list[tuple[RateLimiter, Any]] = []
    admitted = 0
    delay_events = 4
    for i in range(200):
        mine, other = (one, two) if i % 2 else (two, one)
        admission = mine.admit(_token(), {"requests": 1}, f"req_{i}", "/v1/models")
        admitted += admission.decision.admitted
        in_flight.append((other, admission.event))
        if len(in_flight) > delay_events:
            target, event = in_flight.pop(0)
            target.apply(event)
    assert 60 <= admitted <= 60 + delay_events


def test_per_key_limit_applies_on_top_of_the_organization() -> None:
    clock = Clock()
    limiter = _limiter(_tenants("pro"), clock, "one")
    capped, free = _token("tok_capped", requests=3), _token("tok_free")
    results = [limiter.admit(capped, {"requests": 1}, "r", "/").decision.admitted for _ in range(5)]
    assert results == [True, True, True, False, False]
    refused = limiter.admit(capped, {"requests": 1}, "r", "/")
    assert refused.decision.binding is not None and refused.decision.binding.scope == "token"
    assert limiter.admit(free, {"requests": 1}, "r", "/").decision.admitted


def test_jobs_are_their_own_kind() -> None:
    clock = Clock()
    limiter = _limiter(_tenants("free"), clock, "one")
    jobs = [limiter.admit(_token(), {"jobs": 1}, "r", "/v1/jobs").decision.admitted for _ in range(12)]
    assert jobs.count(True) == 10  # free: 10 job submissions per minute
    assert limiter.admit(_token(), {"requests": 1}, "r", "/v1/models").decision.admitted
    clock.at_s += 61
    assert limiter.admit(_token(), {"jobs": 1}, "r", "/v1/jobs").decision.admitted


def test_tokens_are_counted_from_charges() -> None:
    clock = Clock()
    tenants = _tenants("free")
    tenants.limit_overrides["org_a"] = {"tokens": 100}
    limiter = _limiter(tenants, clock, "one")
    assert limiter.admit(_token(), {"requests": 1, "tokens": 0}, "r", "/").decision.admitted
    limiter.apply(_captured(datetime.fromtimestamp(clock.at_s, UTC), Units(input_tokens=60, output_tokens=40)))
    refused = limiter.admit(_token(), {"requests": 1, "tokens": 0}, "r", "/")
    assert not refused.decision.admitted and refused.decision.binding is not None
    assert refused.decision.binding.kind == "tokens"


def test_an_answered_charge_counts_its_tokens_at_once_and_its_capture_not_again() -> None:
    """A request is answered on the worker's outcome, before the ledger's capture is read back: the
    client's next request must already see the tokens (it got through before), and the capture read
    later must not count them twice."""
    clock = Clock()
    tenants = _tenants("pro")
    tenants.limit_overrides["org_a"] = {"tokens": 150}
    limiter = _limiter(tenants, clock, "one")
    limiter.count_answered("org_a", "tok_1", "h", Units(input_tokens=60, output_tokens=40))
    refused = limiter.admit(_token(), {"requests": 1, "tokens": 60}, "r2", "/")
    assert not refused.decision.admitted, "100 used of 150: a request needing 60 more waits"
    captured = _captured(datetime.fromtimestamp(clock.at_s, UTC), Units(input_tokens=60, output_tokens=40))
    limiter.apply(captured)
    assert limiter.window_totals("organization", "org_a", ("tokens",)) == {"tokens": 100}
    limiter.apply(msgspec.structs.replace(captured, event_id="e2", hold_id="other"))
    assert limiter.window_totals("organization", "org_a", ("tokens",)) == {"tokens": 200}
    # A request answered after its capture was read (it waited for the ledger): counted once too.
    limiter.count_answered("org_a", "tok_1", "other", Units(input_tokens=60, output_tokens=40))
    assert limiter.window_totals("organization", "org_a", ("tokens",)) == {"tokens": 200}


def test_ip_net() -> None:
    clock = Clock()
    net = IpLimiter(limit=3, window_s_=60, ips_tracked_max=2, clock=clock)
    assert [net.admit("1.1.1.1") for _ in range(4)][-1] > 0
    assert net.admit("2.2.2.2") == 0
    clock.at_s += 61
    assert net.admit("1.1.1.1") == 0


# --- what a client sees ---


def test_429_in_the_openai_envelope_with_headers(gw: Gateway) -> None:
    org = gw.organization("free", limits={"requests": 5})
    key, _ = gw.key(org, ["user:read"])
    # The SDK takes an httpx.Client (Litestar's test client is one) but types http_client as an httpx2.Client
    # since it moved to httpx2; SDKs from before that move type it as httpx.Client, hence unused-ignore too.
    client = openai.OpenAI(
        base_url="http://testserver.local/v1",
        api_key=key,
        http_client=gw.client,  # type: ignore[arg-type,unused-ignore]
        max_retries=0,
    )
    for i in range(5):
        raw = client.models.with_raw_response.list()
        assert raw.headers["x-ratelimit-limit-requests"] == "5"
        assert raw.headers["x-ratelimit-remaining-requests"] == str(4 - i)
    with pytest.raises(openai.RateLimitError) as caught:
        client.models.list()
    response = caught.value.response
    assert response.status_code == 429
    assert response.json()["error"] == {
        "message": response.json()["error"]["message"],
        "type": "rate_limit_error",
        "code": "rate_limit",
        "param": None,
    }
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert response.headers["x-ratelimit-reset-requests"].endswith("s")
    assert gw.core.limiter.throttled >= 1


def test_plan_change_takes_effect(gw: Gateway) -> None:
    org = gw.organization("free")
    key, _ = gw.key(org, ["user:read"])
    assert gw.call("GET", "/v1/models", key).headers["x-ratelimit-limit-requests"] == "60"
    assert gw.admin("POST", f"/v1/organizations/{org}/plan", json={"plan": "enterprise"}).status_code == 200
    assert gw.call("GET", "/v1/models", key).headers["x-ratelimit-limit-requests"] == "6000"
    limits = gw.admin("GET", f"/v1/organizations/{org}/limits").json()
    assert limits["per_minute"] == {"requests": 6000, "jobs": 1000, "tokens": 4_000_000}


def test_per_key_override_through_the_api(gw: Gateway) -> None:
    org = gw.organization("pro")
    key, _ = gw.key(org, ["user:read"], rate_limits={"requests": 2})
    assert [gw.call("GET", "/v1/models", key).status_code for _ in range(3)] == [200, 200, 429]
    other, _ = gw.key(org, ["user:read"])
    assert gw.call("GET", "/v1/models", other).status_code == 200


def test_per_key_limits_can_be_changed(gw: Gateway) -> None:
    org = gw.organization("pro")
    key, token_id = gw.key(org, ["user:read"])
    path = f"/v1/organizations/{org}/tokens/{token_id}/limits"
    response = gw.admin("POST", path, json={"requests": 1})
    assert response.status_code == 200 and response.json()["rate_limits"] == {"requests": 1}
    assert [gw.call("GET", "/v1/models", key).status_code for _ in range(2)] == [200, 429]
    assert gw.admin("POST", path, json={}).json()["rate_limits"] == {}
    assert gw.call("GET", "/v1/models", key).status_code == 200


def test_chat_counts_a_request_and_its_tokens(gw: Gateway) -> None:
    org = gw.organization("pro", limits={"tokens": 30}, credits="5")
    key, _ = gw.key(org, ["user:write"])
    body = {"model": "sim-chat-small", "messages": [{"role": "user", "content": "Say a few words, please."}]}
    first = gw.call("POST", "/v1/chat/completions", key, json=body)
    assert first.status_code == 200, first.text
    assert first.headers["x-ratelimit-limit-tokens"] == "30"
    used = first.json()["usage"]["total_tokens"]
    assert used >= 30, "the simulated reply should fill this tiny window"
    second = gw.call("POST", "/v1/chat/completions", key, json=body)
    assert second.status_code == 429 and "tokens" in second.json()["error"]["message"]


def test_per_ip_net_before_authentication(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, ip_requests_per_window_max=5)
    try:
        statuses = [gateway.call("GET", "/v1/models", "tg_nobody").status_code for _ in range(7)]
        assert statuses[:5] == [401] * 5 and statuses[5:] == [429, 429]
        response = gateway.call("GET", "/healthz")
        assert response.status_code == 429 and int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]["type"] == "rate_limit_error"
    finally:
        gateway.close()


def test_a_restarted_gateway_remembers_the_last_minute(tmp_path: Path) -> None:
    """The windows are rebuilt from tollgate.requests (read from one minute ago) before serving."""
    gateway = Gateway(tmp_path)
    org = gateway.organization("free", limits={"requests": 3})
    key, _ = gateway.key(org, ["user:read"])
    assert [gateway.call("GET", "/v1/models", key).status_code for _ in range(3)] == [200, 200, 200]
    gateway.close()
    restarted = Gateway(tmp_path)
    try:
        response = restarted.call("GET", "/v1/models", key)
        assert response.status_code == 429, response.text
    finally:
        restarted.close()


def test_old_charges_open_no_windows() -> None:
    clock = Clock()
    limiter = _limiter(_tenants("free"), clock, "one")
    old = datetime.fromtimestamp(clock.at_s - 3600, UTC)
    limiter.apply(_captured(old, Units(input_tokens=60)))
    assert limiter.stats()["admitted"] == 0 and not limiter._windows


def test_a_requests_admission_is_appended_once_and_with_its_hold(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """gateway/deferred.py: the admission rides in the hold's append (one produce request on Kafka, one
    transaction embedded); a request that places no hold (a read, a 429) appends its admission alone.
    Every admission is appended exactly once."""
    org = gw.organization("pro", limits={"requests": 1}, credits="5")  # a chat counts as a job, not a request
    key, _ = gw.key(org, ["user:read", "user:write"])
    calls = gw.record_sends(monkeypatch)
    body = {"model": "sim-chat-small", "messages": [{"role": "user", "content": "Hi"}]}
    chat = gw.call("POST", "/v1/chat/completions", key, json=body)
    assert chat.status_code == 200, chat.text
    read = gw.call("GET", "/v1/models", key)
    assert read.status_code == 200
    throttled = gw.call("GET", "/v1/models", key)
    assert throttled.status_code == 429
    monkeypatch.undo()
    # per send call: (record type, request id)
    appends = [[(event["type"], event.get("correlation_id", "")) for event in map(_event, call)] for call in calls]

    def calls_with(request_id: str, kind: str) -> list[list[tuple[str, str]]]:
        return [call for call in appends if (kind, request_id) in call]

    chat_id = chat.headers["x-request-id"]
    (together,) = calls_with(chat_id, "request.admitted.v1")
    assert ("place_hold.v1", chat_id) in together  # the same append as its hold
    for answer in (read, throttled):
        request_id = answer.headers["x-request-id"]
        admitted = calls_with(request_id, "request.admitted.v1") + calls_with(request_id, "request.throttled.v1")
        assert len(admitted) == 1, appends


def _event(record: Any) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.json.decode(record.value)
    return decoded


def test_a_hold_refused_for_size_is_a_413_that_keeps_its_admission_and_frees_its_reservation(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Kafka the admission is handed to the producer beside the hold; a hold the log refuses as too
    large (RecordTooLarge, raised before anything is sent) must not take its admission with it, nor
    send it twice. The client's request is too large (413, not a 500), and what its slice set aside for
    it is free again."""
    org = gw.organization("pro", credits="5")
    key, _ = gw.key(org, ["user:write"])
    body = {"model": "sim-chat-small", "messages": [{"role": "user", "content": "Hi"}]}
    assert gw.call("POST", "/v1/chat/completions", key, json=body).status_code == 200  # asks for a slice
    deadline = time.monotonic() + 10
    while gw.core.quota._organizations[org].current is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gw.core.quota._organizations[org].current is not None, "the next hold goes against a slice"
    producer = gw.core._producer
    calls = gw.record_sends(monkeypatch)

    def too_large(records: list[Any], on_done: Any) -> None:
        raise RecordTooLarge("tollgate.commands")

    monkeypatch.setattr(producer, "send_acknowledged", too_large)
    monkeypatch.setattr(producer, "ordered_across_topics", False)  # the Kafka path
    answer = gw.call("POST", "/v1/chat/completions", key, json=body)
    monkeypatch.undo()
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "request_too_large"
    request_id = answer.headers["x-request-id"]
    admissions = [
        e["correlation_id"] for call in calls for e in map(_event, call) if e["type"] == "request.admitted.v1"
    ]
    assert admissions == [request_id], admissions
    # Nothing of the hold went out, so no answer of the ledger will free what was set aside for it.
    assert request_id not in gw.core.quota._reservations
    assert request_id not in gw.core.pending._carving
