"""Finance and customers recompute any charge from the public catalog and the answer's ``usage``
alone: for every endpoint (the Responses and Messages APIs too) and random inputs (context tiers,
image variants, cache reads and writes, image parts, tool definitions, web searches, reasoning, batch
prices, minimum charges), the sum of
each unit's count times its ``pricing_rows`` rate at the ``pricing_tier_label``, less the batch
discount, rounded up to the micro-credit once and raised to the minimum charge, is exactly
``x-credits-used`` and ``usage.cost_usd``. The recomputation reads JSON only: no Tollgate code.

The stack is this module's own, with a price book adding a model whose tiers start at short prompts
and whose minimum charge bites, so every rule is reached in a few milliseconds a request."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.pricing import ContextTier, default_price_book
from schemas.prices import PriceBook
from tests.harness import Gateway
from workers import media

examples = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
micro = Decimal("0.000001")

_base = default_price_book()
floor = msgspec.structs.replace(
    _base.models["sim-chat-large"],
    model="sim-chat-floor",
    description="A chat model whose context tiers start at short prompts and whose minimum charge bites.",
    minimum_charge_micros=300,
    call_rate=1_000_000,  # one micro-credit per request
    context_tiers=(
        ContextTier(
            above_tokens=600,
            input_token_rate=3_000_000,
            cached_input_token_rate=1_500_000,
            cache_write_token_rate=3_750_000,
            output_token_rate=12_000_000,
        ),
        ContextTier(
            above_tokens=1_500,
            input_token_rate=4_000_000,
            cached_input_token_rate=2_000_000,
            cache_write_token_rate=5_000_000,
            output_token_rate=13_000_000,
            label="Long prompts",
        ),
    ),
)
book = PriceBook(version="catalog-property-1", models={**_base.models, floor.model: floor})


class Stack:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        published = gw.admin("POST", "/v1/price-books", json=msgspec.to_builtins(book))
        assert published.status_code == 201, published.text
        lots = {"requests": 10_000_000, "jobs": 10_000_000, "tokens": 100_000_000}
        self.org = gw.organization("enterprise", limits=lots, credits="1000")
        self.key, _ = gw.key(self.org, ["user:read", "user:write"])
        # The catalog as anyone reads it: no key.
        self.cards = {card["id"]: card for card in gw.call("GET", "/v1/models").json()["data"]}
        assert floor.model in self.cards

    def post(self, path: str, **kwargs: Any) -> Any:
        response = self.gw.call("POST", path, self.key, **kwargs)
        assert response.status_code in (200, 202), response.text
        return response

    def finished(self, response: Any) -> tuple[dict[str, Any], Decimal]:
        """(usage, charge in credits) of an answer: the sync body and ``x-credits-used``, or the job's."""
        if response.status_code == 200:
            return response.json()["usage"], Decimal(response.headers["x-credits-used"])
        job_id = response.json()["job_id"] if "job_id" in response.json() else response.json()["id"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            polled = self.gw.call("GET", f"/v1/jobs/{job_id}", self.key)
            job = polled.json()
            if polled.status_code == 404:  # this gateway has not folded the job's placement yet
                time.sleep(0.02)
                continue
            assert polled.status_code == 200, polled.text
            if job["status"] == "completed" and job.get("result") is not None:
                return job["result"]["usage"], Decimal(str(job["cost_usd"]))
            assert job["status"] in ("pending", "running"), job
            time.sleep(0.02)
        raise AssertionError(f"job {job_id} did not finish")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    gateway = Gateway(Path(tmp_path_factory.mktemp("catalog")))
    yield Stack(gateway)
    gateway.close()


# --- the recomputation: a customer's, from JSON ---


def quantities(endpoint: str, usage: dict[str, Any]) -> dict[str, int]:
    """Each priced unit's count, read from the usage object as README's pricing table says."""
    counts: dict[str, int] = {}
    if endpoint in ("chat", "completions"):
        prompt = usage.get("prompt_tokens_details", {})
        counts["cached_input_tokens"] = prompt.get("cached_tokens", 0)
        counts["cache_write_tokens"] = prompt.get("cache_write_tokens", 0)
        counts["image_input_tokens"] = prompt.get("image_tokens", 0)
        counts["audio_input_tokens"] = prompt.get("audio_tokens", 0)
        counts["input_tokens"] = usage["prompt_tokens"] - sum(counts.values())
        counts["reasoning_tokens"] = usage.get("completion_tokens_details", {}).get("reasoning_tokens", 0)
        counts["output_tokens"] = usage["completion_tokens"] - counts["reasoning_tokens"]
    elif endpoint == "responses":
        details = usage.get("input_tokens_details", {})
        counts["cached_input_tokens"] = details.get("cached_tokens", 0)
        counts["cache_write_tokens"] = details.get("cache_write_tokens", 0)
        counts["input_tokens"] = usage["input_tokens"] - sum(counts.values())
        counts["output_tokens"] = usage["output_tokens"]  # thinking included, at the output rate
    elif endpoint == "messages":  # Anthropic's input_tokens leave out cache reads and writes
        counts["input_tokens"] = usage["input_tokens"]
        counts["cached_input_tokens"] = usage["cache_read_input_tokens"]
        counts["cache_write_tokens"] = usage["cache_creation_input_tokens"]
        counts["output_tokens"] = usage["output_tokens"]
    elif endpoint == "embeddings":
        counts["input_tokens"] = usage["prompt_tokens"]
    elif endpoint == "images":
        counts["images"] = usage["images"]
    elif endpoint == "transcriptions":
        counts["audio_seconds"] = usage["seconds"]
    elif endpoint == "speech":
        counts["characters"] = usage["characters"]
    elif endpoint == "videos":
        counts["video_seconds"] = usage["seconds"]
    counts["calls"] = usage.get("requests", 0)
    counts["search_units"] = usage.get("num_search_queries", 0)
    counts["storage_byte_days"] = usage.get("storage_byte_days", 0)
    for tool, count in usage.get("tool_usage", {}).items():
        counts[f"{tool}_calls"] = count
    return counts


def recompute(card: dict[str, Any], endpoint: str, usage: dict[str, Any]) -> Decimal:
    rows = card["pricing_rows"]
    label = usage.get("pricing_tier_label", "")

    def rate(unit: str) -> Decimal:
        matching = [row for row in rows if row["unit"] == unit and row["tier"] in (label, "")]
        matching.sort(key=lambda row: row["tier"] != label)  # the tier that applied, else the flat rate
        return Decimal(matching[0]["usd_per_unit"]) if matching else Decimal(0)

    total = sum((count * rate(unit) for unit, count in quantities(endpoint, usage).items()), Decimal(0))
    if usage.get("service_tier") == "flex":
        discount = next((row["percent"] for row in rows if row["unit"] == "batch_discount"), 0)
        total = total * (100 - discount) / 100
    charged = total.quantize(micro, rounding=ROUND_CEILING)
    minimum = next((Decimal(row["usd_per_unit"]) for row in rows if row["unit"] == "minimum_charge"), Decimal(0))
    return max(charged, minimum)


def check(stack: Stack, endpoint: str, model: str, response: Any) -> dict[str, Any]:
    usage, charged = stack.finished(response)
    assert Decimal(str(usage["cost_usd"])) == charged
    assert recompute(stack.cards[model], endpoint, usage) == charged, (model, usage)
    assert usage["price_version"] == book.version
    return usage


# --- every endpoint, random inputs ---

words = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=40)


