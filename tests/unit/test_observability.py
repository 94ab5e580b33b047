"""Structured logs (role, request and organization on every line, JSON when asked), role health
(live while loops turn, ready while caught up within the bound) and the roles' metrics listener."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from eventlog import logs
from eventlog.metrics import Metrics, RoleHealth, serve_metrics


@pytest.fixture(autouse=True)
def unbound() -> Iterator[None]:
    """No role, request or organization bound to this thread's context (a gateway started by another
    test in this process binds its thread's role), as in a fresh role process."""
    tokens = [(var, var.set("")) for var in (logs.role_var, logs.request_id_var, logs.org_id_var)]
    yield
    for var, token in reversed(tokens):
        var.reset(token)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger configured as a role's process does, writing to a buffer."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logs.configure("INFO", "json", role="ledger")
    buffer = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    yield buffer
    root.handlers[:], root.level = saved


def lines(buffer: io.StringIO) -> list[dict[str, str]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_a_json_line_names_the_role_the_request_and_the_organization(captured: io.StringIO) -> None:
    logging.getLogger("ledger.role").warning("command %s rejected", "c1", extra=logs.about("req_1", "org_1"))
    (line,) = lines(captured)
    assert line["role"] == "ledger" and line["request_id"] == "req_1" and line["org_id"] == "org_1"
    assert line["message"] == "command c1 rejected" and line["level"] == "WARNING"
    assert line["time"].endswith("Z")


def test_a_line_takes_the_request_bound_to_its_context(captured: io.StringIO) -> None:
    def handle_request() -> None:
        logs.bind_role("gateway")
        logs.bind_request("req_2")
        logs.bind_org("org_2")
        logging.getLogger("gateway").info("answered")

    thread = threading.Thread(target=handle_request)  # a fresh context, as each request's task has
    thread.start()
    thread.join()
    logging.getLogger("gateway").info("outside any request")
    first, second = lines(captured)
    assert (first["role"], first["request_id"], first["org_id"]) == ("gateway", "req_2", "org_2")
    assert second["role"] == "ledger" and "request_id" not in second


def test_an_exception_goes_into_its_line(captured: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("worker").exception("job crashed", extra=logs.about("req_3"))
    (line,) = lines(captured)
    assert "ValueError: boom" in line["exception"] and line["request_id"] == "req_3"


def test_text_lines_carry_the_same_fields() -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logs.configure("INFO", "text", role="worker")
        buffer = io.StringIO()
        handler = root.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(buffer)
        logging.getLogger("workers.role").info("job done", extra=logs.about("req_4", "org_4"))
        assert "[worker request_id=req_4 org_id=org_4]: job done" in buffer.getvalue()
    finally:
        root.handlers[:], root.level = saved


def test_a_role_is_live_while_its_loops_turn_and_ready_once_caught_up() -> None:
    health = RoleHealth("projector")
    assert health.status(30, 100) == {"role": "projector", "live": False, "ready": False, "sources": {}}
    health.stalled("ledger")  # started (or rebuilding): live, lag unknown
    status = health.status(30, 100)
    assert status["live"] and not status["ready"]
    health.beat("ledger", lag_records=101)
    assert not health.status(30, 100)["ready"]
    health.beat("ledger", lag_records=100)
    assert health.status(30, 100)["ready"]
    time.sleep(0.05)
    stuck = health.status(0.01, 100)  # no turn within the bound: neither live nor ready
    assert not stuck["live"] and not stuck["ready"]


def test_the_listener_serves_metrics_liveness_and_readiness() -> None:
    metrics = Metrics()
    metrics.ledger_decisions.labels("place_hold.v1", "accepted").inc(3)
    reporter = metrics.lag_reporter("ledger", "commands")
    server = serve_metrics(metrics, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        families = {family.name: family for family in text_string_to_metric_families(text)}
        (decided,) = families["tollgate_ledger_decisions"].samples[:1]
        assert decided.labels == {"command": "place_hold.v1", "result": "accepted"} and decided.value == 3
        with urllib.request.urlopen(f"{base}/livez", timeout=5) as answer:
            assert answer.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/readyz", timeout=5)
        assert refused.value.code == 503  # the lag is not measured yet
        reporter.tick(lambda: {("tollgate.commands", 0): 0, ("tollgate.commands", 1): 2})
        with urllib.request.urlopen(f"{base}/readyz", timeout=5) as answer:
            body = json.loads(answer.read())
        assert body["roles"]["ledger"]["sources"]["commands"]["lag_records"] == 2
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        assert 'tollgate_consumer_lag_records{partition="1",role="ledger",topic="tollgate.commands"} 2.0' in text
        assert 'tollgate_role_ready{role="ledger"} 1.0' in text
    finally:
        server.shutdown()
        server.server_close()
