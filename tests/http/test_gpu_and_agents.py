"""GPU Cloud instances and hosted agents on the HTTP surface (issue 18), in EmpirioLabs' shapes:
the public catalog, an instance started against the balance (402 when it cannot cover the first
interval), stopped by its owner and charged to the second, visible in usage and the statement; a
hosted agent's monthly plan charged when accepted (402 otherwise), cancelled by destroying it."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ledger.money import format_credits
from ledger.resources import run_cost_micros
from tests.harness import Gateway
from tests.http.dialects import Account


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw, credits="50")


def _usage_events(account: Account, source: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body = account.gw.call("GET", f"/v1/account/usage?source={source}", account.key).json()
        if len(body["data"]) >= count:
            return list(body["data"])
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} {source} usage events")


def test_the_gpu_catalog_is_public_and_lists_hourly_prices(gw: Gateway) -> None:
    response = gw.call("GET", "/v1/gpu/catalog")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    rtx = next(gpu for gpu in body["data"] if gpu["slug"] == "rtx-4090")
    assert (rtx["name"], rtx["vram_gb"], rtx["price_hourly"], rtx["max_gpus"], rtx["available"]) == (
        "RTX 4090",
        24,
        0.65,
        8,
        True,
    )
    assert gw.call("GET", "/v1/gpu/catalog/h100-nvl").json()["price_hourly"] == 5.6
    missing = gw.call("GET", "/v1/gpu/catalog/tpu-v9")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "gpu_not_found"


@pytest.mark.heavy  # runs the instance for a second and waits for its usage row
def test_a_gpu_instance_is_charged_to_the_second_when_its_owner_stops_it(account: Account) -> None:
    gw = account.gw
    before = account.balance_micros()
    response = gw.call(
        "POST",
        "/v1/gpu/instances",
        account.key,
        json={"gpu_slug": "h100-nvl", "mode": "model", "hf_id": "Qwen/Qwen2.5-7B-Instruct", "name": "demo"},
        headers={"Idempotency-Key": "deploy-1"},
    )
    assert response.status_code == 200, response.text
    instance = response.json()["instance"]
    assert (instance["status"], instance["gpu_slug"], instance["gpu_display"], instance["num_gpus"]) == (
        "running",
        "h100-nvl",
        "H100 NVL",
        1,
    )
    assert instance["price_hourly"] == 5.6 and instance["label"] == "demo" and instance["billed_amount"] == 0
    interval = gw.settings.resource_interval_s
    held = run_cost_micros(5_600_000, 1, interval)
    assert instance["reserved_micros"] == held
    card = gw.admin("GET", f"/v1/organizations/{account.org}/balance").json()
    assert card["held_by_resources_micros"] == held and card["held_micros"] >= held
    # A retry with the same key is the same instance, started once.
    again = gw.call(
        "POST",
        "/v1/gpu/instances",
        account.key,
        json={"gpu_slug": "h100-nvl", "mode": "model", "hf_id": "Qwen/Qwen2.5-7B-Instruct", "name": "demo"},
        headers={"Idempotency-Key": "deploy-1"},
    )
    assert again.json()["instance"]["id"] == instance["id"]
    listed = gw.call("GET", "/v1/gpu/instances", account.key).json()["instances"]
    assert [i["id"] for i in listed] == [instance["id"]]
    time.sleep(1.2)
    stopped = gw.call("POST", f"/v1/gpu/instances/{instance['id']}/stop", account.key)
    assert stopped.status_code == 200, stopped.text
    card = stopped.json()["instance"]
    assert card["status"] == "stopped" and card["stop_reason"] == "stopped"
    assert stopped.headers["x-credits-used"] == format_credits(card["billed_micros"])  # this run's only charge
    seconds = int(card["billed_micros"] * 3600 / 5_600_000 + 0.999)
    assert 2 <= seconds <= interval and card["billed_micros"] == run_cost_micros(5_600_000, 1, seconds)
    assert account.balance_micros() == before - card["billed_micros"]  # the rest of the interval released
    # Stopped: a second stop answers the instance as it is, and nothing more is charged.
    assert gw.call("POST", f"/v1/gpu/instances/{instance['id']}/stop", account.key).json()["instance"] == card
    (event,) = _usage_events(account, "gpu_cloud", 1)
    spend = gw.call("GET", "/v1/account/usage", account.key).json()["spend"]
    assert round(spend["gpu_cloud"] * 1_000_000) == card["billed_micros"] and spend["hosted_agents"] == 0
    assert (event["model"], event["source"], event["status"]) == ("gpu-cloud:h100-nvl", "gpu_cloud", "success")
    assert event["cost"]["amount_micros"] == card["billed_micros"]
    assert event["tokens"]["total"] == 0
    metadata = event["metadata"]
    assert (metadata["gpu_slug"], metadata["gpu_display"], metadata["num_gpus"], metadata["seconds"]) == (
        "h100-nvl",
        "H100 NVL",
        1,
        seconds,
    )
    assert metadata["price_hourly"] == 5.6
    # Destroyed: gone from the list, 404 after.
    destroyed = gw.call("DELETE", f"/v1/gpu/instances/{instance['id']}", account.key)
    assert destroyed.status_code == 200 and destroyed.json()["instance"]["status"] == "destroyed"
    assert gw.call("GET", f"/v1/gpu/instances/{instance['id']}", account.key).status_code == 404
    assert gw.call("GET", "/v1/gpu/instances", account.key).json()["instances"] == []


def test_a_gpu_start_the_balance_cannot_cover_is_402_and_charges_nothing(gw: Gateway) -> None:
    poor = Account(gw, credits="0.01")
    response = gw.call("POST", "/v1/gpu/instances", poor.key, json={"gpu_slug": "h100-nvl", "num_gpus": 8})
    assert response.status_code == 402, response.text
    assert response.json()["error"]["code"] == "insufficient_credits"
    assert poor.balance_micros() == 10_000
    assert gw.call("GET", "/v1/gpu/instances", poor.key).json()["instances"] == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"gpu_slug": "tpu-v9"}, 404, "gpu_not_found"),
        ({"gpu_slug": "rtx-4090", "num_gpus": 9}, 409, "gpu_limit_exceeded"),
        ({"gpu_slug": "rtx-4090", "num_gpus": 0}, 400, None),
        ({"gpu_slug": "rtx-4090", "disk_gb": 99}, 400, None),
        ({"gpu_slug": "rtx-4090", "mode": "custom"}, 422, "invalid_parameter"),
        ({"mode": "model"}, 400, None),
    ],
)
def test_bad_deploy_requests(account: Account, body: dict[str, Any], status: int, code: str | None) -> None:
    response = account.gw.call("POST", "/v1/gpu/instances", account.key, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code", "param"}
    if code is not None:
        assert error["code"] == code


def test_gpu_routes_need_their_scopes(gw: Gateway, account: Account) -> None:
    reader, _ = gw.key(account.org, ["user:read"])
    assert gw.call("POST", "/v1/gpu/instances", reader, json={"gpu_slug": "rtx-4090"}).status_code == 403
    assert gw.call("GET", "/v1/gpu/instances", reader).status_code == 200
    assert gw.call("GET", "/v1/gpu/instances").status_code == 401
    assert gw.call("POST", "/v1/gpu/instances/gpu_nope/stop", account.key).status_code == 404
    assert gw.call("POST", "/v1/gpu/instances/gpu_nope/explode", account.key).status_code == 400


def test_a_hosted_agent_is_charged_its_month_when_accepted_and_destroying_it_stops_renewal(gw: Gateway) -> None:
    owner = Account(gw, credits="20")
    assert gw.call("GET", "/v1/hosted-agents/health").status_code == 200
    config = gw.call("GET", "/v1/hosted-agents/config", owner.key).json()
    basic = next(plan for plan in config["plans"] if plan["slug"] == "hosted-agent-basic")
    assert (basic["monthly_price_usd"], basic["included_messages_monthly"]) == (15, 10_000)
    assert {runtime["slug"] for runtime in config["runtimes"]} == {"openclaw", "hermes"}
    created = gw.call(
        "POST",
        "/v1/hosted-agents/instances",
        owner.key,
        json={"agent_type": "openclaw", "name": "OpenClaw Production", "plan_slug": "hosted-agent-basic"},
    )
    assert created.status_code == 201, created.text
    assert created.headers["x-credits-used"] == "15"
    body = created.json()
    agent = body["instance"]
    assert body["ok"] is True
    assert (agent["agent_type"], agent["name"], agent["status"], agent["billing_status"]) == (
        "openclaw",
        "OpenClaw Production",
        "running",
        "active",
    )
    assert agent["billed_amount"] == 15 and agent["next_billing_at"] == agent["current_period_end"]
    assert owner.balance_micros() == 5_000_000
    # 5 credits left: a second agent's month is refused, and charges nothing.
    refused = gw.call("POST", "/v1/hosted-agents/instances", owner.key, json={"agent_type": "hermes"})
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "insufficient_credits"
    assert owner.balance_micros() == 5_000_000
    config = gw.call("GET", "/v1/hosted-agents/config", owner.key).json()
    assert (config["deployed"], config["agentSpend"], config["balance"]) == (1, 15, 5)
    (event,) = _usage_events(owner, "hosted_agents", 1)
    assert (event["model"], event["cost"]["amount_micros"]) == ("hosted-agent:hosted-agent-basic", 15_000_000)
    assert (event["metadata"]["category"], event["metadata"]["agent_type"]) == ("agents", "openclaw")
    metadata = event["metadata"]
    assert (metadata["agent_name"], metadata["agent_instance_id"]) == ("OpenClaw Production", agent["id"])
    destroyed = gw.call("DELETE", f"/v1/hosted-agents/instances/{agent['id']}", owner.key)
    assert destroyed.status_code == 200, destroyed.text
    assert destroyed.json()["instance"]["status"] == "destroyed"
    assert destroyed.json()["instance"]["next_billing_at"] is None
    assert gw.call("GET", f"/v1/hosted-agents/instances/{agent['id']}", owner.key).status_code == 404
    assert gw.call("GET", "/v1/hosted-agents/instances", owner.key).json()["instances"] == []
    assert owner.balance_micros() == 5_000_000  # the month paid for is not refunded


def test_bad_hosted_agent_requests(account: Account) -> None:
    gw = account.gw
    for body, status in (
        ({"agent_type": "skynet"}, 400),
        ({}, 400),
        ({"agent_type": "hermes", "plan_slug": "platinum"}, 404),
    ):
        response = gw.call("POST", "/v1/hosted-agents/instances", account.key, json=body)
        assert response.status_code == status, response.text
    assert gw.call("GET", "/v1/hosted-agents/instances/agent_nope", account.key).status_code == 404


def test_time_metered_charges_are_lines_of_the_statement(gw: Gateway) -> None:
    owner = Account(gw, credits="20")
    created = gw.call("POST", "/v1/hosted-agents/instances", owner.key, json={"agent_type": "hermes"})
    assert created.status_code == 201, created.text
    _usage_events(owner, "hosted_agents", 1)
    start = datetime.now(UTC) - timedelta(days=1)
    end = start + timedelta(days=2)
    response = gw.admin(
        "GET",
        f"/v1/organizations/{owner.org}/statements",
        params={"from": start.isoformat(), "to": end.isoformat()},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    line = next(line for line in body["lines"] if line["model"] == "hosted-agent:hosted-agent-basic")
    assert (line["unit"], line["quantity"]) == ("plan_months", 1)
    assert body["charges_micros"] == 15_000_000


def test_a_price_book_with_a_negative_gpu_rate_is_refused(gw: Gateway) -> None:
    book = gw.admin("GET", "/v1/price-books").json()["data"][0]
    gpu = {"slug": "rtx-4090", "name": "RTX 4090", "hourly_micros": -1}
    response = gw.admin(
        "POST", "/v1/price-books", json={**book, "version": "negative-gpu", "gpu_classes": {"rtx-4090": gpu}}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_price_book"


def test_a_gpu_whose_balance_covers_one_interval_is_warned_at_once(gw: Gateway) -> None:
    owner = Account(gw, credits="0.1")  # one minute of an H100 (93,334 micros), not two
    response = gw.call("POST", "/v1/gpu/instances", owner.key, json={"gpu_slug": "h100-nvl"})
    assert response.status_code == 200, response.text
    instance = response.json()["instance"]
    assert (instance["status"], instance["balance_low"]) == ("running", True)
    # Nothing else fits meanwhile: the interval's reservation is held.
    refused = gw.call("POST", "/v1/gpu/instances", owner.key, json={"gpu_slug": "rtx-4090", "num_gpus": 8})
    assert refused.status_code == 402, refused.text
    stopped = gw.call("POST", f"/v1/gpu/instances/{instance['id']}/stop", owner.key).json()["instance"]
    assert (stopped["status"], stopped["balance_low"]) == ("stopped", False)
    assert owner.balance_micros() == 100_000 - stopped["billed_micros"]


def test_a_gpu_start_is_not_refused_for_what_this_gateways_slice_reserves(gw: Gateway) -> None:
    owner = Account(gw, credits="0.2")
    chat = {"model": "sim-chat-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert gw.call("POST", "/v1/chat/completions", owner.key, json=chat).status_code == 200
    deadline = time.monotonic() + 10
    while gw.admin("GET", f"/v1/organizations/{owner.org}/balance").json()["reserved_by_gateways_micros"] == 0:
        assert time.monotonic() < deadline, "the gateway never took a slice"
        time.sleep(0.02)
    # Two H100s for a minute (186,667 micros): more than what the slice leaves, less than the balance.
    response = gw.call("POST", "/v1/gpu/instances", owner.key, json={"gpu_slug": "h100-nvl", "num_gpus": 2})
    assert response.status_code == 200, response.text
    stopped = gw.call("POST", f"/v1/gpu/instances/{response.json()['instance']['id']}/stop", owner.key)
    assert stopped.json()["instance"]["status"] == "stopped"


def test_a_hosted_agent_is_renamed_and_its_runtime_stopped_and_started_while_its_plan_bills(gw: Gateway) -> None:
    owner = Account(gw, credits="20")
    agent = gw.call("POST", "/v1/hosted-agents/instances", owner.key, json={"agent_type": "hermes"}).json()["instance"]
    assert agent["name"] == "Hermes Agent"
    path = f"/v1/hosted-agents/instances/{agent['id']}"
    renamed = gw.call("PATCH", path, owner.key, json={"name": "Support bot"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["instance"]["name"] == "Support bot"
    assert gw.call("PATCH", path, owner.key, json={"name": ""}).status_code == 400
    stopped = gw.call("POST", f"{path}/stop", owner.key)
    assert stopped.status_code == 200, stopped.text
    card = stopped.json()["instance"]
    assert (card["status"], card["replica_current"], card["billing_status"]) == ("stopped", 0, "active")
    assert gw.call("POST", f"{path}/restart", owner.key).json()["instance"]["status"] == "running"
    assert gw.call("POST", f"{path}/refresh", owner.key).json()["instance"]["name"] == "Support bot"
    assert gw.call("POST", f"{path}/explode", owner.key).status_code == 400
    assert gw.call("GET", path, owner.key).json()["instance"]["name"] == "Support bot"
    assert owner.balance_micros() == 5_000_000  # one month, whatever the runtime does
