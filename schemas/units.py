"""Measured usage: the quantities a price book prices. Integers only (and two pricing labels).

Every field is one priced unit (``ledger.pricing.unit_names`` lists them in statement order); a
request's usage object shows each under its own name, so a charge can be recomputed from the catalog.
Tokens are split by kind, each kind priced at its own rate: a prompt is ``input_tokens`` (text not
read from a cache) + ``cached_input_tokens`` (read from a cache) + ``cache_write_tokens`` (written to
one) + ``image_input_tokens`` + ``audio_input_tokens``; generated tokens are ``output_tokens`` +
``reasoning_tokens``. New fields keep their defaults, so events written before them decode unchanged.
"""

from __future__ import annotations

from typing import Literal

import msgspec

# Tools the platform runs itself and bills per invocation (the reference's ``tool_usage.<tool>``).
Tool = Literal["web_search", "file_search", "code_interpreter"]
tools: tuple[Tool, ...] = ("web_search", "file_search", "code_interpreter")


class Units(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    images: int = 0
    audio_seconds: int = 0
    video_seconds: int = 0
    characters: int = 0
    calls: int = 0  # requests: the model's flat per-request fee
    # Which rate applies where one dimension has several, e.g. an image's "1024x1024/hd".
    variant: str = ""
    cache_write_tokens: int = 0
    image_input_tokens: int = 0
    audio_input_tokens: int = 0
    reasoning_tokens: int = 0
    search_units: int = 0  # a search query (with up to 100 documents), the unit search and rerank models bill
    storage_byte_days: int = 0  # bytes stored times days
    web_search_calls: int = 0
    file_search_calls: int = 0
    code_interpreter_calls: int = 0
    # Sent at batch prices ("service_tier": "flex"): the model's batch discount applies.
    batch: bool = False

    @property
    def prompt_tokens(self) -> int:
        """Every token of the prompt, whatever its kind (what OpenAI's ``prompt_tokens`` counts)."""
        return (
            self.input_tokens
            + self.cached_input_tokens
            + self.cache_write_tokens
            + self.image_input_tokens
            + self.audio_input_tokens
        )

    @property
    def completion_tokens(self) -> int:
        """Every generated token, reasoning included (what OpenAI's ``completion_tokens`` counts)."""
        return self.output_tokens + self.reasoning_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def tool_calls(self, tool: Tool) -> int:
        count: int = getattr(self, f"{tool}_calls")
        return count
