"""What a finished (or refused) metered request answers: the body of each endpoint with its exact
charge in ``usage``, the charge headers, and the error a refusal or a failure becomes.

A request is answered when its worker's outcome arrives, before the ledger has recorded the capture:
the charge is already determined (the usage the worker measured, priced by the hold's price book
version, capped by the hold), and ``charge_of`` computes it exactly as the ledger's ``decide`` will.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import msgspec

from gateway import speeches, texttools, transcripts
from gateway.errors import ApiError
from gateway.metering import MeteredRequest, Placement
from gateway.pending import PendingCharges
from gateway.requests import (
    AUDIO_GENERATIONS,
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    IMAGE_EDITS,
    IMAGES,
    MESSAGES,
    MUSIC_GENERATIONS,
    RERANK,
    RERANKS,
    RESPONSES,
    SCORE,
    SPEECH,
    TRANSCRIPTIONS,
    TRANSLATIONS,
    VIDEOS,
)
from ledger.money import format_credits, micros_to_decimal
from ledger.pricing import ModelPrice, price_micros, tier_label, unit_names, unit_quantities
from schemas.events import (
    CommandRejected,
    Event,
    HoldPlaced,
    HoldRejected,
    HoldReleased,
    JobCancelled,
    JobCompleted,
    JobDeadLettered,
    JobFailed,
)
from schemas.units import Units, tools
from workers.meshes import THREE_D


class Charged(Protocol):
    """A charge as an answer shows it: the ledger's ``HoldCaptured``, or the ``Charge`` it will record."""

    @property
    def model(self) -> str: ...
    @property
    def units(self) -> Units: ...
    @property
    def amount_micros(self) -> int: ...
    @property
    def price_version(self) -> str: ...
    @property
    def occurred_at(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class Charge:
    model: str  # the model that served and priced the request
    units: Units
    amount_micros: int
    priced_micros: int
    price_version: str
    occurred_at: datetime
    requested_model: str = ""  # the model asked for, when a fallback served ("" otherwise)
    fallback_depth: int = 0
    counted_by: str = ""  # how the worker counted the tokens (workers/upstream.py)


def charge_of(
    metered: MeteredRequest,
    units: Units,
    occurred_at: datetime,
    served_model: str = "",
    fallback_depth: int = 0,
    counted_by: str = "",
) -> Charge:
    """What the ledger will capture for ``units``: priced by the hold's version at the model that
    served, at most the hold (``ledger.wallet._decide_capture``, the same pure function of the same
    inputs: the ledger checks the served model against the same book's fallbacks)."""
    served = served_model or metered.model
    priced = price_micros(metered.price_of(served), units)
    return Charge(
        model=served,
        units=units,
        amount_micros=min(priced, metered.hold_micros),
        priced_micros=priced,
        price_version=metered.price_version,
        occurred_at=occurred_at,
        requested_model=metered.model if served != metered.model else "",
        fallback_depth=fallback_depth if served != metered.model else 0,
        counted_by=counted_by,
    )


def charge_of_completed(metered: MeteredRequest, completed: JobCompleted) -> Charge:
    """``charge_of`` the usage a completed job reports, at the model that served it."""
    return charge_of(
        metered,
        completed.units,
        completed.occurred_at,
        completed.served_model,
        completed.fallback_depth,
        completed.counted_by,
    )


def charge_of_job(
    pending: PendingCharges, org_id: str, metered: MeteredRequest, placement: Placement, seen: dict[type, Event]
) -> tuple[Charge, JobCompleted]:
    """The charge of a request whose job completed, run inside the gateway (a batch line, an agent
    run's node), shown in this instance's balances at once unless an earlier run of it answered
    already. Its hold was carved from a slice when the ledger's HoldPlaced says so (a batch's
    reservation is not the placement's own slice)."""
    completed = seen[JobCompleted]
    assert isinstance(completed, JobCompleted)
    charge = charge_of_completed(metered, completed)
    if not placement.resumed:
        placed = seen.get(HoldPlaced)
        carved = isinstance(placed, HoldPlaced) and bool(placed.slice_id)
        pending.answered(org_id, placement.command.hold_id, metered.hold_micros, charge.amount_micros, carved)
    return charge, completed


def usage_cost(captured: Charged, price: ModelPrice | None = None) -> dict[str, Any]:
    """What every usage object carries beside its counts: the exact charge (``cost_usd``, a JSON
    number, equal to ``x-credits-used``), the price book version, and what chose the rates: the
    ``pricing_tier_label`` (context tier or image variant), batch prices, the per-request fee's count
    (``requests``), search queries and per-tool invocations (``tool_usage``)."""
    units = captured.units
    cost: dict[str, Any] = {
        "cost_usd": micros_to_decimal(captured.amount_micros),
        "cost_micros": captured.amount_micros,
        "price_version": captured.price_version,
    }
    label = tier_label(price, units) if price is not None else ""
    if label:
        cost["pricing_tier_label"] = label
    if units.batch:
        cost["service_tier"] = "flex"
        cost["batch_discount_percent"] = price.batch_discount_percent if price is not None else 0
    if units.calls:
        cost["requests"] = units.calls
    if units.search_units:
        cost["num_search_queries"] = units.search_units
    if units.storage_byte_days:
        cost["storage_byte_days"] = units.storage_byte_days
    used_tools = {tool: units.tool_calls(tool) for tool in tools if units.tool_calls(tool)}
    if used_tools:
        cost["tool_usage"] = used_tools
        cost["tool_calls_details"] = {tool: {"invocation": count} for tool, count in used_tools.items()}
    counted_by = getattr(captured, "counted_by", "")
    if counted_by:
        cost["tokens_counted_by"] = counted_by
    return cost


def token_usage(units: Units) -> dict[str, Any]:
    """OpenAI's token counts, every kind apart: the prompt (``prompt_tokens``) is uncached text plus
    each of ``prompt_tokens_details``; ``completion_tokens`` is output plus ``reasoning_tokens``. The
    cache counts also go by the names EmpirioLabs uses (``cache_read_input_tokens``,
    ``cache_creation_input_tokens``)."""
    usage: dict[str, Any] = {
        "prompt_tokens": units.prompt_tokens,
        "completion_tokens": units.completion_tokens,
        "total_tokens": units.total_tokens,
        "prompt_tokens_details": {
            "cached_tokens": units.cached_input_tokens,
            "cache_write_tokens": units.cache_write_tokens,
            "image_tokens": units.image_input_tokens,
            "audio_tokens": units.audio_input_tokens,
        },
        "completion_tokens_details": {"reasoning_tokens": units.reasoning_tokens},
    }
    if units.cached_input_tokens or units.cache_write_tokens:
        usage["cache_read_input_tokens"] = units.cached_input_tokens
        usage["cache_creation_input_tokens"] = units.cache_write_tokens
    if units.reasoning_tokens:
        usage["reasoning_tokens"] = units.reasoning_tokens
    return usage


def usage_of(endpoint: str, units: Units, captured: Charged, price: ModelPrice | None) -> dict[str, Any]:
    """The ``usage`` object of an endpoint's answer: every priced unit with its count, and its charge.
    ``GET /v1/account/usage`` shows the same object under each event's ``metadata.worker_usage``."""
    if endpoint in (CHAT, COMPLETIONS):
        counts: dict[str, Any] = token_usage(units)
    elif endpoint == EMBEDDINGS:
        counts = {"prompt_tokens": units.prompt_tokens, "total_tokens": units.prompt_tokens}
        if units.image_input_tokens:  # image items of a multimodal embedder
            counts["prompt_tokens_details"] = {"image_tokens": units.image_input_tokens}
    elif endpoint in (IMAGES, IMAGE_EDITS):
        counts = {"images": units.images}
    elif endpoint in (TRANSCRIPTIONS, TRANSLATIONS):
        counts = {"type": "duration", "seconds": units.audio_seconds}
    elif endpoint == SPEECH:
        counts = {"characters": units.characters}
    elif endpoint == VIDEOS:
        counts = {"seconds": units.video_seconds}
    elif endpoint in (AUDIO_GENERATIONS, MUSIC_GENERATIONS):
        counts = {"seconds": units.audio_seconds}
    elif endpoint == THREE_D:  # one generation per request, priced by the request
        counts = {"generations": units.calls}
    elif endpoint in texttools.endpoints:
        counts = texttools.counts(endpoint, units)
    else:  # an endpoint without a usage shape of its own: every unit by its name
        counts = {name: quantity for name, quantity in zip(unit_names, unit_quantities(units), strict=True) if quantity}
    return {**counts, **usage_cost(captured, price)}


def shape_result(
    endpoint: str, request_id: str, result: dict[str, Any], captured: Charged, price: ModelPrice | None = None
) -> dict[str, Any]:
    """The response body of a finished job, as the synchronous endpoint answers it (and as
    ``GET /v1/jobs/{id}`` shows it in ``result``)."""
    units = captured.units
    created = int(captured.occurred_at.timestamp())
    suffix = request_id.removeprefix("req_")
    usage = usage_of(endpoint, units, captured, price)
    shape = result.get("answer_shape")
    if shape is not None:
        result = {key: value for key, value in result.items() if key != "answer_shape"}
    if endpoint in (TRANSCRIPTIONS, TRANSLATIONS) and isinstance(shape, dict):
        return transcript_body(result, usage, shape)
    if endpoint == CHAT:
        return {**result, "id": f"chatcmpl-{suffix}", "created": created, "model": captured.model, "usage": usage}
    if endpoint == COMPLETIONS:
        return {**result, "id": f"cmpl-{suffix}", "created": created, "model": captured.model, "usage": usage}
    if endpoint in (EMBEDDINGS, TRANSCRIPTIONS, TRANSLATIONS, SPEECH):
        return {**result, "usage": usage}
    if endpoint in (AUDIO_GENERATIONS, MUSIC_GENERATIONS):
        return speeches.audio_response(result, bool(result.get("inline")), usage)
    if endpoint in (RERANK, RERANKS, SCORE):
        return scoring_body(endpoint, request_id, result, captured)
    if endpoint in texttools.endpoints:
        return texttools.shape(endpoint, request_id, result, captured.model, created, usage)
    if endpoint == RESPONSES:
        return response_body(request_id, result, captured, price)
    if endpoint == MESSAGES:
        return message_body(request_id, result, captured, price)
    if endpoint in (IMAGES, IMAGE_EDITS):
        # EmpirioLabs' images answer is oneOf JobAccepted or ImageResponse, two schemas that accept each
        # other's objects; ``poll_url: null`` (nothing to poll) is what no JobAccepted is.
        return {**result, "created": created, "usage": usage, "poll_url": None}
    return {**result, "created": created, "usage": usage}


def transcript_body(result: dict[str, Any], usage: dict[str, Any], shape: dict[str, Any]) -> dict[str, Any]:
    """A transcription job's result in the format its request asked for (``answer_shape``): ``json``
    and ``verbose_json`` as the synchronous answer; ``text``, ``srt`` and ``vtt`` (plain text there)
    as that text under ``text``, with the usage."""
    response_format = str(shape.get("response_format") or "json")
    granularities = tuple(str(g) for g in shape.get("timestamp_granularities") or ())
    if response_format in ("text", "srt", "vtt"):
        return {"text": transcripts.as_text(result, response_format), "usage": usage}
    return transcripts.as_json(result, usage, response_format, granularities)


class _Shaped(msgspec.Struct):
    answer_shape: dict[str, Any] | None = None


def asked_for_url(raw_result: bytes | msgspec.Raw) -> bool:
    """Whether a finished image job's request asked for links (its ``answer_shape``; links are the
    default), read from the job's result as the worker sent it."""
    try:
        shape = msgspec.json.decode(raw_result, type=_Shaped).answer_shape
    except msgspec.ValidationError:
        return True
    return shape is None or shape.get("response_format", "url") == "url"


def scoring_body(endpoint: str, request_id: str, result: dict[str, Any], captured: Charged) -> dict[str, Any]:
    """A rerank in Casola's shape (``data[]`` with ``document`` as a string) or EmpirioLabs' (``output
    .results[]`` with ``document.text``, and ``request_id``), or a score in vLLM's; the worker's result
    is vLLM's rerank (``results[]``, ``document.text`` when asked for) or score (``data[]``)."""
    tokens = captured.units.input_tokens
    usage = {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens, **usage_cost(captured)}
    suffix = request_id.removeprefix("req_")
    if endpoint == SCORE:
        data = result.get("data") or []
        created = int(captured.occurred_at.timestamp())
        return {
            "id": f"score-{suffix}",
            "object": "list",
            "created": created,
            "model": captured.model,
            "data": data,
            "usage": usage,
        }
    results = result.get("results") or []
    if endpoint == RERANKS:
        return {"output": {"results": results}, "usage": usage, "request_id": request_id}
    data = []
    for ranked in results:
        entry = {"index": ranked["index"], "relevance_score": ranked["relevance_score"]}
        document = ranked.get("document")
        if isinstance(document, dict):
            entry["document"] = document.get("text", "")
        data.append(entry)
    return {"id": f"rerank-{suffix}", "object": "list", "model": captured.model, "data": data, "usage": usage}


_item_prefixes = {"message": "msg", "function_call": "fc", "web_search_call": "ws", "reasoning": "rs"}


def item_id(request_id: str, item_type: str, index: int) -> str:
    """A Responses output item's id, by its place in ``output``: a streamed item and the same item in
    the final response carry the same one."""
    return f"{_item_prefixes.get(item_type, 'item')}_{request_id.removeprefix('req_')}{index:02d}"


def responses_usage(
    units: Units, reasoning_tokens: int, captured: Charged, price: ModelPrice | None = None
) -> dict[str, Any]:
    """The Responses API's usage: its token counts, and what every usage object carries (the charge,
    the tier, ``requests``, ``tool_usage`` with the hosted web searches)."""
    input_tokens = units.input_tokens + units.cached_input_tokens
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": units.cached_input_tokens, "cache_write_tokens": 0},
        "output_tokens": units.output_tokens,
        "output_tokens_details": {"reasoning_tokens": min(reasoning_tokens, units.output_tokens)},
        "total_tokens": input_tokens + units.output_tokens,
        **usage_cost(captured, price),
    }


