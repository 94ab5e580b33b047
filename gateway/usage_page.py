"""What the usage page shows, read from the gateway's folds and ClickHouse: the balance and its daily
history, spend per day and model, the usage log with tier badges and costs, jobs, and the audit
status of the organization's ledger partition. Money stays integer micros up to the template, which
prints exact decimals; the charts plot micros (integers) and only their axis labels divide.

The SQL here is plain ClickHouse SQL with server-side parameters, so it runs unchanged on the embedded
engine and on a server (as the Grafana dashboard's does)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from eventlog import partition_for
from gateway.bodies import balance_card
from gateway.core import GatewayCore
from ledger.accounts import held_account, wallet_account
from ledger.money import micros_to_decimal
from projections.jobs import JobState
from projections.usage import UsageStore
from schemas.prices import ModelPrice

usage_log_rows_max = 50  # rows of the usage log per page
jobs_shown_max = 20
window_days_choices = (7, 30, 90)
window_days_default = 30
models_charted_max = 8  # more models than this are summed as "other" in the spend charts

balance_by_day_sql = """
SELECT toDate(day) AS d,
       sumIf(amount_micros, credit IN ({wallet:String}, {held:String}))
     - sumIf(amount_micros, debit IN ({wallet:String}, {held:String})) AS net_micros
FROM ledger_daily
WHERE org_id = {org:String}
GROUP BY d
ORDER BY d
"""

spend_by_day_sql = """
SELECT toDate(day) AS d, model, sum(cost_micros) AS cost_micros, sum(requests) AS requests
FROM usage_daily
WHERE org_id = {org:String} AND day >= {start:DateTime('UTC')} AND day < {end:DateTime('UTC')}
GROUP BY d, model
ORDER BY d, model
"""

usage_log_sql = """
SELECT created_at, event_id, model, endpoint, status, status_code, error, request_id,
       input_tokens, cached_input_tokens, output_tokens, images, audio_seconds, video_seconds, characters,
       cost_micros, price_version, variant
