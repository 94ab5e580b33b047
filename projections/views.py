"""In-memory read models, each a pure fold over events: balances and tenants.

Every gateway instance folds the log into these on start and follows it, so any instance answers
from the same facts. They can be thrown away and rebuilt by replaying the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from schemas.events import (
    ApiTokenCreated,
    CreditsGranted,
    Event,
    HoldCaptured,
    HoldPlaced,
    HoldReleased,
    OrganizationCreated,
)


@dataclass(slots=True)
class Balance:
    credited_micros: int = 0
    held_micros: int = 0
    captured_micros: int = 0
    updated_at: datetime | None = None

    @property
    def available_micros(self) -> int:
        return self.credited_micros - self.held_micros - self.captured_micros


@dataclass(slots=True)
class BalancesView:
    balances: dict[str, Balance] = field(default_factory=dict)
    open_holds: dict[str, int] = field(default_factory=dict)

    def get(self, org_id: str) -> Balance:
        return self.balances.get(org_id) or Balance()

    def apply(self, event: Event) -> None:
        if isinstance(event, HoldPlaced):
            balance = self._balance(event)
            self.open_holds[event.hold_id] = event.amount_micros
            balance.held_micros += event.amount_micros
        elif isinstance(event, HoldCaptured):
            balance = self._balance(event)
            balance.held_micros -= self.open_holds.pop(event.hold_id)
            balance.captured_micros += event.amount_micros
        elif isinstance(event, HoldReleased):
            balance = self._balance(event)
            balance.held_micros -= self.open_holds.pop(event.hold_id)
        elif isinstance(event, CreditsGranted):
            self._balance(event).credited_micros += event.amount_micros

    def _balance(self, event: Event) -> Balance:
        balance = self.balances.get(event.org_id)
        if balance is None:
            balance = self.balances[event.org_id] = Balance()
        balance.updated_at = event.occurred_at
        return balance


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
