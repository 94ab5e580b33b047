"""Generation requests parsed once: each body becomes one ``MeteredRequest``, whose bound the hold
prices and whose payload the worker runs. The limits the worker obeys (the output token limit above
all) are written into that payload here, so the hold and the run can never disagree about them: a
request that omits ``max_tokens`` is held for, and runs to, the same limit.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any

import msgspec

from gateway.errors import ApiError
from gateway.http import check_depth, decode
from gateway.metering import MeteredRequest
from ledger.pricing import (
    ModelPrice,
    PriceBook,
    billed_seconds,
    kind_of,
    modalities,
    prices_by_resolution,
    resolution_size,
)
from schemas.api import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    FalImageRequest,
    FalSpeechRequest,
    FalVideoRequest,
    ImageRequest,
    RerankRequest,
    ScoreRequest,
    SpeechRequest,
    VideoRequest,
)
from schemas.units import Units
from workers import conversations, metering, result_sizes, texttools
from workers.backends import embedding_dimensions_default, score_pairs, speech_ms_per_character
from workers.metering import FileContents

tokens_per_message_bound = 8
tokens_per_request_bound = 16
text_bytes_per_token_min = 1  # any byte-level tokenizer: a token is at least one byte
completion_max_tokens_default = 16  # OpenAI's default for /v1/completions
# What a reranker's own prompt template may add to each (query, document) pair: Qwen3-Reranker's is
# about 70 tokens with its default instruction. Part of the hold only; the charge is what was counted.
tokens_per_pair_bound = 128

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
IMAGES = "/v1/images/generations"
IMAGE_EDITS = "/v1/images/edits"
AUDIO_GENERATIONS = "/v1/audio/generations"  # EmpirioLabs: music, podcasts, sound
MUSIC_GENERATIONS = "/v1/music/generations"
SPEECH = "/v1/audio/speech"
SPEECH_STREAM = "/v1/audio/speech:stream"  # EmpirioLabs' streamed speech (the job is a speech job)
TRANSCRIPTIONS = "/v1/audio/transcriptions"
TRANSLATIONS = "/v1/audio/translations"
VIDEOS = "/v1/videos/generations"
RERANK = "/v1/rerank"  # Casola's shape
RERANKS = "/v1/reranks"  # EmpirioLabs' shape
SCORE = "/v1/score"  # vLLM's text pair scoring
RESPONSES = conversations.RESPONSES
MESSAGES = conversations.MESSAGES


def _decode(body: bytes, kind: type[Any]) -> Any:
    return decode(body, kind)


def _fields(body: bytes) -> dict[str, Any]:
    """The body as a JSON object: everything Tollgate does not read is forwarded untouched (so it is
    bounded in depth here: the worker decodes it again)."""
    fields = _decode(body, dict[str, Any])
    assert isinstance(fields, dict)
    check_depth(fields)
    return fields


def _async_flag(fields: dict[str, Any]) -> bool:
    flag = fields.get("async", False)
    if not isinstance(flag, bool):
        raise ApiError(400, "'async' must be true or false.", code="invalid_type", param="async")
    return flag


def model_price(book: PriceBook, model: str, fits: Callable[[ModelPrice], bool], kind: str) -> ModelPrice:
    price = book.model(model)
    if price is None or not fits(price):
        raise ApiError(
            404,
            f"The model '{model}' does not exist or is not {kind} model; see GET /v1/models.",
            code="model_not_found",
            param="model",
        )
    return price


def _metered(
    endpoint: str,
    price: ModelPrice,
    book: PriceBook,
    bound: Units,
    payload: bytes,
    run_async: bool = False,
    stream: bool = False,
) -> MeteredRequest:
    """The request, with the fallbacks of its model that the book prices for the same kind of work."""
    fallbacks = tuple(
        fallback
        for name in price.fallbacks
        if (fallback := book.model(name)) is not None and fallback.category == price.category and name != price.model
    )
    return MeteredRequest(endpoint, price, book.version, bound, payload, run_async, stream, fallbacks)


def _output_limit(price: ModelPrice, max_tokens: int | None, max_completion_tokens: int | None, default: int) -> int:
    """The output token limit the request is held for and runs with."""
    if max_tokens is not None and max_completion_tokens is not None and max_tokens != max_completion_tokens:
        raise ApiError(
            400,
            "Send max_tokens or max_completion_tokens, not both with different values.",
            code="invalid_parameter",
            param="max_completion_tokens",
        )
    limit = max_completion_tokens if max_completion_tokens is not None else max_tokens
    param = "max_completion_tokens" if max_completion_tokens is not None else "max_tokens"
    limit = min(default, price.max_output_tokens) if limit is None else limit
    if limit > price.max_output_tokens:
        raise ApiError(
            400,
            f"{param} may be at most {price.max_output_tokens} for {price.model}.",
            code="invalid_parameter",
            param=param,
        )
    return limit


def _with_output_limit(fields: dict[str, Any], limit: int) -> bytes:
    """The payload a worker runs: the body with its output limit as ``max_tokens`` (the field every
    OpenAI-compatible server reads), and no second limit that could say otherwise."""
    fields.pop("max_completion_tokens", None)
    fields["max_tokens"] = limit
    return msgspec.json.encode(fields)


def _service_tier(fields: dict[str, Any]) -> bool:
    """Whether the request asks for batch prices (``"service_tier": "flex"``): slower is fine, and the
    model's batch discount applies."""
    tier = fields.get("service_tier", "auto")
    if tier not in metering.service_tiers:
        raise ApiError(
            400,
            f"service_tier must be one of {', '.join(metering.service_tiers)}.",
            code="invalid_parameter",
            param="service_tier",
        )
    return tier in metering.batch_service_tiers


