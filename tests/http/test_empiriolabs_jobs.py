"""``/v1/jobs`` as EmpirioLabs documents it: the ``poll_url`` of every async 202 answers its ``Job``
schema (``status`` processing, completed or failed; Tollgate's own state in ``state``), the list
filters by either, and cancelling a job that ended is a no-op."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.harness import Gateway
from tests.http.dialects import Account
from tests.reference import reference_validator

job_schema = reference_validator("/v1/jobs/{job_id}")
video = {"model": "sim-video", "prompt": "a slow pan over a harbour", "duration": 2}


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw)


def call(account: Account, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    return account.gw.call(method, path, account.key, json=body)


def polled(account: Account, poll_url: str, until: str, timeout_s: float = 30) -> dict[str, Any]:
    """The job at ``poll_url`` until its ``status`` is ``until``, every answer checked against the
    reference's ``Job`` schema."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = call(account, "GET", poll_url)
        assert answer.status_code == 200, answer.text
        job: dict[str, Any] = answer.json()
        job_schema.validate(json.loads(answer.text))
        if job["status"] == until or time.monotonic() > deadline:
            return job
        assert job["status"] == "processing" and job["state"] in ("pending", "running"), job
        time.sleep(0.05)


def test_the_poll_url_of_an_async_request_answers_the_reference_job(account: Account) -> None:
    accepted = call(account, "POST", "/v1/embeddings", {"model": "sim-embed-small", "input": "x", "async": True})
    assert accepted.status_code == 202, accepted.text
    job = polled(account, accepted.json()["poll_url"], "completed")
    assert (job["status"], job["state"], job["progress"], job["error"]) == ("completed", "completed", 1, None)
    assert job["result"]["data"] and job["completed_at"]


def test_a_cancelled_job_is_failed_with_the_code_cancelled_and_a_second_cancel_is_a_no_op(account: Account) -> None:
    accepted = call(account, "POST", "/v1/videos/generations", video)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    cancelled = call(account, "DELETE", f"/v1/jobs/{job_id}")
    assert cancelled.status_code == 200, cancelled.text
    job = polled(account, f"/v1/jobs/{job_id}", "failed")
    assert (job["status"], job["state"], job["error"]["code"]) == ("failed", "cancelled", "cancelled"), job
    again = call(account, "DELETE", f"/v1/jobs/{job_id}")
    assert again.status_code == 200 and again.json()["state"] == "cancelled", again.text
    # Tollgate's admin view keeps its own state as the status.
    admin = account.gw.admin("GET", f"/v1/organizations/{account.org}/jobs/{job_id}").json()
    assert admin["status"] == "cancelled"


def test_the_list_filters_by_status_or_state(account: Account) -> None:
    done = call(account, "POST", "/v1/embeddings", {"model": "sim-embed-small", "input": "y", "async": True})
    polled(account, done.json()["poll_url"], "completed")
    stopped = call(account, "POST", "/v1/videos/generations", video).json()["job_id"]
    call(account, "DELETE", f"/v1/jobs/{stopped}")
    polled(account, f"/v1/jobs/{stopped}", "failed")
    for status, states in (
        ("completed", {"completed"}),
        ("failed", {"failed", "cancelled", "dead_letter"}),
        ("cancelled", {"cancelled"}),
    ):
        listed = call(account, "GET", f"/v1/jobs?status={status}").json()["data"]
        assert listed and {job["state"] for job in listed} <= states, (status, listed)
        assert {job["status"] for job in listed} == {"completed" if status == "completed" else "failed"}
    assert stopped in [job["job_id"] for job in call(account, "GET", "/v1/jobs?status=failed").json()["data"]]
    refused = call(account, "GET", "/v1/jobs?status=queued")
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "status", refused.text
