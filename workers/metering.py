"""How every input of a chat request counts, one rule per kind: the gateway bounds each kind with it
(the hold) and the simulated worker counts with it (the charge); an upstream server reports its own
counts, which the same hold bounds.

- **Text** (message contents, names, tool results): the model's tokenizer; a bound of one token per
  byte holds for any byte-level tokenizer.
- **Tool definitions** (``tools``, ``functions``, ``tool_choice``) and **tool calls** in the
  conversation (an assistant's ``tool_calls``: names and arguments) are text: their JSON, as the
  model reads it.
- **Images** (``image_url`` parts, by URL or ``data:`` URI), the rule OpenAI publishes for its
  GPT-4o-class vision models: ``detail: "low"`` is 85 tokens; ``"high"`` and ``"auto"`` scale the
  image to fit within 2048x2048, then so that its shortest side is at most 768 pixels, and count
  170 tokens per 512-pixel tile plus 85. An image whose size the request does not show (a URL, which
  Tollgate does not fetch) counts as the largest one: 1,445 tokens (85 with ``detail: "low"``).
- **Audio** (``input_audio`` parts, WAV): 10 tokens per second, by the started 100 ms (OpenAI's rate
  for audio input). Audio the gateway cannot measure (another format, a URL) is refused, not guessed.
- **Files** (``file`` parts): inline ``file_data`` counts as the text it holds (one token per byte at
  most); a ``file_id`` is replaced by its contents before the request is held (``FileContents``), so
  it is metered, and run, exactly as if it had been sent inline.
- **Prompt caching**: a content part marked ``cache_control`` (Anthropic's marker) makes the prompt up
  to and including it a cacheable prefix: written to the cache (``cache_write_tokens``) the first time,
  read from it (``cached_input_tokens``) after.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from schemas.units import Units
from workers import media

image_tokens_base = 85
image_tokens_per_tile = 170
image_tile_px = 512
image_fit_px = 2048
image_short_side_px = 768
image_tokens_max = image_tokens_base + image_tokens_per_tile * 8  # 768 x 2048 after scaling: 2 x 4 tiles
audio_tokens_per_second = 10
audio_ms_per_token = 1000 // audio_tokens_per_second
file_bytes_max = 4 * 1024 * 1024  # what one request may bring in by file_id (as a body may inline)
search_queries_per_request_max = 3  # a research model's own searches per request (the simulation's bound)
web_searches_per_request_max = 1  # a chat request with web_search_options runs one search (OpenAI's billing)


class MeteringError(ValueError):
    """An input that cannot be measured: the gateway answers 400 naming ``param``."""

    def __init__(self, code: str, message: str, param: str) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


def image_tokens(size: tuple[int, int] | None, detail: str) -> int:
    """The tokens of one image by the rule of the module doc (``size`` None: not known)."""
    if detail == "low":
        return image_tokens_base
    if size is None:
        return image_tokens_max
    width, height = size
    if max(width, height) > image_fit_px:  # fit within 2048 x 2048
        scale = image_fit_px / max(width, height)
        width, height = max(1, int(width * scale)), max(1, int(height * scale))
    if min(width, height) > image_short_side_px:  # then the shortest side at most 768
        scale = image_short_side_px / min(width, height)
        width, height = max(1, int(width * scale)), max(1, int(height * scale))
    tiles = -(-width // image_tile_px) * -(-height // image_tile_px)
    return image_tokens_base + image_tokens_per_tile * tiles


def audio_tokens(duration_ms: int) -> int:
    return -(-max(duration_ms, 1) // audio_ms_per_token)


def _data_uri_bytes(url: str) -> bytes | None:
    """The bytes of a base64 ``data:`` URI, or None for anything else."""
    if not url.startswith("data:"):
        return None
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        return None
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None


def image_size_of(url: str) -> tuple[int, int] | None:
    """The size of an image given as a data URI, when its header can be read; None otherwise."""
    data = _data_uri_bytes(url)
    if data is None:
        return None
    try:
        return media.image_size(data)
    except ValueError:
        return None


@dataclass
class Prompt:
    """A chat prompt split by kind: what the bound and the count are taken from."""

    texts: list[str] = field(default_factory=list)  # everything the model reads as text, in order
    cacheable_texts: int = 0  # the first ``cacheable_texts`` of ``texts`` are a cacheable prefix
    image_tokens: int = 0
    audio_ms: list[int] = field(default_factory=list)
    messages: int = 0

    @property
    def audio_tokens(self) -> int:
        return sum(audio_tokens(ms) for ms in self.audio_ms)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _part(prompt: Prompt, part: dict[str, Any], where: str) -> None:
    kind = part.get("type")
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        detail = image.get("detail", "auto") if isinstance(image, dict) else "auto"
        if not isinstance(url, str) or not url:
            raise MeteringError("invalid_image", "An image_url part needs an image_url.url.", f"{where}.image_url")
        prompt.image_tokens += image_tokens(image_size_of(url), str(detail))
    elif kind == "input_audio":
        prompt.audio_ms.append(_audio_ms(part.get("input_audio"), where))
    elif kind == "audio_url":
        raise MeteringError(
            "unsupported_audio_input",
            "Audio by URL cannot be metered before it runs: send it as an input_audio part (WAV, base64).",
            f"{where}.audio_url",
        )
    elif kind == "file":
        prompt.texts.append(_file_text(part.get("file"), where))
    elif kind in ("text", "input_text") or "text" in part:
        prompt.texts.append(str(part.get("text", "")))
    else:
        prompt.texts.append(_json(part))  # an unknown part is read as what it says


def _audio_ms(audio: Any, where: str) -> int:
    data = audio.get("data") if isinstance(audio, dict) else None
    audio_format = audio.get("format", "wav") if isinstance(audio, dict) else None
    if audio_format != "wav" or not isinstance(data, str):
        raise MeteringError(
            "unsupported_audio_format",
            "Audio input must be WAV: input_audio.data (base64) with input_audio.format 'wav'.",
            f"{where}.input_audio",
        )
    try:
        return media.wav_duration_ms(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError) as error:
        raise MeteringError(
            "invalid_audio", f"The audio is not WAV we can read: {error}", f"{where}.input_audio"
        ) from None


def _file_text(file: Any, where: str) -> str:
    """The text an inline file holds (a file_id is resolved into file_data before this runs)."""
    if not isinstance(file, dict) or not isinstance(file.get("file_data"), str):
        raise MeteringError(
            "invalid_file", "A file part needs file.file_data (base64) or file.file_id.", f"{where}.file"
        )
    data = str(file["file_data"])
    raw = _data_uri_bytes(data) if data.startswith("data:") else None
    if raw is None:
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise MeteringError("invalid_file", "file.file_data must be base64.", f"{where}.file") from None
    return raw.decode("utf-8", errors="replace")


def chat_prompt(fields: dict[str, Any]) -> Prompt:
    """Split a chat body's prompt by kind (module doc). Raises MeteringError for what cannot be measured."""
    prompt = Prompt()
    messages = fields.get("messages")
    for index, message in enumerate(messages if isinstance(messages, list) else []):
        if not isinstance(message, dict):
            continue
        prompt.messages += 1
        where = f"messages[{index}]"
        content = message.get("content")
        if isinstance(content, str):
            prompt.texts.append(content)
        elif isinstance(content, list):
            for number, part in enumerate(content):
                if isinstance(part, dict):
                    _part(prompt, part, f"{where}.content[{number}]")
                    if "cache_control" in part:
                        prompt.cacheable_texts = len(prompt.texts)
        for key in ("name", "tool_call_id"):
            if isinstance(message.get(key), str):
                prompt.texts.append(message[key])
        for key in ("tool_calls", "function_call"):
            if message.get(key):
                prompt.texts.append(_json(message[key]))
    for key in ("tools", "functions", "tool_choice", "response_format"):
        value = fields.get(key)
        if value and not isinstance(value, str):
            prompt.texts.append(_json(value))
    return prompt


