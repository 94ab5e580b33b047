"""The upstream backend: forwards every endpoint to OpenAI-compatible inference servers (vLLM, SGLang,
llama.cpp...) and meters what each server really did.

Routing. A job runs on the upstream of its model's pool (the price book names each model's pool):
``TOLLGATE_UPSTREAMS`` maps pools to upstreams (URL, key, timeouts, calls in flight, tokenizers);
``TOLLGATE_UPSTREAM_URL`` serves every pool it does not name. When an upstream cannot serve (it is
unreachable, answers 5xx or 429) before any output, the job's fallbacks (the price book's, each with
its own pool) are tried in order; the job reports the model that served it and how deep it went.

Streams. A streamed request is streamed from the upstream (``stream_options.include_usage`` only
then: vLLM refuses it with ``stream: false``) and every delta is a progress point as it arrives, which
the gateway relays to the client. A stop (cancel, client gone) cancels the task, which closes the
upstream connection: the units at the last point are what is charged.

Metering. Each response type's own usage fields: chat and completions ``usage`` (the final chunk of a
stream), embeddings ``usage.prompt_tokens``, rerank and score ``usage.prompt_tokens`` (or
``total_tokens``, all vLLM's rerank reports), images the number returned, speech the characters sent,
transcriptions the duration the server reports. When a text upstream reports no usage, tokens are
counted with the model's own tokenizer (workers/tokens.py), and a stream's output from the logprobs
the pool asks for (``stream_logprobs``: one entry per generated token, exact); a count that cannot be
made fails the job: never a guess. ``JobOutput.counted_by`` says which way it went.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp
import msgspec

from ledger.pricing import billed_seconds
from schemas.prices import Route
from schemas.units import Units
from workers import conversations, media, texttools
from workers.backends import (
    AUDIO,
    ITEM,
    REASONING,
    REASONING_SIGNATURE,
    TEXT,
    Backend,
    BackendError,
    JobContext,
    JobOutput,
    ranked,
    score_pairs,
)
from workers.tokens import TokenCounter, TokenizerError, load_counter

logger = logging.getLogger(__name__)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
IMAGES = "/v1/images/generations"
SPEECH = "/v1/audio/speech"
TRANSCRIPTIONS = "/v1/audio/transcriptions"
TRANSLATIONS = "/v1/audio/translations"
IMAGE_EDITS = "/v1/images/edits"
RERANK, RERANKS, SCORE = "/v1/rerank", "/v1/reranks", "/v1/score"
RESPONSES = conversations.RESPONSES
MESSAGES = conversations.MESSAGES
anthropic_version = "2023-06-01"  # the Messages API version an Anthropic-compatible upstream is called with

error_text_chars_max = 500  # of an upstream's error body, in a job's failure message
stream_line_bytes_max = 4 * 1024 * 1024  # one SSE line; a longer one is a broken stream
fallback_statuses = frozenset({408, 429, 500, 502, 503, 504})  # another model's upstream may serve


class UpstreamConfigError(ValueError):
    """Settings that do not describe upstreams; the message says how to fix them."""


@dataclass(frozen=True, slots=True)
class Upstream:
    """One OpenAI-compatible server and how to call it."""

    url: str
    api_key: str = ""
    timeout_s: float = 120.0  # between two bytes of an answer (a stream's tokens included)
    connect_timeout_s: float = 5.0
    calls_in_flight_max: int = 256  # per worker role; more calls wait for a slot
    stream_logprobs: bool = False  # ask streams for logprobs: an exact output count without usage
    tokenizers: Mapping[str, str] = field(default_factory=dict)  # model -> tokenizer spec
    models: Mapping[str, str] = field(default_factory=dict)  # price book model -> the upstream's name
    # The upstream serves OpenAI's /v1/responses (vLLM, SGLang, OpenAI): Responses requests are forwarded;
    # false: translated to chat completions (function tools only: the hosted web_search fails the job).
    responses: bool = True
    # The upstream also serves Anthropic's /v1/messages (Anthropic, vLLM, llama.cpp's llama-server):
    # Messages requests are forwarded; false: translated to chat completions.
    anthropic: bool = False


_upstream_keys = {
    "url",
    "api_key",
    "timeout_s",
    "connect_timeout_s",
    "calls_in_flight_max",
    "stream_logprobs",
    "tokenizers",
    "models",
    "responses",
    "anthropic",
}


def _upstream(where: str, given: Any) -> Upstream:
    if not isinstance(given, dict) or not isinstance(given.get("url"), str) or not given["url"]:
        raise UpstreamConfigError(f'{where} must be an object with a "url"')
    unknown = set(given) - _upstream_keys
    if unknown:
        raise UpstreamConfigError(f"{where} has unknown keys {sorted(unknown)}; known: {sorted(_upstream_keys)}")
    try:
        upstream = msgspec.convert(given, UpstreamSpec)
    except msgspec.ValidationError as error:
        raise UpstreamConfigError(f"{where}: {error}") from None
    if upstream.calls_in_flight_max < 1 or upstream.timeout_s <= 0 or upstream.connect_timeout_s <= 0:
        raise UpstreamConfigError(f"{where}: timeouts and calls_in_flight_max must be positive")
    return Upstream(**msgspec.structs.asdict(upstream))


class UpstreamSpec(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    api_key: str = ""
    timeout_s: float = 120.0
    connect_timeout_s: float = 5.0
    calls_in_flight_max: int = 256
    stream_logprobs: bool = False
    tokenizers: dict[str, str] = msgspec.field(default_factory=dict)
    models: dict[str, str] = msgspec.field(default_factory=dict)
    responses: bool = True
    anthropic: bool = False


@dataclass(frozen=True, slots=True)
class Upstreams:
    """Each pool's upstream, and the default for pools not named."""

    pools: Mapping[str, Upstream]
    default: Upstream | None = None

    def for_pool(self, pool: str) -> Upstream | None:
        return self.pools.get(pool, self.default)

    @classmethod
    def from_settings(
        cls,
        upstreams_json: str,
        url: str = "",
        api_key: str = "",
        timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
        calls_in_flight_max: int = 256,
        stream_logprobs: bool = False,
        tokenizers_json: str = "",
    ) -> Upstreams:
        """From ``TOLLGATE_UPSTREAMS`` (JSON: pool -> upstream) and the ``TOLLGATE_UPSTREAM_*`` default."""
        try:
            pools_given = json.loads(upstreams_json) if upstreams_json.strip() else {}
            tokenizers = json.loads(tokenizers_json) if tokenizers_json.strip() else {}
        except ValueError as error:
            raise UpstreamConfigError(
                f"TOLLGATE_UPSTREAMS or TOLLGATE_UPSTREAM_TOKENIZERS is not JSON: {error}"
            ) from None
        if not isinstance(pools_given, dict):
            raise UpstreamConfigError('TOLLGATE_UPSTREAMS must be a JSON object: {"<pool>": {"url": ...}, ...}')
        if not isinstance(tokenizers, dict) or not all(isinstance(v, str) for v in tokenizers.values()):
            raise UpstreamConfigError('TOLLGATE_UPSTREAM_TOKENIZERS must be a JSON object: {"<model>": "<spec>"}')
        pools = {pool: _upstream(f"TOLLGATE_UPSTREAMS[{pool!r}]", given) for pool, given in pools_given.items()}
        default = None
        if url:
            default = _upstream(
                "TOLLGATE_UPSTREAM_URL",
                {
                    "url": url,
                    "api_key": api_key,
                    "timeout_s": timeout_s,
                    "connect_timeout_s": connect_timeout_s,
                    "calls_in_flight_max": calls_in_flight_max,
                    "stream_logprobs": stream_logprobs,
                    "tokenizers": tokenizers,
                },
            )
        return cls(pools, default)

    def __bool__(self) -> bool:
        return bool(self.pools) or self.default is not None


