"""The upstream backend for /v1/responses and /v1/messages: translated to chat completions for an
OpenAI-only upstream (bench/fake_upstream.py) and the answer translated back; forwarded as they came
to an upstream that speaks the dialect (a canned server here), metered from the usage it reports."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from schemas.units import Units
from tests.support import FakeUpstream
from tests.unit.test_upstream_backend import job, one, run
from workers.backends import BackendError

question = [{"role": "user", "content": "hello there"}]
tokens = "".join(f" tok{i}" for i in range(8))


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream(tokens=16)
    yield upstream
    upstream.close()


def test_messages_are_translated_to_chat_for_an_openai_only_upstream(fake: FakeUpstream) -> None:
    context = job("/v1/messages", {"model": "m", "max_tokens": 8, "system": "brief", "messages": question})
    output = run(one(fake.url), context)
    assert output.result["content"] == [{"type": "text", "text": tokens}]
    assert output.result["stop_reason"] in ("end_turn", "max_tokens")
    assert output.units == Units(input_tokens=output.units.input_tokens, output_tokens=8)
    assert output.units.input_tokens > 0 and context.counted_by == "upstream"


def test_a_streamed_translation_relays_text_parts(fake: FakeUpstream) -> None:
    context = job("/v1/messages", {"model": "m", "max_tokens": 8, "messages": question, "stream": True})
    run(one(fake.url), context)
    points = context.on_progress.points  # type: ignore[union-attr]
    assert "".join(point[2] for point in points) == tokens


def test_responses_are_translated_when_the_upstream_has_no_responses_endpoint(fake: FakeUpstream) -> None:
    context = job("/v1/responses", {"model": "m", "input": "hello there", "max_output_tokens": 8})
    output = run(one(fake.url, responses=False), context)
    message = output.result["output"][-1]
    assert message["type"] == "message" and message["content"][0]["text"] == tokens
    assert output.result["max_output_tokens"] == 8 and output.units.output_tokens == 8


def test_hosted_web_search_cannot_be_translated(fake: FakeUpstream) -> None:
    payload = {"model": "m", "input": "news", "tools": [{"type": "web_search"}], "max_output_tokens": 8}
    with pytest.raises(BackendError) as caught:
        run(one(fake.url, responses=False), job("/v1/responses", payload))
    assert caught.value.code == "unsupported_tool" and not caught.value.retryable


class Canned(BaseHTTPRequestHandler):
    """An upstream that speaks both dialects: a fixed answer with usage for each."""

    seen: list[tuple[str, dict[str, str], dict[str, Any]]] = []
    answers: dict[str, dict[str, Any]] = {
        "/v1/messages": {
            "id": "msg_up",
            "type": "message",
            "role": "assistant",
            "model": "up",
            "content": [
                {"type": "thinking", "thinking": "hm", "signature": "sig"},
                {"type": "text", "text": "hi"},
                {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
            ],
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 10,
                "output_tokens": 7,
                "cache_creation_input_tokens": 3,
                "cache_read_input_tokens": 4,
            },
        },
        "/v1/responses": {
            "id": "resp_up",
            "object": "response",
            "status": "completed",
            "output": [
                {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search"}},
                {
                    "type": "message",
                    "id": "m1",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "found", "annotations": []}],
                },
            ],
            "usage": {
                "input_tokens": 20,
                "input_tokens_details": {"cached_tokens": 5},
                "output_tokens": 9,
                "output_tokens_details": {"reasoning_tokens": 2},
                "total_tokens": 29,
            },
        },
    }

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        Canned.seen.append((self.path, dict(self.headers), body))
        answer = json.dumps(self.answers[self.path]).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def canned() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Canned)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_messages_are_forwarded_to_an_anthropic_upstream(canned: str) -> None:
    payload = {"model": "m", "max_tokens": 64, "messages": question, "stream": True, "async": False}
    context = job("/v1/messages", payload)
    output = run(one(canned, anthropic=True, api_key="sk-up", models={"m": "up-model"}), context)
    path, headers, body = Canned.seen[-1]
    assert path == "/v1/messages" and headers["x-api-key"] == "sk-up" and headers["anthropic-version"]
    assert body["model"] == "up-model" and body["stream"] is False and "async" not in body
    # cache writes and reads each at their own rate; the answer says which were which
    assert output.units == Units(input_tokens=10, cache_write_tokens=3, cached_input_tokens=4, output_tokens=7)
    assert output.result["cache_creation_input_tokens"] == 3 and "id" not in output.result
    parts = [(point[4], point[2]) for point in context.on_progress.points]  # type: ignore[union-attr]
    kinds = [part for part, delta in parts if delta]
    assert kinds == ["reasoning", "reasoning_signature", "", "item"]


def test_responses_are_forwarded_and_searches_are_priced_calls(canned: str) -> None:
    output = run(one(canned), job("/v1/responses", {"model": "m", "input": "news", "tools": [{"type": "web_search"}]}))
    assert Canned.seen[-1][0] == "/v1/responses"
    assert output.units == Units(input_tokens=15, cached_input_tokens=5, output_tokens=9, web_search_calls=1)
    assert output.result["reasoning_tokens"] == 2 and [i["type"] for i in output.result["output"]] == [
        "web_search_call",
        "message",
    ]
