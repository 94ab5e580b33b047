"""Generation endpoints: each prices its worst case from the price book, holds it, and answers when
the job is charged, or at once with 202 and a job id when the body says ``"async": true``.

Chat and text completions also stream (server-sent events, usage in the final chunk); a client that
leaves a stream cancels its job, which is charged for what was generated up to the stop.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.response import Stream

from gateway import generation_templates, playground, speeches, transcripts, uploads
from gateway.auth import authorize
from gateway.core import Core, GatewayCore
from gateway.errors import ApiError
from gateway.http import decode, encode_json, json_response, read_body, request_id
from gateway.metering import (
    Attempt,
    AttemptForgotten,
    MeteredRequest,
    OrganizationBusy,
    Overloaded,
    Placement,
    job_id_for,
)
from gateway.references import reference_image, resolved_video
from gateway.requests import (
    AUDIO_GENERATIONS,
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    IMAGE_EDITS,
    IMAGES,
    MUSIC_GENERATIONS,
    RERANK,
    RERANKS,
    SCORE,
    SPEECH,
    SPEECH_STREAM,
    TRANSCRIPTIONS,
    TRANSLATIONS,
    VIDEOS,
    SpeechAsk,
    TranscriptAsk,
    image_edit_inputs_max,
    image_reference_urls,
    model_kind,
    parse_chat,
    parse_completion,
    parse_embedding,
    parse_image,
    parse_image_edit,
    parse_music,
    parse_rerank,
    parse_score,
    parse_spoken,
    parse_transcription,
    parse_video,
    transcript_ask,
)
from gateway.results import (
    Charge,
    charge_headers,
    charge_of_completed,
    model_headers,
    refusal,
    shape_result,
    usage_of,
)
from gateway.routes.media import linked
from gateway.waiters import Seen, request_admitted, request_finished
from projections.views import ApiToken
from schemas.events import (
    CommandRejected,
    Event,
    HoldCaptured,
    HoldPlaced,
    HoldRejected,
    HoldReleased,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobProgressed,
)
from schemas.moments import iso_or_none, utc_now
from schemas.units import Units
from workers import media
from workers.backends import AUDIO


def overloaded() -> ApiError:
    return ApiError(
        503,
        "This gateway is at its limit of requests in flight; retry shortly.",
        code="overloaded",
        headers={"retry-after": "1"},
    )


def _busy(bound: int) -> ApiError:
    return ApiError(
        429,
        f"Your organization already has {bound} requests in flight on this gateway; retry when one has finished.",
        code="too_many_requests_in_flight",
        headers={"retry-after": "1"},
    )


async def generation_body(request: Request[Any, Any, Any], core: GatewayCore) -> bytes:
    """A generation body, bounded; one with the simulated backend's ``sim`` field is a 400 unless the
    platform turned those knobs on (``TOLLGATE_SIM_KNOBS``): a tenant must not slow a pool's jobs down."""
    body = await read_body(request, core.settings.request_body_bytes_max)
    if core.settings.sim_knobs or (b"sim" not in body and b"\\u" not in body):
        return body
    fields = decode(body, dict[str, Any])  # a key may be spelled with escapes
    if isinstance(fields, dict) and "sim" in fields:
        raise ApiError(
            400,
            "The 'sim' field drives the simulated backend in demos and fault tests; it is not open to API keys.",
            code="unsupported_parameter",
            param="sim",
        )
    return body


def accepted_job(request_id: str, placement: Placement) -> Response[bytes]:
    """The 202 of an async request: its job, to poll at ``poll_url`` (or, by the same id, at
    ``/fal/requests/{id}``). An image job says so as Casola's quickstart shows (``object``
    ``image.generation.async``); a video or transcription job is ``processing`` from the start, with
    its ``created_at``, as EmpirioLabs' ``JobAccepted`` (a transcription's with 200, as its document
    answers a long file)."""
    job = placement.command.job
    job_accepted = job.endpoint in (VIDEOS, TRANSCRIPTIONS, TRANSLATIONS)
    body: dict[str, Any] = {
        "id": job.job_id,
        "job_id": job.job_id,
        "object": "image.generation.async" if job.endpoint == IMAGES else "job",
        "status": "processing" if job_accepted else "pending",
        "model": job.model,
        "endpoint": job.endpoint,
        "request_id": request_id,
        "poll_url": f"/v1/jobs/{job.job_id}",
    }
    if job_accepted:
        body["created_at"] = iso_or_none(placement.command.issued_at)
    # EmpirioLabs answers a transcription's job (a long file's) with 200, its oneOf transcript or JobAccepted.
    status = 200 if job.endpoint in (TRANSCRIPTIONS, TRANSLATIONS) else 202
    return json_response(body, status_code=status, headers={"location": f"/v1/jobs/{job.job_id}"})


Accepted = Callable[[str, Placement], Response[bytes]]


def _attempt(request: Request[Any, Any, Any]) -> Attempt:
    """Whether the request has an Idempotency-Key (its ids derive from it), and whether an earlier
    attempt of it began (gateway/idempotency.py)."""
    state = request.scope["state"]
    return Attempt(keyed="idempotency_derived" in state, retry=bool(state.get("idempotency_retry")))


def _has_earlier(core: GatewayCore, token: ApiToken, rid: str, attempt: Attempt) -> bool:
    """Whether an earlier attempt of this keyed request is on the log (a 409 when it is too old)."""
    try:
        return attempt.keyed and core.metering.has_earlier(token.org_id, rid)
    except AttemptForgotten:
        raise _forgotten() from None


