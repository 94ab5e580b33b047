"""In-memory read models, each a pure fold over events: balances and tenants.

Every gateway instance folds the log into these on start and follows it, so any instance answers
from the same facts. They can be thrown away and rebuilt by replaying the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ledger.accounts import Book
from ledger.wallet import Wallet, evolve
from schemas.events import ApiTokenCreated, Event, HoldRejected, LedgerEvent, OrganizationCreated


class BalancesView:
    """Every organization's wallet, folded with the ledger's own evolve, plus the double-entry book."""

    def __init__(self) -> None:
        self.wallets: dict[str, Wallet] = {}
        self.book = Book()
        self.updated_at: dict[str, datetime] = {}

    def get(self, org_id: str) -> Wallet:
        wallet = self.wallets.get(org_id)
        return wallet if wallet is not None else Wallet(org_id=org_id)

    def apply(self, event: Event) -> None:
        if not isinstance(event, LedgerEvent):
            return
        wallet = self.wallets.get(event.org_id)
        if wallet is None:
            wallet = self.wallets[event.org_id] = Wallet(org_id=event.org_id)
        evolve(wallet, event)
        self.book.apply(event)
        if not isinstance(event, HoldRejected):  # a refusal changes no balance
            self.updated_at[event.org_id] = event.occurred_at


@dataclass(frozen=True, slots=True)
class Organization:
    org_id: str
    name: str
    plan: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiToken:
    token_id: str
    org_id: str
    name: str
    scopes: frozenset[str]
    secret_prefix: str
    created_at: datetime


@dataclass(slots=True)
class TenantsView:
    organizations: dict[str, Organization] = field(default_factory=dict)
    tokens_by_secret_sha256: dict[str, ApiToken] = field(default_factory=dict)

    def apply(self, event: Event) -> None:
        if isinstance(event, OrganizationCreated):
            self.organizations[event.org_id] = Organization(event.org_id, event.name, event.plan, event.occurred_at)
        elif isinstance(event, ApiTokenCreated):
            self.tokens_by_secret_sha256[event.secret_sha256] = ApiToken(
                token_id=event.token_id,
                org_id=event.org_id,
                name=event.name,
                scopes=frozenset(event.scopes),
                secret_prefix=event.secret_prefix,
                created_at=event.occurred_at,
            )
