"""Batches as the gateway knows them (``/v1/batches``): folded from the batch events on
``tollgate.jobs``, which every gateway instance reads from the beginning."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime

from schemas.events import BatchCancelRequested, BatchCreated, BatchEnded, BatchProgressed, Event


@dataclass(slots=True)
class BatchState:
    batch_id: str
    org_id: str
    token_id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    total: int
    created_at: datetime
    expires_at: datetime
    metadata: dict[str, str] = field(default_factory=dict)
    instance_id: str = ""
    reserved: str = ""
    status: str = "in_progress"
    completed: int = 0
    failed: int = 0
    cancelling_at: datetime | None = None
    ended_at: datetime | None = None
    output_file_id: str = ""
    error_file_id: str = ""
    error_code: str = ""
    error_message: str = ""


class BatchesView:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.batches: dict[str, BatchState] = {}
        self._by_org: dict[str, list[str]] = {}

    def apply(self, event: Event) -> None:
        with self._lock:
            self._apply(event)

    def _apply(self, event: Event) -> None:
        if isinstance(event, BatchCreated):
            if event.batch_id in self.batches:
                return
            self.batches[event.batch_id] = BatchState(
                batch_id=event.batch_id,
                org_id=event.org_id,
                token_id=event.token_id,
                endpoint=event.endpoint,
                input_file_id=event.input_file_id,
                completion_window=event.completion_window,
                total=event.total,
                failed=event.failed,
                created_at=event.occurred_at,
                expires_at=event.expires_at,
                metadata=dict(event.metadata),
                instance_id=event.instance_id,
                reserved=event.reserved,
            )
            self._by_org.setdefault(event.org_id, []).append(event.batch_id)
            return
        if not isinstance(event, (BatchProgressed, BatchCancelRequested, BatchEnded)):
            return
        batch = self.batches.get(event.batch_id)
        if batch is None or batch.ended_at is not None:
            return
        if isinstance(event, BatchProgressed):
            batch.completed, batch.failed = max(batch.completed, event.completed), max(batch.failed, event.failed)
        elif isinstance(event, BatchCancelRequested):
            if batch.cancelling_at is None:
                batch.cancelling_at = event.occurred_at
                batch.status = "cancelling"
        else:
            batch.status = event.status
            batch.completed, batch.failed = event.completed, event.failed
            batch.ended_at = event.occurred_at
            batch.output_file_id, batch.error_file_id = event.output_file_id, event.error_file_id
            batch.error_code, batch.error_message = event.error_code, event.error_message

    def get(self, org_id: str, batch_id: str) -> BatchState | None:
        batch = self.batches.get(batch_id)
        return batch if batch is not None and batch.org_id == org_id else None

    def page(self, org_id: str, limit: int, after: str | None) -> tuple[list[BatchState], bool]:
        """Newest first, after the batch ``after`` (OpenAI's cursor), and whether more follow."""
        with self._lock:
            ids = list(reversed(self._by_org.get(org_id, [])))
        if after is not None:
            ids = ids[ids.index(after) + 1 :] if after in ids else []
        return [self.batches[i] for i in ids[:limit]], len(ids) > limit
