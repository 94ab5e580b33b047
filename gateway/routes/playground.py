"""``GET /v1/playground/conversations`` and ``/{conversation_id}``: the saved Playground conversations
of the caller's organization, read only, in EmpirioLabs' ``PlaygroundConversationList`` and
``PlaygroundConversation`` shapes. A conversation is saved by a chat completion sent with
``X-Playground-Conversation`` (``gateway/playground.py``); nothing else makes one."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.params import FromPath

from gateway.auth import authorize
from gateway.core import Core
from gateway.errors import ApiError
from gateway.http import json_response, limit_param, moment_param
from projections.playground import ConversationSummary
from schemas.moments import iso_or_none

PLAYGROUND = "/v1/playground/conversations"
page_size_max = 100


def _summary(summary: ConversationSummary) -> dict[str, Any]:
    return {
        "id": summary.conversation_id,
        "object": "playground_conversation",
        "model": summary.model,
        "title": summary.title,
        "message_count": summary.message_count,
        "created_at": iso_or_none(summary.created_at),
        "updated_at": iso_or_none(summary.updated_at),
    }


@get(PLAYGROUND, operation_id="listPlaygroundConversations", opt={"scope": "user:read"})
async def list_conversations(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """Most recently updated first; ``before`` (an ``updated_at``) pages on, as ``next_cursor`` says."""
    token = authorize(request, "user:read")
    limit = limit_param(request, default=50, maximum=page_size_max)
    before = moment_param(request, "before")
    model = request.query_params.get("model")
    page, more = core.playground.page(token.org_id, limit, before, model)
    return json_response(
        {
            "object": "list",
            "data": [_summary(summary) for summary in page],
            "has_more": more,
            "next_cursor": iso_or_none(page[-1].updated_at) if more else None,
        }
    )


@get(f"{PLAYGROUND}/{{conversation_id:str}}", operation_id="retrievePlaygroundConversation", opt={"scope": "user:read"})
async def retrieve_conversation(
    request: Request[Any, Any, Any], core: Core, conversation_id: FromPath[str]
) -> Response[bytes]:
    token = authorize(request, "user:read")
    summary = core.playground.get(token.org_id, conversation_id)
    stored = await asyncio.to_thread(core.blobs.get, summary.blob_key) if summary is not None else None
    if summary is None or stored is None:
        raise ApiError(
            404, f"No saved Playground conversation '{conversation_id}'.", code="not_found", param="conversation_id"
        )
    return json_response({**_summary(summary), "messages": msgspec.json.decode(stored)})


route_handlers = [list_conversations, retrieve_conversation]
