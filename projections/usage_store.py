"""Usage rows, rollups and ledger postings in ClickHouse, through clickhouse-connect only.

One store class serves both modes: a ClickHouse server by URL (production) or the embedded chdb
engine (clickhouse-connect's chdb interface) in the data directory. One process owns an embedded
path. ``tests/test_usage_store_contract.py`` runs one suite on both.

Deduplication by event id, in two places:
- ``insert`` drops the events ClickHouse already holds (and repeats within the batch) before it
  writes, so the materialized views that keep the rollups only ever see an event once;
- ``usage_events`` and ``ledger_postings`` are ReplacingMergeTree tables whose sorting key ends in
  the event id, read with FINAL, so raw totals stay exact even if two writers raced past the check.

Schema changes are numbered migrations recorded in ``schema_migrations``; ``migrate`` applies the
ones a database lacks, in order, and is safe to run on every start.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import clickhouse_connect
import msgspec

from ledger.pricing import unit_names

rate_columns = tuple(f"{name}_rate" for name in unit_names)

usage_columns = (
    "event_id",
    "created_at",
    "org_id",
    "token_id",
    "model",
    "endpoint",
    "source",
    "status",
    "status_code",
    "error",
    "request_id",
    "job_id",
    "latency_ms",
    *unit_names,
    "cost_micros",
    "price_version",
    "variant",
    *rate_columns,
)

# The columns a usage page shows (not the rates, which only statements need).
page_columns = usage_columns[: usage_columns.index("price_version") + 1]

# Rows of one event id share created_at, hence a partition: FINAL need not merge across partitions.
final_settings = " SETTINGS do_not_merge_across_partitions_select_final = 1"

posting_columns = ("event_id", "posting", "created_at", "org_id", "kind", "debit", "credit", "amount_micros")

# Rollup measures: what the materialized views sum per (org, hour|day, token, model, endpoint, source, status).
rollup_measures = ("requests", "errors", *unit_names, "cost_micros", "latency_ms_sum")


# Rollup dimensions after the bucket. The price version and unit rates are dimensions too (few
# distinct values per model), so statements can be priced from the rollups.
rollup_keys = ("token_id", "model", "endpoint", "source", "status", "price_version", *rate_columns)


def _rollup_table(name: str, bucket: str) -> str:
    sums = ",\n        ".join(
        f"{m} {'Int64' if m == 'cost_micros' else 'UInt64'} CODEC(T64, ZSTD(1))" for m in rollup_measures
    )
    rates = ",\n        ".join(f"{c} UInt64" for c in rate_columns)
    return f"""
    CREATE TABLE IF NOT EXISTS {name} (
        org_id String,
        {bucket} DateTime('UTC') CODEC(DoubleDelta, ZSTD(1)),
        token_id String,
        model LowCardinality(String),
        endpoint LowCardinality(String),
        source LowCardinality(String),
        status LowCardinality(String),
        price_version LowCardinality(String),
        {rates},
        {sums}
    ) ENGINE = SummingMergeTree
    PARTITION BY toYYYYMM({bucket})
    ORDER BY (org_id, {bucket}, {", ".join(rollup_keys)})
    """


def _hourly_select(source: str) -> str:
    sums = ", ".join(f"sum({u}) AS {u}" for u in unit_names)
    keys = ", ".join(rollup_keys)
    return f"""
    SELECT org_id, toStartOfHour(toDateTime(created_at, 'UTC')) AS hour, {keys},
        count() AS requests, countIf(status = 'error') AS errors, {sums},
        sum(cost_micros) AS cost_micros, sum(latency_ms) AS latency_ms_sum
    FROM {source}
    GROUP BY org_id, hour, {keys}
    """


def _daily_view() -> str:
    """Days from the hourly view's output blocks (a cascade), not from the raw rows: the raw rows are
    grouped once, and every event still reaches a day exactly once."""
    sums = ", ".join(f"sum({m}) AS {m}" for m in rollup_measures)
    keys = ", ".join(rollup_keys)
    return f"""
    CREATE MATERIALIZED VIEW IF NOT EXISTS usage_daily_mv TO usage_daily AS
    SELECT org_id, toStartOfDay(hour) AS day, {keys}, {sums}
    FROM usage_hourly
    GROUP BY org_id, day, {keys}
    """


def _ledger_daily_select(source: str) -> str:
    return f"""
    SELECT org_id, toStartOfDay(toDateTime(created_at, 'UTC')) AS day, kind, debit, credit,
        count() AS postings, sum(amount_micros) AS amount_micros
    FROM {source}
    GROUP BY org_id, day, kind, debit, credit
    """


# Numbered, append-only: a database records the numbers it has applied. Never edit a shipped entry.
migrations: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            """
            CREATE TABLE IF NOT EXISTS usage_events (
                event_id String CODEC(ZSTD(1)),
                created_at DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
                org_id String,
                token_id String CODEC(ZSTD(1)),
                model LowCardinality(String),
                endpoint LowCardinality(String),
                source LowCardinality(String),
                status LowCardinality(String),
                status_code UInt16,
                error LowCardinality(String),
                request_id String CODEC(ZSTD(1)),
                job_id String CODEC(ZSTD(1)),
                latency_ms UInt32 CODEC(T64, ZSTD(1)),
                input_tokens UInt64 CODEC(T64, ZSTD(1)),
                cached_input_tokens UInt64 CODEC(T64, ZSTD(1)),
                output_tokens UInt64 CODEC(T64, ZSTD(1)),
                images UInt32 CODEC(T64, ZSTD(1)),
                audio_seconds UInt32 CODEC(T64, ZSTD(1)),
                video_seconds UInt32 CODEC(T64, ZSTD(1)),
                characters UInt64 CODEC(T64, ZSTD(1)),
                calls UInt32 CODEC(T64, ZSTD(1)),
                cost_micros Int64 CODEC(T64, ZSTD(1)),
                price_version LowCardinality(String)
            ) ENGINE = ReplacingMergeTree
            PARTITION BY toYYYYMM(created_at)
            ORDER BY (org_id, created_at, event_id)
            SETTINGS index_granularity = 1024
            """,
            """
            CREATE TABLE IF NOT EXISTS ledger_postings (
                event_id String,
                posting UInt8,
                created_at DateTime64(3, 'UTC'),
                org_id String,
                kind LowCardinality(String),
                debit LowCardinality(String),
                credit LowCardinality(String),
                amount_micros Int64
            ) ENGINE = ReplacingMergeTree
            ORDER BY (org_id, event_id, posting)
            """,
        ),
    ),
    (
        2,
        (
            # The rates that priced each row, so a statement can list unit prices without the price book.
            "ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS variant LowCardinality(String) DEFAULT ''",
            *(
                f"ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS {c} UInt64 DEFAULT 0 CODEC(T64, ZSTD(1))"
                for c in rate_columns
            ),
        ),
    ),
    (
        3,
        (
            _rollup_table("usage_hourly", "hour"),
            _rollup_table("usage_daily", "day"),
            "CREATE MATERIALIZED VIEW IF NOT EXISTS usage_hourly_mv TO usage_hourly AS "
            + _hourly_select("usage_events"),
            _daily_view(),
            # Rollups of rows written before the views existed (a no-op on a new database); the
            # daily view picks these up from the hourly insert. Emptied first, so a re-run after a
            # crash refills them exactly (migrations run before any writer starts).
            "TRUNCATE TABLE usage_hourly",
            "TRUNCATE TABLE usage_daily",
            "INSERT INTO usage_hourly " + _hourly_select("usage_events FINAL"),
        ),
    ),
    (
        4,
        (
            # ledger_postings sorted by time within an organization (it was by event id), partitioned by
            # month like usage_events: statements and the ledger history read one period of one org.
            # Restartable: every step tolerates a crash after any earlier one.
            "DROP TABLE IF EXISTS ledger_postings_v1",
            "DROP TABLE IF EXISTS ledger_postings_v2",
            """
            CREATE TABLE ledger_postings_v2 (
                event_id String CODEC(ZSTD(1)),
                posting UInt8,
                created_at DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
                org_id String,
                kind LowCardinality(String),
                debit LowCardinality(String),
                credit LowCardinality(String),
                amount_micros Int64 CODEC(T64, ZSTD(1))
            ) ENGINE = ReplacingMergeTree
            PARTITION BY toYYYYMM(created_at)
            ORDER BY (org_id, created_at, event_id, posting)
            """,
            "INSERT INTO ledger_postings_v2 SELECT event_id, posting, created_at, org_id, kind, debit, credit,"
            " amount_micros FROM ledger_postings FINAL",
            "RENAME TABLE ledger_postings TO ledger_postings_v1, ledger_postings_v2 TO ledger_postings",
            "DROP TABLE ledger_postings_v1",
        ),
    ),
    (
        5,
        (
            # Postings per day, so a statement's ledger check reads whole days without raw rows.
            """
            CREATE TABLE IF NOT EXISTS ledger_daily (
                org_id String,
                day DateTime('UTC') CODEC(DoubleDelta, ZSTD(1)),
                kind LowCardinality(String),
                debit LowCardinality(String),
                credit LowCardinality(String),
                postings UInt64 CODEC(T64, ZSTD(1)),
                amount_micros Int64 CODEC(T64, ZSTD(1))
            ) ENGINE = SummingMergeTree
            PARTITION BY toYYYYMM(day)
            ORDER BY (org_id, day, kind, debit, credit)
            """,
            "CREATE MATERIALIZED VIEW IF NOT EXISTS ledger_daily_mv TO ledger_daily AS "
            + _ledger_daily_select("ledger_postings"),
            "TRUNCATE TABLE ledger_daily",
            "INSERT INTO ledger_daily " + _ledger_daily_select("ledger_postings FINAL"),
        ),
    ),
)


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


class CursorError(ValueError):
    """A cursor this store did not hand out."""


def posting_cursor(row: PostingRow) -> str:
    return f"{row.created_at.isoformat()}~{row.event_id}~{row.posting}"


# ClickHouse DateTime64's range: a moment outside it cannot be stored or compared faithfully, so the
# API refuses it at the boundary rather than let a bound wrap or overflow deep in a query.
moment_min = datetime(1900, 1, 1, tzinfo=UTC)
moment_max = datetime(2299, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
_epoch = datetime(1970, 1, 1, tzinfo=UTC)
# Millis since the epoch of any moment in range fit in 13 digits and a sign; more is not ours.
_millis_pattern = re.compile(r"-?[0-9]{1,13}")
_posting_pattern = re.compile(r"[0-9]{1,3}")
posting_index_max = 255  # ledger_postings.posting is a UInt8


def in_moment_range(moment: datetime) -> bool:
    """Whether an aware ``moment`` lies in [moment_min, moment_max]; never raises, whatever its offset."""
    try:
        utc = moment.astimezone(UTC)
    except (OverflowError, ValueError):
        return False  # its UTC form is before year 1 or after 9999
    return moment_min <= utc <= moment_max


def _parse_cursor(cursor: str) -> tuple[datetime, str, int]:
    try:
        created_at, event_id, posting = cursor.split("~")
        moment = datetime.fromisoformat(created_at)
        if not _posting_pattern.fullmatch(posting) or int(posting) > posting_index_max:
            raise ValueError("posting out of range")
        if not in_moment_range(moment if moment.tzinfo else moment.replace(tzinfo=UTC)):
            raise ValueError("moment out of range")
        return moment, event_id, int(posting)
    except ValueError as error:
        raise CursorError(f"cursor {cursor!r} is not one this API returned") from error


cursor_prefix = "cur_"


def usage_cursor(row: UsageRow) -> str:
    """An opaque position after ``row`` in newest-first order: (created_at, event_id), so rows that
    share a millisecond at a page boundary are neither skipped nor repeated."""
    millis = int(row.created_at.timestamp() * 1000 + 0.5)
    raw = f"{millis}:{row.event_id}".encode()
    return cursor_prefix + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_usage_cursor(cursor: str) -> tuple[datetime, str]:
    if not cursor.startswith(cursor_prefix):
        raise CursorError(f"cursor {cursor!r} is not one this API returned")
    body = cursor.removeprefix(cursor_prefix)
    try:
        millis, _, event_id = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode().partition(":")
        if not event_id or not _millis_pattern.fullmatch(millis):
            raise ValueError("no event id, or no millis")
        # Integer arithmetic, no float: exact, and 13 digits cannot overflow a datetime.
        moment = _epoch + timedelta(milliseconds=int(millis))
        if not in_moment_range(moment):
            raise ValueError("moment out of range")
        return moment, event_id
    except (ValueError, OverflowError) as error:
        raise CursorError(f"cursor {cursor!r} is not one this API returned") from error


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


class PricedUsage(msgspec.Struct, frozen=True, kw_only=True):
    """One (model, price version, unit, rate) group of a period's charges."""

    model: str
    price_version: str
    unit: str
    rate: int
    quantity: int
    scaled: int  # sum of quantity x rate: micros x 1,000,000, exact


