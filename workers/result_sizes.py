"""How large a job's result can be, from its request alone: what the gateway checks before it holds, so
that a request whose answer could never be delivered is a 400 naming what to change, not a job that
runs, fails and leaves its client waiting.

A job's outcome travels as one record (``JobCompleted`` on ``tollgate.jobs``, its result as JSON with
media as base64), and a record is at most ``eventlog.record_value_bytes_max``: the one limit, which
both logs enforce. ``job_result_bytes_max`` is what is left of it for the result once the outcome's
own fields (ids, model, units, timings) and the result's small fields (format, duration) are counted,
with room to spare; the gateway's idempotent copy of the answer (the same bytes, base64, and a few
headers) fits in it too.

The bounds are the simulated backend's output, exactly or from above (its audio's size is a function
of the input's length, format and sample rate; an embedding's of its dimensions). An upstream server
can answer more than these (a 24 kHz voice, 3,072-dimension embeddings): the worker turns a result
the log refuses into a ``result_too_large`` failure (workers/role.py).
"""

from __future__ import annotations

import math

from eventlog import record_value_bytes_max
from workers import media

# What a JobCompleted holds beside its result, and the result beside its media, at most (about 1 KB
# each; the rest is room to spare).
outcome_envelope_bytes_max = 16 * 1024
job_result_bytes_max = record_value_bytes_max - outcome_envelope_bytes_max

speech_sample_rates = (8000, 16000, 22050, 24000, 32000, 44100, 48000)  # what the stream's sample_rate takes
mp3_frame_bytes_max = 4 * 1024  # LAME's last, flushed frames beyond the bit rate's bytes


def base64_bytes(raw_bytes: int) -> int:
    return 4 * math.ceil(raw_bytes / 3)


def speech_sample_rate(audio_format: str, given: object) -> int:
    """The simulated voice's sample rate: MP3 always 16 kHz; WAV 16 kHz and PCM 24 kHz (OpenAI's) unless
    ``sample_rate`` says."""
    rate = int(given) if isinstance(given, str) and given.isdigit() else 0
    if audio_format == "mp3":
        return 16000
    return rate or (24000 if audio_format == "pcm" else 16000)


def spoken_audio_bytes(audio_format: str, seconds_milli: int, sample_rate: int) -> int:
    """The size of ``seconds_milli`` of the simulated voice (16-bit mono; MP3 at its fixed bit rate), at
    most."""
    if audio_format == "mp3":
        return seconds_milli * media.mp3_bit_rate_kbps // 8 + mp3_frame_bytes_max
    samples = 2 * (seconds_milli * sample_rate // 1000)
    return samples + (media.wav_header_bytes if audio_format == "wav" else 0)


def speech_fits(audio_format: str, seconds_milli: int, sample_rate: int) -> bool:
    return base64_bytes(spoken_audio_bytes(audio_format, seconds_milli, sample_rate)) <= job_result_bytes_max


# An embedding's value as JSON: "-0.123456" and its comma (six decimals, as the simulated model rounds).
embedding_float_bytes_max = 10
embedding_item_bytes_max = 64  # {"object":"embedding","index":2047,"embedding":...}, with its comma


def embedding_result_bytes(items: int, dimensions: int, encoding_format: str) -> int:
    """The size of ``items`` embeddings of ``dimensions`` values as JSON (``float``) or base64 float32
    (``base64``), at most."""
    vector = (
        base64_bytes(4 * dimensions) + 2 if encoding_format == "base64" else dimensions * embedding_float_bytes_max + 2
    )
    return items * (vector + embedding_item_bytes_max)