def captured_of(seen: Seen) -> HoldCaptured | None:
    captured = seen.get(HoldCaptured)
    return captured if isinstance(captured, HoldCaptured) else None


def _forgotten() -> ApiError:
    return ApiError(
        409,
        "This Idempotency-Key's request ended longer ago than its outcome is kept, and left no answer to "
        "replay; see GET /v1/account/usage, or send the request with a new key.",
        code="idempotency_outcome_expired",
        param="Idempotency-Key",
    )


async def run_metered(
    request: Request[Any, Any, Any],
    core: GatewayCore,
    token: ApiToken,
    metered: MeteredRequest,
    accepted: Accepted = accepted_job,
) -> tuple[Placement, Seen] | Response[bytes]:
    """Hold and run the request; the answer of an async request (``accepted``: a 202 and its job),
    else the events that ended it. A retry of a request (its Idempotency-Key) whose earlier attempt is
    on the log answers from that attempt."""
    rid = request_id(request)
    try:
        placement, seen = await core.metering.run(
            token, rid, metered, request_admitted if metered.run_async else request_finished, _attempt(request)
        )
    except Overloaded:
        raise overloaded() from None
    except OrganizationBusy as busy:
        raise _busy(busy.args[0]) from None
    except AttemptForgotten:
        raise _forgotten() from None
    except TimeoutError:
        raise ApiError(
            504, "The job did not finish in time. Its hold settles on its own; check /v1/jobs.", code="timeout"
        ) from None
    if metered.run_async and (placement.resumed or HoldPlaced in seen):
        return accepted(rid, placement)
    raise_refusal(core, token, rid, metered, placement, seen)
    return placement, seen


@dataclass(frozen=True, slots=True)
class Answered:
    """A request run to its completion: the charge its answer states and the job's result (decoded)."""

    placement: Placement
    completed: JobCompleted
    charge: Charge
    result: Any


async def run_answered(
    request: Request[Any, Any, Any],
    core: GatewayCore,
    token: ApiToken,
    metered: MeteredRequest,
    accepted: Accepted = accepted_job,
) -> Answered | Response[bytes]:
    """``run_metered``, then the charge of its completion (``answered``): what a whole answer needs,
    or the 202 of an async request."""
    outcome = await run_metered(request, core, token, metered, accepted)
    if isinstance(outcome, Response):
        return outcome
    placement, seen = outcome
    completed = seen[JobCompleted]
    assert isinstance(completed, JobCompleted)
    charge = answered(core, token, placement, metered, completed, captured_of(seen))
    return Answered(placement, completed, charge, msgspec.json.decode(completed.result))


def raise_refusal(
    core: GatewayCore, token: ApiToken, rid: str, metered: MeteredRequest, placement: Placement, seen: Seen
) -> None:
    error = refusal(seen, metered.model, "messages" if metered.endpoint == CHAT else "prompt")
    if error is None:
        return
    rejected = seen.get(HoldRejected)
    if isinstance(rejected, HoldRejected):
        core.record_rejection(token, rid, metered.endpoint, metered.model, 402, rejected.code)
        if placement.slice_id:
            core.metering.stop_unheld(placement)  # dispatched already: its worker stops, uncharged
    raise error


def answered(
    core: GatewayCore,
    token: ApiToken,
    placement: Placement,
    metered: MeteredRequest,
    completed: JobCompleted,
    captured: HoldCaptured | None = None,
) -> Charge:
    """The charge an answer states (the ledger records the same one a moment later), shown in this
    instance's balances at once. An earlier attempt's answer (a retry with its Idempotency-Key) states
    what the ledger ``captured`` when it is known (under the price book of that attempt's hold)."""
    if placement.resumed and captured is not None:
        return Charge(
            model=captured.model,
            units=captured.units,
            amount_micros=captured.amount_micros,
            priced_micros=captured.priced_micros,
            price_version=captured.price_version,
            occurred_at=completed.occurred_at,
            requested_model=captured.requested_model,
            fallback_depth=completed.fallback_depth if captured.requested_model else 0,
            counted_by=completed.counted_by,
        )
    charge = charge_of_completed(metered, completed)
    if not placement.resumed:  # an earlier attempt's charge: counted by that attempt, or by its capture
        hold_id = placement.command.hold_id
        sliced = bool(placement.slice_id)
        core.pending.answered(token.org_id, hold_id, metered.hold_micros, charge.amount_micros, sliced)
        core.limiter.count_answered(token.org_id, token.token_id, hold_id, charge.units)
    return charge


async def _respond_json(
    request: Request[Any, Any, Any],
    core: GatewayCore,
    token: ApiToken,
    metered: MeteredRequest,
    accepted: Accepted = accepted_job,
) -> Response[bytes]:
    started = time.perf_counter()
    done = await run_answered(request, core, token, metered, accepted)
    if isinstance(done, Response):
        return done
    charge = done.charge
    body = shape_result(metered.endpoint, request_id(request), done.result, charge, metered.price_of(charge.model))
    body = await linked(request, core, token.org_id, body, metered.answer_url)
    added_ms = (time.perf_counter() - started) * 1000 - done.completed.duration_ms
    headers = {**charge_headers(charge), "x-gateway-added-ms": f"{max(added_ms, 0):.2f}"}
    return json_response(body, headers=headers)


# --- text ---


