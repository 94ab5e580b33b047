"""Idempotent replies: the first answer to each Idempotency-Key, folded from
``tollgate.idempotency`` by every gateway instance and kept for the idempotency window, and the keys
whose request began (a claim) without an answer yet."""

from __future__ import annotations

import asyncio
import base64
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from schemas.events import Event, IdempotencyKeyClaimed, IdempotentReplyRecorded

idempotency_window_s = 24 * 3600


@dataclass(frozen=True, slots=True)
class Reply:
    fingerprint: str
    status_code: int
    body: bytes
    headers: dict[str, str]
    recorded_at: datetime

    @property
    def at(self) -> datetime:
        return self.recorded_at


@dataclass(frozen=True, slots=True)
class Claim:
    fingerprint: str
    request_id: str
    claimed_at: datetime

    @property
    def at(self) -> datetime:
        return self.claimed_at


_Kept = TypeVar("_Kept", Reply, Claim)


class IdempotencyView:
    """Recorded answers and claims by key hash, oldest first, forgotten after the window; and the
    requests with a key that run on this instance (a retry waits for them)."""

    def __init__(self, window_s: int = idempotency_window_s) -> None:
        self._replies: OrderedDict[str, Reply] = OrderedDict()
        self._claims: OrderedDict[str, Claim] = OrderedDict()
        self._window = timedelta(seconds=window_s)
        # Set when the request with that key hash, running here, has answered (on the event loop).
        self.in_flight: dict[str, asyncio.Event] = {}

    def apply(self, event: Event) -> None:
        if isinstance(event, IdempotencyKeyClaimed):
            if event.key_sha256 not in self._claims:
                self._claims[event.key_sha256] = Claim(event.fingerprint, event.request_id, event.occurred_at)
                self._forget_before(self._claims, event.occurred_at - self._window)
            return
        if not isinstance(event, IdempotentReplyRecorded) or event.key_sha256 in self._replies:
            return
        body = base64.b64decode(event.body_base64) if event.body_base64 else bytes(event.body)
        self._replies[event.key_sha256] = Reply(
            event.fingerprint, event.status_code, body, dict(event.headers), event.occurred_at
        )
        self._forget_before(self._replies, event.occurred_at - self._window)

    def get(self, key_sha256: str, now: datetime) -> Reply | None:
        reply = self._replies.get(key_sha256)
        if reply is None or reply.recorded_at < now - self._window:
            return None
        return reply

    def claim(self, key_sha256: str, now: datetime) -> Claim | None:
        claim = self._claims.get(key_sha256)
        if claim is None or claim.claimed_at < now - self._window:
            return None
        return claim

    @staticmethod
    def _forget_before(kept: OrderedDict[str, _Kept], moment: datetime) -> None:
        while kept:
            oldest_key, oldest = next(iter(kept.items()))
            if oldest.at >= moment:
                return
            del kept[oldest_key]
