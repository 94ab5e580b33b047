"""Casola's core API (``/api/...``) over Tollgate's own routes, in Casola's shapes.

- The async job API: ``POST /api/jobs`` (``{model_id, task, payload}`` → 202 ``{id, queue_id, ...}``),
  ``GET /api/jobs/{id}`` (``{status, result, error, ...}``) and ``POST /api/jobs/{id}/cancel``, in
  Casola's status vocabulary (Tollgate's own: pending, running, completed, failed, cancelled,
  dead_letter) with Unix-second timestamps. A job is the metered request its task names
  (``casola_tasks``: the same hold, charge and usage row as the endpoint), always async; its id is
  the job's everywhere (``/v1/jobs/{id}``, ``/fal/requests/{id}``).
- ``GET /api/model-status`` (every model with its tasks and Fal slugs) and ``GET /api/catalog`` (the
  model catalog of ``GET /v1/models``), for keys with ``user:read``.
- The organization routes under ``/api/organizations/{id}``: ``tokens`` (create, list), ``usage`` and
  ``usage/by-token``: the ``/v1/organizations/{id}`` routes' answers (``gateway/routes/tenants.py``,
  ``gateway/routes/usage.py``), whose token shape is Casola's already.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath

from gateway.auth import authorize
from gateway.catalog import model_card
from gateway.core import Core, GatewayCore
from gateway.errors import ApiError
from gateway.http import decode_body, json_response
from gateway.metering import MeteredRequest, Placement
from gateway.requests import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    IMAGES,
    RERANK,
    SCORE,
    SPEECH,
    VIDEOS,
    parse_chat,
    parse_completion,
    parse_embedding,
    parse_fal,
    parse_image,
    parse_rerank,
    parse_score,
    parse_speech,
    parse_video,
)
from gateway.routes.generation import run_metered
from gateway.routes.jobs import job_body, linked_result, request_cancel
from gateway.routes.tenants import new_token, token_creation_not_idempotent, tokens_answer
from gateway.routes.usage import organization_usage_answer, usage_by_token_answer
from ledger.money import micros_to_decimal
from ledger.pricing import PriceBook, kind_of
from projections.jobs import JobState
from schemas.api import CasolaJobRequest
from schemas.prices import ModelPrice
from workers.metering import FileContents

Parser = Callable[[bytes, PriceBook], MeteredRequest]
cancel_is_idempotent = "a cancel changes a job once: a repeat finds it ended (409) or asks again, which changes nothing"


def _fal(category: str) -> Callable[[str], Parser]:
    def for_model(model_id: str) -> Parser:
        def parse(payload: bytes, book: PriceBook) -> MeteredRequest:
            price = book.fal_model(model_id)
            if price is not None and price.category != category:
                raise ApiError(
                    400, f"{price.model} is not a {category} model.", code="invalid_parameter", param="model_id"
                )
            return parse_fal(model_id, payload, book)

        return parse

    return for_model


def _openai(parse: Parser) -> Callable[[str], Parser]:
    return lambda _model_id: parse


# Casola's task names (its agents' ``task``; ``GET /api/model-status`` lists each model's), and the
# endpoint each one runs as.
casola_tasks: dict[str, tuple[str, Callable[[str], Parser]]] = {
    "openai/chat-completion": (CHAT, _openai(parse_chat)),
    "openai/completion": (COMPLETIONS, _openai(parse_completion)),
    "openai/embedding": (EMBEDDINGS, _openai(parse_embedding)),
    "openai/image-generation": (IMAGES, _openai(parse_image)),
    "openai/speech": (SPEECH, _openai(parse_speech)),
    "openai/video-generation": (VIDEOS, _openai(parse_video)),
    "openai/rerank": (RERANK, _openai(parse_rerank)),
    "openai/score": (SCORE, _openai(parse_score)),
    "fal/text-to-image": (IMAGES, _fal("image")),
    "fal/text-to-video": (VIDEOS, _fal("video")),
}
_task_of_endpoint = {
    endpoint: task for task, (endpoint, _) in reversed(casola_tasks.items()) if task.startswith("openai")
}
_tasks_of_kind = {
    "chat": ("openai/chat-completion", "openai/completion"),
    "embedding": ("openai/embedding",),
    "image": ("openai/image-generation", "fal/text-to-image"),
    "video": ("openai/video-generation", "fal/text-to-video"),
    "speech": ("openai/speech",),
    "transcription": ("openai/transcription",),
    "rerank": ("openai/rerank", "openai/score"),
}


def _unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def casola_job(job: JobState, prices: Any) -> dict[str, Any]:
    """A job in Casola's shape: its status, result (the endpoint's answer, with its charge) and error."""
    described = job_body(job, prices)
    return {
        "id": job.job_id,
        "object": "job",
        "queue_id": job.pool or "default",
        "status": job.status,
        "model_id": job.model,
        "task": _task_of_endpoint.get(job.endpoint),
        "progress": described["progress"],
        "attempt": job.attempt,
        "created_at": _unix(job.created_at),
        "started_at": _unix(job.started_at),
        "completed_at": _unix(job.finished_at),
        "cost_usd": micros_to_decimal(job.cost_micros),
        "cost_micros": job.cost_micros,
        "result": described["result"],
        "error": described["error"],
    }


def _own_job(request: Request[Any, Any, Any], core: GatewayCore, job_id: str, scope: str) -> JobState:
    token = authorize(request, scope)
    job = core.jobs.get(job_id)
    if job is None or job.org_id != token.org_id:
        raise ApiError(404, "Job not found.", code="not_found", param="id")
    return job


def _metered(body: CasolaJobRequest, book: PriceBook, org_id: str, files: FileContents) -> MeteredRequest:
    if body.task not in casola_tasks:
        raise ApiError(400, f"task must be one of {', '.join(casola_tasks)}.", code="invalid_parameter", param="task")
    payload = dict(body.payload)
    model_id = body.model_id or str(payload.get("model") or "")
    if not model_id:
        raise ApiError(400, "Name the model in model_id.", code="missing_required_parameter", param="model_id")
    if payload.get("stream"):
        raise ApiError(400, "A job is not streamed.", code="invalid_parameter", param="payload.stream")
    if body.task.startswith("fal/"):
        payload["sync_mode"] = False
    else:
        payload["model"] = model_id
        payload.pop("async", None)
    encoded = msgspec.json.encode(payload)
    if body.task == "openai/chat-completion":  # its content may name the organization's files
        metered = parse_chat(encoded, book, org_id, files)
    else:
        metered = casola_tasks[body.task][1](model_id)(encoded, book)
    return dataclasses.replace(metered, run_async=True)


def metered_job(body: CasolaJobRequest, book: PriceBook, org_id: str, files: FileContents) -> MeteredRequest:
    """A Casola job (``{model_id, task, payload}``) as the metered request ``POST /api/jobs`` runs: an
    agent's node runs as exactly this (gateway/agent_runs.py)."""
    return _metered(body, book, org_id, files)


