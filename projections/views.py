"""In-memory read models, each a pure fold over events: balances and tenants.

Every gateway instance folds the log into these on start and follows it, so any instance answers
from the same facts. They can be thrown away and rebuilt by replaying the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from ledger.accounts import Book
from ledger.wallet import Wallet, evolve
from projections.hosted_agents import AgentConfig, fold_agent_change
from schemas.events import (
    ApiTokenCreated,
    ApiTokenLimitsSet,
    ApiTokenRevoked,
    ApiTokenUsed,
    ChainCheckpoint,
    CommandRejected,
    Event,
    HoldCaptured,
    HoldRejected,
    HostedAgentChanged,
    HostedAgentConfigured,
    JobCancelRequested,
    JobDeadLettered,
    JobLeased,
    JobLeaseLost,
    LedgerEvent,
    OrganizationCreated,
    OrganizationLimitsSet,
    OrganizationPlanChanged,
)

# Ledger events that leave an organization's balance card as it was: refusals, checkpoints and a
# job's lease changes.
unchanged_balance = (
    HoldRejected,
    CommandRejected,
    ChainCheckpoint,
    JobLeased,
    JobLeaseLost,
    JobCancelRequested,
    JobDeadLettered,
)


class BalancesView:
    """Every organization's wallet, folded with the ledger's own evolve, plus the double-entry book."""

    def __init__(self) -> None:
        self.wallets: dict[str, Wallet] = {}
        self.book = Book()
        self.updated_at: dict[str, datetime] = {}
        # Messages each hosted agent answered in its plan's current period: (period start, count), by
        # instance id (reset when a capture falls in a new period).
        self.agent_messages: dict[str, tuple[datetime | None, int]] = {}

    def _count_agent_message(self, wallet: Wallet, instance_id: str) -> None:
        subscription = wallet.subscriptions.get(instance_id)
        period = subscription.period_start if subscription is not None else None
        counted_period, count = self.agent_messages.get(instance_id, (period, 0))
        self.agent_messages[instance_id] = (period, count + 1 if counted_period == period else 1)

    def agent_messages_in_period(self, instance_id: str, period_start: datetime) -> int:
        """Messages the agent answered in its plan's period that began at ``period_start``."""
        counted_period, count = self.agent_messages.get(instance_id, (None, 0))
        return count if counted_period == period_start else 0

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
        if isinstance(event, HoldCaptured) and event.source == "hosted_agents":
            self._count_agent_message(wallet, event.source_id)
        if not isinstance(event, unchanged_balance):
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
    expires_at: datetime | None = None
    rate_limits: dict[str, int] = field(default_factory=dict)  # per-key limits, kind -> per minute
    kind: str = "api_key"  # or "jwt": a service token's principal, never stored here


@dataclass(slots=True)
class TenantsView:
    """Organizations (plan, limit overrides) and their API keys (by secret hash and by id).

    A revoked key leaves ``tokens_by_secret_sha256`` at once, so it no longer authenticates."""

    organizations: dict[str, Organization] = field(default_factory=dict)
    tokens_by_secret_sha256: dict[str, ApiToken] = field(default_factory=dict)
    tokens_by_id: dict[str, ApiToken] = field(default_factory=dict)
    secret_sha256_by_token_id: dict[str, str] = field(default_factory=dict)
    revoked_at: dict[str, datetime] = field(default_factory=dict)
    last_used_at: dict[str, datetime] = field(default_factory=dict)
    limit_overrides: dict[str, dict[str, int]] = field(default_factory=dict)
    # Hosted agents' names and runtime states their owners set (instance id -> value).
    agent_names: dict[str, str] = field(default_factory=dict)
    agent_runtimes: dict[str, str] = field(default_factory=dict)
    # Hosted agents' configuration (model, access, integrations, skills, MCP), by instance id.
    agent_configs: dict[str, AgentConfig] = field(default_factory=dict)

    def apply(self, event: Event) -> None:
        if isinstance(event, OrganizationCreated):
            self.organizations[event.org_id] = Organization(event.org_id, event.name, event.plan, event.occurred_at)
        elif isinstance(event, ApiTokenCreated):
            token = ApiToken(
                token_id=event.token_id,
                org_id=event.org_id,
                name=event.name,
                scopes=frozenset(event.scopes),
                secret_prefix=event.secret_prefix,
                created_at=event.occurred_at,
                expires_at=event.expires_at,
                rate_limits=dict(event.rate_limits),
            )
            self.tokens_by_id[token.token_id] = token
            self.secret_sha256_by_token_id[token.token_id] = event.secret_sha256
            if token.token_id not in self.revoked_at:
                self.tokens_by_secret_sha256[event.secret_sha256] = token
        elif isinstance(event, ApiTokenRevoked):
            self.revoked_at.setdefault(event.token_id, event.occurred_at)
            secret_sha256 = self.secret_sha256_by_token_id.get(event.token_id)
            if secret_sha256 is not None:
                self.tokens_by_secret_sha256.pop(secret_sha256, None)
        elif isinstance(event, ApiTokenLimitsSet):
            current = self.tokens_by_id.get(event.token_id)
            if current is not None:
                updated = replace(current, rate_limits=dict(event.rate_limits))
                self.tokens_by_id[event.token_id] = updated
                secret_sha256 = self.secret_sha256_by_token_id[event.token_id]
                if secret_sha256 in self.tokens_by_secret_sha256:
                    self.tokens_by_secret_sha256[secret_sha256] = updated
        elif isinstance(event, ApiTokenUsed):
            self.mark_used(event.token_id, event.occurred_at)
        elif isinstance(event, OrganizationPlanChanged):
            org = self.organizations.get(event.org_id)
            if org is not None:
                self.organizations[event.org_id] = Organization(org.org_id, org.name, event.plan, org.created_at)
        elif isinstance(event, OrganizationLimitsSet):
            self.limit_overrides[event.org_id] = dict(event.rate_limits)
        elif isinstance(event, HostedAgentChanged):
            if event.name:
                self.agent_names[event.instance_id] = event.name
            if event.runtime:
                self.agent_runtimes[event.instance_id] = event.runtime
        elif isinstance(event, HostedAgentConfigured):
            fold_agent_change(self.agent_configs, event)

    def mark_used(self, token_id: str, at: datetime) -> None:
        previous = self.last_used_at.get(token_id)
        if previous is None or at > previous:
            self.last_used_at[token_id] = at

    def tokens_of(self, org_id: str) -> list[ApiToken]:
        return sorted((t for t in self.tokens_by_id.values() if t.org_id == org_id), key=lambda t: t.created_at)
