"""The metering use case: hold a request's worst case, queue its job with the hold, and wait for
the charge (or stream the job's output as it comes).

One ``MeteredRequest`` carries everything a request asks of the ledger and a worker: its endpoint,
the price and price book version, the bound the hold prices and the payload the worker runs (which
obeys that bound: ``gateway/requests.py`` writes it in), built once per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

import msgspec

from eventlog import Outgoing, Producer, topics
from eventlog.settings import Settings
from gateway.waiters import Done, Seen, Waiters, request_finished
from ledger.pricing import ModelPrice, price_micros
from projections.views import ApiToken
from schemas.codec import encode
from schemas.commands import JobSpec, PlaceHold
from schemas.events import Event, RequestAccepted
from schemas.ids import new_id
from schemas.moments import utc_now
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

    @property
    def model(self) -> str:
        return self.price.model

    @property
    def hold_micros(self) -> int:
        return price_micros(self.price, self.bound)


class Metering:
    """Places holds with their jobs and waits for their outcomes, at most ``inflight_requests_max``
    at once per gateway."""

    def __init__(self, settings: Settings, producer: Producer, waiters: Waiters) -> None:
        self._settings = settings
        self._producer = producer
        self._waiters = waiters
        self.inflight = 0

    def _records(self, token: ApiToken, request_id: str, metered: MeteredRequest) -> tuple[str, list[Outgoing]]:
        now = utc_now()
        job_id = new_id("job")
        hold_micros = metered.hold_micros
        command = PlaceHold(
            command_id=request_id,
            org_id=token.org_id,
            issued_at=now,
            correlation_id=request_id,
            hold_id=request_id,
            request_id=request_id,
            amount_micros=hold_micros,
            ttl_s=self._settings.hold_ttl_s,
            price_version=metered.price_version,
            job=JobSpec(
                job_id=job_id,
                token_id=token.token_id,
                model=metered.model,
                endpoint=metered.endpoint,
                pool=metered.price.pool,
                payload=msgspec.Raw(metered.payload),
                attempts_max=self._settings.job_attempts_max,
                stream=metered.stream,
            ),
        )
        accepted = RequestAccepted(
            event_id=new_id("evt"),
            occurred_at=now,
            org_id=token.org_id,
            correlation_id=request_id,
            request_id=request_id,
            token_id=token.token_id,
            endpoint=metered.endpoint,
            model=metered.model,
            hold_micros=hold_micros,
        )
        return job_id, [
            Outgoing(topics.REQUESTS, token.org_id, encode(accepted)),
            Outgoing(topics.COMMANDS, token.org_id, encode(command)),
        ]

    def _admit(self) -> None:
        if self.inflight >= self._settings.inflight_requests_max:
            raise Overloaded(self._settings.inflight_requests_max)

    async def run(
        self, token: ApiToken, request_id: str, metered: MeteredRequest, wait_for: Done = request_finished
    ) -> Seen:
        """Ask the ledger for a hold (it queues the job with it) and wait for the charge or refusal
        (or, with ``wait_for=request_admitted``, only for the hold)."""
        _, records = self._records(token, request_id, metered)
        self._admit()
        future = self._waiters.expect(request_id, wait_for)
        self.inflight += 1
        try:
            self._producer.send(records)
            return await asyncio.wait_for(future, self._settings.request_wait_s_max)
        finally:
            self.inflight -= 1
            self._waiters.forget(request_id)

    async def stream(
        self, token: ApiToken, request_id: str, metered: MeteredRequest, on_abandoned: CancelSoon
    ) -> AsyncGenerator[Event, None]:
        """Like ``run``, yielding every event of the request as it comes, up to its end. A client that
        goes away before the end cancels the job (``on_abandoned``): it is charged for the work done."""
        job_id, records = self._records(token, request_id, metered)
        self._admit()
        subscription = self._waiters.subscribe(request_id, request_finished)
        self.inflight += 1
        finished = False
        deadline = asyncio.get_running_loop().time() + self._settings.request_wait_s_max
        try:
            self._producer.send(records)
            async for event in subscription.events(deadline):
                yield event
            finished = True
        finally:
            self.inflight -= 1
            self._waiters.forget(request_id)
            if not finished:
                on_abandoned(token.org_id, request_id, job_id, "client_disconnected")
