"""Projections rebuilt from the log: ClickHouse usage rows (with their rollups and postings) into a
fresh store, and statements computed from the ledger events alone (``tollgate replay`` and ``tollgate
audit statement`` compare them with the live ones)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from eventlog import EventLog, partition_for, topics
from eventlog.read import read_topic
from ledger.price_feed import load_price_books
from ledger.pricing import PriceBooks
from projections.role import posting_rows, time_metered_row, usage_row
from projections.statements import Statement, Tally, build_statement
from projections.usage import PostingRow, UsageRow, UsageStore
from schemas.codec import decode_event
from schemas.events import CreditsRefunded, HoldCaptured, PlanRenewed, PlanSubscribed, ResourceCharged
from schemas.units import Units

insert_batch_rows_max = 20_000


def rebuild_usage(
    log: EventLog,
    store: UsageStore,
    since: datetime | None = None,
    until: datetime | None = None,
    start_ms: int | None = None,
) -> dict[str, Any]:
    """Every usage row and posting the projector would write, into ``store`` (a fresh one): of every
    ledger event, or of those that occurred in [since, until). ``start_ms`` seeks the log (by record
    timestamp) to where such events can begin."""
    books = load_price_books(log)
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
    return {
        "events": events,
        "organizations": len(raw),
        "rows": sum(requests for requests, _ in raw.values()),
        "cost_micros": sum(cost for _, cost in raw.values()),
        "rollups_agree": daily == raw and store.rollup_totals_by_org("usage_hourly") == raw,
    }


def statement_from_log(log: EventLog, org_id: str, start: datetime, end: datetime) -> Statement:
    """The statement of [start, end) from the ledger events alone, allocated as ClickHouse's is."""
    books: PriceBooks = load_price_books(log)
    tally = Tally()
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
            if isinstance(event, (ResourceCharged, PlanSubscribed, PlanRenewed)):
                row = time_metered_row(event)  # charged at its rate: no units
                tally.add(row.model, row.price_version, None, Units(), row.cost_micros, row.priced_micros)
                continue
            if not isinstance(event, HoldCaptured):
                continue
            book = books.at_version(event.price_version)
            price = book.model(event.model) if book is not None else None
            tally.add(event.model, event.price_version, price, event.units, event.amount_micros, event.priced_micros)
    priced, totals = tally.priced_usage(), tally.charged_totals()
    posted = {"hold.captured.v1": tally.charges_micros, "credits.refunded.v1": refunds}
    return build_statement(org_id, start, end, priced, totals, posted)
