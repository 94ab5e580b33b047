"""Saved Playground conversations as the gateway lists them (``/v1/playground/conversations``):
summaries folded from ``PlaygroundConversationSaved`` on the tenants topic, so every instance lists
the same ones and a replay rebuilds them; the messages themselves are in the blob store.

Bounded: an organization keeps its ``conversations_per_org_max`` most recently saved conversations
(an older one drops out of the list; its messages stay in the blob store until a save evicts it)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from schemas.events import Event, PlaygroundConversationSaved

conversations_per_org_max = 1_000


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    conversation_id: str
    model: str
    title: str
    message_count: int
    created_at: datetime
    updated_at: datetime
    blob_key: str


class PlaygroundView:
    def __init__(self) -> None:
        # Per organization, least recently saved first.
        self._orgs: dict[str, OrderedDict[str, ConversationSummary]] = {}

    def apply(self, event: Event) -> None:
        if not isinstance(event, PlaygroundConversationSaved):
            return
        org = self._orgs.setdefault(event.org_id, OrderedDict())
        earlier = org.pop(event.conversation_id, None)
        org[event.conversation_id] = ConversationSummary(
            conversation_id=event.conversation_id,
            model=event.model,
            title=event.title,
            message_count=event.message_count,
            created_at=earlier.created_at if earlier is not None else event.occurred_at,
            updated_at=event.occurred_at,
            blob_key=event.blob_key,
        )
        while len(org) > conversations_per_org_max:
            org.popitem(last=False)

    def get(self, org_id: str, conversation_id: str) -> ConversationSummary | None:
        org = self._orgs.get(org_id)
        return org.get(conversation_id) if org is not None else None

    def page(
        self, org_id: str, limit: int, before: datetime | None = None, model: str | None = None
    ) -> tuple[list[ConversationSummary], bool]:
        """The most recently updated conversations first (updated before ``before``, of ``model``), at
        most ``limit``; and whether more follow."""
        org = self._orgs.get(org_id)
        if org is None:
            return [], False
        found: list[ConversationSummary] = []
        for summary in reversed(org.values()):
            if (before is None or summary.updated_at < before) and (model is None or summary.model == model):
                found.append(summary)
                if len(found) > limit:
                    break
        return found[:limit], len(found) > limit
