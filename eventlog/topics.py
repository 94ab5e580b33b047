"""Topic names and partitioning. Every record is keyed by organization id, so one organization's
events keep their order inside one partition, and the ledger's input and output partitions line up."""

from __future__ import annotations

TENANTS = "tollgate.tenants"
REQUESTS = "tollgate.requests"
COMMANDS = "tollgate.commands"
LEDGER = "tollgate.ledger"
JOBS = "tollgate.jobs"
IDEMPOTENCY = "tollgate.idempotency"
PRICING = "tollgate.pricing"
DISPATCH_PREFIX = "tollgate.dispatch."

partitions_per_topic = 4


def dispatch_topic(pool: str) -> str:
    return DISPATCH_PREFIX + pool


def all_topics(pools: tuple[str, ...]) -> list[str]:
    return [TENANTS, REQUESTS, COMMANDS, LEDGER, JOBS, IDEMPOTENCY, PRICING, *(dispatch_topic(pool) for pool in pools)]
