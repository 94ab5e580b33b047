"""The projector role: ledger events to usage rows and ledger postings in ClickHouse.

It flushes in bounded batches, by row count or by wait, at most about once a second under load
(``Settings.sink_flush_interval_ms_min``), and always in this order: write ClickHouse, then commit
the consumed offsets. A crash between the two redelivers the batch; the store drops
event ids it already holds before writing, so neither the raw rows nor the rollups change.

Each usage row records the unit rates that priced it (from the price book version the charge
names), so statements list unit prices from ClickHouse alone. The projector folds
``tollgate.pricing`` for that, and reads it again when a charge names a version it does not know.
"""

from __future__ import annotations

import logging
import threading
import time

from eventlog import Consumer, EventLog, topics
from eventlog.metrics import Metrics
from eventlog.settings import Settings
from ledger.accounts import postings
from ledger.price_feed import PriceFeed
from ledger.pricing import PriceBook, price_breakdown, unit_names, unit_quantities
from ledger.wallet import hold_expired_reason
from projections.usage import PostingRow, UsageRow, UsageStore, rate_columns
from schemas.codec import decode_event
from schemas.events import Event, HoldCaptured, HoldRejected, HoldReleased, PlanRenewed, PlanSubscribed, ResourceCharged

logger = logging.getLogger(__name__)


def failed_status_code(release: HoldReleased) -> int | None:
    """The status a request ended with when its hold was released without a charge because it failed
    (502: the backend failed or the job used up its attempts; 504: nobody finished it in its
    time-to-live); None for a cancellation, which is the client's choice, not an error."""
    if release.reason.startswith(("job_failed", "dead_letter")):
        return 502
    if release.reason == hold_expired_reason:
        return 504
    return None


def usage_row(event: Event, book: PriceBook | None = None) -> UsageRow | None:
    """The usage row a ledger event becomes, if any: a charge, a refusal or a failure. Pure.

    ``book`` is the version that priced a charge; without it (unknown version) the rates are 0 and a
    statement shows the whole charge on the rounding line."""
    if isinstance(event, HoldCaptured):
        units = event.units
        price = book.model(event.model) if book is not None else None
        priced = price_breakdown(price, units) if price is not None else None
        return UsageRow(
            event_id=event.event_id,
            created_at=event.occurred_at,
            org_id=event.org_id,
            token_id=event.token_id,
            model=event.model,
            endpoint=event.endpoint,
            source=event.source or "api",
            source_id=event.source_id,
            status="success",
            status_code=200,
            error="",
            request_id=event.request_id,
            job_id=event.job_id,
            latency_ms=event.latency_ms,
            **dict(zip(unit_names, unit_quantities(units), strict=True)),
            cost_micros=event.amount_micros,
            priced_micros=event.priced_micros,
            price_version=event.price_version,
            variant=units.variant,
            **dict(zip(rate_columns, priced.rates if priced else (0,) * len(rate_columns), strict=True)),
            pricing_tier=priced.tier_label if priced else "",
            discount_percent=priced.discount_percent if priced else 0,
            minimum_topup_micros=priced.minimum_topup_micros if priced else 0,
        )
    if isinstance(event, (ResourceCharged, PlanSubscribed, PlanRenewed)):
        return time_metered_row(event)
    if isinstance(event, HoldRejected):
        return _error_row(event, 402, event.code)
    if isinstance(event, HoldReleased) and (status_code := failed_status_code(event)) is not None:
        return _error_row(event, status_code, event.reason)
    return None


def resource_model(resource_class: str) -> str:
    """The pseudo-model a GPU's charges are listed under (EmpirioLabs' usage events: ``gpu-cloud:h100-nvl``)."""
    return f"gpu-cloud:{resource_class}"


def plan_model(plan_slug: str) -> str:
    return f"hosted-agent:{plan_slug}"


def time_metered_row(event: ResourceCharged | PlanSubscribed | PlanRenewed) -> UsageRow:
    """A resource's interval or a plan's month as a usage row: priced by the ledger at its rate, not by
    units, so every unit is 0. ``variant`` says what a GPU charge covers: "<GPUs>x<seconds>s"."""
    if isinstance(event, ResourceCharged):
        source, model, endpoint, request_id = (
            "gpu_cloud",
            resource_model(event.resource_class),
            f"/v1/gpu/instances/{event.resource_id}",
            event.resource_id,
        )
        variant = f"{event.quantity}x{event.to_s - event.from_s}s"
    else:
        source, model, endpoint, request_id = (
            "hosted_agents",
            plan_model(event.plan_slug),
            f"/v1/hosted-agents/instances/{event.subscription_id}",
            event.subscription_id,
        )
        variant = ""
    return UsageRow(
        event_id=event.event_id,
        created_at=event.occurred_at,
        org_id=event.org_id,
        token_id=event.token_id,
        model=model,
        endpoint=endpoint,
        source=source,
        status="success",
        status_code=200,
        error="",
        request_id=request_id,
        source_id=request_id,  # the instance or agent charged
        job_id="",
        latency_ms=0,
        cost_micros=event.amount_micros,
        priced_micros=event.amount_micros,
        price_version=event.price_version,
        variant=variant,
    )


