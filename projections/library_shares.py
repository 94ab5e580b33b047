"""Library share links (Casola's ``/api/library/items/{id}/share`` and ``/api/shares/{token}``), folded
from ``LibraryShareChanged`` on the tenants topic: which item each organization shares, and under
which share id (a link's token names it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.events import Event, LibraryShareChanged


@dataclass(frozen=True, slots=True)
class LibraryShare:
    org_id: str
    item_id: str
    share_id: str
    blob_key: str
    created_at: datetime


class LibrarySharesView:
    def __init__(self) -> None:
        self._by_item: dict[tuple[str, str], LibraryShare] = {}
        self._by_id: dict[str, LibraryShare] = {}

    def apply(self, event: Event) -> None:
        if not isinstance(event, LibraryShareChanged):
            return
        key = (event.org_id, event.item_id)
        earlier = self._by_item.pop(key, None)
        if earlier is not None:
            self._by_id.pop(earlier.share_id, None)
        if not event.deleted:
            share = LibraryShare(event.org_id, event.item_id, event.share_id, event.blob_key, event.occurred_at)
            self._by_item[key] = share
            self._by_id[share.share_id] = share

    def of_item(self, org_id: str, item_id: str) -> LibraryShare | None:
        return self._by_item.get((org_id, item_id))

    def by_id(self, share_id: str) -> LibraryShare | None:
        return self._by_id.get(share_id)
