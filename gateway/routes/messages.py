"""Anthropic's Messages API: ``POST /v1/messages`` (the ``anthropic`` SDK unchanged: ``x-api-key``,
``anthropic-version``, ``client.messages.create`` and ``client.messages.stream``).

Metered like every generation request (``gateway/requests.py`` ``parse_message``: ``max_tokens`` is
required and bounds the output, thinking included). Answered as an Anthropic message with ``usage``
(``input_tokens``, ``output_tokens``, ``cache_creation_input_tokens``, ``cache_read_input_tokens``,
and the exact charge in ``cost_usd``), or streamed as Anthropic's events (``message_start``,
``content_block_start``/``delta``/``stop``, ``message_delta`` with the usage, ``message_stop``). Every
error of this route is in Anthropic's envelope with Anthropic's statuses (``opt["errors"]``,
``gateway/surface.py``): 402 ``billing_error`` when the balance cannot cover the request.
"""

from __future__ import annotations

import json
from typing import Any

from litestar import Request, Response, post
from litestar.response import Stream

from gateway.auth import authorize
from gateway.core import Core
from gateway.requests import MESSAGES, parse_message
from gateway.results import Charge
from gateway.routes.dialects import StreamWriter, respond, sse_event, stream
from gateway.routes.generation import OpenedStream, generation_body
from gateway.surface import anthropic_error
from schemas.units import Units
from workers.backends import ITEM, REASONING, REASONING_SIGNATURE, TEXT


class MessagesWriter(StreamWriter):
    """Anthropic's stream events of one request: one content block per part, opened by its first
    delta and stopped when the next one starts (a tool_use block whole, its input as one
    ``input_json_delta``)."""

    def __init__(self, request_id: str, opened: OpenedStream) -> None:
        self._id = f"msg_{request_id.removeprefix('req_')}"
        self._model = opened.model
        self._index = -1  # index of the last block started
        self._open: str | None = None  # the type of the block being streamed

    def start(self, units: Units) -> list[bytes]:
        usage = {
            "input_tokens": units.input_tokens,
            "output_tokens": 0,
            "cache_creation_input_tokens": units.cache_write_tokens,
            "cache_read_input_tokens": units.cached_input_tokens,
        }
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        return [sse_event("message_start", {"type": "message_start", "message": message})]

    def _block(self, block: dict[str, Any]) -> list[bytes]:
        events = self._stop()
        self._index += 1
        self._open = str(block["type"])
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        return [*events, sse_event("content_block_start", start)]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse_event("content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta})

    def _stop(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = None
        return [sse_event("content_block_stop", {"type": "content_block_stop", "index": self._index})]

    def part(self, part: str, delta: str) -> list[bytes]:
        if part == TEXT:
            events = [] if self._open == "text" else self._block({"type": "text", "text": ""})
            return [*events, self._delta({"type": "text_delta", "text": delta})]
        if part == REASONING:
            opening = {"type": "thinking", "thinking": "", "signature": ""}
            events = [] if self._open == "thinking" else self._block(opening)
            return [*events, self._delta({"type": "thinking_delta", "thinking": delta})]
        if part == REASONING_SIGNATURE and self._open == "thinking":
            return [self._delta({"type": "signature_delta", "signature": delta})]
        if part == ITEM:
            return self._whole(json.loads(delta))
        return []

    def _whole(self, block: dict[str, Any]) -> list[bytes]:
        if block.get("type") != "tool_use":
            return [*self._block(block), *self._stop()]
        arguments = json.dumps(block.get("input") or {}, separators=(",", ":"))
        events = self._block({**block, "input": {}})
        return [*events, self._delta({"type": "input_json_delta", "partial_json": arguments}), *self._stop()]

    def finish(self, body: dict[str, Any], charge: Charge) -> list[bytes]:
        events = self._stop()
        for index, block in enumerate(body.get("content") or []):
            if index > self._index:  # in the answer but never streamed (an empty text block)
                events += self._whole(block)
        delta = {"stop_reason": body.get("stop_reason"), "stop_sequence": body.get("stop_sequence")}
        message_delta = {"type": "message_delta", "delta": delta, "usage": body["usage"]}
        return [
            *events,
            sse_event("message_delta", message_delta),
            sse_event("message_stop", {"type": "message_stop"}),
        ]

    def error(self, status: int, message: str, code: str) -> list[bytes]:
        return [*self._stop(), sse_event("error", anthropic_error(status, message, code))]


@post(
    MESSAGES,
    operation_id="createMessage",
    opt={"scope": "user:write", "tokens": True, "errors": "anthropic"},
    status_code=200,
)
async def create_message(request: Request[Any, Any, Any], core: Core) -> Response[bytes] | Stream:
    token = authorize(request, "user:write")
    metered = parse_message(await generation_body(request, core), core.prices.current)
    if metered.stream:
        return await stream(request, core, token, metered, MessagesWriter)
    return await respond(request, core, token, metered)


route_handlers = [create_message]
