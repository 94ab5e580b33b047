"""One organization cannot take a pool (issue 15, failure 4): a worker runs at most
``worker_org_jobs_in_flight_max`` jobs of one organization, and a freed slot goes to the organizations
waiting in turn. Here a worker has 4 slots, 2 per organization; one organization floods the pool with
8-second jobs, and another's short chat still answers within a stated bound (without the bound it
waits for the flood's first jobs to end: 8 s or more)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Gateway

quiet_latency_s_max = 3.0  # the other organization's chat, while the flood runs
flood_jobs = 8
flood_job = {"max_tokens": 16, "sim": {"token_ms": 500}, "async": True}  # 8 s each


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway_ = Gateway(
        Path(tmp_path_factory.mktemp("fair")),
        sim_knobs=True,  # the slow jobs are the platform's own fault injection
        worker_jobs_in_flight_max=4,
        worker_org_jobs_in_flight_max=2,
    )
    yield gateway_
    gateway_.close()


def chat(text: str) -> dict[str, object]:
    return {"model": "sim-chat-small", "messages": [{"role": "user", "content": text}], "max_tokens": 4}


def test_a_flooding_organization_does_not_starve_another(gw: Gateway) -> None:
    flooder = gw.key(gw.organization("enterprise", credits="50"), ["user:read", "user:write"])[0]
    quiet = gw.key(gw.organization("enterprise", credits="5"), ["user:write"])[0]
    jobs = []
    for index in range(flood_jobs):
        response = gw.call("POST", "/v1/chat/completions", flooder, json={**chat(f"flood {index}"), **flood_job})
        assert response.status_code == 202, response.text
        jobs.append(response.json()["job_id"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the flood holds its share of the pool
        statuses = [gw.call("GET", f"/v1/jobs/{job}", flooder).json().get("status") for job in jobs]
        if statuses.count("running") >= 2:
            break
        time.sleep(0.05)
    assert statuses.count("running") == 2, statuses  # its bound: 2 of the 4 slots
    try:
        started = time.monotonic()
        answer = gw.call("POST", "/v1/chat/completions", quiet, json=chat("me too"))
        latency = time.monotonic() - started
        assert answer.status_code == 200, answer.text
        assert latency < quiet_latency_s_max, f"the quiet organization waited {latency:.1f} s"
    finally:
        for job in jobs:
            gw.call("DELETE", f"/v1/jobs/{job}", flooder)


@pytest.fixture(scope="module")
def narrow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway that keeps 4 requests waiting at once, 2 of one organization."""
    gateway_ = Gateway(Path(tmp_path_factory.mktemp("narrow")), sim_knobs=True, inflight_requests_max=4)
    yield gateway_
    gateway_.close()


@pytest.mark.heavy  # holds a gateway full of slow requests
def test_one_organization_cannot_fill_a_gateway(narrow: Gateway) -> None:
    busy_org = narrow.organization("enterprise", credits="50")
    busy = narrow.key(busy_org, ["user:write"])[0]
    other = narrow.key(narrow.organization("enterprise", credits="5"), ["user:write"])[0]
    slow = {**chat("slow"), "max_tokens": 8, "sim": {"token_ms": 250}}  # 2 s each
    answers: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: answers.append(narrow.call("POST", "/v1/chat/completions", busy, json=slow).status_code)
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while narrow.core.metering.inflight_by_org.get(busy_org, 0) < 2:
        assert time.monotonic() < deadline, "the two slow requests did not start"
        time.sleep(0.02)
    third = narrow.call("POST", "/v1/chat/completions", busy, json=chat("one more"))
    assert third.status_code == 429 and third.json()["error"]["code"] == "too_many_requests_in_flight", third.text
    assert third.headers["retry-after"] == "1"
    assert narrow.call("POST", "/v1/chat/completions", other, json=chat("me")).status_code == 200
    for thread in threads:
        thread.join(30)
    assert answers == [200, 200]
    assert narrow.call("POST", "/v1/chat/completions", busy, json=chat("now")).status_code == 200