def response_body(
    request_id: str, result: dict[str, Any], captured: Charged, price: ModelPrice | None = None
) -> dict[str, Any]:
    """A Responses API response object: the worker's output (items given ids by position) and the
    request's settings it echoes, with the exact charge in ``usage.cost_usd``; ``tool_usage`` counts the
    hosted web searches (each a priced call)."""
    body = {key: value for key, value in result.items() if key != "reasoning_tokens"}
    output = [
        {**item, "id": item_id(request_id, str(item.get("type")), index)}
        for index, item in enumerate(result.get("output") or [])
    ]
    created = int(captured.occurred_at.timestamp())
    body.update(
        id=f"resp_{request_id.removeprefix('req_')}",
        object="response",
        created_at=created,
        completed_at=created if body.get("status") == "completed" else None,
        model=captured.model,
        output=output,
        error=None,
        usage=responses_usage(captured.units, int(result.get("reasoning_tokens") or 0), captured, price),
        tool_usage={"web_search": {"num_requests": captured.units.web_search_calls}},
    )
    return body


def message_body(
    request_id: str, result: dict[str, Any], captured: Charged, price: ModelPrice | None = None
) -> dict[str, Any]:
    """An Anthropic Messages response: ``usage`` in Anthropic's shape (cache writes and reads apart from
    ``input_tokens``, each at its rate) with the exact charge."""
    body = {key: value for key, value in result.items() if key != "cache_creation_input_tokens"}
    body.update(
        id=f"msg_{request_id.removeprefix('req_')}", model=captured.model, usage=message_usage(result, captured, price)
    )
    return body


