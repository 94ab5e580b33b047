"""Inference backends. A backend runs one job (a coroutine on the worker's event loop) and returns
its result with the usage it measured.

- ``SimulatedBackend``: deterministic, one simulation per endpoint, producing real output of the
  right type (text, embeddings, a valid PNG, WAV audio, an AVI video). It reports progress points,
  where a job can be stopped (cancel, disconnect) and charged for the work done so far. Simulated
  GPU time is ``asyncio.sleep``, so a worker runs many such jobs without a thread each; rendering
  media, which is CPU work, runs in a thread.
- ``UpstreamBackend`` (workers/upstream.py): forwards every endpoint to OpenAI-compatible servers
  (vLLM, SGLang, llama.cpp), streams, falls back, and meters what those servers report.

A job is stopped at its next progress point (``JobStopped``), or by cancelling its task (the worker
does that for a stop signal): an awaiting backend must let ``asyncio.CancelledError`` through.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import hashlib
import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec

from ledger.pricing import billed_seconds, default_price_book
from schemas.prices import Route
from schemas.units import Units
from workers import agents, conversations, media, meshes, metering, result_sizes, texttools
from workers.conversations import Dialogue, Reply, Search, ToolCall

_token_pattern = re.compile(r"\w+|[^\w\s]")
_vocabulary = (
    "the",
    "ledger",
    "holds",
    "credits",
    "for",
    "every",
    "request",
    "and",
    "charges",
    "exactly",
    "once",
    "after",
    "the",
    "worker",
    "measures",
    "usage",
    "tokens",
    "flow",
    "through",
    "kafka",
    "partitions",
    "while",
    "projections",
    "rebuild",
    "balances",
    "from",
    "events",
)
tokens_per_message_overhead = 4
tokens_per_reply_overhead = 2
sim_reply_tokens_max = 64
sim_reasoning_tokens = {"minimal": 0, "low": 8, "medium": 16, "high": 32}  # by reasoning_effort
sim_cache_prefixes_max = 10_000  # prompt prefixes one simulated backend keeps cached


class BackendError(Exception):
    """A job that cannot complete. ``retryable`` says whether another attempt could succeed."""

    def __init__(self, code: str, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


class JobStopped(Exception):
    """Raised at a progress point when the job must stop (cancelled, or dead-lettered elsewhere)."""


class JobOutput(msgspec.Struct, frozen=True, kw_only=True):
    result: dict[str, Any]
    units: Units


ProgressListener = Callable[[int, Units, str, str], None]

# What a progress point's delta extends (JobProgressed.part): the answer's text, the model's thinking,
# the signature of that thinking (Anthropic's), or one whole output item as JSON in the endpoint's shape.
TEXT, REASONING, REASONING_SIGNATURE, ITEM = "", "reasoning", "reasoning_signature", "item"
# A piece of a streamed speech, following the pieces before it: JSON ``{audio_b64, format, sample_rate}``.
AUDIO = "audio"


class JobContext:
    """What a backend sees of its job. ``progress`` is the progress point: it records the units
    measured so far and raises ``JobStopped`` when the job must stop there. A backend that serves the
    job with a fallback model says so (``serve_as``) before its first point, and how it counted
    tokens (``counted_by``), so that a stop charges the work at the right model's price."""

    def __init__(
        self,
        job_id: str,
        model: str,
        endpoint: str,
        payload: dict[str, Any],
        attempt: int = 1,
        should_stop: Callable[[], bool] = lambda: False,
        on_progress: ProgressListener | None = None,
        pool: str = "default",
        fallbacks: tuple[Route, ...] = (),
        context_length: int = 0,
    ) -> None:
        self.job_id = job_id
        self.model = model
        self.endpoint = endpoint
        self.payload = payload
        self.attempt = attempt
        self.pool = pool
        self.fallbacks = fallbacks
        self.context_length = context_length  # tokens the model takes, prompt and output (0: unknown)
        self.units = Units()
        self.output = ""  # text produced so far, for a partial result
        self.served_model = model
        self.fallback_depth = 0
        self.counted_by = ""
        self._should_stop = should_stop
        self.on_progress = on_progress

    def translated(self, endpoint: str, payload: dict[str, Any]) -> JobContext:
        """This job as a request to another endpoint (a translation, workers/upstream.py): its progress
        points are this job's."""
        view = JobContext(self.job_id, self.model, endpoint, payload, self.attempt, pool=self.pool)
        view.on_progress = lambda milli, units, delta, part: self.progress(milli, units, delta, part)
        return view

    def serve_as(self, model: str, fallback_depth: int) -> None:
        self.served_model = model
        self.fallback_depth = fallback_depth

    def progress(self, progress_milli: int, units: Units, delta: str = "", part: str = TEXT) -> None:
        self.units = units
        if part == TEXT:
            self.output += delta
        if self.on_progress is not None:
            self.on_progress(progress_milli, units, delta, part)
        if self._should_stop():
            raise JobStopped(self.job_id)


