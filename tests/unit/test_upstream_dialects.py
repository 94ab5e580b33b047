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

    streams: dict[str, dict[str, list[dict[str, Any]]]] = {}  # model -> path -> the stream's events

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        Canned.seen.append((self.path, dict(self.headers), body))
        if body.get("stream"):
            events = self.streams[body.get("model", "")][self.path]
            stream = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("content-length", str(len(stream)))
            self.end_headers()
            self.wfile.write(stream)
            return
        answer = json.dumps(self.answers[self.path]).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        return


def _anthropic_events(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The answer as Anthropic streams it: text in two deltas, tool input in two JSON pieces."""
    usage = answer["usage"]
    start = {**answer, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    for index, block in enumerate(answer["content"]):
        if block["type"] == "thinking":
            events.append(
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {**block, "thinking": "", "signature": ""},
                }
            )
            events.append(
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "thinking_delta", "thinking": block["thinking"]},
                }
            )
            events.append(
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "signature_delta", "signature": block["signature"]},
                }
            )
        elif block["type"] == "text":
            events.append(
                {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}
            )
            for piece in (block["text"][:1], block["text"][1:]):
                events.append(
                    {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}}
                )
        else:
            events.append({"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}})
            raw = json.dumps(block["input"])
            for piece in (raw[:3], raw[3:]):
                events.append(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    }
                )
        events.append({"type": "content_block_stop", "index": index})
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": answer["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        }
    )
    events.append({"type": "message_stop"})
    return events


def _responses_events(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The answer as the Responses API streams it: each item when done, the text in two deltas."""
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {**answer, "status": "in_progress", "output": [], "usage": None}}
    ]
    for index, item in enumerate(answer["output"]):
        if item["type"] == "message":
            text = item["content"][0]["text"]
            for piece in (text[:2], text[2:]):
                events.append(
                    {"type": "response.output_text.delta", "output_index": index, "content_index": 0, "delta": piece}
                )
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    events.append({"type": "response.completed", "response": answer})
    return events


Canned.streams["m"] = {
    "/v1/messages": _anthropic_events(Canned.answers["/v1/messages"]),
    "/v1/responses": _responses_events(Canned.answers["/v1/responses"]),
}
# Streams cut short: no response.completed, and an error event in the middle.
Canned.streams["cut"] = {"/v1/responses": _responses_events(Canned.answers["/v1/responses"])[:-1]}
Canned.streams["broken"] = {
    "/v1/messages": [
        *_anthropic_events(Canned.answers["/v1/messages"])[:3],
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    ]
}


@pytest.fixture(scope="module")
def canned() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Canned)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_messages_are_forwarded_to_an_anthropic_upstream(canned: str) -> None:
    payload = {"model": "m", "max_tokens": 64, "messages": question, "async": False}
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


def test_a_streamed_message_is_streamed_from_the_anthropic_upstream_delta_by_delta(canned: str) -> None:
    payload = {"model": "m", "max_tokens": 64, "messages": question, "stream": True}
    context = job("/v1/messages", payload)
    output = run(one(canned, anthropic=True, api_key="sk-up"), context)
    assert Canned.seen[-1][2]["stream"] is True
    parts = [(point[4], point[2]) for point in context.on_progress.points if point[2]]  # type: ignore[union-attr]
    tool = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}
    assert parts == [
        ("reasoning", "hm"),
        ("reasoning_signature", "sig"),
        ("", "h"),
        ("", "i"),
        ("item", json.dumps(tool)),
    ]
    # the same answer and charge as the whole reply: usage from message_start and message_delta
    assert output.units == Units(input_tokens=10, cache_write_tokens=3, cached_input_tokens=4, output_tokens=7)
    assert output.result["content"] == Canned.answers["/v1/messages"]["content"]
    assert output.result["stop_reason"] == "tool_use" and context.counted_by == "upstream"


def test_a_streamed_response_is_streamed_from_the_responses_upstream(canned: str) -> None:
    payload = {"model": "m", "input": "news", "tools": [{"type": "web_search"}], "stream": True}
    context = job("/v1/responses", payload)
    output = run(one(canned), context)
    assert Canned.seen[-1][2]["stream"] is True
    parts = [(point[4], point[2]) for point in context.on_progress.points if point[2]]  # type: ignore[union-attr]
    search = Canned.answers["/v1/responses"]["output"][0]
    assert parts == [("item", json.dumps(search)), ("", "fo"), ("", "und")]
    assert output.units == Units(input_tokens=15, cached_input_tokens=5, output_tokens=9, web_search_calls=1)
    assert [item["type"] for item in output.result["output"]] == ["web_search_call", "message"]


def test_a_forwarded_stream_cut_short_or_failing_is_a_retryable_error(canned: str) -> None:
    with pytest.raises(BackendError) as cut:
        run(one(canned), job("/v1/responses", {"model": "cut", "input": "news", "stream": True}, model="cut"))
    assert cut.value.code == "upstream_bad_reply" and cut.value.retryable
    payload = {"model": "broken", "max_tokens": 64, "messages": question, "stream": True}
    with pytest.raises(BackendError) as failed:
        run(one(canned, anthropic=True), job("/v1/messages", payload, model="broken"))
    assert failed.value.code == "upstream_error" and "Overloaded" in str(failed.value)