def _error_row(event: HoldRejected | HoldReleased, status_code: int, error: str) -> UsageRow:
    """A request that was charged nothing: refused, or failed."""
    return UsageRow(
        event_id=event.event_id,
        created_at=event.occurred_at,
        org_id=event.org_id,
        token_id=event.token_id,
        model=event.model,
        endpoint=event.endpoint,
        source=event.source or "api",
        source_id=event.source_id,
        status="error",
        status_code=status_code,
        error=error,
        request_id=event.request_id,
        job_id="",
        latency_ms=0,
    )


def posting_rows(event: Event, kind: str) -> list[PostingRow]:
    """The double-entry postings of a ledger event, as ClickHouse rows. Pure."""
    return [
        PostingRow(
            event_id=event.event_id,
            posting=index,
            created_at=event.occurred_at,
            org_id=event.org_id,
            kind=kind,
            debit=debit,
            credit=credit,
            amount_micros=amount,
        )
        for index, (debit, credit, amount) in enumerate(postings(event))
        if amount > 0
    ]


class ProjectorRole:
    def __init__(
        self,
        log: EventLog,
        settings: Settings,
        store: UsageStore,
        group: str = "tollgate-projector",
        metrics: Metrics | None = None,
    ) -> None:
        """``group``: projectors writing one ClickHouse share a group; each embedded store needs its own."""
        self.group = group
        self._log = log
        self._settings = settings
        self._store = store
        self.rows_written = 0  # new usage rows (redelivered ones are not counted)
        self._price_feed = PriceFeed(
            log, f"tollgate-projector-pricing-{settings.instance_id}", settings.batch_records_max
        )
        self.metrics = metrics or Metrics()
        self._lag = self.metrics.lag_reporter("projector", "ledger")
        self._usage_rows = self.metrics.projector_rows.labels("usage_events")

    def _book(self, version: str) -> PriceBook | None:
        book = self._price_feed.at_version(version)
        if book is None:
            logger.warning("price book version %r is unknown: its charges get no unit rates", version)
        return book

    def run(self, stop: threading.Event) -> None:
        consumer = self._log.consumer(
            [topics.LEDGER],
            client_id=f"tollgate-projector-{self._settings.instance_id}",
            group=self.group,
            fill_wait_ms=self._settings.projector_fill_wait_ms,  # it inserts about once a second anyway
        )
        usage: list[UsageRow] = []
        entries: list[PostingRow] = []
        pending_records = 0
        batch_started = time.monotonic()
        wait_s_max = self._settings.sink_flush_wait_ms_max / 1000
        interval_s_min = self._settings.sink_flush_interval_ms_min / 1000
        next_flush_at = 0.0  # no flush before this (monotonic), unless the batch is full
        caught_up = False
        try:
            self._price_feed.poll(until_caught_up=True)
            while not stop.is_set():
                room = max(self._settings.sink_batch_rows_max - pending_records, 1)
                wait_ms = self._settings.poll_wait_ms
                if pending_records:  # rows wait to be written: until the flush wait, or the next flush allowed
                    due_at = max(next_flush_at, batch_started + wait_s_max)
                    wait_ms = min(wait_ms, max(int((due_at - time.monotonic()) * 1000), 1))
                records = consumer.poll(min(room, self._settings.batch_records_max), wait_ms)
                if records and pending_records == 0:
                    batch_started = time.monotonic()
                for record in records:
                    event = decode_event(record.value)
                    book = self._book(event.price_version) if isinstance(event, HoldCaptured) else None
                    row = usage_row(event, book)
                    if row is not None:
                        usage.append(row)
                    entries.extend(posting_rows(event, type(event).__struct_config__.tag))  # type: ignore[arg-type]
                pending_records += len(records)
                self.metrics.projector_rows_pending.set(pending_records)
                now = time.monotonic()
                caught_up = caught_up or not records
                full = pending_records >= self._settings.sink_batch_rows_max
                due = pending_records > 0 and now >= next_flush_at and (caught_up or now - batch_started >= wait_s_max)
                if full or due:
                    self._flush(consumer, usage, entries, pending_records)
                    usage, entries, pending_records, caught_up = [], [], 0, False
                    next_flush_at = time.monotonic() + interval_s_min
                    self.metrics.projector_rows_pending.set(0)
                self._lag.tick(consumer.lags)
            if pending_records:
                self._flush(consumer, usage, entries, pending_records)
        finally:
            consumer.close()
            self._price_feed.close()

    def _flush(self, consumer: Consumer, usage: list[UsageRow], entries: list[PostingRow], records: int) -> None:
        # Order matters: ClickHouse first, offsets after. A crash in between redelivers the batch,
        # and event-id deduplication makes the second write a no-op.
        started = time.perf_counter()
        written = self._store.insert(usage, entries)
        self.metrics.projector_insert_seconds.observe(time.perf_counter() - started)
        consumer.commit()
        self.rows_written += written
        self._usage_rows.inc(written)
        self.metrics.projector_batch_rows.observe(records)
        visible = time.time()  # queryable from here on: every row's wait since its ledger event
        observe = self.metrics.projector_visible_seconds.observe
        for row in usage:
            observe(max(visible - row.created_at.timestamp(), 0.0))
