"""A transcript in the ``response_format`` asked for. Every backend answers OpenAI's ``verbose_json``
(``task``, ``language``, ``duration``, ``text``, ``segments`` and, when it has them, ``words``); the
gateway shapes it here, so each format reads the same on every backend: ``json`` (the text and the
usage), ``verbose_json`` (with segments, and words when ``timestamp_granularities`` names them),
``text``, ``srt`` and ``vtt`` (plain text; the charge is in the ``x-credits-used`` header)."""

from __future__ import annotations

from typing import Any

_ms_per_hour, _ms_per_minute = 3_600_000, 60_000


def _milliseconds(seconds: Any) -> int:
    """A segment boundary in ms (a display value: nothing is priced from it)."""
    return max(0, round(float(seconds) * 1000)) if isinstance(seconds, int | float) else 0


def _clock(ms: int, separator: str) -> str:
    hours, ms = divmod(ms, _ms_per_hour)
    minutes, ms = divmod(ms, _ms_per_minute)
    seconds, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{ms:03d}"


def _segments(result: dict[str, Any]) -> list[dict[str, Any]]:
    segments = result.get("segments")
    if isinstance(segments, list) and segments:
        return [segment for segment in segments if isinstance(segment, dict)]
    duration = result.get("duration", 0)
    return [{"start": 0.0, "end": duration, "text": str(result.get("text") or "")}]


def as_text(result: dict[str, Any], response_format: str) -> str:
    """``text``, ``srt`` or ``vtt``."""
    if response_format == "text":
        return str(result.get("text") or "") + "\n"
    cues = []
    separator = "," if response_format == "srt" else "."
    for number, segment in enumerate(_segments(result), start=1):
        start = _clock(_milliseconds(segment.get("start")), separator)
        end = _clock(_milliseconds(segment.get("end")), separator)
        text = str(segment.get("text") or "").strip()
        cue = f"{start} --> {end}\n{text}\n"
        cues.append(f"{number}\n{cue}" if response_format == "srt" else cue)
    body = "\n".join(cues)
    return body if response_format == "srt" else f"WEBVTT\n\n{body}"


def as_json(
    result: dict[str, Any], usage: dict[str, Any], response_format: str, granularities: tuple[str, ...]
) -> dict[str, Any]:
    """``json`` or ``verbose_json``: segments unless only words were asked for, words when asked for."""
    if response_format != "verbose_json":
        return {"text": str(result.get("text") or ""), "usage": usage}
    body: dict[str, Any] = {
        "task": result.get("task") or "transcribe",
        "language": result.get("language") or "en",
        "duration": result.get("duration", 0),
        "text": str(result.get("text") or ""),
    }
    if granularities != ("word",):
        body["segments"] = _segments(result)
    if "word" in granularities:
        body["words"] = result.get("words") or []
    body["usage"] = usage
    return body
