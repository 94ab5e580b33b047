"""Generation endpoints: each prices its worst case from the price book, holds it, and answers when
the job is charged, or at once with 202 and a job id when the body says ``"async": true``.

Chat and text completions also stream (server-sent events, usage in the final chunk); a client that
leaves a stream cancels its job, which is charged for what was generated up to the stop.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.datastructures import UploadFile
from litestar.response import Stream

from gateway.app import (
    _core,
    _idempotently,
    _json,
    _request_id,
    authorize,
    chat_input_tokens_bound,
)
from gateway.core import GatewayCore, Overloaded
from gateway.errors import ApiError, from_validation_error
from ledger.money import format_credits, micros_to_decimal
from ledger.pricing import ModelPrice, billed_seconds, price_micros
from projections.views import ApiToken
from schemas.api import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ImageRequest,
    SpeechRequest,
    VideoRequest,
)
from schemas.events import (
    CommandRejected,
    Event,
    HoldCaptured,
    HoldPlaced,
    HoldRejected,
    HoldReleased,
    JobCancelled,
    JobCompleted,
    JobDeadLettered,
    JobFailed,
    JobProgressed,
)
from schemas.units import Units
from workers import media

text_bytes_per_token_min = 1  # any byte-level tokenizer: a token is at least one byte
transcription_upload_bytes_max = 3 * 1024 * 1024  # fits one Kafka record with its base64 and envelope


@dataclass(frozen=True, slots=True)
class Metered:
    """What one request asks the ledger to hold and a worker to run."""

    endpoint: str
    price: ModelPrice
    price_version: str
    bound: Units
    payload: bytes
    run_async: bool = False
    stream: bool = False


def _decode(body: bytes, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(body, type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        raise from_validation_error(error) from None


def _async_flag(body: bytes) -> bool:
    try:
        flag = msgspec.json.decode(body, type=dict[str, Any]).get("async", False)
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        raise from_validation_error(error) from None
    if not isinstance(flag, bool):
        raise ApiError(400, "'async' must be true or false.", code="invalid_type", param="async")
    return flag


def _model(core: GatewayCore, model: str, fits: Any, kind: str) -> tuple[ModelPrice, str]:
    book = core.prices.current
    price = book.model(model)
    if price is None or not fits(price):
        raise ApiError(
            404,
            f"The model '{model}' does not exist or is not {kind} model; see GET /v1/models.",
            code="model_not_found",
            param="model",
        )
    return price, book.version


async def _body(request: Request) -> bytes:
    body = await request.body()
    if len(body) > _core(request).settings.request_body_bytes_max:
        raise ApiError(413, "Request body too large.", code="request_too_large")
    return body


def _usage_cost(captured: HoldCaptured) -> dict[str, Any]:
    return {
        "cost_usd": micros_to_decimal(captured.amount_micros),
        "cost_micros": captured.amount_micros,
        "price_version": captured.price_version,
    }


def _token_usage(units: Units) -> dict[str, Any]:
    prompt_tokens = units.input_tokens + units.cached_input_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": units.output_tokens,
        "total_tokens": prompt_tokens + units.output_tokens,
        "prompt_tokens_details": {"cached_tokens": units.cached_input_tokens},
    }


def shape_result(endpoint: str, request_id: str, result: dict[str, Any], captured: HoldCaptured) -> dict[str, Any]:
    """The response body of a finished job, as the synchronous endpoint answers it (and as
    ``GET /v1/jobs/{id}`` shows it in ``result``)."""
    units = captured.units
    created = int(captured.occurred_at.timestamp())
    suffix = request_id.removeprefix("req_")
    if endpoint == "/v1/chat/completions":
        usage = {**_token_usage(units), **_usage_cost(captured)}
        return {**result, "id": f"chatcmpl-{suffix}", "created": created, "model": captured.model, "usage": usage}
    if endpoint == "/v1/completions":
        usage = {**_token_usage(units), **_usage_cost(captured)}
        return {**result, "id": f"cmpl-{suffix}", "created": created, "model": captured.model, "usage": usage}
    if endpoint == "/v1/embeddings":
        usage = {"prompt_tokens": units.input_tokens, "total_tokens": units.input_tokens, **_usage_cost(captured)}
        return {**result, "usage": usage}
    if endpoint == "/v1/images/generations":
        return {**result, "created": created, "usage": {"images": units.images, **_usage_cost(captured)}}
    if endpoint == "/v1/audio/transcriptions":
        usage = {"type": "duration", "seconds": units.audio_seconds, **_usage_cost(captured)}
        return {**result, "usage": usage}
    if endpoint == "/v1/audio/speech":
        return {**result, "usage": {"characters": units.characters, **_usage_cost(captured)}}
    return {**result, "created": created, "usage": {"seconds": units.video_seconds, **_usage_cost(captured)}}


def _charge_headers(captured: HoldCaptured) -> dict[str, str]:
    return {"x-credits-used": format_credits(captured.amount_micros), "x-model-used": captured.model}


def _refusal(core: GatewayCore, token: ApiToken, request_id: str, metered: Metered, seen: dict[type, Event]) -> None:
    """Raise the error a refused or failed request answers with; return when it was charged."""
    if CommandRejected in seen:
        # The same hold id with another amount: an Idempotency-Key reused across instances at once.
        raise ApiError(409, "This Idempotency-Key was used with a different request.", code="idempotency_key_reused")
    rejected = seen.get(HoldRejected)
    if isinstance(rejected, HoldRejected):
        core.record_rejection(token, request_id, metered.endpoint, metered.price.model, 402, rejected.code)
        raise ApiError(
            402,
            f"Insufficient credits: this request may cost up to {format_credits(rejected.requested_micros)} credits "
            f"and {format_credits(max(rejected.available_micros, 0))} are available. Add credits, or ask for less.",
            code="insufficient_credits",
        )
    if HoldCaptured in seen and JobCancelled not in seen:
        return
    ran = {"x-model-used": metered.price.model}
    if JobCancelled in seen:
        raise ApiError(
            409, "The job was cancelled; it was charged for the work done.", code="job_cancelled", headers=ran
        )
    dead = seen.get(JobDeadLettered)
    if isinstance(dead, JobDeadLettered):
        raise ApiError(
            502,
            f"The job failed {dead.attempts} times and was given up. Nothing was charged.",
            code="dead_letter",
            headers=ran,
        )
    failed = seen.get(JobFailed)
    if isinstance(failed, JobFailed):
        code = "dead_letter" if failed.retryable else failed.code
        raise ApiError(502, f"The model backend failed: {failed.message}. Nothing was charged.", code=code, headers=ran)
    released = seen.get(HoldReleased)
    reason = released.reason if isinstance(released, HoldReleased) else "unknown"
    raise ApiError(502, f"The job ended without a result ({reason}). Nothing was charged.", code="job_failed")


def _accepted(request_id: str, placed: HoldPlaced) -> Response[bytes]:
    body = {
        "id": placed.job_id,
        "job_id": placed.job_id,
        "object": "job",
        "status": "pending",
        "model": placed.model,
        "endpoint": placed.endpoint,
        "request_id": request_id,
        "poll_url": f"/v1/jobs/{placed.job_id}",
    }
    return _json(body, status_code=202, headers={"location": f"/v1/jobs/{placed.job_id}"})


async def _run(request: Request, token: ApiToken, metered: Metered) -> tuple[str, dict[type, Event]] | Response[bytes]:
    """Hold and run the request; the response for async requests, else the events that ended it."""
    core = _core(request)
    request_id = _request_id(request)
    hold_micros = price_micros(metered.price, metered.bound)
    try:
        seen = await core.run_metered(
            token,
            request_id,
            metered.endpoint,
            metered.price.model,
            metered.price.pool,
            metered.payload,
            hold_micros,
            metered.price_version,
            wait_for=_admitted_or_finished(metered.run_async),
        )
    except Overloaded:
        raise ApiError(
            503,
            "This gateway is at its limit of requests in flight; retry shortly.",
            code="overloaded",
            headers={"retry-after": "1"},
        ) from None
    except TimeoutError:
        raise ApiError(
            504, "The job did not finish in time. Its hold settles on its own; check /v1/jobs.", code="timeout"
        ) from None
    placed = seen.get(HoldPlaced)
    if metered.run_async and isinstance(placed, HoldPlaced):
        return _accepted(request_id, placed)
    _refusal(core, token, request_id, metered, seen)
    return request_id, seen


def _admitted_or_finished(run_async: bool) -> Any:
    from gateway.core import request_admitted, request_finished

    return request_admitted if run_async else request_finished


async def _respond_json(request: Request, token: ApiToken, metered: Metered) -> Response[bytes]:
    started = time.perf_counter()
    outcome = await _run(request, token, metered)
    if isinstance(outcome, Response):
        return outcome
    request_id, seen = outcome
    completed, captured = seen[JobCompleted], seen[HoldCaptured]
    assert isinstance(completed, JobCompleted) and isinstance(captured, HoldCaptured)
    body = shape_result(metered.endpoint, request_id, msgspec.json.decode(completed.result), captured)
    added_ms = (time.perf_counter() - started) * 1000 - completed.duration_ms
    return _json(body, headers={**_charge_headers(captured), "x-gateway-added-ms": f"{max(added_ms, 0):.2f}"})


# --- text ---


def _text_bound(price: ModelPrice, input_tokens: int, max_output: int, param: str) -> Units:
    if max_output > price.max_output_tokens:
        raise ApiError(
            400,
            f"{param} may be at most {price.max_output_tokens} for {price.model}.",
            code="invalid_parameter",
            param=param,
        )
    return Units(input_tokens=input_tokens, output_tokens=max_output)


@post(
    "/v1/chat/completions",
    operation_id="createChatCompletion",
    opt={"scope": "user:write", "tokens": True},
    status_code=200,
)
async def chat_completions(request: Request) -> Response[bytes] | Stream:
    token = authorize(request, "user:write")
    body = await _body(request)
    chat = _decode(body, ChatCompletionRequest)
    price, version = _model(_core(request), chat.model, lambda p: p.category == "chat", "a chat")
    if chat.n != 1:
        raise ApiError(400, "Only n=1 is supported.", code="unsupported_parameter", param="n")
    param = "max_completion_tokens" if chat.max_completion_tokens else "max_tokens"
    max_output = chat.max_completion_tokens or chat.max_tokens or price.max_output_tokens
    bound = _text_bound(price, chat_input_tokens_bound(chat.messages), max_output, param)
    metered = Metered("/v1/chat/completions", price, version, bound, body, _async_flag(body), chat.stream)
    return await _text(request, token, metered, "chat.completion.chunk")


@post("/v1/completions", operation_id="createCompletion", opt={"scope": "user:write", "tokens": True}, status_code=200)
async def completions(request: Request) -> Response[bytes] | Stream:
    token = authorize(request, "user:write")
    body = await _body(request)
    completion = _decode(body, CompletionRequest)
    price, version = _model(_core(request), completion.model, lambda p: p.category == "chat", "a text")
    if completion.n != 1:
        raise ApiError(400, "Only n=1 is supported.", code="unsupported_parameter", param="n")
    prompts = completion.prompt if isinstance(completion.prompt, list) else [completion.prompt]
    input_bound = 16 + sum(len(p.encode()) // text_bytes_per_token_min for p in prompts)
    bound = _text_bound(price, input_bound, completion.max_tokens, "max_tokens")
    metered = Metered("/v1/completions", price, version, bound, body, _async_flag(body), completion.stream)
    return await _text(request, token, metered, "text_completion")


async def _text(request: Request, token: ApiToken, metered: Metered, chunk_kind: str) -> Response[bytes] | Stream:
    """A text request answers in one of three ways: streamed, async (202) or as one response."""
    if metered.stream and metered.run_async:
        raise ApiError(
            400, "A request is either streamed or async, not both.", code="invalid_parameter", param="stream"
        )
    if metered.stream:
        return await _stream(request, token, metered, chunk_kind)
    return await _idempotently(request, token.org_id, lambda derived: _respond_json(request, token, metered))


def _chunk(kind: str, request_id: str, model: str, created: int, text: str, finish: str | None) -> dict[str, Any]:
    if kind == "chat.completion.chunk":
        delta: dict[str, Any] = {"content": text} if text else {}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        prefix = "chatcmpl-"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        prefix = "cmpl-"
    return {
        "id": prefix + request_id.removeprefix("req_"),
        "object": kind,
        "created": created,
        "model": model,
        "choices": [choice],
    }


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + msgspec.json.encode(data, enc_hook=str) + b"\n\n"


async def _stream(request: Request, token: ApiToken, metered: Metered, kind: str) -> Stream:
    """Hold first (a refusal is still a plain 402), then stream the job's output as it is produced."""
    core = _core(request)
    request_id = _request_id(request)
    hold_micros = price_micros(metered.price, metered.bound)
    try:
        events = core.stream_metered(
            token,
            request_id,
            metered.endpoint,
            metered.price.model,
            metered.price.pool,
            metered.payload,
            hold_micros,
            metered.price_version,
        )
        seen: dict[type, Event] = {}
        async for event in events:
            seen[type(event)] = event
            if isinstance(event, (HoldPlaced, HoldRejected, CommandRejected)):
                break
    except Overloaded:
        raise ApiError(503, "This gateway is at its limit of requests in flight.", code="overloaded") from None
    except TimeoutError:
        raise ApiError(504, "The ledger did not answer in time.", code="timeout") from None
    if HoldPlaced not in seen:
        await events.aclose()
        _refusal(core, token, request_id, metered, seen)
    created = int(time.time())
    model = metered.price.model

    async def chunks() -> AsyncIterator[bytes]:
        sent_chars = 0
        attempt_chars: dict[int, int] = {}
        try:
            first = _chunk(kind, request_id, model, created, "", None)
            if kind == "chat.completion.chunk":
                first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
            yield _sse(first)
            ended: dict[type, Event] = {}
            async for event in events:
                ended[type(event)] = event
                if isinstance(event, JobProgressed) and event.delta:
                    # A retried run replays the same text: send only what goes beyond what was sent.
                    start = attempt_chars.get(event.attempt, 0)
                    attempt_chars[event.attempt] = start + len(event.delta)
                    fresh = event.delta[max(sent_chars - start, 0) :]
                    if fresh:
                        sent_chars += len(fresh)
                        yield _sse(_chunk(kind, request_id, model, created, fresh, None))
            yield _final_chunk(kind, request_id, model, created, ended)
            yield b"data: [DONE]\n\n"
        except TimeoutError:
            yield _sse(
                {"error": {"message": "The job did not finish in time.", "type": "server_error", "code": "timeout"}}
            )
        finally:
            await events.aclose()

    headers = {"x-request-id": request_id, "x-model-used": model, "cache-control": "no-cache"}
    return Stream(chunks(), media_type="text/event-stream", headers=headers)


