"""Idempotent replies: the first answer to each Idempotency-Key, folded from
``tollgate.idempotency`` by every gateway instance and kept for the idempotency window."""

from __future__ import annotations

import base64
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas.events import Event, IdempotentReplyRecorded

idempotency_window_s = 24 * 3600


@dataclass(frozen=True, slots=True)
class Reply:
    fingerprint: str
    status_code: int
    body: bytes
    headers: dict[str, str]
    recorded_at: datetime


class IdempotencyView:
    """Recorded answers by key hash, oldest first, forgotten after the window."""

    def __init__(self, window_s: int = idempotency_window_s) -> None:
        self._replies: OrderedDict[str, Reply] = OrderedDict()
        self._window = timedelta(seconds=window_s)
        self.in_flight: set[str] = set()

    def apply(self, event: Event) -> None:
        if not isinstance(event, IdempotentReplyRecorded) or event.key_sha256 in self._replies:
            return
        body = base64.b64decode(event.body_base64) if event.body_base64 else bytes(event.body)
        self._replies[event.key_sha256] = Reply(
            event.fingerprint, event.status_code, body, dict(event.headers), event.occurred_at
        )
        self._forget_before(event.occurred_at - self._window)

    def get(self, key_sha256: str, now: datetime) -> Reply | None:
        reply = self._replies.get(key_sha256)
        if reply is None or reply.recorded_at < now - self._window:
            return None
        return reply

    def _forget_before(self, moment: datetime) -> None:
        while self._replies:
            oldest_key, oldest = next(iter(self._replies.items()))
            if oldest.recorded_at >= moment:
                return
            del self._replies[oldest_key]