class FileContents(Protocol):
    """Where a ``file_id`` in a chat request is read from: (filename, bytes), or None when the
    organization has no such file. The files API plugs its store in here (``GatewayCore.files``)."""

    def read(self, org_id: str, file_id: str, bytes_max: int) -> tuple[str, bytes] | None: ...


class NoFiles:
    """No file store: every file_id is unknown."""

    def read(self, org_id: str, file_id: str, bytes_max: int) -> tuple[str, bytes] | None:
        return None


def inline_files(fields: dict[str, Any], org_id: str, files: FileContents) -> None:
    """Replace every ``file`` part naming a ``file_id`` by its contents (``file_data``, base64), in
    place, so that the prompt is metered and run as if the file had been sent inline. At most
    ``file_bytes_max`` bytes come in this way per request."""
    budget = file_bytes_max
    for index, part in _parts(fields):
        file = part.get("file")
        if part.get("type") != "file" or not isinstance(file, dict) or "file_data" in file:
            continue
        file_id = file.get("file_id")
        where = f"messages[{index}].content"
        if not isinstance(file_id, str) or not file_id:
            raise MeteringError("invalid_file", "A file part needs file.file_data or file.file_id.", where)
        found = files.read(org_id, file_id, budget)
        if found is None:
            raise MeteringError("file_not_found", f"No file '{file_id}' in this organization.", where)
        filename, data = found
        budget -= len(data)
        if budget < 0:
            raise MeteringError(
                "files_too_large", f"Files referenced by one request may hold at most {file_bytes_max} bytes.", where
            )
        part["file"] = {"filename": filename, "file_data": base64.b64encode(data).decode()}


