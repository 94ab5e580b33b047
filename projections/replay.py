"""Projections rebuilt from the log: ClickHouse usage rows (with their rollups and postings) into a
fresh store, and statements computed from the ledger events alone, to compare with the live ones."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from eventlog import EventLog, partition_for, topics
from ledger.audit_cli import price_books, read_topic
from ledger.pricing import PriceBooks, unit_names, unit_quantities, unit_rates
from projections.role import posting_rows, usage_row
from projections.statements import Statement, build_statement, load_statement, statement_days_max, statement_json
from projections.usage_store import ChargedTotal, PostingRow, PricedUsage, UsageRow, UsageStore
from schemas.codec import decode_event
from schemas.events import CreditsRefunded, HoldCaptured

insert_batch_rows_max = 20_000


def rebuild_usage(
    log: EventLog,
    target: Path,
    since: datetime | None = None,
    until: datetime | None = None,
    start_ms: int | None = None,
) -> tuple[UsageStore, dict[str, Any]]:
    """Every usage row and posting the projector would write, into a fresh store under ``target``:
    of every ledger event, or of those that occurred in [since, until). ``start_ms`` seeks the log
    (by record timestamp) to where such events can begin."""
    if (target / "clickhouse").exists():
        raise SystemExit(f"{target / 'clickhouse'} exists; replay builds into a fresh target")
    store = UsageStore(path=target / "clickhouse")
    books = price_books(log)
    usage: list[UsageRow] = []
    postings: list[PostingRow] = []
    events = 0
    for batch in read_topic(log, topics.LEDGER, label="usage rows", start_ms=start_ms):
        for record in batch:
            event = decode_event(record.value)
            # occurred_at, not the record's timestamp: it is the created_at the live rows carry and
            # the live API's window selects on.
            if (since is not None and event.occurred_at < since) or (until is not None and event.occurred_at >= until):
                continue
            events += 1
            book = books.at_version(event.price_version) if isinstance(event, HoldCaptured) else None
            row = usage_row(event, book)
            if row is not None:
                usage.append(row)
            postings.extend(posting_rows(event, type(event).__struct_config__.tag))  # type: ignore[arg-type]
            if len(usage) + len(postings) >= insert_batch_rows_max:
                store.insert(usage, postings)
                usage, postings = [], []
    store.insert(usage, postings)
    raw = store.raw_totals_by_org()
    daily = store.rollup_totals_by_org("usage_daily")
    return store, {
        "events": events,
        "organizations": len(raw),
        "rows": sum(requests for requests, _ in raw.values()),
        "cost_micros": sum(cost for _, cost in raw.values()),
        "rollups_agree": daily == raw and store.rollup_totals_by_org("usage_hourly") == raw,
    }


def compare_usage(
    store: UsageStore,
    admin: httpx.Client,
    since: datetime | None = None,
    until: datetime | None = None,
    orgs: set[str] | None = None,
) -> list[str]:
    """The rebuilt rows against the live usage API, organization by organization.

    The whole log: (requests, cost) of every row, refusals included, from ``usage/by-token`` with no
    window. From ``since``: the statements of [since, until), live against the same statement of the
    rebuilt store. A statement's window is exact to the millisecond (whole days from the rollups, the
    partial days from the raw rows), while ``from`` of ``usage/by-token`` selects whole days, so a
    --since that is not midnight would compare different windows. A statement covers the charges
    (quantities, per-model request counts, amounts) and the refunds, not the zero-cost refusals."""
    rebuilt = store.raw_totals_by_org()
    if since is None:
        return _compare_all_time(rebuilt, admin, set(rebuilt) | (orgs or set()))
    end = until if until is not None else datetime.now(UTC)
    mismatches: list[str] = []
    for org_id in sorted(set(rebuilt) | (orgs or set())):
        start = since
        while start < end:
            stop = min(start + timedelta(days=statement_days_max), end)
            mismatches += _compare_statement(store, admin, org_id, start, stop)
            start = stop
    return mismatches


def _compare_all_time(rebuilt: dict[str, tuple[int, int]], admin: httpx.Client, orgs: set[str]) -> list[str]:
    mismatches = []
    for org_id in sorted(orgs):
        live = admin.get(f"/v1/organizations/{org_id}/usage/by-token")
        if live.status_code != 200:
            mismatches.append(f"usage {org_id}: the gateway answered {live.status_code}")
            continue
        rows = live.json()["data"]
        live_totals = (sum(r["requests"] for r in rows), sum(r["cost_micros"] for r in rows))
        if live_totals != rebuilt.get(org_id, (0, 0)):
            mismatches.append(
                f"usage {org_id}: (requests, cost) live {live_totals}, rebuilt {rebuilt.get(org_id, (0, 0))}"
            )
    return mismatches


def _statement_figures(body: dict[str, Any]) -> dict[str, Any]:
    """The exact (integer) parts of a statement's JSON; the decimal renderings follow from them."""
    return {
        "lines": [
            (
                line["model"],
                line["price_version"],
                line["unit"],
                line["quantity"],
                line["unit_price_micros_per_million"],
                line["amount_micros"],
            )
            for line in body["lines"]
        ],
        "charges_micros": body["charges_micros"],
        "refunds_micros": body["refunds_micros"],
        "total_micros": body["total_micros"],
        "ledger_charges_micros": body["ledger"]["charges_micros"],
        "ledger_refunds_micros": body["ledger"]["refunds_micros"],
    }


