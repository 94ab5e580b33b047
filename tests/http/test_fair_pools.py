"""One organization cannot take a pool (issue 15, failure 4): a worker runs at most
``worker_org_jobs_in_flight_max`` jobs of one organization, and a freed slot goes to the organizations
waiting in turn. Here a worker has 4 slots, 2 per organization; one organization floods the pool with
8-second jobs, and another's short chat still answers within a stated bound (without the bound it
waits for the flood's first jobs to end: 8 s or more)."""

from __future__ import annotations

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
