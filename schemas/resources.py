"""What time-metered resources and monthly plans cost, as a price book lists them (issue 18).

A GPU class is billed by the second at an hourly rate per GPU (EmpirioLabs' GPU Cloud); a plan is
charged once a month from the credit balance (its hosted agents). Integer micros only: an hourly rate
of 0.65 credits is 650,000 micros. ``ledger/resources.py`` turns these into charges.
"""

from __future__ import annotations

import msgspec


class GpuClass(msgspec.Struct, frozen=True, kw_only=True):
    """A GPU type of the catalog (``GET /v1/gpu/catalog``): its hourly rate per GPU, in micros."""

    slug: str
    name: str
    hourly_micros: int
    vram_gb: int = 0
    max_gpus: int = 8
    available_count: int = 0
    regions: tuple[str, ...] = ()


class PlanPrice(msgspec.Struct, frozen=True, kw_only=True):
    """A monthly plan (a hosted agent's): charged when accepted and at each renewal, in micros."""

    slug: str
    display_name: str
    monthly_micros: int
    description: str = ""
    included_messages_monthly: int = 0
    replica_min: int = 1
    replica_max: int = 3
