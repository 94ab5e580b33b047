"""``GET /v1/media/{org_id}/{name}``: a result kept as a URL (``response_format=url``), served with
its content type to whoever holds the signed URL, without an Authorization header (the signature is
the authority: ``gateway/media_urls.py``). An expired, altered or unknown URL is refused in the OpenAI
envelope (404 ``media_not_found``, as for media that was never there: a URL tells nothing about keys
it does not sign)."""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

from litestar import Request, Response, get
from litestar.params import FromPath

from gateway.core import Core, GatewayCore
from gateway.errors import ApiError

MEDIA = "/v1/media"


@get(f"{MEDIA}/{{org_id:str}}/{{name:str}}", operation_id="getMedia", opt={"scope": "public", "rate": "none"})
async def media(
    request: Request[Any, Any, Any], core: Core, org_id: FromPath[str], name: FromPath[str]
) -> Response[bytes]:
    """A stored result's bytes, while its signed URL is valid (about an hour)."""
    expires = str(request.query_params.get("expires") or "")
    signature = str(request.query_params.get("signature") or "")
    found = await asyncio.to_thread(core.media.get, org_id, name, expires, signature)
    await asyncio.to_thread(core.media.sweep)  # reads sweep too: an instance that only serves still cleans up
    if found is None:
        raise ApiError(
            404,
            "No media at this URL: it expired, or it is not a URL this gateway signed. Ask for the result again.",
            code="media_not_found",
        )
    headers = {"cache-control": "private, max-age=3600", "x-content-type-options": "nosniff"}
    return Response(content=found.data, media_type=found.content_type, headers=headers)


async def media_url(
    request: Request[Any, Any, Any], core: GatewayCore, org_id: str, data: bytes, content_type: str, seed: str = ""
) -> str:
    """Keep ``data`` and answer its signed URL, absolute on the host the request came to (as the Fal
    routes build theirs). ``seed``: a finished job's result read again (``MediaStore.put``)."""
    path = await asyncio.to_thread(core.media.put, org_id, data, content_type, seed)
    return str(request.base_url).rstrip("/") + path


async def linked_url(
    request: Request[Any, Any, Any], core: GatewayCore, org_id: str, url: Any, content_type: str = "", seed: str = ""
) -> Any:
    """A ``data:`` URL (base64) as a signed URL of the same bytes; any other value as it is."""
    if not isinstance(url, str) or not url.startswith("data:"):
        return url
    header, _, encoded = url.partition(",")
    if not header.endswith(";base64"):
        return url
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return url
    given_type = header.removeprefix("data:").removesuffix(";base64")
    return await media_url(request, core, org_id, data, given_type or content_type, seed)


async def linked(
    request: Request[Any, Any, Any],
    core: GatewayCore,
    org_id: str,
    body: dict[str, Any],
    inline_as_url: bool,
    content_type: str = "image/png",
    seed: str = "",
) -> dict[str, Any]:
    """``body`` with each ``data[i]`` as a signed URL: a ``data:`` URL always (a real link is what the
    documents show), ``b64_json`` when the request asked for ``url`` (``inline_as_url``). ``seed``: a
    finished job's id, when its result is read again."""
    items = body.get("data")
    if not isinstance(items, list):
        return body
    shaped: list[Any] = []
    for index, item in enumerate(items):
        item_seed = f"{seed}/{index}" if seed else ""
        if isinstance(item, dict) and inline_as_url and isinstance(item.get("b64_json"), str):
            kept = {key: value for key, value in item.items() if key != "b64_json"}
            data = base64.b64decode(item["b64_json"])
            given_type = str(item.get("content_type") or content_type)
            kept["url"] = await media_url(request, core, org_id, data, given_type, item_seed)
            item = kept
        elif isinstance(item, dict) and "url" in item:
            item = {**item, "url": await linked_url(request, core, org_id, item["url"], content_type, item_seed)}
        shaped.append(item)
    return {**body, "data": shaped}


route_handlers = [media]