def _png(width: int, height: int) -> str:
    return "data:image/png;base64," + base64.b64encode(media.png_image(width, height, b"x")).decode()


image_parts = st.one_of(
    st.builds(lambda w, h: {"url": _png(w, h)}, st.integers(1, 1200), st.integers(1, 1200)),
    st.builds(lambda w, h: {"url": _png(w, h), "detail": "low"}, st.integers(1, 600), st.integers(1, 600)),
    st.just({"url": "https://example.com/unseen.png"}),
)
weather_tool: dict[str, Any] = {
    "type": "function",
    "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


@examples
@given(
    model=st.sampled_from(["sim-chat-small", "sim-chat-large", "sim-chat-floor", "sim-research"]),
    text=words,
    filler=st.sampled_from([0, 700, 1_600]),
    image=st.one_of(st.none(), image_parts),
    tools=st.booleans(),
    cached=st.booleans(),
    flex=st.booleans(),
    search=st.booleans(),
    stream=st.booleans(),
    max_tokens=st.integers(min_value=1, max_value=60),
)
def test_chat(
    stack: Stack,
    model: str,
    text: str,
    filler: int,
    image: dict[str, Any] | None,
    tools: bool,
    cached: bool,
    flex: bool,
    search: bool,
    stream: bool,
    max_tokens: int,
) -> None:
    card = stack.cards[model]
    features = set(card["features"])
    parts: list[dict[str, Any]] = [{"type": "text", "text": text + " word" * filler}]
    if cached and "prompt_caching" in features:
        parts[0]["cache_control"] = {"type": "ephemeral"}
        parts.append({"type": "text", "text": "and then"})
    if image is not None and "image" in card["input_modalities"]:
        parts.append({"type": "image_url", "image_url": image})
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": parts}], "max_tokens": max_tokens}
    if tools and "tool_calling" in features:
        body["tools"] = [weather_tool]
    if flex and card["discount"] is not None:
        body["service_tier"] = "flex"
    if search and any(row["unit"] == "web_search_calls" for row in card["pricing_rows"]):
        body["web_search_options"] = {}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        response = stack.post("/v1/chat/completions", json=body)
        chunks = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
        usage = chunks[-1]["usage"]
        job = stack.gw.core.jobs.by_request(response.headers["x-request-id"])
        deadline = time.monotonic() + 30
        while (job is None or job.charged is None) and time.monotonic() < deadline:
            time.sleep(0.02)
            job = stack.gw.core.jobs.by_request(response.headers["x-request-id"])
        assert job is not None and job.charged is not None
        charged = Decimal(job.charged.amount_micros) * micro
        assert Decimal(str(usage["cost_usd"])) == charged
        assert recompute(card, "chat", usage) == charged, usage
        return
    usage = check(stack, "chat", model, stack.post("/v1/chat/completions", json=body))
    if model == "sim-chat-floor" and filler == 1_600:
        assert usage["pricing_tier_label"] == "Long prompts"


def test_the_minimum_charge_and_each_tier_are_reached(stack: Stack) -> None:
    """The property's rules, each at least once: the floor model's minimum, and its three tiers."""
    labels = set()
    for filler in (0, 700, 1_600):
        body = {
            "model": "sim-chat-floor",
            "messages": [{"role": "user", "content": "hi" + " word" * filler}],
            "max_tokens": 1,
        }
        usage = check(stack, "chat", "sim-chat-floor", stack.post("/v1/chat/completions", json=body))
        labels.add(usage["pricing_tier_label"])
        if filler == 0:
            assert usage["cost_usd"] == 0.0003  # the minimum charge: a few tokens list far below it
    assert labels == {"Up to 600 prompt tokens", "Over 600 prompt tokens", "Long prompts"}


@examples
@given(
    model=st.sampled_from(["sim-chat-small", "sim-chat-large", "deepseek-v4-pro", "Qwen/Qwen3.5-4B"]),
    text=words,
    filler=st.sampled_from([0, 700]),
    search=st.booleans(),
    function=st.booleans(),
    max_output_tokens=st.integers(min_value=16, max_value=80),
)
def test_responses(
    stack: Stack, model: str, text: str, filler: int, search: bool, function: bool, max_output_tokens: int
) -> None:
    tools: list[dict[str, Any]] = [{"type": "web_search"}] if search else []
    if function:
        tools.append({"type": "function", **weather_tool["function"]})
    body: dict[str, Any] = {"model": model, "input": text + " word" * filler, "max_output_tokens": max_output_tokens}
    if tools:
        body["tools"] = tools
    response = stack.post("/v1/responses", json=body)
    usage = check(stack, "responses", model, response)
    assert (
        usage.get("tool_usage", {}).get("web_search", 0) == response.json()["tool_usage"]["web_search"]["num_requests"]
    )


@examples
@given(
    model=st.sampled_from(["deepseek-v4-pro", "sim-chat-small"]),
    text=words,
    thinking=st.booleans(),
    max_tokens=st.integers(min_value=24, max_value=80),
)
def test_messages(stack: Stack, model: str, text: str, thinking: bool, max_tokens: int) -> None:
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}]}
    if thinking:
        body["thinking"] = {"type": "enabled", "budget_tokens": 16}
    check(stack, "messages", model, stack.post("/v1/messages", json=body))


