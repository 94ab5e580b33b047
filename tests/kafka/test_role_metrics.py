"""Every role's own metrics, as Prometheus scrapes them in production: gateway, ledger, worker and
projector as separate processes on the real broker, the three without HTTP on TOLLGATE_METRICS_PORT.
After mixed traffic (charged chats, a 402, a 429, an idempotent replay), each role's series moved by
exactly what was sent, every consumer's lag is back to 0, and every role says it is ready."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Admin, Role, free_port, migrated_database, wait_until_serving

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
admin_token = "tga_role_metrics"
roles = ("gateway", "ledger", "worker", "projector")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Stack:
    def __init__(self, bootstrap: str, clickhouse: str, root: Path) -> None:
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        env = {
            "TOLLGATE_KAFKA_BOOTSTRAP": bootstrap,
            "TOLLGATE_CLICKHOUSE_URL": migrated_database(clickhouse, "role_metrics"),
            "TOLLGATE_ADMIN_TOKEN": admin_token,
            "TOLLGATE_LOG_FORMAT": "json",
            "TOLLGATE_LOG_LEVEL": "INFO",
        }
        self.metrics_urls = {"gateway": self.base_url}
        self.roles: dict[str, Role] = {}
        for role in ("ledger", "worker", "projector"):
            metrics_port = free_port()
            self.metrics_urls[role] = f"http://127.0.0.1:{metrics_port}"
            self.roles[role] = Role(role, [role], {**env, "TOLLGATE_METRICS_PORT": str(metrics_port)}, root)
        gateway_args = ["gateway", "--port", str(port), "--data-dir", str(root / "gateway")]
        self.roles["gateway"] = Role("gateway", gateway_args, env, root)
        wait_until_serving(self.base_url, self.roles["gateway"])
        self.admin = Admin(self.base_url, admin_token)

    def stop(self) -> None:
        for role in self.roles.values():
            role.stop()


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, clickhouse_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(kafka_bootstrap, clickhouse_url, tmp_path_factory.mktemp("role-metrics"))
    yield running
    running.stop()


def scrape(url: str) -> Samples:
    answer = httpx.get(f"{url}/metrics", timeout=10)
    assert answer.status_code == 200, answer.text
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= set(have))


def eventually(check: Callable[[], bool], what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not in {timeout_s} s: {what}"
        time.sleep(0.25)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def chat(stack: Stack, key: str, **headers: str) -> int:
    body = {"model": "sim-chat-small", "messages": [{"role": "user", "content": "count me"}], "max_tokens": 8}
    answer = httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}", **headers},
        timeout=60,
    )
    return answer.status_code


def test_each_roles_series_move_by_what_was_sent_and_settle(stack: Stack) -> None:
    for role, url in stack.metrics_urls.items():
        eventually(lambda url=url: ready(url), f"{role} ready")  # type: ignore[misc]
    rich = stack.admin.organization("rich")
    stack.admin.grant(rich, "5")
    rich_key = stack.admin.token(rich)
    poor = stack.admin.organization("poor")
    stack.admin.grant(poor, "0.000001")
    poor_key = stack.admin.token(poor)
    limited = stack.admin.organization("limited")
    stack.admin.grant(limited, "5")
    limits = stack.admin.client.post(f"/v1/organizations/{limited}/limits", json={"jobs": 1})
    assert limits.status_code == 200, limits.text
    limited_key = stack.admin.token(limited)
    before = {role: scrape(url) for role, url in stack.metrics_urls.items()}

    statuses = [chat(stack, rich_key) for _ in range(3)]
    statuses += [chat(stack, rich_key, **{"idempotency-key": "metrics-once"}) for _ in range(2)]  # one run, a replay
    statuses += [chat(stack, poor_key), chat(stack, limited_key), chat(stack, limited_key)]
    assert statuses == [200] * 5 + [402, 200, 429]
    ran = 5  # three, the idempotent one once, the limited one's first

    def delta(role: str, name: str, **labels: str) -> float:
        return total(scrape(stack.metrics_urls[role]), name, **labels) - total(before[role], name, **labels)

    eventually(lambda: delta("projector", "tollgate_projector_rows_total", table="usage_events") >= ran + 1, "rows")

    def settled() -> bool:
        """Every consumer caught up and ready, and no hold, lease, job or unwritten row left open (the
        gauges follow the roles' loops, a poll behind the answers)."""
        now = {role: scrape(url) for role, url in stack.metrics_urls.items()}
        for role, url in stack.metrics_urls.items():
            lags = [v for (name, _), v in now[role].items() if name == "tollgate_consumer_lag_records"]
            if not lags or max(lags) != 0 or not ready(url):
                return False
        return (
            total(now["ledger"], "tollgate_ledger_open_holds") == 0
            and total(now["ledger"], "tollgate_ledger_open_leases") == 0
            and total(now["worker"], "tollgate_worker_jobs_running") == 0
            and total(now["projector"], "tollgate_projector_rows_pending") == 0
        )

    try:
        eventually(settled, "every consumer's lag back to 0, and no hold, lease, job or row left open")
    except AssertionError:
        # Say which of them did not settle.
        now = {role: scrape(url) for role, url in stack.metrics_urls.items()}
        watched = (
            "tollgate_consumer_lag_records",
            "tollgate_ledger_open_holds",
            "tollgate_ledger_open_leases",
            "tollgate_worker_jobs_running",
            "tollgate_projector_rows_pending",
        )
        open_ = {role: {key: v for key, v in series.items() if key[0] in watched and v} for role, series in now.items()}
        raise AssertionError(
            f"not settled: {open_}; ready: {[ready(url) for url in stack.metrics_urls.values()]}"
        ) from None
    after = {role: scrape(url) for role, url in stack.metrics_urls.items()}
    for role in roles:  # one registry per process: each listener reports its own role's consumers
        lag_roles = {dict(labels)["role"] for (name, labels) in after[role] if name == "tollgate_consumer_lag_records"}
        assert lag_roles == {role}, (role, lag_roles)
        assert total(after[role], "tollgate_role_ready", role=role) == 1

    chat_route = {"route": "/v1/chat/completions", "method": "POST"}
    chat_endpoint = {"endpoint": "/v1/chat/completions"}
    # (role, series, labels) -> the change expected; compared at once, so a failure shows every figure.
    expected: dict[tuple[str, str, str], float] = {}
    observed: dict[tuple[str, str, str], float] = {}
    decisions = "tollgate_ledger_decisions_total"
    for role, name, labels, change in [
        ("gateway", "tollgate_http_requests_total", {"status": "200", **chat_route}, ran + 1),
        ("gateway", "tollgate_http_requests_total", {"status": "402", **chat_route}, 1),
        ("gateway", "tollgate_http_requests_total", {"status": "429", **chat_route}, 1),
        ("gateway", "tollgate_payment_required_total", {"route": "/v1/chat/completions"}, 1),
        ("gateway", "tollgate_idempotent_replays_total", {"route": "/v1/chat/completions"}, 1),
        ("gateway", "tollgate_ratelimit_throttled_total", {"kind": "jobs"}, 1),
        ("gateway", "tollgate_gateway_added_seconds_count", chat_endpoint, ran),
        ("ledger", decisions, {"command": "place_hold.v1", "result": "accepted"}, ran),
        ("ledger", decisions, {"command": "place_hold.v1", "result": "insufficient_credits"}, 1),
        ("ledger", decisions, {"command": "capture_hold.v1", "result": "accepted"}, ran),
        ("ledger", "tollgate_ledger_lease_events_total", {"event": "granted"}, ran),
        ("worker", "tollgate_worker_jobs_total", {"pool": "default", "outcome": "completed"}, ran),
        ("projector", "tollgate_projector_rows_total", {"table": "usage_events"}, ran + 1),
        ("projector", "tollgate_projector_visible_seconds_count", {}, ran + 1),
    ]:
        key = (role, name, ",".join(f"{k}={v}" for k, v in sorted(labels.items())))
        expected[key] = change
        observed[key] = total(after[role], name, **labels) - total(before[role], name, **labels)
    assert observed == expected
    assert total(after["projector"], "tollgate_projector_insert_seconds_count") >= 1
    for role in ("ledger", "worker", "projector"):  # nothing of the gateway's in another process
        assert total(after[role], "tollgate_http_requests_total") == 0


def test_json_logs_name_the_role_on_every_line(stack: Stack) -> None:
    for name, role in stack.roles.items():
        lines = [line for line in role.output().splitlines() if line.startswith("{")]
        assert lines, f"{name} wrote no JSON line"
        assert all(f'"role":"{name}"' in line for line in lines[:20]), lines[:3]
