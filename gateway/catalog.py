"""The catalog as clients read it: a model of the price book in EmpirioLabs' model object (OpenRouter
style ``pricing`` in USD per token, ``pricing_rows`` with every rate, modalities, endpoints,
parameters), the OpenRouter listing shape, and Casola's pricing and billing-rate pages. Pure: the
rates come from ``ledger.pricing.catalog_rows``, the one source the ledger and statements price by,
so whatever the catalog lists is what a request is charged."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ledger.money import micros_to_decimal
from ledger.pricing import (
    ModelPrice,
    PriceBook,
    PricingRow,
    catalog_rows,
    image_aspect_ratios,
    image_resolutions_px,
    kind_of,
    modalities,
    prices_by_resolution,
    token_units,
    usd_per_unit,
)
from schemas.units import tools
from workers import texttools

rounding_rule = (
    "Per request: the sum over its units of quantity x rate, less any batch discount, rounded up to the next"
    " micro-credit (0.000001 USD) once, on the total; then raised to the model's minimum charge."
)

# How each unit is named, and the quantity its display rate is for (rows also give the exact rate
# per unit and per million units).
_unit_names = {
    "input_tokens": "Input tokens",
    "cached_input_tokens": "Cached input tokens (cache read)",
    "cache_write_tokens": "Cache write tokens",
    "image_input_tokens": "Image input tokens",
    "audio_input_tokens": "Audio input tokens",
    "output_tokens": "Output tokens",
    "reasoning_tokens": "Reasoning tokens",
    "images": "Image",
    "audio_seconds": "Audio",
    "video_seconds": "Video",
    "characters": "Characters",
    "calls": "Request fee",
    "search_units": "Search queries",
    "storage_byte_days": "Storage",
    "web_search_calls": "Web search",
    "file_search_calls": "File search",
    "code_interpreter_calls": "Code interpreter",
    "minimum_charge": "Minimum charge",
}
_display_scale: dict[str, tuple[int, str]] = {
    **{unit: (1_000_000, "per 1M tokens") for unit in token_units},
    "images": (1, "per image"),
    "audio_seconds": (1, "per second"),
    "video_seconds": (1, "per second"),
    "characters": (1_000_000, "per 1M characters"),
    "calls": (1, "per request"),
    "search_units": (1_000, "per 1K queries"),
    "storage_byte_days": (1_000_000_000, "per GB-day"),
    **{f"{tool}_calls": (1_000, "per 1K calls") for tool in tools},
    "minimum_charge": (1, "per request"),
}
_endpoints = {
    "chat": ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"],
    "embedding": ["/v1/embeddings"],
    "image": ["/v1/images/generations", "/v1/images/edits"],
    "speech": ["/v1/audio/speech", "/v1/audio/speech:stream", "/v1/audio/generations"],
    "transcription": ["/v1/audio/transcriptions", "/v1/audio/translations"],
    "music": ["/v1/audio/generations", "/v1/music/generations", "/v1/audio/speech"],
    "video": ["/v1/videos/generations"],
    "rerank": ["/v1/rerank", "/v1/reranks", "/v1/score"],
    "storage": ["/v1/files"],
    "3d": ["/v1/3d/generations"],
    "search": ["/v1/search"],
    "answer": ["/v1/answer"],
    "detection": ["/v1/detect"],
    "vision": ["/v1/images/analysis"],
    "pii": ["/v1/pii"],
    "agent": ["/v1/agents/run"],
}


def _usd(value: Decimal) -> str:
    """A USD amount as a plain decimal string: no exponent, no trailing zeros ("0.00000015", "0")."""
    return format(value, "f")


def row_json(row: PricingRow) -> dict[str, Any]:
    """One rate: EmpirioLabs' display fields (``label``/``spec``/``value`` and the detail view's
    ``charge``/``rate``) and the exact ones a charge is recomputed from."""
    if row.unit == "batch_discount":
        label, spec, shown = "Batch discount", 'with "service_tier": "flex"', f"-{row.percent}%"
        exact: dict[str, Any] = {"percent": row.percent}
    else:
        scale, spec = _display_scale[row.unit]
        label = _unit_names[row.unit] + (f" ({row.tier})" if row.tier else "")
        shown = "$" + _usd(usd_per_unit(row.rate_micros_per_million, scale))
        exact = {
            "rate_micros_per_million": row.rate_micros_per_million,
            "usd_per_unit": _usd(usd_per_unit(row.rate_micros_per_million)),
        }
    body: dict[str, Any] = {"label": label, "charge": label, "spec": spec, "value": shown, "rate": shown}
    body.update(unit=row.unit, tier=row.tier, **exact)
    if row.above_prompt_tokens is not None:
        body["above_prompt_tokens"] = row.above_prompt_tokens
    return body


def _rate(rows: list[PricingRow], unit: str, tier: str = "") -> int:
    return next((row.rate_micros_per_million for row in rows if row.unit == unit and row.tier == tier), 0)


def _per_token(rows: list[PricingRow], unit: str, tier: str) -> str:
    return _usd(usd_per_unit(_rate(rows, unit, tier)))


def openrouter_pricing(price: ModelPrice) -> dict[str, Any] | list[dict[str, Any]]:
    """OpenRouter-style ``pricing``: USD strings, per token for tokens, per event for ``image`` and
    ``request``; for a model with context tiers, its base and its highest tier (``min_context``: the
    prompt length from which that tier applies). ``pricing_rows`` have every tier and unit."""
    rows = catalog_rows(price)
    tiers = [row.tier for row in rows if row.unit == "input_tokens"] or [""]
    kind = kind_of(price)
    image = _rate(rows, "images") if kind == "image" else 0
    flat = {
        "image": _usd(usd_per_unit(image)),
        "request": _usd(usd_per_unit(_rate(rows, "calls"))),
    }
    for name, unit in (
        ("web_search", "web_search_calls"),
        ("character", "characters"),
        ("audio_second", "audio_seconds"),
        ("video_second", "video_seconds"),
        ("search_unit", "search_units"),
    ):
        if _rate(rows, unit):
            flat[name] = _usd(usd_per_unit(_rate(rows, unit)))

    def tier(label: str) -> dict[str, Any]:
        return {
            "prompt": _per_token(rows, "input_tokens", label),
            "completion": _per_token(rows, "output_tokens", label),
            "input_cache_read": _per_token(rows, "cached_input_tokens", label),
            "input_cache_write": _per_token(rows, "cache_write_tokens", label),
            "internal_reasoning": _per_token(rows, "reasoning_tokens", label),
        }

    if len(tiers) < 2:
        return {**tier(tiers[0]), **flat}
    highest = next(row for row in reversed(rows) if row.unit == "input_tokens")
    above = highest.above_prompt_tokens or 0
    return [{**tier(tiers[0]), **flat}, {**tier(highest.tier), "min_context": above + 1}]


def _type_and_category(price: ModelPrice) -> tuple[str, str]:
    kind = kind_of(price)
    if kind == "chat":
        inputs = modalities(price)[0]
        return ("multimodal" if set(inputs) - {"text"} else "text"), ("research" if price.search_unit_rate else "text")
    return {
        "embedding": ("text", "embedding"),
        "image": ("image", "image"),
        "video": ("video", "video"),
        "speech": ("audio", "audio"),
        "music": ("audio", "audio"),
        "transcription": ("transcription", "transcription"),
        "rerank": ("text", "reranker"),
        "storage": ("file", "storage"),
        "3d": ("3d", "3d"),
        "search": ("text", "tools"),
        "answer": ("text", "tools"),
        "detection": ("text", "tools"),
        "vision": ("multimodal", "image"),
        "pii": ("text", "tools"),
        "agent": ("text", "agents"),
    }[kind]


def _parameters(price: ModelPrice) -> list[dict[str, Any]]:
    """The parameters a request to this model reads (what Tollgate checks and meters)."""
    kind = kind_of(price)
    model = {"name": "model", "type": "string", "required": True, "description": "This model's id."}
    common = [
        {
            "name": "service_tier",
            "type": "enum",
            "required": False,
            "default": "auto",
            "allowed_values": ["auto", "default", "flex"],
            "description": "flex: batch prices (the batch discount applies), slower is fine.",
        },
        {
            "name": "async",
            "type": "boolean",
            "required": False,
            "default": False,
            "description": "Answer 202 with a job.",
        },
    ]
    if kind == "chat":
        chat: list[dict[str, Any]] = [
            model,
            {"name": "messages", "type": "array", "required": True, "description": "The conversation."},
            {"name": "max_tokens", "type": "integer", "required": False, "min": 1, "max": price.max_output_tokens},
            {"name": "temperature", "type": "number", "required": False, "min": 0, "max": 2},
            {"name": "top_p", "type": "number", "required": False, "min": 0, "max": 1},
            {"name": "stream", "type": "boolean", "required": False, "default": False},
            {"name": "tools", "type": "array", "required": False, "description": "Billed as prompt tokens."},
        ]
        if "reasoning" in price.features:
            chat.append(
                {
                    "name": "reasoning_effort",
                    "type": "enum",
                    "required": False,
                    "default": "medium",
                    "allowed_values": ["minimal", "low", "medium", "high"],
                }
            )
        if "web_search" in price.tool_call_rates:
            chat.append({"name": "web_search_options", "type": "object", "required": False})
        return chat + common
    if kind == "image" and prices_by_resolution(price):
        return [model, *_resolution_image_parameters(price), *common]
    specific: dict[str, list[dict[str, Any]]] = {
        "embedding": [
            {"name": "input", "type": "array", "required": True},
            {"name": "dimensions", "type": "integer", "required": False, "min": 1, "max": 4096},
            {"name": "encoding_format", "type": "enum", "required": False, "allowed_values": ["float", "base64"]},
        ],
        "image": [
            {"name": "prompt", "type": "string", "required": True},
            {"name": "n", "type": "integer", "required": False, "default": 1, "min": 1, "max": 4},
            {
                "name": "size",
                "type": "enum",
                "required": False,
                "default": "1024x1024",
                "allowed_values": sorted({v.split("/")[0] for v in price.image_variant_rates} or {"1024x1024"}),
            },
            {
                "name": "quality",
                "type": "enum",
                "required": False,
                "default": "standard",
                "allowed_values": sorted({v.split("/")[1] for v in price.image_variant_rates} or {"standard"}),
            },
        ],
        "speech": [
            {"name": "input", "type": "string", "required": True, "description": "At most 4,096 characters."},
            {"name": "voice", "type": "string", "required": False, "default": "alloy"},
            {"name": "speed", "type": "number", "required": False, "default": 1, "min": 0.25, "max": 4},
        ],
        "transcription": [
            {"name": "file", "type": "audio", "required": True, "description": "WAV or MP3, at most 3 MiB."},
            {"name": "language", "type": "string", "required": False},
            {"name": "prompt", "type": "string", "required": False},
        ],
        "music": [
            {"name": "prompt", "type": "string", "required": True},
            {"name": "duration", "type": "number", "required": False, "default": 30, "min": 1, "max": 120},
            {"name": "output_format", "type": "enum", "required": False, "allowed_values": ["mp3", "wav"]},
        ],
        "video": [
            {"name": "prompt", "type": "string", "required": True},
            {"name": "duration", "type": "integer", "required": False, "default": 5, "min": 1, "max": 10},
        ],
        "rerank": [
            {"name": "query", "type": "string", "required": True},
            {"name": "documents", "type": "array", "required": True, "description": "1 to 500 strings."},
            {"name": "top_n", "type": "integer", "required": False, "min": 1, "max": 500},
            {"name": "return_documents", "type": "boolean", "required": False, "default": False},
        ],
        "storage": [
            {"name": "file", "type": "file", "required": True},
            {"name": "purpose", "type": "string", "required": True},
        ],
        **texttools.parameters(price),
        "3d": [
            {"name": "image_url", "type": "string", "required": False, "description": "The image, by URL."},
            {"name": "image", "type": "string", "required": False, "description": "A URL, data: URL or base64."},
            {
                "name": "resolution",
                "type": "enum",
                "required": False,
                "default": "1024",
                "allowed_values": ["512", "1024", "1536"],
            },
            {"name": "seed", "type": "integer", "required": False, "default": 42, "min": 0, "max": 2147483647},
            {
                "name": "texture_size",
                "type": "enum",
                "required": False,
                "default": "2048",
                "allowed_values": ["1024", "2048", "4096"],
            },
            {
                "name": "decimation_target",
                "type": "integer",
                "required": False,
                "default": 500000,
                "min": 10000,
                "max": 1000000,
            },
            {"name": "remesh", "type": "boolean", "required": False, "default": True},
            {
                "name": "max_num_tokens",
                "type": "integer",
                "required": False,
                "default": 49152,
                "min": 1024,
                "max": 131072,
            },
            {
                "name": "response_format",
                "type": "enum",
                "required": False,
                "default": "url",
                "allowed_values": ["url", "b64_json"],
            },
        ],
    }
    if kind == "storage":
        return specific[kind]  # uploaded with POST /v1/files, not requested by model
    if kind == "agent":  # POST /v1/agents/run: neither sampled nor batched
        return [
            model,
            {"name": "input", "type": "string", "required": True, "description": "The instruction, or a follow-up."},
            {"name": "task_id", "type": "string", "required": False, "description": "Follow up on this task."},
            {"name": "stream", "type": "boolean", "required": False, "default": True},
        ]
    return [model, *specific[kind], *(common if kind not in ("transcription", "3d") else [])]


def _resolution_image_parameters(price: ModelPrice) -> list[dict[str, Any]]:
    """An image model priced by resolution (Wan 2.7): EmpirioLabs' parameters, as its model page lists them."""
    resolutions = list(price.image_variant_rates)
    return [
        {"name": "prompt", "type": "string", "required": True},
        {
            "name": "num_images",
            "type": "integer",
            "required": False,
            "default": 1,
            "min": 1,
            "max": 4,
            "description": "Images to generate (n is accepted too); each is charged.",
        },
        {
            "name": "aspect_ratio",
            "type": "enum",
            "required": False,
            "default": "1:1",
            "allowed_values": list(image_aspect_ratios),
        },
        {
            "name": "resolution",
            "type": "enum",
            "required": False,
            "default": "2K" if "2K" in resolutions else resolutions[0],
            "allowed_values": resolutions,
            "description": "The longer side: "
            + ", ".join(f"{r} {image_resolutions_px[r]} px" for r in resolutions)
            + "; the price per image follows it (pricing_rows).",
        },
        {
            "name": "thinking_mode",
            "type": "boolean",
            "required": False,
            "default": False,
            "description": "Plan the composition before drawing; no charge of its own.",
        },
        {
            "name": "response_format",
            "type": "enum",
            "required": False,
            "default": "url",
            "allowed_values": ["url", "b64_json"],
        },
    ]


