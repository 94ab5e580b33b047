"""The Litestar application, assembled: routes, the one guard (scopes and rate limits), middleware
(request ids, the per-IP net, idempotency), the exception map and the core as a dependency."""

from __future__ import annotations

from functools import partial
from typing import Any

from litestar import Litestar, Router
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import ASGIMiddleware, DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

from eventlog import Outgoing
from eventlog.logs import bind_request
from gateway import deferred, observe
from gateway.auth import scope_guard
from gateway.core import GatewayCore
from gateway.errors import ApiError, exception_handlers, send_error
from gateway.idempotency import IdempotencyMiddleware
from gateway.openapi import DocumentPlugin
from gateway.ratelimit import IpLimiter, RateLimitMiddleware
from gateway.routes import route_handlers
from gateway.routes.batches import resume_batches
from gateway.surface import Surface
from schemas.ids import random_hex


def provide_core(state: State) -> GatewayCore:
    """The gateway's core for a handler's ``core`` parameter."""
    core: GatewayCore = state.core
    return core


# A request line and headers past these are refused here, in the OpenAI envelope with an x-request-id.
# The HTTP server has its own, higher limits (granian: a URI of 64 KiB, 100 headers), past which it
# answers 414, 431 or 400 itself with an empty body, before any of this code runs.
uri_bytes_max = 8 * 1024
header_bytes_max = 32 * 1024
# Headers a browser page may read from a cross-origin answer.
exposed_headers = [
    "x-request-id",
    "x-credits-used",
    "x-model-used",
    "x-fallback-from",
    "x-fallback-depth",
    "idempotent-replayed",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "x-ratelimit-limit-jobs",
    "x-ratelimit-remaining-jobs",
    "x-ratelimit-reset-jobs",
]


def _oversized(scope: Scope) -> ApiError | None:
    uri = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    if uri > uri_bytes_max:
        return ApiError(414, f"The request URI is longer than {uri_bytes_max} bytes.", code="uri_too_long")
    headers = sum(len(name) + len(value) for name, value in scope.get("headers", []))
    if headers > header_bytes_max:
        return ApiError(
            431, f"The request headers add up to more than {header_bytes_max} bytes.", code="headers_too_large"
        )
    return None


class RequestIdMiddleware(ASGIMiddleware):
    """Every response, errors included, carries the request's id in ``x-request-id``; a request too
    large in its URI or headers is answered here."""

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        request_id = scope.setdefault("state", {})["request_id"] = f"req_{random_hex()}"
        bind_request(request_id)  # the request's log lines carry it (eventlog/logs.py)
        oversized = _oversized(scope)
        if oversized is not None:
            await send_error(send, oversized, request_id)
            return

        core: GatewayCore | None = getattr(getattr(scope.get("app"), "state", None), "core", None)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                _send_deferred(core, deferred.take())
                # Read at send time: an Idempotency-Key replaces the id with one derived from the key.
                current = str(scope["state"]["request_id"])
                headers: Any = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                headers.append((b"x-request-id", current.encode()))
                message["headers"] = headers
            await send(message)

        opened = deferred.open_request()
        try:
            await next_app(scope, receive, send_with_id)
        finally:
            _send_deferred(core, deferred.close_request(opened))


def _send_deferred(core: GatewayCore | None, records: list[Outgoing]) -> None:
    """What a request deferred and no append took (gateway/deferred.py): its admission, when it
    placed no hold (a 429, a refusal, a read)."""
    if records and core is not None:
        core.send(records)


def ending_at_content_length(scope: Scope, receive: Receive) -> Receive:
    """``receive``, where the message that completes a request's announced ``content-length`` says it
    is the last. Granian hands a body in two messages, its bytes (``more_body``) and then an empty
    end, so a reader waited for the event loop twice: about 3 ms more per request at 64 clients. The
    end the server still holds is what a later ``receive`` gets (a disconnect listener skips it)."""
    if scope["type"] != "http":
        return receive
    length = next((value for name, value in scope["headers"] if name == b"content-length"), None)
    if length is None or not length.isdigit():
        return receive  # chunked (or a length the server refuses): the server's own end
    left = int(length)

    async def receive_whole() -> ReceiveMessage:
        nonlocal left
        message = await receive()
        if message["type"] == "http.request" and message.get("more_body"):
            left -= len(message.get("body", b""))
            if left <= 0:
                message["more_body"] = False
        return message

    return receive_whole


class TollgateApp(Litestar):
    """The app, with the surface's aliases resolved before routing and each route family's error
    envelope (gateway/surface.py)."""

    surface: Surface

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.surface(scope, ending_at_content_length(scope, receive), send, super().__call__)


api_description = (
    "Every route of the OpenAI-compatible surface is listed once, under /v1; each is also served under "
    "/openai/v1 and at the server root (/chat/completions). Every endpoint accepts 'Authorization: Bearer "
    "<key>' or 'x-api-key: <key>'."
)


def create_app(core: GatewayCore) -> Litestar:
    settings = core.settings
    ip_limiter = IpLimiter(settings.ip_requests_per_window_max, settings.ip_window_s, settings.ips_tracked_max)
    observe.register(core, ip_limiter)  # the gateway's series, read when scraped (gateway/observe.py)
    app = TollgateApp(
        route_handlers=route_handlers,
        dependencies={"core": Provide(provide_core, sync_to_thread=False)},
        guards=[scope_guard],  # every route's declared scope and rate limit (gateway/auth.py)
        # The OpenAPI document is public, and declared so like every other route.
        openapi_config=OpenAPIConfig(
            title="Tollgate",
            version="0.2.0",
            description=api_description,
            openapi_router=Router("/schema", route_handlers=[], opt={"scope": "public", "rate": "none"}),
            render_plugins=[DocumentPlugin()],  # the generated document, completed (gateway/openapi.py)
        ),
        exception_handlers=exception_handlers,  # type: ignore[arg-type]
        # A browser's preflight (OPTIONS with Origin) is answered before routing, with no credential.
        cors_config=CORSConfig(allow_origins=list(settings.cors_allow_origins), expose_headers=exposed_headers),
        middleware=[
            RequestIdMiddleware(),
            DefineMiddleware(RateLimitMiddleware, ip_limiter=ip_limiter),
            IdempotencyMiddleware(),
        ],
        state=State({"core": core}),
        on_startup=[partial(resume_batches, core)],  # batches this instance ran before a restart
        before_send=[observe.HttpMetrics(core.metrics)],  # every answer counted by route and status
        request_max_body_size=settings.request_body_bytes_max,
        debug=False,
        # Logging is the process's (tollgate/cli.py, TOLLGATE_LOG_LEVEL): Litestar's default config would
        # set the root logger to INFO, so httpx and kafka-python would log every request. Unexpected
        # errors are logged by the exception map (gateway/errors.py).
        logging_config=None,
    )
    app.surface = Surface(
        (route.path, handler.opt)
        for route in app.routes
        for handler in getattr(route, "route_handlers", [])
        if handler.opt.get("scope") is not None  # Litestar's own OPTIONS handlers declare nothing
    )
    return app