@post("/api/jobs", operation_id="createCasolaJob", opt={"scope": "user:write"}, status_code=202)
async def create_job(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """Queue a job: 202 ``{id, queue_id, status: "pending", ...}``; poll ``GET /api/jobs/{id}``."""
    token = authorize(request, "user:write")
    body = await decode_body(request, CasolaJobRequest, core.settings.request_body_bytes_max)
    if "sim" in body.payload and not core.settings.sim_knobs:  # as generation_body refuses it
        raise ApiError(
            400,
            "The 'sim' field drives the simulated backend in demos and fault tests; it is not open to API keys.",
            code="unsupported_parameter",
            param="payload.sim",
        )
    metered = _metered(body, core.prices.current, token.org_id, core.files)

    def accepted(rid: str, placement: Placement) -> Response[bytes]:
        job = placement.command.job
        answer = {
            "id": job.job_id,
            "object": "job",
            "queue_id": job.pool,
            "status": "pending",
            "model_id": job.model,
            "task": body.task,
            "request_id": rid,
            "created_at": _unix(placement.command.issued_at),
            "poll_url": f"/api/jobs/{job.job_id}",
        }
        return json_response(answer, status_code=202, headers={"location": f"/api/jobs/{job.job_id}"})

    outcome = await run_metered(request, core, token, metered, accepted)
    assert isinstance(outcome, Response), "an async request is answered when accepted"
    return outcome


@get("/api/jobs/{job_id:str}", operation_id="retrieveCasolaJob", opt={"scope": "user:read"})
async def retrieve_job(request: Request[Any, Any, Any], core: Core, job_id: FromPath[str]) -> Response[bytes]:
    job = _own_job(request, core, job_id, "user:read")
    body = casola_job(job, core.prices)
    body["result"] = await linked_result(request, core, job, body["result"])  # media as signed URLs
    return json_response(body)


@post(
    "/api/jobs/{job_id:str}/cancel",
    operation_id="cancelCasolaJob",
    opt={"scope": "user:write", "rate": "jobs", "idempotent": cancel_is_idempotent},  # a POST to /api/jobs
    status_code=200,
)
async def cancel_job(request: Request[Any, Any, Any], core: Core, job_id: FromPath[str]) -> Response[bytes]:
    """Cancel: a job not started yet is ``cancelled`` at once (nothing charged); a running one stops
    at its next progress point, charged for the work done; one that already ended is a 409."""
    job = _own_job(request, core, job_id, "user:write")
    if job.terminal:
        raise ApiError(409, f"The job is already {job.status}.", code="job_already_finished", param="id")
    cancelled = await request_cancel(core, job)
    body = casola_job(job, core.prices)
    body["cancel_requested"] = True
    if cancelled:
        body["status"] = "cancelled"
    return json_response(body)


def _spec_id(price: ModelPrice) -> str:
    return "spec_" + hashlib.sha256(price.model.encode()).hexdigest()[:12]


@get("/api/model-status", operation_id="getModelStatus", opt={"scope": "user:read"})
async def model_status(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """Every model of the current price book: enabled, its tasks (``POST /api/jobs``) and Fal slugs
    (``POST /fal/{slug}``)."""
    authorize(request, "user:read")
    models = [
        {
            "model_id": price.model,
            "spec_id": _spec_id(price),
            "enabled": True,
            "status": "online",
            "tasks": list(_tasks_of_kind.get(kind_of(price), ())),
            "fal_slugs": list(price.fal_slugs),
        }
        for price in core.prices.current.models.values()
        if price.category != "storage"  # file storage is priced in the book, not run as a model
    ]
    return json_response({"models": models})


@get("/api/catalog", operation_id="getCatalog", opt={"scope": "user:read"})
async def catalog(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """The model catalog: every model with every rate (``GET /v1/models``)."""
    authorize(request, "user:read")
    book = core.prices.current
    cards = [model_card(p, book.version) for p in book.models.values() if p.category != "storage"]
    return json_response({"object": "list", "data": cards})


@post(
    "/api/organizations/{org_id:str}/tokens",
    operation_id="createCasolaToken",
    status_code=201,
    opt={"scope": "admin:write", "idempotent": token_creation_not_idempotent},
)
async def create_token(request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]) -> Response[bytes]:
    """``{token: {id, name, scopes, status}, secret}``; the secret is shown once."""
    return await new_token(request, core, org_id)


@get("/api/organizations/{org_id:str}/tokens", operation_id="listCasolaTokens", opt={"scope": "admin:read"})
async def list_tokens(request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]) -> Response[bytes]:
    return tokens_answer(request, core, org_id)


@get("/api/organizations/{org_id:str}/usage", operation_id="listCasolaUsage", opt={"scope": "admin:read"})
async def usage(request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]) -> Response[bytes]:
    """Usage aggregates per hour or day (``granularity``) and ``group_by`` model, token or none."""
    return organization_usage_answer(request, core, org_id)


@get(
    "/api/organizations/{org_id:str}/usage/by-token",
    operation_id="listCasolaUsageByToken",
    opt={"scope": "admin:read"},
)
async def usage_by_token(request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]) -> Response[bytes]:
    return usage_by_token_answer(request, core, org_id)


route_handlers = [create_job, retrieve_job, cancel_job, model_status, catalog]
route_handlers += [create_token, list_tokens, usage, usage_by_token]
