"""Price books and the one place where usage becomes money.

Rates are integer micro-credits per million units (per million tokens, images, seconds, characters
or calls), so that fractional per-token prices stay exact. A request's cost is the sum over its units
of quantity x rate, divided by one million and rounded UP to the next micro-credit, once, on the
total; then the model's minimum charge applies. Rounding up is monotonic, so the cost of a request
never exceeds the cost of the worst case it was held for.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.units import Units

units_per_rate = 1_000_000

Category = Literal["chat", "embedding", "image", "audio", "video"]


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


class PriceBook(msgspec.Struct, frozen=True, kw_only=True):
    version: str
    models: dict[str, ModelPrice]

    def model(self, model_id: str) -> ModelPrice | None:
        return self.models.get(model_id)


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def price_micros(price: ModelPrice, units: Units) -> int:
    """The cost of ``units`` under ``price`` in micro-credits. The single rounding point."""
    scaled = (
        units.input_tokens * price.input_token_rate
        + units.cached_input_tokens * price.cached_input_token_rate
        + units.output_tokens * price.output_token_rate
        + units.images * price.image_rate
        + units.audio_seconds * price.audio_second_rate
        + units.video_seconds * price.video_second_rate
        + units.characters * price.character_rate
        + units.calls * price.call_rate
    )
    assert scaled >= 0, "units and rates are never negative"
    return max(_ceil_div(scaled, units_per_rate), price.minimum_charge_micros)


def default_price_book() -> PriceBook:
    """The price book a fresh Tollgate starts with. Rates in micros per million units."""
    models = [
        ModelPrice(
            model="sim-chat-small",
            category="chat",
            pool="default",
            context_length=32_768,
            max_output_tokens=4_096,
            input_token_rate=150_000,  # 0.15 credits per 1M input tokens
            cached_input_token_rate=75_000,
            output_token_rate=600_000,  # 0.60 credits per 1M output tokens
        ),
        ModelPrice(
            model="sim-chat-large",
            category="chat",
            pool="default",
            context_length=131_072,
            max_output_tokens=8_192,
            input_token_rate=2_500_000,
            cached_input_token_rate=1_250_000,
            output_token_rate=10_000_000,
            minimum_charge_micros=10,
        ),
    ]
    return PriceBook(version="2026-11-01", models={price.model: price for price in models})
