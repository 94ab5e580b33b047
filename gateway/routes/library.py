"""Casola's library share links. Tollgate's library items are the organization's finished jobs (an
async generation's result: ``GET /v1/jobs`` lists them, by the job id):

- ``POST /api/library/items/{item_id}/share`` (``user:write``): share a completed job by link: 201
  ``{share: {item_id, token, url, created_at}}``, or 200 with the link it has already (one link per
  item); the result as it is now is kept in the blob store, so the link outlives the job's retention.
- ``GET .../share`` (``user:read``): the item's link; ``DELETE .../share`` (``user:write``): delete it
  (the link stops working at once).
- ``GET /api/shares/{token}`` (no credential): the shared item, its media as signed URLs valid for an
  hour (made again at each fetch).

A token is ``<share id>.<HMAC of the organization and share id>`` under a key derived from the
gateway's secret (as media URLs are signed): it is never on the log, any instance with the same
secret verifies it, and a guessed or altered one is a 404.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from decimal import Decimal
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.params import FromPath

from gateway.auth import authorize
from gateway.core import Core, GatewayCore
from gateway.errors import ApiError
from gateway.http import encode_json, json_response
from gateway.routes.jobs import job_body
from gateway.routes.media import linked
from projections.library_shares import LibraryShare
from schemas.events import LibraryShareChanged
from schemas.ids import new_id
from schemas.moments import iso_or_none, utc_now

ITEM_SHARE = "/api/library/items/{item_id:str}/share"
# A shared item's amounts (cost_usd) are JSON numbers, read back as exact decimals (never floats).
_item_decoder = msgspec.json.Decoder(float_hook=Decimal)
share_is_idempotent = "an item has one share link: a repeated POST answers the link it has (200), never a second"


def share_token(core: GatewayCore, share: LibraryShare) -> str:
    mac = hmac.new(core.share_link_key, f"{share.org_id}/{share.share_id}".encode(), hashlib.sha256).digest()
    return f"{share.share_id}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def _share_json(core: GatewayCore, request: Request[Any, Any, Any], share: LibraryShare) -> dict[str, Any]:
    token = share_token(core, share)
    return {
        "item_id": share.item_id,
        "token": token,
        "url": str(request.base_url).rstrip("/") + f"/api/shares/{token}",
        "created_at": iso_or_none(share.created_at),
    }


def _not_found(item_id: str) -> ApiError:
    return ApiError(404, f"No library item '{item_id}'.", code="item_not_found", param="item_id")


@post(ITEM_SHARE, operation_id="createLibraryShare", opt={"scope": "user:write", "idempotent": share_is_idempotent})
async def create_share(request: Request[Any, Any, Any], core: Core, item_id: FromPath[str]) -> Response[bytes]:
    token = authorize(request, "user:write")
    existing = core.library_shares.of_item(token.org_id, item_id)
    if existing is not None:
        return json_response({"share": _share_json(core, request, existing)})
    job = core.jobs.get(item_id)
    if job is None or job.org_id != token.org_id:
        raise _not_found(item_id)
    if job.status != "completed":
        raise ApiError(409, f"Only a completed item can be shared; this one is {job.status}.", code="item_not_ready")
    described = job_body(job, core.prices)
    item = {
        "id": job.job_id,
        "model": job.model,
        "endpoint": job.endpoint,
        "created_at": described["created_at"],
        "completed_at": described["completed_at"],
        "result": described["result"],
    }
    share_id = new_id("shr")
    key = f"share-{token.org_id}/{share_id}"
    await asyncio.to_thread(core.blobs.put, key, encode_json(item))
    event = LibraryShareChanged(
        event_id=new_id("evt"),
        occurred_at=utc_now(),
        org_id=token.org_id,
        correlation_id=item_id,
        item_id=item_id,
        share_id=share_id,
        blob_key=key,
        token_id=token.token_id,
    )
    await core.record_tenant_event(event)
    share = core.library_shares.of_item(token.org_id, item_id)
    assert share is not None, "this instance folded the share before answering"
    return json_response({"share": _share_json(core, request, share)}, status_code=201)


@get(ITEM_SHARE, operation_id="getLibraryShare", opt={"scope": "user:read"})
async def get_share(request: Request[Any, Any, Any], core: Core, item_id: FromPath[str]) -> Response[bytes]:
    token = authorize(request, "user:read")
    share = core.library_shares.of_item(token.org_id, item_id)
    if share is None:
        raise ApiError(404, f"The item '{item_id}' has no share link.", code="share_not_found", param="item_id")
    return json_response({"share": _share_json(core, request, share)})


@delete(ITEM_SHARE, operation_id="deleteLibraryShare", opt={"scope": "user:write"}, status_code=200)
async def delete_share(request: Request[Any, Any, Any], core: Core, item_id: FromPath[str]) -> Response[bytes]:
    token = authorize(request, "user:write")
    share = core.library_shares.of_item(token.org_id, item_id)
    if share is None:
        raise ApiError(404, f"The item '{item_id}' has no share link.", code="share_not_found", param="item_id")
    event = LibraryShareChanged(
        event_id=new_id("evt"),
        occurred_at=utc_now(),
        org_id=token.org_id,
        correlation_id=item_id,
        item_id=item_id,
        share_id=share.share_id,
        deleted=True,
        token_id=token.token_id,
    )
    await core.record_tenant_event(event)
    await asyncio.to_thread(core.blobs.delete, share.blob_key)
    return json_response({"item_id": item_id, "deleted": True})


@get("/api/shares/{token:str}", operation_id="getSharedItem", opt={"scope": "public", "rate": "none"})
async def shared_item(request: Request[Any, Any, Any], core: Core, token: FromPath[str]) -> Response[bytes]:
    """The shared item, to whoever holds the link."""
    share_id = token.partition(".")[0]
    share = core.library_shares.by_id(share_id)
    stored = None
    if share is not None and hmac.compare_digest(share_token(core, share), token):
        stored = await asyncio.to_thread(core.blobs.get, share.blob_key)
    if share is None or stored is None:
        raise ApiError(404, "No shared item at this link: it was deleted, or it is not a link.", code="not_found")
    item = _item_decoder.decode(stored)
    result = item.get("result")
    if isinstance(result, dict):
        seed = f"share/{share.share_id}"
        item["result"] = await linked(request, core, share.org_id, result, True, "image/png", seed=seed)
    return json_response({"item": item, "shared_at": iso_or_none(share.created_at)})


route_handlers = [create_share, get_share, delete_share, shared_item]
