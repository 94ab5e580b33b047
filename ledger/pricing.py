"""Price books and the one place where usage becomes money.

Rates are integer micro-credits per million units (per million tokens, images, seconds, characters
or calls), so that fractional per-token prices stay exact. A request's cost is the sum over its units
of quantity x rate, divided by one million and rounded UP to the next micro-credit, once, on the
total; then the model's minimum charge applies. Rounding up is monotonic, so the cost of a request
never exceeds the cost of the worst case it was held for.
"""

from __future__ import annotations

import operator

from schemas.events import Event, PriceBookPublished
from schemas.prices import Category, ContextTier, ModelPrice, PriceBook
from schemas.units import Units

__all__ = [
    "Category",
    "ContextTier",
    "ModelPrice",
    "PriceBook",
    "PriceBooks",
    "default_price_book",
    "price_micros",
    "unit_names",
    "unit_quantities",
    "unit_rates",
]

units_per_rate = 1_000_000
# A hosted web search (the Responses API's web_search tool) is a priced call: 0.01 credits each.
web_search_call_rate = 10_000 * units_per_rate


class PriceBooks:
    """Every published version, and the current one. A charge is priced by the version its hold
    recorded, so publishing a new book never changes what an in-flight request costs."""

    def __init__(self, initial: PriceBook) -> None:
        self._versions: dict[str, PriceBook] = {initial.version: initial}
        self.current = initial

    def publish(self, book: PriceBook) -> bool:
        """Add a version and make it current; False for a version already known (first one wins)."""
        if book.version in self._versions:
            return False
        self._versions[book.version] = book
        self.current = book
        return True

    def apply(self, event: Event) -> bool:
        """Fold one event of ``tollgate.pricing``; True when it published a new version."""
        return isinstance(event, PriceBookPublished) and self.publish(event.book)

    def at_version(self, version: str) -> PriceBook | None:
        return self.current if not version else self._versions.get(version)

    def versions(self) -> list[str]:
        return list(self._versions)


def _token_rates(price: ModelPrice, prompt_tokens: int) -> tuple[int, int, int]:
    rates = (price.input_token_rate, price.cached_input_token_rate, price.output_token_rate)
    # The highest tier the prompt is above (of equal ones, the last listed); tiers come in any order.
    above: int | None = None
    for tier in price.context_tiers:
        if prompt_tokens > tier.above_tokens and (above is None or tier.above_tokens >= above):
            above = tier.above_tokens
            rates = (tier.input_token_rate, tier.cached_input_token_rate, tier.output_token_rate)
    return rates


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


# The priced dimensions of Units, in the order statements list them.
unit_names = (
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "images",
    "audio_seconds",
    "video_seconds",
    "characters",
    "calls",
)


def billed_seconds(duration_ms: int) -> int:
    """Audio and video are billed by the started second, at least one: integers only, as money is."""
    return max(1, _ceil_div(duration_ms, 1000))


def unit_rates(price: ModelPrice, units: Units) -> tuple[int, ...]:
    """The rate (micros per million units) that applies to each of ``unit_names`` for ``units``:
    the context tier is chosen by the prompt, the image rate by the variant. Pure."""
    input_rate, cached_rate, output_rate = _token_rates(price, units.input_tokens + units.cached_input_tokens)
    image_rate = price.image_variant_rates.get(units.variant, price.image_rate) if units.variant else price.image_rate
    return (
        input_rate,
        cached_rate,
        output_rate,
        image_rate,
        price.audio_second_rate,
        price.video_second_rate,
        price.character_rate,
        price.call_rate,
    )


_quantities = operator.attrgetter(*unit_names)


def unit_quantities(units: Units) -> tuple[int, ...]:
    quantities: tuple[int, ...] = _quantities(units)
    return quantities


