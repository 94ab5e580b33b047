"""Request bodies of the text tools (EmpirioLabs' search, research, answer, detection and image
analysis; Casola's PII detection): the fields Tollgate reads, checked at the boundary. Any other field
is accepted and passed to the model (each provider has its own parameters: the documents say so)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

_text = Annotated[str, msgspec.Meta(min_length=1)]


class SearchRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: _text
    query: _text
    search_depth: str | None = None  # Tavily: basic, fast, ultra-fast, advanced
    max_results: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None  # Tavily
    num_results: Annotated[int, msgspec.Meta(ge=1, le=100)] | None = None  # Exa
    subpages: Annotated[int, msgspec.Meta(ge=0, le=10)] | None = None  # Exa
    summary: bool | dict[str, Any] | None = None  # Exa
    include_answer: bool | str | None = None  # Tavily


class ResearchRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: _text
    query: str | None = None
    messages: list[dict[str, Any]] | None = None
    reasoning_effort: Literal["low", "medium", "high"] = "high"
    max_output_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    search_domain_filter: str | None = None
    search_recency_filter: Literal["hour", "day", "week", "month", "year"] | None = None
    disable_formatting: bool = False


class AnswerRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: _text
    query: _text
    stream: bool = False


class DetectRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: _text
    input: Annotated[str, msgspec.Meta(min_length=1, max_length=50_000)]
    scan_type: Literal["ai_detection", "bibliography", "fact_check"] = "ai_detection"
    multilingual: bool = False
    version: str = "__latest__"


class ImageAnalysisRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: _text
    image_url: _text
    question: _text
    analysis_temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    analysis_top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    analysis_seed: int | None = None


class PiiRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Tollgate's shape (Casola documents only the path): text in, entities and redacted text out."""

    model: _text = "pii-redact"
    input: _text | Annotated[list[str], msgspec.Meta(min_length=1, max_length=100)]
    entities: list[str] | None = None  # Presidio's entity type names; all when absent
    score_threshold: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0
    operator: Literal["replace", "mask", "redact"] = "replace"
