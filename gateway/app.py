"""The Litestar application, assembled: routes, the one guard (scopes and rate limits), middleware
(request ids, the per-IP net, idempotency), the exception map and the core as a dependency."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import ASGIMiddleware, DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth import scope_guard
from gateway.core import GatewayCore
from gateway.errors import exception_handlers
from gateway.idempotency import IdempotencyMiddleware
from gateway.openapi import DocumentPlugin
from gateway.ratelimit import IpLimiter, RateLimitMiddleware
from gateway.routes import route_handlers
from gateway.surface import Surface


def provide_core(state: State) -> GatewayCore:
    """The gateway's core for a handler's ``core`` parameter."""
    core: GatewayCore = state.core
    return core


class RequestIdMiddleware(ASGIMiddleware):
    """Every response, errors included, carries the request's id in ``x-request-id``."""

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        scope.setdefault("state", {})["request_id"] = f"req_{uuid.uuid4().hex}"

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Read at send time: an Idempotency-Key replaces the id with one derived from the key.
                current = str(scope["state"]["request_id"])
                headers: Any = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                headers.append((b"x-request-id", current.encode()))
                message["headers"] = headers
            await send(message)

        await next_app(scope, receive, send_with_id)


class TollgateApp(Litestar):
    """The app, with the surface's aliases resolved before routing and each route family's error
    envelope (gateway/surface.py)."""

    surface: Surface

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.surface(scope, receive, send, super().__call__)


api_description = (
    "Every route of the OpenAI-compatible surface is listed once, under /v1; each is also served under "
    "/openai/v1 and at the server root (/chat/completions). Every endpoint accepts 'Authorization: Bearer "
    "<key>' or 'x-api-key: <key>'."
)


def create_app(core: GatewayCore) -> Litestar:
    settings = core.settings
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
        middleware=[
            RequestIdMiddleware(),
            DefineMiddleware(
                RateLimitMiddleware,
                ip_limiter=IpLimiter(
                    settings.ip_requests_per_window_max, settings.ip_window_s, settings.ips_tracked_max
                ),
            ),
            IdempotencyMiddleware(),
        ],
        state=State({"core": core}),
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
