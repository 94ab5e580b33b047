"""Casola's agents (``/api/agents``) on the HTTP surface: an agent's DAG checked when it is created, a
run whose nodes are metered jobs (each charged as the same ``POST /api/jobs`` is), a map node's items
within its tolerance, templates between nodes, the run's cost the sum of its sub-jobs' charges, per
organization, and errors in Casola's envelope."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest

from tests.harness import Gateway
from tests.http.dialects import Account

flux = "black-forest-labs/FLUX.1-schnell"
single_image = {
    "name": "Image Generator",
    "dag": {
        "nodes": {
            "gen": {
                "model_id": flux,
                "task": "fal/text-to-image",
                "inputs": {"prompt": "${input.prompt}"},
                "outputs": ["images[0].url"],
            }
        },
        "edges": [],
    },
}


def _map_then_summary(tolerance: float, prompt: str = "${item}") -> dict[str, Any]:
    return {
        "name": "Batch",
        "dag": {
            "nodes": {
                "generate": {
                    "type": "map",
                    "items": "${input.prompts}",
                    "node": {"model_id": flux, "task": "fal/text-to-image", "payload": {"prompt": prompt}},
                    "max_concurrency": 2,
                    "tolerance": tolerance,
                },
                "summary": {
                    "type": "task",
                    "model_id": "Qwen/Qwen3.5-4B",
                    "task": "openai/chat-completion",
                    "payload": {
                        "messages": [
                            {"role": "system", "content": "Summarize the following items."},
                            {
                                "$each": "${nodes.generate.result.items}",
                                "template": {"role": "user", "content": "Item: ${item.url}"},
                            },
                        ]
                    },
                },
            },
            "edges": [["generate", "summary"]],
        },
    }


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw, credits="20")


def _create(account: Account, body: dict[str, Any]) -> str:
    response = account.gw.call("POST", "/api/agents", account.key, json=body)
    assert response.status_code == 201, response.text
    agent = response.json()["agent"]
    assert agent["name"] == body["name"] and agent["dag"] == body["dag"]
    return str(agent["id"])


def _run(account: Account, agent_id: str, params: dict[str, Any]) -> dict[str, Any]:
    response = account.gw.call("POST", f"/api/agents/{agent_id}/run", account.key, json={"input_params": params})
    assert response.status_code == 202, response.text
    run = response.json()["run"]
    assert (run["agent_id"], run["status"], run["input_params"]) == (agent_id, "pending", params)
    assert isinstance(run["created_at"], int) and run["id"].startswith("run_")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        polled = account.gw.call("GET", f"/api/agents/{agent_id}/runs/{run['id']}", account.key)
        assert polled.status_code == 200, polled.text
        if polled.json()["run"]["status"] in ("completed", "failed"):
            return dict(polled.json()["run"])
        time.sleep(0.05)
    raise AssertionError("the run did not end")


def _job(account: Account, job_id: str) -> dict[str, Any]:
    response = account.gw.call("GET", f"/api/jobs/{job_id}", account.key)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _settles_at(account: Account, expected: int) -> None:
    deadline = time.monotonic() + 30
    while account.balance_micros() != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert account.balance_micros() == expected


def test_the_documents_agent_runs_its_node_as_a_metered_job(account: Account) -> None:
    before = account.balance_micros()
    agent_id = _create(account, single_image)
    assert account.gw.call("GET", f"/api/agents/{agent_id}", account.key).json()["agent"]["id"] == agent_id
    run = _run(account, agent_id, {"prompt": "a sunset over the ocean"})
    assert run["status"] == "completed" and run["error"] is None
    node = run["nodes"]["gen"]
    assert node["status"] == "completed" and len(node["job_ids"]) == 1
    url = node["result"]["images[0].url"]
    assert account.gw.call("GET", url.removeprefix("http://testserver.local")).content[:8] == b"\x89PNG\r\n\x1a\n"
    # The run completes with its job's outcome; the job itself once the ledger has settled its charge.
    deadline = time.monotonic() + 10
    while (job := _job(account, node["job_ids"][0]))["status"] != "completed" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert job["status"] == "completed" and job["model_id"] == flux
    assert run["cost_micros"] == node["cost_micros"] == job["cost_micros"] == 3000
    assert Decimal(str(run["cost_usd"])) == Decimal("0.003")
    _settles_at(account, before - 3000)


def test_a_map_feeds_each_into_the_next_node_and_each_sub_job_costs_what_it_costs_sent_directly(
    account: Account,
) -> None:
    before = account.balance_micros()
    agent_id = _create(account, _map_then_summary(0))
    prompts = ["a neon cityscape at night", "a watercolor forest in autumn", "a pencil sketch of a mountain lake"]
    run = _run(account, agent_id, {"prompts": prompts})
    assert run["status"] == "completed", run
    generate, summary = run["nodes"]["generate"], run["nodes"]["summary"]
    assert (generate["total"], generate["succeeded"], generate["failed"]) == (3, 3, 0)
    items = generate["result"]["items"]
    assert [item["prompt"] for item in items] == prompts
    chat = summary["result"]
    assert chat["object"] == "chat.completion" and chat["usage"]["cost_micros"] == summary["cost_micros"]
    # The same chat request sent directly is charged the same (the simulated model is deterministic).
    messages = [{"role": "system", "content": "Summarize the following items."}]
    messages += [{"role": "user", "content": f"Item: {item['url']}"} for item in items]
    direct = account.gw.call(
        "POST",
        "/api/jobs",
        account.key,
        json={"model_id": "Qwen/Qwen3.5-4B", "task": "openai/chat-completion", "payload": {"messages": messages}},
    )
    assert direct.status_code == 202, direct.text
    deadline = time.monotonic() + 30
    while (sent := _job(account, direct.json()["id"]))["status"] != "completed" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sent["cost_micros"] == summary["cost_micros"] > 0
    total = generate["cost_micros"] + summary["cost_micros"]
    assert run["cost_micros"] == total and generate["cost_micros"] == 3 * 3000
    assert sum(_job(account, job_id)["cost_micros"] for job_id in generate["job_ids"] + summary["job_ids"]) == total
    _settles_at(account, before - total - sent["cost_micros"])


def test_a_map_within_its_tolerance_completes_and_beyond_it_fails_the_run(account: Account) -> None:
    params = {"prompts": [{"text": "a red kite"}, {"other": 1}, {"text": "a blue boat"}]}
    lenient = _run(account, _create(account, _map_then_summary(0.5, "${item.text}")), params)
    assert lenient["status"] == "completed"
    generate = lenient["nodes"]["generate"]
    assert (generate["succeeded"], generate["failed"]) == (2, 1)
    assert generate["errors"][0]["index"] == 1 and generate["errors"][0]["code"] == "template_error"
    assert [item["prompt"] for item in generate["result"]["items"]] == ["a red kite", "a blue boat"]
    assert generate["cost_micros"] == 2 * 3000 and lenient["nodes"]["summary"]["status"] == "completed"
    strict = _run(account, _create(account, _map_then_summary(0, "${item.text}")), params)
    assert strict["status"] == "failed" and strict["error"]["node"] == "generate"
    assert strict["nodes"]["generate"]["error"]["code"] == "tolerance_exceeded"
    assert strict["nodes"]["summary"]["status"] == "skipped"
    # The items that ran were charged, as they would be sent directly; nothing after the failure ran.
    assert strict["cost_micros"] == 2 * 3000 and strict["nodes"]["summary"]["cost_micros"] == 0


def test_a_node_the_balance_cannot_hold_fails_the_run_and_charges_nothing(gw: Gateway) -> None:
    poor = Account(gw, credits="0.001")
    before = poor.balance_micros()
    run = _run(poor, _create(poor, single_image), {"prompt": "x"})
    assert run["status"] == "failed" and run["cost_micros"] == 0
    assert run["nodes"]["gen"]["error"]["code"] == "insufficient_credits"
    assert poor.balance_micros() == before


def test_a_dag_that_cannot_run_is_refused_in_casolas_envelope(account: Account) -> None:
    def node(**extra: Any) -> dict[str, Any]:
        return {"model_id": flux, "task": "fal/text-to-image", "payload": {"prompt": "x"}, **extra}

    cases: list[tuple[Any, str, str]] = [
        ({}, "invalid_dag", "dag.nodes"),
        ({"nodes": {"a": node(task="magic")}}, "invalid_dag", "dag.nodes.a.task"),
        ({"nodes": {"a": node(model_id="no-such-model")}}, "model_not_found", "dag.nodes.a.model_id"),
        ({"nodes": {"a": node(), "b": node()}, "edges": [["a", "c"]]}, "invalid_dag", "dag.edges[0]"),
        ({"nodes": {"a": node(), "b": node()}, "edges": [["a", "b"], ["b", "a"]]}, "invalid_dag", "dag.edges"),
        ({"nodes": {"a": node(payload={"prompt": "${nodes.z.result}"})}}, "invalid_dag", "dag.nodes.a"),
        ({"nodes": {"a": {"type": "map", "items": "x", "node": node()}}}, "invalid_dag", "dag.nodes.a.items"),
        (
            {"nodes": {"a": {"type": "map", "items": "${input.x}", "node": node(), "tolerance": 2}}},
            "invalid_dag",
            "dag.nodes.a.tolerance",
        ),
        ({"nodes": {"bad id": node()}}, "invalid_dag", "dag.nodes.bad id"),
    ]
    for dag, code, param in cases:
        response = account.gw.call("POST", "/api/agents", account.key, json={"name": "x", "dag": dag})
        assert response.status_code == 400, (dag, response.text)
        error = response.json()["error"]
        assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error"), dag
        assert error["message"]
    missing = account.gw.call("POST", "/api/agents", account.key, json={"name": "x"})
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "missing_required_parameter"


def test_agents_and_runs_belong_to_their_organization(gw: Gateway, account: Account) -> None:
    agent_id = _create(account, single_image)
    run = _run(account, agent_id, {"prompt": "mine"})
    other = Account(gw, credits="5")
    for method, path in (
        ("GET", f"/api/agents/{agent_id}"),
        ("POST", f"/api/agents/{agent_id}/run"),
        ("GET", f"/api/agents/{agent_id}/runs/{run['id']}"),
    ):
        response = gw.call(method, path, other.key, json={"input_params": {}} if method == "POST" else None)
        assert response.status_code == 404, response.text
        assert response.json()["error"] == {
            "code": "not_found",
            "message": "Agent not found.",
            "type": "not_found_error",
            "param": "id",
        }
    reader, _ = gw.key(account.org, ["user:read"])
    assert gw.call("POST", "/api/agents", reader, json=single_image).status_code == 403
    assert gw.call("GET", f"/api/agents/{agent_id}", reader).status_code == 200
    assert gw.call("GET", f"/api/agents/{agent_id}/runs/run_nope", account.key).status_code == 404
