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
    # url (the default, as OpenAI's and the documents' examples read data[0].url): a signed URL the
    # gateway serves for an hour; b64_json: the PNG inline.
    response_format: Literal["url", "b64_json"] = "url"
    user: str | None = None
    # EmpirioLabs' fields: ``num_images`` (``n`` by its name), and for a model priced by resolution
    # (Wan 2.7) ``resolution`` and ``aspect_ratio`` instead of ``size``; ``thinking_mode`` lets the
    # model plan the image first (no charge of its own).
    num_images: Annotated[int, msgspec.Meta(ge=1, le=4)] | None = None
    resolution: Literal["1K", "2K", "4K"] | None = None
    aspect_ratio: Literal["1:1", "16:9", "9:16", "3:2", "2:3", "4:3", "3:4", "5:4", "4:5"] | None = None
    thinking_mode: bool = False
    # Reference images by URL: the request runs as an image edit on them (fetched by the gateway), at
    # most the model's documented number (gateway/requests.py image_references_max).
    image: list[Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]] | None = None
    # Image Set mode (Wan 2.7): ``num_images_set`` cohesive images of one prompt, up to 12.
    enable_sequential: bool = False
    num_images_set: Annotated[int, msgspec.Meta(ge=1, le=12)] | None = None
    # EmpirioLabs' ``sync`` (alias ``wait``): false answers the async JobAccepted envelope (200, its
    # job polled at /v1/jobs/{id}); Tollgate answers synchronously when neither is sent.
    sync: bool | None = None
    wait: bool | None = None


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


class FalImageRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /fal/{slug}`` for an image model: what Tollgate reads of a Fal text-to-image body (other
    fields are accepted and ignored)."""

    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=4000)]
    image_size: str | dict[str, int] = "square_hd"
    num_images: Annotated[int, msgspec.Meta(ge=1, le=4)] = 1
    sync_mode: bool = False
    seed: int | None = None


class FalVideoRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /fal/{slug}`` for a video model: its length as ``duration`` (seconds) or as ``num_frames``
    at ``frames_per_second``."""

    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=4000)]
    duration: Annotated[int, msgspec.Meta(ge=1, le=10)] | Annotated[str, msgspec.Meta(pattern="^[0-9]{1,2}s?$")] = 5
    num_frames: Annotated[int, msgspec.Meta(ge=1, le=240)] | None = None
    frames_per_second: Annotated[int, msgspec.Meta(ge=1, le=60)] = 24
    sync_mode: bool = False
    seed: int | None = None


class FalSpeechRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /fal/{slug}`` for a speech model: the text to speak as ``text`` (Fal's text-to-speech
    models) or ``prompt``."""

    text: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)] | None = None
    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)] | None = None
    voice: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] = "alloy"
    sync_mode: bool = False


class FalBatchStatusRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /fal/requests/batch``: the requests whose statuses to read (1 to 50)."""

    request_ids: Annotated[list[str], msgspec.Meta(min_length=1, max_length=50)]


class CasolaJobRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /api/jobs``: the model, the task (``openai/chat-completion``, ``fal/text-to-image``...)
    and the task's own request body."""

    task: Annotated[str, msgspec.Meta(min_length=1)]
    payload: dict[str, Any]
    model_id: str = ""


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


class CreateBatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/batches`` (OpenAI's Batch API): a JSONL file of requests uploaded with purpose batch."""

    input_file_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    endpoint: Literal["/v1/chat/completions", "/v1/responses", "/v1/completions", "/v1/embeddings"]
    completion_window: Literal["24h"]
    metadata: (
        Annotated[
            dict[Annotated[str, msgspec.Meta(max_length=64)], Annotated[str, msgspec.Meta(max_length=512)]],
            msgspec.Meta(max_length=16),
        ]
        | None
    ) = None


# --- GPU Cloud and hosted agents (issue 18; gateway/routes/resources.py) ----------------------------


class GpuDeployRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """EmpirioLabs' ``GpuDeployRequest``: a GPU of ``gpu_slug`` (``GET /v1/gpu/catalog``), billed by the
    second while it runs. ``env`` is the workload's and never reaches the ledger."""

    gpu_slug: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    mode: Literal["model", "template", "custom"] = "model"
    hf_id: Annotated[str, msgspec.Meta(max_length=300)] | None = None
    template_slug: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    image: Annotated[str, msgspec.Meta(max_length=300)] | None = None
    ports: Annotated[list[Annotated[int, msgspec.Meta(ge=1, le=65535)]], msgspec.Meta(max_length=16)] | None = None
    env: Annotated[dict[str, Annotated[str, msgspec.Meta(max_length=4096)]], msgspec.Meta(max_length=64)] | None = None
    num_gpus: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    disk_gb: Annotated[int, msgspec.Meta(ge=100, le=300)] = 150
    name: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class HostedAgentCreateRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """EmpirioLabs' ``HostedAgentCreateRequest``: the plan (``plan_slug``) is charged monthly."""

    agent_type: Literal["openclaw", "hermes"]
    name: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    plan_slug: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None
    default_provider: Literal["empirio", "poe", "custom"] = "empirio"
    default_model: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    config: dict[str, Any] | None = None
    import_config: dict[str, Any] | str | None = None


class RenameBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


# --- issue 18: 3D generation, Casola's prompt rewrite and content-filter policy ---


class ThreeDRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /v1/3d/generations`` as EmpirioLabs documents it (``create3DGeneration``): its enums and
    ranges checked at decode; one of ``image`` and ``image_url`` is required (gateway/routes/three_d.py)."""

    model: Annotated[str, msgspec.Meta(min_length=1)]
    image: str | None = None
    image_url: str | None = None
    resolution: Literal["512", "1024", "1536"] = "1024"
    seed: Annotated[int, msgspec.Meta(ge=0, le=2_147_483_647)] = 42
    texture_size: Literal["1024", "2048", "4096"] = "2048"
    decimation_target: Annotated[int, msgspec.Meta(ge=10_000, le=1_000_000)] = 500_000
    remesh: bool = True
    max_num_tokens: Annotated[int, msgspec.Meta(ge=1024, le=131_072)] = 49_152
    response_format: Literal["url", "b64_json"] = "url"


class PromptRewriteRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Casola's ``POST /api/prompt-rewrite``: the prompt, the kind of model it is for, and the chat
    model that rewrites it (a cheap one unless named)."""

    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=4000)]
    target: Literal["image", "video", "text"] = "image"
    model: Annotated[str, msgspec.Meta(min_length=1)] = "sim-chat-small"


class PolicyBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An organization's content-filter policy (Casola's ``content-filter-policy``): its action."""

    action: Literal["block", "flag", "log", "off"]