@post(CHAT, operation_id="createChatCompletion", opt={"scope": "user:write", "tokens": True}, status_code=200)
async def chat_completions(request: Request[Any, Any, Any], core: Core) -> Response[bytes] | Stream:
    token = authorize(request, "user:write")
    body = await generation_body(request, core)
    metered = parse_chat(body, core.prices.current, token.org_id, core.files)
    saving = playground.asked(request, metered)  # X-Playground-Conversation: saved once answered
    if saving is not None:
        metered = playground.from_playground(metered, saving)  # its usage row's source: playground
    answer = await _text(request, core, token, metered, "chat.completion.chunk")
    if saving is not None and not isinstance(answer, Stream) and answer.status_code == 200:
        return await playground.saved(core, token, saving, request_id(request), body, answer)
    return answer


@post(COMPLETIONS, operation_id="createCompletion", opt={"scope": "user:write", "tokens": True}, status_code=200)
async def completions(request: Request[Any, Any, Any], core: Core) -> Response[bytes] | Stream:
    token = authorize(request, "user:write")
    metered = parse_completion(await generation_body(request, core), core.prices.current)
    return await _text(request, core, token, metered, "text_completion")


async def _text(
    request: Request[Any, Any, Any], core: GatewayCore, token: ApiToken, metered: MeteredRequest, chunk_kind: str
) -> Response[bytes] | Stream:
    """A text request answers in one of three ways: streamed, async (202) or as one response."""
    if metered.stream and metered.run_async:
        raise ApiError(
            400, "A request is either streamed or async, not both.", code="invalid_parameter", param="stream"
        )
    if metered.stream:
        return await _stream(request, core, token, metered, chunk_kind)
    return await _respond_json(request, core, token, metered)


def _chunk(kind: str, rid: str, model: str, created: int, text: str, finish: str | None) -> dict[str, Any]:
    if kind == "chat.completion.chunk":
        delta: dict[str, Any] = {"content": text} if text else {}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        prefix = "chatcmpl-"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        prefix = "cmpl-"
    return {
        "id": prefix + rid.removeprefix("req_"),
        "object": kind,
        "created": created,
        "model": model,
        "choices": [choice],
    }


def _sse(data: dict[str, Any]) -> bytes:
    # Decimal amounts (cost_usd) go out as JSON numbers, as in every other body.
    return b"data: " + encode_json(data) + b"\n\n"


@dataclass(frozen=True, slots=True)
class OpenedStream:
    """A streamed request whose job has produced its first output (or ended)."""

    placement: Placement
    events: AsyncGenerator[Event | Placement, None]  # the rest of the request's events
    seen: Seen  # what happened so far (its end, when ``first`` is None)
    first: Event | None  # the first progress with output; None when the request ended without any
    model: str  # the model that serves it
    headers: dict[str, str]  # x-request-id, x-model-used (and x-fallback-*), cache-control


async def open_stream(
    request: Request[Any, Any, Any], core: GatewayCore, token: ApiToken, metered: MeteredRequest
) -> OpenedStream:
    """Hold first (a refusal is still a plain 402), then wait for the job's first output. A stream's
    response starts with it (or with the job's end), so its headers name the model that really serves
    it (``x-model-used``, and ``x-fallback-*`` when a fallback does) and a job that fails before any
    output is a plain error, as a direct call to the model would be."""
    rid = request_id(request)
    attempt = _attempt(request)
    if _has_earlier(core, token, rid, attempt):
        # Its events hold no text in this dialect's parts to stream again (chat and completions
        # streams replay theirs: ``_stream_earlier``); say so at once rather than wait for a hold
        # the ledger will not place twice.
        raise ApiError(
            409,
            "This streamed request's first attempt already ran; its outcome is at "
            f"/v1/jobs/{job_id_for(rid)}. Send a new request with a new Idempotency-Key to run it again.",
            code="idempotency_stream_ran",
            param="Idempotency-Key",
        )
    seen: Seen = {}
    events = core.metering.stream(token, rid, metered, core.cancel_job_soon, attempt)
    first: Event | None = None
    try:
        placed = await anext(events)
        assert isinstance(placed, Placement)
        placement: Placement = placed
        # Through the ledger, wait for its hold, so that a refusal is still a plain 402; against a
        # slice the hold is reserved already.
        while not placement.slice_id:
            event = await anext(events)
            assert not isinstance(event, Placement)
            seen[type(event)] = event
            if isinstance(event, (HoldPlaced, HoldRejected, CommandRejected)):
                break
        if placement.slice_id or HoldPlaced in seen:
            first = await first_output(events, seen)
    except Overloaded:
        raise overloaded() from None
    except OrganizationBusy as busy:
        raise _busy(busy.args[0]) from None
    except TimeoutError:
        await events.aclose()
        raise ApiError(504, "The job did not start in time.", code="timeout") from None
    except StopAsyncIteration:
        first = None  # the request ended: ``seen`` says how
    if first is None:
        await events.aclose()
        if JobCompleted not in seen:
            raise_refusal(core, token, rid, metered, placement, seen)
    served = first.served_model if isinstance(first, JobProgressed) and first.served_model else ""
    completed = seen.get(JobCompleted)
    if isinstance(completed, JobCompleted) and completed.served_model:
        served = completed.served_model
    model = served or metered.model
    requested = metered.model if model != metered.model else ""
    depth = first.fallback_depth if isinstance(first, JobProgressed) else 0
    if isinstance(completed, JobCompleted):
        depth = completed.fallback_depth
    headers = {"x-request-id": rid, "cache-control": "no-cache", **model_headers(model, requested, depth)}
    return OpenedStream(placement, events, seen, first, model, headers)


