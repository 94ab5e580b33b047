"""A worker's slots shared fairly between organizations.

A pool's capacity is its workers' slots. One organization must not take all of them: it runs at most
``per_org`` jobs at once on a worker, and a freed slot goes to the organizations with jobs waiting in
turn (round robin), so a flood of one organization's jobs waits behind its own bound while another's
job starts in the next free slot. Within one organization, jobs start in the order they were taken.

On the job loop only (asyncio, one thread): no locks.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class FairSlots:
    def __init__(self, total: int, per_org: int) -> None:
        if total < 1 or per_org < 1:
            raise ValueError("a worker needs at least one slot, and an organization at least one")
        self.total = total
        self.per_org = min(per_org, total)
        self._free = total
        self.running: dict[str, int] = {}
        # Organizations with jobs waiting, in turn order: the next free slot goes to the first one that
        # is under its bound; an organization served moves to the end.
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    def waiting(self, org_id: str) -> int:
        return len(self._waiting.get(org_id, ()))

    def _startable(self, org_id: str) -> bool:
        return self._free > 0 and self.running.get(org_id, 0) < self.per_org

    def _take(self, org_id: str) -> None:
        self._free -= 1
        self.running[org_id] = self.running.get(org_id, 0) + 1

    async def acquire(self, org_id: str) -> None:
        if org_id not in self._waiting and self._startable(org_id):
            self._take(org_id)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(org_id, deque()).append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(org_id)  # granted as it was cancelled: the slot goes to the next
            else:
                self._unwait(org_id, future)
            raise

    def _unwait(self, org_id: str, future: asyncio.Future[None]) -> None:
        queued = self._waiting.get(org_id)
        if queued is None:
            return
        try:
            queued.remove(future)
        except ValueError:
            return
        if not queued:
            del self._waiting[org_id]

    def release(self, org_id: str) -> None:
        self._free += 1
        left = self.running.get(org_id, 0) - 1
        if left > 0:
            self.running[org_id] = left
        else:
            self.running.pop(org_id, None)
        self._grant()

    def _grant(self) -> None:
        while self._free > 0:
            turn = next((org for org in self._waiting if self.running.get(org, 0) < self.per_org), None)
            if turn is None:
                return
            queued = self._waiting.pop(turn)
            future = queued.popleft()
            if queued:
                self._waiting[turn] = queued  # to the end of the turn order
            if future.cancelled():
                continue
            self._take(turn)
            future.set_result(None)

    @asynccontextmanager
    async def slot(self, org_id: str) -> AsyncIterator[None]:
        await self.acquire(org_id)
        try:
            yield
        finally:
            self.release(org_id)
