"""What the usage store reads and writes: raw usage rows, postings, filters, summaries and the
groups statements are built from. Plain structs, no IO."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec


class UsageRow(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str
    created_at: datetime
    org_id: str
    token_id: str
    model: str
    endpoint: str
    source: str
    status: str
    status_code: int
    error: str
    request_id: str
    job_id: str
    latency_ms: int
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    images: int = 0
    audio_seconds: int = 0
    video_seconds: int = 0
    characters: int = 0
    calls: int = 0
    cache_write_tokens: int = 0
    image_input_tokens: int = 0
    audio_input_tokens: int = 0
    reasoning_tokens: int = 0
    search_units: int = 0
    storage_byte_days: int = 0
    web_search_calls: int = 0
    file_search_calls: int = 0
    code_interpreter_calls: int = 0
    cost_micros: int = 0
    price_version: str = ""
    variant: str = ""
    # Micros per million units that priced each of ledger.pricing.unit_names (0 for refusals).
    input_tokens_rate: int = 0
    cached_input_tokens_rate: int = 0
    output_tokens_rate: int = 0
    images_rate: int = 0
    audio_seconds_rate: int = 0
    video_seconds_rate: int = 0
    characters_rate: int = 0
    calls_rate: int = 0
    cache_write_tokens_rate: int = 0
    image_input_tokens_rate: int = 0
    audio_input_tokens_rate: int = 0
    reasoning_tokens_rate: int = 0
    search_units_rate: int = 0
    storage_byte_days_rate: int = 0
    web_search_calls_rate: int = 0
    file_search_calls_rate: int = 0
    code_interpreter_calls_rate: int = 0
    # What the usage listed at (HoldCaptured.priced_micros); above cost_micros when the capture was
    # capped at its hold.
    priced_micros: int = 0
    # The pricing_tier_label of the charge (context tier or image variant), the batch discount that
    # applied, and what the model's minimum charge added to the rounded price.
    pricing_tier: str = ""
    discount_percent: int = 0
    minimum_topup_micros: int = 0
    # What the source names: a hosted agent's instance id ("hosted_agents"), a Playground conversation's
    # id ("playground"); "" for a direct API request.
    source_id: str = ""


class PostingRow(msgspec.Struct, frozen=True, kw_only=True):
    """One double-entry posting: ``amount_micros`` leaves ``debit`` and enters ``credit``."""

    event_id: str
    posting: int
    created_at: datetime
    org_id: str
    kind: str
    debit: str
    credit: str
    amount_micros: int


class UsageFilter(msgspec.Struct, frozen=True, kw_only=True):
    org_id: str
    limit: int = 100
    before: datetime | None = None
    # From usage_cursor: strictly older than (created_at, event_id).
    after_cursor: tuple[datetime, str] | None = None
    start: datetime | None = None
    end: datetime | None = None
    source: str | None = None
    model: str | None = None
    status: str | None = None
    token_id: str | None = None


class UsageSummary(msgspec.Struct, frozen=True, kw_only=True):
    requests: int
    cost_micros: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    errors: int
    avg_latency_ms: int
    # Spend by source (api, playground, gpu_cloud, hosted_agents).
    cost_micros_by_source: dict[str, int] = msgspec.field(default_factory=dict)
    cache_write_tokens: int = 0
    image_input_tokens: int = 0
    audio_input_tokens: int = 0
    reasoning_tokens: int = 0


class RollupRow(msgspec.Struct, frozen=True, kw_only=True):
    """Sums over one bucket (hour or day, or the whole window) and one key (model, token or none)."""

    period_start: datetime | None
    key: str
    requests: int
    errors: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    images: int
    audio_seconds: int
    video_seconds: int
    characters: int
    calls: int
    cost_micros: int
    latency_ms_sum: int
    priced_micros: int = 0
    cache_write_tokens: int = 0
    image_input_tokens: int = 0
    audio_input_tokens: int = 0
    reasoning_tokens: int = 0
    search_units: int = 0
    storage_byte_days: int = 0
    web_search_calls: int = 0
    file_search_calls: int = 0
    code_interpreter_calls: int = 0
    minimum_topup_micros: int = 0


class PricedUsage(msgspec.Struct, frozen=True, kw_only=True):
    """One (model, price version, pricing tier, batch discount, unit, rate) group of a period's charges."""

    model: str
    price_version: str
    unit: str
    rate: int
    quantity: int
    scaled: int  # sum of quantity x rate: micros x 1,000,000, exact (before the discount)
    tier: str = ""
    discount_percent: int = 0


class ChargedTotal(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    price_version: str
    requests: int
    cost_micros: int  # what the ledger charged
    priced_micros: int  # what the usage listed at: cost_micros plus what caps at the hold forgave
    minimum_topup_micros: int = 0  # of priced_micros, what minimum charges added


Granularity = Literal["hour", "day"]
GroupBy = Literal["model", "token", "none"]
