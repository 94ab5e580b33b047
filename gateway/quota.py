"""Slices of organizations' balances that the ledger granted this gateway instance, spent in memory.

The hot path of a metered request is a hold the ledger must decide before the job may run. With a
slice (a quota lease, as in RFC 8506's credit control, or OpenRouter's cached balances) the gateway
reserves the request's worst case against its slice here, dispatches the job itself and answers when
the worker's outcome arrives: no ledger decision on the request's path. The ledger still records
every hold (carved out of the slice when its PlaceHold arrives), every capture and every release, so
the signed ledger and ``audit verify`` see every charge.

Zero overdraft holds because the ledger reserved the slice from the spendable balance when it
granted it, carves a hold out of it only while it is open and covers the hold (else decides the hold
against the wallet, and refuses it if that cannot cover it), and a slice is never spent past what is
left of it here. An organization whose spendable balance is too low for a slice goes through the
ledger per request, as before. A gateway that dies leaves its slices to expire (``expires_at``): what
was left goes back to the wallet.

Sizing: a slice asks for the organization's recent spend through this instance over a slice's life,
between ``quota_slice_micros_min`` and ``quota_slice_micros_max``; the ledger grants at most its share
of what is spendable. A new slice is asked for when what is left falls under a quarter of the slice
or its life is half over; the old one is returned when the new one arrives (its holds keep their
amounts: a hold, once carved, is the ledger's like any other).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from eventlog import Outgoing, topics
from eventlog.settings import Settings
from schemas.codec import encode
from schemas.commands import GrantSlice, ReturnSlice
from schemas.events import (
    CommandRejected,
    Event,
    HoldCaptured,
    HoldPlaced,
    HoldRejected,
    HoldReleased,
    SliceGranted,
    SliceReturned,
)
from schemas.ids import new_id
from schemas.moments import utc_now

logger = logging.getLogger(__name__)

reservations_max = 1_000_000  # requests reserved against a slice whose hold the ledger has not resolved
refill_when_left_below = 4  # ask for the next slice when a quarter (1/4) of this one is left...
refill_when_age_above = 2  # ...or when half (1/2) of its life has passed
use_margin_s = 2.0  # stop placing holds against a slice this long before it expires (clock skew, lag)
spend_half_life_s = 10.0  # the recent spend rate forgets with this half-life
organizations_max = 100_000  # slices and spend rates this instance keeps, at most


@dataclass(slots=True)
class _Slice:
    slice_id: str
    granted_micros: int
    left_micros: int  # what this instance has not reserved of it
    expires_at: datetime
    granted_at: float  # monotonic


@dataclass(slots=True)
class _Organization:
    current: _Slice | None = None
    asked: str = ""  # the slice id asked for and not answered yet
    asked_at: float = 0.0
    refused_until: float = 0.0  # the ledger refused a slice (a low balance): per request until then
    rate_micros_per_s: float = 0.0
    rate_at: float = 0.0


class Quota:
    """This instance's slices, by organization. Thread-safe: handlers reserve on the event loop, the
    history follower folds the ledger's answers."""

    def __init__(self, settings: Settings, send: Callable[[list[Outgoing]], None]) -> None:
        self._settings = settings
        self._send = send
        self.instance_id = settings.instance_id
        self._organizations: dict[str, _Organization] = {}
        self._asked: dict[str, str] = {}  # slice id asked for -> organization
        # What each request reserved against which slice, until the ledger resolves its hold: the
        # ledger's decisions, folded here, are what give the unspent rest back (never an estimate).
        self._reservations: OrderedDict[str, tuple[str, str, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.enabled = settings.quota_slice_ttl_s > 0

    # --- the request's path ---

    def reserve(self, org_id: str, amount_micros: int, hold_id: str) -> str | None:
        """Reserve ``amount_micros`` against this instance's slice of the organization for the hold
        ``hold_id``; the slice's id, or None when the request must ask the ledger itself (no slice, or
        not enough left)."""
        if not self.enabled:
            return None
        now = time.monotonic()
        with self._lock:
            org = self._organization(org_id)
            self._note_spend(org, amount_micros, now)
            current = org.current
            usable = current is not None and utc_now() < current.expires_at - timedelta(seconds=use_margin_s)
            if current is not None and usable and current.left_micros >= amount_micros:
                current.left_micros -= amount_micros
                self._reservations[hold_id] = (org_id, current.slice_id, amount_micros)
                while len(self._reservations) > reservations_max:
                    self._reservations.popitem(last=False)
                self._maybe_refill(org_id, org, now, amount_micros)
                return current.slice_id
            returning = current.slice_id if current is not None else ""
            if current is not None:
                # It cannot cover this request: give it back first (the ledger reads the return before
                # this request's hold, which follows on the same partition), so the hold is decided
                # against the whole spendable balance, not what the slice leaves of it.
                org.current = None
            self._maybe_refill(org_id, org, now, amount_micros)
        if returning:
            self._return(org_id, returning)
        return None

    def unreserve(self, hold_id: str) -> None:
        """A reserved hold that never went out (the log refused its record): no answer of the ledger
        will free what it reserved, so it is free again now."""
        with self._lock:
            self._give_back(hold_id, 0)

    def _give_back(self, hold_id: str, kept_micros: int) -> None:
        """The ledger resolved a reserved hold: all it reserved but ``kept_micros`` is free again here,
        as it is in the ledger's slice (under the lock)."""
        reservation = self._reservations.pop(hold_id, None)
        if reservation is None:
            return
        org_id, slice_id, reserved = reservation
        org = self._organizations.get(org_id)
        if org is not None and org.current is not None and org.current.slice_id == slice_id:
            org.current.left_micros += reserved - kept_micros

    # --- the ledger's answers ---

    def apply(self, event: Event) -> None:
        if isinstance(event, (HoldPlaced, HoldRejected, HoldCaptured, HoldReleased)):
            if event.hold_id in self._reservations:
                with self._lock:
                    self._resolved(event)
        elif isinstance(event, SliceGranted) and event.instance_id == self.instance_id:
            self._granted(event)
        elif isinstance(event, SliceReturned) and event.instance_id == self.instance_id:
            with self._lock:
                org = self._organizations.get(event.org_id)
                if org is not None and org.current is not None and org.current.slice_id == event.slice_id:
                    org.current = None
        elif isinstance(event, CommandRejected) and event.causation_id in self._asked:
            with self._lock:
                org_id = self._asked.pop(event.causation_id, "")
                org = self._organizations.get(org_id)
                if org is not None and org.asked == event.causation_id:
                    org.asked = ""
                    # Too little is spendable for a slice: requests go to the ledger one by one.
                    org.refused_until = time.monotonic() + self._settings.quota_slice_ttl_s / 2

    def _resolved(self, event: HoldPlaced | HoldRejected | HoldCaptured | HoldReleased) -> None:
        if isinstance(event, HoldPlaced):
            if not event.slice_id:
                self._give_back(event.hold_id, 0)  # the wallet covered it: the slice did not
        elif isinstance(event, HoldRejected):
            self._give_back(event.hold_id, 0)
        elif isinstance(event, HoldCaptured):
            self._give_back(event.hold_id, event.amount_micros)
        else:
            self._give_back(event.hold_id, 0)

    def _granted(self, event: SliceGranted) -> None:
        returned: str = ""
        with self._lock:
            self._asked.pop(event.slice_id, None)
            org = self._organization(event.org_id)
            if org.asked == event.slice_id:
                org.asked = ""
            previous = org.current
            if previous is not None and previous.slice_id != event.slice_id:
                returned = previous.slice_id
            org.current = _Slice(
                event.slice_id, event.amount_micros, event.amount_micros, event.expires_at, time.monotonic()
            )
        if returned:
            self._return(event.org_id, returned)

    def return_all(self) -> None:
        """Give back every slice (a gateway shutting down): their rest is spendable again at once."""
        with self._lock:
            slices = [(org_id, org.current.slice_id) for org_id, org in self._organizations.items() if org.current]
            for org_id, _ in slices:
                self._organizations[org_id].current = None
        for org_id, slice_id in slices:
            self._return(org_id, slice_id)

    def return_for(self, org_id: str) -> None:
        """Give back this instance's slice of one organization: a charge the ledger reserves itself (a
        GPU's interval, a plan's month) may need what the slice holds. Its next request asks anew."""
        with self._lock:
            org = self._organizations.get(org_id)
            current = org.current if org is not None else None
            if org is not None:
                org.current = None
        if current is not None:
            self._return(org_id, current.slice_id)

    # --- asking ---

    def _organization(self, org_id: str) -> _Organization:
        org = self._organizations.get(org_id)
        if org is None:
            if len(self._organizations) >= organizations_max:
                idle = next((k for k, v in self._organizations.items() if v.current is None and not v.asked), None)
                if idle is not None:
                    del self._organizations[idle]
            org = self._organizations[org_id] = _Organization()
        return org

    def _note_spend(self, org: _Organization, amount_micros: int, now: float) -> None:
        if org.rate_at:
            decay = 0.5 ** ((now - org.rate_at) / spend_half_life_s)
            org.rate_micros_per_s *= decay
        org.rate_micros_per_s += amount_micros / spend_half_life_s
        org.rate_at = now

    def _maybe_refill(self, org_id: str, org: _Organization, now: float, amount_micros: int) -> None:
        """Ask for the next slice early enough that requests rarely find none (under the lock)."""
        ttl_s = self._settings.quota_slice_ttl_s
        if org.asked and now - org.asked_at < ttl_s:
            return
        if now < org.refused_until:
            return
        current = org.current
        if current is not None:
            low = current.left_micros * refill_when_left_below < current.granted_micros
            old = (now - current.granted_at) * refill_when_age_above > ttl_s
            if not low and not old and current.left_micros >= amount_micros:
                return
        # Below the least a slice is worth (a low balance), the ledger refuses it: per request then.
        minimum = max(amount_micros, self._settings.quota_slice_micros_min)
        wanted = int(org.rate_micros_per_s * ttl_s)
        wanted = min(max(wanted, amount_micros * 4, minimum), self._settings.quota_slice_micros_max)
        slice_id = new_id("slice")
        org.asked, org.asked_at = slice_id, now
        self._asked[slice_id] = org_id
        command = GrantSlice(
            command_id=slice_id,
            org_id=org_id,
            issued_at=utc_now(),
            slice_id=slice_id,
            instance_id=self.instance_id,
            amount_micros=wanted,
            ttl_s=ttl_s,
            minimum_micros=minimum,
        )
        self._send([Outgoing(topics.COMMANDS, org_id, encode(command))])

    def _return(self, org_id: str, slice_id: str) -> None:
        command = ReturnSlice(command_id=f"return:{slice_id}", org_id=org_id, issued_at=utc_now(), slice_id=slice_id)
        self._send([Outgoing(topics.COMMANDS, org_id, encode(command))])