def _per_request(fields: dict[str, Any]) -> Units:
    """What every request is charged whatever it does: the flat per-request fee, at batch prices or not."""
    return Units(calls=1, batch=_service_tier(fields))


def _bytes(texts: list[str]) -> int:
    return sum(len(text.encode()) for text in texts)


def _refuse_inputs(price: ModelPrice, prompt: metering.Prompt, fields: dict[str, Any]) -> None:
    """An input the model cannot read is a 400 naming it (as a provider answers audio sent to a model
    without audio input: ``audio_not_supported_by_model``)."""
    inputs = modalities(price)[0]
    for kind, used in (("image", prompt.image_tokens), ("audio", prompt.audio_ms), ("file", _has_file(fields))):
        if used and kind not in inputs:
            raise ApiError(
                400,
                f"{price.model} does not accept {kind} input; see its input_modalities in GET /v1/models.",
                code=f"{kind}_not_supported_by_model",
                param="messages",
            )


def _has_file(fields: dict[str, Any]) -> bool:
    messages = fields.get("messages")
    return any(
        isinstance(part, dict) and part.get("type") == "file"
        for message in (messages if isinstance(messages, list) else [])
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for part in message["content"]
    )


def _tools_and_reasoning(price: ModelPrice, fields: dict[str, Any]) -> Units:
    """The bound of what a model may do beyond tokens, and the defaults the run obeys: a web search
    when asked (priced per call), its own search queries (research models), reasoning effort."""
    searches = 0
    if fields.get("web_search_options") is not None:
        if "web_search" not in price.tool_call_rates:
            raise ApiError(
                400,
                f"{price.model} does not search the web; see the models with web_search in GET /v1/models.",
                code="web_search_not_supported_by_model",
                param="web_search_options",
            )
        searches = metering.web_searches_per_request_max
    if "reasoning" in price.features:
        fields.setdefault("reasoning_effort", "medium")
    elif "reasoning_effort" in fields:
        raise ApiError(
            400, f"{price.model} is not a reasoning model.", code="unsupported_parameter", param="reasoning_effort"
        )
    queries = metering.search_queries_per_request_max if price.search_unit_rate else 0
    return Units(web_search_calls=searches, search_units=queries)


def _search_context(price: ModelPrice, fields: dict[str, Any]) -> str:
    """The tier a chat model's search queries are priced at (Perplexity's ``search_context_size``, its
    default written into the payload so the run and the hold agree); "" for a model with one rate."""
    if not price.search_variant_rates:
        return ""
    try:
        tier = texttools.search_tier(price.model, fields, price.search_variant_rates)
    except texttools.ToolInputError as error:
        raise ApiError(400, str(error), code="invalid_parameter", param=error.param) from None
    fields["search_context_size"] = tier
    # Its searches are its own, priced per query at this tier: OpenAI's web_search_options (where
    # Perplexity also reads search_context_size) is no separate web search call here.
    fields.pop("web_search_options", None)
    return tier


def chat_bound(prompt: metering.Prompt) -> Units:
    """An upper bound on a chat prompt's tokens by kind, for any byte-level tokenizer (a token is at
    least one byte): text in ``input_tokens``, its cacheable prefix in ``cache_write_tokens`` (it may
    be written to a cache: ``worst_case_micros`` prices it so), images and audio by their rules."""
    prefix = _bytes(prompt.texts[: prompt.cacheable_texts])
    text = tokens_per_request_bound + tokens_per_message_bound * prompt.messages + _bytes(prompt.texts)
    return Units(
        input_tokens=text - prefix,
        cache_write_tokens=prefix,
        image_input_tokens=prompt.image_tokens,
        audio_input_tokens=prompt.audio_tokens,
    )


def parse_chat(body: bytes, book: PriceBook, org_id: str = "", files: FileContents | None = None) -> MeteredRequest:
    chat: ChatCompletionRequest = _decode(body, ChatCompletionRequest)
    price = model_price(book, chat.model, lambda p: p.category == "chat", "a chat")
    if chat.n != 1:
        raise ApiError(400, "Only n=1 is supported.", code="unsupported_parameter", param="n")
    fields = _fields(body)
    try:
        metering.inline_files(fields, org_id, files or metering.NoFiles())
        prompt = metering.chat_prompt(fields)
    except metering.MeteringError as error:
        raise ApiError(400, str(error), code=error.code, param=error.param) from None
    _refuse_inputs(price, prompt, fields)
    limit = _output_limit(price, chat.max_tokens, chat.max_completion_tokens, price.max_output_tokens)
    tier = _search_context(price, fields)
    extra = _tools_and_reasoning(price, fields)
    bound = msgspec.structs.replace(
        chat_bound(prompt),
        output_tokens=limit,
        web_search_calls=extra.web_search_calls,
        search_units=extra.search_units,
        calls=1,
        batch=_service_tier(fields),
        variant=tier,
    )
    run_async = _async_flag(fields)
    return _metered(CHAT, price, book, bound, _with_output_limit(fields, limit), run_async, chat.stream)


