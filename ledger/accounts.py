"""Double-entry: every ledger event is a set of postings, each moving an amount from one account
to another. The sum over all accounts is zero after every event, by construction and by assertion.

Accounts:
- ``{org}/wallet``: what the organization can still reserve (its available balance; negative when it
  uses its credit limit);
- ``{org}/held``: what its open holds and open slices reserve (wallet + held is the balance); a hold
  carved out of a slice, and the rest it gives back to its open slice, stay in it;
- system accounts: ``revenue``, ``promo_issuance``, ``paid_topups``, ``refunds``, ``breakage``
  (expired credits), ``adjustments``.

A balance is credits minus debits from the account's point of view, so an organization's wallet
is positive when it has money and the system accounts that issued it are negative.
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

from schemas.events import (
    CreditsAdjusted,
    CreditsGranted,
    CreditsRefunded,
    Event,
    GrantExpired,
    HoldCaptured,
    HoldPlaced,
    HoldReleased,
    PlanRenewed,
    PlanSubscribed,
    ResourceCharged,
    ResourceStarted,
    SliceGranted,
    SliceReturned,
)

revenue = "revenue"
promo_issuance = "promo_issuance"
paid_topups = "paid_topups"
refunds = "refunds"
breakage = "breakage"
adjustments = "adjustments"
system_accounts = (revenue, promo_issuance, paid_topups, refunds, breakage, adjustments)


def wallet_account(org_id: str) -> str:
    return f"{org_id}/wallet"


def held_account(org_id: str) -> str:
    return f"{org_id}/held"


class Posting(NamedTuple):
    debit: str  # the account the amount leaves
    credit: str  # the account the amount enters
    amount_micros: int


def postings(event: Event) -> list[Posting]:
    """The postings one ledger event makes; [] for events that move no money. Pure."""
    org = event.org_id
    if isinstance(event, HoldPlaced):
        # Carved out of a slice, it was reserved already (held to held moves nothing).
        return [] if event.slice_id else [Posting(wallet_account(org), held_account(org), event.amount_micros)]
    if isinstance(event, HoldCaptured):
        charge = Posting(held_account(org), revenue, event.amount_micros)
        if event.slice_id:
            return [charge]  # the rest went back to its open slice: still held
        return [charge, Posting(held_account(org), wallet_account(org), event.released_micros)]
    if isinstance(event, HoldReleased):
        return [] if event.slice_id else [Posting(held_account(org), wallet_account(org), event.amount_micros)]
    if isinstance(event, SliceGranted):
        return [Posting(wallet_account(org), held_account(org), event.amount_micros)]
    if isinstance(event, SliceReturned):
        return [Posting(held_account(org), wallet_account(org), event.amount_micros)]
    if isinstance(event, CreditsGranted):
        source = promo_issuance if event.kind == "promo" else paid_topups
        return [Posting(source, wallet_account(org), event.amount_micros)]
    if isinstance(event, GrantExpired):
        return [Posting(wallet_account(org), breakage, event.amount_micros)]
    if isinstance(event, CreditsRefunded):
        return [Posting(refunds, wallet_account(org), event.amount_micros)]
    if isinstance(event, ResourceStarted):  # its first interval, held like a hold
        return [Posting(wallet_account(org), held_account(org), event.reserved_micros)]
    if isinstance(event, ResourceCharged):  # an interval charged out of its reservation, the next one held
        return [
            Posting(held_account(org), revenue, event.amount_micros),
            Posting(held_account(org), wallet_account(org), event.released_micros),
            Posting(wallet_account(org), held_account(org), event.next_reserved_micros),
        ]
    if isinstance(event, (PlanSubscribed, PlanRenewed)):  # a month of a plan, charged outright
        return [Posting(wallet_account(org), revenue, event.amount_micros)]
    if isinstance(event, CreditsAdjusted):
        if event.amount_micros >= 0:
            return [Posting(adjustments, wallet_account(org), event.amount_micros)]
        return [Posting(wallet_account(org), adjustments, -event.amount_micros)]
    return []


class Book:
    """Account balances folded from postings, with the double-entry invariant checked on every event."""

    def __init__(self) -> None:
        self.balances: defaultdict[str, int] = defaultdict(int)
        self._sum_micros = 0  # the running sum over every account, kept in O(1) per posting

    def apply(self, event: Event) -> None:
        for debit, credit, amount in postings(event):
            assert amount >= 0, "a posting moves a non-negative amount"
            assert debit != credit, "a posting moves money between two accounts"
            self.balances[debit] -= amount
            self._sum_micros -= amount
            self.balances[credit] += amount
            self._sum_micros += amount
        assert self._sum_micros == 0, "the sum over all accounts is zero after every event"

    def total_micros(self) -> int:
        """The sum over every account; zero unless a posting was lost or doubled."""
        return sum(self.balances.values())

    def balance(self, account: str) -> int:
        return self.balances.get(account, 0)
