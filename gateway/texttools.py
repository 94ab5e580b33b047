"""The text tools' requests and answers at the gateway: EmpirioLabs' ``/v1/search``, ``/v1/research``,
``/v1/answer``, ``/v1/detect`` and ``/v1/images/analysis``, and Casola's ``/v1/pii``
(``/openai/v1/pii``).

Each body is parsed once into a ``MeteredRequest`` (gateway/requests.py's contract): its bound from
the same rules the worker counts by (workers/texttools.py), the defaults the hold assumed written into
the payload (a search's tier as ``search_tier``; a research request as the chat completion its model
runs, with its output limit), so the run and the hold never disagree. Bodies in the documents' shapes
with the exact charge in ``usage`` (``shape``), for the synchronous answer and ``GET /v1/jobs/{id}``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.errors import ApiError
from gateway.http import check_depth, decode
from gateway.metering import MeteredRequest
from gateway.requests import chat_bound, model_price, tokens_per_request_bound
from ledger.pricing import ModelPrice, PriceBook
from schemas import texttools as bodies
from schemas.units import Units
from workers import metering, texttools
from workers.texttools import ANSWER, DETECT, IMAGE_ANALYSIS, PII, RESEARCH, SEARCH, endpoints

__all__ = ["ANSWER", "DETECT", "IMAGE_ANALYSIS", "PII", "RESEARCH", "SEARCH", "counts", "endpoints", "parse", "shape"]

pii_model_default = "pii-redact"  # Casola names no PII model: a body without one uses Tollgate's
# The fields each body must have, and their types (any other field goes to the model as it is).
request_types: dict[str, type[Any]] = {
    SEARCH: bodies.SearchRequest,
    RESEARCH: bodies.ResearchRequest,
    ANSWER: bodies.AnswerRequest,
    DETECT: bodies.DetectRequest,
    IMAGE_ANALYSIS: bodies.ImageAnalysisRequest,
    PII: bodies.PiiRequest,
}
# The OpenAPI operation of each path (the EmpirioLabs document's operationIds), and an example body.
operations = {
    "createSearch": SEARCH,
    "createResearch": RESEARCH,
    "createAnswer": ANSWER,
    "createDetection": DETECT,
    "analyzeImage": IMAGE_ANALYSIS,
    "createPiiDetection": PII,
}
body_examples: dict[str, dict[str, Any]] = {
    "createSearch": {"model": "tavily-search", "query": "latest CRDT research papers 2026", "max_results": 3},
    "createResearch": {"model": "perplexity-advanced-deep-research", "query": "CRDTs in 2026", "async": False},
    "createAnswer": {"model": "exa-answer", "query": "When was the last total solar eclipse in the US?"},
    "createDetection": {"model": "gptzero", "input": "The quick brown fox jumps over the lazy dog."},
    "analyzeImage": {
        "model": "janus-pro-deepseek",
        "image_url": "https://example.com/photo.jpg",
        "question": "What is in this image?",
    },
    "createPiiDetection": {"model": "pii-redact", "input": "Mail jane.doe@example.com or call +1 415 555 0100."},
}
_kinds = {
    SEARCH: ("search", "a search"),
    ANSWER: ("answer", "an answer"),
    DETECT: ("detection", "a detection"),
    IMAGE_ANALYSIS: ("vision", "an image analysis"),
    PII: ("pii", "a PII detection"),
}


def _fields(body: bytes) -> dict[str, Any]:
    fields = decode(body, dict[str, Any])
    if not isinstance(fields, dict):
        raise ApiError(400, "The body must be a JSON object.", code="invalid_request_error")
    check_depth(fields)
    return fields


def _string(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"'{name}' is required: a non-empty string.", code="missing_required_parameter", param=name)
    return value


def _flag(fields: dict[str, Any], name: str, default: bool) -> bool:
    value = fields.pop(name, default)
    if not isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be true or false.", code="invalid_type", param=name)
    return value


def _price(book: PriceBook, fields: dict[str, Any], endpoint: str) -> ModelPrice:
    model = fields.get("model", pii_model_default if endpoint == PII else None)
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required.", code="missing_required_parameter", param="model")
    fields["model"] = model
    if endpoint == RESEARCH:
        return model_price(book, model, lambda p: p.category == "chat" and p.search_unit_rate > 0, "a research")
    category, kind = _kinds[endpoint]
    return model_price(book, model, lambda p: p.category == category, kind)


def _text_bound(texts: list[str]) -> int:
    """Tokens of plain text, for any byte-level tokenizer: at most one a byte, and the request's own."""
    return tokens_per_request_bound + sum(len(text.encode()) for text in texts)