@examples
@given(prompt=st.one_of(words, st.lists(words, min_size=1, max_size=3)), max_tokens=st.integers(1, 40))
def test_completions(stack: Stack, prompt: str | list[str], max_tokens: int) -> None:
    body = {"model": "sim-chat-small", "prompt": prompt, "max_tokens": max_tokens}
    check(stack, "completions", "sim-chat-small", stack.post("/v1/completions", json=body))


@examples
@given(given_input=st.one_of(words, st.lists(words, min_size=1, max_size=4)), flex=st.booleans())
def test_embeddings(stack: Stack, given_input: str | list[str], flex: bool) -> None:
    body: dict[str, Any] = {"model": "sim-embed-small", "input": given_input}
    if flex:
        body["service_tier"] = "flex"
    check(stack, "embeddings", "sim-embed-small", stack.post("/v1/embeddings", json=body))


@examples
@given(
    n=st.integers(min_value=1, max_value=4),
    size=st.sampled_from(["1024x1024", "1792x1024"]),
    quality=st.sampled_from(["standard", "hd"]),
)
@pytest.mark.heavy  # generates large PNGs per example
def test_images(stack: Stack, n: int, size: str, quality: str) -> None:
    body = {"model": "sim-image", "prompt": "a lighthouse", "n": n, "size": size, "quality": quality}
    usage = check(stack, "images", "sim-image", stack.post("/v1/images/generations", json=body))
    assert usage["pricing_tier_label"] == f"{size}/{quality}"


@examples
@given(spoken=words)
def test_speech(stack: Stack, spoken: str) -> None:
    """The answer is audio (no usage object): the count is the input's characters, as README says."""
    body = {"model": "sim-tts", "input": spoken, "voice": "alloy"}
    response = stack.post("/v1/audio/speech", json=body)
    usage = {"characters": len(spoken), "requests": 1}
    assert recompute(stack.cards["sim-tts"], "speech", usage) == Decimal(response.headers["x-credits-used"])


@examples
@given(duration_ms=st.integers(min_value=1, max_value=6000))
def test_transcriptions(stack: Stack, duration_ms: int) -> None:
    audio = media.wav_audio(duration_ms, b"seed")
    files = {"file": ("a.wav", audio, "audio/wav")}
    response = stack.post("/v1/audio/transcriptions", data={"model": "sim-whisper"}, files=files)
    check(stack, "transcriptions", "sim-whisper", response)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(duration=st.integers(min_value=1, max_value=3))
def test_videos(stack: Stack, duration: int) -> None:
    body = {"model": "sim-video", "prompt": "a clip", "duration": duration}
    check(stack, "videos", "sim-video", stack.post("/v1/videos/generations", json=body))
