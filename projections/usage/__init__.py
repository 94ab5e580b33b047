"""Usage rows, rollups and ledger postings in ClickHouse (through clickhouse-connect only): the
schema and its migrations (``schema``), the rows (``rows``), page cursors (``cursors``), time windows
over rollups (``windows``) and the store that reads and writes them (``store``)."""

from projections.usage.cursors import CursorError, parse_usage_cursor, posting_cursor, usage_cursor
from projections.usage.rows import (
    ChargedTotal,
    Granularity,
    GroupBy,
    PostingRow,
    PricedUsage,
    RollupRow,
    UsageFilter,
    UsageRow,
    UsageSummary,
)
from projections.usage.schema import rate_columns
from projections.usage.store import (
    StoreUnavailable,
    UsageStore,
    create_database,
    database_exists,
    database_of,
    drop_database,
)

__all__ = [
    "ChargedTotal",
    "CursorError",
    "Granularity",
    "GroupBy",
    "PostingRow",
    "PricedUsage",
    "RollupRow",
    "StoreUnavailable",
    "UsageFilter",
    "UsageRow",
    "UsageStore",
    "UsageSummary",
    "create_database",
    "database_exists",
    "database_of",
    "drop_database",
    "parse_usage_cursor",
    "posting_cursor",
    "rate_columns",
    "usage_cursor",
]
