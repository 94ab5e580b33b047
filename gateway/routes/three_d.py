"""``POST /v1/3d/generations`` (EmpirioLabs' image-to-3D): always async. The answer is a 202 with the
job (``job_id``, ``status: "processing"``, ``poll_url``, ``created_at``: the document's
``JobAccepted``), polled at ``GET /v1/jobs/{id}``, whose completed ``result.data[0]`` is the GLB
(``content_type`` ``model/gltf-binary``) as a signed media URL, or inline as ``b64_json`` when the body
asked for it. Priced per generation (the model's per-request fee: the document prices no resolution
apart), held for one generation, charged when the asset exists.

The image (``image``: a URL, a ``data:`` URL or base64; ``image_url``: a URL) goes to the worker as
given: an inline image is checked to be PNG, JPEG, GIF or WebP here; a URL is read by the model that
runs the job (the simulated one derives its asset from the URL's text and does not fetch it). No
OpenAI-compatible server has a 3D endpoint, so the upstream backend fails such a job (nothing is
charged) rather than guess.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, post

from gateway import uploads
from gateway.auth import authorize
from gateway.core import Core
from gateway.errors import ApiError
from gateway.http import decode, json_response
from gateway.metering import MeteredRequest, Placement
from gateway.requests import model_price
from gateway.routes.generation import generation_body, run_metered
from ledger.pricing import PriceBook
from schemas.api import ThreeDRequest
from schemas.moments import iso_or_none
from schemas.units import Units
from workers import media
from workers.meshes import THREE_D


def _web_url(value: str) -> bool:
    return value.startswith(("https://", "http://")) and len(value) > len("https://") and " " not in value


def _image(asked: ThreeDRequest) -> dict[str, str]:
    """The image field the worker gets: ``image`` (a URL, or inline data checked to be an image) or
    ``image_url`` (a URL); one of them is required, and not both."""
    if asked.image is not None and asked.image_url is not None:
        raise ApiError(
            400, "Send the image as 'image' or 'image_url', not both.", code="invalid_parameter", param="image"
        )
    if asked.image_url is not None:
        if not _web_url(asked.image_url):
            raise ApiError(400, "'image_url' must be an http(s) URL.", code="invalid_parameter", param="image_url")
        return {"image_url": asked.image_url}
    if asked.image is None:
        raise ApiError(
            400,
            "Image-to-3D needs an image: send 'image_url' (a URL), or 'image' (a URL, a data: URL or base64).",
            code="missing_required_parameter",
            param="image",
        )
    if not _web_url(asked.image):
        try:
            media.image_size(uploads.base64_file(asked.image, "image"))
        except ValueError as error:
            raise ApiError(
                400, f"'image' is not an image we can read: {error}", code="invalid_image", param="image"
            ) from None
    return {"image": asked.image}


def parse_three_d(body: bytes, book: PriceBook) -> MeteredRequest:
    """A 3D generation: held for one generation (the model's per-request fee), always a job; the
    worker gets the body's fields with the document's defaults filled in."""
    asked: ThreeDRequest = decode(body, ThreeDRequest)
    price = model_price(book, asked.model, lambda p: p.category == "3d", "a 3D")
    payload: dict[str, Any] = {
        "model": price.model,
        **_image(asked),
        "resolution": asked.resolution,
        "seed": asked.seed,
        "texture_size": asked.texture_size,
        "decimation_target": asked.decimation_target,
        "remesh": asked.remesh,
        "max_num_tokens": asked.max_num_tokens,
        "response_format": asked.response_format,
    }
    return MeteredRequest(THREE_D, price, book.version, Units(calls=1), msgspec.json.encode(payload), True)


def accepted_three_d(request_id: str, placement: Placement) -> Response[bytes]:
    """The document's ``JobAccepted`` (processing from the start, with its ``created_at``), with the
    job's id, model and request id beside it as the other async answers carry them."""
    job = placement.command.job
    body = {
        "job_id": job.job_id,
        "id": job.job_id,
        "object": "3d.generation",
        "status": "processing",
        "poll_url": f"/v1/jobs/{job.job_id}",
        "created_at": iso_or_none(placement.command.issued_at),
        "model": job.model,
        "request_id": request_id,
    }
    return json_response(body, status_code=202, headers={"location": f"/v1/jobs/{job.job_id}"})


@post(THREE_D, operation_id="create3DGeneration", opt={"scope": "user:write"}, status_code=202)
async def three_d_generations(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    token = authorize(request, "user:write")
    metered = parse_three_d(await generation_body(request, core), core.prices.current)
    outcome = await run_metered(request, core, token, metered, accepted_three_d)
    if isinstance(outcome, Response):
        return outcome
    # run_metered answers an async request that was held with its 202, and raises its refusal (402...);
    # an outcome that is neither placed no job.
    raise ApiError(502, "The ledger did not admit the job; nothing was charged. Retry.", code="job_not_admitted")


route_handlers = [three_d_generations]