def message_text(message: dict[str, Any]) -> str:
    """The text of a chat message whose content is a string or a list of content parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def count_sim_tokens(text: str) -> int:
    return len(_token_pattern.findall(text))


class Backend(abc.ABC):
    @abc.abstractmethod
    async def run(self, job: JobContext) -> JobOutput: ...

    async def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release connections (called once, when the worker stops)."""


ChatBackend = Backend  # the name before every endpoint had a backend

stream_chunk_tokens = 4  # tokens between two progress points of a text job
embedding_dimensions_default = 64
video_width, video_height, video_fps = 64, 36, 2
sim_padding_bytes_max = 32 * 1024 * 1024  # the ``result_padding_bytes`` knob's most
speech_ms_per_character = 60  # the simulated voice speaks a character in 60 ms of audio
# ... and synthesizes it in 1 ms (60 times faster than it speaks: a 3,000-character input, the stream's
# most, takes 3 s, its first clause a few tens of ms, which is when a stream's first chunk goes out).
speech_synthesis_ms_per_character = 1
speech_first_piece_characters_max = 40  # the first piece is short: its synthesis is the time to first byte
speech_piece_characters_max = 120  # a piece (one progress event) holds at most 7.2 s of audio (691 KB at 48 kHz)
speech_piece_characters_min = 20  # shorter clauses join the next one: at most about 4096 / 20 pieces
_clause_end = re.compile(r"[.!?;:,\u2014\u2026]+[\"')\]]*\s+|\n+")
RERANK, RERANKS, SCORE = "/v1/rerank", "/v1/reranks", "/v1/score"
TRANSLATIONS = "/v1/audio/translations"
IMAGE_EDITS = "/v1/images/edits"
AUDIO_GENERATIONS, MUSIC_GENERATIONS = "/v1/audio/generations", "/v1/music/generations"
music_chunk_ms = 10_000  # a progress point every ten seconds of music: a cancel charges what was made
speech_content_types = {"mp3": "audio/mpeg", "wav": "audio/wav", "pcm": "audio/pcm"}
transcript_segment_words = 12  # words per segment of a simulated verbose_json transcript
_content_word = re.compile(r"[^\W_]+")


def _seed(*parts: Any) -> bytes:
    return hashlib.sha256(msgspec.json.encode(parts)).digest()


def _words(seed: bytes, count: int) -> list[str]:
    return [_vocabulary[(seed[i % len(seed)] + i) % len(_vocabulary)] for i in range(count)]


def speech_piece_ends(text: str) -> list[int]:
    """Where the simulated voice ends each piece of ``text`` (character offsets, the last one its
    length): at the end of a clause (punctuation then a space, or a line break), a clause shorter than
    ``speech_piece_characters_min`` joined to the next; one longer than the bound (the first piece's is
    smaller) cut at its last space before it, or at the bound when it has none."""
    ends: list[int] = []
    start, limit = 0, speech_first_piece_characters_max
    for boundary in [match.end() for match in _clause_end.finditer(text)] + [len(text)]:
        while boundary - start > limit:
            space = text.rfind(" ", start + 1, start + limit)
            cut = space + 1 if space > start else start + limit
            ends.append(cut)
            start, limit = cut, speech_piece_characters_max
        if boundary > start and (boundary - start >= speech_piece_characters_min or boundary == len(text)):
            ends.append(boundary)
            start, limit = boundary, speech_piece_characters_max
    return ends