def model_card(price: ModelPrice, version: str, detail: bool = False) -> dict[str, Any]:
    """EmpirioLabs' model object (``ModelDetail`` with ``detail``: parameters too)."""
    rows = catalog_rows(price)
    inputs, outputs = modalities(price)
    model_type, category = _type_and_category(price)
    context = price.context_length if kind_of(price) in ("chat", "embedding", "rerank") else None
    card: dict[str, Any] = {
        "id": price.model,
        "object": "model",
        "created": 0,
        "owned_by": price.owned_by,
        "description": price.description,
        "type": model_type,
        "category": category,
        "context_window": context,
        "context_length": context,
        "max_output_tokens": price.max_output_tokens if kind_of(price) == "chat" else None,
        "input_modalities": list(inputs),
        "output_modalities": list(outputs),
        "pricing": openrouter_pricing(price),
        "pricing_rows": [row_json(row) for row in rows],
        "price_version": version,
        "currency": "USD",
        "rounding": rounding_rule,
        "minimum_charge": micros_to_decimal(price.minimum_charge_micros),
        "supported_endpoints": _endpoints[kind_of(price)],
        "features": list(price.features),
        "is_new": False,
        "discount": (
            {"label": f"Save up to {price.batch_discount_percent}%", "percent": price.batch_discount_percent}
            if price.batch_discount_percent
            else None
        ),
    }
    if detail:
        card["parameters"] = _parameters(price)
    return card


