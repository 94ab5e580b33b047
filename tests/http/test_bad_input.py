"""Bad input answers a clear error in the OpenAI envelope with the right status, never a 500: query
integers, moments at the edges of what ClickHouse stores, forged cursors, admin amounts, multipart
fields, service tokens, and a ledger too slow to answer a cancellation."""

from __future__ import annotations

import base64
import threading
from datetime import timedelta
from typing import Any

import msgspec
import pytest

import gateway.core
from eventlog import topics
from gateway.routes.credits import amount_micros_max
from projections.jobs import JobState, JobsView
from tests.harness import Gateway
from tests.support import captured, charge, completed, now, placed
from workers.media import wav_audio


@pytest.fixture(scope="module")
def org(gw: Gateway) -> str:
    return gw.organization("enterprise", credits="10")


@pytest.fixture(scope="module")
def key(gw: Gateway, org: str) -> str:
    return gw.key(org, ["user:read", "user:write"])[0]


def assert_error(response: Any, status: int, param: str | None) -> dict[str, Any]:
    """The response is the OpenAI error envelope with ``status`` and ``param``; its error body."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}, error
    assert error["message"] and error["type"] and error["code"], error
    assert error["param"] == param, error
    return error


# --- 1. query integers ---


# Superscript two, Arabic-Indic 12 and 3, fullwidth 10: str.isdigit takes them all.
_unicode_digits = ["\u00b2", "\u0661\u0662", "\u0663", "\uff11\uff10"]


@pytest.mark.parametrize("value", [*_unicode_digits, "0", "201", "-1", "+5", " 5", "1_0", "9" * 400, ""])
@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/account/usage", "/v1/organizations/{org}/ledger"])
def test_a_limit_that_is_not_ascii_digits_in_range_is_a_400(
    gw: Gateway, org: str, key: str, route: str, value: str
) -> None:
    path = route.format(org=org)
    caller = gw.admin if "{org}" in route else (lambda method, url, **kw: gw.call(method, url, key, **kw))
    response = caller("GET", path, params={"limit": value})
    assert_error(response, 400, "limit")
    assert caller("GET", path, params={"limit": "5"}).status_code == 200


# --- 2. moments at the edges ---

_too_late_from = "9999-12-31T23:30:00Z"  # its next whole hour is past year 9999
_too_late_to = "9999-12-31T23:59:59.9995Z"  # one millisecond more is past year 9999
_before_year_one = "0001-01-01T00:00:00+05:00"  # its UTC form is before year 1
_edge_values = [_too_late_from, _too_late_to, _before_year_one, "1899-12-31T23:59:59Z", "2300-01-01T00:00:00Z"]


@pytest.mark.parametrize("value", _edge_values)
@pytest.mark.parametrize("name", ["from", "to", "before"])
def test_account_usage_moments_outside_clickhouse_range_are_a_400(gw: Gateway, key: str, name: str, value: str) -> None:
    assert_error(gw.call("GET", "/v1/account/usage", key, params={name: value}), 400, name)


@pytest.mark.parametrize("value", _edge_values)
@pytest.mark.parametrize("name", ["from", "to"])
@pytest.mark.parametrize("route", ["usage", "usage/by-token", "statements"])
def test_admin_usage_moments_outside_clickhouse_range_are_a_400(
    gw: Gateway, org: str, route: str, name: str, value: str
) -> None:
    params = {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z", name: value}
    assert_error(gw.admin("GET", f"/v1/organizations/{org}/{route}", params=params), 400, name)


@pytest.mark.parametrize("value", [*_edge_values, "not a time"])
def test_balance_at_a_moment_outside_range_is_a_400(gw: Gateway, org: str, value: str) -> None:
    assert_error(gw.admin("GET", f"/v1/organizations/{org}/balance-at", params={"at": value}), 400, "at")


def test_the_first_and_last_moments_in_range_are_accepted(gw: Gateway) -> None:
    org = gw.organization()
    key = gw.key(org, ["user:read"])[0]
    first, last = "1900-01-01T00:00:00Z", "2299-12-31T23:59:59.9995Z"
    gw.store.insert([charge("evt_edge", now, org_id=org)], [])
    usage = gw.call("GET", "/v1/account/usage", key, params={"from": first, "to": last})
    assert usage.status_code == 200, usage.text
    assert usage.json()["window_summary"]["requests"] == 1
    for granularity in ("hour", "day"):
        rolled = gw.admin(
            "GET", f"/v1/organizations/{org}/usage", params={"from": first, "to": last, "granularity": granularity}
        )
        assert rolled.status_code == 200, rolled.text
        assert rolled.json()["total_requests"] == 1  # a start before 1970 no longer wraps round to 2036
    assert gw.admin("GET", f"/v1/organizations/{org}/balance-at", params={"at": last}).status_code == 200


# --- 3. forged cursors ---


def _usage_cursor(text: str) -> str:
    return "cur_" + base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        _usage_cursor("9" * 400 + ":evt_1"),
        _usage_cursor("-" + "9" * 400 + ":evt_1"),
        _usage_cursor("99999999999999:evt_1"),  # year 5138
        _usage_cursor("²:evt_1"),
        _usage_cursor("1700000000000:"),
        "cur_!!!",
    ],
)
def test_a_usage_cursor_this_api_did_not_return_is_a_400(gw: Gateway, key: str, cursor: str) -> None:
    assert_error(gw.call("GET", "/v1/account/usage", key, params={"before": cursor}), 400, "before")


@pytest.mark.parametrize(
    "cursor", ["2026-01-01T00:00:00+00:00~evt~256", "9999-12-31T23:59:59+00:00~evt~0", "2026-01-01~evt~²"]
)
def test_a_ledger_cursor_this_api_did_not_return_is_a_400(gw: Gateway, org: str, cursor: str) -> None:
    assert_error(gw.admin("GET", f"/v1/organizations/{org}/ledger", params={"cursor": cursor}), 400, "cursor")


# --- 4. a slow ledger ---


def test_cancelling_a_job_when_the_ledger_does_not_answer_is_a_504(
    gw: Gateway, org: str, key: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = f"job_{unique}"
    gw.core.jobs.apply(
        msgspec.structs.replace(placed, org_id=org, job_id=job_id, request_id=f"req_{unique}", hold_id=f"req_{unique}")
    )
    # The ledger never sees the cancel.
    gw.record_sends(monkeypatch, passing=lambda record: record.topic != topics.COMMANDS)
    monkeypatch.setattr(gateway.core, "cancel_wait_s", 0.2)
    error = assert_error(gw.call("DELETE", f"/v1/jobs/{job_id}", key), 504, "job_id")
    assert error["type"] == "timeout_error" and error["code"] == "timeout"


# --- 5. transcription fields sent as files ---


@pytest.mark.parametrize("field", ["model", "language", "prompt", "response_format", "async"])
def test_a_transcription_text_field_sent_as_a_file_is_a_400(gw: Gateway, key: str, field: str) -> None:
    text = {"model": "sim-whisper", "language": "en", "prompt": "hi", "response_format": "json", "async": "false"}
    files: dict[str, Any] = {"file": ("a.wav", wav_audio(500, b"voice"), "audio/wav")}
    files[field] = (f"{field}.txt", text.pop(field).encode(), "text/plain")
    response = gw.call("POST", "/v1/audio/transcriptions", key, data=text, files=files)
    assert_error(response, 400, field)


def test_a_transcription_with_text_fields_runs(gw: Gateway, key: str) -> None:
    text = {"model": "sim-whisper", "language": "en", "prompt": "hi", "response_format": "json"}
    files = {"file": ("a.wav", wav_audio(500, b"voice"), "audio/wav")}
    response = gw.call("POST", "/v1/audio/transcriptions", key, data=text, files=files)
    assert response.status_code == 200, response.text


# --- 6. listing jobs while they are pruned ---


class _PrunedOnRead(dict[str, JobState]):
    """A jobs map whose first read (in the listing thread) lets another thread prune, for as long as
    the listing lets it: a listing outside the view's lock then reads a job that is gone."""

    def __init__(self, view: JobsView, prune: Any) -> None:
        super().__init__()
        self.view, self.prune, self.reader = view, prune, threading.get_ident()
        self.pruner: threading.Thread | None = None

    def _race(self) -> None:
        if self.pruner is None and threading.get_ident() == self.reader:
            self.pruner = threading.Thread(target=self.view.apply, args=(self.prune,))
            self.pruner.start()
            self.pruner.join(0.5)  # a listing that holds the lock keeps the pruner waiting

    def __getitem__(self, job_id: str) -> JobState:
        self._race()
        return super().__getitem__(job_id)

    def get(self, job_id: str, default: Any = None) -> Any:
        self._race()
        return super().get(job_id, default)