def _final_chunk(kind: str, request_id: str, model: str, created: int, ended: dict[type, Event]) -> bytes:
    captured = ended.get(HoldCaptured)
    completed = ended.get(JobCompleted)
    if isinstance(captured, HoldCaptured):
        finish = "stop"
        if isinstance(completed, JobCompleted):
            choices = msgspec.json.decode(completed.result).get("choices") or [{}]
            finish = choices[0].get("finish_reason") or "stop"
        final = _chunk(kind, request_id, model, created, "", finish)
        final["usage"] = {**_token_usage(captured.units), **_usage_cost(captured)}
        return _sse(final)
    failed = ended.get(JobFailed)
    message = failed.message if isinstance(failed, JobFailed) else "the job ended without a result"
    code = failed.code if isinstance(failed, JobFailed) else "job_failed"
    return _sse({"error": {"message": f"{message}. Nothing was charged.", "type": "server_error", "code": code}})


# --- embeddings, images, audio, video ---


@post("/v1/embeddings", operation_id="createEmbedding", opt={"scope": "user:write"}, status_code=200)
async def embeddings(request: Request) -> Response[bytes]:
    token = authorize(request, "user:write")
    body = await _body(request)
    embedding = _decode(body, EmbeddingRequest)
    price, version = _model(_core(request), embedding.model, lambda p: p.category == "embedding", "an embedding")
    given = embedding.input
    items = given if isinstance(given, list) else [given]
    if isinstance(given, list) and not (
        all(isinstance(i, str) and i for i in items)
        or all(isinstance(i, int) and not isinstance(i, bool) for i in items)
        or all(isinstance(i, list) and i and all(isinstance(t, int) for t in i) for i in items)
    ):
        raise ApiError(
            400,
            "'input' must be a string, a list of strings, a list of token ids, or a list of token id lists.",
            code="invalid_type",
            param="input",
        )
    if isinstance(given, list) and all(isinstance(i, int) for i in items):
        items = [items]
    bound_tokens = sum(len(i.encode()) if isinstance(i, str) else (len(i) if isinstance(i, list) else 1) for i in items)
    if bound_tokens > price.context_length * max(len(items), 1):
        raise ApiError(
            400, "The input is longer than the model's context.", code="context_length_exceeded", param="input"
        )
    metered = Metered("/v1/embeddings", price, version, Units(input_tokens=bound_tokens), body, _async_flag(body))
    return await _idempotently(request, token.org_id, lambda derived: _respond_json(request, token, metered))


