"""Charges this gateway has answered with and the ledger has not recorded yet.

A request is answered when its worker's outcome arrives; the worker's capture reaches the ledger
(and its event this gateway's balances view) a little later. Until then this instance shows the
balance as the ledger will record it (read-your-writes for a client that asks the same gateway right
after its answer): the charge taken from the balance, the hold no longer held, and for a hold carved
out of a gateway's slice its rest back in that slice. Other instances
show it once they have read the ledger's event. An entry goes when the ledger's capture or release
of its hold is folded (whatever the ledger decided), or after ``pending_s_max``.

Likewise a request reserved against this instance's slice is held from the moment it is dispatched
(an async job is answered before the ledger carves its hold out of the slice): until the ledger's
decision on its hold is folded, or its answer, it shows as held and no longer as the slice's.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from projections.views import BalancesView
from schemas.events import Event, HoldCaptured, HoldPlaced, HoldRejected, HoldReleased, LedgerEvent

pending_s_max = 600.0  # a capture the ledger never answered (it was down for longer) stops showing
pending_max = 100_000  # bounded memory: the oldest entries go first


@dataclass(frozen=True, slots=True)
class Pending:
    org_id: str
    amount_micros: int  # what the answer charged
    hold_micros: int  # what the hold reserved
    carved: bool  # placed against a gateway's slice: its rest goes back to the slice
    at: float


@dataclass(frozen=True, slots=True)
class Carving:
    org_id: str
    hold_micros: int
    at: float


@dataclass(frozen=True, slots=True)
class Overlay:
    """What the balances view lacks of an organization: subtract ``charged`` from its balance,
    ``held`` from what requests hold and ``sliced`` from what gateways' slices reserve (negative when
    a rest goes back to a slice)."""

    charged: int = 0
    held: int = 0
    sliced: int = 0


class PendingCharges:
    """Folds ledger events into the balances view and keeps the answered charges it lacks, under one
    lock, so a charge is never shown twice (once pending, once folded)."""

    def __init__(self, balances: BalancesView) -> None:
        self._balances = balances
        self._lock = threading.Lock()
        self._by_hold: OrderedDict[str, Pending] = OrderedDict()
        self._by_org: dict[str, dict[str, Pending]] = {}
        # Holds reserved against this instance's slice that the view has not seen decided.
        self._carving: OrderedDict[str, Carving] = OrderedDict()
        self._carving_by_org: dict[str, dict[str, Carving]] = {}

    def apply(self, event: Event) -> None:
        """Fold a ledger event into the balances view (the history follower calls this)."""
        if not isinstance(event, LedgerEvent):
            return
        with self._lock:
            self._balances.apply(event)
            if isinstance(event, (HoldPlaced, HoldRejected, HoldCaptured, HoldReleased)):
                self._carved(event.hold_id)
            if isinstance(event, (HoldCaptured, HoldReleased)):
                self._forget(event.hold_id)

    def carving(self, org_id: str, hold_id: str, hold_micros: int) -> None:
        """A hold reserved against this instance's slice and dispatched, its PlaceHold on the way."""
        with self._lock:
            if hold_id in self._balances.get(org_id).holds:
                return  # decided already
            entry = Carving(org_id, hold_micros, time.monotonic())
            self._carving[hold_id] = entry
            self._carving_by_org.setdefault(org_id, {})[hold_id] = entry
            while len(self._carving) > pending_max:
                self._carved(next(iter(self._carving)))

    def not_sent(self, hold_id: str) -> None:
        """A carving whose PlaceHold the log refused: nothing will decide it, so it holds nothing."""
        with self._lock:
            self._carved(hold_id)

    def answered(self, org_id: str, hold_id: str, hold_micros: int, amount_micros: int, carved: bool) -> None:
        with self._lock:
            self._carved(hold_id)  # answered: from here the charge is what shows
            hold = self._balances.get(org_id).holds.get(hold_id)
            if hold is not None and hold.status.value != "open":
                return  # the ledger was faster: its capture is in the view already
            entry = Pending(org_id, amount_micros, hold_micros, carved, time.monotonic())
            self._by_hold[hold_id] = entry
            self._by_org.setdefault(org_id, {})[hold_id] = entry
            while len(self._by_hold) > pending_max:
                self._forget(next(iter(self._by_hold)))

    def of(self, org_id: str) -> Overlay:
        """The charges this instance answered for and the ledger has not recorded yet, as the view
        will change once it has: from where each hold stands in the view now."""
        charged = held = sliced = 0
        with self._lock:
            horizon = time.monotonic() - pending_s_max
            while self._by_hold and next(iter(self._by_hold.values())).at < horizon:
                self._forget(next(iter(self._by_hold)))
            while self._carving and next(iter(self._carving.values())).at < horizon:
                self._carved(next(iter(self._carving)))
            wallet = self._balances.get(org_id)
            for carving in self._carving_by_org.get(org_id, {}).values():
                held -= carving.hold_micros  # held from its dispatch, no longer the slice's
                sliced += carving.hold_micros
            for hold_id, entry in self._by_org.get(org_id, {}).items():
                charged += entry.amount_micros
                if hold_id in wallet.holds:  # placed: it leaves held; a carved one's rest goes to the slice
                    held += entry.hold_micros
                    sliced -= entry.hold_micros - entry.amount_micros if entry.carved else 0
                elif entry.carved:  # not carved yet: the slice still counts it, and will keep its rest
                    sliced += entry.amount_micros
        return Overlay(charged, held, sliced)

    def _carved(self, hold_id: str) -> None:
        entry = self._carving.pop(hold_id, None)
        if entry is not None:
            own = self._carving_by_org.get(entry.org_id, {})
            own.pop(hold_id, None)
            if not own:
                self._carving_by_org.pop(entry.org_id, None)

    def _forget(self, hold_id: str) -> None:
        entry = self._by_hold.pop(hold_id, None)
        if entry is not None:
            own = self._by_org.get(entry.org_id, {})
            own.pop(hold_id, None)
            if not own:
                self._by_org.pop(entry.org_id, None)
