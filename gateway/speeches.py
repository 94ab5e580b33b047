"""Speech answered in EmpirioLabs' shapes: the JSON ``AudioResponse`` of ``/v1/audio/speech`` and the
server-sent events of ``/v1/audio/speech:stream``, from the worker's result (the audio as base64, its
format, duration and sample rate) or, for the stream, from its progress: every piece of audio the
worker reports (``JobProgressed`` of part ``audio``: ``{audio_b64, format, sample_rate}``) is one
``audio.chunk`` as it comes, its ``elapsed_ms`` the time since the request reached the gateway.

EmpirioLabs answers a hosted URL by default. Here ``url`` is first a ``data:`` URL holding the
audio; the route replaces it with a signed link the gateway serves for about an hour
(``gateway/routes/media.py``). ``b64_json`` when the request asks for it; the stream's ``audio.done``
has no ``url`` (``null``): the chunks are the audio.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from eventlog import EventLog, partition_for, topics
from gateway.requests import SpeechAsk
from schemas.codec import decode_event
from schemas.events import JobCompleted, JobProgressed
from workers import media
from workers.backends import AUDIO

stream_chunk_bytes = 16 * 1024  # audio bytes per audio.chunk event
# Reading a long stream's pieces back from tollgate.jobs (its completion says ``audio_in_pieces``):
# from a little before the job began (the worker's clock stamps the records), at most this many
# records of the organization's partition, for at most this long.
pieces_read_slack_ms = 10_000
pieces_read_records_max = 200_000
pieces_read_batch_records_max = 500
pieces_read_s_max = 30.0
_content_types = {"mp3": "audio/mpeg", "wav": "audio/wav", "pcm": "audio/pcm"}


def _seconds(result: dict[str, Any]) -> float:
    """The audio's duration in seconds, to the millisecond (shown, never priced: speech is priced per
    character)."""
    duration_ms = result.get("duration_ms")
    return int(duration_ms) / 1000 if isinstance(duration_ms, int) else 0.0


def audio_response(result: dict[str, Any], inline: bool, usage: dict[str, Any]) -> dict[str, Any]:
    """``{"data": [{url | b64_json, duration, format}], "usage"}``."""
    audio_format = str(result.get("format") or "wav")
    audio_b64 = str(result.get("audio_b64") or "")
    item: dict[str, Any] = {"duration": _seconds(result), "format": audio_format}
    if inline:
        item["b64_json"] = audio_b64
    else:
        item["url"] = f"data:{_content_types.get(audio_format, 'application/octet-stream')};base64,{audio_b64}"
    return {"data": [item], "usage": usage}


def _timestamps(ask: SpeechAsk, duration_ms: int) -> dict[str, Any]:
    """Word (or character) timings spread evenly over the audio, as the simulated voice speaks."""
    units = ask.text.split() if ask.timestamp_type == "WORD" else [c for c in ask.text if not c.isspace()]
    count = max(len(units), 1)
    timed = [
        {"text": unit, "start_ms": index * duration_ms // count, "end_ms": (index + 1) * duration_ms // count}
        for index, unit in enumerate(units)
    ]
    return {"words": timed} if ask.timestamp_type == "WORD" else {"characters": timed}


def chunk_event(seq: int, audio: bytes, audio_format: str, sample_rate: int, elapsed_ms: int) -> dict[str, Any]:
    return {
        "type": "audio.chunk",
        "seq": seq,
        "audio_b64": base64.b64encode(audio).decode(),
        "format": audio_format,
        "sample_rate": sample_rate,
        "elapsed_ms": elapsed_ms,
    }


def timestamps_event(seq: int, ask: SpeechAsk, duration_ms: int) -> dict[str, Any]:
    return {"type": "audio.timestamps", "seq": seq, "timestamp_info": _timestamps(ask, duration_ms)}


def done_event(duration_ms: int, usage: dict[str, Any]) -> dict[str, Any]:
    """``audio.done``: the duration and the usage (``processed_characters`` and ``cost_usd`` as
    EmpirioLabs shows them, with every usage field)."""
    return {
        "type": "audio.done",
        "url": None,
        "duration_seconds": duration_ms / 1000,
        "usage": {"processed_characters": usage.get("characters", 0), **usage},
    }


def error_event(message: str, code: str, error_type: str = "server_error") -> dict[str, Any]:
    """``audio.error`` (followed by ``[DONE]``): the OpenAI error object under ``error``."""
    return {"type": "audio.error", "error": {"message": message, "type": error_type, "code": code}}


def result_audio(result: dict[str, Any]) -> tuple[bytes, str, int]:
    """A completed job's audio, its format and sample rate."""
    audio = base64.b64decode(str(result.get("audio_b64") or ""))
    return audio, str(result.get("format") or "wav"), int(result.get("sample_rate") or 24000)


