"""Speech answered in EmpirioLabs' shapes: the JSON ``AudioResponse`` of ``/v1/audio/speech`` and the
server-sent events of ``/v1/audio/speech:stream``, from the worker's result (the audio as base64, its
format, duration and sample rate).

EmpirioLabs answers a hosted URL by default. Here ``url`` is first a ``data:`` URL holding the
audio; the route replaces it with a signed link the gateway serves for about an hour
(``gateway/routes/media.py``). ``b64_json`` when the request asks for it; the stream's ``audio.done``
has no ``url`` (``null``): the chunks are the audio.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

from gateway.requests import SpeechAsk

stream_chunk_bytes = 16 * 1024  # audio bytes per audio.chunk event
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


def stream_events(result: dict[str, Any], ask: SpeechAsk, usage: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``audio.chunk`` events (``seq``, ``audio_b64``, ``format``, ``sample_rate``, ``elapsed_ms``),
    ``audio.timestamps`` when asked for, then ``audio.done`` with the duration and the usage
    (``processed_characters`` and ``cost_usd`` as EmpirioLabs shows them, with every usage field)."""
    audio = base64.b64decode(str(result.get("audio_b64") or ""))
    audio_format = str(result.get("format") or "wav")
    sample_rate = int(result.get("sample_rate") or 24000)
    duration_ms = int(result.get("duration_ms") or 0)
    seq = 0
    for start in range(0, len(audio), stream_chunk_bytes):
        chunk = audio[start : start + stream_chunk_bytes]
        yield {
            "type": "audio.chunk",
            "seq": seq,
            "audio_b64": base64.b64encode(chunk).decode(),
            "format": audio_format,
            "sample_rate": sample_rate,
            "elapsed_ms": duration_ms * start // max(len(audio), 1),
        }
        seq += 1
    if ask.timestamp_type != "NONE":
        yield {"type": "audio.timestamps", "seq": seq, "timestamp_info": _timestamps(ask, duration_ms)}
    yield {
        "type": "audio.done",
        "url": None,
        "duration_seconds": _seconds(result),
        "usage": {"processed_characters": usage.get("characters", 0), **usage},
    }
