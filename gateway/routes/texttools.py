"""Text tools (issue 18): EmpirioLabs' ``POST /v1/search``, ``/v1/research``, ``/v1/answer``,
``/v1/detect`` and ``/v1/images/analysis``, and Casola's ``POST /v1/pii`` (also at ``/openai/v1/pii``
and ``/pii``: gateway/surface.py). Each is metered as every generation endpoint: a hold on its worst
case, a job on a worker, the exact charge in ``usage.cost_usd`` and ``x-credits-used``; research
answers 202 with EmpirioLabs' ``JobAccepted`` unless ``"async": false``, the others 200 unless
``"async": true``."""

from __future__ import annotations

import time
from typing import Any

from litestar import Request, Response, post

from gateway import texttools
from gateway.auth import authorize
from gateway.core import Core, GatewayCore
from gateway.http import json_response, request_id
from gateway.metering import Placement
from gateway.results import charge_headers, shape_result
from gateway.routes.generation import accepted_job, generation_body, run_answered
from schemas.moments import iso_or_none


def research_accepted(rid: str, placement: Placement) -> Response[bytes]:
    """EmpirioLabs' 202 for a research job (``JobAccepted``: ``job_id``, ``status: "processing"``,
    ``poll_url``, ``created_at``), with the job's model, endpoint and the request's id."""
    job = placement.command.job
    body = {
        "id": job.job_id,
        "job_id": job.job_id,
        "object": "job",
        "status": "processing",
        "model": job.model,
        "endpoint": job.endpoint,
        "request_id": rid,
        "poll_url": f"/v1/jobs/{job.job_id}",
        "created_at": iso_or_none(placement.command.issued_at),
    }
    return json_response(body, status_code=202, headers={"location": f"/v1/jobs/{job.job_id}"})


async def _tool(request: Request[Any, Any, Any], core: GatewayCore, endpoint: str) -> Response[bytes]:
    started = time.perf_counter()
    token = authorize(request, "user:write")
    metered = texttools.parse(endpoint, await generation_body(request, core), core.prices.current)
    accepted = research_accepted if endpoint == texttools.RESEARCH else accepted_job
    done = await run_answered(request, core, token, metered, accepted)
    if isinstance(done, Response):
        return done
    charge = done.charge
    body = shape_result(endpoint, request_id(request), done.result, charge, metered.price_of(charge.model))
    added_ms = (time.perf_counter() - started) * 1000 - done.completed.duration_ms
    headers = {**charge_headers(charge), "x-gateway-added-ms": f"{max(added_ms, 0):.2f}"}
    return json_response(body, headers=headers)


@post(texttools.SEARCH, operation_id="createSearch", opt={"scope": "user:write"}, status_code=200)
async def search(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """Search with a retrieval model (Tavily, Exa, Linkup), priced per query at its tier."""
    return await _tool(request, core, texttools.SEARCH)


@post(texttools.RESEARCH, operation_id="createResearch", opt={"scope": "user:write"}, status_code=202)
async def research(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """A cited research report from a research model: a job (202) unless ``"async": false``."""
    return await _tool(request, core, texttools.RESEARCH)


@post(texttools.ANSWER, operation_id="createAnswer", opt={"scope": "user:write"}, status_code=200)
async def answer(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """A grounded answer with citations (Exa Answer), priced per call."""
    return await _tool(request, core, texttools.ANSWER)


@post(texttools.DETECT, operation_id="createDetection", opt={"scope": "user:write"}, status_code=200)
async def detect(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """GPTZero's AI detection, bibliography scan or fact check, priced per token and per lookup."""
    return await _tool(request, core, texttools.DETECT)


@post(texttools.IMAGE_ANALYSIS, operation_id="analyzeImage", opt={"scope": "user:write"}, status_code=200)
async def image_analysis(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """An answer to a question about an image, priced per token (the image's as input)."""
    return await _tool(request, core, texttools.IMAGE_ANALYSIS)


@post(texttools.PII, operation_id="createPiiDetection", opt={"scope": "user:write"}, status_code=200)
async def pii(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """PII detection and redaction (Casola's ``/openai/v1/pii``; the shape is Tollgate's), per token."""
    return await _tool(request, core, texttools.PII)


route_handlers = [search, research, answer, detect, image_analysis, pii]
