"""The surface's addresses and credentials: every route of the OpenAI-compatible surface under /v1,
/openai/v1 (Casola's base_url) and the root (EmpirioLabs' base_url), with Authorization: Bearer or
x-api-key; the platform's own routes only under /v1; one OpenAPI entry per route. And the reference
documents' examples for these addresses and for /v1/responses and /v1/messages, as written there with
only the host and the key changed."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from openai import OpenAI

from gateway.surface import canonical_path, surface_contexts
from tests.harness import Gateway
from tests.http.dialects import Account, base_url


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw)


chat_body = {"model": "sim-chat-small", "messages": [{"role": "user", "content": "Hello!"}]}


def test_aliases_resolve_to_v1_routes_only_for_the_surface() -> None:
    contexts = surface_contexts(["/v1/chat/completions", "/v1/models/{model_id:path}", "/v1/organizations/{id}"])
    assert contexts == {"chat", "models"}
    assert canonical_path("/openai/v1/chat/completions", contexts) == "/v1/chat/completions"
    assert canonical_path("/chat/completions", contexts) == "/v1/chat/completions"
    assert canonical_path("/models/Qwen/Qwen3.5-4B", contexts) == "/v1/models/Qwen/Qwen3.5-4B"
    assert canonical_path("/v1/chat/completions", contexts) is None
    assert canonical_path("/openai/v1/organizations/x", contexts) is None
    assert canonical_path("/organizations", contexts) is None
    assert canonical_path("/healthz", contexts) is None


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/openai/v1/chat/completions", "/chat/completions"])
def test_chat_at_each_address_with_each_credential(account: Account, path: str) -> None:
    for headers in ({"Authorization": f"Bearer {account.key}"}, {"x-api-key": account.key}):
        response = account.gw.client.post(path, json=chat_body, headers=headers)
        assert response.status_code == 200, response.text
        cost = json.loads(response.text, parse_float=Decimal)["usage"]["cost_usd"]
        assert Decimal(response.headers["x-credits-used"]) == cost


@pytest.mark.parametrize("base", ["/v1", "/openai/v1", ""])
def test_the_sdk_at_each_base_url(account: Account, base: str) -> None:
    client = account.openai(base)
    assert client.chat.completions.create(**chat_body).choices[0].message.content  # type: ignore[call-overload]
    assert "sim-chat-small" in {model.id for model in client.models.list()}
    assert client.embeddings.create(model="sim-embed-small", input="x").data


def test_platform_routes_have_no_aliases(account: Account) -> None:
    for path in (f"/openai/v1/organizations/{account.org}/balance", f"/organizations/{account.org}/balance"):
        response = account.gw.admin("GET", path)
        assert response.status_code == 404, response.text
        assert path in response.json()["error"]["message"]  # the path as the client sent it
    assert account.gw.admin("GET", "/openai/v1/price-books").status_code == 404


def test_no_credential_names_both_headers(gw: Gateway) -> None:
    response = gw.client.get("/v1/jobs")  # (the model list is public; a key sent to it is still checked)
    assert response.status_code == 401
    assert "x-api-key" in response.json()["error"]["message"]
    assert gw.client.get("/v1/models", headers={"x-api-key": "tg_unknown"}).status_code == 401


def test_the_openapi_document_lists_each_route_once(gw: Gateway) -> None:
    document = gw.client.get("/schema/openapi.json").json()
    paths = set(document["paths"])
    assert {"/v1/responses", "/v1/messages", "/v1/chat/completions"} <= paths
    assert not any(path.startswith("/openai") or path == "/chat/completions" for path in paths)
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values() if "operationId" in op]
    assert len(ids) == len(set(ids))
    assert "x-api-key" in document["info"]["description"]


# --- the reference documents' examples (/work/shared/reference), host and key changed ---


def test_empiriolabs_python_sdk_at_the_root(account: Account) -> None:
    """EmpirioLabs overview, "Python (OpenAI SDK)": base_url is the server root."""
    client = OpenAI(
        base_url=base_url,
        api_key=account.key,
        http_client=account.gw.client,  # type: ignore[arg-type,unused-ignore]
    )

    resp = client.chat.completions.create(
        model="deepseek-v4-pro",
        messages=[{"role": "user", "content": "Hello!"}],
    )
    assert resp.choices[0].message.content


def test_empiriolabs_curl_messages(account: Account) -> None:
    """EmpirioLabs "Anthropic Messages" cURL (and the OpenAPI example ``basic``): x-api-key only."""
    response = account.gw.client.post(
        "/v1/messages",
        headers={
            "x-api-key": account.key,
            "anthropic-version": "2023-06-01",
            "Content-Type": "application/json",
        },
        content="""{
    "model": "deepseek-v4-pro",
    "max_tokens": 1024,
    "messages": [{"role": "user", "content": "Hi!"}]
  }""",
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == "message" and body["content"][0]["text"]
    assert Decimal(response.headers["x-credits-used"]) == Decimal(str(body["usage"]["cost_usd"]))


def test_empiriolabs_anthropic_style_thinking(account: Account) -> None:
    """EmpirioLabs "Model parameters across endpoints": the thinking fragment on /v1/messages, and
    enable_thinking / thinking_budget on all three text endpoints."""
    fragment = {"thinking": {"type": "enabled", "budget_tokens": 1024}}
    body = {"model": "deepseek-v4-pro", "max_tokens": 1024, "messages": [{"role": "user", "content": "Hi!"}]}
    message = account.gw.client.post("/v1/messages", json={**body, **fragment}, headers={"x-api-key": account.key})
    assert message.status_code == 200 and message.json()["content"][0]["type"] == "thinking"
    controls = {"enable_thinking": True, "thinking_budget": 1024}
    message = account.gw.client.post("/v1/messages", json={**body, **controls}, headers={"x-api-key": account.key})
    assert message.status_code == 200 and message.json()["content"][0]["type"] == "thinking"
    response = account.gw.call(
        "POST", "/v1/responses", account.key, json={"model": "deepseek-v4-pro", "input": "Hi!", **controls}
    )
    assert response.status_code == 200 and response.json()["output"][0]["type"] == "reasoning"


def test_casola_responses_hosted_tools(account: Account) -> None:
    """Casola "Responses Hosted Tools": web_search runs server-side, function tools (in the shape the
    page shows) are the client's, both in one tools array; stream true is supported, async true is not
    with hosted tools."""
    function: dict[str, Any] = {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
    tools = [{"type": "web_search"}, {"type": "function", "function": function}]
    body = {"model": "Qwen/Qwen3.5-4B", "input": "What is the weather in Paris?", "tools": tools}
    response = account.gw.call("POST", "/openai/v1/responses", account.key, json=body)
    assert response.status_code == 200, response.text
    assert [item["type"] for item in response.json()["output"]] == ["web_search_call", "function_call"]
    streamed = account.gw.call("POST", "/openai/v1/responses", account.key, json={**body, "stream": True})
    assert streamed.status_code == 200
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "response.completed"
    refused = account.gw.call("POST", "/openai/v1/responses", account.key, json={**body, "async": True})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "async"


def test_casola_chat_completion(account: Account) -> None:
    """Casola "Example: Chat Completion" (its one-line curl, as the page shows it)."""
    response = account.gw.client.post(
        "/openai/v1/chat/completions",
        headers={"Authorization": f"Bearer {account.key}", "Content-Type": "application/json"},
        content='{ "model": "Qwen/Qwen3.5-4B", "messages": [{"role": "user", "content": "Hello!"}] }',
    )
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion" and response.json()["model"] == "Qwen/Qwen3.5-4B"
