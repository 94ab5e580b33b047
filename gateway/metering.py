"""The metering use case: hold a request's worst case, queue its job, and wait for its outcome (or
stream the job's output as it comes).

One ``MeteredRequest`` carries everything a request asks of the ledger and a worker: its endpoint,
the price and price book version, the bound the hold prices and the payload the worker runs (which
obeys that bound: ``gateway/requests.py`` writes it in), built once per request.

Two paths (docs/architecture.md, "One metered request"):
- against a slice (``gateway/quota.py``): the worst case is reserved in memory, the gateway appends
  the hold (to be carved out of the slice) and dispatches the job itself once the hold is written
  (on Kafka; the embedded log writes both in order at once); the answer waits for the worker's outcome;
- through the ledger (no slice, or not enough left of it): the ledger decides the hold and queues the
  job in one transaction, as every request did before slices.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from eventlog import Outgoing, Producer, RecordTooLarge, topics
from eventlog.metrics import Metrics
from eventlog.settings import Settings
from gateway import deferred
from gateway.pending import PendingCharges
from gateway.quota import Quota
from gateway.waiters import Done, Seen, Waiters, earlier_attempt_settled, request_finished
from ledger.pricing import ModelPrice, worst_case_micros
from ledger.wallet import queued_job
from projections.views import ApiToken
from schemas.codec import encode
from schemas.commands import JobSpec, PlaceHold
from schemas.events import Event, JobCancelRequested, JobCompleted
from schemas.ids import event_id_for
from schemas.moments import utc_now
from schemas.prices import Route
from schemas.units import Units

logger = logging.getLogger(__name__)

# Asks the ledger to cancel a job without waiting for its answer: (org id, hold id, job id, reason).
CancelSoon = Callable[[str, str, str, str], None]


class Overloaded(Exception):
    """This gateway already waits on its maximum of requests; a bound, not a queue."""


class OrganizationBusy(Exception):
    """The organization already has its maximum of requests waiting on this gateway."""


class AttemptForgotten(Exception):
    """An earlier attempt of the request (its Idempotency-Key) ended longer ago than jobs are kept, and
    left no answer to replay: its outcome can no longer be told."""


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
    # Media results answered as signed URLs the gateway serves (response_format=url), not inline.
    answer_url: bool = False
    # Where the request came from ("": api; "playground", "hosted_agents") and what that names: its
    # usage row's source (JobSpec.source).
    source: str = ""
    source_id: str = ""
    # The worst case: the bound priced at the priciest model that may serve it, so that a fallback
    # never charges past the hold. Priced once here (a request reads it half a dozen times).
    hold_micros: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        held = max(worst_case_micros(price, self.bound) for price in (self.price, *self.fallbacks))
        object.__setattr__(self, "hold_micros", held)

    @property
    def model(self) -> str:
        return self.price.model

    def price_of(self, model: str) -> ModelPrice:
        """The price of the model that served (the requested one or one of its fallbacks)."""
        for price in (self.price, *self.fallbacks):
            if price.model == model:
                return price
        raise AssertionError(f"{model} may not serve a request for {self.model}")


@dataclass(frozen=True, slots=True)
class Placement:
    """A request on its way: its hold command, and the slice it was reserved against ("": none).
    ``resumed``: an earlier attempt with the same Idempotency-Key placed it, and this one only
    learns its outcome (nothing was placed now)."""

    command: PlaceHold
    slice_id: str
    resumed: bool = False

    @property
    def job_id(self) -> str:
        return self.command.job.job_id


@dataclass(frozen=True, slots=True)
class Attempt:
    """How a request relates to earlier attempts of it (gateway/idempotency.py).

    ``keyed``: its ids derive from an Idempotency-Key, so an earlier attempt may have placed its hold
    and job (the same ids): then this one answers from that attempt's events, already on the log or
    still to come, and places nothing. ``retry``: an earlier attempt began (its claim is on the log)
    and nothing of it is known yet: the hold goes through the ledger, never a slice, because the
    ledger drops a hold it has seen and queues its job once, while a gateway dispatching against its
    slice would queue the job a second time."""

    keyed: bool = False
    retry: bool = False


# What is known of a request's earlier attempt, from the log: (org id, request id, job id) -> the
# events that decide its answer, {} for an attempt known to exist with no such event yet, or None.
EarlierAttempt = Callable[[str, str, str], Seen | None]


def job_id_for(request_id: str) -> str:
    """A request's job id, from its id: every attempt of a request (its Idempotency-Key) names one job."""
    return "job_" + request_id.removeprefix("req_")


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
        earlier: EarlierAttempt = lambda org_id, request_id, job_id: None,
    ) -> None:
        self._settings = settings
        self._producer = producer
        self._waiters = waiters
        self.quota = quota
        self._pending = pending
        self._earlier = earlier
        self.inflight = 0
        self.inflight_by_org: dict[str, int] = {}
        self.org_inflight_max = settings.org_inflight_requests_max or max(1, settings.inflight_requests_max // 2)
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

    def _command(
        self, token: ApiToken, request_id: str, metered: MeteredRequest, slice_id: str, carve_from: str = ""
    ) -> PlaceHold:
        return PlaceHold(
            command_id=request_id,
            org_id=token.org_id,
            issued_at=utc_now(),
            correlation_id=request_id,
            hold_id=request_id,
            request_id=request_id,
            amount_micros=metered.hold_micros,
            ttl_s=self._settings.hold_ttl_s,
            price_version=metered.price_version,
            slice_id=slice_id or carve_from,
            job=JobSpec(
                job_id=job_id_for(request_id),
                token_id=token.token_id,
                model=metered.model,
                endpoint=metered.endpoint,
                pool=metered.price.pool,
                payload=msgspec.Raw(metered.payload),
                attempts_max=self._settings.job_attempts_max,
                stream=metered.stream,
                dispatched=bool(slice_id),
                fallbacks=tuple(Route(model=price.model, pool=price.pool) for price in metered.fallbacks),
                context_length=metered.price.context_length if metered.price.category == "chat" else 0,
                source=metered.source,
                source_id=metered.source_id,
            ),
        )

    def place(
        self,
        token: ApiToken,
        request_id: str,
        metered: MeteredRequest,
        slice_allowed: bool = True,
        carve_from: str = "",
    ) -> Placement:
        """Append the request's hold (and, against this gateway's slice, its job); wait for nothing.
        ``carve_from``: a slice the ledger carves the hold from (a batch's reservation), through the
        ledger (it queues the job)."""
        hold_micros = metered.hold_micros
        slice_allowed = slice_allowed and not carve_from
        slice_id = (self.quota.reserve(token.org_id, hold_micros, request_id) if slice_allowed else None) or ""
        command = self._command(token, request_id, metered, slice_id, carve_from)
        hold = Outgoing(topics.COMMANDS, token.org_id, encode(command))
        # The request's admission goes out with its hold (gateway/deferred.py): one produce request
        # for both on Kafka, one transaction embedded.
        riders = deferred.take()
        try:
            self._append_hold(command, hold, riders, slice_id)
        except RecordTooLarge:
            if slice_id:  # nothing of the hold went out: what was set aside for it is free again
                self.quota.unreserve(request_id)
                self._pending.not_sent(request_id)
            if riders:
                self._producer.send(riders)  # the hold is refused; its admission still counts
            raise
        return Placement(command, slice_id)

    def _append_hold(self, command: PlaceHold, hold: Outgoing, riders: list[Outgoing], slice_id: str) -> None:
        if not slice_id:
            self._producer.send([*riders, hold])
            return
        # The hold first: the ledger must read it before any lease or capture of the job's worker
        # (they follow on the same partition, once the worker has read the job). A log that orders one
        # send across topics (embedded) takes both at once. On Kafka the job waits for its hold to be
        # written: sent together, the job could reach the worker while the hold was still retrying
        # towards a partition's new leader, and the worker's lease and capture, written first, were
        # refused (hold_not_found), the hold then expiring with the work never charged (seen in
        # tests/kafka/test_broker_faults.py once its chats ran).
        job = queued_job(command, command.issued_at)
        dispatch = [Outgoing(topics.dispatch_topic(job.pool), command.org_id, encode(job))]
        self._pending.carving(command.org_id, command.request_id, command.amount_micros)
        if self._producer.ordered_across_topics:
            self._producer.send([*riders, hold, *dispatch])
            return
        # The job goes out from the thread that learns the hold is written (no hop back to the event
        # loop, which cost about 1.5 ms at 64 clients). A hold that could not be written has no job:
        # the request waits out its time and nothing is charged.
        request_id = command.request_id

        def undispatched(error: BaseException) -> None:
            logger.error("the job of %s was not dispatched (its hold or its send failed: %r)", request_id, error)

        self._producer.send_in_turn([hold], dispatch, undispatched)
        if riders:
            # After the hold (which raises, sending nothing, when it or its job is too large), in the
            # same turn of the event loop: they leave in its produce request.
            self._producer.send(riders)

    def _resume_or_place(
        self,
        token: ApiToken,
        request_id: str,
        metered: MeteredRequest,
        attempt: Attempt,
        future: asyncio.Future[Seen],
        wait_for: Done,
        carve_from: str = "",
    ) -> Placement:
        """With the waiter registered (so no later event is missed): an earlier attempt's placement,
        its events given to the waiter (which waits for the ledger's charge of a completion, too), or
        a new placement."""
        earlier = self._earlier(token.org_id, request_id, job_id_for(request_id)) if attempt.keyed else None
        if earlier is None:
            return self.place(token, request_id, metered, slice_allowed=not attempt.retry, carve_from=carve_from)
        settled = earlier_attempt_settled if wait_for is request_finished else None
        self._waiters.seed(request_id, future, earlier, settled)
        return Placement(self._command(token, request_id, metered, ""), "", resumed=True)

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

    def _admit(self, org_id: str) -> None:
        """Count a request in, or refuse it: the gateway's bound first, then the organization's."""
        if self.inflight >= self._settings.inflight_requests_max:
            raise Overloaded(self._settings.inflight_requests_max)
        held = self.inflight_by_org.get(org_id, 0)
        if held >= self.org_inflight_max:
            raise OrganizationBusy(self.org_inflight_max)
        self.inflight += 1
        self.inflight_by_org[org_id] = held + 1

    def _leave(self, org_id: str) -> None:
        self.inflight -= 1
        left = self.inflight_by_org.get(org_id, 0) - 1
        if left > 0:
            self.inflight_by_org[org_id] = left
        else:
            self.inflight_by_org.pop(org_id, None)

    def has_earlier(self, org_id: str, request_id: str) -> bool:
        """Whether an earlier attempt of this request (its Idempotency-Key) is known on the log."""
        return self._earlier(org_id, request_id, job_id_for(request_id)) is not None

    async def run(
        self,
        token: ApiToken,
        request_id: str,
        metered: MeteredRequest,
        wait_for: Done = request_finished,
        attempt: Attempt = Attempt(),
        carve_from: str = "",
    ) -> tuple[Placement, Seen]:
        """Place the request and wait for its outcome (or, with ``wait_for=request_admitted``, only for
        its hold). An async request against a slice waits for its hold too, though its job is already
        dispatched: the job shows in /v1/jobs from the ledger's HoldPlaced on, and a 202 before it
        gave a client that polled at once a 404 for the job it was just given. An earlier attempt of it
        (``attempt``) is answered from its events instead: at once when they are on the log already,
        else when they come, within the same bound (an async one at once: its job is known)."""
        self._admit(token.org_id)
        started = time.perf_counter()
        future = self._waiters.expect(request_id, wait_for)
        try:
            placement = self._resume_or_place(token, request_id, metered, attempt, future, wait_for, carve_from)
            if metered.run_async and placement.resumed:
                return placement, future.result() if future.done() else {}
            seen = await asyncio.wait_for(future, self._settings.request_wait_s_max)
            if not placement.resumed:
                self._observe_added(metered.endpoint, started, seen)
            return placement, seen
        finally:
            self._leave(token.org_id)
            self._waiters.forget(request_id, future)

    async def stream(
        self,
        token: ApiToken,
        request_id: str,
        metered: MeteredRequest,
        on_abandoned: CancelSoon,
        attempt: Attempt = Attempt(),
    ) -> AsyncGenerator[Event | Placement, None]:
        """Like ``run``, yielding the placement, then every event of the request as it comes, up to its
        end. A client that goes away before the end cancels the job (``on_abandoned``): it is charged
        for the work done."""
        self._admit(token.org_id)
        subscription = self._waiters.subscribe(request_id, request_finished)
        finished = False
        deadline = asyncio.get_running_loop().time() + self._settings.request_wait_s_max
        placement: Placement | None = None
        try:
            placement = self.place(token, request_id, metered, slice_allowed=not attempt.retry)
            yield placement
            async for event in subscription.events(deadline):
                yield event
            finished = True
        finally:
            self._leave(token.org_id)
            self._waiters.forget(request_id, subscription.future)
            if not finished and placement is not None:
                on_abandoned(token.org_id, request_id, placement.job_id, "client_disconnected")
