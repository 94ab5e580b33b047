"""Jobs: ``GET /v1/jobs``, ``GET /v1/jobs/{id}`` and ``DELETE /v1/jobs/{id}`` (cancel).

Another organization's job does not exist for the caller (404, never 403)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
from litestar import Request, Response, delete, get
from litestar.params import FromPath

from gateway.auth import authorize, authorize_admin
from gateway.core import Core, GatewayCore
from gateway.errors import ApiError
from gateway.http import json_response, limit_param
from gateway.requests import IMAGES, VIDEOS
from gateway.results import asked_for_url, shape_result
from gateway.routes.media import linked
from ledger.money import micros_to_decimal
from ledger.pricing import PriceBooks
from projections.jobs import JobState
from schemas.events import CommandRejected, HoldReleased
from schemas.moments import iso_or_none

jobs_page_size_max = 100


def job_body(job: JobState, prices: PriceBooks) -> dict[str, Any]:
    result: Any = None
    if job.result is not None and job.charged is not None and job.status == "completed":
        charged = job.charged
        book = prices.at_version(charged.price_version)
        price = book.model(charged.model) if book is not None else None
        result = shape_result(job.endpoint, job.request_id, msgspec.json.decode(job.result), charged, price)
    elif job.result is not None and job.status == "cancelled":
        result = msgspec.json.decode(job.result)
    error = job_error(job)
    return {
        "id": job.job_id,
        "job_id": job.job_id,
        "object": "job",
        "status": job.status,
        "progress": Decimal(job.progress_milli) / 1000,
        "model": job.model,
        "endpoint": job.endpoint,
        "request_id": job.request_id,
        "attempt": job.attempt,
        "cancel_requested": job.cancel_requested,
        "created_at": iso_or_none(job.created_at),
        "started_at": iso_or_none(job.started_at),
        "completed_at": iso_or_none(job.finished_at),
        "run_finished_at": iso_or_none(job.run_finished_at),
        "cost_usd": micros_to_decimal(job.cost_micros),
        "cost_micros": job.cost_micros,
        "result": result,
        "error": error,
    }


# EmpirioLabs' job statuses (its ``Job`` schema: processing, completed, failed) for Tollgate's states.
empiriolabs_statuses = {
    "pending": "processing",
    "running": "processing",
    "completed": "completed",
    "failed": "failed",
    "dead_letter": "failed",
    "cancelled": "failed",
}
# What ``GET /v1/jobs?status=`` matches: EmpirioLabs' statuses, or one of Tollgate's states.
job_filters: dict[str, tuple[str, ...]] = {
    **{
        public: tuple(state for state, shown in empiriolabs_statuses.items() if shown == public)
        for public in ("processing", "completed", "failed")
    },
    **{state: (state,) for state in empiriolabs_statuses if state not in ("completed", "failed")},
}


def public_job(job: JobState, prices: PriceBooks) -> dict[str, Any]:
    """A job as ``/v1/jobs`` shows it: EmpirioLabs' ``Job`` (``status`` processing, completed or
    failed; a cancelled or dead-lettered job is failed and its ``error.code`` says which), with
    Tollgate's own state beside it in ``state`` (pending, running, completed, failed, cancelled,
    dead_letter)."""
    body = job_body(job, prices)
    body["state"] = job.status
    body["status"] = empiriolabs_statuses.get(job.status, "processing")
    if job.status == "cancelled":
        body["error"] = {"code": "cancelled", "message": "The job was cancelled."}
    return body


def job_error(job: JobState) -> dict[str, str] | None:
    """Why a job did not complete (None while it may still, and once it has)."""
    if job.status in ("failed", "dead_letter") or (job.error_code and job.status != "completed"):
        return {"code": job.error_code or job.status, "message": job.error_message or job.status}
    return None


def _own_job(request: Request[Any, Any, Any], core: GatewayCore, job_id: str, scope: str) -> JobState:
    token = authorize(request, scope)
    job = core.jobs.get(job_id)
    if job is None or job.org_id != token.org_id:
        raise ApiError(404, f"No job '{job_id}'.", code="job_not_found", param="job_id")
    return job


@get("/v1/jobs", operation_id="listJobs", opt={"scope": "user:read"})
async def list_jobs(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    token = authorize(request, "user:read")
    limit = limit_param(request, default=25, maximum=jobs_page_size_max)
    after = request.query_params.get("after")
    status = request.query_params.get("status")
    if status is not None and status not in job_filters:
        raise ApiError(
            400,
            f"status must be one of {', '.join(job_filters)}; got {status!r}.",
            code="invalid_status",
            param="status",
        )
    jobs = core.jobs.list(token.org_id, limit + 1 if status is None else 10_000, after)
    if status is not None:
        jobs = [job for job in jobs if job.status in job_filters[status]][: limit + 1]
    page = jobs[:limit]
    return json_response(
        {
            "object": "list",
            "data": [public_job(job, core.prices) for job in page],
            "has_more": len(jobs) > limit,
            "last_id": page[-1].job_id if page else None,
        }
    )


async def linked_result(request: Request[Any, Any, Any], core: GatewayCore, job: JobState, result: Any) -> Any:
    """A finished job's result with its media as signed URLs (a video's bytes, an ``AudioResponse``'s
    ``data:`` URL), as EmpirioLabs shows ``result.data[].url``; the same copy is reused across polls."""
    if not isinstance(result, dict) or job.status != "completed" or job.result is None:
        return result
    # Videos are links always; images as their request asked (links unless b64_json), as answered.
    as_url = job.endpoint == VIDEOS or (job.endpoint == IMAGES and asked_for_url(job.result))
    content_type = "video/mp4" if job.endpoint == VIDEOS else "image/png"
    return await linked(request, core, job.org_id, result, as_url, content_type, seed=job.job_id)


@get("/v1/jobs/{job_id:str}", operation_id="retrieveJob", opt={"scope": "user:read"})
async def retrieve_job(request: Request[Any, Any, Any], core: Core, job_id: FromPath[str]) -> Response[bytes]:
    job = _own_job(request, core, job_id, "user:read")
    body = public_job(job, core.prices)
    body["result"] = await linked_result(request, core, job, body["result"])
    return json_response(body)


@delete("/v1/jobs/{job_id:str}", operation_id="cancelJob", opt={"scope": "user:write"}, status_code=200)
async def cancel_job(request: Request[Any, Any, Any], core: Core, job_id: FromPath[str]) -> Response[bytes]:
    """A job not started yet is cancelled at once; a running one stops at its next progress point and
    is charged for the work done. A job that has ended is left as it is (EmpirioLabs: "a no-op")."""
    job = _own_job(request, core, job_id, "user:write")
    if job.terminal:
        return json_response(public_job(job, core.prices))
    cancelled = await request_cancel(core, job)
    body = public_job(job, core.prices)
    body["cancel_requested"] = True
    if cancelled:
        body.update(
            status="failed", state="cancelled", error={"code": "cancelled", "message": "The job was cancelled."}
        )
    return json_response(body)


async def request_cancel(core: GatewayCore, job: JobState) -> bool:
    """Ask the ledger to cancel a job that has not ended; whether it was cancelled at once (it had not
    started: released, nothing charged) rather than asked to stop at its next progress point."""
    try:
        seen = await core.cancel_job(job.org_id, job.request_id, job.job_id)
    except TimeoutError:
        raise ApiError(
            504, "The ledger did not answer in time; the cancellation may still apply.", code="timeout", param="job_id"
        ) from None
    rejected = seen.get(CommandRejected)
    if isinstance(rejected, CommandRejected):
        raise ApiError(409, f"The job cannot be cancelled now: {rejected.code}.", code=rejected.code, param="job_id")
    released = seen.get(HoldReleased)
    return isinstance(released, HoldReleased) and released.reason == "cancelled"


@get("/v1/videos/generations/{job_id:str}", operation_id="retrieveVideoGeneration", opt={"scope": "user:read"})
async def retrieve_video(request: Request[Any, Any, Any], core: Core, job_id: FromPath[str]) -> Response[bytes]:
    """A video job in EmpirioLabs' ``Job`` shape (``GET /v1/videos/generations/{job_id}``): status
    ``processing``, ``completed`` or ``failed`` (a cancelled job is failed with the error code
    ``cancelled``), the result as ``POST /v1/videos/generations`` would answer it. Any other job is
    not a video generation (404)."""
    job = _own_job(request, core, job_id, "user:read")
    if job.endpoint != VIDEOS:
        raise ApiError(404, f"No video generation '{job_id}'.", code="job_not_found", param="job_id")
    described = public_job(job, core.prices)
    return json_response(
        {
            "job_id": job.job_id,
            "id": job.job_id,
            "object": "video.generation",
            "status": described["status"],
            "progress": described["progress"],
            "model": job.model,
            "created_at": described["created_at"],
            "completed_at": described["completed_at"],
            "cost_usd": described["cost_usd"],
            "result": await linked_result(request, core, job, described["result"]),
            "error": described["error"],
        }
    )


@get(
    "/v1/organizations/{org_id:str}/jobs/{job_id:str}",
    operation_id="retrieveOrganizationJob",
    opt={"scope": "admin:read"},
)
async def retrieve_organization_job(
    request: Request[Any, Any, Any], core: Core, org_id: FromPath[str], job_id: FromPath[str]
) -> Response[bytes]:
    """A job of the organization, for its admins and for replay's comparison."""
    authorize_admin(request, org_id, scope="admin:read")
    job = core.jobs.get(job_id)
    if job is None or job.org_id != org_id:
        raise ApiError(404, f"No job '{job_id}'.", code="job_not_found", param="job_id")
    return json_response(job_body(job, core.prices))


route_handlers = [list_jobs, retrieve_job, cancel_job, retrieve_video, retrieve_organization_job]
