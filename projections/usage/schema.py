"""The ClickHouse schema of usage and ledger history: tables, rollup views and their numbered
migrations. Each usage row records the unit rates that priced it, its pricing tier, batch discount
and minimum-charge top-up, so statements need no price book. Why each key, partition and codec:
docs/architecture.md (ClickHouse)."""

from __future__ import annotations

from ledger.pricing import unit_names
from schemas.units import tools

# The units of the first schema (migrations 1 to 6 were written with these, and keep them).
unit_names_v1 = (
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "images",
    "audio_seconds",
    "video_seconds",
    "characters",
    "calls",
)
# Units added by migration 7 (token kinds, search units, storage, tool invocations).
unit_names_v7 = tuple(name for name in unit_names if name not in unit_names_v1)
assert set(unit_names_v1) <= set(unit_names), "a unit is never dropped from the schema"


def _rates(units: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{name}_rate" for name in units)


rate_columns_v1 = _rates(unit_names_v1)
rate_columns = _rates(unit_names)

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
    "pricing_tier",
    "discount_percent",
    "minimum_topup_micros",
    "source_id",  # migration 8
)

# The columns a usage page shows: every unit and what priced it (the usage object of the answer is
# rebuilt from them), and the rates of per-call tools (each event's ``tool_breakdown``); the other
# rates only statements need.
page_columns = (
    *usage_columns[: usage_columns.index("price_version") + 1],
    "variant",
    "pricing_tier",
    "discount_percent",
    *(f"{tool}_calls_rate" for tool in tools),
    "source_id",
)

# Rows of one event id share created_at, hence a partition: FINAL need not merge across partitions.
final_settings = " SETTINGS do_not_merge_across_partitions_select_final = 1"

posting_columns = ("event_id", "posting", "created_at", "org_id", "kind", "debit", "credit", "amount_micros")

# Rollup measures: what the materialized views sum per (org, hour|day, token, model, endpoint, source,
# status, price version, tier, discount, rates). Migration 3 created the rollups with the first set;
# migration 6 added priced_micros (what the usage listed at, before a capture was capped at its hold);
# migration 7 rebuilt them with every unit and the minimum-charge top-ups. Migrations keep the set
# they shipped with.
rollup_measures_v3 = ("requests", "errors", *unit_names_v1, "cost_micros", "latency_ms_sum")
rollup_measures_v6 = (*rollup_measures_v3, "priced_micros")
rollup_measures = (
    "requests",
    "errors",
    *unit_names,
    "cost_micros",
    "latency_ms_sum",
    "priced_micros",
    "minimum_topup_micros",
)


# Rollup dimensions after the bucket. The price version, pricing tier, batch discount and unit rates
# are dimensions too (few distinct values per model), so statements can be priced from the rollups.
rollup_keys_v1 = ("token_id", "model", "endpoint", "source", "status", "price_version", *rate_columns_v1)
rollup_keys = (
    "token_id",
    "model",
    "endpoint",
    "source",
    "status",
    "price_version",
    "pricing_tier",
    "discount_percent",
    *rate_columns,
)
_key_types = {"pricing_tier": "LowCardinality(String)", "discount_percent": "UInt8"}


