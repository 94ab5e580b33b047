"""``POST /v1/responses`` with the official SDK's ``responses`` client, unchanged: text and item input,
instructions, function tools, the hosted web search (a priced call each), streaming with the
Responses events, async jobs, 402; every charge reconciles (usage.cost_usd == x-credits-used == the
balance drop == the usage row)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import openai
import pytest

from ledger.pricing import default_price_book, price_micros
from schemas.units import Units
from tests.harness import Gateway
from tests.http.dialects import Account, reconciles

weather_tool = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw)


def test_text_input_is_answered_and_charged_exactly(account: Account) -> None:
    client = account.openai()
    before = account.balance_micros()
    raw = client.responses.with_raw_response.create(
        model="sim-chat-small", input="Tell me a story about ledgers.", instructions="Be brief."
    )
    response = raw.parse()
    assert response.object == "response" and response.status == "completed"
    assert response.id.startswith("resp_") and response.instructions == "Be brief."
    assert response.output_text and response.output[0].type == "message"
    assert response.output[0].id.startswith("msg_")
    usage = response.usage
    assert usage is not None
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    micros = reconciles(account, before, raw.headers["x-request-id"], usage, raw.headers["x-credits-used"])
    endpoint, model, input_tokens, output_tokens, searches, _ = account.usage_row(raw.headers["x-request-id"])
    assert (endpoint, model, searches) == ("/v1/responses", "sim-chat-small", 0)
    assert (input_tokens, output_tokens) == (usage.input_tokens, usage.output_tokens)
    price = default_price_book().model("sim-chat-small")
    assert price is not None
    assert micros == price_micros(price, Units(input_tokens=input_tokens, output_tokens=output_tokens))


def test_item_input_and_a_function_call_round_trip(account: Account) -> None:
    client = account.openai()
    first = client.responses.create(
        model="sim-chat-small",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "What is the weather in Paris?"}]}],
        tools=[weather_tool],  # type: ignore[list-item]
    )
    call = first.output[-1]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert call.id is not None and call.id.startswith("fc_") and call.call_id
    follow_up: list[Any] = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"celsius": 21}'},
    ]
    second = client.responses.create(model="sim-chat-small", input=follow_up, tools=[weather_tool])  # type: ignore[list-item]
    assert second.output[-1].type == "message" and second.output_text


def test_web_search_is_run_and_priced_per_call(account: Account) -> None:
    """Casola: hosted web_search and function tools mixed in one request; each search a priced call."""
    client = account.openai()
    before = account.balance_micros()
    raw = client.responses.with_raw_response.create(
        model="sim-chat-small",
        input="Latest news about Kafka?",
        tools=[{"type": "web_search"}, {"type": "function", "function": weather_tool}],  # type: ignore[list-item]
    )
    response = raw.parse()
    kinds = [item.type for item in response.output]
    assert kinds[0] == "web_search_call" and response.output[0].status == "completed"  # type: ignore[union-attr]
    body = json.loads(raw.http_response.text)
    assert body["tool_usage"]["web_search"]["num_requests"] == 1
    micros = reconciles(account, before, raw.headers["x-request-id"], body["usage"], raw.headers["x-credits-used"])
    _, _, input_tokens, output_tokens, searches, _ = account.usage_row(raw.headers["x-request-id"])
    assert searches == 1 and body["usage"]["tool_usage"] == {"web_search": 1}
    price = default_price_book().model("sim-chat-small")
    assert price is not None and price.tool_call_rates["web_search"] > 0
    units = Units(input_tokens=input_tokens, output_tokens=output_tokens, web_search_calls=1, calls=1)
    assert micros == price_micros(price, units)


def test_streamed_events_and_the_final_usage(account: Account) -> None:
    client = account.openai()
    before = account.balance_micros()
    stream = client.responses.with_raw_response.create(
        model="sim-chat-small", input="Stream a story.", reasoning={"effort": "low"}, stream=True
    )
    request_id = stream.headers["x-request-id"]
    events = list(stream.parse())
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "response.reasoning_text.delta" in kinds and "response.output_text.delta" in kinds
    assert kinds.index("response.reasoning_text.delta") < kinds.index("response.output_text.delta")
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    completed = events[-1].response  # type: ignore[union-attr]
    assert completed.output_text == text
    assert completed.id == events[0].response.id  # type: ignore[union-attr]
    assert completed.usage is not None and completed.usage.output_tokens_details.reasoning_tokens > 0
    streamed_ids = [e.item.id for e in events if e.type == "response.output_item.added"]
    assert streamed_ids == [item.id for item in completed.output]
    reconciles(account, before, request_id, completed.usage, None)


def test_the_stream_helper_accumulates_tools_and_searches(account: Account) -> None:
    client = account.openai()
    with client.responses.stream(
        model="sim-chat-small",
        input="What is the weather in Paris?",
        tools=[{"type": "web_search"}, weather_tool],  # type: ignore[list-item]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.web_search_call.completed" in kinds and "response.function_call_arguments.done" in kinds
    assert [item.type for item in final.output] == ["web_search_call", "function_call"]


def test_async_answers_202_with_a_job_whose_result_is_the_response(account: Account) -> None:
    response = account.gw.call(
        "POST", "/v1/responses", account.key, json={"model": "sim-chat-small", "input": "later", "async": True}
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    for _ in range(500):
        job = account.gw.call("GET", f"/v1/jobs/{job_id}", account.key).json()
        if job["status"] == "completed":
            break
    assert job["result"]["object"] == "response" and job["result"]["usage"]["cost_micros"] == job["cost_micros"]


def test_a_request_the_balance_cannot_cover_is_a_402(gw: Gateway) -> None:
    poor = Account(gw, credits="0.000001")
    with pytest.raises(openai.APIStatusError) as caught:
        poor.openai().responses.create(model="sim-chat-small", input="hello")
    assert caught.value.status_code == 402
    assert caught.value.response.json()["error"]["code"] == "insufficient_credits"
    assert poor.balance_micros() == 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "sim-chat-small"}, "input"),
        ({"input": "x"}, "model"),
        ({"model": "sim-chat-small", "input": 5}, "input"),
        ({"model": "sim-chat-small", "input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"model": "sim-chat-small", "input": "x", "tools": [{"type": "file_search"}]}, "tools[0].type"),
        ({"model": "sim-chat-small", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "sim-chat-small", "input": "x", "max_output_tokens": 10**6}, "max_output_tokens"),
        ({"model": "sim-chat-small", "input": "x", "tools": [{"type": "web_search"}], "async": True}, "async"),
        ({"model": "sim-chat-small", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"model": "sim-chat-small", "input": "x", "stream": "yes"}, "stream"),
    ],
)
def test_bad_bodies_are_a_400_naming_the_field(account: Account, body: dict[str, Any], param: str) -> None:
    response = account.gw.call("POST", "/v1/responses", account.key, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_an_unknown_model_is_a_404(account: Account) -> None:
    response = account.gw.call("POST", "/v1/responses", account.key, json={"model": "nope", "input": "x"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


def test_casola_base_url_and_the_root_serve_it_too(account: Account) -> None:
    for base in ("/openai/v1", ""):
        raw = account.openai(base).responses.with_raw_response.create(model="Qwen/Qwen3.5-4B", input="hi")
        assert raw.parse().output_text
        assert Decimal(raw.headers["x-credits-used"]) > 0