_sampling = ["temperature", "top_p", "max_tokens", "stop", "seed", "frequency_penalty", "presence_penalty"]
_openrouter_features = {
    "tool_calling": "tools",
    "json_mode": "json_mode",
    "reasoning": "reasoning",
    "web_search": "web_search",
}


def openrouter_model(price: ModelPrice) -> dict[str, Any]:
    """The OpenRouter provider listing of a text model (``GET /v1/models?format=openrouter``)."""
    pricing = openrouter_pricing(price)
    base = pricing[0] if isinstance(pricing, list) else pricing
    inputs, outputs = modalities(price)
    return {
        "id": price.model,
        "hugging_face_id": price.hugging_face_id,
        "name": price.model,
        "created": 0,
        "description": price.description,
        "input_modalities": list(inputs),
        "output_modalities": list(outputs),
        "quantization": None,
        "context_length": price.context_length,
        "max_output_length": price.max_output_tokens,
        "pricing": {key: base[key] for key in ("prompt", "completion", "image", "request", "input_cache_read")},
        "supported_sampling_parameters": _sampling,
        "supported_features": [_openrouter_features[f] for f in price.features if f in _openrouter_features],
        "is_ready": True,
        "openrouter": {"slug": f"{price.owned_by.lower()}/{price.model}"},
        "datacenters": [],
    }


def pricing_page(book: PriceBook) -> dict[str, Any]:
    """Every model's rates as rows, with the rounding rule: Casola's public ``/api/pricing``."""
    return {
        "object": "pricing",
        "price_version": book.version,
        "currency": "USD",
        "rounding": rounding_rule,
        "data": [
            {
                "model": price.model,
                "category": _type_and_category(price)[1],
                "minimum_charge": micros_to_decimal(price.minimum_charge_micros),
                "batch_discount_percent": price.batch_discount_percent,
                "pricing_rows": [row_json(row) for row in catalog_rows(price)],
            }
            for price in book.models.values()
        ],
    }
