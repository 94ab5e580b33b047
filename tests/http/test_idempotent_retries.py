"""Retries with an Idempotency-Key always answer, in bounded time (issue 15, failure 1): a key with an
outcome replays it (a success, a 402, a 502, a cancellation), a key whose request still runs waits for
it, and a key whose first answer was lost (the gateway died before recording it, simulated here by not
recording it) answers from the first attempt's events on the log, charging nothing twice. The crash
itself, on the real broker with real processes, is tests/kafka/test_idempotent_retries.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

import gateway.idempotency
from gateway.idempotency import key_hash
from tests.harness import Gateway

slow = {"sim": {"token_ms": 100}, "max_tokens": 24}  # about 2.4 s of simulated generation
retry_answer_s_max = 5.0  # a retry whose outcome is on the log answers within this


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway of its own: the simulated backend's knobs on (the platform's fault tests), and a
    shorter wait so that a hang would show as a 504 within the test's time."""
    gateway_ = Gateway(Path(tmp_path_factory.mktemp("retries")), sim_knobs=True, request_wait_s_max=30)
    yield gateway_
    gateway_.close()


@pytest.fixture
def org(gw: Gateway) -> str:
    return gw.organization("enterprise", credits="10")


@pytest.fixture
def key(gw: Gateway, org: str) -> str:
    return gw.key(org, ["user:read", "user:write"])[0]


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "sim-chat-small", "messages": [{"role": "user", "content": text}], **extra}


def post(gw: Gateway, key: str, idempotency_key: str, body: dict[str, Any], path: str = "/v1/chat/completions") -> Any:
    return gw.call("POST", path, key, json=body, headers={"Idempotency-Key": idempotency_key})


def job_id(org: str, idempotency_key: str) -> str:
    return "job_" + key_hash(org, idempotency_key)[:32]


def balance(gw: Gateway, org: str) -> int:
    return int(gw.admin("GET", f"/v1/organizations/{org}/balance").json()["amount_micros"])


def settled(gw: Gateway, key: str, job: str, timeout_s: float = 20) -> dict[str, Any]:
    """The job once it is terminal (its charge or release folded by the ledger view)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = gw.call("GET", f"/v1/jobs/{job}", key)
        if response.status_code == 200 and response.json()["status"] in (
            "completed",
            "failed",
            "cancelled",
            "dead_letter",
        ):
            return dict(response.json())
        time.sleep(0.05)
    raise AssertionError(f"job {job} did not settle")


@pytest.fixture
def unrecorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Answers are not recorded: as if the gateway died between answering and recording."""
    monkeypatch.setattr(gateway.idempotency, "record_reply", lambda *args, **kwargs: None)
    yield


