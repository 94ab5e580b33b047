"""Casola's Fal-compatible queue: ``POST /fal/{slug}`` submits an image, video or speech request to the model
its slug names (the price book's ``fal_slugs``, listed by ``GET /api/model-status``),
``GET /fal/requests/{id}`` polls it (its result once completed), ``GET /fal/requests/{id}/status``
its status alone, ``PUT /fal/requests/{id}/cancel`` cancels it and ``POST /fal/requests/batch``
reads up to 50 statuses at once.

A submission is metered as the image, video or speech request it stands for (``gateway.requests.parse_fal``:
the same hold, job, charge and usage row as ``/v1/images/generations``, ``/v1/videos/generations`` or
``/v1/audio/speech``).
Without ``sync_mode`` it is queued and answered at once in Fal's queue shape (``request_id`` and the
status, response and cancel URLs); with ``sync_mode: true`` the answer waits for the result and
carries its charge (``usage.cost_usd``, ``x-credits-used``).

A request id is the job's id: the same job is at ``/v1/jobs/{id}`` and ``/api/jobs/{id}``, and any
async job of the organization (the quickstart's ``"async": true`` image) polls here too. Statuses are
Fal's, as Casola maps its own (``pending`` IN_QUEUE, ``running`` IN_PROGRESS, ``completed``
COMPLETED, ``failed`` and ``dead_letter`` FAILED; a ``cancelled`` job is FAILED with the error code
``cancelled``). Media come back as data URIs, as Fal answers ``sync_mode``. Another organization's
request does not exist for the caller (404).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post, put
from litestar.params import FromPath

from gateway.auth import authorize
from gateway.core import Core, GatewayCore
from gateway.errors import ApiError
from gateway.http import decode_body, json_response
from gateway.http import request_id as request_id_of
from gateway.metering import Placement
from gateway.requests import IMAGES, SPEECH, VIDEOS, parse_fal
from gateway.results import charge_headers, shape_result
from gateway.routes.generation import generation_body, run_answered
from gateway.routes.jobs import job_body, job_error, request_cancel
from gateway.routes.media import linked_url
from projections.jobs import JobState
from schemas.api import FalBatchStatusRequest

fal_statuses = {
    "pending": "IN_QUEUE",
    "running": "IN_PROGRESS",
    "completed": "COMPLETED",
    "failed": "FAILED",
    "dead_letter": "FAILED",
    "cancelled": "FAILED",
}


def _urls(request: Request[Any, Any, Any], asked_id: str) -> dict[str, str]:
    """Fal's queue URLs, absolute as Fal gives them (its clients follow them as they are)."""
    base = str(request.base_url).rstrip("/") + "/fal/requests/" + asked_id
    return {"response_url": base, "status_url": base + "/status", "cancel_url": base + "/cancel"}


def _data_uri(item: dict[str, Any], media_type: str) -> str:
    if item.get("url"):
        return str(item["url"])
    return f"data:{media_type};base64,{item.get('b64_json') or ''}"


def fal_output(endpoint: str, shaped: dict[str, Any], variant: str) -> dict[str, Any]:
    """A finished job's result in Fal's output shape: ``images[]`` (url, width, height, content_type),
    ``video`` or ``audio`` (url, content_type), with the charge in ``usage``. Other endpoints' answers (an async
    chat polled here) come whole under ``response``."""
    usage = shaped.get("usage")
    data = [item for item in shaped.get("data") or [] if isinstance(item, dict)]
    if endpoint == IMAGES:
        width, _, height = variant.partition("/")[0].partition("x")
        images = [
            {
                "url": _data_uri(item, "image/png"),
                "width": int(width) if width.isdigit() else None,
                "height": int(height) if height.isdigit() else None,
                "content_type": "image/png",
            }
            for item in data
        ]
        prompt = data[0].get("revised_prompt") if data else None
        return {"images": images, "prompt": prompt, "has_nsfw_concepts": [False] * len(images), "usage": usage}
    if endpoint == SPEECH:
        content_type = str(shaped.get("content_type") or "audio/wav")
        audio = {"url": f"data:{content_type};base64,{shaped.get('audio_b64') or ''}", "content_type": content_type}
        return {"audio": audio, "usage": usage}
    if endpoint == VIDEOS:
        content_type = str(data[0].get("content_type") or "video/mp4") if data else "video/mp4"
        video = {"url": _data_uri(data[0], content_type), "content_type": content_type} if data else None
        return {"video": video, "usage": usage}
    return {"response": shaped}


async def linked_fal(
    request: Request[Any, Any, Any], core: GatewayCore, org_id: str, body: dict[str, Any], seed: str = ""
) -> dict[str, Any]:
    """A Fal output with its media (``images[].url``, ``video.url``, ``audio.url``) as signed URLs the
    gateway serves, as Fal's are, rather than ``data:`` URLs."""
    shaped = dict(body)
    images = shaped.get("images")
    if isinstance(images, list):
        shaped["images"] = [
            {
                **image,
                "url": await linked_url(
                    request, core, org_id, image.get("url"), seed=f"{seed}/{index}" if seed else ""
                ),
            }
            if isinstance(image, dict)
            else image
            for index, image in enumerate(images)
        ]
    for name in ("video", "audio"):
        medium = shaped.get(name)
        if isinstance(medium, dict):
            shaped[name] = {**medium, "url": await linked_url(request, core, org_id, medium.get("url"), seed=seed)}
    return shaped