async def _stream(
    request: Request[Any, Any, Any], core: GatewayCore, token: ApiToken, metered: MeteredRequest, kind: str
) -> Response[bytes] | Stream:
    """Stream the job's output as it is produced (``open_stream``); a retry of a stream whose first
    attempt is on the log streams that attempt's outcome (``_stream_earlier``)."""
    if _has_earlier(core, token, request_id(request), _attempt(request)):
        return await _stream_earlier(request, core, token, metered, kind)
    opened = await open_stream(request, core, token, metered)
    placement, events, seen, first, model = opened.placement, opened.events, opened.seen, opened.first, opened.model
    rid = request_id(request)
    created = int(time.time())

    async def chunks() -> AsyncIterator[bytes]:
        sent_chars = 0
        attempt_chars: dict[int, int] = {}
        ended: Seen = dict(seen)

        def relay(event: JobProgressed) -> bytes | None:
            nonlocal sent_chars
            # A retried run replays the same text: send only what goes beyond what was sent.
            start = attempt_chars.get(event.attempt, 0)
            attempt_chars[event.attempt] = start + len(event.delta)
            fresh = event.delta[max(sent_chars - start, 0) :]
            if not fresh:
                return None
            sent_chars += len(fresh)
            return _sse(_chunk(kind, rid, model, created, fresh, None))

        try:
            opening = _chunk(kind, rid, model, created, "", None)
            if kind == "chat.completion.chunk":
                opening["choices"][0]["delta"] = {"role": "assistant", "content": ""}
            yield _sse(opening)
            if isinstance(first, JobProgressed):
                sent = relay(first)
                if sent is not None:
                    yield sent
            if first is not None:
                async for event in events:
                    assert not isinstance(event, Placement)
                    ended[type(event)] = event
                    if isinstance(event, JobProgressed) and event.delta:
                        sent = relay(event)
                        if sent is not None:
                            yield sent
            rejected = ended.get(HoldRejected)
            if isinstance(rejected, HoldRejected):  # against a slice: the ledger could not carve the hold
                core.record_rejection(token, rid, metered.endpoint, metered.model, 402, rejected.code)
                core.metering.stop_unheld(placement)
                error = refusal(ended, metered.model)
                assert error is not None
                body = {"error": {"message": error.message, "type": "insufficient_quota", "code": error.code}}
                yield _sse(body)
                return
            completed = ended.get(JobCompleted)
            if sent_chars == 0 and isinstance(completed, JobCompleted) and (text := _result_text(kind, completed)):
                # The job ended before any of its progress reached this stream (a job that finishes
                # before the stream reads its first output): its text, whole, from the result.
                yield _sse(_chunk(kind, rid, model, created, text, None))
            yield _final_chunk(core, token, placement, metered, kind, created, ended, model)
            yield b"data: [DONE]\n\n"
        except TimeoutError:
            yield _sse(
                {"error": {"message": "The job did not finish in time.", "type": "server_error", "code": "timeout"}}
            )
        finally:
            await events.aclose()

    return Stream(chunks(), media_type="text/event-stream", headers=opened.headers)


async def _stream_earlier(
    request: Request[Any, Any, Any], core: GatewayCore, token: ApiToken, metered: MeteredRequest, kind: str
) -> Response[bytes] | Stream:
    """A streamed request retried with its Idempotency-Key after its first attempt began: that attempt's
    outcome (waited for while it runs), streamed as one text delta and the final chunk with its usage."""
    outcome = await run_metered(request, core, token, metered)
    if isinstance(outcome, Response):
        return outcome
    placement, seen = outcome
    completed = seen[JobCompleted]
    assert isinstance(completed, JobCompleted)
    rid = request_id(request)
    model = completed.served_model or metered.model
    created = int(completed.occurred_at.timestamp())
    text = _result_text(kind, completed)

    async def chunks() -> AsyncIterator[bytes]:
        opening = _chunk(kind, rid, model, created, "", None)
        if kind == "chat.completion.chunk":
            opening["choices"][0]["delta"] = {"role": "assistant", "content": ""}
        yield _sse(opening)
        if text:
            yield _sse(_chunk(kind, rid, model, created, text, None))
        yield _final_chunk(core, token, placement, metered, kind, created, seen, model)
        yield b"data: [DONE]\n\n"

    requested = metered.model if model != metered.model else ""
    headers = {
        "x-request-id": rid,
        "cache-control": "no-cache",
        **model_headers(model, requested, completed.fallback_depth),
    }
    return Stream(chunks(), media_type="text/event-stream", headers=headers)


def _result_text(kind: str, completed: JobCompleted) -> str:
    """The text of a completed chat or completions job, from its result."""
    choice = (msgspec.json.decode(completed.result).get("choices") or [{}])[0]
    text = str((choice.get("message") or {}).get("content") or "") if kind == "chat.completion.chunk" else ""
    return text or str(choice.get("text") or "")


async def first_output(events: AsyncGenerator[Event | Placement, None], seen: Seen) -> Event | None:
    """The job's first progress with output; None when the request ended without any (``seen`` then
    holds how it ended)."""
    async for event in events:
        assert not isinstance(event, Placement)
        seen[type(event)] = event
        if isinstance(event, JobProgressed) and event.delta:
            return event
    return None