class AudioPieces:
    """The audio a stream relays: every piece the worker reports, in order. A retried run makes its
    pieces again from the start (deterministic backends), so only bytes past what the earlier runs'
    pieces reached are new. It counts the bytes sent (an MP3's are kept, small at 32 kbit/s, to
    measure what they play; a WAV's or PCM's size says it)."""

    def __init__(self) -> None:
        self.sent_bytes = 0
        self._mp3 = bytearray()
        self._by_attempt: dict[int, int] = {}
        self.audio_format = ""
        self.sample_rate = 0

    def fresh(self, event: JobProgressed) -> bytes:
        piece = msgspec.json.decode(event.delta)
        audio = base64.b64decode(str(piece.get("audio_b64") or ""))
        self.audio_format = self.audio_format or str(piece.get("format") or "wav")
        self.sample_rate = self.sample_rate or int(piece.get("sample_rate") or 24000)
        start = self._by_attempt.get(event.attempt, 0)
        self._by_attempt[event.attempt] = start + len(audio)
        new = audio[max(self.sent_bytes - start, 0) :]
        self.sent_bytes += len(new)
        if self.audio_format == "mp3":
            self._mp3 += new
        return new

    def sent_ms(self) -> int:
        """How long the audio sent so far plays (a stream that ended before its job did): 16-bit mono
        samples by their count (past a WAV's 44-byte header), an MP3's frames as its parser counts
        them (0 before the first whole frame)."""
        if self.audio_format == "mp3":
            with contextlib.suppress(ValueError):
                return media.mp3_duration_ms(bytes(self._mp3))
            return 0
        samples = self.sent_bytes - (media.wav_header_bytes if self.audio_format == "wav" else 0)
        return max(samples, 0) // 2 * 1000 // max(self.sample_rate, 1)


class AudioNotWhole(Exception):
    """A long stream's pieces could not be read back whole from the log."""


def audio_in_pieces(result: dict[str, Any]) -> int | None:
    """The audio's size when a completion left its audio in the job's pieces (too large for one
    record: workers/role.py), else None."""
    return int(result.get("audio_bytes") or 0) if result.get("audio_in_pieces") else None


def audio_from_log(log: EventLog, completed: JobCompleted) -> bytes:
    """The audio of ``completed``'s job, from its pieces on ``tollgate.jobs`` (the runs' ``JobProgressed``
    of part ``audio``, in order, a retried run's counted from its start as ``AudioPieces`` does), read
    from the organization's partition up to the completion. Blocking: call it in a thread."""
    since_ms = int(completed.occurred_at.timestamp() * 1000) - completed.duration_ms - pieces_read_slack_ms
    partition = partition_for(completed.org_id.encode(), log.partitions)
    consumer = log.consumer(
        [topics.JOBS], client_id=f"speech-pieces-{completed.job_id}", partitions=[partition], start_ms=since_ms
    )
    pieces = AudioPieces()
    audio = bytearray()
    read = 0
    deadline = time.monotonic() + pieces_read_s_max
    try:
        while read < pieces_read_records_max and time.monotonic() < deadline:
            records = consumer.poll(pieces_read_batch_records_max, 200)
            if not records and consumer.caught_up():
                break
            read += len(records)
            for record in records:
                try:
                    event = decode_event(record.value)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue  # not an event of ours (the follower skips it too)
                if getattr(event, "job_id", None) != completed.job_id:
                    continue
                if isinstance(event, JobProgressed) and event.part == AUDIO and event.delta:
                    audio += pieces.fresh(event)
                elif isinstance(event, JobCompleted):
                    return bytes(audio)
    finally:
        consumer.close()
    return bytes(audio)


def stream_events(
    result: dict[str, Any], ask: SpeechAsk, usage: dict[str, Any], elapsed_ms: Callable[[], int], seq: int = 0
) -> Iterator[dict[str, Any]]:
    """A finished job's events from its result (a retry's replay of its first attempt; or the audio
    of a job that ended before its pieces reached the stream, past the ``sent`` bytes): ``audio.chunk``
    events of at most ``stream_chunk_bytes``, ``audio.timestamps`` when asked for, then ``audio.done``."""
    audio, audio_format, sample_rate = result_audio(result)
    for start in range(0, len(audio), stream_chunk_bytes):
        yield chunk_event(seq, audio[start : start + stream_chunk_bytes], audio_format, sample_rate, elapsed_ms())
        seq += 1
    yield from ending_events(result, ask, usage, seq)


def ending_events(result: dict[str, Any], ask: SpeechAsk, usage: dict[str, Any], seq: int) -> Iterator[dict[str, Any]]:
    """``audio.timestamps`` (when ``timestamp_type`` asks) and ``audio.done`` of a completed job."""
    duration_ms = int(result.get("duration_ms") or 0)
    if ask.timestamp_type != "NONE":
        yield timestamps_event(seq, ask, duration_ms)
    yield done_event(duration_ms, usage)
