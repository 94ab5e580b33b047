"""The Responses API and Anthropic's Messages API through the roles as separate processes on the real
broker, with the official SDKs as clients: each charge reconciles in the answer, the x-credits-used
header, the balance, the ledger's capture on the topic and the ClickHouse usage row."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import httpx
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


def test_streamed_speech_through_kafka(stack: Stack, kafka_bootstrap: str) -> None:
    """EmpirioLabs' streamed speech across the processes: each piece of audio travels as the worker's
    progress on tollgate.jobs and reaches the client as it is made (the first long before the end);
    the chunks are the plain endpoint's audio, and the charge in audio.done reconciles."""
    org = stack.admin.organization()
    stack.admin.grant(org, "1")
    key = stack.admin.token(org)
    sentence = "The ledger holds the credits, and the worker speaks every clause of them. "
    text = (sentence * 30)[:2000].rstrip() + "."  # 2 s of simulated synthesis
    body = {"model": "inworld-tts-mini", "input": text, "voice": "Ashley", "output_format": "PCM"}
    headers = {"Authorization": f"Bearer {key}"}
    arrived: list[tuple[float, Any]] = []
    started = time.perf_counter()
    with httpx.stream("POST", f"{stack.base_url}/v1/audio/speech:stream", json=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200, r.read()
        request_id = r.headers["x-request-id"]
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                arrived.append((time.perf_counter() - started, data if data == "[DONE]" else json.loads(data)))
    assert arrived[-1][1] == "[DONE]"
    chunks = [(at, event) for at, event in arrived[:-1] if event["type"] == "audio.chunk"]
    done_at, done = next((at, event) for at, event in arrived[:-1] if event["type"] == "audio.done")
    assert len(chunks) > 1 and chunks[0][0] < done_at / 2, (chunks[0][0], done_at)
    streamed = b"".join(base64.b64decode(event["audio_b64"]) for _, event in chunks)
    plain = httpx.post(
        f"{stack.base_url}/v1/audio/speech", json={**body, "response_format": "b64_json"}, headers=headers, timeout=120
    )
    assert plain.status_code == 200, plain.text
    assert streamed == base64.b64decode(plain.json()["data"][0]["b64_json"])
    assert done["usage"]["processed_characters"] == len(text)
    micros = [int(Decimal(str(usage["cost_usd"])) * 1_000_000) for usage in (done["usage"], plain.json()["usage"])]
    assert micros[0] == micros[1] > 0
    reconciled(stack, kafka_bootstrap, org, key, [(request_id, micros[0]), (plain.headers["x-request-id"], micros[1])])
