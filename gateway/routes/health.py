"""Liveness, with the figures an operator looks at first."""

from __future__ import annotations

from litestar import Response, get

from gateway.core import Core
from gateway.http import json_response


@get("/healthz", operation_id="health", opt={"scope": "public", "rate": "none"}, include_in_schema=False)
async def health(core: Core) -> Response[bytes]:
    return json_response(
        {
            "status": "ok",
            "inflight": core.metering.inflight,
            "waiting": len(core.waiters),
            "ratelimit": core.limiter.stats(),
        }
    )


route_handlers = [health]
