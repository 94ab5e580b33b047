"""Usage rows and ledger entries in ClickHouse, through clickhouse-connect only.

One client class serves both modes: a server by URL (production) or the embedded chdb engine
(clickhouse-connect's chdb interface) in the data directory. One process owns an embedded path.

Rows are deduplicated by event id: ReplacingMergeTree whose sorting key ends in the event id, read
with FINAL, so a redelivered batch changes no total.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import clickhouse_connect
import msgspec

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
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "images",
    "audio_seconds",
    "video_seconds",
    "characters",
    "calls",
    "cost_micros",
    "price_version",
)

posting_columns = ("event_id", "posting", "created_at", "org_id", "kind", "debit", "credit", "amount_micros")

_migrations = (
    """
    CREATE TABLE IF NOT EXISTS usage_events (
        event_id String,
        created_at DateTime64(3, 'UTC') CODEC(Delta, ZSTD),
        org_id String,
        token_id String,
        model LowCardinality(String),
        endpoint LowCardinality(String),
        source LowCardinality(String),
        status LowCardinality(String),
        status_code UInt16,
        error String,
        request_id String,
        job_id String,
        latency_ms UInt32,
        input_tokens UInt64,
        cached_input_tokens UInt64,
        output_tokens UInt64,
        images UInt32,
        audio_seconds UInt32,
        video_seconds UInt32,
        characters UInt64,
        calls UInt32,
        cost_micros Int64,
        price_version LowCardinality(String)
    ) ENGINE = ReplacingMergeTree
    PARTITION BY toYYYYMM(created_at)
    ORDER BY (org_id, created_at, event_id)
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


def _parse_cursor(cursor: str) -> tuple[datetime, str, int]:
    try:
        created_at, event_id, posting = cursor.split("~")
        return datetime.fromisoformat(created_at), event_id, int(posting)
    except ValueError as error:
        raise CursorError(f"cursor {cursor!r} is not one this API returned") from error


class UsageFilter(msgspec.Struct, frozen=True, kw_only=True):
    org_id: str
    limit: int = 100
    before: datetime | None = None
    start: datetime | None = None
    end: datetime | None = None
    source: str | None = None
    model: str | None = None
    status: str | None = None


class UsageSummary(msgspec.Struct, frozen=True, kw_only=True):
    requests: int
    cost_micros: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    errors: int
    avg_latency_ms: int


class UsageStore:
    def __init__(self, url: str = "", path: Path | None = None) -> None:
        if url:
            self._client = clickhouse_connect.get_client(dsn=url)
        else:
            assert path is not None, "the embedded engine needs a path"
            path.mkdir(parents=True, exist_ok=True)
            self._client = clickhouse_connect.get_client(interface="chdb", path=str(path))
        # clickhouse-connect clients are not safe for concurrent use; the gateway and projector share one.
        self._lock = threading.Lock()
        self.migrate()

    def migrate(self) -> None:
        with self._lock:
            for statement in _migrations:
                self._client.command(statement)

    def insert(self, usage: Sequence[UsageRow], ledger: Sequence[PostingRow]) -> None:
        with self._lock:
            if usage:
                self._client.insert(
                    "usage_events",
                    [[getattr(row, c) for c in usage_columns] for row in usage],
                    column_names=list(usage_columns),
                )
            if ledger:
                self._client.insert(
                    "ledger_postings",
                    [[getattr(row, c) for c in posting_columns] for row in ledger],
                    column_names=list(posting_columns),
                )

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
        labels: tuple[tuple[str, str | None], ...] = (
            ("source", selection.source),
            ("model", selection.model),
            ("status", selection.status),
        )
        for column, label in labels:
            if label is not None:
                clauses.append(f"{column} = {{{column}:String}}")
                parameters[column] = label
        return " AND ".join(clauses), parameters

    def events(self, selection: UsageFilter) -> list[UsageRow]:
        where, parameters = self._where(selection)
        parameters["limit"] = selection.limit
        query = (
            f"SELECT {', '.join(usage_columns)} FROM usage_events FINAL WHERE {where} "
            "ORDER BY created_at DESC, event_id DESC LIMIT {limit:UInt32}"
        )
        with self._lock:
            result = self._client.query(query, parameters=parameters)
        return [UsageRow(**dict(zip(usage_columns, row, strict=True))) for row in result.result_rows]

    def summary(self, selection: UsageFilter) -> UsageSummary:
        where, parameters = self._where(selection)
        query = (
            "SELECT count(), sum(cost_micros), sum(input_tokens), sum(cached_input_tokens), sum(output_tokens), "
            f"countIf(status = 'error'), avg(latency_ms) FROM usage_events FINAL WHERE {where}"
        )
        with self._lock:
            row = self._client.query(query, parameters=parameters).result_rows[0]
        requests, cost, input_tokens, cached, output, errors, latency = row
        return UsageSummary(
            requests=int(requests),
            cost_micros=int(cost or 0),
            input_tokens=int(input_tokens or 0),
            cached_input_tokens=int(cached or 0),
            output_tokens=int(output or 0),
            errors=int(errors),
            avg_latency_ms=0 if requests == 0 or latency != latency else round(latency),
        )

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
            rows = self._client.query(query, parameters=parameters).result_rows
        return [PostingRow(**dict(zip(posting_columns, row, strict=True))) for row in rows]

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

    def close(self) -> None:
        with self._lock:
            self._client.close()