def price_micros(price: ModelPrice, units: Units) -> int:
    """The cost of ``units`` under ``price`` in micro-credits. The single rounding point."""
    # map(mul) and attrgetter run in C: a capture and every audited one price here (3.4 -> 1.35 µs).
    scaled = sum(map(operator.mul, _quantities(units), unit_rates(price, units)))
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
            call_rate=web_search_call_rate,
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
            call_rate=web_search_call_rate,
            minimum_charge_micros=10,
            context_tiers=(
                ContextTier(
                    above_tokens=32_768,
                    input_token_rate=5_000_000,
                    cached_input_token_rate=2_500_000,
                    output_token_rate=15_000_000,
                ),
            ),
        ),
        ModelPrice(
            model="sim-embed-small",
            category="embedding",
            pool="default",
            context_length=8_192,
            max_output_tokens=0,
            input_token_rate=20_000,
        ),
        ModelPrice(
            model="sim-image",
            category="image",
            pool="default",
            image_rate=40_000_000_000,  # 0.04 credits per image
            image_variant_rates={
                "1024x1024/standard": 40_000_000_000,
                "1024x1024/hd": 80_000_000_000,
                "1792x1024/standard": 80_000_000_000,
                "1792x1024/hd": 120_000_000_000,
            },
        ),
        ModelPrice(
            model="sim-tts",
            category="audio",
            pool="default",
            character_rate=15_000_000,  # 15 credits per 1M characters
        ),
        ModelPrice(
            model="sim-whisper",
            category="audio",
            pool="default",
            audio_second_rate=100_000_000,  # 0.0001 credits per second
        ),
        ModelPrice(
            model="sim-video",
            category="video",
            pool="default",
            video_second_rate=50_000_000_000,  # 0.05 credits per second
            call_rate=0,
            minimum_charge_micros=10_000,
        ),
    ]
    models.append(
        # SmolLM2-135M-Instruct as llama.cpp's server runs it (compose/llama.sh): rates that make every
        # token visible in a charge (1 micro per prompt token, 2 per generated token).
        ModelPrice(
            model="smollm2-135m-instruct",
            category="chat",
            pool="default",
            owned_by="HuggingFaceTB",
            context_length=2_048,
            max_output_tokens=1_024,
            input_token_rate=1_000_000,
            cached_input_token_rate=500_000,
            output_token_rate=2_000_000,
        )
    )
    # Chat models the reference documents' examples name (deepseek-v4-pro for /v1/messages and the
    # root base_url, Qwen/Qwen3.5-4B for /openai/v1), on the simulated backends.
    models += [
        ModelPrice(
            model="deepseek-v4-pro",
            category="chat",
            pool="default",
            owned_by="deepseek",
            context_length=131_072,
            max_output_tokens=8_192,
            input_token_rate=500_000,
            cached_input_token_rate=125_000,
            output_token_rate=2_000_000,
            call_rate=web_search_call_rate,
        ),
        ModelPrice(
            model="Qwen/Qwen3.5-4B",
            category="chat",
            pool="default",
            owned_by="qwen",
            context_length=32_768,
            max_output_tokens=4_096,
            input_token_rate=50_000,
            cached_input_token_rate=25_000,
            output_token_rate=200_000,
            call_rate=web_search_call_rate,
        ),
    ]
    # Rerank and text pair scoring models the reference documents' examples name (Casola's
    # qwen3-0.6b-fp8-score on /openai/v1/rerank, EmpirioLabs' qwen3-rerank on /v1/reranks): priced per
    # input token, the query read once per document (qwen3-rerank: 0.0000079 for 79 tokens, as there).
    models += [
        ModelPrice(
            model="qwen3-0.6b-fp8-score",
            category="rerank",
            pool="default",
            owned_by="qwen",
            context_length=32_768,
            max_output_tokens=0,
            input_token_rate=50_000,  # 0.05 credits per 1M tokens
        ),
        ModelPrice(
            model="qwen3-rerank",
            category="rerank",
            pool="default",
            owned_by="qwen",
            context_length=32_768,
            max_output_tokens=0,
            input_token_rate=100_000,  # 0.10 credits per 1M tokens
        ),
    ]
    return PriceBook(version="2026-11-01", models={price.model: price for price in models})
