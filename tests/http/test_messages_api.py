"""``POST /v1/messages`` with the official ``anthropic`` SDK, unchanged (``x-api-key``,
``anthropic-version``): system, messages, max_tokens, tools, thinking, ``messages.create`` and
``messages.stream``, errors in Anthropic's envelope with Anthropic's statuses (402 billing_error);
every charge reconciles (usage.cost_usd == x-credits-used == the balance drop == the usage row)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ledger.pricing import default_price_book, price_micros
from schemas.units import Units
from tests.harness import Gateway
from tests.http.dialects import Account, reconciles

weather_tool: Any = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw)


def test_a_message_is_answered_and_charged_exactly(account: Account) -> None:
    client = account.anthropic()
    before = account.balance_micros()
    raw = client.messages.with_raw_response.create(
        model="deepseek-v4-pro", max_tokens=1024, system="Be brief.", messages=[{"role": "user", "content": "Hi!"}]
    )
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.stop_reason == "end_turn" and message.content[0].type == "text"
    usage = message.usage
    assert usage.cache_creation_input_tokens == 0 and usage.cache_read_input_tokens == 0
    micros = reconciles(account, before, raw.headers["x-request-id"], usage, raw.headers["x-credits-used"])
    endpoint, model, input_tokens, output_tokens, _, _ = account.usage_row(raw.headers["x-request-id"])
    assert (endpoint, model) == ("/v1/messages", "deepseek-v4-pro")
    assert (input_tokens, output_tokens) == (usage.input_tokens, usage.output_tokens)
    price = default_price_book().model("deepseek-v4-pro")
    assert price is not None
    assert micros == price_micros(price, Units(input_tokens=input_tokens, output_tokens=output_tokens))


def test_tool_use_and_tool_result_round_trip(account: Account) -> None:
    client = account.anthropic()
    question: Any = {"role": "user", "content": "What is the weather in Paris?"}
    first = client.messages.create(model="deepseek-v4-pro", max_tokens=512, tools=[weather_tool], messages=[question])
    assert first.stop_reason == "tool_use"
    call = first.content[-1]
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "Paris"}
    answer: Any = {"type": "tool_result", "tool_use_id": call.id, "content": "21 degrees"}
    second = client.messages.create(
        model="deepseek-v4-pro",
        max_tokens=512,
        tools=[weather_tool],
        messages=[question, {"role": "assistant", "content": first.content}, {"role": "user", "content": [answer]}],
    )
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"


def test_thinking_comes_first_and_counts_as_output(account: Account) -> None:
    client = account.anthropic()
    message = client.messages.create(
        model="deepseek-v4-pro",
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Think, then answer."}],
    )
    assert [block.type for block in message.content] == ["thinking", "text"]
    thinking = message.content[0]
    assert thinking.type == "thinking" and thinking.thinking and thinking.signature


def test_a_thinking_budget_of_a_few_tokens_stops_at_max_tokens(account: Account) -> None:
    client = account.anthropic()
    message = client.messages.create(
        model="deepseek-v4-pro",
        max_tokens=5,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Think, then answer."}],
    )
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens <= 5


def test_the_stream_helper_and_the_raw_events(account: Account) -> None:
    client = account.anthropic()
    before = account.balance_micros()
    with client.messages.stream(
        model="deepseek-v4-pro",
        max_tokens=1024,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Stream to me."}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert [block.type for block in final.content] == ["thinking", "text"]
    assert final.content[1].type == "text" and final.content[1].text == text
    assert final.content[0].type == "thinking" and final.content[0].signature
    raw = client.messages.with_raw_response.create(
        model="deepseek-v4-pro", max_tokens=64, messages=[{"role": "user", "content": "Stream to me."}], stream=True
    )
    events = list(raw.parse())
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert "content_block_start" in kinds and "content_block_delta" in kinds and "content_block_stop" in kinds
    usage: Any = events[-2].usage  # type: ignore[union-attr]
    assert usage.output_tokens > 0 and usage.input_tokens > 0
    assert usage.cache_creation_input_tokens == 0 and usage.cache_read_input_tokens == 0
    del before
    before = account.balance_micros()
    raw = client.messages.with_raw_response.create(
        model="deepseek-v4-pro", max_tokens=64, messages=[{"role": "user", "content": "Once more."}], stream=True
    )
    events = list(raw.parse())
    reconciles(account, before, raw.headers["x-request-id"], events[-2].usage, None)  # type: ignore[union-attr]


def test_a_streamed_tool_call(account: Account) -> None:
    client = account.anthropic()
    with client.messages.stream(
        model="deepseek-v4-pro",
        max_tokens=256,
        tools=[weather_tool],
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[-1].type == "tool_use"
    assert final.content[-1].input == {"city": "Paris"}


def test_402_is_a_billing_error_in_anthropics_envelope(gw: Gateway) -> None:
    import anthropic  # here, not at the top: the SDK takes seconds to import on every worker's collection

    poor = Account(gw, credits="0.000001")
    with pytest.raises(anthropic.APIStatusError) as caught:
        poor.anthropic().messages.create(
            model="deepseek-v4-pro", max_tokens=1024, messages=[{"role": "user", "content": "Hi!"}]
        )
    assert caught.value.status_code == 402
    body = caught.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "billing_error"
    assert body["error"]["message"].startswith("Insufficient credits") and body["request_id"].startswith("req_")
    assert poor.balance_micros() == 1


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        ({"model": "deepseek-v4-pro", "messages": [{"role": "user", "content": "Hi"}]}, 400, "invalid_request_error"),
        ({"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}, 404, "not_found_error"),
        ({"model": "deepseek-v4-pro", "max_tokens": 5, "messages": []}, 400, "invalid_request_error"),
        (
            {"model": "deepseek-v4-pro", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
            400,
            "invalid_request_error",
        ),
        (
            {
                "model": "deepseek-v4-pro",
                "max_tokens": 5,
                "thinking": {"type": "enabled"},
                "messages": [{"role": "user", "content": "x"}],
            },
            400,
            "invalid_request_error",
        ),
    ],
)
def test_errors_in_anthropics_envelope(account: Account, body: dict[str, Any], status: int, kind: str) -> None:
    response = account.gw.client.post(
        "/v1/messages", json=body, headers={"x-api-key": account.key, "anthropic-version": "2023-06-01"}
    )
    assert response.status_code == status, response.text
    assert response.json()["type"] == "error" and response.json()["error"]["type"] == kind


def test_authentication_and_rate_limits_answer_in_anthropics_envelope(gw: Gateway) -> None:
    body = {"model": "deepseek-v4-pro", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    missing = gw.client.post("/v1/messages", json=body)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    org = gw.organization("free", limits={"jobs": 1}, credits="1")  # a POST /v1/messages is a job submission
    key, _ = gw.key(org, ["user:write"])
    assert gw.client.post("/v1/messages", json=body, headers={"x-api-key": key}).status_code == 200
    limited = gw.client.post("/v1/messages", json=body, headers={"x-api-key": key})
    assert limited.status_code == 429 and limited.json()["error"]["type"] == "rate_limit_error"
    assert limited.headers["retry-after"]
    replay_key = {"x-api-key": key, "Idempotency-Key": "k1"}
    assert gw.client.post("/v1/messages", json=body, headers=replay_key).status_code == 429


def test_the_response_object_is_anthropics_json(account: Account) -> None:
    response = account.gw.client.post(
        "/v1/messages",
        json={"model": "deepseek-v4-pro", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]},
        headers={"x-api-key": account.key},
    )
    body = json.loads(response.text)
    assert set(body) >= {"id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"}
    assert set(body["usage"]) >= {
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "cost_usd",
    }
