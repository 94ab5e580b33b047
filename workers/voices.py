"""The voices a speech model speaks with, as ``GET /v1/voices`` lists them (EmpirioLabs' shape:
``voice_id``, ``name``, ``languages``, ``gender``, ``preview_url``).

Which models speak is the price book's to say (a model with a character rate); which voices each has
is the backend's, so the catalog is here: the voices of the models the reference documents' examples
name, and OpenAI's voices for any other speech model (what the simulated backend and an
OpenAI-compatible server take). The simulated backend speaks any voice name it is given."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Voice:
    voice_id: str
    name: str
    languages: tuple[str, ...]
    gender: str


def _voices(languages: tuple[str, ...], *named: tuple[str, str]) -> tuple[Voice, ...]:
    return tuple(Voice(voice_id=name, name=name, languages=languages, gender=gender) for name, gender in named)


_english = ("en",)
# OpenAI's text-to-speech voices: what an OpenAI-compatible speech server is asked for.
openai_voices = _voices(
    _english,
    ("alloy", "neutral"),
    ("ash", "male"),
    ("ballad", "male"),
    ("coral", "female"),
    ("echo", "male"),
    ("fable", "neutral"),
    ("nova", "female"),
    ("onyx", "male"),
    ("sage", "female"),
    ("shimmer", "female"),
    ("verse", "male"),
)
_inworld = _voices(
    ("en", "es", "fr", "de", "it", "pt", "zh", "ja", "ko", "nl", "pl", "ru", "hi", "ar", "he"),
    ("Ashley", "female"),
    ("Sarah", "female"),
    ("Dennis", "male"),
    ("Alex", "male"),
    ("Olivia", "female"),
)
# Voices of the models the reference documents' speech examples name (Casola's Qwen3-TTS with
# "Vivian"; EmpirioLabs' gemini-2-5-flash-tts with "Charon", Inworld's inworld-tts-mini and tts-1-5-mini
# with "Ashley" and "Sarah", soulx-podcast's "arthur" and "lj"), for when the price book lists them.
catalog: dict[str, tuple[Voice, ...]] = {
    "Qwen3-TTS": _voices(
        ("zh", "en"),
        ("Vivian", "female"),
        ("Serena", "female"),
        ("Uncle_Fu", "male"),
        ("Dylan", "male"),
        ("Eric", "male"),
        ("Ryan", "male"),
        ("Aiden", "male"),
    ),
    "gemini-2-5-flash-tts": _voices(
        ("en", "de", "es", "fr", "hi", "ja", "ko", "pt", "zh"),
        ("Charon", "male"),
        ("Kore", "female"),
        ("Puck", "male"),
        ("Aoede", "female"),
        ("Fenrir", "male"),
        ("Leda", "female"),
    ),
    "inworld-tts-mini": _inworld,
    "tts-1-5-mini": _inworld,
    "soulx-podcast": _voices(_english, ("arthur", "male"), ("lj", "female")),
}


def voices_of(model: str) -> tuple[Voice, ...]:
    """The voices of a speech model: its own when the catalog names it, else OpenAI's."""
    return catalog.get(model, openai_voices)
