"""Every input of a chat request is metered and held for (workers/metering.py): images by size and
detail, audio by duration, tool definitions and tool calls, files (inline or by file_id), cacheable
prefixes; the model's own work beyond tokens too (web searches, search queries, reasoning), and batch
prices. Each charge is the list price of its usage, within its hold, never capped."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from ledger.pricing import default_price_book, price_micros
from schemas.events import HoldCaptured
from schemas.units import Units
from tests.harness import Gateway
from workers import media
from workers.backends import count_sim_tokens
from workers.metering import NoFiles

book = default_price_book()


class Stack:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        lots = {"requests": 10_000_000, "jobs": 10_000_000, "tokens": 100_000_000}
        self.org = gw.organization("enterprise", limits=lots, credits="1000")
        self.key, _ = gw.key(self.org, ["user:read", "user:write"])

    def chat(self, model: str, *parts: Any, **fields: Any) -> Any:
        content: Any = list(parts) if parts else "hello"
        body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 32, **fields}
        return self.gw.call("POST", "/v1/chat/completions", self.key, json=body)

    def charged(self, response: Any) -> tuple[HoldCaptured, dict[str, Any]]:
        """The capture behind a 200: the list price of its usage, within its hold, as the answer says."""
        assert response.status_code == 200, response.text
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            job = self.gw.core.jobs.by_request(response.headers["x-request-id"])
            if job is not None and job.charged is not None:
                captured = job.charged
                price = book.model(captured.model)
                assert price is not None
                assert captured.amount_micros == captured.priced_micros == price_micros(price, captured.units)
                assert Decimal(response.headers["x-credits-used"]) * 1_000_000 == captured.amount_micros
                usage = response.json()["usage"]
                assert Decimal(str(usage["cost_usd"])) * 1_000_000 == captured.amount_micros
                return captured, usage
            time.sleep(0.02)
        raise AssertionError("no charge")


@pytest.fixture(scope="module")
def stack(gw: Gateway) -> Stack:
    return Stack(gw)


def _png_uri(width: int, height: int) -> str:
    return "data:image/png;base64," + base64.b64encode(media.png_image(width, height, b"x")).decode()


def test_images_are_billed_as_tokens_by_size_and_detail(stack: Stack) -> None:
    text = {"type": "text", "text": "describe"}
    plain, _ = stack.charged(stack.chat("sim-chat-small", text))
    cases = [
        ({"url": _png_uri(64, 64)}, 85 + 170),
        ({"url": _png_uri(1024, 600)}, 85 + 170 * 4),
        ({"url": _png_uri(1024, 600), "detail": "low"}, 85),
        ({"url": "https://example.com/cat.png"}, 1445),  # not fetched: counted as the largest
    ]
    for image, tokens in cases:
        captured, usage = stack.charged(stack.chat("sim-chat-small", text, {"type": "image_url", "image_url": image}))
        assert captured.units.image_input_tokens == tokens
        assert captured.units.input_tokens == plain.units.input_tokens  # the image's URL is no text
        assert usage["prompt_tokens_details"]["image_tokens"] == tokens
        assert usage["prompt_tokens"] == plain.units.input_tokens + tokens


def test_audio_input_is_billed_by_duration_and_refused_where_it_cannot_be_read(stack: Stack) -> None:
    wav = base64.b64encode(media.wav_audio(2_450, b"s")).decode()
    audio = {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}}
    captured, usage = stack.charged(stack.chat("sim-chat-large", {"type": "text", "text": "transcribe"}, audio))
    assert captured.units.audio_input_tokens == usage["prompt_tokens_details"]["audio_tokens"] == 25
    refused = stack.chat("sim-chat-small", audio)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "audio_not_supported_by_model"
    mp3 = {"type": "input_audio", "input_audio": {"data": wav, "format": "mp3"}}
    refused = stack.chat("sim-chat-large", mp3)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "unsupported_audio_format"
    image = {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}
    refused = stack.chat("sim-research", image)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "image_not_supported_by_model"


def test_tool_definitions_and_tool_calls_are_prompt_tokens(stack: Stack) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    plain, _ = stack.charged(stack.chat("sim-chat-small"))
    with_tools, _ = stack.charged(stack.chat("sim-chat-small", tools=tools))
    as_read = json.dumps(tools, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    assert with_tools.units.input_tokens - plain.units.input_tokens == count_sim_tokens(as_read)
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    body = {
        "model": "sim-chat-small",
        "max_tokens": 8,
        "messages": [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
    }
    history, _ = stack.charged(stack.gw.call("POST", "/v1/chat/completions", stack.key, json=body))
    called = json.dumps([call], separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    overhead = 2 * 4  # two more messages
    expected = plain.units.input_tokens + overhead + count_sim_tokens(called) + count_sim_tokens("call_1 sunny")
    assert history.units.input_tokens == expected


class Files:
    def read(self, org_id: str, file_id: str, bytes_max: int) -> tuple[str, bytes] | None:
        return ("notes.txt", b"three little words") if file_id == "file-abc" else None


@pytest.fixture
def files(stack: Stack) -> Iterator[None]:
    stack.gw.core.files = Files()
    yield
    stack.gw.core.files = NoFiles()


def test_files_are_billed_by_their_contents_inline_or_by_id(stack: Stack, files: None) -> None:
    inline = {
        "type": "file",
        "file": {"filename": "n.txt", "file_data": base64.b64encode(b"three little words").decode()},
    }
    by_id = {"type": "file", "file": {"file_id": "file-abc"}}
    sent, _ = stack.charged(stack.chat("sim-chat-large", inline))
    referenced, _ = stack.charged(stack.chat("sim-chat-large", by_id))
    plain, _ = stack.charged(stack.chat("sim-chat-large", {"type": "text", "text": ""}))
    assert sent.units.input_tokens == referenced.units.input_tokens == plain.units.input_tokens + 3
    missing = stack.chat("sim-chat-large", {"type": "file", "file": {"file_id": "file-nope"}})
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "file_not_found"
    refused = stack.chat("sim-chat-small", inline)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "file_not_supported_by_model"


def test_a_cacheable_prefix_is_written_once_then_read_at_its_rates(stack: Stack) -> None:
    marked = {
        "type": "text",
        "text": f"a long shared preamble {time.time_ns()}",
        "cache_control": {"type": "ephemeral"},
    }
    question = {"type": "text", "text": "and a question"}
    first, usage = stack.charged(stack.chat("sim-chat-large", marked, question))
    assert first.units.cache_write_tokens == count_sim_tokens(str(marked["text"])) > 0
    assert usage["cache_creation_input_tokens"] == first.units.cache_write_tokens
    second, usage = stack.charged(stack.chat("sim-chat-large", marked, question))
    assert second.units.cached_input_tokens == first.units.cache_write_tokens and not second.units.cache_write_tokens
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["cache_read_input_tokens"] > 0
    assert first.units.prompt_tokens == second.units.prompt_tokens
    assert second.amount_micros < first.amount_micros  # cache reads at half the input rate, writes above it


def test_web_search_is_a_tool_invocation_priced_per_call(stack: Stack) -> None:
    captured, usage = stack.charged(stack.chat("sim-chat-large", web_search_options={}))
    assert captured.units.web_search_calls == 1 and usage["tool_usage"] == {"web_search": 1}
    assert captured.amount_micros >= 10_000  # 0.01 credits per search
    refused = stack.chat("smollm2-135m-instruct", web_search_options={})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "web_search_not_supported_by_model"


def test_a_research_model_bills_reasoning_search_queries_and_the_request(stack: Stack) -> None:
    for effort, reasoning in (("low", 8), ("high", 32), (None, 16)):
        extra = {"reasoning_effort": effort} if effort else {}
        captured, usage = stack.charged(stack.chat("sim-research", max_tokens=200, **extra))
        assert captured.units.reasoning_tokens == reasoning == usage["completion_tokens_details"]["reasoning_tokens"]
        assert usage["completion_tokens"] == captured.units.output_tokens + reasoning
        assert 1 <= captured.units.search_units == usage["num_search_queries"] <= 3
        assert captured.units.calls == usage["requests"] == 1
    # Reasoning shares the output limit: 4 tokens of budget leave no room for an answer.
    captured, _ = stack.charged(stack.chat("sim-research", max_tokens=4, reasoning_effort="medium"))
    assert captured.units.reasoning_tokens == 4 and captured.units.output_tokens == 0
    refused = stack.chat("sim-chat-small", reasoning_effort="low")
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "reasoning_effort"


def test_batch_prices_halve_the_charge_and_name_the_service_tier(stack: Stack) -> None:
    text = {"type": "text", "text": "the same words every time"}
    full, _ = stack.charged(stack.chat("sim-chat-large", text))
    half, usage = stack.charged(stack.chat("sim-chat-large", text, service_tier="flex"))
    assert half.units == msgspec.structs.replace(full.units, batch=True)
    scaled_micros = full.amount_micros  # (a short prompt: no minimum, one round-up)
    assert half.amount_micros in (max(scaled_micros // 2, 10), max(scaled_micros // 2 + 1, 10))
    assert usage["service_tier"] == "flex" and usage["batch_discount_percent"] == 50
    refused = stack.chat("sim-chat-large", service_tier="premium")
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "service_tier"


def test_every_request_counts_its_per_request_fee(stack: Stack) -> None:
    captured, usage = stack.charged(stack.chat("sim-chat-small"))
    assert captured.units.calls == usage["requests"] == 1
    assert captured.units == Units(
        input_tokens=captured.units.input_tokens, output_tokens=captured.units.output_tokens, calls=1
    )


def test_the_streamed_final_chunk_carries_the_cost_as_a_number(stack: Stack) -> None:
    body = {"model": "sim-chat-large", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    response = stack.gw.call("POST", "/v1/chat/completions", stack.key, json=body)
    assert response.status_code == 200
    chunks = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    usage = chunks[-1]["usage"]
    assert isinstance(usage["cost_usd"], (int, float)) and not isinstance(usage["cost_usd"], bool)
    assert '"cost_usd":0.' in response.text or '"cost_usd":1' in response.text
    assert usage["pricing_tier_label"] == "Up to 32,768 prompt tokens"
    assert usage["requests"] == 1