def parse_completion(body: bytes, book: PriceBook) -> MeteredRequest:
    completion: CompletionRequest = _decode(body, CompletionRequest)
    price = model_price(book, completion.model, lambda p: p.category == "chat", "a text")
    if completion.n != 1:
        raise ApiError(400, "Only n=1 is supported.", code="unsupported_parameter", param="n")
    fields = _fields(body)
    limit = _output_limit(price, completion.max_tokens, completion.max_completion_tokens, completion_max_tokens_default)
    prompts = completion.prompt if isinstance(completion.prompt, list) else [completion.prompt]
    input_bound = tokens_per_request_bound + sum(len(p.encode()) // text_bytes_per_token_min for p in prompts)
    bound = msgspec.structs.replace(_per_request(fields), input_tokens=input_bound, output_tokens=limit)
    run_async = _async_flag(fields)
    payload = _with_output_limit(fields, limit)
    return _metered(COMPLETIONS, price, book, bound, payload, run_async, completion.stream)


def _multimodal_embedding_bound(price: ModelPrice, items: list[Any], fields: dict[str, Any]) -> Units:
    """The bound of EmpirioLabs' multimodal embedding items (``{"type": "text", "text"}``, ``{"type":
    "image", "url"}``): text at a token per byte, images by the vision rule (``workers/metering.py``:
    an image by URL, not fetched, counts as the largest)."""
    if "image" not in modalities(price)[0]:
        raise ApiError(
            400,
            f"{price.model} embeds text only; send 'input' as strings (see input_modalities in GET /v1/models).",
            code="image_not_supported_by_model",
            param="input",
        )
    try:
        counted = metering.embedding_items(items)
    except metering.MeteringError as error:
        raise ApiError(400, str(error), code=error.code, param=error.param) from None
    text = tokens_per_request_bound + sum(len(t.encode()) for t in counted.texts)
    return msgspec.structs.replace(_per_request(fields), input_tokens=text, image_input_tokens=counted.image_tokens)


def check_embeddings_fit(embedding: EmbeddingRequest, items: int) -> None:
    """A 400 for embeddings whose answer (``items`` vectors of ``dimensions`` values) is over what one
    result may hold (``workers/result_sizes.py``), naming what would fit."""
    dimensions = embedding.dimensions or embedding_dimensions_default
    encoding = embedding.encoding_format
    size = result_sizes.embedding_result_bytes(items, dimensions, encoding)
    if size <= result_sizes.job_result_bytes_max:
        return
    per_item = result_sizes.embedding_result_bytes(1, dimensions, encoding)
    options = [f"at most {result_sizes.job_result_bytes_max // per_item:,} inputs a request at {dimensions} dimensions"]
    if encoding == "float" and result_sizes.embedding_result_bytes(items, dimensions, "base64") <= (
        result_sizes.job_result_bytes_max
    ):
        options.append('encoding_format "base64"')
    if embedding.dimensions is not None:
        options.append("fewer dimensions")
    raise ApiError(
        400,
        f"{items:,} embeddings of {dimensions} dimensions ({encoding}) come to about {_megabytes(size)}, more than "
        f"one result may hold ({_megabytes(result_sizes.job_result_bytes_max)}). Send {', or '.join(options)}.",
        code="result_too_large",
        param="input",
    )


def parse_embedding(body: bytes, book: PriceBook) -> MeteredRequest:
    embedding: EmbeddingRequest = _decode(body, EmbeddingRequest)
    price = model_price(book, embedding.model, lambda p: p.category == "embedding", "an embedding")
    given = embedding.input
    items = given if isinstance(given, list) else [given]
    if isinstance(given, list) and any(isinstance(item, dict) for item in items):
        check_embeddings_fit(embedding, len(items))
        fields = _fields(body)
        bound = _multimodal_embedding_bound(price, items, fields)
        return _metered(EMBEDDINGS, price, book, bound, body, _async_flag(fields))
    if isinstance(given, list) and not (
        all(isinstance(i, str) and i for i in items)
        or all(isinstance(i, int) and not isinstance(i, bool) for i in items)
        or all(isinstance(i, list) and i and all(isinstance(t, int) for t in i) for i in items)
    ):
        raise ApiError(
            400,
            "'input' must be a string, a list of strings, a list of token ids, a list of token id lists, or a"
            ' list of items ({"type": "text", "text"} or {"type": "image", "url"}).',
            code="invalid_type",
            param="input",
        )
    if isinstance(given, list) and all(isinstance(i, int) for i in items):
        items = [items]
    check_embeddings_fit(embedding, len(items))
    bound_tokens = sum(len(i.encode()) if isinstance(i, str) else (len(i) if isinstance(i, list) else 1) for i in items)
    if bound_tokens > price.context_length * max(len(items), 1):
        raise ApiError(
            400, "The input is longer than the model's context.", code="context_length_exceeded", param="input"
        )
    fields = _fields(body)
    bound = msgspec.structs.replace(_per_request(fields), input_tokens=bound_tokens)
    return _metered(EMBEDDINGS, price, book, bound, body, _async_flag(fields))


def _pairs_bound(pairs: list[tuple[str, str]], instruct: str = "") -> int:
    """An upper bound on the tokens a cross-encoder reads: each pair whole (a token is at least one
    byte), with the instruction and a template allowance each."""
    per_pair = len(instruct.encode()) + tokens_per_pair_bound
    return tokens_per_request_bound + sum(len(a.encode()) + len(b.encode()) + per_pair for a, b in pairs)


def parse_rerank(body: bytes, book: PriceBook, endpoint: str = RERANK) -> MeteredRequest:
    """``POST /v1/rerank`` and ``/v1/reranks``: the query scored against each document, held for every
    pair's bytes; ``top_n`` may exceed the documents (all are returned then)."""
    rerank: RerankRequest = _decode(body, RerankRequest)
    price = model_price(book, rerank.model, lambda p: p.category == "rerank", "a rerank")
    fields = _fields(body)
    run_async = _async_flag(fields)
    fields.pop("async", None)
    bound = Units(input_tokens=_pairs_bound([(rerank.query, d) for d in rerank.documents], rerank.instruct or ""))
    return _metered(endpoint, price, book, bound, msgspec.json.encode(fields), run_async)


def parse_score(body: bytes, book: PriceBook) -> MeteredRequest:
    """``POST /v1/score``: each pair held for its bytes, as a rerank's."""
    score: ScoreRequest = _decode(body, ScoreRequest)
    price = model_price(book, score.model, lambda p: p.category == "rerank", "a scoring")
    try:
        pairs = score_pairs(score.text_1, score.text_2)
    except ValueError as error:
        raise ApiError(
            400,
            f"{error}: send one text_1, or two lists of the same length.",
            code="invalid_parameter",
            param="text_2",
        ) from None
    fields = _fields(body)
    run_async = _async_flag(fields)
    fields.pop("async", None)
    return _metered(SCORE, price, book, Units(input_tokens=_pairs_bound(pairs)), msgspec.json.encode(fields), run_async)


def _image_count(image: ImageRequest, fields: dict[str, Any]) -> int:
    """``n``, or EmpirioLabs' ``num_images`` (the same number when both are sent)."""
    if image.num_images is None:
        return image.n
    if "n" in fields and image.n != image.num_images:
        raise ApiError(
            400, "Send n or num_images, not both with different values.", code="invalid_parameter", param="num_images"
        )
    return image.num_images


def _image_variant(price: ModelPrice, image: ImageRequest, fields: dict[str, Any]) -> tuple[str, str]:
    """(size, variant): a model priced by resolution takes ``resolution`` (default 2K) and
    ``aspect_ratio`` (default 1:1), the others OpenAI's ``size`` and ``quality``."""
    if prices_by_resolution(price):
        if "size" in fields or "quality" in fields:
            raise ApiError(
                400,
                f"{price.model} takes resolution ({', '.join(price.image_variant_rates)}) and aspect_ratio, not size.",
                code="unsupported_parameter",
                param="size" if "size" in fields else "quality",
            )
        resolution = image.resolution or "2K"
        if resolution not in price.image_variant_rates:
            raise ApiError(
                400, f"{price.model} has no price for {resolution}.", code="invalid_parameter", param="resolution"
            )
        width, height = resolution_size(resolution, image.aspect_ratio or "1:1")
        return f"{width}x{height}", resolution
    for name in ("resolution", "aspect_ratio"):
        if name in fields:
            raise ApiError(
                400,
                f"{price.model} takes size and quality, not {name}; see GET /v1/models/{price.model}.",
                code="unsupported_parameter",
                param=name,
            )
    variant = f"{image.size}/{image.quality}"
    if price.image_variant_rates and variant not in price.image_variant_rates:
        raise ApiError(400, f"{price.model} has no price for {variant}.", code="invalid_parameter", param="size")
    return image.size, variant


# Reference images an edit by URL may send, by model: the document's limits ("3 for qwen-image-2-0,
# 9 for wan2-7-image, 14 for seedream-5-0-lite"); other models take what /v1/images/edits takes.
image_references_max = {"qwen-image-2-0": 3, "wan2-7-image": 9, "wan-2-7-image": 9, "seedream-5-0-lite": 14}
# Models with Image Set mode (``enable_sequential``: a cohesive series of ``num_images_set`` images).
image_set_models = ("wan2-7-image", "wan-2-7-image")


def image_reference_urls(body: bytes) -> list[str]:
    """The reference image URLs of an image generation (``image``), checked against its model's limit
    before any is fetched; [] when it sends none."""
    image: ImageRequest = _decode(body, ImageRequest)
    urls = image.image or []
    if "image" in _fields(body) and not urls:
        raise ApiError(400, "'image' must list at least one image URL.", code="invalid_parameter", param="image")
    limit = image_references_max.get(image.model, image_edit_inputs_max)
    if len(urls) > limit:
        raise ApiError(
            400,
            f"{image.model} takes at most {limit} reference images; {len(urls)} were sent.",
            code="too_many_images",
            param="image",
        )
    return urls


def _image_sync(fields: dict[str, Any]) -> bool:
    """Whether the caller waits for the images (EmpirioLabs' ``sync``, alias ``wait``; Casola's ``async``
    says the opposite). Synchronous unless one of them says otherwise."""
    given = {name: fields[name] for name in ("sync", "wait") if name in fields}
    if len(set(given.values())) > 1:
        raise ApiError(400, "Send sync or wait, not both with different values.", "invalid_parameter", "wait")
    if "async" in fields and given and _async_flag(fields) == next(iter(given.values())):
        raise ApiError(400, "'async' contradicts 'sync'; send one of them.", code="invalid_parameter", param="async")
    return next(iter(given.values()), not _async_flag(fields))


def _image_set_count(price: ModelPrice, image: ImageRequest) -> int | None:
    """How many images Image Set mode asks for, or None outside it."""
    if image.num_images_set is not None and not image.enable_sequential:
        raise ApiError(
            400,
            "num_images_set is the size of an image set: send enable_sequential: true with it.",
            code="invalid_parameter",
            param="num_images_set",
        )
    if not image.enable_sequential:
        return None
    if price.model not in image_set_models:
        raise ApiError(
            400,
            f"{price.model} has no Image Set mode; {', '.join(image_set_models)} have.",
            code="unsupported_parameter",
            param="enable_sequential",
        )
    return image.num_images_set


def parse_image(body: bytes, book: PriceBook, references: list[bytes] | None = None) -> MeteredRequest:
    """An image generation; with ``references`` (the ``image`` URLs' contents, fetched and checked by
    the route) it runs as an edit of them (``/v1/images/edits``' job), priced as the generation is."""
    image: ImageRequest = _decode(body, ImageRequest)
    price = model_price(book, image.model, lambda p: p.category == "image", "an image")
    fields = _fields(body)
    if image.image and not references:
        raise ApiError(400, "The reference images were not fetched.", code="invalid_parameter", param="image")
    in_set = _image_set_count(price, image)
    count = in_set if in_set is not None else _image_count(image, fields)
    size, variant = _image_variant(price, image, fields)
    bound = msgspec.structs.replace(_per_request(fields), images=count, variant=variant)
    # The worker always returns the bytes (an upstream is asked for b64_json: its own default may be a
    # link of its own); the gateway keeps them behind a URL of its own when asked for url, also when the
    # job is polled (``answer_shape``, which the worker hands back with the result).
    payload = {**fields, "n": count, "size": size, "variant": variant, "response_format": "b64_json"}
    for name in ("num_images", "num_images_set", "image", "sync", "wait", "async"):
        payload.pop(name, None)
    payload["answer_shape"] = {"response_format": image.response_format}
    endpoint = IMAGES
    if references:
        endpoint = IMAGE_EDITS
        payload["images_b64"] = [base64.b64encode(reference).decode() for reference in references]
    metered = _metered(endpoint, price, book, bound, msgspec.json.encode(payload), not _image_sync(fields))
    return _answer_url(metered, image.response_format == "url")


def _answer_url(metered: MeteredRequest, answer_url: bool) -> MeteredRequest:
    return dataclasses.replace(metered, answer_url=answer_url)


image_edit_inputs_max = 16  # images one edit may send (OpenAI's gpt-image models take up to 16)


def parse_image_edit(
    images: list[bytes], mask: bytes | None, fields: dict[str, str | None], book: PriceBook
) -> MeteredRequest:
    """``POST /v1/images/edits``: the images (and mask) already read and checked, priced per image
    returned as a generation is (by its ``size/quality`` variant)."""
    prompt = fields.get("prompt") or ""
    if not prompt or len(prompt) > 32_000:
        raise ApiError(
            400, "'prompt' is required (at most 32,000 characters).", code="missing_required_parameter", param="prompt"
        )
    model = "sim-image" if fields.get("model") is None else str(fields.get("model"))
    price = model_price(book, model, lambda p: p.category == "image", "an image")
    given_n = "1" if fields.get("n") is None else str(fields.get("n"))
    if given_n not in ("1", "2", "3", "4"):
        raise ApiError(400, "n must be an integer from 1 to 4.", code="invalid_parameter", param="n")
    size = "1024x1024" if fields.get("size") is None else str(fields.get("size"))
    quality = "standard" if fields.get("quality") is None else str(fields.get("quality"))
    variant = f"{size}/{quality}"
    if price.image_variant_rates and variant not in price.image_variant_rates:
        raise ApiError(400, f"{price.model} has no price for {variant}.", code="invalid_parameter", param="size")
    if fields.get("response_format") not in (None, "b64_json", "url"):
        raise ApiError(
            400, "response_format must be url or b64_json.", code="invalid_parameter", param="response_format"
        )
    payload = {
        "model": price.model,
        "prompt": prompt,
        "n": int(given_n),
        "size": size,
        "quality": quality,
        "images_b64": [base64.b64encode(image).decode() for image in images],
        "mask_b64": base64.b64encode(mask).decode() if mask is not None else None,
    }
    bound = Units(images=int(given_n), variant=variant, calls=1)
    # b64_json unless asked (OpenAI's GPT image models answer edits inline; url when asked for).
    return _answer_url(
        _metered(IMAGE_EDITS, price, book, bound, msgspec.json.encode(payload)), fields.get("response_format") == "url"
    )


music_seconds_max = 120  # one result record holds it (a WAV at 16 kHz: 3.8 MB)
music_seconds_default = 30
music_sync_seconds_max = 60  # EmpirioLabs: longer generations answer 202 with a job
music_formats = ("mp3", "wav")


def model_kind(body: bytes, book: PriceBook) -> str:
    """The kind (``kind_of``) of the model a JSON body names; "" when it names none the book has."""
    fields = _decode(body, dict[str, Any])
    model = fields.get("model") if isinstance(fields, dict) else None
    price = book.model(model) if isinstance(model, str) else None
    return kind_of(price) if price is not None else ""


def _duration_ms(value: Any) -> int:
    """A duration in seconds (a JSON integer or decimal) as whole ms, rounded up, through its digits."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(400, "duration must be a number of seconds.", code="invalid_type", param="duration")
    ms = Decimal(str(value)) * 1000
    if not ms.is_finite() or not 1000 <= ms <= music_seconds_max * 1000:
        raise ApiError(
            400,
            f"duration must be from 1 to {music_seconds_max} seconds.",
            code="invalid_parameter",
            param="duration",
        )
    return int(ms.to_integral_value(rounding=ROUND_CEILING))


def parse_music(body: bytes, book: PriceBook, endpoint: str = AUDIO_GENERATIONS) -> MeteredRequest:
    """Music (and sound) from a prompt, priced per second of audio asked for (``duration``, by the
    started second); async when asked, or when longer than a minute (a 202 and a job, as EmpirioLabs
    answers). ``output_format`` mp3 or wav; the answer is EmpirioLabs' ``AudioResponse``."""
    fields = _fields(body)
    model = fields.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(
            400, "'model' is required: a model of GET /v1/models.", code="missing_required_parameter", param="model"
        )
    price = model_price(book, model, lambda p: kind_of(p) == "music", "a music")
    prompt = fields.get("prompt") if fields.get("prompt") is not None else fields.get("input")
    if not isinstance(prompt, str) or not prompt or len(prompt) > 4000:
        raise ApiError(
            400, "'prompt' is required (at most 4,000 characters).", code="missing_required_parameter", param="prompt"
        )
    duration_ms = _duration_ms(fields.get("duration", music_seconds_default))
    audio_format = fields.get("output_format", "mp3")
    if not isinstance(audio_format, str) or audio_format.lower() not in music_formats:
        raise ApiError(
            400,
            f"output_format must be one of {', '.join(music_formats)}.",
            code="invalid_parameter",
            param="output_format",
        )
    response_format = fields.get("response_format", "url")
    if response_format not in ("url", "b64_json"):
        raise ApiError(
            400, "response_format must be url or b64_json.", code="invalid_parameter", param="response_format"
        )
    payload = {
        "model": model,
        "prompt": prompt,
        "duration_ms": duration_ms,
        "format": audio_format.lower(),
        "inline": response_format == "b64_json",
        "seed": fields.get("seed"),
    }
    run_async = _async_flag(fields) or duration_ms > music_sync_seconds_max * 1000
    bound = Units(audio_seconds=billed_seconds(duration_ms), calls=1)
    return _metered(endpoint, price, book, bound, msgspec.json.encode(payload), run_async)


speech_stream_characters_max = 3000  # EmpirioLabs: "Max 3000 characters per request"


@dataclass(frozen=True, slots=True)
class SpeechAsk:
    """How speech is answered: the audio format, and whether as the audio itself (OpenAI) or as a JSON
    ``AudioResponse`` (EmpirioLabs: ``output_format`` or ``response_format`` ``b64_json``/``url``)."""

    audio_format: str  # mp3, wav or pcm
    audio_response: bool = False
    inline: bool = False  # b64_json rather than a url
    timestamp_type: str = "NONE"  # the stream's audio.timestamps: NONE, WORD or CHARACTER
    text: str = ""  # what is spoken (the stream's timestamps are of its words)


def parse_speech(body: bytes, book: PriceBook) -> MeteredRequest:
    """``parse_spoken``'s request alone (what the job APIs run: gateway/routes/casola.py)."""
    return parse_spoken(body, book)[0]


def parse_spoken(
    body: bytes, book: PriceBook, stream: bool = False, audio_response: bool = False
) -> tuple[MeteredRequest, SpeechAsk]:
    """Speech, priced per character of ``input``; the worker is asked for one audio format (its
    ``response_format``, as an OpenAI-compatible server takes it). ``audio_response``: answered as
    EmpirioLabs' ``AudioResponse`` whatever the body says (``/v1/audio/generations``)."""
    spoken: SpeechRequest = _decode(body, SpeechRequest)
    price = model_price(book, spoken.model, lambda p: p.character_rate > 0, "a speech")
    if stream and len(spoken.input) > speech_stream_characters_max:
        raise ApiError(
            400,
            f"input may be at most {speech_stream_characters_max} characters on the streaming endpoint.",
            code="invalid_parameter",
            param="input",
        )
    fields = _fields(body)
    given = spoken.response_format
    audio_format = (spoken.output_format or "").lower() or (given if given in ("mp3", "wav", "pcm") else "wav")
    ask = SpeechAsk(
        audio_format=audio_format,
        audio_response=audio_response or spoken.output_format is not None or given in ("b64_json", "url"),
        inline=given == "b64_json",
        timestamp_type=spoken.timestamp_type,
        text=spoken.input,
    )
    if not stream:  # a stream's audio travels in pieces: its completion need not hold it (workers/role.py)
        check_speech_fits(audio_format, len(spoken.input), fields.get("sample_rate"), "sample_rate" in fields)
    fields.pop("output_format", None)
    fields["response_format"] = audio_format
    if stream:  # the worker reports the audio as it is made (OpenAI's speech streams with this field)
        fields["stream_format"] = "sse"
    else:
        fields.pop("stream_format", None)  # a plain answer is whole, whatever the body asked
    bound = msgspec.structs.replace(_per_request(fields), characters=len(spoken.input))
    run_async = False if stream else _async_flag(fields)
    return _metered(SPEECH, price, book, bound, msgspec.json.encode(fields), run_async, stream), ask


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


def check_speech_fits(
    audio_format: str, characters: int, given_rate: object, rate_given: bool, param: str = "input", choices: bool = True
) -> None:
    """A 400 for speech whose audio (60 ms a character) is over what one result may hold
    (``workers/result_sizes.py``), naming what would fit: MP3, a lower ``sample_rate``, a shorter input."""
    seconds_milli = characters * speech_ms_per_character
    sample_rate = result_sizes.speech_sample_rate(audio_format, given_rate)
    if result_sizes.speech_fits(audio_format, seconds_milli, sample_rate):
        return
    raw = result_sizes.spoken_audio_bytes(audio_format, seconds_milli, sample_rate)
    rates = [rate for rate in result_sizes.speech_sample_rates if rate < sample_rate]
    fitting_rate = max((r for r in rates if result_sizes.speech_fits(audio_format, seconds_milli, r)), default=0)
    fitting_characters = characters
    while fitting_characters and not result_sizes.speech_fits(
        audio_format, fitting_characters * speech_ms_per_character, sample_rate
    ):
        fitting_characters = fitting_characters * 9 // 10  # a few steps from 4,096 to what fits
    while result_sizes.speech_fits(audio_format, (fitting_characters + 1) * speech_ms_per_character, sample_rate):
        fitting_characters += 1
    options = ["output as MP3"] if choices else []
    if fitting_rate and choices:
        options.append(f"a sample_rate of at most {fitting_rate}")
    options.append(f"at most {fitting_characters:,} characters a request")
    raise ApiError(
        400,
        f"{characters:,} characters are {seconds_milli / 1000:.1f} s of audio: as 16-bit {audio_format.upper()} at "
        f"{sample_rate} Hz that is {_megabytes(raw)} ({_megabytes(result_sizes.base64_bytes(raw))} as base64), more "
        f"than one result may hold ({_megabytes(result_sizes.job_result_bytes_max)}). Ask for "
        f"{', or '.join(options)}.",
        code="result_too_large",
        param="sample_rate" if rate_given and fitting_rate else param,
    )


transcript_formats = ("json", "text", "srt", "verbose_json", "vtt")
transcription_sync_ms_max = 5 * 60 * 1000  # audio longer than this runs as a job (EmpirioLabs' rule)
timestamp_granularities = ("word", "segment")


@dataclass(frozen=True, slots=True)
class TranscriptAsk:
    """What a transcription or translation asks for beside its audio, from a form or a JSON body."""

    model: str
    task: str  # "transcribe" or "translate"
    response_format: str = "json"
    granularities: tuple[str, ...] = ()
    language: str | None = None
    prompt: str | None = None
    run_async: bool = False


def _text_field(fields: dict[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is None or isinstance(value, str):
        return value
    raise ApiError(400, f"'{name}' must be a string.", code="invalid_type", param=name)


def _flag_field(fields: dict[str, Any], name: str) -> bool:
    """A boolean of a JSON body (true/false) or a form ("true"/"false")."""
    value = fields.get(name, False)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be true or false.", code="invalid_type", param=name)
    return value


def transcript_ask(fields: dict[str, Any], translation: bool) -> TranscriptAsk:
    """The fields of a transcription (``translation``: of ``/v1/audio/translations``), checked:
    ``response_format`` one of OpenAI's five, ``timestamp_granularities`` a list (the OpenAI SDK's
    ``timestamp_granularities[]``) or comma-separated text (EmpirioLabs' ``word,segment``), and
    EmpirioLabs' ``translate`` flag, which makes a transcription a translation."""
    model = _text_field(fields, "model")
    if not model:
        raise ApiError(
            400, "'model' is required: a model of GET /v1/models.", code="missing_required_parameter", param="model"
        )
    given_format = _text_field(fields, "response_format")
    response_format = "json" if given_format is None else given_format
    if response_format not in transcript_formats:
        raise ApiError(
            400,
            f"response_format must be one of {', '.join(transcript_formats)}.",
            code="invalid_parameter",
            param="response_format",
        )
    given = fields.get("timestamp_granularities") or []
    if isinstance(given, str):
        given = [part.strip() for part in given.split(",") if part.strip()]
    if not isinstance(given, list) or not all(isinstance(g, str) and g in timestamp_granularities for g in given):
        raise ApiError(
            400,
            "timestamp_granularities must be a list of 'word' and 'segment' (or the two joined by a comma).",
            code="invalid_parameter",
            param="timestamp_granularities",
        )
    translate = translation or _flag_field(fields, "translate")
    return TranscriptAsk(
        model=model,
        task="translate" if translate else "transcribe",
        response_format=response_format,
        granularities=tuple(dict.fromkeys(given)),
        language=None if translate else _text_field(fields, "language"),
        prompt=_text_field(fields, "prompt"),
        run_async=_flag_field(fields, "async"),
    )


def parse_transcription(
    audio: bytes, duration_ms: int, filename: str | None, ask: TranscriptAsk, book: PriceBook
) -> MeteredRequest:
    """A transcription or translation: the audio (its duration read from the data already), priced per
    second of it by a transcription model (a translation is a transcription into English)."""
    price = model_price(book, ask.model, lambda p: kind_of(p) == "transcription", "a transcription")
    shape = {"response_format": ask.response_format, "timestamp_granularities": list(ask.granularities)}
    payload = msgspec.json.encode(
        {
            "model": ask.model,
            "file_b64": base64.b64encode(audio).decode(),
            "filename": filename,
            "language": ask.language,
            "prompt": ask.prompt,
            "timestamp_granularities": list(ask.granularities),
            "answer_shape": shape,  # how a job polled later answers (GET /v1/jobs/{id})
        }
    )
    bound = Units(audio_seconds=billed_seconds(duration_ms), calls=1)
    endpoint = TRANSLATIONS if ask.task == "translate" else TRANSCRIPTIONS
    # EmpirioLabs: "Long files (over 5 minutes) auto-route to the async job system".
    run_async = ask.run_async or duration_ms > transcription_sync_ms_max
    return _metered(endpoint, price, book, bound, payload, run_async)


def parse_video(body: bytes, book: PriceBook) -> MeteredRequest:
    """Always async: the answer is a job to poll."""
    video: VideoRequest = _decode(body, VideoRequest)
    price = model_price(book, video.model, lambda p: p.category == "video", "a video")
    bound = msgspec.structs.replace(_per_request(_fields(body)), video_seconds=video.duration)
    return _metered(VIDEOS, price, book, bound, body, True)


# --- the Responses API and Anthropic's Messages API (workers/conversations.py reads both) ---


def _dialect_fields(body: bytes, book: PriceBook) -> tuple[dict[str, Any], ModelPrice]:
    fields = _fields(body)
    model = fields.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(
            400, "'model' is required: a model of GET /v1/models.", code="missing_required_parameter", param="model"
        )
    for flag in ("stream", "async"):
        if not isinstance(fields.get(flag, False), bool):
            raise ApiError(400, f"'{flag}' must be true or false.", code="invalid_type", param=flag)
    return fields, model_price(book, model, lambda p: p.category == "chat", "a chat")


def _dialogue_limit(price: ModelPrice, given: int | None, param: str) -> int:
    """The output limit a Responses or Messages request is held for and runs with (thinking included)."""
    limit = price.max_output_tokens if given is None else given
    if limit > price.max_output_tokens:
        raise ApiError(
            400,
            f"{param} may be at most {price.max_output_tokens} for {price.model}.",
            code="invalid_parameter",
            param=param,
        )
    return limit


def dialogue_input_tokens_bound(dialogue: conversations.Dialogue) -> int:
    """An upper bound on prompt tokens (a token is at least one byte): the messages, the tool
    definitions, and what each hosted search may feed the model."""
    messages = sum(len(conversations.message_text(m).encode()) + tokens_per_message_bound for m in dialogue.messages)
    searches = dialogue.web_search_calls_max * conversations.web_search_result_tokens_max
    return tokens_per_request_bound + messages + len(conversations.tools_text(dialogue).encode()) + searches


def _dialogue_error(error: conversations.DialogueError) -> ApiError:
    return ApiError(400, error.message, code="invalid_parameter", param=error.param)


def parse_response(body: bytes, book: PriceBook) -> MeteredRequest:
    """``POST /v1/responses``: held for its prompt, its output limit (``max_output_tokens``, else the
    model's) and its hosted web searches (``max_tool_calls``, else a default), each one of
    ``web_search_calls``; the worker obeys the same limits (written into its payload)."""
    fields, price = _dialect_fields(body, book)
    try:
        dialogue = conversations.from_responses(fields)
    except conversations.DialogueError as error:
        raise _dialogue_error(error) from None
    if dialogue.web_search and fields.get("async"):
        raise ApiError(
            400, "'async' is not supported with hosted tools (web_search).", code="invalid_parameter", param="async"
        )
    limit = _dialogue_limit(price, dialogue.output_tokens_max, "max_output_tokens")
    fields["max_output_tokens"] = limit
    if dialogue.web_search:
        fields["max_tool_calls"] = dialogue.web_search_calls_max
    bound = msgspec.structs.replace(
        _per_request(fields),
        input_tokens=dialogue_input_tokens_bound(dialogue),
        output_tokens=limit,
        web_search_calls=dialogue.web_search_calls_max,
    )
    payload = msgspec.json.encode(fields)
    return _metered(RESPONSES, price, book, bound, payload, bool(fields.get("async")), bool(fields.get("stream")))


def parse_message(body: bytes, book: PriceBook) -> MeteredRequest:
    """``POST /v1/messages`` (Anthropic's Messages API): ``max_tokens`` is required and bounds the
    output, thinking included."""
    fields, price = _dialect_fields(body, book)
    if fields.get("max_tokens") is None:
        raise ApiError(400, "max_tokens: Field required", code="missing_required_parameter", param="max_tokens")
    try:
        dialogue = conversations.from_messages(fields)
    except conversations.DialogueError as error:
        raise _dialogue_error(error) from None
    limit = _dialogue_limit(price, dialogue.output_tokens_max, "max_tokens")
    bound = msgspec.structs.replace(
        _per_request(fields), input_tokens=dialogue_input_tokens_bound(dialogue), output_tokens=limit
    )
    payload = msgspec.json.encode(fields)
    return _metered(MESSAGES, price, book, bound, payload, bool(fields.get("async")), bool(fields.get("stream")))


# --- Casola's Fal-compatible queue (POST /fal/{slug}) ---

# Fal's named image sizes, as the sizes the image endpoint prices (a size it has no price for is a 400).
fal_image_sizes = {"square_hd": "1024x1024", "square": "1024x1024", "landscape_16_9": "1792x1024"}


def _fal_size(image_size: str | dict[str, int]) -> str:
    if isinstance(image_size, dict):
        size = f"{image_size.get('width')}x{image_size.get('height')}"
        if size in fal_image_sizes.values():
            return size
    elif image_size in fal_image_sizes:
        return fal_image_sizes[image_size]
    raise ApiError(
        400,
        f"image_size must be one of {', '.join(fal_image_sizes)}, or {{width, height}} of 1024x1024 or 1792x1024.",
        code="invalid_parameter",
        param="image_size",
    )


def _fal_seconds(video: FalVideoRequest) -> int:
    if video.num_frames is not None:
        seconds = -(-video.num_frames // video.frames_per_second)
    else:
        seconds = int(str(video.duration).removesuffix("s"))
    if not 1 <= seconds <= 10:
        param = "duration" if video.num_frames is None else "num_frames"
        raise ApiError(400, "A video may be 1 to 10 seconds long.", code="invalid_parameter", param=param)
    return seconds


def parse_fal(slug: str, body: bytes, book: PriceBook) -> MeteredRequest:
    """A Fal submission as the image, video or speech request it stands for (the model its slug names):
    queued (async) unless ``sync_mode`` asks to wait for its result."""
    price = book.fal_model(slug)
    if price is None or kind_of(price) not in ("image", "video", "speech"):
        raise ApiError(
            404,
            f"No image, video or speech model has the Fal slug '{slug}'; see GET /api/model-status for each "
            "model's fal_slugs.",
            code="model_not_found",
            param="slug",
        )
    fields = _fields(body)
    if kind_of(price) == "speech":
        spoken: FalSpeechRequest = _decode(body, FalSpeechRequest)
        text = spoken.text or spoken.prompt
        if not text:
            raise ApiError(400, "Send the text to speak as 'text'.", code="missing_required_parameter", param="text")
        check_speech_fits("wav", len(text), None, False, "text" if spoken.text else "prompt", choices=False)
        payload: dict[str, Any] = {"model": price.model, "input": text, "voice": spoken.voice}
        bound = msgspec.structs.replace(_per_request({}), characters=len(text))
        return _metered(SPEECH, price, book, bound, msgspec.json.encode(payload), not spoken.sync_mode)
    if price.category == "image":
        image: FalImageRequest = _decode(body, FalImageRequest)
        size = _fal_size(image.image_size)
        variant = f"{size}/standard"
        if price.image_variant_rates and variant not in price.image_variant_rates:
            raise ApiError(400, f"{price.model} has no price for {size}.", code="invalid_parameter", param="image_size")
        payload = {"model": price.model, "prompt": image.prompt, "n": image.num_images, "size": size}
        bound = msgspec.structs.replace(_per_request({}), images=image.num_images, variant=variant)
        return _metered(IMAGES, price, book, bound, msgspec.json.encode(payload), not image.sync_mode)
    video: FalVideoRequest = _decode(body, FalVideoRequest)
    seconds = _fal_seconds(video)
    payload = {"model": price.model, "prompt": video.prompt, "duration": seconds}
    for name in ("resolution", "aspect_ratio"):
        if isinstance(fields.get(name), str):
            payload[name] = fields[name]
    bound = msgspec.structs.replace(_per_request({}), video_seconds=seconds)
    # A video is always a job; sync_mode waits for it.
    return _metered(VIDEOS, price, book, bound, msgspec.json.encode(payload), not video.sync_mode)