class SimulatedBackend(Backend):
    """Deterministic output for every endpoint. ``latency_ms`` is spent per job; ``token_ms`` per
    generated token and ``video_second_ms`` per rendered second model GPU time.

    Fault injection for tests and demos, with ``knobs`` on (the platform's choice, never a tenant's:
    ``TOLLGATE_SIM_KNOBS``): a payload field ``sim`` with ``fail_attempts`` (the first n attempts fail
    with ``fail_code``, retryably unless ``fatal``), ``token_ms`` and ``result_padding_bytes`` (a field of
    that many bytes added to the result: an answer larger than its request bounds). Without ``knobs``
    it is ignored."""

    def __init__(self, latency_ms: int = 0, token_ms: int = 0, video_second_ms: int = 50, knobs: bool = True) -> None:
        self._latency_s = latency_ms / 1000
        self._token_s = token_ms / 1000
        self._video_second_s = video_second_ms / 1000
        self._knobs = knobs
        self._catalog = default_price_book()
        self._cache: OrderedDict[bytes, None] = OrderedDict()  # prompt prefixes cached, least recent first

    async def run(self, job: JobContext) -> JobOutput:
        sim = (job.payload.get("sim") or {}) if self._knobs else {}
        if isinstance(sim, dict) and job.attempt <= int(sim.get("fail_attempts", 0)):
            code = str(sim.get("fail_code", "sim_failure"))
            raise BackendError(code, f"simulated failure on attempt {job.attempt}", retryable=not sim.get("fatal"))
        token_s = int(sim.get("token_ms", 0)) / 1000 if isinstance(sim, dict) and "token_ms" in sim else self._token_s
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        runner = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completion,
            "/v1/embeddings": self._embeddings,
            "/v1/images/generations": self._images,
            IMAGE_EDITS: self._images,
            "/v1/audio/speech": self._speech,
            "/v1/audio/transcriptions": self._transcription,
            TRANSLATIONS: self._transcription,
            AUDIO_GENERATIONS: self._music,
            MUSIC_GENERATIONS: self._music,
            "/v1/videos/generations": self._video,
            meshes.THREE_D: self._mesh,
            RERANK: self._rerank,
            RERANKS: self._rerank,
            SCORE: self._score,
            conversations.RESPONSES: self._dialogue,
            conversations.MESSAGES: self._dialogue,
            texttools.SEARCH: self._text_tool,
            texttools.ANSWER: self._text_tool,
            texttools.DETECT: self._text_tool,
            texttools.PII: self._text_tool,
            texttools.RESEARCH: self._research,
            texttools.IMAGE_ANALYSIS: self._analysis,
            agents.AGENTS: self._agent,
        }.get(job.endpoint)
        if runner is None:
            raise BackendError("unsupported_endpoint", f"the simulated backend cannot run {job.endpoint}")
        output = await runner(job, token_s)
        padding = min(int(sim.get("result_padding_bytes", 0)), sim_padding_bytes_max) if isinstance(sim, dict) else 0
        if padding > 0:  # an upstream that answers more than its request bounds (a result too large to record)
            output = msgspec.structs.replace(output, result={**output.result, "sim_padding": "x" * padding})
        return output

    async def _generate(
        self, job: JobContext, base: Units, seed: bytes, token_s: float, reasoning: int = 0
    ) -> tuple[str, Units, bool]:
        """Generate text token by token with a progress point every few tokens; (text, the units of
        ``base`` with what was generated, truncated). ``reasoning`` tokens come first (not shown,
        counted apart) and share the output limit."""
        payload = job.payload
        natural_length = 8 + seed[0] % (sim_reply_tokens_max - 8)
        limit = int(payload.get("max_completion_tokens") or payload.get("max_tokens") or natural_length + reasoning)
        prompt_tokens = base.input_tokens + base.cached_input_tokens
        if job.context_length and prompt_tokens + limit > job.context_length:
            # As a real server does (vLLM: prompt plus max_tokens past max_model_len is a 400).
            raise BackendError(
                "context_length_exceeded",
                f"this model's context is {job.context_length} tokens, and {prompt_tokens} in the prompt plus "
                f"{limit} to generate do not fit; shorten the prompt or lower max_tokens",
            )
        reasoning = min(reasoning, limit)
        total = min(natural_length, limit - reasoning)
        base = msgspec.structs.replace(base, reasoning_tokens=reasoning)
        if reasoning:
            if token_s:
                await asyncio.sleep(token_s * reasoning)
            job.progress(0, base)
        words = _words(seed, total)
        produced: list[str] = []
        for start in range(0, total, stream_chunk_tokens):
            chunk = words[start : start + stream_chunk_tokens]
            if token_s:
                await asyncio.sleep(token_s * len(chunk))
            delta = ("" if start == 0 else " ") + " ".join(chunk)
            produced.append(delta)
            done = start + len(chunk)
            job.progress(1000 * done // total, msgspec.structs.replace(base, output_tokens=done), delta)
        return "".join(produced), msgspec.structs.replace(base, output_tokens=total), total < natural_length

    def _prompt_units(self, model: str, prompt: metering.Prompt) -> Units:
        """A chat prompt counted by kind (workers/metering.py): text in sim tokens, a cacheable prefix
        written to this backend's cache the first time and read from it after."""
        tokens = [count_sim_tokens(text) for text in prompt.texts]
        text_tokens = tokens_per_reply_overhead + tokens_per_message_overhead * prompt.messages + sum(tokens)
        prefix = sum(tokens[: prompt.cacheable_texts])
        cached = written = 0
        if prefix:
            key = _seed(model, prompt.texts[: prompt.cacheable_texts])
            if key in self._cache:
                self._cache.move_to_end(key)
                cached = prefix
            else:
                self._cache[key] = None
                if len(self._cache) > sim_cache_prefixes_max:
                    self._cache.popitem(last=False)
                written = prefix
        return Units(
            input_tokens=text_tokens - cached - written,
            cached_input_tokens=cached,
            cache_write_tokens=written,
            image_input_tokens=prompt.image_tokens,
            audio_input_tokens=prompt.audio_tokens,
        )

    async def _chat(self, job: JobContext, token_s: float) -> JobOutput:
        try:
            prompt = metering.chat_prompt(job.payload)
        except metering.MeteringError as error:
            raise BackendError(error.code, str(error)) from None
        messages = job.payload.get("messages") or []
        seed = _seed(messages)
        base = self._prompt_units(job.model, prompt)
        # As the built-in catalog describes the simulated models: reasoning models think first,
        # research models run their own search queries, and web_search_options runs a web search.
        described = self._catalog.model(job.model)
        features = described.features if described is not None else ()
        effort = job.payload.get("reasoning_effort")
        reasoning = sim_reasoning_tokens.get(str(effort), 0) if "reasoning" in features else 0
        searches = 1 + seed[1] % metering.search_queries_per_request_max
        if described is not None and described.search_unit_rate:
            base = msgspec.structs.replace(base, search_units=searches)
        if job.payload.get("web_search_options") is not None:
            base = msgspec.structs.replace(base, web_search_calls=metering.web_searches_per_request_max)
        text, units, truncated = await self._generate(job, base, seed, token_s, reasoning)
        result = {
            "object": "chat.completion",
            "model": job.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "length" if truncated else "stop",
                }
            ],
        }
        return JobOutput(result=result, units=units)

    async def _completion(self, job: JobContext, token_s: float) -> JobOutput:
        prompt = job.payload.get("prompt")
        prompts = prompt if isinstance(prompt, list) else [prompt or ""]
        prompt_tokens = sum(count_sim_tokens(str(p)) for p in prompts)
        base = Units(input_tokens=prompt_tokens)
        text, units, truncated = await self._generate(job, base, _seed(prompts), token_s)
        result = {
            "object": "text_completion",
            "model": job.model,
            "choices": [
                {"index": 0, "text": text, "logprobs": None, "finish_reason": "length" if truncated else "stop"}
            ],
        }
        return JobOutput(result=result, units=units)

    async def _embeddings(self, job: JobContext, token_s: float) -> JobOutput:
        given = job.payload.get("input")
        inputs = given if isinstance(given, list) else [given]
        if inputs and all(isinstance(item, int) for item in inputs):
            inputs = [inputs]  # one list of token ids
        dimensions = int(job.payload.get("dimensions") or embedding_dimensions_default)
        data = []
        tokens = image_tokens = 0
        for index, item in enumerate(inputs):
            if isinstance(item, dict):  # a multimodal item (the gateway checked its shape)
                text = str(item.get("text") or item.get("url") or "")
                if item.get("type") == "image":
                    image_tokens += metering.embedding_items([item]).image_tokens
                else:
                    tokens += count_sim_tokens(text)
            else:
                text = item if isinstance(item, str) else " ".join(str(t) for t in item)
                tokens += count_sim_tokens(text) if isinstance(item, str) else len(item)
            raw = b"".join(_seed(text, i) for i in range(math.ceil(dimensions / 32)))[:dimensions]
            vector = [round((byte - 127.5) / 127.5, 6) for byte in raw]
            norm = math.sqrt(sum(v * v for v in vector)) or 1.0
            vector = [round(v / norm, 6) for v in vector]
            if job.payload.get("encoding_format") == "base64":
                import array

                encoded: Any = base64.b64encode(array.array("f", vector).tobytes()).decode()
            else:
                encoded = vector
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        units = Units(input_tokens=tokens, image_input_tokens=image_tokens)
        job.progress(1000, units)
        result = {"object": "list", "model": job.model, "data": data}
        return JobOutput(result=result, units=units)

    async def _images(self, job: JobContext, token_s: float) -> JobOutput:
        payload = job.payload
        count = int(payload.get("n") or 1)
        size = str(payload.get("size") or "1024x1024")
        quality = str(payload.get("quality") or "standard")
        width, height = (int(side) for side in size.split("x"))
        # The price variant the gateway chose (a resolution, "4K", for a model priced by resolution).
        variant = str(payload.get("variant") or f"{size}/{quality}")
        data = []
        for index in range(count):
            # An edit's images seed its results too (the same prompt on other images gives others).
            edited = (payload.get("images_b64"), payload.get("mask_b64")) if job.endpoint == IMAGE_EDITS else ()
            seed = _seed(payload.get("prompt"), index, size, *edited)
            image = await asyncio.to_thread(media.png_image, width, height, seed)
            data.append({"b64_json": base64.b64encode(image).decode(), "revised_prompt": payload.get("prompt")})
            job.progress(1000 * (index + 1) // count, Units(images=index + 1, variant=variant))
        return JobOutput(result={"data": data}, units=Units(images=count, variant=variant))

    async def _speech(self, job: JobContext, token_s: float) -> JobOutput:
        """Speech in the ``response_format`` asked for: WAV (16 kHz unless ``sample_rate`` says), MP3
        (LAME, 16 kHz) or raw 16-bit PCM (24 kHz, as OpenAI's ``pcm``), 60 ms per character, synthesized
        clause by clause (``speech_piece_ends``) in ``speech_synthesis_ms_per_character`` of simulated
        time each. A progress point after every piece carries the characters spoken so far (what a
        cancel charges) and, when the job is streamed (``stream_format: "sse"``, as OpenAI's speech
        takes it), the piece (``AUDIO``: its audio as base64, format and sample rate). The pieces
        concatenate into the audio made whole, byte for byte (media.SpokenAudio)."""
        text = str(job.payload.get("input") or "")
        seed = _seed(text, job.payload.get("voice"))
        audio_format = str(job.payload.get("response_format") or "wav")
        sample_rate = result_sizes.speech_sample_rate(audio_format, job.payload.get("sample_rate"))
        streamed = job.payload.get("stream_format") == "sse"
        sim = (job.payload.get("sim") or {}) if self._knobs else {}
        character_ms = speech_synthesis_ms_per_character
        if isinstance(sim, dict) and isinstance(sim.get("speech_character_ms"), int):
            character_ms = sim["speech_character_ms"]
        synthesis = media.SpokenAudio(audio_format, len(text) * speech_ms_per_character, seed, sample_rate)
        pieces: list[bytes] = []
        start = 0
        for end in speech_piece_ends(text):
            if character_ms:
                await asyncio.sleep(character_ms * (end - start) / 1000)
            piece = await asyncio.to_thread(synthesis.piece, end * speech_ms_per_character)
            pieces.append(piece)
            start = end
            delta = ""
            if streamed:
                chunk = {
                    "audio_b64": base64.b64encode(piece).decode(),
                    "format": audio_format,
                    "sample_rate": sample_rate,
                }
                delta = msgspec.json.encode(chunk).decode()
            job.progress(1000 * end // len(text), Units(characters=end), delta, AUDIO if streamed else TEXT)
        audio = b"".join(pieces) or synthesis.piece(synthesis.seconds_milli)
        duration_ms = media.mp3_duration_ms(audio) if audio_format == "mp3" else synthesis.seconds_milli
        result = {
            "content_type": speech_content_types.get(audio_format, "audio/wav"),
            "audio_b64": base64.b64encode(audio).decode(),
            "format": audio_format,
            "duration_ms": duration_ms,
            "sample_rate": sample_rate,
        }
        return JobOutput(result=result, units=Units(characters=len(text)))

    async def _music(self, job: JobContext, token_s: float) -> JobOutput:
        """Music for ``duration_ms`` (tones from the prompt and seed), as MP3 or WAV; a progress point
        every ten seconds of it, priced by the started second generated."""
        payload = job.payload
        duration_ms = int(payload.get("duration_ms") or 1000)
        for made in range(music_chunk_ms, duration_ms, music_chunk_ms):
            if self._video_second_s:
                await asyncio.sleep(self._video_second_s)
            job.progress(1000 * made // duration_ms, Units(audio_seconds=billed_seconds(made)))
        seed = _seed(payload.get("prompt"), payload.get("seed"), duration_ms)
        mp3 = payload.get("format") == "mp3"
        audio = await asyncio.to_thread(media.mp3_audio if mp3 else media.wav_audio, duration_ms, seed)
        units = Units(audio_seconds=billed_seconds(duration_ms))
        job.progress(1000, units)
        result = {
            "content_type": "audio/mpeg" if mp3 else "audio/wav",
            "audio_b64": base64.b64encode(audio).decode(),
            "format": "mp3" if mp3 else "wav",
            "duration_ms": media.audio_duration_ms(audio),
            "inline": bool(payload.get("inline")),
        }
        return JobOutput(result=result, units=units)

    async def _transcription(self, job: JobContext, token_s: float) -> JobOutput:
        """A transcription or translation of WAV or MP3 audio in OpenAI's ``verbose_json``: the
        pseudo-transcript's words spread evenly over the audio, in segments of a few words."""
        try:
            audio = base64.b64decode(str(job.payload.get("file_b64") or ""), validate=True)
            duration_ms = media.audio_duration_ms(audio)
            words = media.transcript_words(audio)
        except ValueError as error:
            raise BackendError("invalid_audio", f"the uploaded file is not WAV or MP3 audio: {error}") from None
        seconds = billed_seconds(duration_ms)
        job.progress(1000, Units(audio_seconds=seconds))
        result = transcript_result(words, duration_ms, job.endpoint, job.payload.get("language"))
        return JobOutput(result=result, units=Units(audio_seconds=seconds))

    async def _video(self, job: JobContext, token_s: float) -> JobOutput:
        seconds = int(job.payload.get("duration") or 5)
        # A reference image and the video an extension continues seed the clip too (when sent).
        references = [job.payload[name] for name in ("image_b64", "extend_from") if job.payload.get(name)]
        seed = _seed(job.payload.get("prompt"), seconds, *references)
        for second in range(1, seconds + 1):
            if self._video_second_s:
                await asyncio.sleep(self._video_second_s)
            job.progress(1000 * second // seconds, Units(video_seconds=second))
        clip = await asyncio.to_thread(media.video_clip, seconds, video_width, video_height, video_fps, seed)
        result = {"data": [{"b64_json": base64.b64encode(clip).decode(), "content_type": "video/x-msvideo"}]}
        return JobOutput(result=result, units=Units(video_seconds=seconds))

    async def _mesh(self, job: JobContext, token_s: float) -> JobOutput:
        """Image to 3D: a GLB (workers/meshes.py) from the image reference, ``seed`` and ``resolution``,
        after four stages (sparse structure, geometry, texture, export), each a progress point. One
        generation is one request's fee, charged when the asset exists: a stop before it charges nothing."""
        payload = job.payload
        resolution = str(payload.get("resolution") or "1024")
        seed = _seed(payload.get("image") or payload.get("image_url"), payload.get("seed"), resolution)
        for stage in range(1, 4):
            if self._video_second_s:
                await asyncio.sleep(self._video_second_s)
            job.progress(250 * stage, Units())
        extras = {name: payload.get(name) for name in ("texture_size", "decimation_target", "remesh", "seed")}
        glb, _ = await asyncio.to_thread(meshes.glb_asset, resolution, seed, {"resolution": resolution, **extras})
        encoded = base64.b64encode(glb).decode()
        item = (
            {"b64_json": encoded}
            if payload.get("response_format") == "b64_json"
            else {"url": f"data:{meshes.CONTENT_TYPE};base64,{encoded}"}
        )
        units = Units(calls=1)
        job.progress(1000, units)
        return JobOutput(result={"data": [{**item, "content_type": meshes.CONTENT_TYPE}]}, units=units)

    async def _rerank(self, job: JobContext, token_s: float) -> JobOutput:
        """Every document scored against the query (``relevance``); tokens as a cross-encoder reads
        them: the query (and instruction) with each document."""
        payload = job.payload
        query = str(payload.get("query") or "")
        documents = [str(d) for d in payload.get("documents") or []]
        asked = count_sim_tokens(query) + count_sim_tokens(str(payload.get("instruct") or ""))
        tokens = sum(asked + count_sim_tokens(document) for document in documents)
        if token_s:
            await asyncio.sleep(token_s * tokens)
        scores = [relevance(query, document) for document in documents]
        units = Units(input_tokens=tokens)
        job.progress(1000, units)
        results = ranked(scores, documents, payload.get("top_n"), bool(payload.get("return_documents")))
        return JobOutput(result={"model": job.model, "results": results}, units=units)

    async def _agent(self, job: JobContext, token_s: float) -> JobOutput:
        """An agent task's turn (workers/agents.py); ``sim.step_ms`` sets its step time (knobs on)."""
        sim = (job.payload.get("sim") or {}) if self._knobs else {}
        step_ms = sim.get("step_ms", agents.step_ms_default) if isinstance(sim, dict) else agents.step_ms_default
        result, units = await agents.run_agent(job, int(step_ms) / 1000)
        return JobOutput(result=result, units=units)

    async def _score(self, job: JobContext, token_s: float) -> JobOutput:
        """vLLM's ``/v1/score``: each pair scored as a rerank scores a query and a document."""
        try:
            pairs = score_pairs(job.payload.get("text_1") or "", job.payload.get("text_2") or "")
        except ValueError as error:
            raise BackendError("invalid_request", str(error)) from None
        tokens = sum(count_sim_tokens(a) + count_sim_tokens(b) for a, b in pairs)
        if token_s:
            await asyncio.sleep(token_s * tokens)
        units = Units(input_tokens=tokens)
        job.progress(1000, units)
        data = [{"index": i, "object": "score", "score": relevance(a, b)} for i, (a, b) in enumerate(pairs)]
        return JobOutput(result={"model": job.model, "data": data}, units=units)

    async def _text_tool(self, job: JobContext, token_s: float) -> JobOutput:
        """Search, answers, detection and PII (workers/texttools.py): one step, its units at the end."""
        payload = job.payload
        try:
            if job.endpoint == texttools.SEARCH:
                described = self._catalog.model(job.model)
                tiers = described.search_variant_rates if described is not None else {}
                tier = str(payload.get("search_tier") or texttools.search_tier(job.model, payload, tiers))
                result, units = texttools.simulate_search(job.model, payload, tier)
            elif job.endpoint == texttools.ANSWER:
                result, units = texttools.simulate_answer(job.model, payload)
            elif job.endpoint == texttools.DETECT:
                result, units = texttools.simulate_detect(job.model, payload)
            else:
                result, units = texttools.simulate_pii(job.model, payload)
        except texttools.ToolInputError as error:
            raise BackendError("invalid_request", str(error)) from None
        if token_s:
            await asyncio.sleep(token_s * (units.input_tokens + units.output_tokens + units.search_units))
        job.progress(1000, units)
        return JobOutput(result=result, units=units)

    async def _research(self, job: JobContext, token_s: float) -> JobOutput:
        """A research request runs as the model's chat completion (its reasoning and search queries),
        then reads its sources: their tokens are input (``citation_tokens``)."""
        # The gateway wrote the chat fields (messages, max_tokens, reasoning_effort) into the payload.
        output = await self._chat(job.translated("/v1/chat/completions", dict(job.payload)), token_s)
        question = texttools.research_question(job.payload)
        sources, citation_tokens = texttools.research_sources(job.model, question, output.units.search_units)
        units = msgspec.structs.replace(output.units, input_tokens=output.units.input_tokens + citation_tokens)
        job.progress(1000, units)
        report = texttools.research_report(job.model, job.payload, output.result, sources, citation_tokens)
        return JobOutput(result=report, units=units)

    async def _analysis(self, job: JobContext, token_s: float) -> JobOutput:
        """An image analysis runs as a chat completion with the image (workers/texttools.py)."""
        try:
            chat = texttools.analysis_chat(job.payload)
        except texttools.ToolInputError as error:
            raise BackendError("invalid_request", str(error)) from None
        chat["max_tokens"] = job.payload.get("max_tokens")
        output = await self._chat(job.translated("/v1/chat/completions", chat), token_s)
        return JobOutput(result={"answer": texttools.chat_answer(output.result)}, units=output.units)

    async def _dialogue(self, job: JobContext, token_s: float) -> JobOutput:
        """Responses and Messages (workers/conversations.py): thinking when asked for, one hosted web
        search when offered (before the answer; a priced call, its results read as prompt), then a call
        of the client's first tool (or the one tool_choice names) unless the conversation ends with a
        tool's result, else text. Each is a progress point in its part as it is produced."""
        responses = job.endpoint == conversations.RESPONSES
        try:
            dialogue = (conversations.from_responses if responses else conversations.from_messages)(job.payload)
        except conversations.DialogueError as error:
            raise BackendError("invalid_request", error.message) from None
        seed = _seed(dialogue.messages, [tool.name for tool in dialogue.tools])
        prompt = tokens_per_reply_overhead + count_sim_tokens(conversations.tools_text(dialogue))
        prompt += sum(
            count_sim_tokens(conversations.message_text(m)) + tokens_per_message_overhead for m in dialogue.messages
        )
        limit = dialogue.output_tokens_max or sim_reply_tokens_max
        reply = Reply()
        output = 0

        async def emit(words: list[str], part: str) -> str:
            nonlocal output
            produced = ""
            for start in range(0, len(words), stream_chunk_tokens):
                chunk = words[start : start + stream_chunk_tokens]
                if token_s:
                    await asyncio.sleep(token_s * len(chunk))
                delta = ("" if start == 0 else " ") + " ".join(chunk)
                produced += delta
                output += len(chunk)
                job.progress(
                    min(999, 1000 * output // limit), Units(input_tokens=prompt, output_tokens=output), delta, part
                )
            return produced

        if dialogue.thinking_tokens_max:
            thinking = min(12 + seed[1] % 20, dialogue.thinking_tokens_max, limit)
            reply.thinking = await emit(_words(_seed(seed, "thinking"), thinking), REASONING)
            reply.reasoning_tokens = thinking
            if not responses:
                reply.thinking_signature = conversations.thinking_signature(reply.thinking)
                units = Units(input_tokens=prompt, output_tokens=output)
                job.progress(min(999, 1000 * output // limit), units, reply.thinking_signature, REASONING_SIGNATURE)
        asked = _last_user_text(dialogue)
        if dialogue.web_search and dialogue.web_search_calls_max and dialogue.tool_choice in ("auto", "required"):
            digest = hashlib.sha256(asked.encode()).hexdigest()[:12]
            search = Search(asked[:200], tuple(f"https://example.com/search/{digest}/{n}" for n in (1, 2)))
            prompt += count_sim_tokens(" ".join(_words(_seed(asked, "results"), 24)))  # the results it read
            reply.searches.append(search)
            units = Units(input_tokens=prompt, output_tokens=output, web_search_calls=len(reply.searches))
            job.progress(min(999, 1000 * output // limit), units, json.dumps(conversations.search_item(search)), ITEM)
        call = _sim_tool_call(dialogue, job.job_id, asked, "call_" if responses else "toolu_")
        if call is not None and count_sim_tokens(call.name + " " + call.arguments) <= limit - output:
            output += count_sim_tokens(call.name + " " + call.arguments)
            reply.tool_calls.append(call)
            reply.finish = "tool_calls"
            item = conversations.function_call_item(call) if responses else conversations.tool_use_block(call)
            units = Units(input_tokens=prompt, output_tokens=output, web_search_calls=len(reply.searches))
            job.progress(1000, units, json.dumps(item), ITEM)
        else:
            natural = 8 + seed[0] % (sim_reply_tokens_max - 8)
            words = _words(_seed(seed, [s.query for s in reply.searches]), min(natural, max(limit - output, 0)))
            reply.text = await emit(words, TEXT)
            reply.finish = "length" if len(words) < natural else "stop"
        units = Units(input_tokens=prompt, output_tokens=output, web_search_calls=len(reply.searches))
        if responses:
            result = conversations.responses_result(reply, job.model, job.payload)
        else:
            result = conversations.message_result(reply, job.model)
        return JobOutput(result=result, units=units)


def transcript_result(words: list[str], duration_ms: int, endpoint: str, language: Any) -> dict[str, Any]:
    """OpenAI's ``verbose_json`` for ``words`` heard evenly over ``duration_ms`` (times in seconds,
    to the millisecond; display values, nothing is priced from them)."""
    count = len(words)
    timed = [
        {"word": word, "start": index * duration_ms // count / 1000, "end": (index + 1) * duration_ms // count / 1000}
        for index, word in enumerate(words)
    ]
    segments = []
    for number, first in enumerate(range(0, count, transcript_segment_words)):
        chunk = timed[first : first + transcript_segment_words]
        text = " ".join(str(item["word"]) for item in chunk)
        segments.append(
            {
                "id": number,
                "seek": 0,
                "start": chunk[0]["start"],
                "end": chunk[-1]["end"],
                "text": (" " + text.capitalize()) if first == 0 else " " + text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 1.0,
                "no_speech_prob": 0.0,
            }
        )
    return {
        "task": "translate" if endpoint == TRANSLATIONS else "transcribe",
        "language": "en" if endpoint == TRANSLATIONS or not isinstance(language, str) or not language else language,
        "duration": duration_ms / 1000,
        "text": " ".join(words).capitalize() + ".",
        "segments": segments,
        "words": timed,
    }


def _content_words(text: str) -> set[str]:
    """Lowercased words of three letters or more, a plural's final s dropped ("models" is "model")."""
    words = (word.lower() for word in _content_word.findall(text) if len(word) >= 3)
    return {word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word for word in words}


def score_pairs(text_1: str | list[str], text_2: str | list[str]) -> list[tuple[str, str]]:
    """vLLM's pairing for ``/v1/score``: one ``text_1`` against each ``text_2``, else the two lists
    index by index. ValueError when the lists differ in length."""
    firsts = [text_1] if isinstance(text_1, str) else [str(text) for text in text_1]
    seconds = [text_2] if isinstance(text_2, str) else [str(text) for text in text_2]
    if len(firsts) == 1:
        return [(firsts[0], second) for second in seconds]
    if len(firsts) != len(seconds):
        raise ValueError(f"text_1 has {len(firsts)} items and text_2 {len(seconds)}")
    return list(zip(firsts, seconds, strict=True))


def relevance(query: str, document: str) -> float:
    """The simulated relevance of a document to a query, in [0, 1]: the Dice overlap of their content
    words. Deterministic, and ranks as a reader would on the documents' examples."""
    asked, offered = _content_words(query), _content_words(document)
    if not asked or not offered:
        return 0.0
    return round(2 * len(asked & offered) / (len(asked) + len(offered)), 6)


def ranked(
    scores: list[float], documents: list[str], top_n: Any = None, return_documents: bool = False
) -> list[dict[str, Any]]:
    """Rerank results as vLLM and llama.cpp answer them (``index``, ``relevance_score``, ``document``
    ``{"text"}`` when asked for): most relevant first (ties in the documents' order), at most ``top_n``."""
    order = sorted(range(len(scores)), key=lambda index: (-scores[index], index))
    if isinstance(top_n, int) and not isinstance(top_n, bool) and top_n > 0:
        order = order[:top_n]
    results: list[dict[str, Any]] = []
    for index in order:
        result: dict[str, Any] = {"index": index, "relevance_score": scores[index]}
        if return_documents:
            result["document"] = {"text": documents[index]}
        results.append(result)
    return results


def _last_user_text(dialogue: Dialogue) -> str:
    for message in reversed(dialogue.messages):
        if message.get("role") == "user":
            return conversations.message_text(message).strip()
    return ""


def _sim_tool_call(dialogue: Dialogue, job_id: str, asked: str, prefix: str) -> ToolCall | None:
    """The simulated model calls a tool when it has one to call and the conversation does not end with
    a tool's result; its arguments fill the tool's required parameters (strings with the last
    capitalised word asked: "the weather in Paris?" gives city "Paris")."""
    if not dialogue.tools or dialogue.tool_choice == "none" or dialogue.messages[-1].get("role") == "tool":
        return None
    named = [tool for tool in dialogue.tools if tool.name == dialogue.tool_choice]
    tool = named[0] if named else dialogue.tools[0]
    properties = tool.parameters.get("properties") or {}
    required = tool.parameters.get("required") or list(properties)
    words = [word.strip(".,!?;:'\"()") for word in asked.split()]
    capitalised = [word for word in words if word[:1].isupper()]
    word = capitalised[-1] if capitalised else next((w for w in reversed(words) if w), "value")
    values: dict[str, Any] = {}
    for name in required:
        given = properties.get(name)
        spec: dict[str, Any] = given if isinstance(given, dict) else {}
        kind = spec.get("type")
        if spec.get("enum"):
            values[name] = spec["enum"][0]
        elif kind in ("integer", "number"):
            values[name] = 1
        elif kind == "boolean":
            values[name] = True
        elif kind == "array":
            values[name] = []
        elif kind == "object":
            values[name] = {}
        else:
            values[name] = word
    call_id = prefix + hashlib.sha256(f"{job_id}/{tool.name}".encode()).hexdigest()[:24]
    return ToolCall(call_id, tool.name, json.dumps(values, separators=(",", ":")))


SimulatedChatBackend = SimulatedBackend