def _final_chunk(
    core: GatewayCore,
    token: ApiToken,
    placement: Placement,
    metered: MeteredRequest,
    kind: str,
    created: int,
    ended: Seen,
    model: str,
) -> bytes:
    rid = placement.command.request_id
    completed = ended.get(JobCompleted)
    if isinstance(completed, JobCompleted):
        charge = answered(core, token, placement, metered, completed, captured_of(ended))
        choices = msgspec.json.decode(completed.result).get("choices") or [{}]
        final = _chunk(kind, rid, charge.model or model, created, "", choices[0].get("finish_reason") or "stop")
        final["usage"] = usage_of(metered.endpoint, charge.units, charge, metered.price_of(charge.model))
        return _sse(final)
    failed = ended.get(JobFailed)
    message = failed.message if isinstance(failed, JobFailed) else "the job ended without a result"
    code = failed.code if isinstance(failed, JobFailed) else "job_failed"
    return _sse({"error": {"message": f"{message}. Nothing was charged.", "type": "server_error", "code": code}})


# --- embeddings, images, audio, video ---


@post(EMBEDDINGS, operation_id="createEmbedding", opt={"scope": "user:write"}, status_code=200)
async def embeddings(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    token = authorize(request, "user:write")
    metered = parse_embedding(await generation_body(request, core), core.prices.current)
    return await _respond_json(request, core, token, metered)


@post(IMAGES, operation_id="createImage", opt={"scope": "user:write"}, status_code=200)
async def images(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    token = authorize(request, "user:write")
    body = generation_templates.applied(await generation_body(request, core), "image")
    urls = image_reference_urls(body)
    references = [await reference_image(url, core.settings.file_url_private_allowed) for url in urls]
    metered = parse_image(body, core.prices.current, references)
    # Casola's ``async: true`` answers its 202 ``pending``; EmpirioLabs' ``sync: false`` its JobAccepted.
    casola_async = "async" in decode(body, dict[str, Any])
    return await _respond_json(request, core, token, metered, accepted_job if casola_async else image_job_accepted)


def image_job_accepted(request_id: str, placement: Placement) -> Response[bytes]:
    """An image generation sent with ``sync: false``: EmpirioLabs' JobAccepted envelope, answered 200
    as its document does (Casola's ``async: true`` keeps its 202 ``pending``: ``accepted_job``)."""
    job = placement.command.job
    body = {
        "job_id": job.job_id,
        "status": "processing",
        "poll_url": f"/v1/jobs/{job.job_id}",
        "created_at": iso_or_none(placement.command.issued_at),
        "model": job.model,
        "request_id": request_id,
        # The images come when the job ends: ``data: null`` is what no ImageResponse is (the document
        # answers oneOf JobAccepted or ImageResponse, two schemas that accept each other's objects).
        "data": None,
    }
    return json_response(body, status_code=200, headers={"location": f"/v1/jobs/{job.job_id}"})


_image_edit_fields = ("model", "prompt", "n", "size", "quality", "response_format", "user")


@post(IMAGE_EDITS, operation_id="createImageEdit", opt={"scope": "user:write"}, status_code=200)
async def image_edits(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """OpenAI's image edits (multipart): ``image`` (one file, or several as ``image`` or ``image[]``;
    PNG, JPEG, GIF or WebP), an optional PNG ``mask``, ``prompt``; PNG images as ``b64_json`` (or
    signed links with ``response_format`` ``url``), priced per image as generations are."""
    token = authorize(request, "user:write")
    form = await uploads.read_form(request)
    fields = {name: uploads.form_text(form, name) for name in _image_edit_fields}
    images = await uploads.form_files(form, "image") + await uploads.form_files(form, "image[]")
    if not images:
        raise ApiError(
            400, "Send the image to edit as a multipart 'image' file.", code="missing_required_parameter", param="image"
        )
    if len(images) > image_edit_inputs_max:
        raise ApiError(400, f"Send at most {image_edit_inputs_max} images.", code="invalid_parameter", param="image")
    for image in images:
        try:
            media.image_size(image.content)
        except ValueError as error:
            raise ApiError(
                400, f"An image is not one we can read: {error}", code="invalid_image", param="image"
            ) from None
    mask = await uploads.optional_form_file(form, "mask")
    if mask is not None:
        try:
            media.png_size(mask.content)
        except ValueError as error:
            raise ApiError(400, f"The mask must be a PNG: {error}", code="invalid_image", param="mask") from None
    if sum(len(image.content) for image in images) + len(mask.content if mask else b"") > uploads.upload_bytes_max:
        raise uploads.too_large("image")
    contents = [image.content for image in images]
    metered = parse_image_edit(contents, mask.content if mask else None, fields, core.prices.current)
    return await _respond_json(request, core, token, metered)


async def _spoken(
    request: Request[Any, Any, Any], core: GatewayCore, body: bytes, stream: bool, audio_response: bool = False
) -> tuple[Response[bytes] | Charge, MeteredRequest, SpeechAsk, dict[str, Any]]:
    """Run a speech request: its 202 (async), or its charge, the request, how to answer and the result."""
    token = authorize(request, "user:write")
    metered, ask = parse_spoken(body, core.prices.current, stream, audio_response)
    done = await run_answered(request, core, token, metered)
    if isinstance(done, Response):
        return done, metered, ask, {}
    return done.charge, metered, ask, done.result


async def _speech_answer(
    request: Request[Any, Any, Any], core: GatewayCore, body: bytes, audio_response: bool = False
) -> Response[bytes]:
    charge, metered, ask, result = await _spoken(request, core, body, False, audio_response)
    if isinstance(charge, Response):
        return charge
    if ask.audio_response:
        usage = usage_of(metered.endpoint, charge.units, charge, metered.price_of(charge.model))
        answer = speeches.audio_response(result, ask.inline, usage)
        org_id = authorize(request, "user:write").org_id
        return json_response(await linked(request, core, org_id, answer, False), headers=charge_headers(charge))
    audio = base64.b64decode(result["audio_b64"])
    media_type = str(result.get("content_type") or "audio/wav")
    return Response(content=audio, media_type=media_type, headers=charge_headers(charge))


async def _music(request: Request[Any, Any, Any], core: GatewayCore, body: bytes, endpoint: str) -> Response[bytes]:
    token = authorize(request, "user:write")
    return await _respond_json(request, core, token, parse_music(body, core.prices.current, endpoint))


@post(SPEECH, operation_id="createSpeech", opt={"scope": "user:write"}, status_code=200)
async def speech(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """OpenAI's speech (the audio is the answer, in ``response_format``: mp3, wav or pcm), or
    EmpirioLabs' JSON ``AudioResponse`` when the body names ``output_format`` or asks for ``b64_json``
    or ``url``: ``data[]`` with ``url`` (a signed link the gateway serves for an hour) or ``b64_json``,
    ``duration`` and ``format``, and the usage with its charge. A music model (EmpirioLabs' example
    sends one here) generates music as ``/v1/audio/generations`` does."""
    body = await generation_body(request, core)
    if model_kind(body, core.prices.current) == "music":
        return await _music(request, core, body, AUDIO_GENERATIONS)
    return await _speech_answer(request, core, body)


@post(AUDIO_GENERATIONS, operation_id="createAudioGeneration", opt={"scope": "user:write"}, status_code=200)
async def audio_generations(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """EmpirioLabs' audio generation: music from a ``prompt`` (priced per second of ``duration``; a job
    and a 202 past a minute, or with ``"async": true``), or a speech model's script (a podcast: priced
    per character), each answered as an ``AudioResponse``."""
    body = await generation_body(request, core)
    if model_kind(body, core.prices.current) == "speech":
        return await _speech_answer(request, core, body, audio_response=True)
    return await _music(request, core, body, AUDIO_GENERATIONS)


@post(MUSIC_GENERATIONS, operation_id="createMusic", opt={"scope": "user:write"}, status_code=200)
async def music_generations(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """Music generation (the provider page's ``/v1/music/generations``): as ``/v1/audio/generations``."""
    return await _music(request, core, await generation_body(request, core), MUSIC_GENERATIONS)


@post(SPEECH_STREAM, operation_id="createSpeechStream", opt={"scope": "user:write"}, status_code=200)
async def speech_stream(request: Request[Any, Any, Any], core: Core) -> Response[bytes] | Stream:
    """EmpirioLabs' streamed speech: an ``audio.chunk`` for each piece of audio as the job synthesizes
    it (the first goes out after the first clause, not the whole input), ``audio.timestamps`` when
    ``timestamp_type`` asks, ``audio.done`` with the duration and the usage (its exact charge), then
    ``[DONE]``. The charge is not known when the first byte goes out, so it is in ``audio.done``, not
    in ``x-credits-used`` (as chat streams carry theirs in the final chunk). A client that leaves
    cancels the job, which is charged for the characters synthesized up to then."""
    started = time.perf_counter()
    body = await generation_body(request, core)
    token = authorize(request, "user:write")
    metered, ask = parse_spoken(body, core.prices.current, stream=True)
    if _has_earlier(core, token, request_id(request), _attempt(request)):
        return await _speech_stream_earlier(request, core, token, metered, ask, started)
    opened = await open_stream(request, core, token, metered)
    events = _speech_events(core, token, metered, ask, opened, started)
    return Stream(events, media_type="text/event-stream", headers=opened.headers)


def _elapsed_ms(started: float) -> Callable[[], int]:
    return lambda: int((time.perf_counter() - started) * 1000)


async def _speech_events(
    core: GatewayCore, token: ApiToken, metered: MeteredRequest, ask: SpeechAsk, opened: OpenedStream, started: float
) -> AsyncIterator[bytes]:
    """Relay each piece of audio as it comes, then the stream's end (``_speech_ending``)."""
    pieces = speeches.AudioPieces()
    ended: Seen = dict(opened.seen)
    elapsed_ms = _elapsed_ms(started)
    seq = 0
    try:
        if isinstance(opened.first, JobProgressed):
            audio = pieces.fresh(opened.first)
            if audio:
                yield _sse(speeches.chunk_event(seq, audio, pieces.audio_format, pieces.sample_rate, elapsed_ms()))
                seq += 1
        if opened.first is not None:
            async for event in opened.events:
                assert not isinstance(event, Placement)
                ended[type(event)] = event
                if isinstance(event, JobProgressed) and event.part == AUDIO and event.delta:
                    audio = pieces.fresh(event)
                    if audio:
                        chunk = speeches.chunk_event(seq, audio, pieces.audio_format, pieces.sample_rate, elapsed_ms())
                        yield _sse(chunk)
                        seq += 1
        completed = ended.get(JobCompleted)
        rest = b""
        if isinstance(completed, JobCompleted):
            rest = await _audio_past(core, completed, msgspec.json.decode(completed.result), pieces.sent_bytes)
        for ending in _speech_ending(core, token, metered, ask, opened.placement, ended, pieces, seq, elapsed_ms, rest):
            yield _sse(ending)
    except speeches.AudioNotWhole as error:
        yield _sse(speeches.error_event(str(error), "audio_not_whole"))
    except TimeoutError:
        yield _sse(speeches.error_event("The job did not finish in time.", "timeout"))
    finally:
        await opened.events.aclose()
    yield b"data: [DONE]\n\n"


async def _audio_past(core: GatewayCore, completed: JobCompleted, result: dict[str, Any], sent_bytes: int) -> bytes:
    """A completed speech's audio past its first ``sent_bytes``: from its result, or, when the result
    left it in the job's pieces (a long stream: workers/role.py), none if the stream relayed them all,
    else read back from the pieces on the log (``speeches.AudioNotWhole`` if they are not all there)."""
    total = speeches.audio_in_pieces(result)
    if total is None:
        return speeches.result_audio(result)[0][sent_bytes:]
    if sent_bytes >= total:
        return b""
    audio = await asyncio.to_thread(speeches.audio_from_log, core.log, completed)
    if len(audio) != total:
        raise speeches.AudioNotWhole(
            f"The job's audio ({total:,} bytes) could be read back only in part ({len(audio):,} bytes)."
        )
    return audio[sent_bytes:]


def _speech_ending(
    core: GatewayCore,
    token: ApiToken,
    metered: MeteredRequest,
    ask: SpeechAsk,
    placement: Placement,
    ended: Seen,
    pieces: speeches.AudioPieces,
    seq: int,
    elapsed_ms: Callable[[], int],
    rest: bytes,
) -> list[dict[str, Any]]:
    """The events after the last piece: a completed job's ``rest`` of its audio (what no piece brought: a
    job that ended before its pieces reached the stream), timestamps and ``audio.done`` with its
    charge; a job cancelled on the way (``DELETE /v1/jobs/{id}``) ``audio.done`` with what the ledger
    charged for the characters synthesized; a refusal or failure ``audio.error`` (nothing charged)."""
    rid = placement.command.request_id
    completed = ended.get(JobCompleted)
    if isinstance(completed, JobCompleted):
        charge = answered(core, token, placement, metered, completed, captured_of(ended))
        usage = usage_of(metered.endpoint, charge.units, charge, metered.price_of(charge.model))
        result = msgspec.json.decode(completed.result)
        audio_format, sample_rate = str(result.get("format") or "wav"), int(result.get("sample_rate") or 24000)
        events = []
        for start in range(0, len(rest), speeches.stream_chunk_bytes):
            piece = rest[start : start + speeches.stream_chunk_bytes]
            events.append(speeches.chunk_event(seq, piece, audio_format, sample_rate, elapsed_ms()))
            seq += 1
        return events + list(speeches.ending_events(result, ask, usage, seq))
    captured = captured_of(ended)
    if JobCancelled in ended and (captured is not None or HoldReleased in ended):
        charge = Charge(
            model=captured.model if captured else metered.model,
            units=captured.units if captured else Units(),
            amount_micros=captured.amount_micros if captured else 0,
            priced_micros=captured.priced_micros if captured else 0,
            price_version=captured.price_version if captured else metered.price_version,
            occurred_at=captured.occurred_at if captured else utc_now(),
        )
        usage = usage_of(metered.endpoint, charge.units, charge, metered.price_of(charge.model))
        duration_ms = pieces.sent_ms()
        return [speeches.done_event(duration_ms, usage)]
    rejected = ended.get(HoldRejected)
    if isinstance(rejected, HoldRejected):  # against a slice: the ledger could not carve the hold
        core.record_rejection(token, rid, metered.endpoint, metered.model, 402, rejected.code)
        core.metering.stop_unheld(placement)
        error = refusal(ended, metered.model)
        assert error is not None
        return [speeches.error_event(error.message, error.code or "insufficient_credits", "insufficient_quota")]
    failed = ended.get(JobFailed)
    message = failed.message if isinstance(failed, JobFailed) else "the job ended without a result"
    code = failed.code if isinstance(failed, JobFailed) else "job_failed"
    return [speeches.error_event(f"{message}. Nothing was charged.", code)]


async def _speech_stream_earlier(
    request: Request[Any, Any, Any],
    core: GatewayCore,
    token: ApiToken,
    metered: MeteredRequest,
    ask: SpeechAsk,
    started: float,
) -> Response[bytes] | Stream:
    """A streamed speech retried with its Idempotency-Key after its first attempt began: that attempt's
    outcome (waited for while it runs), its audio in chunks of ``stream_chunk_bytes`` and its usage."""
    done = await run_answered(request, core, token, metered)
    if isinstance(done, Response):
        return done
    charge, completed = done.charge, done.completed
    usage = usage_of(metered.endpoint, charge.units, charge, metered.price_of(charge.model))
    result = done.result
    if speeches.audio_in_pieces(result) is not None:  # a long stream's audio, from its pieces on the log
        try:
            audio = await _audio_past(core, completed, result, 0)
        except speeches.AudioNotWhole as error:
            raise ApiError(502, f"{error} Send the request with a new key.", code="audio_not_whole") from None
        result = {**result, "audio_b64": base64.b64encode(audio).decode()}
    events = speeches.stream_events(result, ask, usage, _elapsed_ms(started))
    model = completed.served_model or metered.model
    requested = metered.model if model != metered.model else ""
    headers = {
        "x-request-id": request_id(request),
        "cache-control": "no-cache",
        **model_headers(model, requested, completed.fallback_depth),
    }

    async def chunks() -> AsyncIterator[bytes]:
        for event in events:
            yield _sse(event)
        yield b"data: [DONE]\n\n"

    return Stream(chunks(), media_type="text/event-stream", headers=headers)


_transcript_form_fields = ("model", "language", "prompt", "response_format", "async", "translate")


async def _transcript_input(
    request: Request[Any, Any, Any], core: GatewayCore, translation: bool
) -> tuple[MeteredRequest, TranscriptAsk]:
    """The audio and fields of a transcription or translation: a multipart upload (OpenAI's shape), or
    a JSON body with ``file_url`` (EmpirioLabs') or the file as base64 in ``file``."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "application/json":
        body = await read_body(request, core.settings.request_body_bytes_max)
        fields = decode(body, dict[str, Any])
        if not isinstance(fields, dict):
            raise ApiError(400, "The body must be a JSON object.", code="invalid_json")
        if fields.get("file_url") is not None:
            upload = await uploads.fetch_url(fields["file_url"], core.settings.file_url_private_allowed)
            param = "file_url"
        elif fields.get("file") is not None:
            upload, param = uploads.Upload(uploads.base64_file(fields["file"], "file"), None), "file"
        else:
            raise ApiError(
                400,
                "Send the audio as 'file_url', as base64 in 'file', or as a multipart 'file' upload.",
                code="missing_required_parameter",
                param="file_url",
            )
        ask = transcript_ask(fields, translation)
    else:
        form = await uploads.read_form(request)
        fields = {name: uploads.form_text(form, name) for name in _transcript_form_fields}
        granularities = uploads.form_texts(form, "timestamp_granularities[]")
        fields["timestamp_granularities"] = granularities or uploads.form_text(form, "timestamp_granularities")
        ask = transcript_ask({k: v for k, v in fields.items() if v is not None}, translation)
        upload = await uploads.form_file(form, "file")
        param = "file"
    try:
        duration_ms = media.audio_duration_ms(upload.content)
    except ValueError as error:
        raise ApiError(
            400, f"The file is not WAV or MP3 audio we can read: {error}", code="invalid_file", param=param
        ) from None
    return parse_transcription(upload.content, duration_ms, upload.filename, ask, core.prices.current), ask


async def _transcript(request: Request[Any, Any, Any], core: GatewayCore, translation: bool) -> Response[bytes]:
    token = authorize(request, "user:write")
    metered, ask = await _transcript_input(request, core, translation)
    done = await run_answered(request, core, token, metered)
    if isinstance(done, Response):
        return done
    charge, result = done.charge, done.result
    usage = usage_of(metered.endpoint, charge.units, charge, metered.price_of(charge.model))
    headers = charge_headers(charge)
    if ask.response_format in ("text", "srt", "vtt"):
        text = transcripts.as_text(result, ask.response_format)
        return Response(content=text.encode(), media_type="text/plain; charset=utf-8", headers=headers)
    return json_response(transcripts.as_json(result, usage, ask.response_format, ask.granularities), headers=headers)


@post(TRANSCRIPTIONS, operation_id="createTranscription", opt={"scope": "user:write"}, status_code=200)
async def transcriptions(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """OpenAI's transcriptions (multipart), and EmpirioLabs' JSON body with ``file_url``."""
    return await _transcript(request, core, translation=False)


@post(TRANSLATIONS, operation_id="createTranslation", opt={"scope": "user:write"}, status_code=200)
async def translations(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """OpenAI's translations: speech in any language to English text, priced as a transcription."""
    return await _transcript(request, core, translation=True)


@post(VIDEOS, operation_id="createVideo", opt={"scope": "user:write"}, status_code=202)
async def videos(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """Always async: the answer is a job to poll."""
    token = authorize(request, "user:write")
    body = generation_templates.applied(await generation_body(request, core), "video")
    body = await resolved_video(body, token.org_id, core.jobs.get, core.settings.file_url_private_allowed)
    metered = parse_video(body, core.prices.current)
    return await _respond_json(request, core, token, metered)


# --- rerank and text pair scoring (one request, each reference document's shape) ---


@post(RERANK, operation_id="createRerank", opt={"scope": "user:write"}, status_code=200)
async def rerank(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """Casola's ``/openai/v1/rerank``: ``data[]`` with the document as a string."""
    token = authorize(request, "user:write")
    body = await read_body(request, core.settings.request_body_bytes_max)
    return await _respond_json(request, core, token, parse_rerank(body, core.prices.current, RERANK))


@post(RERANKS, operation_id="createReranks", opt={"scope": "user:write"}, status_code=200)
async def reranks(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """EmpirioLabs' ``/v1/reranks``: ``output.results[]`` with ``document.text``, and ``request_id``."""
    token = authorize(request, "user:write")
    body = await read_body(request, core.settings.request_body_bytes_max)
    return await _respond_json(request, core, token, parse_rerank(body, core.prices.current, RERANKS))


@post(SCORE, operation_id="createScore", opt={"scope": "user:write"}, status_code=200)
async def score(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """vLLM's ``/v1/score`` (Casola's "text pair scoring")."""
    token = authorize(request, "user:write")
    body = await read_body(request, core.settings.request_body_bytes_max)
    return await _respond_json(request, core, token, parse_score(body, core.prices.current))


route_handlers = [chat_completions, completions, embeddings, images, image_edits, speech, speech_stream]
route_handlers += [audio_generations, music_generations, transcriptions, translations, videos]
route_handlers += [rerank, reranks, score]
