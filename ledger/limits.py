"""Rate limits: plans, overrides and the pure admission decision.

A limit is a number of units per minute of one *kind*:
- ``requests``: API requests (everything that is not a job submission), one unit each;
- ``jobs``: job submissions (async job endpoints), one unit each;
- ``tokens``: tokens of text models, counted at admission as an estimate (prompt bytes / 4 plus the
  request's output bound), the way OpenAI counts its tokens-per-minute limit.

Every limit applies per organization (the plan's defaults, replaced kind by kind by the
organization's overrides) and, when a key has its own, per key as well: a request needs room in both.
Decisions are pure: the windows' totals and the clock come in, a decision goes out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["requests", "jobs", "tokens"]
kinds: tuple[Kind, ...] = ("requests", "jobs", "tokens")
window_s = 60  # every limit is per minute

# Requests and job submissions per minute follow reference/casola-api-reference.txt; tokens per
# minute are Tollgate's defaults for text models (the reference gives none).
plan_limits: dict[str, dict[str, int]] = {
    "free": {"requests": 60, "jobs": 10, "tokens": 40_000},
    "pro": {"requests": 600, "jobs": 100, "tokens": 400_000},
    "enterprise": {"requests": 6_000, "jobs": 1_000, "tokens": 4_000_000},
}
limit_per_min_max = 100_000_000  # an override above this is a typo, not a plan


def organization_limits(plan: str, overrides: dict[str, int]) -> dict[str, int]:
    """The plan's limits with the organization's overrides applied kind by kind."""
    base = plan_limits.get(plan, plan_limits["free"])
    return {kind: overrides.get(kind, base[kind]) for kind in kinds}


@dataclass(frozen=True, slots=True)
class Check:
    """One limit to check: ``used`` units in the current window out of ``limit``, asking for ``amount``."""

    kind: str
    scope: Literal["organization", "token"]
    limit: int
    used: int
    amount: int
    reset_ms: int  # until the window has room for ``amount`` again (0 when it has room now)


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    # The check that refused the request, or the tightest one (least remaining) when admitted.
    binding: Check | None
    checks: tuple[Check, ...]

    @property
    def retry_after_ms(self) -> int:
        return self.binding.reset_ms if (self.binding is not None and not self.admitted) else 0


def remaining(check: Check) -> int:
    return max(check.limit - check.used, 0)


def decide(checks: tuple[Check, ...]) -> Decision:
    """Admit when every check has room for its amount. A request bigger than a whole limit (a
    tokens estimate above tokens-per-minute) is admitted into an empty window rather than never."""
    refused = [c for c in checks if c.used + c.amount > c.limit and not (c.used == 0 and c.amount > c.limit)]
    if refused:
        return Decision(False, max(refused, key=lambda c: c.reset_ms), checks)
    tightest = min(checks, key=lambda c: remaining(c) / max(c.limit, 1), default=None)
    return Decision(True, tightest, checks)