@post("/v1/images/generations", operation_id="createImage", opt={"scope": "user:write"}, status_code=200)
async def images(request: Request) -> Response[bytes]:
    token = authorize(request, "user:write")
    body = await _body(request)
    image = _decode(body, ImageRequest)
    price, version = _model(_core(request), image.model, lambda p: p.category == "image", "an image")
    variant = f"{image.size}/{image.quality}"
    if price.image_variant_rates and variant not in price.image_variant_rates:
        raise ApiError(400, f"{price.model} has no price for {variant}.", code="invalid_parameter", param="size")
    bound = Units(images=image.n, variant=variant)
    metered = Metered("/v1/images/generations", price, version, bound, body, _async_flag(body))
    return await _idempotently(request, token.org_id, lambda derived: _respond_json(request, token, metered))


@post("/v1/audio/speech", operation_id="createSpeech", opt={"scope": "user:write"}, status_code=200)
async def speech(request: Request) -> Response[bytes]:
    token = authorize(request, "user:write")
    body = await _body(request)
    spoken = _decode(body, SpeechRequest)
    price, version = _model(_core(request), spoken.model, lambda p: p.character_rate > 0, "a speech")
    metered = Metered("/v1/audio/speech", price, version, Units(characters=len(spoken.input)), body, _async_flag(body))

    async def respond(derived: str | None) -> Response[bytes]:
        outcome = await _run(request, token, metered)
        if isinstance(outcome, Response):
            return outcome
        _, seen = outcome
        completed, captured = seen[JobCompleted], seen[HoldCaptured]
        assert isinstance(completed, JobCompleted) and isinstance(captured, HoldCaptured)
        audio = base64.b64decode(msgspec.json.decode(completed.result)["audio_b64"])
        return Response(content=audio, media_type="audio/wav", headers=_charge_headers(captured))

    return await _idempotently(request, token.org_id, respond)


