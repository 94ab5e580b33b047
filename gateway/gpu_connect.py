"""What a simulated GPU Cloud instance's service answers through ``/v1/gpu/connect/{id}/{path}``.

Nothing runs on a GPU in Tollgate (``gateway/routes/resources.py``): an instance is billed by the
second while the ledger has it running, and this is the service the connect path reaches meanwhile,
as a model deploy's OpenAI-compatible server would answer (the document: "For a model deploy this is
the OpenAI-compatible base"):

- ``GET health`` (or the root): ``{"status": "ok", ...}`` naming the instance;
- ``GET v1/models``: the one model it serves (its image, or the GPU's name);
- ``POST v1/chat/completions``: a deterministic reply (the same messages, the same reply), with
  token counts and no cost (the instance's time is what is charged), streamed as server-sent events
  with ``"stream": true``;
- anything else: the service's own 404 (``{"detail": "Not Found"}``, as vLLM's server answers).

Pure: the route reads the instance from the ledger's events and sends what this returns.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ledger.resources import Resource

reply_words = ("the", "instance", "runs", "your", "model", "on", "its", "own", "gpu", "and", "answers", "here")
reply_words_max = 24


@dataclass(frozen=True, slots=True)
class ServiceAnswer:
    status_code: int
    content_type: str
    body: bytes = b""
    chunks: tuple[bytes, ...] = ()  # a streamed answer's server-sent events, in order


def _json(status_code: int, body: Any) -> ServiceAnswer:
    return ServiceAnswer(status_code, "application/json", json.dumps(body, separators=(",", ":")).encode())


def served_model(resource: Resource) -> str:
    return resource.image or f"{resource.resource_class}-deploy"


def _reply(messages: list[Any]) -> str:
    seed = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).digest()
    count = 4 + seed[0] % (reply_words_max - 4)
    return " ".join(reply_words[(seed[i % len(seed)] + i) % len(reply_words)] for i in range(count))


def _chat(resource: Resource, body: bytes, created: int) -> ServiceAnswer:
    try:
        fields = json.loads(body or b"{}")
    except ValueError:
        return _json(400, {"object": "error", "message": "The body is not JSON.", "code": 400})
    messages = fields.get("messages") if isinstance(fields, dict) else None
    if not isinstance(messages, list) or not messages:
        return _json(400, {"object": "error", "message": "'messages' must be a non-empty list.", "code": 400})
    text = _reply(messages)
    prompt_tokens = sum(len(json.dumps(message).split()) for message in messages)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split())}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    completion_id = f"chatcmpl-{resource.resource_id}-{created}"
    model = served_model(resource)
    if fields.get("stream") is True:
        events = []
        for index, word in enumerate(text.split()):
            delta = {"role": "assistant", "content": word} if index == 0 else {"content": " " + word}
            chunk = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
            events.append({**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        last = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
        events.append({**last, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage})
        chunks = (*(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events), b"data: [DONE]\n\n")
        return ServiceAnswer(200, "text/event-stream", chunks=chunks)
    return _json(
        200,
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage,
        },
    )


def answer(resource: Resource, method: str, path: str, body: bytes, created: int) -> ServiceAnswer:
    """The simulated service's answer to ``method path`` (``path`` without its leading slash)."""
    route = path.strip("/")
    if method == "GET" and route in ("", "health"):
        return _json(
            200,
            {
                "status": "ok",
                "instance_id": resource.resource_id,
                "gpu_slug": resource.resource_class,
                "num_gpus": resource.quantity,
                "model": served_model(resource),
            },
        )
    if method == "GET" and route == "v1/models":
        model = {"id": served_model(resource), "object": "model", "owned_by": "gpu-instance", "created": created}
        return _json(200, {"object": "list", "data": [model]})
    if method == "POST" and route == "v1/chat/completions":
        return _chat(resource, body, created)
    return _json(404, {"detail": "Not Found"})
