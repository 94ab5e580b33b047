"""EmpirioLabs' agents (``/v1/agents``) on the HTTP surface: a task held for its model's bound, its
steps visible as they come, charged for exactly the steps it took (to completion, or to a stop), a
follow-up as a new turn of the same task, in the document's response schemas."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest

from ledger.pricing import default_price_book, price_micros, worst_case_micros
from schemas.units import Units
from tests.harness import Gateway
from tests.http.dialects import Account
from tests.reference import reference_validator

manus = default_price_book().models["manus"]
hold_micros = worst_case_micros(manus, Units(input_tokens=manus.context_length, output_tokens=manus.max_output_tokens))


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw, credits="20")


def _start(account: Account, text: str = "Summarize the top 5 humanoid robotics startups", **extra: Any) -> str:
    response = account.gw.call("POST", "/v1/agents/run", account.key, json={"model": "manus", "input": text, **extra})
    assert response.status_code == 202, response.text
    reference_validator("/v1/agents/run", "post", "202").validate(response.json())
    body = response.json()
    assert body["status"] == "queued" and body["poll_url"] == f"/v1/agents/{body['task_id']}"
    return str(body["task_id"])


def _task(account: Account, task_id: str) -> dict[str, Any]:
    response = account.gw.call("GET", f"/v1/agents/{task_id}", account.key)
    assert response.status_code == 200, response.text
    reference_validator("/v1/agents/{task_id}").validate(response.json())
    return dict(response.json())


def _messages(account: Account, task_id: str) -> list[dict[str, Any]]:
    response = account.gw.call("GET", f"/v1/agents/{task_id}/messages", account.key)
    assert response.status_code == 200, response.text
    reference_validator("/v1/agents/{task_id}/messages").validate(response.json())
    return list(response.json()["result"]["messages"])


def _until(check: Any, seconds: float = 60) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out")


def _step_units(messages: list[dict[str, Any]]) -> Units:
    return Units(
        input_tokens=sum(m["usage"]["prompt_tokens"] for m in messages),
        output_tokens=sum(m["usage"]["completion_tokens"] for m in messages),
    )


def _settled_balance(account: Account, expected: int) -> int:
    return int(_until(lambda: account.balance_micros() == expected and expected) or expected)


@pytest.mark.heavy  # the simulated agent takes a few seconds
def test_a_task_runs_its_steps_and_is_charged_for_them(account: Account) -> None:
    before = account.balance_micros()
    task_id = _start(account)
    started = _until(lambda: (t := _task(account, task_id))["status"] != "queued" and t)
    assert started["task_id"] == task_id and started["model"] == "manus"
    assert started["status"] in ("running", "completed")
    done = _until(lambda: (t := _task(account, task_id))["status"] == "completed" and t)
    messages = _messages(account, task_id)
    assert messages[0]["type"] == "user_message" and messages[0]["content"].startswith("Summarize")
    assert messages[-1]["type"] == "answer" and done["output"] == messages[-1]["content"]
    assert [m["index"] for m in messages] == list(range(len(messages))) and len(messages) >= 6
    units = _step_units(messages)
    usage = done["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (units.input_tokens, units.output_tokens)
    cost = price_micros(manus, units)
    assert usage["cost_micros"] == cost and Decimal(str(usage["cost_usd"])) == Decimal(cost) / 1_000_000
    # The public catalog alone predicts it: each token count at its pricing row's rate, rounded up once.
    rows = account.gw.call("GET", "/v1/models/manus").json()["pricing_rows"]
    rates = {row["unit"]: Decimal(row["usd_per_unit"]) for row in rows}
    listed = units.input_tokens * rates["input_tokens"] + units.output_tokens * rates["output_tokens"]
    assert Decimal(str(usage["cost_usd"])) == listed.quantize(Decimal("0.000001"), rounding="ROUND_CEILING")
    answer = account.gw.call("GET", f"/v1/agents/{task_id}", account.key)
    assert Decimal(answer.headers["x-credits-used"]) == Decimal(cost) / 1_000_000
    _until(lambda: account.balance_micros() == before - cost)
    row = account.usage_row("req_" + task_id.removeprefix("task_"))
    assert row[:4] == ("/v1/agents/run", "manus", units.input_tokens, units.output_tokens) and row[5] == cost


@pytest.mark.heavy
def test_a_stopped_task_is_charged_only_for_the_steps_it_completed(account: Account) -> None:
    before = account.balance_micros()
    task_id = _start(account, "Draft a long market memo on warehouse robots")
    _until(lambda: len(_messages(account, task_id)) >= 3)
    held = account.gw.admin("GET", f"/v1/organizations/{account.org}/balance").json()["held_micros"]
    assert held >= hold_micros  # one hold: the task's worst case
    stopped = account.gw.call("POST", f"/v1/agents/{task_id}/stop", account.key)
    assert stopped.status_code == 200, stopped.text
    reference_validator("/v1/agents/{task_id}/stop", "post").validate(stopped.json())
    body = stopped.json()
    assert body["status"] == "stopped"
    messages = _messages(account, task_id)
    assert messages[-1]["type"] != "answer"  # it never got to its answer
    units = _step_units(messages)
    cost = price_micros(manus, units)
    assert (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]) == (
        units.input_tokens,
        units.output_tokens,
    )
    assert body["usage"]["cost_micros"] == cost and 0 < cost < hold_micros
    assert Decimal(stopped.headers["x-credits-used"]) == Decimal(cost) / 1_000_000
    # The rest of the hold is released: the balance drops by the steps' price alone.
    _until(lambda: account.balance_micros() == before - cost)
    assert account.usage_row("req_" + task_id.removeprefix("task_"))[5] == cost
    # A second stop changes nothing.
    again = account.gw.call("POST", f"/v1/agents/{task_id}/stop", account.key)
    assert again.status_code == 200 and again.json()["usage"]["cost_micros"] == cost


@pytest.mark.heavy
def test_a_follow_up_is_a_new_turn_of_the_same_task_and_both_are_charged(account: Account) -> None:
    before = account.balance_micros()
    task_id = _start(account, "List three robot arms")
    _until(lambda: len(_messages(account, task_id)) >= 2)
    follow = account.gw.call(
        "POST",
        "/v1/agents/run",
        account.key,
        json={"model": "manus", "task_id": task_id, "input": "Also include each one's price."},
    )
    assert follow.status_code == 202, follow.text
    assert follow.json()["task_id"] == task_id
    done = _until(lambda: (t := _task(account, task_id))["status"] == "completed" and t, 90)
    assert done["turns"] == 2
    messages = _messages(account, task_id)
    second = [m for m in messages if m["turn"] == 2]
    assert second[0]["content"] == "Also include each one's price." and second[-1]["type"] == "answer"
    first = [m for m in messages if m["turn"] == 1]
    cost = price_micros(manus, _step_units(first)) + price_micros(manus, _step_units(second))
    assert done["usage"]["cost_micros"] == cost
    _until(lambda: account.balance_micros() == before - cost)


@pytest.mark.heavy
def test_stream_false_waits_for_the_end_and_stream_true_sends_every_step(account: Account) -> None:
    blocking = account.gw.call(
        "POST", "/v1/agents/run", account.key, json={"model": "manus", "input": "Quick check", "stream": False}
    )
    assert blocking.status_code == 200, blocking.text
    assert blocking.json()["status"] == "completed" and blocking.headers["x-credits-used"]
    streamed = account.gw.call(
        "POST", "/v1/agents/run", account.key, json={"model": "manus", "input": "Another check", "stream": True}
    )
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("event: ") for line in streamed.text.splitlines() if line.startswith("event: ")]
    assert events[0] == "agent.task" and events[-1] == "agent.task" and events.count("agent.step") >= 6
    assert streamed.text.rstrip().endswith("data: [DONE]")


def test_tasks_are_refused_clearly(gw: Gateway, account: Account) -> None:
    def post(key: str, body: dict[str, Any]) -> Any:
        return gw.call("POST", "/v1/agents/run", key, json=body)

    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"model": "sim-chat-small", "input": "x"}, 404, "model_not_found"),
        ({"model": "manus", "input": "  "}, 400, "invalid_parameter"),
        ({"model": "manus"}, 400, "missing_required_parameter"),
        ({"model": "manus", "input": "x", "agent_profile": "other"}, 400, "invalid_parameter"),
        ({"model": "manus", "input": "x", "max_wait_seconds": 1}, 400, "invalid_parameter"),
        ({"model": "manus", "input": "x" * 6000}, 400, "context_length_exceeded"),
        ({"model": "manus", "input": "x", "task_id": "task_nope"}, 404, "task_not_found"),
    ]
    for body, status, code in cases:
        response = post(account.key, body)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), (body, response.text)
    assert gw.call("GET", "/v1/agents/task_nope", account.key).status_code == 404
    assert gw.call("POST", "/v1/agents/task_nope/stop", account.key).status_code == 404
    reader, _ = gw.key(account.org, ["user:read"])
    assert post(reader, {"model": "manus", "input": "x"}).status_code == 403
    # Too little credit for the task's worst case: 402, nothing runs.
    poor = Account(gw, credits="0.05")
    refused = post(poor.key, {"model": "manus", "input": "x"})
    assert refused.status_code == 402, refused.text
    assert refused.json()["error"]["type"] == "insufficient_quota"


def test_another_organizations_task_does_not_exist(gw: Gateway, account: Account) -> None:
    task_id = _start(account, "A private task")
    other = Account(gw, credits="5")
    for method, path in (
        ("GET", f"/v1/agents/{task_id}"),
        ("GET", f"/v1/agents/{task_id}/messages"),
        ("POST", f"/v1/agents/{task_id}/stop"),
    ):
        response = gw.call(method, path, other.key)
        assert response.status_code == 404 and response.json()["error"]["code"] == "task_not_found"
    follow = gw.call("POST", "/v1/agents/run", other.key, json={"model": "manus", "input": "x", "task_id": task_id})
    assert follow.status_code == 404
    account.gw.call("POST", f"/v1/agents/{task_id}/stop", account.key)
