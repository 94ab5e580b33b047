"""Idempotency-Key on the gateway's POST endpoints.

The same key with the same body returns the first answer and charges once; the same key with a
different body is a 409. Answers are events on ``tollgate.idempotency``, folded by every gateway
instance, and kept for ``idempotency_window_s`` (24 hours). Ids derived from the key (the request id,
hence the hold id; grant and refund ids) make the ledger itself refuse a second charge, even when two
instances race on one key before either has recorded its answer.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas.events import Event, IdempotentReplyRecorded

idempotency_window_s = 24 * 3600
idempotency_key_chars_max = 255


def key_hash(scope: str, key: str) -> str:
    return hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()


def fingerprint(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).hexdigest()


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
        self._replies[event.key_sha256] = Reply(
            event.fingerprint, event.status_code, bytes(event.body), dict(event.headers), event.occurred_at
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
