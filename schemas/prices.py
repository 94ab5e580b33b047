"""Price books on the wire: versioned, published as events, integer rates in micros per million units."""

from __future__ import annotations

from typing import Literal

import msgspec

Category = Literal["chat", "embedding", "image", "audio", "video"]


class ContextTier(msgspec.Struct, frozen=True, kw_only=True):
    """Token rates that apply instead of the base ones when the prompt is longer than ``above_tokens``."""

    above_tokens: int
    input_token_rate: int
    cached_input_token_rate: int
    output_token_rate: int


class ModelPrice(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    category: Category
    pool: str
    owned_by: str = "tollgate"
    context_length: int = 32_768
    max_output_tokens: int = 4_096
    input_token_rate: int = 0
    cached_input_token_rate: int = 0
    output_token_rate: int = 0
    image_rate: int = 0
    audio_second_rate: int = 0
    video_second_rate: int = 0
    character_rate: int = 0
    call_rate: int = 0
    minimum_charge_micros: int = 0
    # Longer prompts cost more on many models; the highest tier the prompt passes applies.
    context_tiers: tuple[ContextTier, ...] = ()
    # Images by "<size>/<quality>" (e.g. "1024x1024/hd"); image_rate prices any other variant.
    image_variant_rates: dict[str, int] = msgspec.field(default_factory=dict)


class PriceBook(msgspec.Struct, frozen=True, kw_only=True):
    version: str
    models: dict[str, ModelPrice]

    def model(self, model_id: str) -> ModelPrice | None:
        return self.models.get(model_id)

    @property
    def current(self) -> PriceBook:
        return self

    def at_version(self, version: str) -> PriceBook | None:
        return self if version in ("", self.version) else None