def message_usage(result: dict[str, Any], captured: Charged, price: ModelPrice | None = None) -> dict[str, Any]:
    units = captured.units
    return {
        "input_tokens": units.input_tokens + units.image_input_tokens + units.audio_input_tokens,
        "output_tokens": units.completion_tokens,
        "cache_creation_input_tokens": units.cache_write_tokens,
        "cache_read_input_tokens": units.cached_input_tokens,
        **usage_cost(captured, price),
    }


def model_headers(served: str, requested: str = "", fallback_depth: int = 0) -> dict[str, str]:
    """``x-model-used``, and when a fallback served, ``x-fallback-from`` and ``x-fallback-depth``."""
    headers = {"x-model-used": served}
    if requested and requested != served:
        headers["x-fallback-from"] = requested
        headers["x-fallback-depth"] = str(max(fallback_depth, 1))
    return headers


def charge_headers(captured: Charged) -> dict[str, str]:
    requested = getattr(captured, "requested_model", "")
    depth = getattr(captured, "fallback_depth", 0)
    return {"x-credits-used": format_credits(captured.amount_micros), **model_headers(captured.model, requested, depth)}


def refusal(seen: dict[type, Event], model: str, prompt_param: str | None = None) -> ApiError | None:
    """The error a refused or failed request answers with; None when it was charged. A prompt the
    model's context cannot take is the client's error (400, naming ``prompt_param``), as from the model.
    Each is the request's outcome (kept for its Idempotency-Key), but a reused key."""
    if CommandRejected in seen:
        # The same hold id with another amount: an Idempotency-Key reused across instances at once.
        return ApiError(409, "This Idempotency-Key was used with a different request.", code="idempotency_key_reused")
    rejected = seen.get(HoldRejected)
    if isinstance(rejected, HoldRejected):
        return ApiError(
            402,
            f"Insufficient credits: this request may cost up to {format_credits(rejected.requested_micros)} credits "
            f"and {format_credits(max(rejected.available_micros, 0))} are available. Add credits, or ask for less.",
            code="insufficient_credits",
            outcome=True,
        )
    if JobCompleted in seen:
        return None
    ran = {"x-model-used": model}
    released = seen.get(HoldReleased)
    reason = released.reason if isinstance(released, HoldReleased) else "unknown"
    if JobCancelled in seen or reason == "cancelled":
        return ApiError(
            409,
            "The job was cancelled; it was charged for the work done.",
            code="job_cancelled",
            headers=ran,
            outcome=True,
        )
    dead = seen.get(JobDeadLettered)
    if isinstance(dead, JobDeadLettered):
        return ApiError(
            502,
            f"The job failed {dead.attempts} times and was given up. Nothing was charged.",
            code="dead_letter",
            headers=ran,
            outcome=True,
        )
    failed = seen.get(JobFailed)
    if isinstance(failed, JobFailed) and failed.code == "context_length_exceeded":
        message = f"{failed.message[:1].upper()}{failed.message[1:]}. Nothing was charged."
        return ApiError(400, message, code=failed.code, param=prompt_param, outcome=True)
    if isinstance(failed, JobFailed):
        code = "dead_letter" if failed.retryable else failed.code
        return ApiError(
            502,
            f"The model backend failed: {failed.message}. Nothing was charged.",
            code=code,
            headers=ran,
            outcome=True,
        )
    return ApiError(
        502, f"The job ended without a result ({reason}). Nothing was charged.", code="job_failed", outcome=True
    )
