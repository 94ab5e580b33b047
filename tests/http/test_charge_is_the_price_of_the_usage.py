"""Whatever optional fields a client sets or leaves out, every endpoint charges exactly the list price
of the usage it reports, and no capture is ever capped at its hold: the hold and the run read the
same limits (``gateway/requests.py``). Before, ``/v1/completions`` held for 16 output tokens while the
worker ran to the model's natural length (or obeyed ``max_completion_tokens``), and the charge was
capped far below the list price."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.pricing import default_price_book, price_micros
from schemas.events import HoldCaptured
from schemas.units import Units
from tests.harness import Gateway
from workers import media

book = default_price_book()
examples = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Stack:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        lots = {"requests": 10_000_000, "jobs": 10_000_000, "tokens": 100_000_000}
        self.org = gw.organization("enterprise", limits=lots, credits="1000")
        self.key, _ = gw.key(self.org, ["user:read", "user:write"])

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.gw.call("POST", path, self.key, **kwargs)

    def capture(self, request_id: str) -> HoldCaptured:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            job = self.gw.core.jobs.by_request(request_id)
            if job is not None and job.charged is not None:
                return job.charged
            time.sleep(0.02)
        raise AssertionError(f"no charge for {request_id}")

    def charged(self, response: Any) -> HoldCaptured:
        """The capture behind a 200, checked: the list price of its usage, never capped."""
        assert response.status_code in (200, 202), response.text
        captured = self.capture(response.headers["x-request-id"])
        price = book.model(captured.model)
        assert price is not None
        assert captured.priced_micros == price_micros(price, captured.units)
        assert captured.amount_micros == captured.priced_micros, "the capture was capped at its hold"
        if response.status_code == 200 and "x-credits-used" in response.headers:
            assert Decimal(response.headers["x-credits-used"]) * 1_000_000 == captured.amount_micros
        return captured


@pytest.fixture(scope="module")
def stack(gw: Gateway) -> Stack:
    return Stack(gw)


text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=60)
output_limit = st.one_of(st.none(), st.integers(min_value=1, max_value=300))


def _limits(max_tokens: int | None, max_completion_tokens: int | None) -> dict[str, int]:
    given_limits: dict[str, int] = {}
    if max_tokens is not None:
        given_limits["max_tokens"] = max_tokens
    if max_completion_tokens is not None:
        given_limits["max_completion_tokens"] = max_completion_tokens
    return given_limits


def _tokens(usage: dict[str, Any], captured: HoldCaptured) -> None:
    assert usage["prompt_tokens"] == captured.units.input_tokens + captured.units.cached_input_tokens
    assert usage["completion_tokens"] == captured.units.output_tokens


@examples
@given(
    messages=st.lists(text, min_size=1, max_size=3),
    model=st.sampled_from(["sim-chat-small", "sim-chat-large"]),
    max_tokens=output_limit,
    max_completion_tokens=output_limit,
    temperature=st.one_of(st.none(), st.floats(min_value=0, max_value=2)),
)
def test_chat(
    stack: Stack,
    messages: list[str],
    model: str,
    max_tokens: int | None,
    max_completion_tokens: int | None,
    temperature: float | None,
) -> None:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": m} for m in messages]}
    body.update(_limits(max_tokens, max_completion_tokens))
    if temperature is not None:
        body["temperature"] = temperature
    response = stack.post("/v1/chat/completions", json=body)
    if max_tokens is not None and max_completion_tokens is not None and max_tokens != max_completion_tokens:
        assert response.status_code == 400 and response.json()["error"]["param"] == "max_completion_tokens"
        return
    captured = stack.charged(response)
    _tokens(response.json()["usage"], captured)
    limit = max_completion_tokens or max_tokens
    if limit is not None:
        assert captured.units.output_tokens <= limit


@examples
@given(
    prompt=st.one_of(text, st.lists(text, min_size=1, max_size=3)),
    max_tokens=output_limit,
    max_completion_tokens=output_limit,
)
def test_completions(
    stack: Stack, prompt: str | list[str], max_tokens: int | None, max_completion_tokens: int | None
) -> None:
    body: dict[str, Any] = {"model": "sim-chat-small", "prompt": prompt, **_limits(max_tokens, max_completion_tokens)}
    response = stack.post("/v1/completions", json=body)
    if max_tokens is not None and max_completion_tokens is not None and max_tokens != max_completion_tokens:
        assert response.status_code == 400
        return
    captured = stack.charged(response)
    _tokens(response.json()["usage"], captured)
    assert captured.units.output_tokens <= (max_completion_tokens or max_tokens or 16)  # OpenAI's default


def test_a_completion_without_max_tokens_is_held_for_and_runs_to_sixteen_tokens(stack: Stack) -> None:
    """The measured bug: no max_tokens, 61 tokens charged 13 micros for a list price of 37."""
    for prompt in ("tell me a long story", "another prompt that runs long", "x"):
        captured = stack.charged(stack.post("/v1/completions", json={"model": "sim-chat-small", "prompt": prompt}))
        assert captured.units.output_tokens <= 16


def test_output_limits_that_disagree_or_are_not_positive_are_a_400(stack: Stack) -> None:
    for extra in ({"max_tokens": 1, "max_completion_tokens": 64}, {"max_completion_tokens": -5}, {"max_tokens": 0}):
        response = stack.post("/v1/completions", json={"model": "sim-chat-small", "prompt": "p", **extra})
        assert response.status_code == 400, (extra, response.text)


@examples
@given(
    given_input=st.one_of(
        text,
        st.lists(text, min_size=1, max_size=4),
        st.lists(st.integers(min_value=0, max_value=50_000), min_size=1, max_size=20),
    ),
    dimensions=st.one_of(st.none(), st.integers(min_value=1, max_value=256)),
    encoding=st.sampled_from(["float", "base64"]),
)
def test_embeddings(stack: Stack, given_input: Any, dimensions: int | None, encoding: str) -> None:
    body: dict[str, Any] = {"model": "sim-embed-small", "input": given_input, "encoding_format": encoding}
    if dimensions is not None:
        body["dimensions"] = dimensions
    response = stack.post("/v1/embeddings", json=body)
    captured = stack.charged(response)
    assert response.json()["usage"]["prompt_tokens"] == captured.units.input_tokens


@examples
@given(
    n=st.integers(min_value=1, max_value=4),
    size=st.sampled_from(["1024x1024", "1792x1024"]),
    quality=st.sampled_from(["standard", "hd"]),
)
@pytest.mark.heavy  # generates large PNGs per example
def test_images(stack: Stack, n: int, size: str, quality: str) -> None:
    body = {"model": "sim-image", "prompt": "a lighthouse", "n": n, "size": size, "quality": quality}
    captured = stack.charged(stack.post("/v1/images/generations", json=body))
    assert captured.units == Units(images=n, variant=f"{size}/{quality}", calls=1)


@examples
@given(spoken=text, voice=st.sampled_from(["alloy", "nova"]), speed=st.sampled_from([0.5, 1.0, 2.0]))
def test_speech(stack: Stack, spoken: str, voice: str, speed: float) -> None:
    body = {"model": "sim-tts", "input": spoken, "voice": voice, "speed": speed}
    captured = stack.charged(stack.post("/v1/audio/speech", json=body))
    assert captured.units.characters == len(spoken)


@examples
@given(duration_ms=st.integers(min_value=1, max_value=6000), language=st.sampled_from([None, "en"]))
def test_transcriptions(stack: Stack, duration_ms: int, language: str | None) -> None:
    audio = media.wav_audio(duration_ms, b"seed")
    data = {"model": "sim-whisper", **({"language": language} if language else {})}
    response = stack.post("/v1/audio/transcriptions", data=data, files={"file": ("a.wav", audio, "audio/wav")})
    captured = stack.charged(response)
    assert captured.units.audio_seconds == -(-duration_ms // 1000)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(duration=st.integers(min_value=1, max_value=3))
def test_videos(stack: Stack, duration: int) -> None:
    body = {"model": "sim-video", "prompt": "a clip", "duration": duration}
    captured = stack.charged(stack.post("/v1/videos/generations", json=body))
    assert captured.units.video_seconds == duration
