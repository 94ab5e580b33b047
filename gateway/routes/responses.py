"""The OpenAI Responses API: ``POST /v1/responses`` (``client.responses.create`` of the official SDK).

Metered like every generation request (``gateway/requests.py`` ``parse_response``: a hold on the
worst case, hosted web searches included; a job on a worker; the exact charge in ``usage.cost_usd``
and ``x-credits-used``). Answered as a response object, streamed as the Responses events
(``response.created``, ``response.in_progress``, ``response.output_item.added``,
``response.output_text.delta``, ..., ``response.completed`` with the usage), or with 202 and a job
when the body says ``"async": true``. Nothing is stored: ``previous_response_id`` is refused (send the
conversation in ``input``).
"""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.response import Stream

from gateway.auth import authorize
from gateway.core import Core
from gateway.http import read_body
from gateway.requests import RESPONSES, parse_response
from gateway.results import Charge, item_id
from gateway.routes.dialects import StreamWriter, respond, sse_event, stream
from gateway.routes.generation import OpenedStream
from schemas.units import Units
from workers.backends import ITEM, REASONING, TEXT
from workers.conversations import responses_echoes


class ResponsesWriter(StreamWriter):
    """The Responses stream events of one request. Items get their ids by position, as in the final
    response (``gateway/results.py`` ``item_id``); the message and reasoning items open with their first
    delta and close when another item starts or the response ends."""

    def __init__(self, request_id: str, opened: OpenedStream, request: dict[str, Any]) -> None:
        self._rid = request_id
        self._sequence = -1
        self._index = -1  # output index of the last item opened
        self._open: dict[str, Any] | None = None  # the message or reasoning item being streamed
        self._text = ""
        echoed = {key: request.get(key) if request.get(key) is not None else d for key, d in responses_echoes.items()}
        self._response: dict[str, Any] = {
            "id": f"resp_{request_id.removeprefix('req_')}",
            "object": "response",
            "created_at": int(time.time()),
            "status": "in_progress",
            "model": opened.model,
            "output": [],
            "error": None,
            "incomplete_details": None,
            "usage": None,
            **echoed,
            "store": False,
            "background": False,
        }

    def _event(self, kind: str, **data: Any) -> bytes:
        self._sequence += 1
        return sse_event(kind, {"type": kind, "sequence_number": self._sequence, **data})

    def start(self, units: Units) -> list[bytes]:
        return [
            self._event("response.created", response=self._response),
            self._event("response.in_progress", response=self._response),
        ]

    def part(self, part: str, delta: str) -> list[bytes]:
        if part in (TEXT, REASONING):
            events = self._open_text("message" if part == TEXT else "reasoning")
            self._text += delta
            extra: dict[str, Any] = {"logprobs": []} if part == TEXT else {}
            kind = "response.output_text.delta" if part == TEXT else "response.reasoning_text.delta"
            return [*events, self._event(kind, **self._at(), content_index=0, delta=delta, **extra)]
        if part == ITEM:
            return self._close() + self._item(json.loads(delta))
        return []  # a thinking signature: Responses has none

    def _at(self) -> dict[str, Any]:
        assert self._open is not None
        return {"item_id": self._open["id"], "output_index": self._index}

    def _open_text(self, kind: str) -> list[bytes]:
        if self._open is not None and self._open["type"] == kind:
            return []
        events = self._close()
        self._index += 1
        self._text = ""
        item_ref = item_id(self._rid, kind, self._index)
        if kind == "message":
            self._open = {
                "id": item_ref,
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            empty: dict[str, Any] = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        else:
            self._open = {"id": item_ref, "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}
            empty = {"type": "reasoning_text", "text": ""}
        added = self._event("response.output_item.added", output_index=self._index, item=self._open)
        return [*events, added, self._event("response.content_part.added", **self._at(), content_index=0, part=empty)]

    def _close(self) -> list[bytes]:
        item, self._open = self._open, None
        if item is None:
            return []
        at = {"item_id": item["id"], "output_index": self._index}
        if item["type"] == "message":
            part: dict[str, Any] = {"type": "output_text", "text": self._text, "annotations": [], "logprobs": []}
            done = self._event("response.output_text.done", **at, content_index=0, text=self._text, logprobs=[])
        else:
            part = {"type": "reasoning_text", "text": self._text}
            done = self._event("response.reasoning_text.done", **at, content_index=0, text=self._text)
        closed = {**item, "status": "completed", "content": [part]}
        return [
            done,
            self._event("response.content_part.done", **at, content_index=0, part=part),
            self._event("response.output_item.done", output_index=self._index, item=closed),
        ]

    def _item(self, item: dict[str, Any]) -> list[bytes]:
        self._index += 1
        kind = str(item.get("type"))
        item = {**item, "id": item_id(self._rid, kind, self._index)}
        at = {"item_id": item["id"], "output_index": self._index}
        events = [self._event("response.output_item.added", output_index=self._index, item=item)]
        if kind == "web_search_call":
            events[0] = self._event(
                "response.output_item.added", output_index=self._index, item={**item, "status": "in_progress"}
            )
            events += [self._event(f"response.web_search_call.{step}", **at) for step in ("in_progress", "searching")]
            events.append(self._event("response.web_search_call.completed", **at))
        elif kind == "function_call":
            arguments = str(item.get("arguments") or "")
            events[0] = self._event(
                "response.output_item.added",
                output_index=self._index,
                item={**item, "arguments": "", "status": "in_progress"},
            )
            events.append(self._event("response.function_call_arguments.delta", **at, delta=arguments))
            events.append(self._event("response.function_call_arguments.done", **at, arguments=arguments))
        events.append(self._event("response.output_item.done", output_index=self._index, item=item))
        return events

    def finish(self, body: dict[str, Any], charge: Charge) -> list[bytes]:
        events = self._close()
        for index, item in enumerate(body.get("output") or []):
            if index > self._index:  # in the answer but never streamed (an empty message)
                self._index = index
                events.append(self._event("response.output_item.added", output_index=index, item=item))
                events.append(self._event("response.output_item.done", output_index=index, item=item))
        kind = "response.completed" if body.get("status") == "completed" else "response.incomplete"
        return [*events, self._event(kind, response=body)]

    def error(self, status: int, message: str, code: str) -> list[bytes]:
        failed = {**self._response, "status": "failed", "error": {"code": code, "message": message}}
        return [
            *self._close(),
            self._event("error", code=code, message=message, param=None),
            self._event("response.failed", response=failed),
        ]


@post(RESPONSES, operation_id="createResponse", opt={"scope": "user:write", "tokens": True}, status_code=200)
async def create_response(request: Request[Any, Any, Any], core: Core) -> Response[bytes] | Stream:
    token = authorize(request, "user:write")
    metered = parse_response(await read_body(request, core.settings.request_body_bytes_max), core.prices.current)
    if metered.stream:
        fields = msgspec.json.decode(metered.payload)
        return await stream(request, core, token, metered, lambda rid, opened: ResponsesWriter(rid, opened, fields))
    return await respond(request, core, token, metered)


route_handlers = [create_response]