transcription_text_fields = ("model", "language", "prompt", "response_format", "async")


def _form_text(form: Any, name: str) -> str | None:
    """A multipart field that must be text: a part sent as a file is a 400 naming it, here rather than
    a failure to encode the job's payload later."""
    value = form.get(name)
    if value is None or isinstance(value, str):
        return value
    raise ApiError(400, f"'{name}' must be a text field, not a file.", code="invalid_type", param=name)


@post("/v1/audio/transcriptions", operation_id="createTranscription", opt={"scope": "user:write"}, status_code=200)
async def transcriptions(request: Request) -> Response[bytes]:
    token = authorize(request, "user:write")
    core = _core(request)
    form = await request.form()
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(
            400, "Send the audio as a multipart 'file' field.", code="missing_required_parameter", param="file"
        )
    audio = await upload.read()
    if len(audio) > transcription_upload_bytes_max:
        raise ApiError(
            413,
            f"Audio files may be at most {transcription_upload_bytes_max} bytes.",
            code="file_too_large",
            param="file",
        )
    try:
        duration_ms = media.wav_duration_ms(audio)
    except ValueError as error:
        raise ApiError(
            400, f"The file is not WAV audio we can read: {error}", code="invalid_file", param="file"
        ) from None
    text = {name: _form_text(form, name) for name in transcription_text_fields}
    model = text["model"] or ""
    price, version = _model(core, model, lambda p: p.audio_second_rate > 0, "a transcription")
    run_async = (text["async"] or "false").lower() == "true"
    payload = msgspec.json.encode(
        {
            "model": model,
            "file_b64": base64.b64encode(audio).decode(),
            "filename": upload.filename,
            "language": text["language"],
            "prompt": text["prompt"],
        }
    )
    bound = Units(audio_seconds=billed_seconds(duration_ms))
    metered = Metered("/v1/audio/transcriptions", price, version, bound, payload, run_async)
    return await _respond_json(request, token, metered)


@post(
    "/v1/videos/generations", operation_id="createVideo", opt={"scope": "user:write", "rate": "jobs"}, status_code=202
)
async def videos(request: Request) -> Response[bytes]:
    """Always async: the answer is a job to poll."""
    token = authorize(request, "user:write")
    body = await _body(request)
    video = _decode(body, VideoRequest)
    price, version = _model(_core(request), video.model, lambda p: p.category == "video", "a video")
    metered = Metered("/v1/videos/generations", price, version, Units(video_seconds=video.duration), body, True)
    return await _idempotently(request, token.org_id, lambda derived: _respond_json(request, token, metered))


route_handlers = [chat_completions, completions, embeddings, images, speech, transcriptions, videos]
