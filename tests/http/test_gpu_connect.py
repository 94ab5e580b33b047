"""``/v1/gpu/connect/{instance_id}/{path}``: the caller's running GPU instance's (simulated) service,
OpenAI-compatible as a model deploy's is; another organization's instance is a 404, a stopped one the
document's 502, and the call itself charges nothing (the instance is billed by the second)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness import Gateway
from tests.http.dialects import Account


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw)


def deployed(account: Account, **body: Any) -> str:
    made = account.gw.call("POST", "/v1/gpu/instances", account.key, json={"gpu_slug": "rtx-4090", **body})
    assert made.status_code == 200, made.text
    return str(made.json()["instance"]["id"])


def connect(account: Account, method: str, instance_id: str, path: str, **kwargs: Any) -> Any:
    return account.gw.call(method, f"/v1/gpu/connect/{instance_id}/{path}", account.key, **kwargs)


def test_a_running_instance_answers_as_an_openai_compatible_server(account: Account) -> None:
    instance = deployed(account, image="Qwen/Qwen3-8B")
    health = connect(account, "GET", instance, "health")
    assert health.status_code == 200 and health.json()["instance_id"] == instance
    assert health.headers["x-gpu-instance-id"] == instance
    models = connect(account, "GET", instance, "v1/models").json()
    assert [model["id"] for model in models["data"]] == ["Qwen/Qwen3-8B"]
    messages = [{"role": "user", "content": "Hello GPU"}]
    before = account.balance_micros()
    first = connect(
        account, "POST", instance, "v1/chat/completions", json={"model": "Qwen/Qwen3-8B", "messages": messages}
    )
    assert first.status_code == 200, first.text
    reply = first.json()
    assert reply["object"] == "chat.completion" and reply["model"] == "Qwen/Qwen3-8B"
    assert reply["choices"][0]["message"]["content"] and reply["usage"]["total_tokens"] > 0
    again = connect(account, "POST", instance, "v1/chat/completions", json={"messages": messages})
    assert again.json()["choices"] == reply["choices"]  # deterministic
    assert "x-credits-used" not in first.headers
    assert account.balance_micros() == before  # the call is not metered; the instance's time is
    missing = connect(account, "PUT", instance, "no/such/path", json={})
    assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}  # the service's own 404
    bad = connect(account, "POST", instance, "v1/chat/completions", json={"messages": []})
    assert bad.status_code == 400


def test_a_streamed_completion_comes_as_server_sent_events(account: Account) -> None:
    instance = deployed(account)
    streamed = connect(
        account,
        "POST",
        instance,
        "v1/chat/completions",
        json={"messages": [{"role": "user", "content": "x"}], "stream": True},
    )
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    events = [line for line in streamed.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]" and '"finish_reason":"stop"' in events[-2].replace(" ", "")


def test_a_stopped_destroyed_or_foreign_instance_is_refused(account: Account, gw: Gateway) -> None:
    instance = deployed(account)
    assert gw.call("POST", f"/v1/gpu/instances/{instance}/stop", account.key).status_code == 200
    stopped = connect(account, "GET", instance, "health")
    assert stopped.status_code == 502, stopped.text
    assert stopped.json()["error"]["code"] == "instance_not_running" and "/start" in stopped.json()["error"]["message"]
    assert gw.call("POST", f"/v1/gpu/instances/{instance}/start", account.key).status_code == 200
    assert connect(account, "GET", instance, "health").status_code == 200
    other = Account(gw)
    foreign = connect(other, "GET", instance, "health")
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "instance_not_found"
    assert gw.call("DELETE", f"/v1/gpu/instances/{instance}", account.key).status_code == 200
    assert connect(account, "GET", instance, "health").status_code == 404
    assert connect(account, "GET", "gpu_nope", "health").status_code == 404


def test_reading_needs_user_read_and_writing_user_write(account: Account, gw: Gateway) -> None:
    instance = deployed(account)
    reader, _ = gw.key(account.org, ["user:read"])
    assert gw.call("GET", f"/v1/gpu/connect/{instance}/health", reader).status_code == 200
    body = {"messages": [{"role": "user", "content": "x"}]}
    assert gw.call("POST", f"/v1/gpu/connect/{instance}/v1/chat/completions", reader, json=body).status_code == 403
    assert gw.call("GET", f"/v1/gpu/connect/{instance}/health").status_code == 401
