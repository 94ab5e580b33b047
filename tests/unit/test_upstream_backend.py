"""The upstream backend against bench/fake_upstream.py (in this process): streams relayed delta by
delta, usage from each response type, counting when the upstream reports none, fallbacks, a bound on
calls in flight, and cancellation that closes the upstream stream with the units counted so far."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from schemas.prices import Route
from schemas.units import Units
from tests.support import FakeUpstream, free_port
from workers.backends import BackendError, JobContext, JobOutput
from workers.upstream import Upstream, UpstreamBackend, UpstreamConfigError, Upstreams


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream()
    yield upstream
    upstream.close()


@pytest.fixture(autouse=True)
def reset(fake: FakeUpstream) -> None:
    fake.control(reply_ms=0.0, token_ms=0.0, tokens=16, stream_usage=True)


class Recorder:
    """A job's progress points, as the worker's reporter sees them."""

    def __init__(self) -> None:
        self.points: list[tuple[int, Units, str, float, str]] = []

    def __call__(self, progress_milli: int, units: Units, delta: str, part: str = "") -> None:
        self.points.append((progress_milli, units, delta, time.perf_counter(), part))


def job(endpoint: str, payload: dict[str, Any], model: str = "m", **options: Any) -> JobContext:
    context = JobContext("job", model, endpoint, payload, **options)
    context.on_progress = Recorder()
    return context


def run(backend: UpstreamBackend, context: JobContext) -> JobOutput:
    async def once() -> JobOutput:
        try:
            return await backend.run(context)
        finally:
            await backend.close()

    return asyncio.run(once())


def one(url: str, **options: Any) -> UpstreamBackend:
    return UpstreamBackend(Upstreams({}, Upstream(url=url, **options)))


chat = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8}


def test_a_stream_is_relayed_delta_by_delta_and_metered_from_its_usage_chunk(fake: FakeUpstream) -> None:
    fake.control(token_ms=5.0)
    context = job("/v1/chat/completions", {**chat, "stream": True})
    output = run(one(fake.url), context)
    points = context.on_progress.points  # type: ignore[union-attr]
    assert [p[2] for p in points] == [f" tok{i}" for i in range(8)]
    assert [p[1].output_tokens for p in points] == list(range(1, 9))
    assert points[-1][3] - points[0][3] >= 7 * 0.004  # as the upstream produced them, not at the end
    assert output.units == Units(input_tokens=6, output_tokens=8)  # the fake's usage chunk
    assert context.counted_by == "upstream"
    assert output.result["choices"][0]["message"]["content"] == "".join(f" tok{i}" for i in range(8))


def test_a_stream_without_usage_is_counted_from_its_logprobs(fake: FakeUpstream) -> None:
    fake.control(stream_usage=False)
    context = job("/v1/completions", {"prompt": "count me", "max_tokens": 5, "stream": True})
    counter = FixedCounter()
    backend = one(fake.url, stream_logprobs=True, tokenizers={"m": "fixed"})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("workers.upstream.load_counter", lambda spec: counter)
        output = run(backend, context)
    assert output.units == Units(input_tokens=len("count me"), output_tokens=5)
    assert context.counted_by == "logprobs"


def test_a_stream_without_usage_and_without_a_tokenizer_fails_rather_than_guess(fake: FakeUpstream) -> None:
    fake.control(stream_usage=False)
    with pytest.raises(BackendError) as caught:
        run(one(fake.url), job("/v1/chat/completions", {**chat, "stream": True}))
    assert caught.value.code == "upstream_no_usage"


def test_a_cancelled_stream_closes_the_upstream_with_its_units_current(fake: FakeUpstream) -> None:
    fake.control(token_ms=20.0, tokens=50)
    context = job("/v1/chat/completions", {**chat, "max_tokens": 50, "stream": True})

    async def cancel_after_three() -> None:
        backend = one(fake.url)
        task = asyncio.ensure_future(backend.run(context))
        while context.units.output_tokens < 3:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await backend.close()

    asyncio.run(cancel_after_three())
    assert 3 <= context.units.output_tokens < 50
    assert context.output == "".join(f" tok{i}" for i in range(context.units.output_tokens))


def test_not_streamed_means_no_stream_options(fake: FakeUpstream) -> None:
    output = run(one(fake.url), job("/v1/chat/completions", {**chat, "stream_options": {"include_usage": True}}))
    assert output.units == Units(input_tokens=6, output_tokens=8)


def test_every_endpoint_is_metered_from_what_the_upstream_returns(fake: FakeUpstream) -> None:
    backend = one(fake.url)
    embedded = run(backend, job("/v1/embeddings", {"input": ["abcdefgh", "ijkl"]}))
    assert embedded.units == Units(input_tokens=3)  # the fake's usage.prompt_tokens
    images = run(one(fake.url), job("/v1/images/generations", {"prompt": "x", "n": 2, "size": "1024x1024"}))
    assert images.units == Units(images=2, variant="1024x1024/standard")
    spoken = run(one(fake.url), job("/v1/audio/speech", {"input": "say this", "voice": "a"}))
    assert spoken.units == Units(characters=8) and spoken.result["content_type"] == "audio/wav"
    heard = run(one(fake.url), job("/v1/audio/transcriptions", {"file_b64": "UklGRg==", "filename": "a.wav"}))
    assert heard.units == Units(audio_seconds=3)  # 2.5 s, billed by the started second
    translated = run(one(fake.url), job("/v1/audio/translations", {"file_b64": "UklGRg==", "filename": "a.wav"}))
    assert translated.units == Units(audio_seconds=3) and translated.result["text"]
    edit = {"prompt": "x", "n": 1, "size": "1024x1024", "quality": "standard", "images_b64": ["iVBORw0KGgo="] * 2}
    edited = run(one(fake.url), job("/v1/images/edits", {**edit, "mask_b64": "iVBORw0KGgo="}))
    assert edited.units == Units(images=1, variant="1024x1024/standard") and edited.result["data"]
    with pytest.raises(BackendError) as caught:
        run(one(fake.url), job("/v1/videos/generations", {"prompt": "x"}))
    assert caught.value.code == "unsupported_endpoint"


def test_a_fallback_serves_when_the_first_upstream_cannot(fake: FakeUpstream) -> None:
    dead = Upstream(url=f"http://127.0.0.1:{free_port()}", connect_timeout_s=1)
    backend = UpstreamBackend(Upstreams({"primary": dead, "spare": Upstream(url=fake.url)}))
    context = job(
        "/v1/chat/completions",
        {**chat, "stream": True},
        model="big",
        pool="primary",
        fallbacks=(Route(model="small", pool="spare"),),
    )
    output = run(backend, context)
    assert (context.served_model, context.fallback_depth) == ("small", 1)
    assert output.result["model"] == "small" and output.units.output_tokens == 8


def test_without_a_fallback_an_unreachable_upstream_is_a_retryable_failure() -> None:
    with pytest.raises(BackendError) as caught:
        run(one(f"http://127.0.0.1:{free_port()}", connect_timeout_s=1), job("/v1/chat/completions", chat))
    assert caught.value.code == "upstream_unreachable" and caught.value.retryable


def test_calls_in_flight_are_bounded_per_upstream(fake: FakeUpstream) -> None:
    fake.control(reply_ms=100.0)

    async def six() -> float:
        backend = one(fake.url, calls_in_flight_max=2)
        started = time.perf_counter()
        await asyncio.gather(*(backend.run(job("/v1/chat/completions", chat)) for _ in range(6)))
        await backend.close()
        return time.perf_counter() - started

    assert asyncio.run(six()) >= 0.3  # three rounds of two


def test_settings_name_each_pool_and_refuse_what_they_cannot_read() -> None:
    upstreams = Upstreams.from_settings(
        '{"gpu": {"url": "http://gpu:8000", "calls_in_flight_max": 8, "models": {"m": "org/m"}}}',
        url="http://default:8000",
    )
    assert upstreams.for_pool("gpu") == Upstream(url="http://gpu:8000", calls_in_flight_max=8, models={"m": "org/m"})
    assert upstreams.for_pool("other") == Upstream(url="http://default:8000")
    for broken in ("[1]", '{"gpu": {}}', '{"gpu": {"url": "x", "color": 1}}', '{"gpu": {"url": "x", "timeout_s": 0}}'):
        with pytest.raises(UpstreamConfigError):
            Upstreams.from_settings(broken)


class FixedCounter:
    """A stand-in tokenizer: a character a token (the real ones are tested against llama.cpp)."""

    spec = "fixed"

    def count_text(self, text: str) -> int:
        return len(text)

    def count_prompt(self, prompt: str) -> int:
        return len(prompt)

    def count_chat(self, messages: list[dict[str, Any]]) -> int:
        return sum(len(str(m.get("content"))) for m in messages)