def timed(call: Any) -> tuple[Any, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


# --- outcomes replayed ---


def test_a_402_is_replayed_even_after_credits_arrive(gw: Gateway, org: str, key: str) -> None:
    poor = gw.organization("enterprise", credits="0.000001")
    poor_key = gw.key(poor, ["user:write"])[0]
    first = post(gw, poor_key, "k-402", chat("hello"))
    assert first.status_code == 402, first.text
    gw.admin("POST", f"/v1/organizations/{poor}/credits", json={"amount": "5"})
    again = post(gw, poor_key, "k-402", chat("hello"))
    assert again.status_code == 402 and again.headers.get("idempotent-replayed") == "true", again.text
    assert again.json() == first.json()
    assert again.headers["x-request-id"] == first.headers["x-request-id"]


def test_a_502_is_replayed(gw: Gateway, org: str, key: str) -> None:
    body = chat("fail", sim={"fail_attempts": 9, "fail_code": "gpu_oom", "fatal": True})
    first = post(gw, key, "k-502", body)
    assert first.status_code == 502 and first.json()["error"]["code"] == "gpu_oom", first.text
    again, elapsed = timed(lambda: post(gw, key, "k-502", body))
    assert again.status_code == 502 and again.headers.get("idempotent-replayed") == "true", again.text
    assert again.json() == first.json() and elapsed < retry_answer_s_max


def test_a_cancelled_request_replays_its_409(gw: Gateway, org: str, key: str) -> None:
    answers: list[Any] = []
    thread = threading.Thread(target=lambda: answers.append(post(gw, key, "k-cancel", chat("long", **slow))))
    thread.start()
    job = job_id(org, "k-cancel")
    deadline = time.monotonic() + 10
    while gw.call("GET", f"/v1/jobs/{job}", key).json().get("status") != "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gw.call("DELETE", f"/v1/jobs/{job}", key).status_code == 200
    thread.join(30)
    first = answers[0]
    assert first.status_code == 409 and first.json()["error"]["code"] == "job_cancelled", first.text
    again = post(gw, key, "k-cancel", chat("long", **slow))
    assert again.status_code == 409 and again.headers.get("idempotent-replayed") == "true", again.text
    assert again.json() == first.json()


# --- a first answer that was lost ---


def test_a_retry_whose_first_answer_was_lost_answers_from_the_log(
    gw: Gateway, org: str, key: str, unrecorded: None
) -> None:
    first = post(gw, key, "k-lost", chat("charged once"))
    assert first.status_code == 200, first.text
    settled(gw, key, job_id(org, "k-lost"))
    after_first = balance(gw, org)
    again, elapsed = timed(lambda: post(gw, key, "k-lost", chat("charged once")))
    assert again.status_code == 200, again.text
    assert elapsed < retry_answer_s_max
    assert again.json() == first.json()  # the same text, id, created and usage (its cost)
    assert again.headers["x-credits-used"] == first.headers["x-credits-used"]
    assert again.headers["x-request-id"] == first.headers["x-request-id"]
    assert balance(gw, org) == after_first  # no second charge
    jobs = gw.call("GET", "/v1/jobs", key).json()["data"]
    assert [j["id"] for j in jobs] == [job_id(org, "k-lost")]


def test_a_lost_502_is_answered_from_the_log(gw: Gateway, org: str, key: str, unrecorded: None) -> None:
    body = chat("fail", sim={"fail_attempts": 9, "fail_code": "gpu_oom", "fatal": True})
    first = post(gw, key, "k-lost-502", body)
    assert first.status_code == 502, first.text
    again, elapsed = timed(lambda: post(gw, key, "k-lost-502", body))
    assert again.status_code == 502 and elapsed < retry_answer_s_max, again.text
    assert again.json() == first.json()


def test_a_lost_cancellation_is_answered_from_the_log(gw: Gateway, org: str, key: str, unrecorded: None) -> None:
    first = post(gw, key, "k-lost-async", chat("later", **slow, **{"async": True}))
    assert first.status_code == 202, first.text
    job = first.json()["job_id"]
    assert job == job_id(org, "k-lost-async")
    assert gw.call("DELETE", f"/v1/jobs/{job}", key).status_code == 200
    settled(gw, key, job)
    again = post(gw, key, "k-lost-async", chat("later", **slow, **{"async": True}))
    assert again.status_code == 202 and again.json() == first.json(), again.text  # the same job, once
    jobs = gw.call("GET", "/v1/jobs", key).json()["data"]
    assert [j["id"] for j in jobs] == [job]


# --- a request still running ---


@pytest.mark.heavy  # a first attempt that generates for 2.4 s
def test_a_retry_while_the_first_attempt_runs_waits_for_its_answer(gw: Gateway, org: str, key: str) -> None:
    answers: list[Any] = []
    thread = threading.Thread(target=lambda: answers.append(post(gw, key, "k-running", chat("wait", **slow))))
    thread.start()
    time.sleep(0.3)
    again = post(gw, key, "k-running", chat("wait", **slow))
    thread.join(30)
    first = answers[0]
    assert first.status_code == 200 and again.status_code == 200, (first.text, again.text)
    assert again.json() == first.json() and again.headers.get("idempotent-replayed") == "true"
    assert settled(gw, key, job_id(org, "k-running"))["cost_micros"] == int(first.json()["usage"]["cost_micros"])


@pytest.mark.heavy  # a first attempt that generates for 2.4 s
def test_a_retry_with_another_body_while_the_first_runs_is_a_409(gw: Gateway, org: str, key: str) -> None:
    thread = threading.Thread(target=lambda: post(gw, key, "k-other", chat("one", **slow)))
    thread.start()
    time.sleep(0.3)
    other = post(gw, key, "k-other", chat("two", **slow))
    thread.join(30)
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused", other.text


@pytest.mark.heavy  # a first attempt that generates for 2.4 s
def test_a_retry_whose_first_attempt_still_runs_elsewhere_waits_for_it(
    gw: Gateway, org: str, key: str, unrecorded: None
) -> None:
    """The first attempt runs and will never record its answer (a gateway that will die): the retry,
    a retry by the claim, answers from that attempt's events as they come."""
    answers: list[Any] = []
    thread = threading.Thread(target=lambda: answers.append(post(gw, key, "k-elsewhere", chat("far", **slow))))
    thread.start()
    time.sleep(0.3)
    gw.core.idempotency.in_flight.clear()  # as if the first attempt ran on another instance
    again = post(gw, key, "k-elsewhere", chat("far", **slow))
    thread.join(30)
    assert again.status_code == 200, again.text
    assert again.json() == answers[0].json()


# --- streams ---


def _sse(response: Any) -> tuple[str, dict[str, Any]]:
    text, usage = "", dict[str, Any]()
    for line in response.text.splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = msgspec.json.decode(line[len("data: ") :])
        for choice in chunk.get("choices", []):
            text += choice.get("delta", {}).get("content") or ""
        usage = chunk.get("usage") or usage
    return text, usage


def test_a_retried_stream_answers_the_first_attempts_text_and_charge(gw: Gateway, org: str, key: str) -> None:
    body = chat("stream me", stream=True, stream_options={"include_usage": True})
    first = post(gw, key, "k-stream", body)
    assert first.status_code == 200, first.text
    settled(gw, key, job_id(org, "k-stream"))
    after_first = balance(gw, org)
    again, elapsed = timed(lambda: post(gw, key, "k-stream", body))
    assert again.status_code == 200 and elapsed < retry_answer_s_max, again.text
    first_text, first_usage = _sse(first)
    again_text, again_usage = _sse(again)
    assert again_text == first_text and first_text
    assert (
        again_usage["cost_micros"] == first_usage["cost_micros"]
        and again_usage["total_tokens"] == first_usage["total_tokens"]
    )
    assert balance(gw, org) == after_first


# --- an outcome past the job view's retention ---


@pytest.fixture(scope="module")
def forgetful(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Jobs kept one second (an hour by default)."""
    gateway_ = Gateway(Path(tmp_path_factory.mktemp("forgetful")), job_retention_s=1)
    yield gateway_
    gateway_.close()


@pytest.mark.heavy  # waits out a job retention
def test_a_lost_answer_past_the_job_retention_is_a_clear_409_not_a_second_run(
    forgetful: Gateway, unrecorded: None
) -> None:
    org = forgetful.organization("enterprise", credits="10")
    key = forgetful.key(org, ["user:read", "user:write"])[0]
    first = post(forgetful, key, "k-old", chat("long ago"))
    assert first.status_code == 200, first.text
    settled(forgetful, key, job_id(org, "k-old"))
    after_first = balance(forgetful, org)
    time.sleep(1.5)
    assert forgetful.call("POST", "/v1/chat/completions", key, json=chat("later")).status_code == 200  # prunes
    after_other = balance(forgetful, org)
    again, elapsed = timed(lambda: post(forgetful, key, "k-old", chat("long ago")))
    assert again.status_code == 409 and elapsed < retry_answer_s_max, again.text
    assert again.json()["error"]["code"] == "idempotency_outcome_expired"
    assert balance(forgetful, org) == after_other < after_first  # nothing ran or was charged again


def test_a_retried_responses_stream_says_at_once_that_it_ran(gw: Gateway, org: str, key: str) -> None:
    """A Responses (or Messages) stream is not replayed in its dialect's parts: its retry answers a
    clear 409 naming the job at once, instead of waiting for a hold the ledger will not place twice."""
    body = {"model": "sim-chat-small", "input": "Stream a story.", "stream": True}
    first = post(gw, key, "k-responses-stream", body, path="/v1/responses")
    assert first.status_code == 200, first.text
    settled(gw, key, job_id(org, "k-responses-stream"))
    after_first = balance(gw, org)
    again, elapsed = timed(lambda: post(gw, key, "k-responses-stream", body, path="/v1/responses"))
    assert again.status_code == 409 and elapsed < retry_answer_s_max, again.text
    assert again.json()["error"]["code"] == "idempotency_stream_ran"
    assert job_id(org, "k-responses-stream") in again.json()["error"]["message"]
    assert balance(gw, org) == after_first
