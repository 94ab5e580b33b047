"""The usage store: usage rows, rollups and ledger postings in ClickHouse, through clickhouse-connect only.

One store class serves both modes: a ClickHouse server by URL (production) or the embedded chdb
engine (clickhouse-connect's chdb interface) in the data directory. One process owns an embedded
path. ``tests/test_usage_store_contract.py`` runs one suite on both.

Deduplication by event id, in two places:
- ``insert`` drops the events ClickHouse already holds (and repeats within the batch) before it
  writes, so the materialized views that keep the rollups only ever see an event once;
- ``usage_events`` and ``ledger_postings`` are ReplacingMergeTree tables whose sorting key ends in
  the event id, read with FINAL, so raw totals stay exact even if two writers raced past the check.

Schema changes are numbered migrations recorded in ``schema_migrations``; ``migrate`` applies the
ones a database lacks, in order. One process may run it at a time: an embedded store migrates on
open (one process owns its path); on a server, ``tollgate migrate`` runs once before the roles, which
open the store with ``migrate=False`` and refuse a database that lacks a migration
(``require_schema``), since two roles migrating at once would race.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
import msgspec
from clickhouse_connect.driver.exceptions import ClickHouseError

from ledger.pricing import tiered_units, unit_names
from projections.usage.cursors import parse_posting_cursor
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
from projections.usage.schema import (
    final_settings,
    hourly_select,
    ledger_daily_select,
    legacy_projector_group,
    migrations,
    page_columns,
    posting_columns,
    rollup_measures,
    usage_columns,
)
from projections.usage.windows import floor_to_bucket, split_window

# Prompt and generated token kinds the summary adds beyond input, cached input and output.
_summary_token_kinds = ("cache_write_tokens", "image_input_tokens", "audio_input_tokens", "reasoning_tokens")


def _rows(result: Any, kind: type[Any], columns: Sequence[str]) -> list[Any]:
    return [kind(**dict(zip(columns, row, strict=True))) for row in result.result_rows]


class StoreUnavailable(Exception):
    """The ClickHouse server cannot serve this store (unreachable, no such database, schema behind);
    the message says what to do."""


def _server_error(url: str, error: Exception) -> StoreUnavailable:
    text = str(error)
    if "UNKNOWN_DATABASE" in text or "Code: 81." in text:
        return StoreUnavailable(
            f"ClickHouse at {url} has no database {database_of(url)!r}: `tollgate migrate` creates it and its tables"
        )
    return StoreUnavailable(f"cannot reach ClickHouse at {url}: {text.splitlines()[0] if text else error!r}")


def database_of(url: str) -> str:
    """The database a ClickHouse URL names (``http://host:8123/usage`` -> ``usage``), else ``default``."""
    return urlsplit(url).path.strip("/") or "default"


def create_database(url: str) -> None:
    """Create the database ``url`` names, unless it exists (``tollgate migrate``, replay's target)."""
    database = database_of(url)
    assert database.replace("_", "").isalnum(), f"a database name of letters, digits and _: {database!r}"
    parts = urlsplit(url)
    try:
        client = clickhouse_connect.get_client(dsn=urlunsplit(parts._replace(path="")), dedicated_pool=True)
    except (ClickHouseError, OSError) as error:
        raise _server_error(url, error) from None
    try:
        client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    finally:
        client.close()


def database_exists(url: str) -> bool:
    parts = urlsplit(url)
    try:
        client = clickhouse_connect.get_client(dsn=urlunsplit(parts._replace(path="")), dedicated_pool=True)
    except (ClickHouseError, OSError) as error:
        raise _server_error(url, error) from None
    try:
        found = client.query(
            "SELECT count() FROM system.databases WHERE name = {name:String}", {"name": database_of(url)}
        )
        return bool(found.result_rows[0][0])
    finally:
        client.close()


def drop_database(url: str) -> None:
    database = database_of(url)
    assert database.replace("_", "").isalnum() and database != "default", database
    client = clickhouse_connect.get_client(dsn=urlunsplit(urlsplit(url)._replace(path="")), dedicated_pool=True)
    try:
        client.command(f"DROP DATABASE IF EXISTS `{database}`")
    finally:
        client.close()


class UsageStore:
    def __init__(self, url: str = "", path: Path | None = None, migrate: bool = True) -> None:
        """A ClickHouse server by ``url`` (``http://host:8123/database``), or the embedded engine in
        ``path``. ``migrate``: apply missing migrations now (only where no other process can be
        migrating the same database at once; see the module docstring)."""
        if url:
            try:
                self._client = clickhouse_connect.get_client(dsn=url, dedicated_pool=True)
            except (ClickHouseError, OSError) as error:
                raise _server_error(url, error) from None
        else:
            assert path is not None, "the embedded engine needs a path"
            path.mkdir(parents=True, exist_ok=True)
            self._client = clickhouse_connect.get_client(interface="chdb", path=str(path))
        self.mode = "server" if url else "embedded"
        self.url = url
        self.rollup_rebuilds = 0  # (organization, day) buckets rebuilt after a redelivery
        # clickhouse-connect clients are not safe for concurrent use; the gateway and projector share one.
        self._lock = threading.Lock()
        if migrate:
            self.migrate()

    # --- schema ---

    def pending_migrations(self) -> list[int]:
        """The migrations this database lacks, in order (all of them in a database without the schema)."""
        with self._lock:
            exists = self._client.command("EXISTS TABLE schema_migrations")
            done: set[int] = set()
            if int(str(exists).strip() or 0):
                done = {int(r[0]) for r in self._client.query("SELECT version FROM schema_migrations").result_rows}
        return [version for version, _ in migrations if version not in done]

    def require_schema(self) -> None:
        """Refuse a database that lacks a migration, saying how to apply it."""
        pending = self.pending_migrations()
        if pending:
            where = f"ClickHouse at {self.url}" if self.url else "the embedded ClickHouse store"
            raise StoreUnavailable(
                f"{where} lacks schema migrations {pending}: run `tollgate migrate` (once, before the roles start)"
            )

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

    def projector_group(self) -> str:
        """The consumer group of the projectors writing this database, made with it (migration 9)."""
        with self._lock:
            rows = self._client.query(
                "SELECT projector_group FROM store_identity ORDER BY created_at, projector_group LIMIT 1"
            ).result_rows
        if not rows:  # migration 9 always writes one; a row deleted by hand falls back to the old name
            return legacy_projector_group
        return str(rows[0][0])

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
            known_usage = self._known_event_ids("usage_events", usage)
            fresh_usage = _first_per_event(usage, known_usage)
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
            # A redelivered batch (the events are in the raw tables already) may follow a crash between
            # a raw table's part and its views' parts, which one INSERT writes one after the other: the
            # rollups of those days may lack the events. Rebuild them from the raw rows (idempotent).
            self._rebuild_days("usage", {(r.org_id, r.created_at) for r in usage if r.event_id in known_usage})
            self._rebuild_days("ledger", {(r.org_id, r.created_at) for r in ledger if r.event_id in known})
        return len(fresh_usage)

    def _rebuild_days(self, kind: Literal["usage", "ledger"], moments: set[tuple[str, datetime]]) -> None:
        """Recompute whole (organization, day) buckets of the rollups from the raw rows. The daily
        usage rollup is fed by the hourly one, so both are emptied for the day and the hourly one is
        refilled (the cascade refills the daily); postings have one daily rollup."""
        if not moments:
            return
        days = sorted({(org_id, floor_to_bucket(moment, "day")) for org_id, moment in moments})
        self.rollup_rebuilds += len(days)
        parameters = {"days": days}
        in_days = "{days:Array(Tuple(String, DateTime('UTC')))}"
        if kind == "usage":
            self._client.command(f"DELETE FROM usage_daily WHERE (org_id, day) IN {in_days}", parameters=parameters)
            self._client.command(
                f"DELETE FROM usage_hourly WHERE (org_id, toStartOfDay(hour)) IN {in_days}", parameters=parameters
            )
            raw = f"(SELECT * FROM usage_events FINAL WHERE (org_id, toStartOfDay(created_at, 'UTC')) IN {in_days})"
            self._client.command("INSERT INTO usage_hourly " + hourly_select(raw), parameters=parameters)
        else:
            self._client.command(f"DELETE FROM ledger_daily WHERE (org_id, day) IN {in_days}", parameters=parameters)
            raw = f"(SELECT * FROM ledger_postings FINAL WHERE (org_id, toStartOfDay(created_at, 'UTC')) IN {in_days})"
            self._client.command("INSERT INTO ledger_daily " + ledger_daily_select(raw), parameters=parameters)

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
            *(f"sum({unit})" for unit in _summary_token_kinds),
        )
        rolled = (
            "sum(requests)",
            "sum(cost_micros)",
            "sum(input_tokens)",
            "sum(cached_input_tokens)",
            "sum(output_tokens)",
            "sum(errors)",
            "sum(latency_ms_sum)",
            *(f"sum({unit})" for unit in _summary_token_kinds),
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
        totals = [0] * (7 + len(_summary_token_kinds))
        by_source: dict[str, int] = {}
        for source, *values in rows:
            by_source[str(source)] = by_source.get(str(source), 0) + int(values[1])
            totals = [t + int(v) for t, v in zip(totals, values, strict=True)]
        requests, cost, input_tokens, cached, output, errors, latency_sum, *kinds = totals
        return UsageSummary(
            requests=requests,
            cost_micros=cost,
            input_tokens=input_tokens,
            cached_input_tokens=cached,
            output_tokens=output,
            errors=errors,
            avg_latency_ms=0 if requests == 0 else round(latency_sum / requests),
            cost_micros_by_source=by_source,
            **dict(zip(_summary_token_kinds, kinds, strict=True)),
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
            parameters["start"] = floor_to_bucket(start, bucket)
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
        """Charged quantities in [start, end) per (model, price version, pricing tier, batch discount,
        unit, rate), with the exact sum of quantity x rate (Int128: a month of image charges overflows
        64 bits). Whole days come from ``usage_daily`` (tier, discount and rates are among its
        dimensions), the partial days from the raw rows."""
        units = ", ".join(f"('{u}', {u}, {u}_rate)" for u in unit_names)
        parameters: dict[str, Any] = {"org_id": org_id}
        split = split_window(start, end, "day")
        own = "org_id = {org_id:String} AND status = 'success'"
        # A unit's line names the tier only when the tier chose its rate (ledger.pricing.tiered_units).
        tiered = ", ".join(f"'{u}'" for u in tiered_units)
        columns = "model, price_version, pricing_tier, discount_percent"
        groups = "model, price_version, tier, discount_percent"
        query = (
            f"SELECT {groups}, u.1 AS unit, u.3 AS rate, sum(u.2) AS quantity,"
            " sum(toInt128(u.2) * toInt128(u.3)) AS scaled,"
            f" if(unit IN ({tiered}), pricing_tier, '') AS tier FROM ("
            f" SELECT {columns}, arrayJoin([{units}]) AS u FROM usage_events FINAL"
            f" WHERE {own} AND {split.raw_condition(parameters)}"
            f" UNION ALL SELECT {columns}, arrayJoin([{units}]) AS u FROM usage_daily"
            f" WHERE {own} AND {split.rollup_condition(parameters)}"
            f") WHERE u.2 > 0 GROUP BY {groups}, unit, rate ORDER BY {groups}, unit, rate" + final_settings
        )
        with self._lock:
            rows = self._client.query(query, parameters=parameters).result_rows
        return [
            PricedUsage(
                model=str(model),
                price_version=str(version),
                tier=str(tier),
                discount_percent=int(discount),
                unit=str(unit),
                rate=int(rate),
                quantity=int(quantity),
                scaled=int(scaled),
            )
            for model, version, tier, discount, unit, rate, quantity, scaled, _ in rows
        ]

    def charged_totals(self, org_id: str, start: datetime, end: datetime) -> list[ChargedTotal]:
        """Requests and charges in [start, end) per (model, price version): whole days from
        ``usage_daily``, the partial days from the raw rows."""
        parameters: dict[str, Any] = {"org_id": org_id}
        split = split_window(start, end, "day")
        own = "org_id = {org_id:String} AND status = 'success'"
        query = (
            "SELECT model, price_version, sum(n), sum(c), sum(p), sum(t) FROM ("
            " SELECT model, price_version, count() AS n, sum(cost_micros) AS c, sum(priced_micros) AS p,"
            " sum(minimum_topup_micros) AS t FROM usage_events FINAL"
            f" WHERE {own} AND {split.raw_condition(parameters)} GROUP BY model, price_version"
            " UNION ALL SELECT model, price_version, sum(requests) AS n, sum(cost_micros) AS c,"
            " sum(priced_micros) AS p, sum(minimum_topup_micros) AS t FROM usage_daily"
            f" WHERE {own} AND {split.rollup_condition(parameters)} GROUP BY model, price_version"
            ") GROUP BY model, price_version ORDER BY model, price_version" + final_settings
        )
        with self._lock:
            rows = self._client.query(query, parameters=parameters).result_rows
        return [
            ChargedTotal(
                model=str(m),
                price_version=str(v),
                requests=int(n),
                cost_micros=int(c),
                priced_micros=int(p),
                minimum_topup_micros=int(t),
            )
            for m, v, n, c, p, t in rows
        ]

    def posted_totals(self, org_id: str, start: datetime, end: datetime) -> dict[str, int]:
        """What the ledger posted in [start, end), by event kind: charges (captures, resource intervals
        and plan months: -> revenue) and refunds (refunds -> wallet). Whole days from ``ledger_daily``,
        the partial days from ``ledger_postings``."""
        parameters: dict[str, Any] = {"org_id": org_id}
        split = split_window(start, end, "day")
        own = "org_id = {org_id:String} AND (credit = 'revenue' OR kind = 'credits.refunded.v1')"
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
            created_at, event_id, posting = parse_posting_cursor(cursor)
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

    def knows_organization(self, org_id: str) -> bool:
        """Whether the organization has any usage row or ledger posting here (every organization
        with credits has postings)."""
        with self._lock:
            rows = self._client.query(
                "SELECT 1 FROM ledger_postings WHERE org_id = {org:String} LIMIT 1"
                " UNION ALL SELECT 1 FROM usage_events WHERE org_id = {org:String} LIMIT 1",
                parameters={"org": org_id},
            ).result_rows
        return bool(rows)

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
