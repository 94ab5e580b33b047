"""Through Tollgate (`tollgate dev` forwarding to llama.cpp's server), with the openai SDK: a chat, a
stream whose text arrives token by token with the usage the server would have reported, a cancelled
stream charged for what was generated, and every charge equal to the usage priced by the catalog.

llama.cpp's streams carry no usage, so the worker counts them: the prompt with the model's own
tokenizer (read from the GGUF, with its chat template), the output from the logprobs entries the
stream is asked for (one per generated token). Greedy decoding (temperature 0) makes a streamed and a
non-streamed request generate the same tokens, so the server's own non-streamed usage is the
reference for the stream's count."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai.types.chat import ChatCompletionMessageParam

from ledger.pricing import default_price_book, price_micros
from schemas.units import Units
from tests.support import Dev
from tests.upstream.conftest import Llama

model = "smollm2-135m-instruct"
price = default_price_book().models[model]
messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Write a haiku about ledgers."}]


@pytest.fixture(scope="module")
def dev(llama: Llama, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    root = tmp_path_factory.mktemp("dev-llama")
    running = Dev(
        root,
        root,
        {
            "TOLLGATE_UPSTREAM_URL": llama.url,
            "TOLLGATE_UPSTREAM_STREAM_LOGPROBS": "1",
            "TOLLGATE_UPSTREAM_TOKENIZERS": json.dumps({model: f"gguf:{llama.model_path}"}),
            "TOLLGATE_UPSTREAM_CALLS_IN_FLIGHT_MAX": "1",  # the server answers one request at a time
        },
    )
    yield running
    running.stop()


def direct(llama: Llama, **body: Any) -> dict[str, Any]:
    """The server's own answer, not through Tollgate: the reference for what it counts."""
    reply = httpx.post(f"{llama.url}/v1/chat/completions", json={"model": model, **body}, timeout=300)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def charged(usage: Any) -> int:
    cached = (usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0) or 0
    units = Units(
        input_tokens=usage.prompt_tokens - cached, cached_input_tokens=cached, output_tokens=usage.completion_tokens
    )
    return price_micros(price, units)


def test_a_chat_is_charged_the_usage_the_server_reports_at_catalog_prices(dev: Dev, llama: Llama) -> None:
    _, key = dev.organization()
    client = dev.client(key)
    reply = client.chat.completions.with_raw_response.create(
        model=model, messages=messages, max_tokens=24, temperature=0
    )
    completion = reply.parse()
    reference = direct(llama, messages=messages, max_tokens=24, temperature=0)
    assert completion.choices[0].message.content == reference["choices"][0]["message"]["content"]
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        reference["usage"]["prompt_tokens"],
        reference["usage"]["completion_tokens"],
    )
    extra = usage.model_extra or {}
    assert extra["tokens_counted_by"] == "upstream"
    assert extra["cost_micros"] == charged(usage) == usage.prompt_tokens + 2 * usage.completion_tokens
    assert reply.headers["x-model-used"] == model and "x-fallback-from" not in reply.headers


def test_a_stream_arrives_token_by_token_and_is_counted_as_the_server_counts(dev: Dev, llama: Llama) -> None:
    _, key = dev.organization()
    client = dev.client(key)
    contents: list[str] = []
    usage = None
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            assert usage is None, "text after the usage chunk"
            contents.append(chunk.choices[0].delta.content)
    reference = direct(llama, messages=messages, max_tokens=24, temperature=0)
    assert len(contents) >= 5, contents  # several chunks of text before the end, not one at the end
    assert "".join(contents) == reference["choices"][0]["message"]["content"]
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        reference["usage"]["prompt_tokens"],
        reference["usage"]["completion_tokens"],
    )
    extra = usage.model_extra or {}
    assert extra["tokens_counted_by"] == "logprobs"
    assert extra["cost_micros"] == charged(usage)


def test_a_cancelled_stream_is_charged_for_what_was_generated(dev: Dev, llama: Llama) -> None:
    _, key = dev.organization()
    long_messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Tell a very long story about a lighthouse keeper and the sea."}
    ]
    body = {"model": model, "messages": long_messages, "max_tokens": 600, "temperature": 0, "stream": True}
    received = 0
    with (
        httpx.Client(base_url=dev.base_url, timeout=120) as http,
        http.stream("POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}) as reply,
    ):
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                received += 1
            if received == 8:
                break  # the client leaves: its job is cancelled and the upstream stream closed
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        account = httpx.get(f"{dev.base_url}/v1/account/usage", headers={"Authorization": f"Bearer {key}"}).json()
        events = account["data"]
        if events and account["balance"]["held_micros"] == 0:
            break
        time.sleep(0.25)
    assert len(events) == 1, events
    tokens = events[0]["tokens"]
    prompt = direct(llama, messages=long_messages, max_tokens=1, temperature=0)["usage"]["prompt_tokens"]
    assert tokens["input"] == prompt  # the model's own tokenizer, as the server counts
    assert 8 <= tokens["output"] < 600  # what was generated until the stop, not the whole limit
    assert events[0]["cost"]["amount_micros"] == price_micros(
        price, Units(input_tokens=tokens["input"], output_tokens=tokens["output"])
    )