def _rollup_table(name: str, bucket: str, measures: tuple[str, ...], keys: tuple[str, ...]) -> str:
    sums = ",\n        ".join(
        f"{m} {'Int64' if m.endswith('_micros') else 'UInt64'} CODEC(T64, ZSTD(1))" for m in measures
    )
    key_columns = ",\n        ".join(
        f"{k} {_key_types.get(k, 'UInt64')}" for k in keys if k.endswith("_rate") or k in _key_types
    )
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
        {key_columns},
        {sums}
    ) ENGINE = SummingMergeTree
    PARTITION BY toYYYYMM({bucket})
    ORDER BY (org_id, {bucket}, {", ".join(keys)})
    """


def hourly_select(
    source: str,
    measures: tuple[str, ...] = rollup_measures,
    keys: tuple[str, ...] = rollup_keys,
) -> str:
    units = tuple(m for m in measures if m in unit_names)
    sums = ", ".join(f"sum({u}) AS {u}" for u in units)
    keys_sql = ", ".join(keys)
    extra = "".join(f", sum({m}) AS {m}" for m in ("priced_micros", "minimum_topup_micros") if m in measures)
    return f"""
    SELECT org_id, toStartOfHour(toDateTime(created_at, 'UTC')) AS hour, {keys_sql},
        count() AS requests, countIf(status = 'error') AS errors, {sums},
        sum(cost_micros) AS cost_micros, sum(latency_ms) AS latency_ms_sum{extra}
    FROM {source}
    GROUP BY org_id, hour, {keys_sql}
    """


def _daily_view(measures: tuple[str, ...], keys: tuple[str, ...]) -> str:
    """Days from the hourly view's output blocks (a cascade), not from the raw rows: the raw rows are
    grouped once, and every event still reaches a day exactly once."""
    sums = ", ".join(f"sum({m}) AS {m}" for m in measures)
    keys_sql = ", ".join(keys)
    return f"""
    CREATE MATERIALIZED VIEW IF NOT EXISTS usage_daily_mv TO usage_daily AS
    SELECT org_id, toStartOfDay(hour) AS day, {keys_sql}, {sums}
    FROM usage_hourly
    GROUP BY org_id, day, {keys_sql}
    """


def ledger_daily_select(source: str) -> str:
    return f"""
    SELECT org_id, toStartOfDay(toDateTime(created_at, 'UTC')) AS day, kind, debit, credit,
        count() AS postings, sum(amount_micros) AS amount_micros
    FROM {source}
    GROUP BY org_id, day, kind, debit, credit
    """


# The projector group of databases that held rows before each database had its own (migration 9).
legacy_projector_group = "tollgate-projector"

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
                for c in rate_columns_v1
            ),
        ),
    ),
    (
        3,
        (
            _rollup_table("usage_hourly", "hour", rollup_measures_v3, rollup_keys_v1),
            _rollup_table("usage_daily", "day", rollup_measures_v3, rollup_keys_v1),
            "CREATE MATERIALIZED VIEW IF NOT EXISTS usage_hourly_mv TO usage_hourly AS "
            + hourly_select("usage_events", rollup_measures_v3, rollup_keys_v1),
            _daily_view(rollup_measures_v3, rollup_keys_v1),
            # Rollups of rows written before the views existed (a no-op on a new database); the
            # daily view picks these up from the hourly insert. Emptied first, so a re-run after a
            # crash refills them exactly (migrations run before any writer starts).
            "TRUNCATE TABLE usage_hourly",
            "TRUNCATE TABLE usage_daily",
            "INSERT INTO usage_hourly " + hourly_select("usage_events FINAL", rollup_measures_v3, rollup_keys_v1),
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
            + hourly_select("usage_events", rollup_measures_v6, rollup_keys_v1),
            "DROP VIEW IF EXISTS usage_daily_mv",
            _daily_view(rollup_measures_v6, rollup_keys_v1),
        ),
    ),
    (
        7,
        (
            # Every priced unit (token kinds, search units, storage, tool invocations) with the rate that
            # priced it, and what priced the row beyond its rates: the pricing tier (context tier or
            # image variant), the batch discount and what the minimum charge added. Rows written before
            # read 0 / "" for these: their tier shows in their rates, their top-ups in the rounding line.
            *(
                f"ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS {c} UInt64 DEFAULT 0 CODEC(T64, ZSTD(1))"
                for c in (*unit_names_v7, *_rates(unit_names_v7))
            ),
            "ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS pricing_tier LowCardinality(String) DEFAULT ''",
            "ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS discount_percent UInt8 DEFAULT 0",
            "ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS minimum_topup_micros Int64 DEFAULT 0"
            " CODEC(T64, ZSTD(1))",
            # The rollups gain keys (tier, discount, the new rates: a SummingMergeTree sums any column
            # outside its key) and measures, so they are rebuilt from the raw rows: every step can be
            # re-run after a crash (no writer runs during migrations).
            "DROP VIEW IF EXISTS usage_daily_mv",
            "DROP VIEW IF EXISTS usage_hourly_mv",
            "DROP TABLE IF EXISTS usage_daily",
            "DROP TABLE IF EXISTS usage_hourly",
            _rollup_table("usage_hourly", "hour", rollup_measures, rollup_keys),
            _rollup_table("usage_daily", "day", rollup_measures, rollup_keys),
            "CREATE MATERIALIZED VIEW IF NOT EXISTS usage_hourly_mv TO usage_hourly AS "
            + hourly_select("usage_events", rollup_measures, rollup_keys),
            _daily_view(rollup_measures, rollup_keys),
            "INSERT INTO usage_hourly " + hourly_select("usage_events FINAL", rollup_measures, rollup_keys),
        ),
    ),
    (
        8,
        (
            # What a row's source names (the hosted agent that answered, the Playground conversation);
            # not a rollup key: usage pages show it, rollups group by source only.
            "ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS source_id String DEFAULT '' CODEC(ZSTD(1))",
        ),
    ),
    (
        9,
        (
            # The consumer group of the projectors that write this database, made with it: projectors
            # writing one database share it however its URL is spelled, and a database made anew (a
            # second one on the same log, or one dropped and migrated again) gets a group without
            # positions, so its projector writes every row from the log's beginning. With one shared
            # name, such a database took over the positions an earlier one had reached and never got
            # the rows before them. A database that already holds rows keeps the name that wrote them.
            # The first row is the name (MergeTree keeps every row: a migration re-run after a crash
            # adds nothing that changes which row is first).
            "CREATE TABLE IF NOT EXISTS store_identity (projector_group String, created_at DateTime64(6, 'UTC'))"
            " ENGINE = MergeTree ORDER BY tuple()",
            f"INSERT INTO store_identity SELECT if((SELECT count() FROM usage_events) + (SELECT count() FROM"
            f" ledger_postings) > 0, '{legacy_projector_group}', concat('{legacy_projector_group}-',"
            " replaceAll(toString(generateUUIDv4()), '-', ''))), now64(6)"
            " WHERE (SELECT count() FROM store_identity) = 0",
        ),
    ),
)