class _Unserved(Exception):
    """An upstream could not serve before any output: the next fallback may."""

    def __init__(self, error: BackendError) -> None:
        super().__init__(str(error))
        self.error = error


# What a call to an upstream can fail with before it has an answer: the connection, a timeout.
_call_errors = (aiohttp.ClientError, asyncio.TimeoutError)


@dataclass(frozen=True, slots=True)
class _Reply:
    """A whole upstream answer, read."""

    status_code: int
    headers: Mapping[str, str]  # names in lower case
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


@dataclass(slots=True)
class _Client:
    """An upstream's HTTP session and its slots (calls in flight), on one worker's event loop.

    aiohttp, not httpx: against a fake upstream that answers at once, httpx spent 2-3 ms of CPU per
    call and aiohttp 0.16-0.2 ms (3,000 calls at 16 in flight, /tmp/clientbench.py in the hot-path
    note); in `tollgate dev` the upstream calls were 42% of the process's CPU."""

    upstream: Upstream
    session: aiohttp.ClientSession
    slots: asyncio.Semaphore

    def url(self, path: str) -> str:
        return self.upstream.url.rstrip("/") + path

    @contextlib.asynccontextmanager
    async def http(self) -> AsyncIterator[aiohttp.ClientSession]:
        """A slot for one call (released when the call ends)."""
        async with self.slots:
            yield self.session

    async def aclose(self) -> None:
        await self.session.close()


@dataclass(slots=True)
class _Count:
    """What a text job has measured so far."""

    prompt_tokens: int | None = None
    output_tokens: int = 0
    output_exact: bool = False  # counted from logprob entries (one per token), not from chunks
    usage: dict[str, Any] | None = None


def _error_for_status(status: int, body: str) -> BackendError:
    detail = f"upstream answered {status}: {body[:error_text_chars_max]}"
    if status in fallback_statuses or status >= 500:
        return BackendError("upstream_error" if status >= 500 else "upstream_busy", detail, retryable=True)
    if status == 400 and "context" in body.lower() and ("length" in body.lower() or "window" in body.lower()):
        # vLLM, SGLang and llama.cpp refuse a prompt beyond the model's window this way: the client's 400.
        return BackendError("context_length_exceeded", detail)
    return BackendError("upstream_rejected", detail)


def _count(container: Any, *keys: str) -> int:
    """The first non-negative integer under ``keys`` of a dict (0 when there is none)."""
    if isinstance(container, dict):
        for key in keys:
            value = container.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
    return 0


def _units_from_usage(usage: Any) -> Units | None:
    """Units from an OpenAI ``usage`` object (chat, completions, embeddings), every kind it reports
    apart: cache reads (``prompt_tokens_details.cached_tokens`` or Anthropic's
    ``cache_read_input_tokens``), cache writes (``cache_creation_input_tokens``), audio and image input
    tokens, reasoning tokens (``completion_tokens_details.reasoning_tokens``), search queries
    (``num_search_queries``) and platform tools (``tool_usage.<tool>``, Anthropic's
    ``server_tool_use.web_search_requests``); None when it has no ``prompt_tokens``."""
    if not isinstance(usage, dict) or not isinstance(usage.get("prompt_tokens"), int):
        return None
    prompt = usage["prompt_tokens"]
    details = usage.get("prompt_tokens_details")
    cached = _count(details, "cached_tokens") or _count(usage, "cache_read_input_tokens")
    written = _count(details, "cache_write_tokens") or _count(usage, "cache_creation_input_tokens")
    audio = _count(details, "audio_tokens")
    image = _count(details, "image_tokens")
    parts = [cached, written, audio, image]
    if sum(parts) > prompt:  # an upstream whose details do not add up: trust its total as plain input
        parts = [0, 0, 0, 0]
    completion = _count(usage, "completion_tokens")
    reasoning = min(_count(usage.get("completion_tokens_details"), "reasoning_tokens"), completion)
    tools = usage.get("tool_usage")
    web_searches = _count(tools, "web_search") or _count(usage.get("server_tool_use"), "web_search_requests")
    return Units(
        input_tokens=prompt - sum(parts),
        cached_input_tokens=parts[0],
        cache_write_tokens=parts[1],
        audio_input_tokens=parts[2],
        image_input_tokens=parts[3],
        output_tokens=completion - reasoning,
        reasoning_tokens=reasoning,
        search_units=_count(usage, "num_search_queries"),
        web_search_calls=web_searches,
        file_search_calls=_count(tools, "file_search"),
        code_interpreter_calls=_count(tools, "code_interpreter"),
    )


