"""Measured usage: the quantities a price book prices. Integers only (and a variant label)."""

from __future__ import annotations

import msgspec


class Units(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    images: int = 0
    audio_seconds: int = 0
    video_seconds: int = 0
    characters: int = 0
    calls: int = 0
    # Which rate applies where one dimension has several, e.g. an image's "1024x1024/hd".
    variant: str = ""

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens
