"""Batches, as OpenAI's Batch API: ``POST /v1/batches``, ``GET /v1/batches``, ``GET
/v1/batches/{id}`` and ``POST /v1/batches/{id}/cancel`` (``gateway/batches.py`` runs them).
Another organization's batch is a 404."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

from litestar import Request, Response, get, post
from litestar.params import FromPath

from gateway.auth import authorize
from gateway.batches import BatchRunner, Line, batch_body, parse_lines, parser_for
from gateway.core import Core, GatewayCore
from gateway.errors import ApiError
from gateway.http import decode, derived_id, json_response, limit_param, read_body
from ledger.money import format_credits
from projections.batches import BatchState
from schemas.api import CreateBatch
from schemas.commands import GrantSlice
from schemas.events import BatchCancelRequested, BatchCreated, SliceGranted
from schemas.ids import new_id
from schemas.moments import utc_now

BATCHES = "/v1/batches"
batches_page_size_max = 100
completion_window = timedelta(hours=24)
cancel_wait_s = 30.0
cancel_poll_s = 0.05
reservation_ttl = completion_window + timedelta(hours=1)  # a batch's gateway that died: its reservation comes back


def _found(core: GatewayCore, org_id: str, batch_id: str) -> BatchState:
    batch = core.batches.get(org_id, batch_id)
    if batch is None:
        raise ApiError(404, f"No batch '{batch_id}' in this organization.", code="batch_not_found", param="batch_id")
    return batch


async def resume_batches(core: GatewayCore) -> None:
    """At the app's start: run again the batches this instance was running when it stopped."""
    await _runner(core).resume()


def _runner(core: GatewayCore) -> BatchRunner:
    if core.batch_runner is None:
        core.batch_runner = BatchRunner(core)
    runner: BatchRunner = core.batch_runner
    return runner


async def _reserve(core: GatewayCore, org_id: str, batch_id: str, lines: list[Line]) -> str:
    """One reservation for the batch's worst case (every line that can run, at its worst case at batch
    prices), decided by the ledger: a slice of the balance that only this batch's lines are held
    against, each captured on its own, what is left returned when the batch ends. "" when no line
    can run; a 402 when the balance cannot cover it."""
    worst = sum(line.metered.hold_micros for line in lines if line.metered is not None)
    if worst == 0:
        return ""
    slice_id = f"slice_{batch_id}"
    command = GrantSlice(
        command_id=f"reserve:{batch_id}",
        org_id=org_id,
        issued_at=utc_now(),
        correlation_id=batch_id,
        slice_id=slice_id,
        instance_id=f"batch:{batch_id}",
        amount_micros=worst,
        minimum_micros=worst,
        ttl_s=int(reservation_ttl.total_seconds()),
        whole=True,
    )
    outcome = await core.ledger_command(command)
    if not isinstance(outcome, SliceGranted):
        spendable = core.balances.get(org_id).spendable_micros
        raise ApiError(
            402,
            f"Insufficient credits: this batch may cost up to {format_credits(worst)} credits at batch prices and "
            f"{format_credits(max(spendable, 0))} are available. Add credits, or send fewer requests.",
            code="insufficient_credits",
        )
    return slice_id


@post(BATCHES, operation_id="createBatch", opt={"scope": "user:write"}, status_code=200)
async def create_batch(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    token = authorize(request, "user:write")
    body = decode(await read_body(request, core.settings.request_body_bytes_max), CreateBatch)
    record = core.stored_files.get(token.org_id, body.input_file_id)
    if record is None:
        raise ApiError(
            404, f"No file '{body.input_file_id}' in this organization.", code="file_not_found", param="input_file_id"
        )
    if record.purpose != "batch":
        raise ApiError(
            400, "The input file must be uploaded with purpose 'batch'.", code="invalid_file", param="input_file_id"
        )
    data = await asyncio.to_thread(core.blobs.get, record.blob_key)
    if data is None:
        raise ApiError(503, "The input file cannot be read right now; retry shortly.", code="file_unavailable")
    parse = parser_for(body.endpoint, token.org_id, core)
    lines = parse_lines(data, body.endpoint, parse, core.settings.sim_knobs)
    batch_id = derived_id(request, "batch")
    if core.batches.get(token.org_id, batch_id) is None:  # a retry with its Idempotency-Key runs it once
        reserved = await _reserve(core, token.org_id, batch_id, lines)
        now = utc_now()
        created = BatchCreated(
            event_id=new_id("evt"),
            occurred_at=now,
            org_id=token.org_id,
            correlation_id=batch_id,
            batch_id=batch_id,
            token_id=token.token_id,
            endpoint=body.endpoint,
            input_file_id=body.input_file_id,
            completion_window=body.completion_window,
            total=len(lines),
            failed=sum(1 for line in lines if line.metered is None),
            expires_at=now + completion_window,
            metadata=dict(body.metadata or {}),
            instance_id=core.settings.instance_id,
            reserved=reserved,
        )
        await core.record_job_event(created)
        _runner(core).start(token, batch_id, body.endpoint, lines, reserved)
    return json_response(batch_body(_found(core, token.org_id, batch_id)))


@get(BATCHES, operation_id="listBatches", opt={"scope": "user:read"})
async def list_batches(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    token = authorize(request, "user:read")
    limit = limit_param(request, default=20, maximum=batches_page_size_max)
    batches, more = core.batches.page(token.org_id, limit, request.query_params.get("after"))
    return json_response(
        {
            "object": "list",
            "data": [batch_body(batch) for batch in batches],
            "first_id": batches[0].batch_id if batches else None,
            "last_id": batches[-1].batch_id if batches else None,
            "has_more": more,
        }
    )


@get(f"{BATCHES}/{{batch_id:str}}", operation_id="retrieveBatch", opt={"scope": "user:read"})
async def retrieve_batch(request: Request[Any, Any, Any], core: Core, batch_id: FromPath[str]) -> Response[bytes]:
    token = authorize(request, "user:read")
    return json_response(batch_body(_found(core, token.org_id, batch_id)))


@post(
    f"{BATCHES}/{{batch_id:str}}/cancel",
    operation_id="cancelBatch",
    opt={"scope": "user:write", "rate": "requests"},
    status_code=200,
)
async def cancel_batch(request: Request[Any, Any, Any], core: Core, batch_id: FromPath[str]) -> Response[bytes]:
    """Lines not started are never run; lines running finish and are charged (``cancelling``, then
    ``cancelled``). The answer waits up to ``cancel_wait_s`` for the batch to end, so that it states
    the batch's final counts and files when it can. A batch that ended already is a 409."""
    token = authorize(request, "user:write")
    batch = _found(core, token.org_id, batch_id)
    if batch.ended_at is not None:
        raise ApiError(409, f"The batch is {batch.status} already.", code="batch_ended", param="batch_id")
    if batch.cancelling_at is None:
        await core.record_job_event(
            BatchCancelRequested(
                event_id=new_id("evt"),
                occurred_at=utc_now(),
                org_id=token.org_id,
                correlation_id=batch_id,
                batch_id=batch_id,
            )
        )
    deadline = time.monotonic() + cancel_wait_s
    while batch.ended_at is None and time.monotonic() < deadline:
        await asyncio.sleep(cancel_poll_s)
    return json_response(batch_body(_found(core, token.org_id, batch_id)))


route_handlers = [create_batch, list_batches, retrieve_batch, cancel_batch]
