"""Saving Playground conversations. Tollgate has no Playground page of its own; a client that is one
(a chat UI in front of the API) sends its chat completions with ``X-Playground-Conversation: <id>``
(and optionally ``X-Playground-Title``), and each answered exchange is saved as that conversation:
the request's messages and the answer's, which ``GET /v1/playground/conversations`` then lists, read
only, as EmpirioLabs documents it. The request is metered as any chat completion (the header changes
nothing in its price); its usage row's ``source`` is ``playground``, naming the conversation.

The messages go to the blob store (``playground-<org>/<conversation id>``, replaced by each save), the
summary to the tenants topic (``PlaygroundConversationSaved``, folded by ``projections/playground.py``).
A client sends the whole conversation with each request (the chat API is stateless), so each save
holds the conversation up to its last answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Request, Response

from gateway.core import GatewayCore
from gateway.errors import ApiError
from gateway.metering import MeteredRequest
from projections.views import ApiToken
from schemas.events import PlaygroundConversationSaved
from schemas.ids import new_id
from schemas.moments import utc_now
from workers.backends import message_text

logger = logging.getLogger(__name__)

CONVERSATION_HEADER = "x-playground-conversation"
TITLE_HEADER = "x-playground-title"
conversation_id_pattern = re.compile(r"[A-Za-z0-9_-]{1,64}")
title_chars_max = 200
derived_title_chars_max = 80
save_wait_s_max = 10.0


@dataclass(frozen=True, slots=True)
class Saving:
    conversation_id: str
    title: str  # "" : the earlier title, else the first user message


def from_playground(metered: MeteredRequest, saving: Saving) -> MeteredRequest:
    """The request as the Playground's: its hold, charge and usage row say ``source: playground``."""
    return dataclasses.replace(metered, source="playground", source_id=saving.conversation_id)


def asked(request: Request[Any, Any, Any], metered: MeteredRequest) -> Saving | None:
    """The conversation a chat completion is to be saved in, or None; a 400 for a bad id, or for a
    streamed or async request (only an answer given whole is saved)."""
    given = request.headers.get(CONVERSATION_HEADER)
    if given is None:
        return None
    if not conversation_id_pattern.fullmatch(given):
        raise ApiError(
            400,
            "X-Playground-Conversation must be 1 to 64 letters, digits, '-' or '_'.",
            code="invalid_parameter",
            param=CONVERSATION_HEADER,
        )
    if metered.stream or metered.run_async:
        raise ApiError(
            400,
            "A Playground conversation saves answers given whole: send it without stream or async.",
            code="invalid_parameter",
            param="stream" if metered.stream else "async",
        )
    title = request.headers.get(TITLE_HEADER, "").strip()
    if len(title) > title_chars_max:
        raise ApiError(
            400,
            f"X-Playground-Title may be at most {title_chars_max} characters.",
            code="invalid_parameter",
            param=TITLE_HEADER,
        )
    return Saving(given, title)


def _title(saving: Saving, earlier: str, messages: list[Any]) -> str:
    if saving.title or earlier:
        return saving.title or earlier
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            text = " ".join(message_text(message).split())
            if text:
                return text[:derived_title_chars_max]
    return "Untitled"


async def saved(
    core: GatewayCore, token: ApiToken, saving: Saving, request_id: str, body: bytes, answer: Response[bytes]
) -> Response[bytes]:
    """``answer`` after its exchange is saved (``x-playground-conversation`` names it; a save that
    fails, the answer being given and charged already, says ``x-playground-saved: false``)."""
    try:
        sent = msgspec.json.decode(body)
        answered = msgspec.json.decode(answer.content)
        messages = [*sent.get("messages", []), answered["choices"][0]["message"]]
        earlier = core.playground.get(token.org_id, saving.conversation_id)
        key = f"playground-{token.org_id}/{saving.conversation_id}"
        await asyncio.to_thread(core.blobs.put, key, msgspec.json.encode(messages))
        event = PlaygroundConversationSaved(
            event_id=new_id("evt"),
            occurred_at=utc_now(),
            org_id=token.org_id,
            correlation_id=request_id,
            conversation_id=saving.conversation_id,
            model=str(answered.get("model") or sent.get("model") or ""),
            title=_title(saving, earlier.title if earlier is not None else "", messages),
            message_count=len(messages),
            blob_key=key,
            token_id=token.token_id,
        )
        await asyncio.wait_for(core.record_tenant_event(event), save_wait_s_max)
        answer.headers["x-playground-saved"] = "true"
    except (TimeoutError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, msgspec.DecodeError):
        logger.warning("a Playground exchange of %s was answered but not saved", request_id, exc_info=True)
        answer.headers["x-playground-saved"] = "false"
    answer.headers[CONVERSATION_HEADER] = saving.conversation_id
    return answer