def _compare_statement(
    store: UsageStore, admin: httpx.Client, org_id: str, start: datetime, end: datetime
) -> list[str]:
    period = f"[{start.isoformat()}, {end.isoformat()})"
    live = admin.get(
        f"/v1/organizations/{org_id}/statements", params={"from": start.isoformat(), "to": end.isoformat()}
    )
    if live.status_code != 200:
        return [f"usage {org_id} {period}: the gateway answered {live.status_code}"]
    live_figures = _statement_figures(live.json())
    rebuilt = _statement_figures(statement_json(load_statement(store, org_id, start, end)))
    return [
        f"usage {org_id} {period}: {name} live {live_figures[name]}, rebuilt {rebuilt[name]}"
        for name in rebuilt
        if live_figures[name] != rebuilt[name]
    ]


def statement_from_log(log: EventLog, org_id: str, start: datetime, end: datetime) -> Statement:
    """The statement of [start, end) from the ledger events alone, allocated as ClickHouse's is."""
    books: PriceBooks = price_books(log)
    scaled: dict[tuple[str, str, str, int], list[int]] = defaultdict(lambda: [0, 0])
    charged: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    refunds = 0
    partition = partition_for(org_id.encode(), log.partitions)
    for batch in read_topic(log, topics.LEDGER, partitions=[partition], quiet=True):
        for record in batch:
            if record.key != org_id.encode():
                continue
            event = decode_event(record.value)
            if not start <= event.occurred_at < end:
                continue
            if isinstance(event, CreditsRefunded):
                refunds += event.amount_micros
            if not isinstance(event, HoldCaptured):
                continue
            book = books.at_version(event.price_version)
            price = book.model(event.model) if book is not None else None
            rates = unit_rates(price, event.units) if price is not None else (0,) * len(unit_names)
            for unit, quantity, rate in zip(unit_names, unit_quantities(event.units), rates, strict=True):
                if quantity > 0:
                    group = scaled[(event.model, event.price_version, unit, rate)]
                    group[0] += quantity
                    group[1] += quantity * rate
            total = charged[(event.model, event.price_version)]
            total[0] += 1
            total[1] += event.amount_micros
    priced = [
        PricedUsage(model=m, price_version=v, unit=u, rate=r, quantity=q, scaled=s)
        for (m, v, u, r), (q, s) in sorted(scaled.items())
    ]
    totals = [
        ChargedTotal(model=m, price_version=v, requests=n, cost_micros=c) for (m, v), (n, c) in sorted(charged.items())
    ]
    posted = {"hold.captured.v1": sum(c for _, c in charged.values()), "credits.refunded.v1": refunds}
    return build_statement(org_id, start, end, priced, totals, posted)