batch_service_tiers = ("flex",)  # OpenAI's service tier at batch prices
service_tiers = ("auto", "default", *batch_service_tiers)


def charged_units(units: Units, payload: dict[str, Any]) -> Units:
    """The units a finished (or stopped) job is charged for, whatever backend measured them: one
    request (the flat per-request fee), at batch prices when it was sent with a batch service tier,
    and one web search when it asked for web search (OpenAI bills a search per such request) and the
    backend reported none."""
    web_searches = units.web_search_calls or (1 if payload.get("web_search_options") is not None else 0)
    return msgspec.structs.replace(
        units,
        calls=max(units.calls, 1),
        batch=payload.get("service_tier") in batch_service_tiers,
        web_search_calls=web_searches,
        variant=units.variant or (_search_tier(payload) if units.search_units else ""),
    )


def _search_tier(payload: dict[str, Any]) -> str:
    """The tier searches were held at (the gateway wrote it: ``search_tier`` for /v1/search, Perplexity's
    ``search_context_size`` for chat), which prices the search queries a backend reported."""
    tier = payload.get("search_tier") or payload.get("search_context_size")
    return tier if isinstance(tier, str) else ""


def _parts(fields: dict[str, Any]) -> Iterable[tuple[int, dict[str, Any]]]:
    messages = fields.get("messages")
    for index, message in enumerate(messages if isinstance(messages, list) else []):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    yield index, part


@dataclass
class EmbeddingItems:
    """A multimodal embedding's items split by kind, as a chat prompt's are."""

    texts: list[str] = field(default_factory=list)
    image_tokens: int = 0
    images: int = 0


embedding_items_max = 2048  # as many as an embedding's ``input`` list may hold


def embedding_items(items: list[Any]) -> EmbeddingItems:
    """EmpirioLabs' multimodal embedding ``input``: each item ``{"type": "text", "text"}`` (text, by
    the text rule) or ``{"type": "image", "url"}`` (a URL or ``data:`` URI, by the image rule, at
    ``auto`` detail). Anything else is a ``MeteringError``."""
    counted = EmbeddingItems()
    for index, item in enumerate(items[:embedding_items_max]):
        where = f"input[{index}]"
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "text" and isinstance(item.get("text"), str) and item["text"]:
            counted.texts.append(item["text"])
        elif kind == "image" and isinstance(item.get("url"), str) and item["url"]:
            counted.image_tokens += image_tokens(image_size_of(item["url"]), "auto")
            counted.images += 1
        else:
            raise MeteringError(
                "invalid_input",
                'Each input item must be {"type": "text", "text": "..."} or {"type": "image", "url": "..."}.',
                where,
            )
    return counted
