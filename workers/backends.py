"""Inference backends. A backend runs one job and returns its result with the usage it measured.

- ``SimulatedChatBackend``: deterministic; token counts derive from the input; optional latency.
- ``UpstreamChatBackend``: forwards to any OpenAI-compatible server (vLLM, SGLang, llama.cpp) and
  meters the usage that server reports. A response without usage fails the job: we never guess.
"""

from __future__ import annotations

import abc
import hashlib
import re
import time
from typing import Any

import httpx
import msgspec

from schemas.units import Units

_token_pattern = re.compile(r"\w+|[^\w\s]")
_vocabulary = (
    "the",
    "ledger",
    "holds",
    "credits",
    "for",
    "every",
    "request",
    "and",
    "charges",
    "exactly",
    "once",
    "after",
    "the",
    "worker",
    "measures",
    "usage",
    "tokens",
    "flow",
    "through",
    "kafka",
    "partitions",
    "while",
    "projections",
    "rebuild",
    "balances",
    "from",
    "events",
)
tokens_per_message_overhead = 4
tokens_per_reply_overhead = 2
sim_reply_tokens_max = 64


class BackendError(Exception):
    """A job that cannot complete. ``retryable`` says whether another attempt could succeed."""

    def __init__(self, code: str, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


class JobOutput(msgspec.Struct, frozen=True, kw_only=True):
    result: dict[str, Any]
    units: Units


def message_text(message: dict[str, Any]) -> str:
    """The text of a chat message whose content is a string or a list of content parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def count_sim_tokens(text: str) -> int:
    return len(_token_pattern.findall(text))


class ChatBackend(abc.ABC):
    @abc.abstractmethod
    def run(self, job_id: str, model: str, payload: dict[str, Any]) -> JobOutput: ...


class SimulatedChatBackend(ChatBackend):
    def __init__(self, latency_ms: int = 0) -> None:
        self._latency_s = latency_ms / 1000

    def run(self, job_id: str, model: str, payload: dict[str, Any]) -> JobOutput:
        messages = payload.get("messages") or []
        prompt_tokens = tokens_per_reply_overhead + sum(
            count_sim_tokens(message_text(m)) + tokens_per_message_overhead for m in messages
        )
        seed = hashlib.sha256(msgspec.json.encode(messages)).digest()
        natural_length = 8 + seed[0] % (sim_reply_tokens_max - 8)
        limit = payload.get("max_completion_tokens") or payload.get("max_tokens") or natural_length
        completion_tokens = min(natural_length, int(limit))
        words = [_vocabulary[(seed[i % len(seed)] + i) % len(_vocabulary)] for i in range(completion_tokens)]
        if self._latency_s:
            time.sleep(self._latency_s)
        result = {
            "object": "chat.completion",
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(words)},
                    "finish_reason": "length" if completion_tokens < natural_length else "stop",
                }
            ],
        }
        return JobOutput(result=result, units=Units(input_tokens=prompt_tokens, output_tokens=completion_tokens))


class UpstreamChatBackend(ChatBackend):
    def __init__(self, base_url: str, api_key: str = "", timeout_s: float = 120.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)

    def run(self, job_id: str, model: str, payload: dict[str, Any]) -> JobOutput:
        body = {**payload, "model": model, "stream": False}
        try:
            response = self._client.post("/v1/chat/completions", json=body)
        except httpx.HTTPError as error:
            raise BackendError("upstream_unreachable", f"upstream request failed: {error}", retryable=True) from error
        if response.status_code >= 500:
            raise BackendError("upstream_error", f"upstream answered {response.status_code}", retryable=True)
        if response.status_code >= 400:
            raise BackendError("upstream_rejected", f"upstream answered {response.status_code}: {response.text[:500]}")
        data = response.json()
        usage = data.pop("usage", None)
        if not isinstance(usage, dict) or "prompt_tokens" not in usage or "completion_tokens" not in usage:
            raise BackendError("upstream_no_usage", "upstream response has no usage; refusing to guess a charge")
        cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        prompt = int(usage["prompt_tokens"])
        units = Units(
            input_tokens=prompt - cached, cached_input_tokens=cached, output_tokens=int(usage["completion_tokens"])
        )
        return JobOutput(result=data, units=units)