FROM usage_events FINAL
WHERE org_id = {org:String} AND (created_at, event_id) < ({before_at:DateTime64(3, 'UTC')}, {before_id:String})
ORDER BY created_at DESC, event_id DESC
LIMIT {limit:UInt32}
SETTINGS do_not_merge_across_partitions_select_final = 1
"""

usage_log_columns = (
    "created_at",
    "event_id",
    "model",
    "endpoint",
    "status",
    "status_code",
    "error",
    "request_id",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "images",
    "audio_seconds",
    "video_seconds",
    "characters",
    "cost_micros",
    "price_version",
    "variant",
)


def tier_label(price: ModelPrice | None, prompt_tokens: int, variant: str) -> str:
    """The badge of the rate that priced a row: an image's size and quality, or the context tier a
    long prompt reached (as the pricing's highest tier the prompt is above); "" when there is one rate."""
    if variant:
        return variant.replace("/", " · ")
    if price is None or not price.context_tiers:
        return ""
    above = max((t.above_tokens for t in price.context_tiers if prompt_tokens > t.above_tokens), default=None)
    if above is None:
        return "base context"
    return f"> {above // 1000}K context" if above % 1000 == 0 else f"> {above:,} tokens"


def money(micros: int) -> str:
    """Credits (= USD) with their exact digits, for the template."""
    return f"${micros_to_decimal(micros)}"


@dataclass(slots=True)
class LogRow:
    created_at: datetime
    event_id: str
    model: str
    endpoint: str
    status: str
    status_code: int
    error: str
    request_id: str
    quantity: str
    cost_micros: int
    tier: str

    @property
    def cursor(self) -> str:
        return f"{int(self.created_at.timestamp() * 1000)}_{self.event_id}"


@dataclass(slots=True)
class PageData:
    org_id: str
    org_name: str
    days: int
    start: date
    end: date  # exclusive
    balance: dict[str, Any]
    balance_days: list[tuple[date, int]]
    spend_days: list[date]
    spend_models: list[str]
    spend: dict[str, list[int]]  # model -> micros per day of spend_days
    spend_total_micros: int
    requests_total: int
    log: list[LogRow]
    next_cursor: str | None
    jobs: list[JobState]
    audit: dict[str, Any]
    usage_available: bool = True
    notes: list[str] = field(default_factory=list)

    def chart_data(self) -> dict[str, Any]:
        """What the page's script draws, in integer micros."""
        return {
            "balance": {
                "labels": [d.isoformat() for d, _ in self.balance_days],
                "micros": [m for _, m in self.balance_days],
            },
            "spend_by_day": {
                "labels": [d.isoformat() for d in self.spend_days],
                "models": self.spend_models,
                "micros": [self.spend[m] for m in self.spend_models],
            },
            "spend_by_model": {
                "labels": self.spend_models,
                "micros": [sum(self.spend[m]) for m in self.spend_models],
            },
            "total_micros": self.spend_total_micros,
        }


def _quantity(row: dict[str, Any]) -> str:
    tokens = row["input_tokens"] + row["cached_input_tokens"] + row["output_tokens"]
    parts = []
    if tokens:
        parts.append(f"{row['input_tokens'] + row['cached_input_tokens']:,} in / {row['output_tokens']:,} out")
    for name, unit in (("images", "images"), ("audio_seconds", "s audio"), ("video_seconds", "s video")):
        if row[name]:
            parts.append(f"{row[name]:,} {unit}")
    if row["characters"]:
        parts.append(f"{row['characters']:,} chars")
    return ", ".join(parts) or "-"


def parse_cursor(cursor: str | None) -> tuple[datetime, str]:
    """``<unix ms>_<event id>`` from the page's "older" link; the far future when absent or bad."""
    if cursor:
        at_ms, _, event_id = cursor.partition("_")
        if at_ms.isdigit() and event_id:
            return datetime.fromtimestamp(int(at_ms) / 1000, UTC), event_id
    return datetime(2299, 12, 31, tzinfo=UTC), ""


def balance_days(store: UsageStore, org_id: str, start: date, end: date) -> list[tuple[date, int]]:
    """The balance at the end of each day of [start, end): every posting ever, summed day by day."""
    rows = store.query(
        balance_by_day_sql, {"org": org_id, "wallet": wallet_account(org_id), "held": held_account(org_id)}
    )
    net = {day: int(micros) for day, micros in rows}
    running = sum(micros for day, micros in net.items() if day < start)
    series = []
    day = start
    while day < end:
        running += net.get(day, 0)
        series.append((day, running))
        day += timedelta(days=1)
    return series


def spend(
    store: UsageStore, org_id: str, start: date, end: date
) -> tuple[list[date], list[str], dict[str, list[int]], int, int]:
    """Spend per day and model over [start, end), the biggest models first, the rest as "other"."""
    at = {"org": org_id, "start": datetime.combine(start, datetime.min.time(), UTC)}
    at["end"] = datetime.combine(end, datetime.min.time(), UTC)
    rows = store.query(spend_by_day_sql, at)
    days = [start + timedelta(days=n) for n in range((end - start).days)]
    index = {day: n for n, day in enumerate(days)}
    by_model: dict[str, list[int]] = {}
    requests = 0
    for day, model, cost, count in rows:
        by_model.setdefault(str(model), [0] * len(days))[index[day]] += int(cost)
        requests += int(count)
    ranked = sorted(by_model, key=lambda m: (-sum(by_model[m]), m))
    models = ranked[:models_charted_max]
    if len(ranked) > models_charted_max:
        other = [sum(by_model[m][n] for m in ranked[models_charted_max:]) for n in range(len(days))]
        by_model = {m: by_model[m] for m in models} | {"other": other}
        models.append("other")
    total = sum(sum(values) for values in by_model.values())
    return days, models, {m: by_model[m] for m in models}, total, requests


def usage_log(core: GatewayCore, store: UsageStore, org_id: str, cursor: str | None) -> tuple[list[LogRow], str | None]:
    before_at, before_id = parse_cursor(cursor)
    parameters = {"org": org_id, "before_at": before_at, "before_id": before_id, "limit": usage_log_rows_max + 1}
    found = [dict(zip(usage_log_columns, row, strict=True)) for row in store.query(usage_log_sql, parameters)]
    rows = []
    for row in found[:usage_log_rows_max]:
        book = core.prices.at_version(row["price_version"]) if row["price_version"] else None
        price = book.model(row["model"]) if book is not None else None
        created_at = row["created_at"]
        rows.append(
            LogRow(
                created_at=created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC),
                event_id=row["event_id"],
                model=row["model"],
                endpoint=row["endpoint"],
                status=row["status"],
                status_code=row["status_code"],
                error=row["error"],
                request_id=row["request_id"],
                quantity=_quantity(row),
                cost_micros=row["cost_micros"],
                tier=tier_label(price, row["input_tokens"] + row["cached_input_tokens"], row["variant"]),
            )
        )
    more = len(found) > usage_log_rows_max
    return rows, rows[-1].cursor if more and rows else None


def audit_status(core: GatewayCore, org_id: str) -> dict[str, Any]:
    """The chain of the organization's ledger partition as this gateway verified it."""
    partition = partition_for(org_id.encode(), core.log.partitions)
    chain = core.chain_watch.partition(partition)
    return {
        "partition": partition,
        "records": chain.records,
        "verified_records": chain.verified_records,
        "unsigned_records": chain.unsigned_records,
        "last_checkpoint_at": chain.last_checkpoint_at,
        "chain_intact": chain.broken_at_offset is None,
        "broken_at_offset": chain.broken_at_offset,
        "bad_signatures": chain.bad_signatures,
        "key_known": core.chain_watch.public_key is not None,
    }


def page_data(core: GatewayCore, org_id: str, days: int, cursor: str | None, today: date | None = None) -> PageData:
    today = today or datetime.now(UTC).date()
    end = today + timedelta(days=1)
    start = end - timedelta(days=days)
    organization = core.tenants.organizations.get(org_id)
    store = core.usage_store
    data = PageData(
        org_id=org_id,
        org_name=organization.name if organization is not None else org_id,
        days=days,
        start=start,
        end=end,
        balance=balance_card(core, org_id),
        balance_days=[],
        spend_days=[],
        spend_models=[],
        spend={},
        spend_total_micros=0,
        requests_total=0,
        log=[],
        next_cursor=None,
        jobs=core.jobs.list(org_id, jobs_shown_max),
        audit=audit_status(core, org_id),
    )
    if store is None:
        data.usage_available = False
        data.notes.append("Usage history is not served by this gateway (set TOLLGATE_CLICKHOUSE_URL).")
        return data
    data.balance_days = balance_days(store, org_id, start, end)
    data.spend_days, data.spend_models, data.spend, data.spend_total_micros, data.requests_total = spend(
        store, org_id, start, end
    )
    data.log, data.next_cursor = usage_log(core, store, org_id, cursor)
    return data
