"""What the Responses and Messages routes share: answering a metered request in a dialect's own body,
and streaming a job's output as the dialect's server-sent events.

A job of these endpoints reports its output in parts (``JobProgressed.part``): the answer's text, the
model's thinking, the thinking's signature, and whole output items (a tool call, a web search) in
the dialect's shape. A ``StreamWriter`` turns each part into the dialect's events; ``relay`` runs the
request from its first output to its end, as the chat stream does: a refusal by the ledger after the
first output (a slice it could not carve) is an error event and no charge; the final event carries
the exact charge, which is what ``x-credits-used`` would say.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.response import Stream

from gateway.core import GatewayCore
from gateway.errors import ApiError
from gateway.http import json_response, request_id
from gateway.metering import MeteredRequest, Placement
from gateway.results import Charge, charge_headers, refusal, shape_result
from gateway.routes.generation import OpenedStream, answered, captured_of, open_stream, run_metered
from gateway.waiters import Seen
from projections.views import ApiToken
from schemas.events import HoldCaptured, HoldRejected, JobCompleted, JobFailed, JobProgressed
from schemas.units import Units
from workers.backends import ITEM, REASONING_SIGNATURE

whole_parts = (ITEM, REASONING_SIGNATURE)  # parts sent whole, never cut


_encoder = msgspec.json.Encoder(decimal_format="number", enc_hook=str)  # cost_usd a number, as in bodies


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    """One server-sent event with its ``event:`` line (Anthropic's SDK reads events by that name)."""
    return b"event: " + name.encode() + b"\ndata: " + _encoder.encode(data) + b"\n\n"


class StreamWriter(abc.ABC):
    """A dialect's events for one streamed request."""

    @abc.abstractmethod
    def start(self, units: Units) -> list[bytes]:
        """The events before any output (``units``: what the first output point measured)."""

    @abc.abstractmethod
    def part(self, part: str, delta: str) -> list[bytes]:
        """The events of one fresh piece of output."""

    @abc.abstractmethod
    def finish(self, body: dict[str, Any], charge: Charge) -> list[bytes]:
        """The events that close a charged answer (``body``: the dialect's whole answer)."""

    @abc.abstractmethod
    def error(self, status: int, message: str, code: str) -> list[bytes]:
        """The events of a stream that ends without an answer (nothing charged)."""


class _Fresh:
    """Output beyond what was sent: a retried run replays its parts from the start (deterministic
    backends), so only what goes past the earlier runs' output is new. Text counts by character, an
    item as one."""

    def __init__(self) -> None:
        self.sent = 0
        self.by_attempt: dict[int, int] = {}

    def __call__(self, event: JobProgressed) -> str | None:
        whole = event.part in whole_parts
        start = self.by_attempt.get(event.attempt, 0)
        size = 1 if whole else len(event.delta)
        self.by_attempt[event.attempt] = start + size
        if start + size <= self.sent:
            return None
        if whole:
            self.sent = start + size
            return event.delta
        fresh = event.delta[max(self.sent - start, 0) :]
        self.sent += len(fresh)
        return fresh


def charge_answer(
    core: GatewayCore,
    token: ApiToken,
    placement: Placement,
    metered: MeteredRequest,
    completed: JobCompleted,
    captured: HoldCaptured | None = None,
) -> tuple[dict[str, Any], Charge]:
    charge = answered(core, token, placement, metered, completed, captured)
    rid = placement.command.request_id
    result = msgspec.json.decode(completed.result)
    return shape_result(metered.endpoint, rid, result, charge, metered.price_of(charge.model)), charge


async def respond(
    request: Request[Any, Any, Any], core: GatewayCore, token: ApiToken, metered: MeteredRequest
) -> Response[bytes]:
    """A whole answer (or the 202 of an async request), with the charge headers."""
    outcome = await run_metered(request, core, token, metered)
    if isinstance(outcome, Response):
        return outcome
    placement, seen = outcome
    completed = seen[JobCompleted]
    assert isinstance(completed, JobCompleted)
    body, charge = charge_answer(core, token, placement, metered, completed, captured_of(seen))
    return json_response(body, headers=charge_headers(charge))


async def stream(
    request: Request[Any, Any, Any],
    core: GatewayCore,
    token: ApiToken,
    metered: MeteredRequest,
    writer_for: Any,
) -> Stream:
    """Hold, wait for the first output (``open_stream``: a refusal is still a plain error), then relay
    the job in ``writer_for(opened)``'s events."""
    if metered.run_async:
        raise ApiError(
            400, "A request is either streamed or async, not both.", code="invalid_parameter", param="stream"
        )
    opened = await open_stream(request, core, token, metered)
    writer: StreamWriter = writer_for(request_id(request), opened)
    return Stream(relay(core, token, metered, opened, writer), media_type="text/event-stream", headers=opened.headers)


async def relay(
    core: GatewayCore, token: ApiToken, metered: MeteredRequest, opened: OpenedStream, writer: StreamWriter
) -> AsyncIterator[bytes]:
    fresh = _Fresh()
    ended: Seen = dict(opened.seen)
    first = opened.first
    try:
        for chunk in writer.start(first.units if isinstance(first, JobProgressed) else Units()):
            yield chunk
        if isinstance(first, JobProgressed):
            for chunk in _relayed(first, fresh, writer):
                yield chunk
        if first is not None:
            async for event in opened.events:
                assert not isinstance(event, Placement)
                ended[type(event)] = event
                if isinstance(event, JobProgressed) and event.delta:
                    for chunk in _relayed(event, fresh, writer):
                        yield chunk
        for chunk in _ending(core, token, metered, opened.placement, ended, writer):
            yield chunk
    except TimeoutError:
        for chunk in writer.error(504, "The job did not finish in time.", "timeout"):
            yield chunk
    finally:
        await opened.events.aclose()


def _relayed(event: JobProgressed, fresh: _Fresh, writer: StreamWriter) -> list[bytes]:
    delta = fresh(event)
    return writer.part(event.part, delta) if delta else []


def _ending(
    core: GatewayCore, token: ApiToken, metered: MeteredRequest, placement: Placement, ended: Seen, writer: StreamWriter
) -> list[bytes]:
    rejected = ended.get(HoldRejected)
    if isinstance(rejected, HoldRejected):  # against a slice: the ledger could not carve the hold
        core.record_rejection(token, placement.command.request_id, metered.endpoint, metered.model, 402, rejected.code)
        core.metering.stop_unheld(placement)
        error = refusal(ended, metered.model)
        assert error is not None
        return writer.error(402, error.message, error.code or "insufficient_credits")
    completed = ended.get(JobCompleted)
    if isinstance(completed, JobCompleted):
        body, charge = charge_answer(core, token, placement, metered, completed)
        return writer.finish(body, charge)
    failed = ended.get(JobFailed)
    message = failed.message if isinstance(failed, JobFailed) else "the job ended without a result"
    code = failed.code if isinstance(failed, JobFailed) else "job_failed"
    return writer.error(502, f"{message}. Nothing was charged.", code)
