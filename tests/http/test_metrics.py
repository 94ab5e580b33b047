"""The gateway's /metrics, /livez and /readyz on the in-process stack (gateway, ledger, worker and
projector share one registry, as in `tollgate dev`): each series moves by exactly what was sent.

The tier's stack is shared, so every figure is compared before and after this test's own traffic."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Gateway

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(gw: Gateway) -> Samples:
    response = gw.call("GET", "/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= set(have))


def eventually(check: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "the series did not move in time"
        time.sleep(0.1)


def settled(gw: Gateway) -> bool:
    """Every consumer caught up, and no hold, lease, job or unwritten row left open."""
    samples = scrape(gw)
    lags = [v for (name, _), v in samples.items() if name == "tollgate_consumer_lag_records"]
    return (
        bool(lags)
        and max(lags) == 0
        and total(samples, "tollgate_ledger_open_holds") == 0
        and total(samples, "tollgate_ledger_open_leases") == 0
        and total(samples, "tollgate_worker_jobs_running") == 0
        and value(samples, "tollgate_projector_rows_pending") == 0
    )


def chat(gw: Gateway, key: str, **headers: str) -> int:
    body = {"model": "sim-chat-small", "messages": [{"role": "user", "content": "count me"}], "max_tokens": 8}
    return int(gw.call("POST", "/v1/chat/completions", key, json=body, headers=headers).status_code)


def test_every_series_moves_by_what_was_sent(gw: Gateway) -> None:
    org = gw.organization("pro", credits="5")
    key, _ = gw.key(org, ["user:read", "user:write"])
    poor = gw.organization("pro", credits="0.000001")
    poor_key, _ = gw.key(poor, ["user:read", "user:write"])
    limited = gw.organization("pro", limits={"jobs": 1}, credits="5")
    limited_key, _ = gw.key(limited, ["user:read", "user:write"])
    # The tier's stack is shared: what earlier tests sent must be done before the baseline is taken.
    eventually(lambda: settled(gw), 30)
    before = scrape(gw)

    sent = 5
    assert [chat(gw, key) for _ in range(sent)] == [200] * sent
    assert chat(gw, poor_key) == 402
    assert chat(gw, key, **{"Idempotency-Key": "metrics-1"}) == 200
    assert chat(gw, key, **{"Idempotency-Key": "metrics-1"}) == 200  # replayed, not run again
    assert chat(gw, limited_key) == 200
    assert chat(gw, limited_key) == 429
    assert gw.call("GET", "/no/such/route").status_code == 404
    ran = sent + 2  # the first of the idempotent pair, the limited organization's first

    def moved() -> bool:
        after = scrape(gw)
        return (
            value(after, "tollgate_projector_rows_total", table="usage_events")
            - value(before, "tollgate_projector_rows_total", table="usage_events")
            >= ran + 1
            and total(after, "tollgate_worker_jobs_total", outcome="completed")
            - total(before, "tollgate_worker_jobs_total", outcome="completed")
            >= ran
        )

    eventually(moved)
    after = scrape(gw)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    chat_route = {"route": "/v1/chat/completions", "method": "POST"}
    assert delta("tollgate_http_requests_total", status="200", **chat_route) == ran + 1  # the replay answered 200 too
    assert delta("tollgate_http_requests_total", status="402", **chat_route) == 1
    assert delta("tollgate_http_requests_total", status="429", **chat_route) == 1
    assert delta("tollgate_http_requests_total", route="unmatched", status="404") == 1
    assert delta("tollgate_payment_required_total", route="/v1/chat/completions") == 1
    assert delta("tollgate_idempotent_replays_total", route="/v1/chat/completions") == 1
    assert delta("tollgate_ratelimit_throttled_total", kind="jobs") == 1
    # Every sync answer that ran a job: what the gateway added over the job's own run.
    assert delta("tollgate_gateway_added_seconds_count", endpoint="/v1/chat/completions") == ran
    assert delta("tollgate_gateway_added_seconds_sum", endpoint="/v1/chat/completions") > 0
    # The ledger decided a hold and a capture per job that ran, and refused the poor one's hold.
    assert delta("tollgate_ledger_decisions_total", command="place_hold.v1", result="accepted") == ran
    assert delta("tollgate_ledger_decisions_total", command="place_hold.v1", result="insufficient_credits") == 1
    assert delta("tollgate_ledger_decisions_total", command="capture_hold.v1", result="accepted") == ran
    assert delta("tollgate_ledger_decisions_total", command="start_job.v1", result="accepted") >= ran
    assert delta("tollgate_ledger_lease_events_total", event="granted") == ran
    assert delta("tollgate_worker_jobs_total", pool="default", outcome="completed") == ran
    # The projector wrote a row per charge and one for the refusal.
    assert delta("tollgate_projector_rows_total", table="usage_events") == ran + 1
    assert delta("tollgate_projector_visible_seconds_count") == ran + 1
    assert delta("tollgate_projector_batch_rows_count") >= 1
    assert delta("tollgate_projector_insert_seconds_count") >= 1
    assert value(after, "tollgate_jobs", status="completed", pool="default") >= ran


def test_gauges_settle_when_the_traffic_is_done(gw: Gateway) -> None:
    org = gw.organization("pro", credits="5")
    key, _ = gw.key(org, ["user:read", "user:write"])
    assert [chat(gw, key) for _ in range(3)] == [200] * 3

    eventually(lambda: settled(gw), 30)
    samples = scrape(gw)
    roles = {dict(labels)["role"] for (name, labels), _ in samples.items() if name == "tollgate_consumer_lag_records"}
    assert roles == {"gateway", "ledger", "worker", "projector"}
    # Slices reserve money for the gateway: the ledger shows it held until they are returned or expire.
    assert total(samples, "tollgate_ledger_held_micros") >= 0
    for role in ("gateway", "ledger", "worker", "projector"):
        assert value(samples, "tollgate_role_ready", role=role) == 1


def test_liveness_and_readiness_name_each_role(gw: Gateway) -> None:
    live = gw.call("GET", "/livez")
    assert live.status_code == 200, live.text
    eventually(lambda: gw.call("GET", "/readyz").status_code == 200)
    ready = gw.call("GET", "/readyz").json()
    assert set(ready["roles"]) == {"gateway", "ledger", "worker", "projector"}
    gateway = ready["roles"]["gateway"]
    assert set(gateway["sources"]) == {"history", "jobs", "limits"}
    assert all(source["lag_records"] == 0 or source["ready"] for source in gateway["sources"].values())


@pytest.mark.parametrize("path", ["/metrics", "/livez", "/readyz"])
def test_operator_endpoints_need_no_credential_and_are_not_rate_limited(gw: Gateway, path: str) -> None:
    assert gw.call("GET", path).status_code in (200, 503)