def _bound(endpoint: str, price: ModelPrice, fields: dict[str, Any]) -> Units:
    """What the request may use at most (the hold), with what the run must obey written into ``fields``."""
    if endpoint == SEARCH:
        _string(fields, "query")
        tier = texttools.search_tier(price.model, fields, price.search_variant_rates)
        fields["search_tier"] = tier
        return texttools.search_bound(price.model, fields, tier)
    if endpoint == ANSWER:
        _string(fields, "query")
        if fields.get("stream"):
            raise ApiError(
                400,
                "Streamed answers are not served; send stream: false.",
                code="unsupported_parameter",
                param="stream",
            )
        return Units(calls=1)
    if endpoint == DETECT:
        text = texttools.detect_input(fields)
        lookups = texttools.detect_lookups(texttools.detect_scan_type(fields), text)
        return Units(input_tokens=_text_bound([text]), search_units=lookups)
    if endpoint == PII:
        texttools.pii_options(fields)
        return Units(input_tokens=_text_bound(texttools.pii_inputs(fields)))
    if endpoint == IMAGE_ANALYSIS:
        chat = texttools.analysis_chat(fields)
        fields["max_tokens"] = price.max_output_tokens
        return _chat_bound(chat, price.max_output_tokens)
    chat = texttools.research_chat(fields, price.max_output_tokens)
    fields.update(chat)
    queries = metering.search_queries_per_request_max
    bound = _chat_bound(chat, int(chat["max_tokens"]))
    if price.search_variant_rates:  # Perplexity's search_context_size prices its queries
        fields["search_context_size"] = tier = texttools.search_tier(price.model, fields, price.search_variant_rates)
        bound = msgspec.structs.replace(bound, variant=tier)
    citations = queries * texttools.research_citation_tokens_per_query_max
    return msgspec.structs.replace(bound, input_tokens=bound.input_tokens + citations, search_units=queries)


def _chat_bound(chat: dict[str, Any], output_tokens: int) -> Units:
    try:
        prompt = metering.chat_prompt(chat)
    except metering.MeteringError as error:
        raise ApiError(400, str(error), code=error.code, param=error.param) from None
    return msgspec.structs.replace(chat_bound(prompt), output_tokens=output_tokens, calls=1)


def parse(endpoint: str, body: bytes, book: PriceBook) -> MeteredRequest:
    """A text tool's body as the request to hold and run: 404 for a model that is not of the
    endpoint's kind, 400 naming the field for anything the run could not do. Research is async unless
    the body says ``"async": false`` (EmpirioLabs answers it 202); the others unless ``"async": true``."""
    decode(body, request_types[endpoint])
    fields = _fields(body)
    price = _price(book, fields, endpoint)
    run_async = _flag(fields, "async", endpoint == RESEARCH)
    try:
        bound = _bound(endpoint, price, fields)
    except texttools.ToolInputError as error:
        raise ApiError(400, str(error), code="invalid_parameter", param=error.param) from None
    bound = msgspec.structs.replace(bound, calls=1)
    return MeteredRequest(endpoint, price, book.version, bound, msgspec.json.encode(fields), run_async)


# --- answers ---


def counts(endpoint: str, units: Units) -> dict[str, Any]:
    """The counts of a text tool's ``usage`` (beside the charge and what chose the rates)."""
    if endpoint == SEARCH:
        found: dict[str, Any] = {
            "tool_usage": {"search": units.search_units},
            "tool_calls_details": {"search": {"invocation": units.search_units}},
        }
        if units.output_tokens:
            found["completion_tokens"] = units.output_tokens  # summaries
        return found
    if endpoint in (RESEARCH, IMAGE_ANALYSIS):
        found = {
            "prompt_tokens": units.prompt_tokens,
            "completion_tokens": units.completion_tokens,
            "total_tokens": units.total_tokens,
        }
        if units.image_input_tokens:
            found["image_tokens"] = units.image_input_tokens
        if units.reasoning_tokens:
            found["reasoning_tokens"] = units.reasoning_tokens
        return found
    if endpoint in (DETECT, PII):
        return {"prompt_tokens": units.input_tokens, "total_tokens": units.input_tokens}
    return {}


def shape(
    endpoint: str, request_id: str, result: dict[str, Any], model: str, created: int, usage: dict[str, Any]
) -> dict[str, Any]:
    """A text tool's answer: the worker's result in the endpoint's shape, with ``usage``."""
    suffix = request_id.removeprefix("req_")
    if endpoint == SEARCH:
        body = {**result, "model": model, "request_id": request_id, "usage": usage}
        if isinstance(result.get("costDollars"), dict):  # Exa's own statement of the cost: the charge
            body["costDollars"] = {**result["costDollars"], "total": usage["cost_usd"]}
        return body
    if endpoint == RESEARCH:
        report = {key: value for key, value in result.items() if key != "citation_tokens"}
        usage = {**usage, "citation_tokens": int(result.get("citation_tokens") or 0)}
        return {"id": f"research-{suffix}", **report, "model": model, "created": created, "usage": usage}
    if endpoint == PII:
        return {
            "id": f"pii-{suffix}",
            "object": "list",
            "model": model,
            "data": result.get("data") or [],
            "usage": usage,
        }
    kind = {ANSWER: "answer", DETECT: "detection", IMAGE_ANALYSIS: "image.analysis"}[endpoint]
    return {
        "id": f"{kind.split('.')[-1]}-{suffix}",
        "object": kind,
        "model": model,
        "created": created,
        **result,
        "usage": usage,
    }