def fal_request(request: Request[Any, Any, Any], core: GatewayCore, job: JobState, output: bool) -> dict[str, Any]:
    """A request's status in Fal's shape; with its output (``output``) once it completed."""
    body: dict[str, Any] = {
        "request_id": job.job_id,
        "status": fal_statuses.get(job.status, "IN_QUEUE"),
        "model": job.model,
        **_urls(request, job.job_id),
    }
    if job.status == "pending":
        body["queue_position"] = core.jobs.queue_position(job.org_id, job.pool, job.job_id)
    error = job_error(job)
    if job.status == "cancelled":
        body["error"] = {"code": "cancelled", "message": "The request was cancelled."}
    elif error is not None:
        body["error"] = error
    if output and job.status == "completed":  # shaped only when asked: a batch of statuses reads none
        result = job_body(job, core.prices)["result"]
        if result is not None:
            variant = job.charged.units.variant if job.charged is not None else ""
            body.update(fal_output(job.endpoint, result, variant))
    return body


def _own_request(request: Request[Any, Any, Any], core: GatewayCore, asked_id: str, scope: str) -> JobState:
    token = authorize(request, scope)
    job = core.jobs.get(asked_id) or core.jobs.by_request(asked_id)
    if job is None or job.org_id != token.org_id:
        raise ApiError(404, f"No request '{asked_id}'.", code="not_found", param="request_id")
    return job


@post("/fal/{slug:path}", operation_id="submitFalRequest", opt={"scope": "user:write"}, status_code=200)
async def submit(request: Request[Any, Any, Any], core: Core, slug: FromPath[str]) -> Response[bytes]:
    """Queue a request (Fal's queue answer), or with ``sync_mode: true`` wait for its output."""
    token = authorize(request, "user:write")
    metered = parse_fal(slug.strip("/"), await generation_body(request, core), core.prices.current)

    def queued(rid: str, placement: Placement) -> Response[bytes]:
        job = placement.command.job
        urls = _urls(request, job.job_id)
        position = core.jobs.queue_position(token.org_id, job.pool, job.job_id)
        body = {"request_id": job.job_id, "status": "IN_QUEUE", "queue_position": position, "model": metered.model}
        body.update(urls)
        return json_response(body, headers={"location": urls["status_url"]})

    done = await run_answered(request, core, token, metered, queued)
    if isinstance(done, Response):
        return done
    charge = done.charge
    shaped = shape_result(metered.endpoint, request_id_of(request), done.result, charge, metered.price_of(charge.model))
    body = {
        "request_id": done.placement.command.job.job_id,
        **fal_output(metered.endpoint, shaped, charge.units.variant),
    }
    return json_response(await linked_fal(request, core, token.org_id, body), headers=charge_headers(charge))


# Casola counts every POST and PUT under /fal as a job submission (its rate-limit table).
@post(
    "/fal/requests/batch",
    operation_id="getFalRequestStatuses",
    opt={"scope": "user:read", "rate": "jobs"},
    status_code=200,
)
async def batch_status(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """The statuses of up to 50 requests, in the order asked; one that does not exist for the caller
    is listed with the status ``NOT_FOUND``."""
    token = authorize(request, "user:read")
    body = await decode_body(request, FalBatchStatusRequest, core.settings.request_body_bytes_max)
    answers = []
    for asked in body.request_ids:
        job = core.jobs.get(asked) or core.jobs.by_request(asked)
        if job is None or job.org_id != token.org_id:
            error = {"code": "not_found", "message": f"No request '{asked}'."}
            answers.append({"request_id": asked, "status": "NOT_FOUND", "error": error})
        else:
            answers.append(fal_request(request, core, job, output=False))
    return json_response({"object": "list", "requests": answers})


@get("/fal/requests/{request_id:str}", operation_id="getFalRequest", opt={"scope": "user:read"})
async def poll(request: Request[Any, Any, Any], core: Core, request_id: FromPath[str]) -> Response[bytes]:
    """The request's status, and its output once it completed."""
    job = _own_request(request, core, request_id, "user:read")
    body = fal_request(request, core, job, True)
    return json_response(await linked_fal(request, core, job.org_id, body, seed=job.job_id))


@get("/fal/requests/{request_id:str}/status", operation_id="getFalRequestStatus", opt={"scope": "user:read"})
async def status(request: Request[Any, Any, Any], core: Core, request_id: FromPath[str]) -> Response[bytes]:
    return json_response(fal_request(request, core, _own_request(request, core, request_id, "user:read"), False))


@put(
    "/fal/requests/{request_id:str}/cancel",
    operation_id="cancelFalRequest",
    opt={"scope": "user:write", "rate": "jobs"},
    status_code=202,
)
async def cancel(request: Request[Any, Any, Any], core: Core, request_id: FromPath[str]) -> Response[bytes]:
    """Fal's cancel: ``CANCELLATION_REQUESTED`` (a queued request is cancelled at once and charged
    nothing; a running one stops at its next progress point, charged for the work done); a request
    that already ended is a 400 ``already_completed``."""
    job = _own_request(request, core, request_id, "user:write")
    if job.terminal:
        raise ApiError(400, f"The request already ended ({job.status}).", code="already_completed")
    cancelled = await request_cancel(core, job)
    body = {"request_id": job.job_id, "status": "CANCELLATION_REQUESTED", "cancelled": cancelled}
    return json_response(body, status_code=202)


route_handlers = [submit, batch_status, poll, status, cancel]
