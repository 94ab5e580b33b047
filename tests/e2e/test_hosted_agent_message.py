"""A hosted agent's message against `tollgate dev` (a real process, the embedded log and a ClickHouse
server): EmpirioLabs' document has no curl example for the hosted agents' sub-routes, so the request is
its ``messageHostedAgentInstance`` body as the document specifies it. The charge reconciles:
``usage.cost_usd`` == ``x-credits-used`` == the balance drop == the usage event's cost, and the event
says ``source: hosted_agents`` and names the agent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import Dev, balance_micros, settled_balance, usage_rows_of

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    data_dir: Path = tmp_path_factory.mktemp("hosted-agents")
    server = Dev(data_dir, data_dir)
    yield server
    server.stop()


def _call(dev: Dev, key: str, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.request(method, dev.base_url + path, headers=headers, json=body, timeout=60)


def _hosted_event(dev: Dev, key: str, request_id: str) -> dict[str, Any]:
    rows = usage_rows_of(dev.base_url, key, request_id, source="hosted_agents")
    assert rows, f"no hosted_agents usage event for {request_id}"
    return rows[0]


def test_a_hosted_agents_message_is_charged_as_a_chat_and_reconciles(dev: Dev) -> None:
    _, key = dev.organization(credits=20)
    created = _call(dev, key, "POST", "/v1/hosted-agents/instances", {"agent_type": "hermes", "name": "My Assistant"})
    assert created.status_code == 201, created.text
    agent_id = created.json()["instance"]["id"]
    before = settled_balance(dev.base_url, key, 5_000_000)  # 20 credits less the month (15)
    assert before == 5_000_000
    path = f"/v1/hosted-agents/instances/{agent_id}/message"
    answer = _call(dev, key, "POST", path, {"messages": [{"role": "user", "content": "Summarize my week."}]})
    assert answer.status_code == 200, answer.text
    body = json.loads(answer.text, parse_float=Decimal)
    assert body["status"] == "completed" and isinstance(body["content"], str) and body["content"]
    micros = int(body["usage"]["cost_usd"] * 1_000_000)
    assert micros > 0 and Decimal(answer.headers["x-credits-used"]) * 1_000_000 == micros
    assert settled_balance(dev.base_url, key, before - micros) == before - micros
    event = _hosted_event(dev, key, body["request_id"])
    assert (event["source"], event["model"], event["cost"]["amount_micros"]) == (
        "hosted_agents",
        "qwen3-7-plus",
        micros,
    )
    assert (event["metadata"]["agent_instance_id"], event["metadata"]["agent_name"]) == (agent_id, "My Assistant")
    # A stopped agent takes no message, and nothing is charged.
    assert _call(dev, key, "POST", f"/v1/hosted-agents/instances/{agent_id}/stop").status_code == 200
    refused = _call(dev, key, "POST", path, {"messages": [{"role": "user", "content": "Still there?"}]})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "agent_stopped"
    assert balance_micros(dev.base_url, key) == before - micros
