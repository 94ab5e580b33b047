"""HTTP API bodies. Requests are validated at the boundary (decode); responses are built from these."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec

Scope = Literal["user:read", "user:write", "admin:read", "admin:write"]
all_scopes: tuple[Scope, ...] = ("user:read", "user:write", "admin:read", "admin:write")
Plan = Literal["free", "pro", "enterprise"]


class CreateOrganization(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    plan: Plan = "free"


class GrantCreditsBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``amount`` in credits: a JSON number or a decimal string, exact to 6 places (msgspec decodes
    JSON numbers into Decimal from their text, so no float is ever involved)."""

    amount: Decimal
    kind: Literal["paid", "promo"] = "paid"
    expires_at: datetime | None = None
    priority: Annotated[int, msgspec.Meta(ge=-1000, le=1000)] = 0
    reference: Annotated[str, msgspec.Meta(max_length=200)] = ""


class CreditLimitBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How far below zero the organization's balance may go, in credits (0: no overdraft)."""

    amount: Decimal


class AutoTopUpBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Below ``threshold`` credits available, add ``amount`` credits, or enough to reach ``target``."""

    enabled: bool = True
    threshold: Decimal = Decimal(0)
    amount: Decimal | None = None
    target: Decimal | None = None


class RefundBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    amount: Decimal
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    reference: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]  # the request id of the charge


class AdjustmentBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    amount: Decimal  # signed: positive credits the organization, negative debits it
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    reference: Annotated[str, msgspec.Meta(max_length=200)] = ""


LimitPerMin = Annotated[int, msgspec.Meta(ge=0, le=100_000_000)]


class RateLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Per-minute limits by kind; a field left out keeps the plan's (or the organization's) limit."""

    requests: LimitPerMin | None = None
    jobs: LimitPerMin | None = None
    tokens: LimitPerMin | None = None

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in msgspec.structs.asdict(self).items() if v is not None}


class CreateToken(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    scopes: Annotated[list[Scope], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["user:read", "user:write"]
    )
    expires_at: datetime | None = None  # or expires_in (seconds); absent: the key never expires
    expires_in: Annotated[int, msgspec.Meta(ge=1, le=10 * 366 * 86400)] | None = None
    rate_limits: RateLimits | None = None  # this key's own limits, on top of the organization's


class SetPlanBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    plan: Plan


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatCompletionRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The fields Tollgate reads; everything else in the body is forwarded to the backend untouched."""

    model: Annotated[str, msgspec.Meta(min_length=1)]
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    n: Annotated[int, msgspec.Meta(ge=1)] = 1
    stream: bool = False
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    user: str | None = None


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    error: ErrorBody


class CompletionRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: Annotated[str, msgspec.Meta(min_length=1)]
    prompt: str | Annotated[list[str], msgspec.Meta(min_length=1, max_length=64)]
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None  # OpenAI's default: 16
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    n: Annotated[int, msgspec.Meta(ge=1)] = 1
    stream: bool = False
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None


class EmbeddingRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: Annotated[str, msgspec.Meta(min_length=1)]
    # A string, a list of strings, a list of token ids or a list of such lists (msgspec's unions take
    # one array type, so the gateway checks the items).
    input: (
        Annotated[str, msgspec.Meta(min_length=1)] | Annotated[list[Any], msgspec.Meta(min_length=1, max_length=2048)]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, msgspec.Meta(ge=1, le=4096)] | None = None
    user: str | None = None


class RerankRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /v1/rerank`` (Casola's shape) and ``POST /v1/reranks`` (EmpirioLabs'): the same request,
    answered in each document's shape."""

    model: Annotated[str, msgspec.Meta(min_length=1)]
    query: Annotated[str, msgspec.Meta(min_length=1)]
    documents: Annotated[list[str], msgspec.Meta(min_length=1, max_length=500)]
    top_n: Annotated[int, msgspec.Meta(ge=1, le=500)] | None = None  # all documents when absent
    instruct: str | None = None
    return_documents: bool = False


class ScoreRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /v1/score`` (vLLM's text pair scoring): ``text_1`` against each of ``text_2`` (one to
    many), or the two lists pair by pair (of equal length)."""

    model: Annotated[str, msgspec.Meta(min_length=1)]
    text_1: (
        Annotated[str, msgspec.Meta(min_length=1)] | Annotated[list[str], msgspec.Meta(min_length=1, max_length=500)]
    )
    text_2: (
        Annotated[str, msgspec.Meta(min_length=1)] | Annotated[list[str], msgspec.Meta(min_length=1, max_length=500)]
    )


class ImageRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: Annotated[str, msgspec.Meta(min_length=1)] = "sim-image"
    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=4000)]
    n: Annotated[int, msgspec.Meta(ge=1, le=4)] = 1
    size: Literal["1024x1024", "1792x1024"] = "1024x1024"
    quality: Literal["standard", "hd"] = "standard"
    response_format: Literal["b64_json"] = "b64_json"
    user: str | None = None


class SpeechRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /v1/audio/speech`` in OpenAI's shape (``response_format`` an audio format: the audio is the
    answer) and EmpirioLabs' (``output_format``, or ``response_format`` ``b64_json`` or ``url``: a JSON
    ``AudioResponse``); ``/v1/audio/speech:stream`` adds ``sample_rate`` and ``timestamp_type``."""

    model: Annotated[str, msgspec.Meta(min_length=1)]
    input: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    voice: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] = "alloy"
    response_format: Literal["mp3", "wav", "pcm", "b64_json", "url"] | None = None
    output_format: Literal["WAV", "MP3", "PCM", "wav", "mp3", "pcm"] | None = None
    sample_rate: Literal["8000", "16000", "22050", "24000", "32000", "44100", "48000"] | None = None
    timestamp_type: Literal["NONE", "WORD", "CHARACTER"] = "NONE"
    speed: Annotated[float, msgspec.Meta(ge=0.25, le=4.0)] = 1.0


class MusicRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /v1/audio/generations`` and ``/v1/music/generations`` as documented (the gateway reads the
    body itself: gateway/requests.py ``parse_music``; a speech model's script goes in ``input``)."""

    model: Annotated[str, msgspec.Meta(min_length=1)]
    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=4000)] | None = None
    input: Annotated[str, msgspec.Meta(min_length=1, max_length=4000)] | None = None
    duration: Annotated[float, msgspec.Meta(ge=1, le=120)] = 30
    steps: int | None = None
    cfg_scale: float | None = None
    seed: int | None = None
    output_format: Literal["mp3", "wav"] = "mp3"
    response_format: Literal["url", "b64_json"] = "url"


class VideoRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: Annotated[str, msgspec.Meta(min_length=1)] = "sim-video"
    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=4000)]
    duration: Annotated[int, msgspec.Meta(ge=1, le=10)] = 5
    resolution: str | None = None
    aspect_ratio: str | None = None


class ResponsesRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /v1/responses`` as documented (the gateway reads the body itself: workers/conversations.py);
    fields not listed are forwarded untouched."""

    model: Annotated[str, msgspec.Meta(min_length=1)]
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_output_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_tool_calls: Annotated[int, msgspec.Meta(ge=1)] | None = None
    reasoning: dict[str, Any] | None = None
    stream: bool = False


class MessagesRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /v1/messages`` (Anthropic's Messages API) as documented; fields not listed are forwarded."""

    model: Annotated[str, msgspec.Meta(min_length=1)]
    max_tokens: Annotated[int, msgspec.Meta(ge=1)]
    messages: Annotated[list[dict[str, Any]], msgspec.Meta(min_length=1)]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    stream: bool = False