class UpstreamBackend(Backend):
    """Every endpoint forwarded to the upstream of the job's pool (with fallbacks), on async clients
    with at most ``calls_in_flight_max`` calls per upstream."""

    def __init__(self, upstreams: Upstreams) -> None:
        if not upstreams:
            raise UpstreamConfigError("no upstream: set TOLLGATE_UPSTREAM_URL or TOLLGATE_UPSTREAMS")
        self._upstreams = upstreams
        self._clients: dict[str, _Client] = {}

    def _client(self, upstream: Upstream) -> _Client:
        client = self._clients.get(upstream.url + "\0" + upstream.api_key)
        if client is None:
            headers = {"Authorization": f"Bearer {upstream.api_key}"} if upstream.api_key else {}
            limit = upstream.calls_in_flight_max
            session = aiohttp.ClientSession(
                headers=headers,
                # timeout_s is the most an answer may pause between two reads (a stream's tokens
                # included), not a bound on a whole stream; the slots bound the calls in flight.
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=upstream.connect_timeout_s, sock_read=upstream.timeout_s
                ),
                connector=aiohttp.TCPConnector(limit=limit, limit_per_host=0),
                trust_env=False,  # no proxy for an upstream: it is named by its URL
                # A stream's line may be this long (a readline past it fails the stream).
                read_bufsize=stream_line_bytes_max,
                json_serialize=lambda value: msgspec.json.encode(value).decode(),
            )
            client = _Client(upstream, session, asyncio.Semaphore(limit))
            self._clients[upstream.url + "\0" + upstream.api_key] = client
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    async def run(self, job: JobContext) -> JobOutput:
        routes = [Route(model=job.model, pool=job.pool), *job.fallbacks]
        last: BackendError | None = None
        for depth, route in enumerate(routes):
            upstream = self._upstreams.for_pool(route.pool)
            if upstream is None:
                last = BackendError(
                    "no_upstream",
                    f"no upstream serves pool {route.pool!r}: "
                    "name it in TOLLGATE_UPSTREAMS or set TOLLGATE_UPSTREAM_URL",
                )
                continue
            job.serve_as(route.model, depth)
            try:
                return await self._serve(job, self._client(upstream), route.model)
            except _Unserved as unserved:
                last = unserved.error
                if depth + 1 < len(routes):
                    logger.info("upstream of %s could not serve (%s); falling back", route.model, unserved)
        assert last is not None
        raise last

    async def _serve(self, job: JobContext, client: _Client, model: str) -> JobOutput:
        runner = {
            CHAT: self._text,
            COMPLETIONS: self._text,
            EMBEDDINGS: self._embeddings,
            IMAGES: self._images,
            IMAGE_EDITS: self._image_edits,
            SPEECH: self._speech,
            TRANSCRIPTIONS: self._transcription,
            TRANSLATIONS: self._transcription,
            RERANK: self._rerank,
            RERANKS: self._rerank,
            SCORE: self._score,
            RESPONSES: self._dialogue,
            MESSAGES: self._dialogue,
            texttools.SEARCH: self._text_tool,
            texttools.ANSWER: self._text_tool,
            texttools.DETECT: self._text_tool,
            texttools.PII: self._text_tool,
            texttools.RESEARCH: self._research,
            texttools.IMAGE_ANALYSIS: self._analysis,
        }.get(job.endpoint)
        if runner is None:
            raise BackendError("unsupported_endpoint", f"the upstream backend does not forward {job.endpoint}")
        return await runner(job, client, model)

    def _counter(self, client: _Client, model: str) -> TokenCounter | None:
        spec = client.upstream.tokenizers.get(model)
        if not spec:
            return None
        try:
            return load_counter(spec)
        except TokenizerError as error:
            raise BackendError("tokenizer_unavailable", f"the tokenizer of {model}: {error}") from error

    # --- calls ---

    async def _post(
        self,
        client: _Client,
        path: str,
        json: Any = None,
        data: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        files: Mapping[str, tuple[str, bytes, str]] | Sequence[tuple[str, tuple[str, bytes, str]]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> _Reply:
        """One call, its answer read whole: ``json``, or a multipart form of ``data`` and ``files``;
        ``headers`` beside the session's (an Anthropic-compatible upstream's version and key)."""
        form: aiohttp.FormData | None = None
        if files is not None:
            form = aiohttp.FormData()
            for name, value in data.items() if isinstance(data, Mapping) else (data or ()):
                form.add_field(name, value)
            for name, (filename, content, content_type) in files.items() if isinstance(files, Mapping) else files:
                form.add_field(name, content, filename=filename, content_type=content_type)
        try:
            async with (
                client.http() as http,
                http.post(
                    client.url(path), json=json, data=form if form is not None else data, headers=headers
                ) as response,
            ):
                received = {name.lower(): value for name, value in response.headers.items()}
                reply = _Reply(response.status, received, await response.read())
        except _call_errors as error:
            raise _Unserved(BackendError("upstream_unreachable", f"upstream call failed: {error!r}", True)) from None
        if reply.status_code >= 400:
            failure = _error_for_status(reply.status_code, reply.text)
            raise _Unserved(failure) if reply.status_code in fallback_statuses else failure
        return reply

    @staticmethod
    def _json(response: _Reply) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            raise BackendError("upstream_bad_reply", f"upstream answered non-JSON: {response.text[:200]}") from None
        if not isinstance(body, dict):
            raise BackendError("upstream_bad_reply", "upstream answered JSON that is not an object")
        return body

    # --- chat and completions ---

    async def _text(self, job: JobContext, client: _Client, model: str) -> JobOutput:
        counter = self._counter(client, model)
        name = client.upstream.models.get(model, model)
        if job.payload.get("stream"):
            return await self._text_stream(job, client, model, name, counter)
        body = {key: value for key, value in job.payload.items() if key not in ("stream", "stream_options", "async")}
        body.update(model=name, stream=False)  # never stream_options with stream false: vLLM refuses it (400)
        result = self._json(await self._post(client, job.endpoint, json=body))
        usage = result.pop("usage", None)
        units = _units_from_usage(usage)
        if units is not None:
            job.counted_by = "upstream"
        else:
            units = await self._count_reply(job, counter, model, result)
        job.progress(1000, units)
        return JobOutput(result=result, units=units)

    async def _count_reply(
        self, job: JobContext, counter: TokenCounter | None, model: str, result: dict[str, Any]
    ) -> Units:
        """A whole reply without usage: both sides by the model's tokenizer, or the job fails."""
        if counter is None:
            raise BackendError(
                "upstream_no_usage",
                f"the upstream reported no usage and {model} has no tokenizer configured; nothing is charged",
            )
        choices = result.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], dict) else {}
        text = (
            str((choice.get("message") or {}).get("content") or "")
            if job.endpoint == CHAT
            else str(choice.get("text") or "")
        )
        prompt, output = await asyncio.to_thread(lambda: (self._prompt_tokens(job, counter), counter.count_text(text)))
        job.counted_by = "tokenizer"
        return Units(input_tokens=prompt, output_tokens=output)

    @staticmethod
    def _prompt_tokens(job: JobContext, counter: TokenCounter) -> int:
        try:
            if job.endpoint == CHAT:
                return counter.count_chat(list(job.payload.get("messages") or []))
            prompt = job.payload.get("prompt")
            prompts = prompt if isinstance(prompt, list) else [prompt or ""]
            return sum(counter.count_prompt(str(p)) for p in prompts)
        except TokenizerError as error:
            raise BackendError("prompt_not_countable", str(error)) from None

    async def _text_stream(
        self, job: JobContext, client: _Client, model: str, name: str, counter: TokenCounter | None
    ) -> JobOutput:
        chat = job.endpoint == CHAT
        body = {key: value for key, value in job.payload.items() if key != "async"}
        body.update(model=name, stream=True, stream_options={"include_usage": True})
        if client.upstream.stream_logprobs and not body.get("logprobs"):
            # One logprobs entry per generated token: the exact output count when usage is missing.
            body.update({"logprobs": True, "top_logprobs": 1} if chat else {"logprobs": 1})
        limit = int(job.payload.get("max_tokens") or 0)
        count = _Count()
        # The prompt is counted while the upstream works (only needed when it reports no usage).
        prompting = (
            asyncio.ensure_future(asyncio.to_thread(self._prompt_tokens, job, counter)) if counter is not None else None
        )
        text: list[str] = []
        finish: str | None = None
        try:
            async for chunk in self._chunks(client, job.endpoint, body, output_started=lambda: bool(text)):
                if isinstance(chunk.get("usage"), dict):
                    count.usage = chunk["usage"]
                choices = chunk.get("choices")
                if not choices or not isinstance(choices[0], dict):
                    continue
                choice = choices[0]
                finish = choice.get("finish_reason") or finish
                delta = str(((choice.get("delta") or {}).get("content") if chat else choice.get("text")) or "")
                tokens = _logprob_entries(choice, chat)
                if tokens is not None:
                    count.output_tokens += tokens
                    count.output_exact = True
                elif delta:
                    count.output_tokens += 1  # without logprobs, a chunk is a token (OpenAI, vLLM); see counted_by
                if not delta and not tokens:
                    continue
                text.append(delta)
                if prompting is not None and prompting.done() and count.prompt_tokens is None:
                    count.prompt_tokens = prompting.result() if prompting.exception() is None else None
                progress = 1000 * count.output_tokens // limit if limit else 0
                job.counted_by = "logprobs" if count.output_exact else "chunks"
                job.progress(
                    min(progress, 999),
                    Units(input_tokens=count.prompt_tokens or 0, output_tokens=count.output_tokens),
                    delta,
                )
        finally:
            if prompting is not None and not prompting.done():
                prompting.cancel()
        units = _units_from_usage(count.usage)
        if units is not None:
            job.counted_by = "upstream"
        else:
            units = await self._count_stream(job, counter, model, count, prompting, "".join(text))
        content = "".join(text)
        if chat:
            message = {"role": "assistant", "content": content}
            choice_out: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish or "stop"}
            result = {"object": "chat.completion", "model": model, "choices": [choice_out]}
        else:
            choice_out = {"index": 0, "text": content, "logprobs": None, "finish_reason": finish or "stop"}
            result = {"object": "text_completion", "model": model, "choices": [choice_out]}
        return JobOutput(result=result, units=units)

    async def _count_stream(
        self,
        job: JobContext,
        counter: TokenCounter | None,
        model: str,
        count: _Count,
        prompting: asyncio.Future[int] | None,
        text: str,
    ) -> Units:
        """A stream that ended without usage: the prompt by the tokenizer, the output by the logprobs
        entries (exact) or, without them, by the tokenizer (which can undercount; said so in
        ``counted_by``). No tokenizer: the job fails."""
        if counter is None or prompting is None:
            raise BackendError(
                "upstream_no_usage",
                f"the upstream's stream reported no usage and {model} has no tokenizer configured; nothing is charged",
            )
        prompt = await prompting
        if count.output_exact:
            job.counted_by = "logprobs"
            return Units(input_tokens=prompt, output_tokens=count.output_tokens)
        job.counted_by = "tokenizer"
        return Units(input_tokens=prompt, output_tokens=await asyncio.to_thread(counter.count_text, text))

    async def _chunks(
        self,
        client: _Client,
        path: str,
        body: dict[str, Any],
        output_started: Callable[[], bool],
        headers: Mapping[str, str] | None = None,
        answered_whole: list[_Reply] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """The JSON chunks of an SSE stream; the upstream connection closes when the caller stops
        (a cancelled task closes it at once). With ``answered_whole``, an upstream that answers
        with something other than a stream (one that ignores the ask to stream) has its reply
        appended there, and no chunk comes."""
        try:
            async with client.http() as http, http.post(client.url(path), json=body, headers=headers) as response:
                if response.status >= 400:
                    text = (await response.read()).decode("utf-8", "replace")
                    error = _error_for_status(response.status, text)
                    raise _Unserved(error) if response.status in fallback_statuses else error
                media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if answered_whole is not None and media_type != "text/event-stream":
                    received = {name.lower(): value for name, value in response.headers.items()}
                    answered_whole.append(_Reply(response.status, received, await response.read()))
                    return
                while True:
                    try:
                        raw = await response.content.readline()
                    except ValueError:  # past read_bufsize
                        raise BackendError("upstream_bad_reply", "an SSE line longer than the limit", True) from None
                    if not raw:
                        return  # the upstream closed the stream
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        raise BackendError("upstream_bad_reply", f"a stream chunk is not JSON: {data[:200]}") from None
                    if isinstance(chunk, dict) and (
                        ("error" in chunk and not chunk.get("choices"))
                        or chunk.get("type") in ("error", "response.failed")  # the Responses API's
                    ):
                        failure = chunk.get("error") or chunk.get("message") or chunk.get("response")
                        raise BackendError("upstream_error", f"the upstream's stream failed: {failure}", True)
                    if isinstance(chunk, dict):
                        yield chunk
        except _call_errors as error:
            failure = BackendError("upstream_unreachable", f"upstream stream failed: {error!r}", retryable=True)
            if output_started():
                raise failure from None  # text went out already: retried as a whole, never by another model
            raise _Unserved(failure) from None

    # --- the Responses API and Anthropic's Messages API ---

    async def _dialogue(self, job: JobContext, client: _Client, model: str) -> JobOutput:
        """Forwarded to an upstream that speaks the dialect (``responses``, ``anthropic``), else
        translated to chat completions (workers/conversations.py) and the answer translated back."""
        responses = job.endpoint == RESPONSES
        if client.upstream.responses if responses else client.upstream.anthropic:
            return await self._forward_dialogue(job, client, model, responses)
        try:
            dialogue = (conversations.from_responses if responses else conversations.from_messages)(job.payload)
        except conversations.DialogueError as error:
            raise BackendError("invalid_request", error.message) from None
        if dialogue.web_search:
            raise BackendError(
                "unsupported_tool",
                f"the upstream of pool {job.pool!r} speaks only chat completions and cannot run the hosted "
                "web_search tool; nothing is charged",
            )
        chat = job.translated(CHAT, conversations.to_chat(dialogue, model, bool(job.payload.get("stream"))))
        answer = await self._text(chat, client, model)
        job.counted_by = chat.counted_by
        reply = conversations.reply_from_chat(answer.result)
        for call in reply.tool_calls:  # a stream's tool calls come with the answer (chat streams relay text)
            item = conversations.function_call_item(call) if responses else conversations.tool_use_block(call)
            job.progress(999, answer.units, json.dumps(item), ITEM)
        if responses:
            return JobOutput(result=conversations.responses_result(reply, model, job.payload), units=answer.units)
        return JobOutput(result=conversations.message_result(reply, model), units=answer.units)

    async def _forward_dialogue(self, job: JobContext, client: _Client, model: str, responses: bool) -> JobOutput:
        """The request as it came, to the upstream's own endpoint; metered from the usage it reports. A
        streamed request is streamed from the upstream too, each delta relayed as it arrives."""
        body = {key: value for key, value in job.payload.items() if key not in ("async", "sim", "stream")}
        streamed = bool(job.payload.get("stream"))
        body.update(model=client.upstream.models.get(model, model), stream=streamed)
        headers = {} if responses else {"anthropic-version": anthropic_version, "x-api-key": client.upstream.api_key}
        if streamed:
            stream = _ResponsesStream(job) if responses else _MessagesStream(job)
            async for event in self._chunks(client, job.endpoint, body, stream.started, headers):
                stream.take(event)
            result = stream.result()
        else:
            result = self._json(await self._post(client, job.endpoint, json=body, headers=headers))
        usage = result.pop("usage", None)
        for key in ("id", "created_at", "completed_at"):
            result.pop(key, None)
        if not isinstance(usage, dict) or not isinstance(usage.get("input_tokens"), int):
            raise BackendError("upstream_no_usage", "the upstream reported no usage; nothing is charged")
        output_tokens = int(usage.get("output_tokens") or 0)
        if responses:
            cached = int((usage.get("input_tokens_details") or {}).get("cached_tokens") or 0)
            searches = sum(1 for item in result.get("output") or [] if item.get("type") == "web_search_call")
            units = Units(
                input_tokens=usage["input_tokens"] - cached,
                cached_input_tokens=cached,
                output_tokens=output_tokens,
                web_search_calls=searches,
            )
            result["reasoning_tokens"] = int((usage.get("output_tokens_details") or {}).get("reasoning_tokens") or 0)
            parts = _responses_parts(result)
        else:
            # Anthropic's input_tokens leave out cache reads and writes: each is priced at its own rate.
            creation = int(usage.get("cache_creation_input_tokens") or 0)
            units = Units(
                input_tokens=usage["input_tokens"],
                cache_write_tokens=creation,
                cached_input_tokens=int(usage.get("cache_read_input_tokens") or 0),
                output_tokens=output_tokens,
            )
            result["cache_creation_input_tokens"] = creation
            parts = _message_parts(result)
        job.counted_by = "upstream"
        if not streamed:  # a stream relayed its parts as they came
            for part, delta in parts:
                job.progress(999, units, delta, part)
        job.progress(1000, units)
        return JobOutput(result=result, units=units)

    # --- embeddings, images, audio ---

    async def _embeddings(self, job: JobContext, client: _Client, model: str) -> JobOutput:
        body = {key: value for key, value in job.payload.items() if key != "async"}
        body["model"] = client.upstream.models.get(model, model)
        result = self._json(await self._post(client, EMBEDDINGS, json=body))
        usage = result.pop("usage", None)
        units = _units_from_usage(usage)
        if units is not None:
            job.counted_by = "upstream"
            units = Units(input_tokens=units.prompt_tokens)
        else:
            counter = self._counter(client, model)
            if counter is None:
                raise BackendError(
                    "upstream_no_usage", f"the upstream reported no usage and {model} has no tokenizer configured"
                )
            units = Units(input_tokens=await asyncio.to_thread(_embedding_tokens, counter, job.payload.get("input")))
            job.counted_by = "tokenizer"
        job.progress(1000, units)
        return JobOutput(result=result, units=units)

    async def _rerank(self, job: JobContext, client: _Client, model: str) -> JobOutput:
        """Both rerank shapes forwarded to the upstream's ``/v1/rerank`` (vLLM's and llama.cpp's) and
        metered by the tokens it reports: an answer without them fails the job (nothing charged)."""
        payload = job.payload
        documents = [str(document) for document in payload.get("documents") or []]
        body: dict[str, Any] = {
            "model": client.upstream.models.get(model, model),
            "query": payload.get("query"),
            "documents": documents,
        }
        if isinstance(payload.get("instruct"), str):
            body["instruct"] = payload["instruct"]
        if isinstance(payload.get("top_n"), int):
            body["top_n"] = min(payload["top_n"], len(documents))  # servers differ on a larger one
        reply = self._json(await self._post(client, RERANK, json=body))
        tokens = _input_tokens(reply.get("usage"))
        if tokens is None:
            raise BackendError("upstream_no_usage", "the upstream's rerank reported no usage; nothing is charged")
        results = rerank_results(reply, documents, payload.get("top_n"), bool(payload.get("return_documents")))
        units = Units(input_tokens=tokens)
        job.counted_by = "upstream"
        job.progress(1000, units)
        return JobOutput(result={"model": model, "results": results}, units=units)

    async def _score(self, job: JobContext, client: _Client, model: str) -> JobOutput:
        """Forwarded to the upstream's ``/v1/score`` (vLLM's) and metered by the tokens it reports."""
        payload = job.payload
        try:
            pairs = score_pairs(payload.get("text_1") or "", payload.get("text_2") or "")
        except ValueError as error:
            raise BackendError("invalid_request", str(error)) from None
        body = {"model": client.upstream.models.get(model, model)}
        body.update({key: payload[key] for key in ("text_1", "text_2")})
        reply = self._json(await self._post(client, SCORE, json=body))
        tokens = _input_tokens(reply.get("usage"))
        if tokens is None:
            raise BackendError("upstream_no_usage", "the upstream's score reported no usage; nothing is charged")
        data = []
        for position, item in enumerate(reply.get("data") or []):
            score = item.get("score") if isinstance(item, dict) else None
            index = item.get("index", position) if isinstance(item, dict) else None
            if not isinstance(score, int | float) or isinstance(score, bool) or not isinstance(index, int):
                raise BackendError("upstream_bad_reply", f"the upstream's score {str(item)[:200]} has no score")
            data.append({"index": index, "object": "score", "score": float(score)})
        if len(data) != len(pairs):
            raise BackendError("upstream_bad_reply", f"the upstream scored {len(data)} of {len(pairs)} pairs")
        units = Units(input_tokens=tokens)
        job.counted_by = "upstream"
        job.progress(1000, units)
        return JobOutput(result={"model": model, "data": sorted(data, key=lambda entry: entry["index"])}, units=units)

    # --- text tools (workers/texttools.py) ---

    async def _text_tool(self, job: JobContext, client: _Client, model: str) -> JobOutput:
        """Search, answers, detection and PII forwarded to the upstream's same path (a server with
        EmpirioLabs' or Casola's surface), its answer relayed in its own shape and metered by its usage:
        a search's ``num_search_queries`` (at the tier held), a detection's or PII scan's
        ``prompt_tokens`` (and lookups as ``num_search_queries``), an answer per call. A search,
        detection or PII answer without them fails the job: nothing is charged."""
        payload = job.payload
        body = {key: value for key, value in payload.items() if key not in ("async", "search_tier")}
        body["model"] = client.upstream.models.get(model, model)
        reply = self._json(await self._post(client, job.endpoint, json=body))
        usage = reply.pop("usage", None)
        if job.endpoint == texttools.SEARCH:
            units = texttools.search_units_from_usage(usage, str(payload.get("search_tier") or ""))
        elif job.endpoint == texttools.ANSWER:
            units = Units(calls=1)  # priced per call: the answer is the call
        else:
            units = texttools.tokens_units_from_usage(usage)
        if units is None:
            raise BackendError(
                "upstream_no_usage", f"the upstream's {job.endpoint} reported no usage; nothing is charged"
            )
        job.counted_by = "upstream"
        job.progress(1000, units)
        return JobOutput(result=reply, units=units)

    async def _research(self, job: JobContext, client: _Client, model: str) -> JobOutput:
        """A research request as the research model's chat completion on the upstream (EmpirioLabs
        routes both surfaces to the same worker), metered by its usage: tokens of each kind,
        ``num_search_queries``, and ``citation_tokens`` (Perplexity's sources read) as input."""
        body = {key: job.payload[key] for key in texttools.research_chat_fields if key in job.payload}
        body.update(model=client.upstream.models.get(model, model), stream=False)
        reply = self._json(await self._post(client, CHAT, json=body))
        usage = reply.get("usage")
        units = _units_from_usage(usage)
        if units is None:
            raise BackendError("upstream_no_usage", "the upstream's research reported no usage; nothing is charged")
        citation_tokens = _count(usage, "citation_tokens")
        units = msgspec.structs.replace(units, input_tokens=units.input_tokens + citation_tokens)
        job.counted_by = "upstream"
        job.progress(1000, units)
        sources = texttools.upstream_sources(reply)
        return JobOutput(
            result=texttools.research_report(model, job.payload, reply, sources, citation_tokens), units=units
        )

    async def _analysis(self, job: JobContext, client: _Client, model: str) -> JobOutput:
        """An image analysis as a chat completion with the image (any vision model of a vLLM or
        llama.cpp server), metered as chat is."""
        try:
            chat = texttools.analysis_chat(job.payload)
        except texttools.ToolInputError as error:
            raise BackendError("invalid_request", str(error)) from None
        chat["max_tokens"] = job.payload.get("max_tokens")
        view = job.translated(CHAT, chat)
        output = await self._text(view, client, model)
        job.counted_by = view.counted_by
        return JobOutput(result={"answer": texttools.chat_answer(output.result)}, units=output.units)

    async def _images(self, job: JobContext, client: _Client, model: str) -> JobOutput:
        # The gateway's own keys (the price variant, how it answers) are not the upstream's.
        body = {key: value for key, value in job.payload.items() if key not in ("async", "variant", "answer_shape")}
        body["model"] = client.upstream.models.get(model, model)
        result = self._json(await self._post(client, IMAGES, json=body))
        data = result.get("data")
        if not isinstance(data, list) or not data:
            raise BackendError("upstream_no_usage", "the upstream returned no images; nothing is charged")
        requested = int(job.payload.get("n") or 1)
        if len(data) > requested:
            raise BackendError("upstream_bad_reply", f"the upstream returned {len(data)} images for n={requested}")
        variant = (
            job.payload.get("variant")
            or f"{job.payload.get('size') or '1024x1024'}/{job.payload.get('quality') or 'standard'}"
        )
        units = Units(images=len(data), variant=str(variant))
        job.counted_by = "upstream"
        job.progress(1000, units)
        return JobOutput(result={key: value for key, value in result.items() if key != "usage"}, units=units)

    async def _image_edits(self, job: JobContext, client: _Client, model: str) -> JobOutput:
        """An edit, forwarded as OpenAI's multipart form (``image``, or ``image[]`` for several, and
        ``mask``), metered as a generation: the images returned."""
        payload = job.payload
        images = [base64.b64decode(str(image)) for image in payload.get("images_b64") or []]
        form = [("model", client.upstream.models.get(model, model)), ("prompt", str(payload.get("prompt") or ""))]
        form += [(key, str(payload[key])) for key in ("n", "size") if payload.get(key)]
        form.append(("response_format", "b64_json"))
        field = "image" if len(images) == 1 else "image[]"
        files = [(field, (f"image{index}.png", image, "image/png")) for index, image in enumerate(images)]
        if payload.get("mask_b64"):
            files.append(("mask", ("mask.png", base64.b64decode(str(payload["mask_b64"])), "image/png")))
        result = self._json(await self._post(client, IMAGE_EDITS, data=form, files=files))
        data = result.get("data")
        if not isinstance(data, list) or not data:
            raise BackendError("upstream_no_usage", "the upstream returned no images; nothing is charged")
        requested = int(payload.get("n") or 1)
        if len(data) > requested:
            raise BackendError("upstream_bad_reply", f"the upstream returned {len(data)} images for n={requested}")
        # The price variant the gateway chose (an edit by URL of a model priced by resolution: "4K").
        variant = payload.get("variant") or f"{payload.get('size')}/{payload.get('quality')}"
        units = Units(images=len(data), variant=str(variant))
        job.counted_by = "upstream"
        job.progress(1000, units)
        return JobOutput(result={key: value for key, value in result.items() if key != "usage"}, units=units)

    async def _speech(self, job: JobContext, client: _Client, model: str) -> JobOutput:
        """Speech, metered by the characters the upstream was given (it reports only audio, or tokens
        where the price names characters). A streamed job (``stream_format: "sse"``) asks the upstream
        to stream as OpenAI's speech does (``speech.audio.delta`` events) and relays each delta as a
        piece (``AUDIO``) as it comes; an upstream that answers whole is relayed as one piece."""
        body = {key: value for key, value in job.payload.items() if key != "async"}
        body["model"] = client.upstream.models.get(model, model)
        audio_format = str(body.get("response_format") or "mp3")
        # Speech is priced by the characters it spoke: the input the upstream was given.
        units = Units(characters=len(str(job.payload.get("input") or "")))
        job.counted_by = "upstream"
        if body.get("stream_format") == "sse":
            audio, content_type = await self._speech_streamed(job, client, body, units)
        else:
            response = await self._post(client, SPEECH, json=body)
            audio, content_type = response.content, response.headers.get("content-type", "")
        if not audio:
            raise BackendError("upstream_no_usage", "the upstream returned no audio; nothing is charged")
        job.progress(1000, units)
        result: dict[str, Any] = {
            "content_type": content_type.split(";")[0] or "application/octet-stream",
            "audio_b64": base64.b64encode(audio).decode(),
            "format": audio_format,
        }
        with contextlib.suppress(ValueError):  # a duration for EmpirioLabs' AudioResponse, when readable
            result["duration_ms"] = media.audio_duration_ms(audio)
        return JobOutput(result=result, units=units)

    async def _speech_streamed(
        self, job: JobContext, client: _Client, body: dict[str, Any], units: Units
    ) -> tuple[bytes, str]:
        """(the audio, its content type) of a streamed speech: each ``speech.audio.delta`` relayed as a
        piece as it arrives (the upstream says nothing of the characters a delta covers, so from the
        first delta the job counts the whole input it was given, as it is charged whole), or the
        upstream's whole answer as one piece when it does not stream."""
        given_rate = body.get("sample_rate")
        # OpenAI's speech is 24 kHz in every format; a rate asked for is the rate the upstream was given.
        sample_rate = int(given_rate) if isinstance(given_rate, str) and given_rate.isdigit() else 24000
        audio_format = str(body.get("response_format") or "mp3")
        audio = bytearray()

        def relay(piece: bytes) -> None:
            audio.extend(piece)
            chunk = {"audio_b64": base64.b64encode(piece).decode(), "format": audio_format, "sample_rate": sample_rate}
            job.progress(0, units, json.dumps(chunk), AUDIO)

        whole: list[_Reply] = []
        async for event in self._chunks(client, SPEECH, body, lambda: bool(audio), answered_whole=whole):
            if event.get("type") == "speech.audio.delta":
                try:
                    piece = base64.b64decode(str(event.get("audio") or ""), validate=True)
                except ValueError:
                    raise BackendError("upstream_bad_reply", "a speech delta's audio is not base64") from None
                if piece:
                    relay(piece)
            elif event.get("type") == "speech.audio.done":
                break
        if whole:
            if whole[0].content:
                relay(whole[0].content)
            return whole[0].content, whole[0].headers.get("content-type", "")
        content_types = {"mp3": "audio/mpeg", "wav": "audio/wav", "pcm": "audio/pcm"}
        return bytes(audio), content_types.get(audio_format, "application/octet-stream")

    async def _transcription(self, job: JobContext, client: _Client, model: str) -> JobOutput:
        """A transcription or translation, forwarded as OpenAI's multipart form asking for
        ``verbose_json`` (the gateway shapes the format the client asked for), metered by the duration
        the upstream reports."""
        payload = job.payload
        try:
            audio = base64.b64decode(str(payload.get("file_b64") or ""), validate=True)
        except ValueError:
            raise BackendError("invalid_audio", "the job's audio is not base64") from None
        form = [("model", client.upstream.models.get(model, model)), ("response_format", "verbose_json")]
        form += [(key, str(payload[key])) for key in ("language", "prompt") if payload.get(key)]
        form += [("timestamp_granularities[]", str(g)) for g in payload.get("timestamp_granularities") or ()]
        try:
            content_type = "audio/mpeg" if media.audio_format(audio) == "mp3" else "audio/wav"
        except ValueError:
            content_type = "application/octet-stream"
        files = {"file": (str(payload.get("filename") or "audio"), audio, content_type)}
        result = self._json(await self._post(client, job.endpoint, data=form, files=files))
        usage = result.pop("usage", None)
        reported = usage.get("seconds") if isinstance(usage, dict) and usage.get("type") == "duration" else None
        ms = _reported_ms(reported)
        ms = _reported_ms(result.get("duration")) if ms is None else ms
        if ms is None:
            raise BackendError("upstream_no_usage", "the upstream reported no audio duration; nothing is charged")
        units = Units(audio_seconds=billed_seconds(ms))
        job.counted_by = "upstream"
        job.progress(1000, units)
        return JobOutput(result=result, units=units)


def _reported_ms(seconds: Any) -> int | None:
    """A duration an upstream reports in seconds (a JSON number), as whole ms rounded up, read through
    its decimal digits (no float arithmetic on what is billed); None when it is not a duration."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return None
    try:
        ms = Decimal(str(seconds)) * 1000
    except InvalidOperation:
        return None
    if not ms.is_finite() or ms < 0:
        return None
    return int(ms.to_integral_value(rounding="ROUND_CEILING"))


def _input_tokens(usage: Any) -> int | None:
    """A rerank's or a score's tokens: ``usage.prompt_tokens`` (llama.cpp, vLLM's score), else
    ``usage.total_tokens`` (vLLM's rerank reports only that; nothing is generated)."""
    if not isinstance(usage, dict):
        return None
    for name in ("prompt_tokens", "total_tokens"):
        tokens = usage.get(name)
        if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0:
            return tokens
    return None


def rerank_results(reply: dict[str, Any], documents: list[str], top_n: Any, return_documents: bool) -> list[Any]:
    """An upstream's ``/v1/rerank`` answer (vLLM's, llama.cpp's: ``results[]{index, relevance_score}``)
    in one order whatever the server's: most relevant first, ``top_n`` applied (llama.cpp may ignore
    it), the documents' text from the request (servers differ in whether and how they echo it)."""
    given = reply.get("results")
    if not isinstance(given, list):
        raise BackendError("upstream_bad_reply", "the upstream's rerank answer has no results")
    scores: list[float | None] = [None] * len(documents)
    for item in given:
        index = item.get("index") if isinstance(item, dict) else None
        score = item.get("relevance_score") if isinstance(item, dict) else None
        if (
            not isinstance(index, int)
            or not 0 <= index < len(documents)
            or not isinstance(score, int | float)
            or isinstance(score, bool)
        ):
            raise BackendError(
                "upstream_bad_reply", f"the upstream's rerank result {str(item)[:200]} is not one we asked for"
            )
        scores[index] = float(score)
    listed = [index for index, score in enumerate(scores) if score is not None]
    results = ranked(
        [scores[index] or 0.0 for index in listed], [documents[index] for index in listed], top_n, return_documents
    )
    for result in results:
        result["index"] = listed[result["index"]]
    return results


def _logprob_entries(choice: dict[str, Any], chat: bool) -> int | None:
    """Tokens listed in a chunk's logprobs (chat: ``content`` entries; completions: ``tokens``)."""
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return None
    entries = logprobs.get("content") if chat else logprobs.get("tokens")
    return len(entries) if isinstance(entries, list) else None


def _embedding_tokens(counter: TokenCounter, given: Any) -> int:
    items = given if isinstance(given, list) else [given]
    if items and all(isinstance(item, int) for item in items):
        return len(items)  # one list of token ids
    return sum(len(item) if isinstance(item, list) else counter.count_text(str(item)) for item in items)


UpstreamChatBackend = UpstreamBackend  # the name from when it forwarded chat only


class _ResponsesStream:
    """A streamed Responses answer from an upstream that speaks the API: each text or reasoning delta
    relayed as it comes, each other output item (function call, web search) when it is done, and the
    whole answer (with its usage) from ``response.completed``. Until then a stop charges the deltas
    seen, a delta counted as a token (``counted_by`` says so)."""

    def __init__(self, job: JobContext) -> None:
        self.job = job
        self.deltas = 0
        self.completed: dict[str, Any] | None = None

    def started(self) -> bool:
        return self.deltas > 0

    def take(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "response.output_text.delta":
            self._relay(str(event.get("delta") or ""), TEXT)
        elif kind in ("response.reasoning_text.delta", "response.reasoning_summary_text.delta"):
            self._relay(str(event.get("delta") or ""), REASONING)
        elif kind == "response.output_item.done":
            item = event.get("item")
            if isinstance(item, dict) and item.get("type") not in ("message", "reasoning"):
                self._relay(json.dumps(item), ITEM)
        elif kind == "response.completed" and isinstance(event.get("response"), dict):
            self.completed = dict(event["response"])

    def _relay(self, delta: str, part: str) -> None:
        if not delta:
            return
        self.deltas += 1
        self.job.counted_by = "chunks"
        self.job.progress(999, Units(output_tokens=self.deltas), delta, part)

    def result(self) -> dict[str, Any]:
        if self.completed is None:
            raise BackendError("upstream_bad_reply", "the upstream's stream ended before response.completed", True)
        return self.completed


class _MessagesStream:
    """A streamed Messages answer from an upstream that speaks Anthropic's API: text and thinking
    deltas relayed as they come, a signature or a tool call when its block ends, and the message
    assembled from its events (``message_start``'s usage, ``message_delta``'s output count)."""

    def __init__(self, job: JobContext) -> None:
        self.job = job
        self.deltas = 0
        self.message: dict[str, Any] | None = None
        self.blocks: dict[int, dict[str, Any]] = {}
        self.tool_json: dict[int, list[str]] = {}
        self.usage: dict[str, Any] = {}

    def started(self) -> bool:
        return self.deltas > 0

    def take(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        index = event.get("index")
        if kind == "message_start" and isinstance(event.get("message"), dict):
            self.message = dict(event["message"])
            self.usage.update(self.message.get("usage") or {})
        elif kind == "content_block_start" and isinstance(index, int) and isinstance(event.get("content_block"), dict):
            block = dict(event["content_block"])
            if block.get("type") == "tool_use":
                block["input"] = {}
                self.tool_json[index] = []
            self.blocks[index] = block
        elif kind == "content_block_delta" and index in self.blocks and isinstance(event.get("delta"), dict):
            self._delta(self.blocks[index], index, event["delta"])
        elif kind == "content_block_stop" and index in self.blocks:
            block = self.blocks[index]
            if block.get("type") == "thinking" and block.get("signature"):
                self._relay(str(block["signature"]), REASONING_SIGNATURE, counted=False)
            elif block.get("type") not in ("text", "thinking"):
                if index in self.tool_json:
                    block["input"] = _json_object("".join(self.tool_json.pop(index)))
                self._relay(json.dumps(block), ITEM, counted=False)
        elif kind == "message_delta":
            if isinstance(event.get("delta"), dict) and self.message is not None:
                self.message.update(event["delta"])
            self.usage.update(event.get("usage") or {})

    def _delta(self, block: dict[str, Any], index: int, delta: dict[str, Any]) -> None:
        kind = delta.get("type")
        if kind == "text_delta":
            text = str(delta.get("text") or "")
            block["text"] = str(block.get("text") or "") + text
            self._relay(text, TEXT)
        elif kind == "thinking_delta":
            text = str(delta.get("thinking") or "")
            block["thinking"] = str(block.get("thinking") or "") + text
            self._relay(text, REASONING)
        elif kind == "signature_delta":
            block["signature"] = str(block.get("signature") or "") + str(delta.get("signature") or "")
        elif kind == "input_json_delta" and index in self.tool_json:
            self.tool_json[index].append(str(delta.get("partial_json") or ""))

    def _relay(self, delta: str, part: str, counted: bool = True) -> None:
        if not delta:
            return
        self.deltas += counted
        self.job.counted_by = "chunks"
        input_tokens = int(self.usage.get("input_tokens") or 0)
        self.job.progress(999, Units(input_tokens=input_tokens, output_tokens=self.deltas), delta, part)

    def result(self) -> dict[str, Any]:
        if self.message is None:
            raise BackendError("upstream_bad_reply", "the upstream's stream sent no message_start", True)
        message = dict(self.message)
        message["content"] = [self.blocks[index] for index in sorted(self.blocks)]
        message["usage"] = self.usage
        return message


def _json_object(text: str) -> Any:
    """A tool call's streamed input, put together; an upstream's broken JSON is a bad reply."""
    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        raise BackendError("upstream_bad_reply", f"a streamed tool input is not JSON: {text[:200]}") from None


def _responses_parts(result: dict[str, Any]) -> list[tuple[str, str]]:
    """A Responses answer's output as the parts a stream relays."""
    parts: list[tuple[str, str]] = []
    for item in result.get("output") or []:
        if item.get("type") == "message":
            text = "".join(str(c.get("text", "")) for c in item.get("content") or [] if c.get("type") == "output_text")
            parts.append((TEXT, text))
        elif item.get("type") == "reasoning":
            text = "".join(str(c.get("text", "")) for c in item.get("content") or [])
            parts.append((REASONING, text))
        else:
            parts.append((ITEM, json.dumps(item)))
    return [(part, delta) for part, delta in parts if delta]


def _message_parts(result: dict[str, Any]) -> list[tuple[str, str]]:
    """A Messages answer's content blocks as the parts a stream relays."""
    parts: list[tuple[str, str]] = []
    for block in result.get("content") or []:
        if block.get("type") == "text":
            parts.append((TEXT, str(block.get("text", ""))))
        elif block.get("type") == "thinking":
            parts += [
                (REASONING, str(block.get("thinking", ""))),
                (REASONING_SIGNATURE, str(block.get("signature", ""))),
            ]
        else:
            parts.append((ITEM, json.dumps(block)))
    return [(part, delta) for part, delta in parts if delta]
