"""Price books on the wire: versioned, published as events, integer rates in micros per million units."""

from __future__ import annotations

from typing import Literal

import msgspec

Category = Literal["chat", "embedding", "image", "audio", "video", "rerank"]


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
    # Models of this book that may serve a request for this one when its upstream fails (in order):
    # the hold covers the priciest of them, and each request is charged at the price of the model
    # that served it (the provider document's x-model-used, x-fallback-from, x-fallback-depth).
    fallbacks: tuple[str, ...] = ()


class Route(msgspec.Struct, frozen=True, kw_only=True):
    """A model and the pool whose upstream serves it: where a worker sends a fallback."""

    model: str
    pool: str


class PriceBook(msgspec.Struct, frozen=True, kw_only=True):
    version: str
    models: dict[str, ModelPrice]

    def model(self, model_id: str) -> ModelPrice | None:
        return self.models.get(model_id)

    def may_serve(self, requested: str, served: str) -> bool:
        """Whether ``served`` may answer a request for ``requested``: itself or one of its fallbacks."""
        price = self.models.get(requested)
        return served == requested or (price is not None and served in price.fallbacks and served in self.models)

    @property
    def current(self) -> PriceBook:
        return self

    def at_version(self, version: str) -> PriceBook | None:
        return self if version in ("", self.version) else None
