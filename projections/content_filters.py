"""Organizations' content-filter policies (Casola's ``/api/organizations/{id}/content-filter-policy``),
folded from ``ContentFilterPolicySet`` on the tenants topic: every instance answers the same policy,
and a replay rebuilds it. One small record per organization that has set one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.events import ContentFilterPolicySet, Event

actions = ("block", "flag", "log", "off")


@dataclass(frozen=True, slots=True)
class ContentFilterPolicy:
    org_id: str
    action: str
    created_at: datetime
    updated_at: datetime
    token_id: str  # who set it last ("": the platform admin)


class ContentFilterView:
    def __init__(self) -> None:
        self._policies: dict[str, ContentFilterPolicy] = {}

    def apply(self, event: Event) -> None:
        if not isinstance(event, ContentFilterPolicySet):
            return
        if event.deleted:
            self._policies.pop(event.org_id, None)
            return
        earlier = self._policies.get(event.org_id)
        self._policies[event.org_id] = ContentFilterPolicy(
            org_id=event.org_id,
            action=event.action,
            created_at=earlier.created_at if earlier is not None else event.occurred_at,
            updated_at=event.occurred_at,
            token_id=event.token_id,
        )

    def get(self, org_id: str) -> ContentFilterPolicy | None:
        return self._policies.get(org_id)
