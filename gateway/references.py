"""Inputs a generation names by reference, resolved before it is parsed and priced: reference images by
URL (fetched as a transcription's ``file_url`` is: ``uploads.fetch_url``, public addresses only unless
``TOLLGATE_FILE_URL_PRIVATE_ALLOWED``; each must read as an image), and a video's ``extend_from``
(EmpirioLabs: "continue a prior video", ``{job_id}`` of a completed video job of the organization or
``{video_url}``, an http(s) URL).

A video request becomes an ordinary one: its reference image travels inline (``image_b64``), an
extension names what it continues (``extend_from``, with the fetched video's digest for a URL), the
model of the video it continues when it names none, and a continuation prompt when it sends none."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any

import msgspec

from gateway import uploads
from gateway.errors import ApiError
from gateway.http import decode
from projections.jobs import JobState
from workers import media

continuation_prompt = "Continue the previous video seamlessly from its last frame"


def _renamed(error: ApiError, param: str) -> ApiError:
    """A fetch's error, whose message names file_url, for the field this request sent the URL in."""
    return ApiError(error.status_code, error.message.replace("file_url", param), error.code, param)


async def reference_image(url: Any, private_allowed: bool, param: str = "image") -> bytes:
    """A reference image by URL, fetched and read as an image (PNG, JPEG, GIF or WebP)."""
    try:
        fetched = await uploads.fetch_url(url, private_allowed)
    except ApiError as error:
        raise _renamed(error, param) from None
    try:
        media.image_size(fetched.content)
    except ValueError as error:
        raise ApiError(400, f"{str(url)[:200]} is not an image we can read: {error}", "invalid_image", param) from None
    return fetched.content


def _video_image_url(fields: dict[str, Any]) -> tuple[str, str] | None:
    """(param, URL) of a video's reference image: ``image`` or its alias ``image_url``, not two different."""
    given = {name: fields[name] for name in ("image", "image_url") if fields.get(name) is not None}
    if len(set(map(str, given.values()))) > 1:
        message = "Send the reference image as 'image' or 'image_url', not both."
        raise ApiError(400, message, "invalid_parameter", "image")
    return next(iter(given.items()), None)


def _extended_job(extend_from: Any, job: JobState | None, org_id: str) -> JobState:
    if job is None or job.org_id != org_id:
        raise ApiError(404, f"No job '{extend_from.get('job_id')}' to extend.", "job_not_found", "extend_from.job_id")
    if job.endpoint != "/v1/videos/generations":
        raise ApiError(400, f"The job '{job.job_id}' is not a video generation.", "invalid_parameter", "extend_from")
    if job.status != "completed":
        raise ApiError(
            409,
            f"The video job '{job.job_id}' is {job.status}; only a completed video can be extended.",
            "job_not_completed",
            "extend_from",
        )
    return job


async def resolved_video(
    body: bytes, org_id: str, job_of: Callable[[str], JobState | None], private_allowed: bool
) -> bytes:
    """``body`` with its reference image fetched and its ``extend_from`` resolved (module doc);
    ``job_of`` finds a job by its id."""
    fields = decode(body, dict[str, Any])
    if not isinstance(fields, dict):
        return body
    image = _video_image_url(fields)
    extend_from = fields.get("extend_from")
    if image is None and extend_from is None:
        return body
    if image is not None:
        param, url = image
        content = await reference_image(url, private_allowed, param)
        fields["image_b64"] = base64.b64encode(content).decode()
    if extend_from is not None:
        if not isinstance(extend_from, dict) or len({"job_id", "video_url"} & set(extend_from)) != 1:
            raise ApiError(
                400, "'extend_from' takes exactly one of job_id or video_url.", "invalid_parameter", "extend_from"
            )
        if "job_id" in extend_from:
            if not isinstance(extend_from["job_id"], str):
                raise ApiError(400, "'extend_from.job_id' must be a string.", "invalid_type", "extend_from.job_id")
            job = _extended_job(extend_from, job_of(extend_from["job_id"]), org_id)
            fields.setdefault("model", job.model)
            fields["extend_from"] = {"job_id": job.job_id}
        else:
            try:
                video = await uploads.fetch_url(extend_from["video_url"], private_allowed)
            except ApiError as error:
                raise _renamed(error, "extend_from.video_url") from None
            digest = hashlib.sha256(video.content).hexdigest()
            fields["extend_from"] = {"video_url": extend_from["video_url"], "sha256": digest}
        fields.setdefault("prompt", continuation_prompt)
    return msgspec.json.encode(fields)
