"""Two gateway processes on the real broker share one organization's limit under load.

Each gateway decides from windows folded from tollgate.requests, so together they admit at most
limit + slack, where slack = (N - 1) x r x d_max (r: the rate at which one instance takes the
organization's requests, d_max: the largest propagation delay either instance measured for the
other's events; see gateway/ratelimit.py). Without the shared windows they would admit 2 x limit.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from eventlog import topics
from eventlog.kafka import KafkaLog
from schemas.codec import decode_event
from schemas.events import RequestAdmitted, RequestThrottled
from tests.support import Admin, Role, free_port, migrated_database, wait_until_serving

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
admin_token = "tga_kafka_limits"
limit = 300
threads_per_gateway = 6
hammer_s_max = 20.0


class Gateways:
    def __init__(self, bootstrap: str, clickhouse: str, root: Path, count: int = 2) -> None:
        self.roles: list[Role] = []
        self.urls: list[str] = []
        database = migrated_database(clickhouse, "limits")
        for i in range(count):
            port = free_port()
            env = {
                "TOLLGATE_KAFKA_BOOTSTRAP": bootstrap,
                "TOLLGATE_CLICKHOUSE_URL": database,
                "TOLLGATE_ADMIN_TOKEN": admin_token,
                "TOLLGATE_INSTANCE_ID": f"limits-{i}",
                "TOLLGATE_IP_REQUESTS_PER_WINDOW_MAX": "1000000",
            }
            args = ["gateway", "--port", str(port), "--data-dir", str(root / f"gw{i}")]
            self.roles.append(Role(f"gateway{i}", args, env, root))
            self.urls.append(f"http://127.0.0.1:{port}")
        for role, url in zip(self.roles, self.urls, strict=True):
            wait_until_serving(url, role)

    def stop(self) -> None:
        for role in self.roles:
            role.stop()


@pytest.fixture(scope="module")
def gateways(kafka_bootstrap: str, clickhouse_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    running = Gateways(kafka_bootstrap, clickhouse_url, tmp_path_factory.mktemp("limits"))
    yield running
    running.stop()


def _wait_known(url: str, org_id: str, token_id: str) -> None:
    """Until this instance has folded the key (asked as the admin, which no limit counts)."""
    headers = {"Authorization": f"Bearer {admin_token}"}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = httpx.get(f"{url}/v1/organizations/{org_id}/tokens", headers=headers)
        if response.status_code == 200 and token_id in {t["id"] for t in response.json()["data"]}:
            return
        time.sleep(0.1)
    raise AssertionError(f"{url} never learned token {token_id}")


def _hammer(url: str, key: str, stop_at: float, counts: dict[str, int], lock: threading.Lock) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)
    while time.monotonic() < stop_at and counts["throttled"] < 4 * limit:
        try:
            client.models.list()
            outcome = "admitted"
        except openai.RateLimitError as error:
            assert error.response.headers["x-ratelimit-limit-requests"] == str(limit)
            assert int(error.response.headers["retry-after"]) >= 1
            outcome = "throttled"
        with lock:
            counts[outcome] += 1


def _events(bootstrap: str, org_id: str) -> tuple[int, int]:
    consumer = KafkaLog(bootstrap).consumer([topics.REQUESTS], client_id="test-limits-audit")
    admitted = throttled = 0
    idle_polls = 0
    try:
        while idle_polls < 10:
            records = consumer.poll(1000, 200)
            idle_polls = 0 if records else idle_polls + 1
            for record in records:
                event = decode_event(record.value)
                if event.org_id != org_id:
                    continue
                admitted += isinstance(event, RequestAdmitted)
                throttled += isinstance(event, RequestThrottled)
    finally:
        consumer.close()
    return admitted, throttled


def test_two_gateways_share_one_limit(gateways: Gateways, kafka_bootstrap: str) -> None:
    admin = Admin(gateways.urls[0], admin_token)
    org_id = admin.organization("limits", "pro")
    response = admin.client.post(f"/v1/organizations/{org_id}/limits", json={"requests": limit})
    assert response.status_code == 200, response.text
    created = admin.client.post(f"/v1/organizations/{org_id}/tokens", json={"name": "load", "scopes": ["user:read"]})
    key, token_id = created.json()["secret"], created.json()["token"]["id"]
    for url in gateways.urls:
        _wait_known(url, org_id, token_id)
        limits = httpx.get(
            f"{url}/v1/organizations/{org_id}/limits", headers={"Authorization": f"Bearer {admin_token}"}
        )
        assert limits.json()["per_minute"]["requests"] == limit

    lock = threading.Lock()
    per_gateway = [{"admitted": 0, "throttled": 0} for _ in gateways.urls]
    started = time.monotonic()
    stop_at = started + hammer_s_max
    workers = [
        threading.Thread(target=_hammer, args=(url, key, stop_at, counts, lock))
        for url, counts in zip(gateways.urls, per_gateway, strict=True)
        for _ in range(threads_per_gateway)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - started
    assert elapsed < 55, "the whole run must fit in one window for the bound to apply"

    admitted = sum(c["admitted"] for c in per_gateway)
    stats = [httpx.get(f"{url}/healthz").json()["ratelimit"] for url in gateways.urls]
    delays = [s["propagation_ms_max"] for s in stats if s["propagation_ms_max"] is not None]
    assert delays, f"no instance measured the other's events: {stats}"
    d_max_s = max(delays) / 1000
    rate_max = max((c["admitted"] + c["throttled"]) / elapsed for c in per_gateway)
    slack = math.ceil((len(gateways.urls) - 1) * rate_max * d_max_s) + len(gateways.urls)
    report = (
        f"admitted {admitted} of limit {limit} (per gateway {per_gateway}); rate_max {rate_max:.0f}/s, "
        f"d_max {d_max_s * 1000:.0f} ms, slack {slack}; propagation {stats}"
    )
    print(report)
    assert all(c["admitted"] > 0 for c in per_gateway), report  # both gateways took part
    assert sum(c["throttled"] for c in per_gateway) > 0, report
    assert limit <= admitted <= limit + slack, report
    assert admitted < 2 * limit, report  # what two unshared windows would admit

    # Every admitted and every throttled request is an event on the log.
    logged_admitted, logged_throttled = _events(kafka_bootstrap, org_id)
    assert logged_admitted == admitted, report
    assert logged_throttled == sum(c["throttled"] for c in per_gateway), report
