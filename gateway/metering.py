"""The metering use case: hold a request's worst case, queue its job, and wait for its outcome (or
stream the job's output as it comes).

One ``MeteredRequest`` carries everything a request asks of the ledger and a worker: its endpoint,
the price and price book version, the bound the hold prices and the payload the worker runs (which
obeys that bound: ``gateway/requests.py`` writes it in), built once per request.

Two paths (docs/architecture.md, "One metered request"):
- against a slice (``gateway/quota.py``): the worst case is reserved in memory, the gateway appends
  the hold (to be carved out of the slice) and dispatches the job itself, in that order, without
  waiting for either; the answer waits only for the worker's outcome;
- through the ledger (no slice, or not enough left of it): the ledger decides the hold and queues the
  job in one transaction, as every request did before slices.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from eventlog import Outgoing, Producer, topics
from eventlog.metrics import Metrics
from eventlog.settings import Settings
from gateway.pending import PendingCharges
from gateway.quota import Quota
from gateway.waiters import Done, Seen, Waiters, request_finished
from ledger.pricing import ModelPrice, worst_case_micros
from ledger.wallet import queued_job
from projections.views import ApiToken
from schemas.codec import encode
from schemas.commands import JobSpec, PlaceHold
from schemas.events import Event, JobCancelRequested, JobCompleted
from schemas.ids import event_id_for, new_id
from schemas.moments import utc_now
from schemas.prices import Route
from schemas.units import Units

# Asks the ledger to cancel a job without waiting for its answer: (org id, hold id, job id, reason).
CancelSoon = Callable[[str, str, str, str], None]


class Overloaded(Exception):
    """This gateway already waits on its maximum of requests; a bound, not a queue."""


@dataclass(frozen=True, slots=True)
class MeteredRequest:
    """What one request asks the ledger to hold and a worker to run."""

    endpoint: str
    price: ModelPrice
    price_version: str
    bound: Units  # the most the request can use: the hold prices this
    payload: bytes  # what the worker runs; it obeys ``bound`` (the output limit is written in)
    run_async: bool = False
    stream: bool = False
    # The models that may serve it when its model's upstream fails (the price book's fallbacks).
    fallbacks: tuple[ModelPrice, ...] = ()

    @property
    def model(self) -> str:
        return self.price.model

    @property
    def hold_micros(self) -> int:
        """The worst case: the bound priced at the priciest model that may serve it, so that a
        fallback never charges past the hold."""
        return max(worst_case_micros(price, self.bound) for price in (self.price, *self.fallbacks))

    def price_of(self, model: str) -> ModelPrice:
        """The price of the model that served (the requested one or one of its fallbacks)."""
        for price in (self.price, *self.fallbacks):
            if price.model == model:
                return price
        raise AssertionError(f"{model} may not serve a request for {self.model}")


@dataclass(frozen=True, slots=True)
class Placement:
    """A request on its way: its hold command, and the slice it was reserved against ("": none)."""

    command: PlaceHold
    slice_id: str

    @property
    def job_id(self) -> str:
        return self.command.job.job_id


class Metering:
    """Places holds with their jobs and waits for their outcomes, at most ``inflight_requests_max``
    at once per gateway."""

    def __init__(
        self,
        settings: Settings,
        producer: Producer,
        waiters: Waiters,
        quota: Quota,
        pending: PendingCharges,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._producer = producer
        self._waiters = waiters
        self.quota = quota
        self._pending = pending
        self.inflight = 0
        self._added_seconds = (metrics or Metrics()).gateway_added_seconds
        self._added_by_endpoint: dict[str, Any] = {}

    def _observe_added(self, endpoint: str, started: float, seen: Seen) -> None:
        """What the gateway and the log added to a sync request beyond its job's own run."""
        completed = seen.get(JobCompleted)
        if not isinstance(completed, JobCompleted):
            return
        histogram = self._added_by_endpoint.get(endpoint)
        if histogram is None:
            histogram = self._added_by_endpoint[endpoint] = self._added_seconds.labels(endpoint)
        histogram.observe(max(time.perf_counter() - started - completed.duration_ms / 1000, 0.0))

    def place(self, token: ApiToken, request_id: str, metered: MeteredRequest) -> Placement:
        """Append the request's hold (and, against a slice, its job); wait for nothing."""
        hold_micros = metered.hold_micros
        slice_id = self.quota.reserve(token.org_id, hold_micros, request_id) or ""
        command = PlaceHold(
            command_id=request_id,
            org_id=token.org_id,
            issued_at=utc_now(),
            correlation_id=request_id,
            hold_id=request_id,
            request_id=request_id,
            amount_micros=hold_micros,
            ttl_s=self._settings.hold_ttl_s,
            price_version=metered.price_version,
            slice_id=slice_id,
            job=JobSpec(
                job_id=new_id("job"),
                token_id=token.token_id,
                model=metered.model,
                endpoint=metered.endpoint,
                pool=metered.price.pool,
                payload=msgspec.Raw(metered.payload),
                attempts_max=self._settings.job_attempts_max,
                stream=metered.stream,
                dispatched=bool(slice_id),
                fallbacks=tuple(Route(model=price.model, pool=price.pool) for price in metered.fallbacks),
            ),
        )
        records = [Outgoing(topics.COMMANDS, token.org_id, encode(command))]
        if slice_id:
            # The hold first: the ledger reads it before any lease or capture of the job's worker
            # (they follow on the same partition, after the worker has read the job).
            job = queued_job(command, command.issued_at)
            records.append(Outgoing(topics.dispatch_topic(job.pool), token.org_id, encode(job)))
            self._pending.carving(token.org_id, request_id, hold_micros)
        self._producer.send(records)
        return Placement(command, slice_id)

    def stop_unheld(self, placement: Placement) -> None:
        """A job dispatched against a slice whose hold the ledger then refused (the slice could not
        cover it and the wallet neither): tell its worker to stop, as the ledger would for a cancel.
        Its capture is refused in any case (there is no hold), so it is never charged."""
        command = placement.command
        stop = JobCancelRequested(
            event_id=event_id_for(command.command_id, "job.cancel_requested.unheld"),
            occurred_at=utc_now(),
            org_id=command.org_id,
            correlation_id=command.request_id,
            causation_id=command.command_id,
            hold_id=command.hold_id,
            job_id=command.job.job_id,
            request_id=command.request_id,
            pool=command.job.pool,
            reason="hold_rejected",
        )
        self._producer.send([Outgoing(topics.dispatch_topic(stop.pool), command.org_id, encode(stop))])

    def _admit(self) -> None:
        if self.inflight >= self._settings.inflight_requests_max:
            raise Overloaded(self._settings.inflight_requests_max)

    async def run(
        self, token: ApiToken, request_id: str, metered: MeteredRequest, wait_for: Done = request_finished
    ) -> tuple[Placement, Seen]:
        """Place the request and wait for its outcome (or, with ``wait_for=request_admitted``, only for
        its hold). An async request against a slice waits for its hold too, though its job is already
        dispatched: the job shows in /v1/jobs from the ledger's HoldPlaced on, and a 202 before it
        gave a client that polled at once a 404 for the job it was just given."""
        self._admit()
        started = time.perf_counter()
        future = self._waiters.expect(request_id, wait_for)
        self.inflight += 1
        try:
            placement = self.place(token, request_id, metered)
            seen = await asyncio.wait_for(future, self._settings.request_wait_s_max)
            self._observe_added(metered.endpoint, started, seen)
            return placement, seen
        finally:
            self.inflight -= 1
            self._waiters.forget(request_id)

    async def stream(
        self, token: ApiToken, request_id: str, metered: MeteredRequest, on_abandoned: CancelSoon
    ) -> AsyncGenerator[Event | Placement, None]:
        """Like ``run``, yielding the placement, then every event of the request as it comes, up to its
        end. A client that goes away before the end cancels the job (``on_abandoned``): it is charged
        for the work done."""
        self._admit()
        subscription = self._waiters.subscribe(request_id, request_finished)
        self.inflight += 1
        finished = False
        deadline = asyncio.get_running_loop().time() + self._settings.request_wait_s_max
        placement: Placement | None = None
        try:
            placement = self.place(token, request_id, metered)
            yield placement
            async for event in subscription.events(deadline):
                yield event
            finished = True
        finally:
            self.inflight -= 1
            self._waiters.forget(request_id)
            if not finished and placement is not None:
                on_abandoned(token.org_id, request_id, placement.job_id, "client_disconnected")
