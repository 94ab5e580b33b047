"""Liveness (with the figures an operator looks at first), readiness and the Prometheus series."""

from __future__ import annotations

from litestar import Response, get

from eventlog.metrics import exposition_content_type
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


@get("/livez", operation_id="live", opt={"scope": "public", "rate": "none"}, include_in_schema=False)
async def live(core: Core) -> Response[bytes]:
    """200 while every role of this process has turned its loops lately (a stuck one: 503)."""
    ok = core.metrics.live()
    return json_response({"status": "ok" if ok else "unavailable", "roles": core.metrics.roles()}, 200 if ok else 503)


@get("/readyz", operation_id="ready", opt={"scope": "public", "rate": "none"}, include_in_schema=False)
async def ready(core: Core) -> Response[bytes]:
    """200 while every role of this process is live and caught up with the log within the bound
    (``TOLLGATE_READY_LAG_RECORDS_MAX``); 503 otherwise, with each role's loops and lag."""
    ok = core.metrics.ready()
    return json_response({"status": "ok" if ok else "unavailable", "roles": core.metrics.roles()}, 200 if ok else 503)


@get("/metrics", operation_id="metrics", opt={"scope": "public", "rate": "none"}, include_in_schema=False)
async def metrics(core: Core) -> Response[bytes]:
    """Every series of this process in Prometheus' text format (all roles, in ``tollgate dev``)."""
    return Response(content=core.metrics.exposition(), media_type=exposition_content_type)


route_handlers = [health, live, ready, metrics]