class ChargedTotal(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    price_version: str
    requests: int
    cost_micros: int


Granularity = Literal["hour", "day"]
GroupBy = Literal["model", "token", "none"]


class WindowSplit(msgspec.Struct, frozen=True):
    """A time window as whole buckets (read from a rollup) and the partial ends (read raw)."""

    bucket: str  # the rollup's bucket column: "hour" or "day"
    raw: tuple[tuple[datetime | None, datetime | None], ...]  # [from, to) ranges of raw rows
    buckets: tuple[datetime | None, datetime | None] | None  # [first, end) of whole buckets, or none

    def raw_condition(self, parameters: dict[str, Any]) -> str:
        ranges = []
        for index, (lo, hi) in enumerate(self.raw):
            bounds = []
            if lo is not None:
                parameters[f"raw{index}_lo"] = lo
                bounds.append(f"created_at >= {{raw{index}_lo:DateTime64(3, 'UTC')}}")
            if hi is not None:
                parameters[f"raw{index}_hi"] = hi
                bounds.append(f"created_at < {{raw{index}_hi:DateTime64(3, 'UTC')}}")
            ranges.append("(" + (" AND ".join(bounds) or "1") + ")")
        return "(" + (" OR ".join(ranges) or "0") + ")"

    def rollup_condition(self, parameters: dict[str, Any]) -> str:
        if self.buckets is None:
            return "0"
        lo, hi = self.buckets
        bounds = []
        if lo is not None:
            parameters["bucket_lo"] = lo
            bounds.append(f"{self.bucket} >= {{bucket_lo:DateTime('UTC')}}")
        if hi is not None:
            parameters["bucket_hi"] = hi
            bounds.append(f"{self.bucket} < {{bucket_hi:DateTime('UTC')}}")
        return "(" + (" AND ".join(bounds) or "1") + ")"


def _floor(moment: datetime, bucket: str) -> datetime:
    moment = moment.astimezone(UTC)
    floored = moment.replace(minute=0, second=0, microsecond=0)
    return floored.replace(hour=0) if bucket == "day" else floored


def split_window(start: datetime | None, end: datetime | None, bucket: str) -> WindowSplit:
    """[start, end) (None: unbounded) as whole hours or days plus the raw partial ends. Pure."""
    step = timedelta(days=1) if bucket == "day" else timedelta(hours=1)
    first = (
        None
        if start is None
        else (_floor(start, bucket) if _floor(start, bucket) == start else _floor(start, bucket) + step)
    )
    last = None if end is None else _floor(end, bucket)
    if first is not None and last is not None and first >= last:
        return WindowSplit(bucket, ((start, end),), None)
    raw: list[tuple[datetime | None, datetime | None]] = []
    if start is not None and first is not None and start < first:
        raw.append((start, first))
    if end is not None and last is not None and last < end:
        raw.append((last, end))
    return WindowSplit(bucket, tuple(raw), (first, last))


def _rows(result: Any, kind: type[Any], columns: Sequence[str]) -> list[Any]:
    return [kind(**dict(zip(columns, row, strict=True))) for row in result.result_rows]


class UsageStore:
    def __init__(self, url: str = "", path: Path | None = None) -> None:
        if url:
            self._client = clickhouse_connect.get_client(dsn=url)
        else:
            assert path is not None, "the embedded engine needs a path"
            path.mkdir(parents=True, exist_ok=True)
            self._client = clickhouse_connect.get_client(interface="chdb", path=str(path))
        self.mode = "server" if url else "embedded"
        # clickhouse-connect clients are not safe for concurrent use; the gateway and projector share one.
        self._lock = threading.Lock()
        self.migrate()

    # --- schema ---

    def migrate(self) -> list[int]:
        """Apply the migrations this database lacks, in order; return their numbers."""
        applied: list[int] = []
        with self._lock:
            self._client.command(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, applied_at DateTime('UTC'))"
                " ENGINE = ReplacingMergeTree ORDER BY version"
            )
            done = {int(r[0]) for r in self._client.query("SELECT version FROM schema_migrations").result_rows}
            for version, statements in migrations:
                if version in done:
                    continue
                for statement in statements:
                    self._client.command(statement)
                self._client.insert(
                    "schema_migrations", [[version, datetime.now(UTC)]], column_names=["version", "applied_at"]
                )
                applied.append(version)
        return applied

    def schema_version(self) -> int:
        with self._lock:
            return int(self._client.query("SELECT max(version) FROM schema_migrations").result_rows[0][0])

    # --- writes ---
    # Every insert: the engine does not collapse each block as a merge would (optimize_on_insert=0):
    # raw tables are read with FINAL, rollups with sum() ... GROUP BY, and insert() drops duplicates
    # within a batch itself, so the collapse only cost time; and the views of one insert run side by
    # side (parallel_view_processing=1). Together 57k -> 157k rows/s in a 200k-row probe, 59k -> 134k
    # in bench/usage.py's 10M-row bulk load, on the 2-core machine.
    insert_settings: dict[str, Any] = {"optimize_on_insert": 0, "parallel_view_processing": 1}

    def _known_event_ids(self, table: str, rows: Sequence[UsageRow] | Sequence[PostingRow]) -> set[str]:
        """The event ids of ``rows`` that ``table`` already holds. The primary key prunes the lookup to
        the batch's organizations and time span, so it stays cheap as the table grows."""
        if not rows:
            return set()
        moments = [row.created_at for row in rows]
        parameters = {
            "orgs": sorted({row.org_id for row in rows}),
            "ids": sorted({row.event_id for row in rows}),
            "lo": min(moments),
            "hi": max(moments),
        }
        query = (
            f"SELECT DISTINCT event_id FROM {table} WHERE org_id IN {{orgs:Array(String)}}"
            " AND created_at >= {lo:DateTime64(3, 'UTC')} AND created_at <= {hi:DateTime64(3, 'UTC')}"
            " AND event_id IN {ids:Array(String)}"
        )
        return {str(r[0]) for r in self._client.query(query, parameters=parameters).result_rows}

    def insert(self, usage: Sequence[UsageRow], ledger: Sequence[PostingRow]) -> int:
        """Write the rows whose event ids are new; return how many usage rows were new.

        Idempotent: a redelivered batch writes nothing, so the rollup views never count an event twice.
        """
        with self._lock:
            fresh_usage = _first_per_event(usage, self._known_event_ids("usage_events", usage))
            if fresh_usage:
                self._client.insert(
                    "usage_events",
                    [[getattr(row, c) for row in fresh_usage] for c in usage_columns],
                    column_names=list(usage_columns),
                    column_oriented=True,
                    settings=self.insert_settings,
                )
            known = self._known_event_ids("ledger_postings", ledger)
            fresh_postings = list({(r.event_id, r.posting): r for r in ledger if r.event_id not in known}.values())
            if fresh_postings:
                self._client.insert(
                    "ledger_postings",
                    [[getattr(row, c) for row in fresh_postings] for c in posting_columns],
                    column_names=list(posting_columns),
                    column_oriented=True,
                    settings=self.insert_settings,
                )
        return len(fresh_usage)

    def insert_columns(self, columns: dict[str, Sequence[Any]], table: str = "usage_events") -> None:
        """Bulk load of rows known to be new (benchmarks, backfills): no duplicate check."""
        assert table.isidentifier(), "a table name"
        with self._lock:
            names = list(columns)
            self._client.insert(
                table,
                [columns[n] for n in names],
                column_names=names,
                column_oriented=True,
                settings=self.insert_settings,
            )

    # --- reads: raw rows ---

    def _where(self, selection: UsageFilter) -> tuple[str, dict[str, Any]]:
        clauses = ["org_id = {org_id:String}"]
        parameters: dict[str, Any] = {"org_id": selection.org_id}
        bounds: tuple[tuple[str, str, datetime | None], ...] = (
            ("<", "before", selection.before),
            (">=", "start", selection.start),
            ("<=", "end", selection.end),
        )
        for op, name, moment in bounds:
            if moment is not None:
                clauses.append(f"created_at {op} {{{name}:DateTime64(3, 'UTC')}}")
                parameters[name] = moment
        if selection.after_cursor is not None:
            clauses.append("(created_at, event_id) < ({cursor_at:DateTime64(3, 'UTC')}, {cursor_id:String})")
            parameters["cursor_at"], parameters["cursor_id"] = selection.after_cursor
        labels: tuple[tuple[str, str | None], ...] = (
            ("source", selection.source),
            ("model", selection.model),
            ("status", selection.status),
            ("token_id", selection.token_id),
        )
        for column, label in labels:
            if label is not None:
                clauses.append(f"{column} = {{{column}:String}}")
                parameters[column] = label
        return " AND ".join(clauses), parameters

    def events(self, selection: UsageFilter) -> list[UsageRow]:
        """One page of an organization's usage rows, newest first (ties broken by event id)."""
        where, parameters = self._where(selection)
        parameters["limit"] = selection.limit
        query = (
            f"SELECT {', '.join(page_columns)} FROM usage_events FINAL WHERE {where} "
            "ORDER BY created_at DESC, event_id DESC LIMIT {limit:UInt32}" + final_settings
        )
        with self._lock:
            result = self._client.query(query, parameters=parameters)
        return _rows(result, UsageRow, page_columns)

    def summary(self, selection: UsageFilter) -> UsageSummary:
        """Totals for the window: whole hours from ``usage_hourly``, the partial hours at either end from
        the raw rows (one query). A page position (``before``, a cursor) reads raw rows only."""
        measures = (
            "count()",
            "sum(cost_micros)",
            "sum(input_tokens)",
            "sum(cached_input_tokens)",
            "sum(output_tokens)",
            "countIf(status = 'error')",
            "sum(latency_ms)",
        )
        rolled = (
            "sum(requests)",
            "sum(cost_micros)",
            "sum(input_tokens)",
            "sum(cached_input_tokens)",
            "sum(output_tokens)",
            "sum(errors)",
            "sum(latency_ms_sum)",
        )
        if selection.before is not None or selection.after_cursor is not None:
            where, parameters = self._where(selection)
            query = f"SELECT source, {', '.join(measures)} FROM usage_events FINAL WHERE {where} GROUP BY source"
        else:
            labels, parameters = self._where(msgspec.structs.replace(selection, start=None, end=None))
            end = selection.end + timedelta(milliseconds=1) if selection.end is not None else None  # inclusive
            split = split_window(selection.start, end, "hour")
            query = (
                f"SELECT source, {', '.join(f'sum(m{i})' for i in range(len(measures)))} FROM ("
                f"SELECT source, {', '.join(f'{m} AS m{i}' for i, m in enumerate(measures))} FROM usage_events FINAL"
                f" WHERE {labels} AND {split.raw_condition(parameters)} GROUP BY source"
                f" UNION ALL SELECT source, {', '.join(f'{m} AS m{i}' for i, m in enumerate(rolled))} FROM usage_hourly"
                f" WHERE {labels} AND {split.rollup_condition(parameters)} GROUP BY source"
                ") GROUP BY source"
            )
        with self._lock:
            rows = self._client.query(query + final_settings, parameters=parameters).result_rows
        totals = [0] * 7
        by_source: dict[str, int] = {}
        for source, *values in rows:
            by_source[str(source)] = by_source.get(str(source), 0) + int(values[1])
            totals = [t + int(v) for t, v in zip(totals, values, strict=True)]
        requests, cost, input_tokens, cached, output, errors, latency_sum = totals
        return UsageSummary(
            requests=requests,
            cost_micros=cost,
            input_tokens=input_tokens,
            cached_input_tokens=cached,
            output_tokens=output,
            errors=errors,
            avg_latency_ms=0 if requests == 0 else round(latency_sum / requests),
            cost_micros_by_source=by_source,
        )

    # --- reads: rollups ---

    def rollup(
        self,
        org_id: str,
        granularity: Granularity,
        group_by: GroupBy,
        start: datetime | None,
        end: datetime | None,
        limit: int,
        by_period: bool = True,
    ) -> list[RollupRow]:
        """Sums from the rollup tables: per bucket (newest first) unless ``by_period`` is False, and per
        model, token or nothing. Buckets are whole hours (days): ``start`` and ``end`` select buckets
        whose start lies in [start truncated to the bucket, end]."""
        table, bucket = ("usage_hourly", "hour") if granularity == "hour" else ("usage_daily", "day")
        key = {"model": "model", "token": "token_id", "none": "''"}[group_by]
        clauses = ["org_id = {org_id:String}"]
        parameters: dict[str, Any] = {"org_id": org_id, "limit": limit}
        if start is not None:
            # Truncated here, not by toDateTime in SQL: DateTime stops at 1970, and an earlier start wrapped
            # round to 2036 and selected nothing.
            clauses.append(f"{bucket} >= {{start:DateTime64(3, 'UTC')}}")
            parameters["start"] = _floor(start, bucket)
        if end is not None:
            clauses.append(f"{bucket} <= {{end:DateTime64(3, 'UTC')}}")
            parameters["end"] = end
        period = bucket if by_period else "toDateTime(0, 'UTC')"
        sums = ", ".join(f"sum({m})" for m in rollup_measures)
        query = (
            f"SELECT {period} AS period, {key} AS key, {sums} FROM {table} WHERE {' AND '.join(clauses)} "
            "GROUP BY period, key ORDER BY period DESC, key LIMIT {limit:UInt32}"
        )
        with self._lock:
            rows = self._client.query(query, parameters=parameters).result_rows
        return [
            RollupRow(
                period_start=period if by_period else None,
                key=str(key_value),
                **{m: int(v) for m, v in zip(rollup_measures, values, strict=True)},
            )
            for period, key_value, *values in rows
        ]

    # --- reads: statements ---

    def priced_usage(self, org_id: str, start: datetime, end: datetime) -> list[PricedUsage]:
        """Charged quantities in [start, end) per (model, price version, unit, rate), with the exact
        sum of quantity x rate (Int128: a month of image charges overflows 64 bits). Whole days come
        from ``usage_daily`` (rates are among its dimensions), the partial days from the raw rows."""
        units = ", ".join(f"('{u}', {u}, {u}_rate)" for u in unit_names)
        parameters: dict[str, Any] = {"org_id": org_id}
        split = split_window(start, end, "day")
        own = "org_id = {org_id:String} AND status = 'success'"
        query = (
            "SELECT model, price_version, u.1 AS unit, u.3 AS rate, sum(u.2) AS quantity,"
            " sum(toInt128(u.2) * toInt128(u.3)) AS scaled FROM ("
            f" SELECT model, price_version, arrayJoin([{units}]) AS u FROM usage_events FINAL"
            f" WHERE {own} AND {split.raw_condition(parameters)}"
            f" UNION ALL SELECT model, price_version, arrayJoin([{units}]) AS u FROM usage_daily"
            f" WHERE {own} AND {split.rollup_condition(parameters)}"
            ") WHERE u.2 > 0 GROUP BY model, price_version, unit, rate ORDER BY model, price_version, unit, rate"
            + final_settings
        )
        with self._lock:
            rows = self._client.query(query, parameters=parameters).result_rows
        return [
            PricedUsage(
                model=str(model),
                price_version=str(version),
                unit=str(unit),
                rate=int(rate),
                quantity=int(quantity),
                scaled=int(scaled),
            )
            for model, version, unit, rate, quantity, scaled in rows
        ]

    def charged_totals(self, org_id: str, start: datetime, end: datetime) -> list[ChargedTotal]:
        """Requests and charges in [start, end) per (model, price version): whole days from
        ``usage_daily``, the partial days from the raw rows."""
        parameters: dict[str, Any] = {"org_id": org_id}
        split = split_window(start, end, "day")
        own = "org_id = {org_id:String} AND status = 'success'"
        query = (
            "SELECT model, price_version, sum(n), sum(c) FROM ("
            " SELECT model, price_version, count() AS n, sum(cost_micros) AS c FROM usage_events FINAL"
            f" WHERE {own} AND {split.raw_condition(parameters)} GROUP BY model, price_version"
            " UNION ALL SELECT model, price_version, sum(requests) AS n, sum(cost_micros) AS c FROM usage_daily"
            f" WHERE {own} AND {split.rollup_condition(parameters)} GROUP BY model, price_version"
            ") GROUP BY model, price_version ORDER BY model, price_version" + final_settings
        )
        with self._lock:
            rows = self._client.query(query, parameters=parameters).result_rows
        return [
            ChargedTotal(model=str(m), price_version=str(v), requests=int(n), cost_micros=int(c)) for m, v, n, c in rows
        ]

    def posted_totals(self, org_id: str, start: datetime, end: datetime) -> dict[str, int]:
        """What the ledger posted in [start, end), by event kind: captures (held -> revenue) and refunds
        (refunds -> wallet). Whole days from ``ledger_daily``, the partial days from ``ledger_postings``."""
        parameters: dict[str, Any] = {"org_id": org_id}
        split = split_window(start, end, "day")
        own = (
            "org_id = {org_id:String}"
            " AND ((kind = 'hold.captured.v1' AND credit = 'revenue') OR kind = 'credits.refunded.v1')"
        )
        query = (
            "SELECT kind, sum(a) FROM ("
            f" SELECT kind, sum(amount_micros) AS a FROM ledger_postings FINAL WHERE {own}"
            f" AND {split.raw_condition(parameters)} GROUP BY kind"
            f" UNION ALL SELECT kind, sum(amount_micros) AS a FROM ledger_daily WHERE {own}"
            f" AND {split.rollup_condition(parameters)} GROUP BY kind"
            ") GROUP BY kind" + final_settings
        )
        with self._lock:
            rows = self._client.query(query, parameters=parameters).result_rows
        return {str(kind): int(total) for kind, total in rows}

    def refunds(self, org_id: str, start: datetime, end: datetime, limit: int) -> list[PostingRow]:
        query = (
            f"SELECT {', '.join(posting_columns)} FROM ledger_postings FINAL WHERE org_id = {{org_id:String}}"
            " AND kind = 'credits.refunded.v1'"
            " AND created_at >= {start:DateTime64(3, 'UTC')} AND created_at < {end:DateTime64(3, 'UTC')}"
            " ORDER BY created_at, event_id, posting LIMIT {limit:UInt32}"
        )
        parameters = {"org_id": org_id, "start": start, "end": end, "limit": limit}
        with self._lock:
            result = self._client.query(query, parameters=parameters)
        return _rows(result, PostingRow, posting_columns)

    # --- reads: ledger ---

    def postings(self, org_id: str, limit: int, cursor: str | None) -> list[PostingRow]:
        """An organization's postings, newest first, after ``cursor`` (from ``posting_cursor``)."""
        parameters: dict[str, Any] = {"org_id": org_id, "limit": limit}
        after = ""
        if cursor:
            created_at, event_id, posting = _parse_cursor(cursor)
            parameters.update(created_at=created_at, event_id=event_id, posting=posting)
            after = (
                " AND (created_at, event_id, posting) < "
                "({created_at:DateTime64(3, 'UTC')}, {event_id:String}, {posting:UInt8})"
            )
        query = (
            f"SELECT {', '.join(posting_columns)} FROM ledger_postings FINAL WHERE org_id = {{org_id:String}}{after} "
            "ORDER BY created_at DESC, event_id DESC, posting DESC LIMIT {limit:UInt32}"
        )
        with self._lock:
            result = self._client.query(query, parameters=parameters)
        return _rows(result, PostingRow, posting_columns)

    def merges_running(self) -> int:
        """Background merges in progress: after a bulk load they compete with queries for CPU."""
        with self._lock:
            return int(self._client.query("SELECT count() FROM system.merges").result_rows[0][0])

    def totals_by_org(self) -> dict[str, tuple[int, int]]:
        """org -> (sum of usage cost, sum of its postings to revenue): they must agree."""
        with self._lock:
            usage_rows = self._client.query(
                "SELECT org_id, sum(cost_micros) FROM usage_events FINAL GROUP BY org_id"
            ).result_rows
            revenue_rows = self._client.query(
                "SELECT org_id, sum(amount_micros) FROM ledger_postings FINAL WHERE credit = 'revenue' GROUP BY org_id"
            ).result_rows
        usage: dict[str, int] = {str(org): int(total) for org, total in usage_rows}
        revenue: dict[str, int] = {str(org): int(total) for org, total in revenue_rows}
        return {org: (usage.get(org, 0), revenue.get(org, 0)) for org in set(usage) | set(revenue)}

    def rollup_totals_by_org(self, table: Literal["usage_hourly", "usage_daily"]) -> dict[str, tuple[int, int]]:
        """org -> (requests, cost) summed from a rollup table: must equal the raw rows' totals."""
        with self._lock:
            rows = self._client.query(
                f"SELECT org_id, sum(requests), sum(cost_micros) FROM {table} GROUP BY org_id"
            ).result_rows
        return {str(org): (int(requests), int(cost)) for org, requests, cost in rows}

    def raw_totals_by_org(self) -> dict[str, tuple[int, int]]:
        with self._lock:
            rows = self._client.query(
                "SELECT org_id, count(), sum(cost_micros) FROM usage_events FINAL GROUP BY org_id"
            ).result_rows
        return {str(org): (int(requests), int(cost)) for org, requests, cost in rows}

    def account_balances(self) -> dict[str, int]:
        """Every account's balance (credits minus debits) from the postings; they sum to zero."""
        with self._lock:
            rows = self._client.query(
                "SELECT account, sum(delta) FROM ("
                " SELECT credit AS account, amount_micros AS delta FROM ledger_postings FINAL"
                " UNION ALL SELECT debit AS account, -amount_micros AS delta FROM ledger_postings FINAL"
                ") GROUP BY account"
            ).result_rows
        return {str(account): int(total) for account, total in rows}

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Plain SQL, for reports, tests and benchmarks."""
        with self._lock:
            return [tuple(row) for row in self._client.query(sql, parameters=parameters or {}).result_rows]

    def command(self, sql: str) -> None:
        with self._lock:
            self._client.command(sql)

    def close(self) -> None:
        with self._lock:
            self._client.close()


def _first_per_event(rows: Sequence[UsageRow], known: set[str]) -> list[UsageRow]:
    """The rows whose event id is neither in ``known`` nor earlier in ``rows``."""
    seen = set(known)
    fresh: list[UsageRow] = []
    for row in rows:
        if row.event_id not in seen:
            seen.add(row.event_id)
            fresh.append(row)
    return fresh
