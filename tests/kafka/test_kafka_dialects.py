"""The Responses API and Anthropic's Messages API through the roles as separate processes on the real
broker, with the official SDKs as clients: each charge reconciles in the answer, the x-credits-used
header, the balance, the ledger's capture on the topic and the ClickHouse usage row."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

from tests.kafka.test_kafka_e2e import Stack, ledger_totals
from tests.support import usage

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, clickhouse_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(kafka_bootstrap, clickhouse_url, tmp_path_factory.mktemp("dialects"))
    yield running
    running.stop()


def usage_row_micros(stack: Stack, key: str, request_id: str) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for event in usage(stack.base_url, key, limit=50)["data"]:
            if event["request_id"] == request_id:
                return int(event["cost"]["amount_micros"])
        time.sleep(0.3)
    raise AssertionError(f"no usage row for {request_id}")


def poor_key(stack: Stack) -> str:
    """A key of an organization with 5 micro-credits: any of these requests is a 402."""
    org = stack.admin.organization()
    stack.admin.grant(org, "0.000005")
    return stack.admin.token(org)


def reconciled(stack: Stack, bootstrap: str, org: str, key: str, charges: list[tuple[str, int]]) -> None:
    """Every (request id, micros) charge is in the usage rows; together they are the balance drop and
    the ledger's captures."""
    total = sum(micros for _, micros in charges)
    for request_id, micros in charges:
        assert usage_row_micros(stack, key, request_id) == micros
    assert usage(stack.base_url, key)["balance"]["amount_micros"] == 1_000_000 - total
    captured, placed, resolved = ledger_totals(bootstrap, org)
    assert (captured, placed, resolved) == (total, len(charges), len(charges))


def test_responses_through_kafka(stack: Stack, kafka_bootstrap: str) -> None:
    org = stack.admin.organization()
    stack.admin.grant(org, "1")
    key = stack.admin.token(org)
    client = openai.OpenAI(base_url=f"{stack.base_url}/openai/v1", api_key=key, max_retries=0, timeout=120)
    tools: Any = [{"type": "web_search"}, {"type": "function", "name": "get_weather", "parameters": {}}]
    raw = client.responses.with_raw_response.create(model="sim-chat-small", input="Weather in Paris?", tools=tools)
    body = json.loads(raw.http_response.text, parse_float=Decimal)
    assert [item["type"] for item in body["output"]] == ["web_search_call", "function_call"]
    assert body["tool_usage"]["web_search"]["num_requests"] == 1
    assert Decimal(raw.headers["x-credits-used"]) == body["usage"]["cost_usd"]
    charges = [(raw.headers["x-request-id"], int(body["usage"]["cost_micros"]))]
    streamed = client.responses.with_raw_response.create(model="sim-chat-small", input="Stream it.", stream=True)
    events = list(streamed.parse())
    assert events[-1].type == "response.completed"
    completed: Any = events[-1].response
    assert completed.output_text == "".join(e.delta for e in events if e.type == "response.output_text.delta")
    charges.append((streamed.headers["x-request-id"], int(completed.usage.cost_micros)))
    poor = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=poor_key(stack), max_retries=0, timeout=120)
    with pytest.raises(openai.APIStatusError) as caught:
        poor.responses.create(model="sim-chat-small", input="too much")
    assert caught.value.status_code == 402
    reconciled(stack, kafka_bootstrap, org, key, charges)


def test_messages_through_kafka(stack: Stack, kafka_bootstrap: str) -> None:
    org = stack.admin.organization()
    stack.admin.grant(org, "1")
    key = stack.admin.token(org)
    client = anthropic.Anthropic(base_url=stack.base_url, api_key=key, max_retries=0, timeout=120)
    raw = client.messages.with_raw_response.create(
        model="deepseek-v4-pro",
        max_tokens=1024,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Hi!"}],
    )
    body = json.loads(raw.http_response.text, parse_float=Decimal)
    assert [block["type"] for block in body["content"]] == ["thinking", "text"]
    assert Decimal(raw.headers["x-credits-used"]) == body["usage"]["cost_usd"]
    charges = [(raw.headers["x-request-id"], int(body["usage"]["cost_micros"]))]
    streamed = client.messages.with_raw_response.create(
        model="deepseek-v4-pro", max_tokens=64, messages=[{"role": "user", "content": "Stream it."}], stream=True
    )
    events = list(streamed.parse())
    assert [e.type for e in events][-2:] == ["message_delta", "message_stop"]
    usage_event: Any = events[-2].usage  # type: ignore[union-attr]
    charges.append((streamed.headers["x-request-id"], int(usage_event.cost_micros)))
    poor = anthropic.Anthropic(base_url=stack.base_url, api_key=poor_key(stack), max_retries=0, timeout=120)
    with pytest.raises(anthropic.APIStatusError) as caught:
        poor.messages.create(model="deepseek-v4-pro", max_tokens=1024, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 402
    assert caught.value.response.json()["error"]["type"] == "billing_error"
    reconciled(stack, kafka_bootstrap, org, key, charges)
