"""``/v1/gpu/connect/{instance_id}/{path}`` (EmpirioLabs' "Connect to a running GPU"): a call to the
service on the caller's running GPU Cloud instance, through the API and its key. In Tollgate the
instance is simulated (``gateway/gpu_connect.py`` says what its service answers); the call itself is
not metered (the instance is billed by the second while it runs).

Refusals, in the OpenAI envelope: another organization's, an unknown or a destroyed instance is a 404
(``instance_not_found``, as on ``/v1/gpu/instances``); a stopped one is the document's 502 ("not
reachable right now", ``instance_not_running``), naming how to start it again. GET needs ``user:read``;
POST, PUT, PATCH and DELETE need ``user:write``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, get, route
from litestar.params import FromPath
from litestar.response import Stream

from gateway import gpu_connect
from gateway.auth import authorize
from gateway.core import Core, GatewayCore
from gateway.errors import ApiError
from gateway.http import read_body
from ledger.resources import Resource, destroyed
from schemas.moments import utc_now

CONNECT = "/v1/gpu/connect/{instance_id:str}/{path:path}"


def _running_instance(core: GatewayCore, org_id: str, instance_id: str) -> Resource:
    resource = core.balances.get(org_id).resources.get(instance_id)
    if resource is None or resource.kind != "gpu" or resource.ended == destroyed:
        raise ApiError(404, f"No GPU instance '{instance_id}'.", code="instance_not_found", param="instance_id")
    if not resource.running:
        raise ApiError(
            502,
            f"The GPU instance '{instance_id}' is not reachable right now: it is stopped. Start it with "
            f"POST /v1/gpu/instances/{instance_id}/start.",
            code="instance_not_running",
            param="instance_id",
        )
    return resource


async def _connect(
    request: Request[Any, Any, Any], core: GatewayCore, instance_id: str, path: str, scope: str
) -> Response[bytes] | Stream:
    token = authorize(request, scope)
    body = await read_body(request, core.settings.request_body_bytes_max)
    resource = _running_instance(core, token.org_id, instance_id)
    served = gpu_connect.answer(resource, request.method, path, body, int(utc_now().timestamp()))
    headers = {"x-gpu-instance-id": resource.resource_id}
    if served.chunks:

        async def events() -> AsyncIterator[bytes]:
            for chunk in served.chunks:
                yield chunk

        return Stream(events(), media_type=served.content_type, headers={**headers, "cache-control": "no-cache"})
    return Response(
        content=served.body, status_code=served.status_code, media_type=served.content_type, headers=headers
    )


@get(CONNECT, operation_id="connectGpuInstance", opt={"scope": "user:read"})
async def connect_read(
    request: Request[Any, Any, Any], core: Core, instance_id: FromPath[str], path: FromPath[str]
) -> Response[bytes] | Stream:
    return await _connect(request, core, instance_id, path, "user:read")


@route(
    CONNECT,
    http_method=["POST", "PUT", "PATCH", "DELETE"],
    operation_id=lambda handler, method, path: f"connectGpuInstance{method.capitalize()}",
    opt={"scope": "user:write", "rate": "requests"},
    status_code=200,
)
async def connect_write(
    request: Request[Any, Any, Any], core: Core, instance_id: FromPath[str], path: FromPath[str]
) -> Response[bytes] | Stream:
    return await _connect(request, core, instance_id, path, "user:write")


route_handlers = [connect_read, connect_write]
