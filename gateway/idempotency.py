"""Idempotency-Key on every POST route, by construction.

Every POST is idempotent unless its handler says why not in ``opt["idempotent"]`` (a sentence, such
as token creation's: its answer holds a secret that must never be stored). ``IdempotencyMiddleware``
applies the rule to every route, so no handler can forget it: the same key with the same body
returns the first answer and charges once; the same key with a different body is a 409.

Answers are ``IdempotentReplyRecorded`` events on ``tollgate.idempotency``, folded by every gateway
instance and kept for ``idempotency_window_s`` (24 hours). Ids derived from the key (the request id,
hence the hold id; grant, refund and adjustment ids) make the ledger itself refuse a second charge,
even when two instances race on one key before either has recorded its answer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
from typing import Any

import msgspec
from litestar.connection import ASGIConnection
from litestar.middleware import ASGIMiddleware
from litestar.types import (
    ASGIApp,
    HTTPRequestEvent,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)

from eventlog import Outgoing, RecordTooLarge, topics
from gateway.auth import principal_async
from gateway.core import GatewayCore
from gateway.errors import ApiError, send_error
from projections.replies import Reply
from schemas.codec import encode
from schemas.events import IdempotencyKeyClaimed, IdempotentReplyRecorded
from schemas.ids import new_id
from schemas.moments import utc_now

logger = logging.getLogger(__name__)
idempotency_key_chars_max = 255
retry_wait_margin_s = 5.0  # a retry waits for the attempt running here at most its wait, and this
admin_scope = "admin"  # the key scope of the platform admin token (an organization's keys use its id)
# Response headers a replay repeats (the charge and the model are part of the answer).
replayed_headers = ("x-credits-used", "x-model-used", "content-type", "location")


def key_hash(scope: str, key: str) -> str:
    return hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()


def fingerprint(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).hexdigest()


def _is_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def _claim(core: GatewayCore, scope: str, key_sha256: str, body_print: str, request_id: str) -> None:
    """Say on the log that a request with this key began, before it runs: a retry on any instance then
    knows to look for its outcome rather than run it again, and refuses another body (409)."""
    event = IdempotencyKeyClaimed(
        event_id=new_id("evt"),
        occurred_at=utc_now(),
        org_id=scope,
        key_sha256=key_sha256,
        fingerprint=body_print,
        request_id=request_id,
    )
    core.idempotency.apply(event)
    core.send([Outgoing(topics.IDEMPOTENCY, scope, encode(event))])


def record_reply(
    core: GatewayCore, scope: str, key_sha256: str, body_print: str, status: int, body: bytes, headers: dict[str, str]
) -> None:
    """Keep the first answer to an Idempotency-Key for every gateway instance to replay."""
    json_body = _is_json(body)
    event = IdempotentReplyRecorded(
        event_id=new_id("evt"),
        occurred_at=utc_now(),
        org_id=scope,
        key_sha256=key_sha256,
        fingerprint=body_print,
        status_code=status,
        body=msgspec.Raw(body if json_body else b"null"),
        headers=headers,
        body_base64="" if json_body else base64.b64encode(body).decode(),
    )
    core.idempotency.apply(event)  # this instance answers replays at once; others via the log
    try:
        core.send([Outgoing(topics.IDEMPOTENCY, scope, encode(event))])
    except RecordTooLarge as error:  # an answer near the record limit (an upstream's): other instances
        # answer a retry from the job's own events on the log, as when a reply was lost
        logger.warning("an idempotent reply was not recorded on the log: %s", error)


class IdempotencyMiddleware(ASGIMiddleware):
    """Runs after routing (Litestar builds a route's middleware stack per handler), before the
    guard: it authenticates the caller itself to scope the key (the guard then reuses that)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        handler = scope.get("route_handler")
        key = _header(scope, b"idempotency-key")
        if scope["type"] != "http" or scope.get("method") != "POST" or handler is None or key is None:
            await next_app(scope, receive, send)
            return
        if handler.opt.get("idempotent", True) is not True:
            await next_app(scope, receive, send)  # the route says why it cannot be (its opt)
            return
        connection: ASGIConnection[Any, Any, Any, Any] = ASGIConnection(scope)
        core: GatewayCore = connection.app.state.core
        if not key.strip() or len(key) > idempotency_key_chars_max:
            error = ApiError(
                400,
                f"Idempotency-Key must be 1 to {idempotency_key_chars_max} characters.",
                code="invalid_idempotency_key",
                param="Idempotency-Key",
            )
            await send_error(send, error, _request_id(scope))
            return
        try:
            caller = await principal_async(connection)
        except ApiError:
            await next_app(scope, receive, send)  # not authenticated: the guard answers 401
            return
        hashed = key_hash(admin_scope if caller is None else caller.org_id, key)
        derived = hashed[:32]
        state = scope.setdefault("state", {})
        state["request_id"] = f"req_{derived}"  # a replay carries the first answer's id
        state["idempotency_derived"] = derived
        body = await _read_body(receive, core.settings.request_body_bytes_max)
        if body is None:
            error = ApiError(413, "Request body too large.", code="request_too_large")
            await send_error(send, error, state["request_id"])
            return
        body_print = fingerprint("POST", scope["path"], _without_boundary(body, _header(scope, b"content-type")))
        scope_id = admin_scope if caller is None else caller.org_id
        reply = core.idempotency.get(hashed, utc_now())
        if reply is not None:
            await _replay(send, reply, body_print)
            return
        claim = core.idempotency.claim(hashed, utc_now())
        if claim is not None and claim.fingerprint != body_print:
            await _replay(send, Reply(claim.fingerprint, 0, b"", {}, claim.claimed_at), body_print)  # a 409
            return
        running = core.idempotency.in_flight.get(hashed)
        if running is not None:
            # The first attempt runs on this instance: wait for its answer and replay it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(running.wait(), core.settings.request_wait_s_max + retry_wait_margin_s)
            reply = core.idempotency.get(hashed, utc_now())
            if reply is not None:
                await _replay(send, reply, body_print)
                return
        # A retry (an earlier attempt began here or on another instance, and left no answer to replay:
        # a crash, a timeout, a stream) learns that attempt's outcome from the log instead of running
        # the request again (gateway/metering.py).
        state["idempotency_retry"] = claim is not None or running is not None
        if claim is None:
            _claim(core, scope_id, hashed, body_print, state["request_id"])
        finished = asyncio.Event()
        core.idempotency.in_flight.setdefault(hashed, finished)
        recorder = _Recorder(send)
        try:
            await next_app(scope, _replay_body(body, receive), recorder.send)
        finally:
            if recorder.recordable(bool(state.get("idempotent_outcome"))):
                kept = {k: v for k, v in recorder.headers.items() if k in replayed_headers}
                record_reply(core, scope_id, hashed, body_print, recorder.status, recorder.body, kept)
            if core.idempotency.in_flight.get(hashed) is finished:
                del core.idempotency.in_flight[hashed]
            finished.set()


async def _replay(send: Send, reply: Reply, body_print: str) -> None:
    if reply.fingerprint != body_print:
        error = ApiError(
            409,
            "This Idempotency-Key was used with a different request; use a new key.",
            code="idempotency_key_reused",
            param="Idempotency-Key",
        )
        await send_error(send, error, None)
        return
    headers = [(k.encode(), v.encode()) for k, v in reply.headers.items()]
    headers += [(b"idempotent-replayed", b"true"), (b"content-length", str(len(reply.body)).encode())]
    start: HTTPResponseStartEvent = {"type": "http.response.start", "status": reply.status_code, "headers": headers}
    await send(start)
    body: HTTPResponseBodyEvent = {"type": "http.response.body", "body": reply.body, "more_body": False}
    await send(body)


class _Recorder:
    """Passes the response on and keeps a copy of a whole, non-streamed answer: a 2xx, or an error
    that is the request's outcome (``ApiError.outcome``: a 402, a failed or cancelled job)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.chunks = 0
        self.streamed = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            self.chunks += 1
            self.streamed = self.streamed or bool(message.get("more_body"))
            if not self.streamed:
                self.body += message.get("body", b"")
        await self._send(message)

    def recordable(self, outcome: bool) -> bool:
        streamed = self.streamed or self.headers.get("content-type", "").startswith("text/event-stream")
        return (200 <= self.status < 300 or (outcome and self.status >= 400)) and not streamed


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _without_boundary(body: bytes, content_type: str | None) -> bytes:
    """A multipart body with its boundary replaced by a fixed one: a client that retries the same
    form picks a new random boundary, and must still be recognised as sending the same request."""
    if not content_type or not content_type.lower().startswith("multipart/"):
        return body
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.strip().partition("=")
        if name.lower() == "boundary" and value:
            return body.replace(b"--" + value.strip('"').encode("latin-1"), b"--tollgate-boundary")
    return body


def _request_id(scope: Scope) -> str | None:
    request_id = scope.get("state", {}).get("request_id")
    return str(request_id) if request_id else None


async def _read_body(receive: Receive, body_bytes_max: int) -> bytes | None:
    """The whole request body, or None past ``body_bytes_max``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > body_bytes_max:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay_body(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the handler the body already read, then what the client sends next
    (a streamed answer listens there for the client going away)."""
    sent = False

    async def replayed() -> ReceiveMessage:
        nonlocal sent
        if not sent:
            sent = True
            request: HTTPRequestEvent = {"type": "http.request", "body": body, "more_body": False}
            return request
        return await receive()

    return replayed
