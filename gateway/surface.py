"""The addresses of the API surface, and the error envelope each family answers in.

Every route of the OpenAI-compatible surface is registered once, under ``/v1``, and also served under
``/openai/v1`` (Casola's ``base_url``) and at the server root (an SDK whose ``base_url`` is the server
root calls ``/chat/completions``: EmpirioLabs). The path is rewritten to its ``/v1`` form before
routing, so a route added later gets both aliases without declaring anything, and everything that
reads the path afterwards (rate limits, Idempotency-Key fingerprints, usage rows) sees one name per
operation. The surface is every context under ``/v1`` except the platform's own (organizations,
price books, audit), which stay at ``/v1`` only; the OpenAPI document lists each route once, at
``/v1``.

Routes that speak Anthropic's API declare ``opt={"errors": "anthropic"}``: every error they answer,
whoever raised it (the per-IP net, the guard, the idempotency middleware, the handler), is turned
from the OpenAI envelope into Anthropic's (``{"type": "error", "error": {"type", "message"}}``) with
Anthropic's statuses, here at the edge rather than in each of those places.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from litestar.types import HTTPResponseBodyEvent, Receive, Scope, Send

openai_prefix = "/openai"
# Contexts under /v1 that are the platform's own API, not the OpenAI-compatible surface.
platform_contexts = frozenset({"organizations", "price-books", "audit"})
error_body_bytes_max = 64 * 1024  # an error body to translate; larger answers pass unchanged

# Anthropic's error type for each status (docs.anthropic.com "Errors"); 503 is their 529.
_anthropic_types = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_anthropic_statuses = {503: 529}


def surface_contexts(paths: Iterable[str]) -> frozenset[str]:
    """The first path segments after ``/v1`` of the routes that make up the OpenAI-compatible surface."""
    contexts = set()
    for path in paths:
        if path.startswith("/v1/"):
            context = path[len("/v1/") :].split("/", 1)[0]
            if context and "{" not in context and context not in platform_contexts:
                contexts.add(context)
    return frozenset(contexts)


def canonical_path(path: str, contexts: frozenset[str]) -> str | None:
    """The ``/v1`` path an alias stands for (``/openai/v1/x`` and ``/x`` for ``/v1/x``); None when
    ``path`` is no alias of a surface route."""
    if path.startswith(openai_prefix + "/v1/"):
        rest = path[len(openai_prefix) + len("/v1") :]
    elif path.startswith("/v1/"):
        return None
    else:
        rest = path
    context = rest[1:].split("/", 1)[0]
    return "/v1" + rest if context in contexts else None


def anthropic_type(status: int) -> str:
    return _anthropic_types.get(status, "api_error")


def anthropic_error(status: int, message: str, code: str | None = None, request_id: str = "") -> dict[str, Any]:
    """Anthropic's error envelope; ``code`` is Tollgate's reason (insufficient_credits, rate_limit...)."""
    error: dict[str, Any] = {"type": anthropic_type(status), "message": message}
    if code:
        error["code"] = code
    body: dict[str, Any] = {"type": "error", "error": error}
    if request_id:
        body["request_id"] = request_id
    return body


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


class _AnthropicErrors:
    """A ``send`` that rewrites a JSON error answer into Anthropic's envelope and status."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._start: Any = None
        self._body = b""

    async def __call__(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            is_json = _header(headers, b"content-type").startswith("application/json")
            if message["status"] >= 400 and is_json:
                self._start = message  # held until the body is whole
                return
        elif message["type"] == "http.response.body" and self._start is not None:
            self._body += message.get("body", b"")
            if message.get("more_body") and len(self._body) <= error_body_bytes_max:
                return
            await self._flush(bool(message.get("more_body")))
            return
        await self._send(message)

    async def _flush(self, more_body: bool) -> None:
        start, self._start = self._start, None
        assert start is not None
        status = int(start["status"])
        headers = list(start.get("headers", []))
        body = self._body
        try:
            given = json.loads(body)
            error = given["error"]
            message = str(error["message"])
        except (ValueError, KeyError, TypeError):
            given = None
        if not more_body and isinstance(given, dict) and "type" not in given:
            status = _anthropic_statuses.get(status, status)
            code = error.get("code") if isinstance(error, dict) else None
            request_id = _header(headers, b"x-request-id")
            body = json.dumps(anthropic_error(status, message, code, request_id)).encode()
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
        answer: Any = {**start, "status": status, "headers": headers}
        await self._send(answer)
        await self._send(HTTPResponseBodyEvent(type="http.response.body", body=body, more_body=more_body))


class Surface:
    """Resolves aliases before routing, and picks each route family's error envelope."""

    def __init__(self, routes: Iterable[tuple[str, dict[str, Any]]]) -> None:
        listed = list(routes)
        self.contexts = surface_contexts(path for path, _ in listed)
        self.anthropic_paths = frozenset(path for path, opt in listed if opt.get("errors") == "anthropic")

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, app: Callable[[Scope, Receive, Send], Awaitable[None]]
    ) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            canonical = canonical_path(path, self.contexts)
            if canonical is not None:
                scope["path"] = canonical
                raw = scope.get("raw_path") or path.encode()
                # raw_path keeps the client's percent-encoding: the same prefix change, on the bytes.
                prefix = (openai_prefix + "/v1/").encode()
                scope["raw_path"] = raw[len(openai_prefix) :] if raw.startswith(prefix) else b"/v1" + raw
                scope.setdefault("state", {})["path_as_sent"] = path
            if scope["path"] in self.anthropic_paths:
                send = _AnthropicErrors(send)
        await app(scope, receive, send)
