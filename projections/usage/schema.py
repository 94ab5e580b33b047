"""The ClickHouse schema of usage and ledger history: tables, rollup views and their numbered
migrations. Each usage row records the unit rates that priced it, so statements need no price book.
Why each key, partition and codec: docs/architecture.md (ClickHouse)."""

from __future__ import annotations

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
    "priced_micros",
)

# The columns a usage page shows (not the rates, which only statements need).
page_columns = usage_columns[: usage_columns.index("price_version") + 1]

# Rows of one event id share created_at, hence a partition: FINAL need not merge across partitions.
final_settings = " SETTINGS do_not_merge_across_partitions_select_final = 1"

posting_columns = ("event_id", "posting", "created_at", "org_id", "kind", "debit", "credit", "amount_micros")

# Rollup measures: what the materialized views sum per (org, hour|day, token, model, endpoint, source,
# status). Migration 3 created the rollups with the first set; migration 6 added priced_micros (what the
# usage listed at, before a capture was capped at its hold), so statements show caps on a line of
# their own. Migrations keep the set they shipped with.
rollup_measures_v3 = ("requests", "errors", *unit_names, "cost_micros", "latency_ms_sum")
rollup_measures = (*rollup_measures_v3, "priced_micros")


# Rollup dimensions after the bucket. The price version and unit rates are dimensions too (few
# distinct values per model), so statements can be priced from the rollups.
rollup_keys = ("token_id", "model", "endpoint", "source", "status", "price_version", *rate_columns)


def _rollup_table(name: str, bucket: str, measures: tuple[str, ...]) -> str:
    sums = ",\n        ".join(
        f"{m} {'Int64' if m.endswith('_micros') else 'UInt64'} CODEC(T64, ZSTD(1))" for m in measures
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


def hourly_select(source: str, measures: tuple[str, ...] = rollup_measures) -> str:
    sums = ", ".join(f"sum({u}) AS {u}" for u in unit_names)
    keys = ", ".join(rollup_keys)
    priced = ", sum(priced_micros) AS priced_micros" if "priced_micros" in measures else ""
    return f"""
    SELECT org_id, toStartOfHour(toDateTime(created_at, 'UTC')) AS hour, {keys},
        count() AS requests, countIf(status = 'error') AS errors, {sums},
        sum(cost_micros) AS cost_micros, sum(latency_ms) AS latency_ms_sum{priced}
    FROM {source}
    GROUP BY org_id, hour, {keys}
    """


def _daily_view(measures: tuple[str, ...]) -> str:
    """Days from the hourly view's output blocks (a cascade), not from the raw rows: the raw rows are
    grouped once, and every event still reaches a day exactly once."""
    sums = ", ".join(f"sum({m}) AS {m}" for m in measures)
    keys = ", ".join(rollup_keys)
    return f"""
    CREATE MATERIALIZED VIEW IF NOT EXISTS usage_daily_mv TO usage_daily AS
    SELECT org_id, toStartOfDay(hour) AS day, {keys}, {sums}
    FROM usage_hourly
    GROUP BY org_id, day, {keys}
    """


def ledger_daily_select(source: str) -> str:
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
            _rollup_table("usage_hourly", "hour", rollup_measures_v3),
            _rollup_table("usage_daily", "day", rollup_measures_v3),
            "CREATE MATERIALIZED VIEW IF NOT EXISTS usage_hourly_mv TO usage_hourly AS "
            + hourly_select("usage_events", rollup_measures_v3),
            _daily_view(rollup_measures_v3),
            # Rollups of rows written before the views existed (a no-op on a new database); the
            # daily view picks these up from the hourly insert. Emptied first, so a re-run after a
            # crash refills them exactly (migrations run before any writer starts).
            "TRUNCATE TABLE usage_hourly",
            "TRUNCATE TABLE usage_daily",
            "INSERT INTO usage_hourly " + hourly_select("usage_events FINAL", rollup_measures_v3),
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
            + ledger_daily_select("ledger_postings"),
            "TRUNCATE TABLE ledger_daily",
            "INSERT INTO ledger_daily " + ledger_daily_select("ledger_postings FINAL"),
        ),
    ),
    (
        6,
        (
            # What each charge's usage listed at (HoldCaptured.priced_micros): a capture capped at its
            # hold charged less, and statements show that on a line of its own. Rows and rollups written
            # before read it as their cost (no cap), which is what they were, as far as anyone recorded.
            "ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS priced_micros Int64 DEFAULT cost_micros"
            " CODEC(T64, ZSTD(1))",
            "ALTER TABLE usage_hourly ADD COLUMN IF NOT EXISTS priced_micros Int64 DEFAULT cost_micros"
            " CODEC(T64, ZSTD(1))",
            "ALTER TABLE usage_daily ADD COLUMN IF NOT EXISTS priced_micros Int64 DEFAULT cost_micros"
            " CODEC(T64, ZSTD(1))",
            "DROP VIEW IF EXISTS usage_hourly_mv",
            "CREATE MATERIALIZED VIEW IF NOT EXISTS usage_hourly_mv TO usage_hourly AS "
            + hourly_select("usage_events", rollup_measures),
            "DROP VIEW IF EXISTS usage_daily_mv",
            _daily_view(rollup_measures),
        ),
    ),
)