def test_listing_jobs_while_pruning_reads_a_consistent_view() -> None:
    view = JobsView(retention=timedelta(hours=1))
    for event in (placed, completed, captured):
        view.apply(event)
    later = msgspec.structs.replace(
        placed, event_id="e9", job_id="job_2", request_id="req_2", hold_id="req_2", occurred_at=now + timedelta(hours=2)
    )
    racing = _PrunedOnRead(view, later)
    racing.update(view.jobs)
    view.jobs = racing
    listed = view.list("org_a", 10)
    assert [job.job_id for job in listed] == ["job_1"]
    assert racing.pruner is not None
    racing.pruner.join(5)
    assert [job.job_id for job in view.list("org_a", 10)] == ["job_2"]  # job_1 was pruned after the listing


# --- 7. admin amounts ---


_amount_routes: list[tuple[str, dict[str, Any], str]] = [
    ("credits", {}, "amount"),
    ("credit-limit", {}, "amount"),
    ("refunds", {"reason": "r", "reference": "req_x"}, "amount"),
    ("adjustments", {"reason": "r"}, "amount"),
    ("auto-topup", {"amount": "1"}, "threshold"),
    ("auto-topup", {"threshold": "1"}, "amount"),
    ("auto-topup", {"threshold": "1"}, "target"),
]


