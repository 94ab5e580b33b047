"""The OpenAPI document, complete: Litestar lists the routes, their operation ids and path parameters;
this adds what it cannot see, because handlers read their bodies themselves (to forward what they do
not read untouched): each request body from its msgspec type (``schemas/api.py``), each response's
media types, the error envelope for every status a route can answer, and the security schemes.

Served at ``/schema/openapi.json`` (``document_plugin``). The schemathesis run in the test suite
(tests/http/test_openapi_fuzz.py) holds the gateway to it: no 5xx, every answer as documented.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from litestar import Request
from litestar.openapi.plugins import JsonRenderPlugin

from gateway import texttools
from schemas import api
from schemas import hosted_agents as hosted
from schemas.prices import PriceBook

# Request bodies by operation id: a msgspec type (JSON) or a ready schema (a multipart form).
_transcription_form: dict[str, Any] = {
    "type": "object",
    "required": ["file", "model"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "WAV or MP3 audio, at most 3 MiB"},
        "model": {"type": "string", "minLength": 1},
        "language": {"type": "string"},
        "prompt": {"type": "string"},
        "response_format": {"type": "string", "enum": ["json", "text", "verbose_json", "srt", "vtt"]},
        "timestamp_granularities": {
            "type": "string",
            "description": "word, segment, or both joined by a comma (or timestamp_granularities[] repeated)",
        },
        "translate": {"type": "string", "enum": ["true", "false"], "description": "translate into English"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
        "async": {"type": "string", "enum": ["true", "false"]},
    },
}
_translation_form: dict[str, Any] = {
    "type": "object",
    "required": ["file", "model"],
    "properties": {
        key: value
        for key, value in _transcription_form["properties"].items()
        if key not in ("language", "timestamp_granularities", "translate")
    },
}
# A transcription also takes JSON: the audio at a URL the gateway fetches, or as base64.
_transcription_json: dict[str, Any] = {
    "type": "object",
    "required": ["model"],
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "file_url": {"type": "string", "description": "an http(s) URL of WAV or MP3 audio, at most 3 MiB"},
        "file": {"type": "string", "description": "the audio as base64, or a data: URL"},
        "response_format": {"type": "string", "enum": ["json", "text", "verbose_json", "srt", "vtt"]},
        "timestamp_granularities": {"type": "array", "items": {"type": "string", "enum": ["word", "segment"]}},
        "language": {"type": "string"},
        "prompt": {"type": "string"},
        "translate": {"type": "boolean"},
        "diarize": {"type": "boolean"},
        "smart_format": {"type": "boolean"},
    },
}
_file_form: dict[str, Any] = {
    "type": "object",
    "required": ["file", "purpose"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "The file (at most the body limit)"},
        "purpose": {"type": "string", "enum": ["assistants", "batch", "fine-tune", "vision", "user_data", "evals"]},
    },
}
json_bodies: Mapping[str, type[Any]] = {
    "createOrganization": api.CreateOrganization,
    "grantCredits": api.GrantCreditsBody,
    "setCreditLimit": api.CreditLimitBody,
    "configureAutoTopUp": api.AutoTopUpBody,
    "refundCharge": api.RefundBody,
    "adjustCredits": api.AdjustmentBody,
    "publishPriceBook": PriceBook,
    "createChatCompletion": api.ChatCompletionRequest,
    "createCompletion": api.CompletionRequest,
    "createEmbedding": api.EmbeddingRequest,
    "createImage": api.ImageRequest,
    "createSpeech": api.SpeechRequest,
    "createSpeechStream": api.SpeechRequest,
    "createAudioGeneration": api.MusicRequest,
    "createMusic": api.MusicRequest,
    "createVideo": api.VideoRequest,
    "createResponse": api.ResponsesRequest,
    "createMessage": api.MessagesRequest,
    "createRerank": api.RerankRequest,
    "createReranks": api.RerankRequest,
    "createScore": api.ScoreRequest,
    **{operation: texttools.request_types[path] for operation, path in texttools.operations.items()},
    "createToken": api.CreateToken,
    "setTokenLimits": api.RateLimits,
    "setRateLimits": api.RateLimits,
    "setPlan": api.SetPlanBody,
    "createBatch": api.CreateBatch,
    "deployGpuInstance": api.GpuDeployRequest,
    "createHostedAgentInstance": api.HostedAgentCreateRequest,
    "renameHostedAgentInstance": api.RenameBody,
    # A hosted agent's message and configuration (gateway/routes/hosted_agents.py).
    "messageHostedAgentInstance": hosted.HostedAgentMessageRequest,
    "saveHostedAgentIntegration": hosted.HostedAgentIntegrationRequest,
    "setHostedAgentIntegrationBehavior": hosted.HostedAgentBehaviorRequest,
    "setHostedAgentModel": hosted.HostedAgentModelRequest,
    "setHostedAgentAccess": hosted.HostedAgentAccessRequest,
    "addHostedAgentSkill": hosted.HostedAgentSkillRequest,
    "addHostedAgentMcp": hosted.HostedAgentMcpRequest,
    # Casola's Fal queue and core API (gateway/routes/fal.py, gateway/routes/casola.py). A Fal body is
    # an image model's, a video model's (FalVideoRequest) or a speech model's (FalSpeechRequest), as its slug says.
    "submitFalRequest": api.FalImageRequest,
    "getFalRequestStatuses": api.FalBatchStatusRequest,
    "createCasolaJob": api.CasolaJobRequest,
    "createCasolaToken": api.CreateToken,
    # Issue 18's 3D generation, Casola's prompt rewrite and content-filter policy.
    "create3DGeneration": api.ThreeDRequest,
    "rewriteCasolaPrompt": api.PromptRewriteRequest,
    "createContentFilterPolicy": api.PolicyBody,
    "updateContentFilterPolicy": api.PolicyBody,
}
_image_edit_form: dict[str, Any] = {
    "type": "object",
    "required": ["image", "prompt"],
    "additionalProperties": False,
    "properties": {
        "image": {"type": "string", "format": "binary", "description": "PNG, JPEG, GIF or WebP (or several)"},
        "mask": {"type": "string", "format": "binary", "description": "a PNG whose transparent pixels are edited"},
        "prompt": {"type": "string", "minLength": 1},
        "model": {"type": "string", "minLength": 1},
        "n": {"type": "string", "enum": ["1", "2", "3", "4"]},
        "size": {"type": "string", "enum": ["1024x1024", "1792x1024"]},
        "quality": {"type": "string", "enum": ["standard", "hd"]},
        "response_format": {"type": "string", "enum": ["b64_json"]},
    },
}
form_bodies: Mapping[str, dict[str, Any]] = {
    "createImageEdit": _image_edit_form,
    "createTranscription": _transcription_form,
    "createTranslation": _translation_form,
    "createFile": _file_form,
}
# The media types of a form's file parts.
form_encodings: Mapping[str, dict[str, Any]] = {
    "createImageEdit": {
        "image": {"contentType": "image/png, image/jpeg, image/gif, image/webp"},
        "mask": {"contentType": "image/png"},
    },
}
json_alternatives: Mapping[str, dict[str, Any]] = {"createTranscription": _transcription_json}
_user = [{"role": "user", "content": "Say hello."}]
# An example body for each generation operation, on the default price book's models.
body_examples: Mapping[str, dict[str, Any]] = {
    "createChatCompletion": {"model": "sim-chat-small", "messages": _user, "max_tokens": 16},
    "createCompletion": {"model": "sim-chat-small", "prompt": "Once upon a time", "max_tokens": 16},
    "createEmbedding": {"model": "sim-embed-small", "input": "The food was delicious."},
    "createImage": {"model": "sim-image", "prompt": "A lighthouse at dawn", "size": "1024x1024"},
    "createSpeech": {"model": "sim-tts", "input": "Hello there.", "voice": "alloy", "response_format": "mp3"},
    "createAudioGeneration": {"model": "stable-audio-2-5", "prompt": "Lo-fi hip hop, 90 BPM", "duration": 10},
    "createMusic": {"model": "stable-audio-2-5", "prompt": "A calm piano piece", "duration": 10},
    "createSpeechStream": {"model": "tts-1-5-mini", "input": "Hello there.", "voice": "Sarah", "output_format": "PCM"},
    "createVideo": {"model": "sim-video", "prompt": "Waves on a beach", "duration": 2},
    "createResponse": {"model": "sim-chat-small", "input": "Say hello.", "max_output_tokens": 32},
    "createMessage": {"model": "deepseek-v4-pro", "max_tokens": 64, "messages": _user},
    "createRerank": {
        "model": "qwen3-0.6b-fp8-score",
        "query": "What is machine learning?",
        "documents": ["Machine learning is a subset of AI.", "The weather today is sunny."],
        "top_n": 1,
        "return_documents": True,
    },
    "createReranks": {
        "model": "qwen3-rerank",
        "query": "What is a rerank model?",
        "documents": ["Rerank models sort candidate documents by relevance.", "Quantum computing is a field."],
        "top_n": 2,
        "return_documents": True,
    },
    "createScore": {"model": "qwen3-rerank", "text_1": "What is the capital of France?", "text_2": ["Paris.", "Rome."]},
    **texttools.body_examples,
    "deployGpuInstance": {"gpu_slug": "rtx-4090", "mode": "model", "hf_id": "Qwen/Qwen2.5-7B-Instruct"},
    "createHostedAgentInstance": {
        "agent_type": "openclaw",
        "name": "OpenClaw Production",
        "plan_slug": "hosted-agent-basic",
    },
    "messageHostedAgentInstance": {"messages": _user},
    "submitFalRequest": {"prompt": "A cat in space", "sync_mode": True},
    "getFalRequestStatuses": {"request_ids": ["job_0123456789abcdef"]},
    "createCasolaJob": {
        "model_id": "Qwen/Qwen3.5-4B",
        "task": "openai/chat-completion",
        "payload": {"messages": _user, "max_tokens": 16},
    },
    "createCasolaToken": {"name": "CI Pipeline Token", "scopes": ["user:read", "user:write"]},
    "create3DGeneration": {
        "model": "trellis-2-4b",
        "image_url": "https://example.com/product-photo.png",
        "resolution": "1024",
        "texture_size": "2048",
        "decimation_target": 500000,
        "seed": 42,
    },
    "rewriteCasolaPrompt": {"prompt": "a cat on a roof", "target": "image"},
}

# What a successful answer is, beside JSON: streams (stream: true) and audio.
_event_stream = {"text/event-stream": {"schema": {"type": "object", "properties": {"data": {"type": "string"}}}}}
success_media: Mapping[str, dict[str, Any]] = {
    "createChatCompletion": _event_stream,
    "createCompletion": _event_stream,
    "createResponse": _event_stream,
    "createMessage": _event_stream,
    "createSpeech": {
        media_type: {"schema": {"type": "string", "format": "binary"}}
        for media_type in ("audio/mpeg", "audio/wav", "audio/pcm")
    },
    "createSpeechStream": _event_stream,
    "createTranscription": {"text/plain": {"schema": {"type": "string"}}},
    "createTranslation": {"text/plain": {"schema": {"type": "string"}}},
    "downloadFile": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    "getMedia": {
        media_type: {"schema": {"type": "string", "format": "binary"}}
        for media_type in ("image/png", "video/mp4", "audio/mpeg", "audio/wav")
    },
}
# Generation requests may be async (202 and a job), or refused for the balance (402). A Fal
# submission answers its queue entry with a 200 (or, with sync_mode, its output); POST /api/jobs is
# always a 202.
generation = {
    "createChatCompletion",
    "createCompletion",
    "createEmbedding",
    "createImage",
    "createSpeech",
    "createTranscription",
    "createTranslation",
    "createAudioGeneration",
    "createMusic",
    "createVideo",
    "createResponse",
    "createMessage",
    "createRerank",
    "createReranks",
    "createScore",
    *texttools.operations,
}
public = {"health", "getLedgerPublicKey", "getPricing", "listGpuTypes", "getGpuType", "hostedAgentsHealth", "getMedia"}
# Open without a credential; one that is sent is checked (gateway/auth.py, opt "anonymous").
anonymous = {"listModels", "retrieveModel"}


def _query(name: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


_moment = {"type": "string", "format": "date-time"}
_page = _query("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "Page size")
_window = [
    _query("from", _moment, "Start of the window (ISO 8601, inclusive)"),
    _query("to", _moment, "End of the window (ISO 8601, exclusive)"),
]
_cursor = _query("cursor", {"type": "string"}, "The next_cursor of the previous page")
# Query parameters the handlers read themselves (gateway/http.py: limit_param, moment_param).
query_parameters: Mapping[str, list[dict[str, Any]]] = {
    "getMedia": [
        _query("expires", {"type": "integer"}, "When the URL expires (Unix seconds), as the result gave it", True),
        _query("signature", {"type": "string"}, "The URL's signature, as the result gave it", True),
    ],
    "listJobs": [
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "Page size (default 25)"),
        _query("after", {"type": "string"}, "The last job id of the previous page"),
        _query(
            "status",
            {
                "type": "string",
                "enum": ["processing", "completed", "failed", "pending", "running", "cancelled", "dead_letter"],
            },
            "Only jobs in this status (processing, completed, failed) or state (pending, running, ...)",
        ),
    ],
    "listLedgerEntries": [_page, _cursor],
    "retrieveAccountUsage": [*_window, _page, _cursor],
    "listOrganizationUsage": [*_window, _page, _cursor],
    "listOrganizationUsageByToken": _window,
    "listCasolaUsage": [*_window, _page, _cursor],
    "listCasolaUsageByToken": _window,
    "retrieveStatement": [
        _query("from", _moment, "Start of the statement's period (ISO 8601)", required=True),
        _query("to", _moment, "End of the statement's period (ISO 8601)", required=True),
    ],
    "getOrganizationBalanceAt": [_query("at", _moment, "The moment (ISO 8601)", required=True)],
    "listModels": [
        _query("format", {"type": "string", "enum": ["openrouter"]}, "openrouter: OpenRouter's provider listing")
    ],
    "listBatches": [
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "Page size (default 20)"),
        _query("after", {"type": "string"}, "The last batch id of the previous page"),
    ],
    "listVoices": [_query("model", {"type": "string"}, "Only this speech model's voices")],
    **{
        op_id: [
            _query("category", {"type": "string"}, "Only templates of this category"),
            _query("model", {"type": "string"}, "Only templates whose supported_models name this model"),
            _query("featured", {"type": "string", "enum": ["true", "false"]}, "Only featured templates (or not)"),
            *(
                [
                    _query("modality", {"type": "string", "enum": ["image", "video"]}, "Only this modality"),
                    _query("type", {"type": "string", "enum": ["image", "video"]}, "Alias of modality"),
                ]
                if op_id != "listImageTemplates"
                else []
            ),
        ]
        for op_id in ("listGenerationTemplates", "listImageTemplates", "listVideoTemplates")
    },
    "listPlaygroundConversations": [
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "Page size (default 50)"),
        _query("before", _moment, "Only conversations updated before this moment (the next_cursor)"),
        _query("model", {"type": "string"}, "Only conversations with this model"),
    ],
    "searchCasolaCatalog": [
        _query("q", {"type": "string", "minLength": 1, "maxLength": 200}, "Words every result holds", True),
        _query("type", {"type": "string", "enum": ["model", "template"]}, "Only models or only templates"),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 50}, "At most this many (default 20)"),
    ],
    "removeHostedAgentSkill": [_query("slug", {"type": "string", "minLength": 1}, "The skill ref to remove", True)],
    "removeHostedAgentMcp": [_query("name", {"type": "string", "minLength": 1}, "The connector name to remove", True)],
    "listFiles": [
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 10_000}, "Page size (default 10,000)"),
        _query("after", {"type": "string"}, "The last file id of the previous page"),
        _query("order", {"type": "string", "enum": ["asc", "desc"]}, "By creation time (default desc)"),
        _query("purpose", {"type": "string"}, "Only files of this purpose"),
    ],
}
# Path parameters that take one of a few values (the handler answers 400 for another).
path_enums: Mapping[str, dict[str, tuple[str, ...]]] = {
    "disconnectHostedAgentIntegration": {"kind": hosted.disconnect_kinds},
    "setHostedAgentIntegrationBehavior": {"kind": hosted.channel_kinds},
}
# A decimal amount in credits, exact to 6 places: as a string (or a JSON number, read from its text).
_decimal = {"type": "string", "pattern": r"^-?[0-9]{1,12}(\.[0-9]{1,6})?$", "examples": ["25.50"]}


def _decimals(node: Any) -> Any:
    """msgspec documents Decimal as any string ("format": "decimal"); the API reads only numerals."""
    if isinstance(node, dict):
        if node.get("type") == "string" and node.get("format") == "decimal":
            return dict(_decimal)
        return {key: _decimals(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_decimals(value) for value in node]
    return node


anthropic_operations = {"createMessage"}
# The one operation that answers 422 (the reference's status for workload settings that do not fit).
unprocessable = {"deployGpuInstance"}

# Every status any route may answer with an error body (gateway/errors.py, the guard, the middleware).
error_statuses = {
    "400": "The request is malformed or names a value that does not exist (the field is in param).",
    "401": "No credential, or one that is unknown, revoked or expired.",
    "402": "The balance cannot cover the request's worst case; nothing was charged.",
    "403": "The credential lacks the route's scope.",
    "404": "No such resource for this organization.",
    "405": "The method is not allowed on this path.",
    "409": (
        "A conflict: an Idempotency-Key reused with another body, a job already ended or cancelled, a retried "
        "request whose outcome is no longer kept, or a retried Responses or Messages stream that already ran."
    ),
    "413": "The body is over the size limit, or a file would take the organization past its storage limit.",
    "414": "The URI is too long.",
    "415": "The body's media type is not accepted.",
    "422": "The workload settings are not valid together (a GPU deploy in mode custom without an image).",
    "429": (
        "A rate limit, or the organization's limit of requests in flight on this gateway; retry after the "
        "retry-after header."
    ),
    "431": "The headers are too large.",
    "500": "An unexpected error (a bug; logged).",
    "502": "The job failed on its backend; nothing was charged.",
    "503": "The gateway is at its limit of requests in flight, or a dependency is unavailable.",
    "504": "The job did not finish in time; its hold settles on its own.",
}


# Anthropic's error envelope, which /v1/messages answers in (gateway/surface.py).
anthropic_error_schema: dict[str, Any] = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
        "request_id": {"type": "string"},
    },
}


def enrich(document: dict[str, Any]) -> dict[str, Any]:
    """The document Litestar generated, completed (a new dict; the argument is left as it was)."""
    doc = msgspec.json.decode(msgspec.json.encode(document))
    # The request bodies and OpenAI's error envelope, in one set of components.
    types = [*json_bodies.values(), api.ErrorEnvelope]
    refs, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(_decimals(components))
    schemas["AnthropicError"] = anthropic_error_schema
    body_refs = dict(zip(json_bodies, refs[: len(json_bodies)], strict=True))
    doc["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "An API key or the platform admin token"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "An API key"},
    }
    # The document's own routes (this file, and Litestar's renderers of it) are not the API.
    doc["paths"] = {path: item for path, item in doc.get("paths", {}).items() if not path.startswith("/schema")}
    for item in doc["paths"].values():
        for method, operation in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            _complete(operation, method, body_refs)
    return doc


def _complete(operation: dict[str, Any], method: str, body_refs: Mapping[str, Any]) -> None:
    op_id = operation.get("operationId", "")
    for parameter in operation.get("parameters", []):
        values = path_enums.get(op_id, {}).get(parameter.get("name")) if parameter.get("in") == "path" else None
        if values is not None:
            parameter["schema"] = {"type": "string", "enum": list(values)}
    if op_id in query_parameters:
        listed = {(p.get("name"), p.get("in")) for p in operation.get("parameters", [])}
        operation.setdefault("parameters", []).extend(
            p for p in query_parameters[op_id] if (p["name"], p["in"]) not in listed
        )
    if op_id in body_refs:
        media: dict[str, Any] = {"schema": body_refs[op_id]}
        if op_id in body_examples:
            media["example"] = body_examples[op_id]
        operation["requestBody"] = {"required": True, "content": {"application/json": media}}
    elif op_id in form_bodies:
        content: dict[str, Any] = {"multipart/form-data": {"schema": form_bodies[op_id]}}
        if op_id in form_encodings:
            content["multipart/form-data"]["encoding"] = form_encodings[op_id]
        if op_id in json_alternatives:
            content["application/json"] = {"schema": json_alternatives[op_id]}
        operation["requestBody"] = {"required": True, "content": content}
    responses: dict[str, Any] = operation.setdefault("responses", {})
    for status, response in list(responses.items()):
        if status.startswith("2"):
            content = response.setdefault("content", {})
            if "application/json" in content:
                # Handlers answer bytes they encoded themselves (Litestar documents those as a string):
                # every JSON answer of this API is an object.
                content["application/json"]["schema"] = {"type": "object"}
            content.update(success_media.get(op_id, {}))
    if op_id in generation and "202" not in responses:
        responses["202"] = {
            "description": 'Accepted as a job ("async": true): poll poll_url',
            "content": {"application/json": {"schema": {"type": "object", "required": ["job_id", "poll_url"]}}},
        }
    error_ref = "#/components/schemas/AnthropicError" if op_id in anthropic_operations else None
    for status, description in error_statuses.items():
        if op_id in public and status in ("401", "402", "403", "409"):
            continue
        if status == "422" and op_id not in unprocessable:
            continue
        schema = {"$ref": error_ref or "#/components/schemas/ErrorEnvelope"}
        code = "529" if error_ref and status == "503" else status
        # Replaces what Litestar lists (its own validation error shape, which this API never answers).
        responses[code] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if op_id in anonymous:
        operation["security"] = [{}, {"bearer": []}, {"apiKey": []}]
    elif op_id not in public:
        operation["security"] = [{"bearer": []}, {"apiKey": []}]
    else:
        operation["security"] = []


class DocumentPlugin(JsonRenderPlugin):
    """``/schema/openapi.json``: the generated document, completed by ``enrich`` (once)."""

    def __init__(self) -> None:
        super().__init__()
        self._rendered: bytes | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        if self._rendered is None:
            self._rendered = msgspec.json.encode(enrich(openapi_schema))
        return self._rendered