@pytest.mark.parametrize(
    "literal",  # the amount as JSON text: a string, or a number (decoded straight to Decimal, no float)
    [
        '"1e30"',
        "1e30",
        '"-1e30"',
        "1e999999",
        '"1e1000000"',
        '"1000000000.000001"',
        '"NaN"',
        '"sNaN"',
        '"Infinity"',
        '"-Infinity"',
        '"1.0000000000000000000000000000001"',  # 32 digits: rounding it would change the amount
        '"1e-1000030"',  # below Decimal's smallest exponent: it would round to zero
    ],
)
@pytest.mark.parametrize(("route", "rest", "field"), _amount_routes)
def test_an_admin_amount_out_of_range_or_not_finite_is_a_400(
    gw: Gateway, org: str, route: str, rest: dict[str, Any], field: str, literal: str
) -> None:
    members = [f"{msgspec.json.encode(k).decode()}: {msgspec.json.encode(v).decode()}" for k, v in rest.items()]
    raw = "{" + ", ".join([*members, f'"{field}": {literal}']) + "}"
    response = gw.admin(
        "POST", f"/v1/organizations/{org}/{route}", content=raw, headers={"content-type": "application/json"}
    )
    assert_error(response, 400, field)


def test_the_largest_amount_is_granted(gw: Gateway) -> None:
    org = gw.organization()
    granted = gw.admin("POST", f"/v1/organizations/{org}/credits", json={"amount": "1000000000"})
    assert granted.status_code == 201, granted.text
    assert granted.json()["amount_micros"] == amount_micros_max


# --- 8. service tokens ---


@pytest.mark.parametrize(
    "claims", [{"exp": 10**20}, {"exp": 2**63}, {"iat": -(10**20)}, {"nbf": -(10**20)}, {"iat": -(2**70)}]
)
def test_a_signed_service_token_with_a_moment_out_of_range_is_a_401(
    gw: Gateway, org: str, claims: dict[str, int]
) -> None:
    token = gw.signer.token(org, "user:read", **claims)
    error = assert_error(gw.call("GET", "/v1/models", token), 401, None)
    assert error["code"] == "invalid_token"
    assert gw.call("GET", "/v1/models", gw.signer.token(org, "user:read")).status_code == 200


# --- the messages a newcomer meets first: each says what to fix, in the user's terms ---


@pytest.mark.parametrize("amount", ["1.0000001", 1.0000001])
def test_an_amount_with_too_many_decimals_is_named_as_the_user_wrote_it(gw: Gateway, org: str, amount: Any) -> None:
    response = gw.admin("POST", f"/v1/organizations/{org}/credits", json={"amount": amount, "kind": "paid"})
    error = assert_error(response, 400, "amount")
    assert error["message"].startswith("amount 1.0000001 has more than 6 decimal places"), error
    assert "Decimal" not in error["message"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/organizations", {"plan": "pro"}, "name"),
        ("/v1/organizations/{org}/credits", {"kind": "paid"}, "amount"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, "model"),
        ("/v1/chat/completions", {"model": "sim-chat-small", "messages": [{"content": "x"}]}, "messages[0].role"),
    ],
)
def test_a_missing_required_field_is_named(gw: Gateway, org: str, key: str, path: str, body: Any, param: str) -> None:
    secret = key if path.startswith("/v1/chat") else None
    path = path.format(org=org)
    response = gw.call("POST", path, secret, json=body) if secret else gw.admin("POST", path, json=body)
    error = assert_error(response, 400, param)
    assert (
        error["message"] == f"Missing required parameter: '{param}'." and error["code"] == "missing_required_parameter"
    )


def test_a_wrong_platform_token_is_told_to_use_the_platform_admin_token(gw: Gateway) -> None:
    response = gw.call("POST", "/v1/organizations", "change-me-wrong", json={"name": "x", "plan": "pro"})
    error = assert_error(response, 401, None)
    assert "platform admin token" in error["message"] and "TOLLGATE_ADMIN_TOKEN" in error["message"]
    assert "/tokens" not in error["message"], "an organization key would not help here"
    missing = gw.call("POST", "/v1/organizations", None, json={"name": "x", "plan": "pro"})
    assert "platform admin token" in assert_error(missing, 401, None)["message"]


def test_a_wrong_key_is_told_how_to_get_an_organization_key(gw: Gateway, org: str) -> None:
    response = gw.call("GET", "/v1/models", "tg_mistyped")
    assert "POST /v1/organizations/{org_id}/tokens" in assert_error(response, 401, None)["message"]
    admin_route = gw.call("GET", f"/v1/organizations/{org}/balance", "tg_mistyped")
    message = assert_error(admin_route, 401, None)["message"]
    assert "platform admin token" in message and "'admin:read' scope" in message
