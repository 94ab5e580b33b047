"""Price books and the one place where usage becomes money, catalog rows and statement rates.

Rates are integer micro-credits per million units (per million tokens of each kind, images, seconds,
characters, requests, search units, byte-days or tool invocations), so that per-token prices far
below a micro-credit stay exact: a statement sums quantity x rate over a period before it divides.

The charge of one request (``price_micros``), defined once:

1. each unit's quantity times its rate (the context tier is chosen by the prompt's length, counting
   every kind of prompt token; an image's rate by its ``size/quality`` variant), summed;
2. for a request sent at batch prices (``"service_tier": "flex"``), times (100 - the model's batch
   discount percent) / 100;
3. divided by one million and rounded UP to the next micro-credit, once, on the total;
4. raised to the model's minimum charge.

Every step is monotonic in every unit when the book is (``price_problems``: no negative rate, tiers
that never get cheaper as prompts grow), so a request never costs more than the worst case it was
held for (``worst_case_micros``).
"""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass
from decimal import Decimal

import msgspec

from schemas.events import Event, PriceBookPublished
from schemas.prices import Category, ContextTier, ModelPrice, PriceBook, PricingRow
from schemas.resources import GpuClass, PlanPrice
from schemas.units import Units, tools

__all__ = [
    "Category",
    "ContextTier",
    "ModelPrice",
    "PriceBook",
    "PriceBooks",
    "Priced",
    "PricingRow",
    "catalog_rows",
    "default_price_book",
    "image_aspect_ratios",
    "image_resolutions_px",
    "kind_of",
    "modalities",
    "price_breakdown",
    "price_micros",
    "price_problems",
    "prices_by_resolution",
    "resolution_size",
    "tier_label",
    "tiered_units",
    "unit_names",
    "unit_quantities",
    "unit_rates",
    "usd_per_unit",
    "worst_case_micros",
]

units_per_rate = 1_000_000
percent = 100
# A web search the platform runs (chat's web_search_options, the Responses API's hosted web_search
# tool) is a tool invocation, priced per call (``tool_call_rates["web_search"]``): 0.01 credits each.
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


# The priced dimensions of Units, in the order statements and the catalog list them.
token_units = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "image_input_tokens",
    "audio_input_tokens",
    "output_tokens",
    "reasoning_tokens",
)
tool_units = tuple(f"{tool}_calls" for tool in tools)
unit_names = (
    *token_units,
    "images",
    "audio_seconds",
    "video_seconds",
    "characters",
    "calls",
    "search_units",
    "storage_byte_days",
    *tool_units,
)
# Units whose rate a pricing tier chooses (context tiers: tokens; variants: images); a line or catalog
# row of any other unit has no tier.
tiered_units = (*token_units, "images")
# Units whose quantity a prompt shares: the worst case puts the text of a prompt in the dearest
# of these, and generated tokens in the dearer of output and reasoning.
_text_prompt_units = ("input_tokens", "cached_input_tokens", "cache_write_tokens")
_generated_units = ("output_tokens", "reasoning_tokens")


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def billed_seconds(duration_ms: int) -> int:
    """Audio and video are billed by the started second, at least one: integers only, as money is."""
    return max(1, _ceil_div(duration_ms, 1000))


def _tier(price: ModelPrice, prompt_tokens: int) -> ContextTier | None:
    """The highest tier the prompt is above (of equal ones, the last listed); tiers come in any order."""
    chosen: ContextTier | None = None
    for tier in price.context_tiers:
        if prompt_tokens > tier.above_tokens and (chosen is None or tier.above_tokens >= chosen.above_tokens):
            chosen = tier
    return chosen


def _token_rates(rates: ModelPrice | ContextTier) -> tuple[int, ...]:
    """The rates of ``token_units`` of a model's base or of one of its tiers, each ``None`` resolved."""
    input_rate, output_rate = rates.input_token_rate, rates.output_token_rate

    def either(rate: int | None, fallback: int) -> int:
        return fallback if rate is None else rate

    return (
        input_rate,
        rates.cached_input_token_rate,
        either(rates.cache_write_token_rate, input_rate),
        either(rates.image_input_token_rate, input_rate),
        either(rates.audio_input_token_rate, input_rate),
        output_rate,
        either(rates.reasoning_token_rate, output_rate),
    )


def _image_rate(price: ModelPrice, variant: str) -> int:
    return price.image_variant_rates.get(variant, price.image_rate) if variant else price.image_rate


def _search_rate(price: ModelPrice, variant: str) -> int:
    return price.search_variant_rates.get(variant, price.search_unit_rate) if variant else price.search_unit_rate


def unit_rates(price: ModelPrice, units: Units) -> tuple[int, ...]:
    """The rate (micros per million units) that applies to each of ``unit_names`` for ``units``:
    the context tier is chosen by the prompt, the image rate by the variant. Pure."""
    tier = _tier(price, units.prompt_tokens) if price.context_tiers else None
    tool_rates = price.tool_call_rates
    return (
        *_token_rates(tier if tier is not None else price),
        _image_rate(price, units.variant),
        price.audio_second_rate,
        price.video_second_rate,
        price.character_rate,
        price.call_rate,
        _search_rate(price, units.variant),
        price.storage_byte_day_rate,
        *(tool_rates.get(tool, 0) for tool in tools),
    )


_quantities = operator.attrgetter(*unit_names)


def unit_quantities(units: Units) -> tuple[int, ...]:
    quantities: tuple[int, ...] = _quantities(units)
    return quantities


def discount_percent(price: ModelPrice, units: Units) -> int:
    """The batch discount that applies to ``units`` (0 unless sent at batch prices)."""
    return price.batch_discount_percent if units.batch else 0


def _rounded(scaled: int, discount: int) -> int:
    """Steps 2 and 3 of the module doc: the discount, then one division rounded up."""
    return _ceil_div(scaled * (percent - discount), percent * units_per_rate)


def price_micros(price: ModelPrice, units: Units) -> int:
    """The cost of ``units`` under ``price`` in micro-credits. The single rounding point."""
    # map(mul) and attrgetter run in C: a capture and every audited one price here.
    scaled = sum(map(operator.mul, _quantities(units), unit_rates(price, units)))
    assert scaled >= 0, "units and rates are never negative"
    return max(_rounded(scaled, discount_percent(price, units)), price.minimum_charge_micros)


@dataclass(frozen=True, slots=True)
class Priced:
    """How ``price_micros`` arrived at a charge: what usage rows, usage objects and statements show."""

    rates: tuple[int, ...]  # per unit of ``unit_names``
    scaled: int  # sum of quantity x rate, micros x 1,000,000 (before any discount)
    discount_percent: int
    rounded_micros: int  # after the discount, rounded up once
    minimum_topup_micros: int  # what the minimum charge added
    tier_label: str

    @property
    def micros(self) -> int:
        return self.rounded_micros + self.minimum_topup_micros


def price_breakdown(price: ModelPrice, units: Units) -> Priced:
    """``price_micros``, step by step (tests/unit/test_money_pricing.py holds them equal)."""
    rates = unit_rates(price, units)
    scaled = sum(map(operator.mul, _quantities(units), rates))
    discount = discount_percent(price, units)
    rounded = _rounded(scaled, discount)
    topup = max(price.minimum_charge_micros - rounded, 0)
    return Priced(rates, scaled, discount, rounded, topup, tier_label(price, units))


def worst_case_micros(price: ModelPrice, bound: Units) -> int:
    """What a hold for ``bound`` must reserve: the most any usage within it can cost. ``bound`` counts
    a prompt's text tokens in ``input_tokens`` (a worker may report them uncached, read from or
    written to a cache) and generated tokens in ``output_tokens`` (output or reasoning); every other
    unit is bounded on its own. Each shared budget is priced at the dearest kind it may turn into,
    at the tier of the longest prompt (tiers never get cheaper: ``price_problems``)."""
    rates = dict(zip(unit_names, unit_rates(price, bound), strict=True))
    text = sum(getattr(bound, unit) for unit in _text_prompt_units)
    generated = sum(getattr(bound, unit) for unit in _generated_units)
    text_unit = max(_text_prompt_units, key=lambda unit: rates[unit])
    generated_unit = max(_generated_units, key=lambda unit: rates[unit])
    worst: dict[str, int] = {unit: 0 for unit in (*_text_prompt_units, *_generated_units)}
    worst[text_unit] = text
    worst[generated_unit] += generated
    return price_micros(price, msgspec.structs.replace(bound, **worst))


def _tier_ladder(price: ModelPrice) -> list[tuple[str, int | None, ContextTier | ModelPrice]]:
    """(label, above_prompt_tokens, rates) of the base and each tier, in the order they apply."""
    tiers = sorted(price.context_tiers, key=lambda tier: tier.above_tokens)
    if not tiers:
        return [("", None, price)]
    base = price.base_tier_label or f"Up to {tiers[0].above_tokens:,} prompt tokens"
    return [(base, None, price)] + [
        (tier.label or f"Over {tier.above_tokens:,} prompt tokens", tier.above_tokens, tier) for tier in tiers
    ]


def tier_label(price: ModelPrice, units: Units) -> str:
    """The ``pricing_tier_label`` of ``units``: the context tier or the image variant whose rates
    applied, "" for a model with one rate per unit."""
    if price.context_tiers:
        tier = _tier(price, units.prompt_tokens)
        if tier is None:
            return _tier_ladder(price)[0][0]
        return tier.label or f"Over {tier.above_tokens:,} prompt tokens"
    if units.variant and units.variant in price.image_variant_rates:
        return units.variant
    if units.variant and units.variant in price.search_variant_rates:
        return units.variant
    return ""


_default_modalities: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "chat": (("text",), ("text",)),
    "embedding": (("text",), ("embeddings",)),
    "image": (("text",), ("image",)),
    "video": (("text",), ("video",)),
    "3d": (("image",), ("3d",)),
    "speech": (("text",), ("audio",)),
    "transcription": (("audio",), ("text",)),
    "music": (("text",), ("audio",)),
    "rerank": (("text",), ("scores",)),
    "storage": (("file",), ("file",)),
    "search": (("text",), ("text",)),
    "answer": (("text",), ("text",)),
    "detection": (("text",), ("text",)),
    "vision": (("text", "image"), ("text",)),
    "pii": (("text",), ("text",)),
    "agent": (("text",), ("text",)),
}


def kind_of(price: ModelPrice) -> str:
    """The category, with audio told apart: ``speech`` (priced per character), ``music`` (per second of
    audio generated: audio among its output modalities) or ``transcription`` (per second of audio read)."""
    if price.category == "audio":
        if price.character_rate > 0 or not price.audio_second_rate:
            return "speech"
        # Priced per second either way: audio out (music, sound) or audio in (transcription).
        return "music" if "audio" in price.output_modalities else "transcription"
    return price.category


def modalities(price: ModelPrice) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(input, output) modalities: the book's, or what the model's kind implies."""
    default_in, default_out = _default_modalities[kind_of(price)]
    return price.input_modalities or default_in, price.output_modalities or default_out


def _listed_token_units(price: ModelPrice) -> tuple[str, ...]:
    """The token kinds a request to this model can use: a chat model's every kind its inputs allow
    (image and audio input only when it reads them); other models' prompts are plain (or cached) text."""
    if price.category == "embedding" and "image" in modalities(price)[0]:
        return ("input_tokens", "cached_input_tokens", "image_input_tokens")  # image items of a multimodal embedder
    if price.category not in ("chat", "vision"):
        return ("input_tokens", "cached_input_tokens", "output_tokens")  # output: a search's summaries
    inputs = modalities(price)[0]
    skipped = {"image_input_tokens": "image", "audio_input_tokens": "audio"}
    return tuple(unit for unit in token_units if skipped.get(unit, "text") in inputs)


def catalog_rows(price: ModelPrice) -> list[PricingRow]:
    """Every rate of a model: each token kind at each context tier, each image variant, every other
    priced unit, the minimum charge and the batch discount. Rates of 0 (free units) and token kinds
    the model cannot be sent are left out. A usage's counts and ``pricing_tier_label`` recompute its
    charge from these (README: Pricing)."""
    rows: list[PricingRow] = []
    listed = _listed_token_units(price)
    for label, above, rates in _tier_ladder(price):
        for unit, rate in zip(token_units, _token_rates(rates), strict=True):
            if rate and unit in listed:
                rows.append(PricingRow(unit=unit, tier=label, above_prompt_tokens=above, rate_micros_per_million=rate))
    for variant, rate in price.image_variant_rates.items():
        rows.append(PricingRow(unit="images", tier=variant, rate_micros_per_million=rate))
    for variant, rate in price.search_variant_rates.items():
        rows.append(PricingRow(unit="search_units", tier=variant, rate_micros_per_million=rate))
    # Units with one rate (images: the rate of any variant the book does not name).
    flat = dict(zip(unit_names, unit_rates(price, Units()), strict=True))
    for unit in unit_names[len(token_units) :]:
        if flat[unit]:
            rows.append(PricingRow(unit=unit, rate_micros_per_million=flat[unit]))
    if price.minimum_charge_micros:
        rows.append(
            PricingRow(unit="minimum_charge", rate_micros_per_million=price.minimum_charge_micros * units_per_rate)
        )
    if price.batch_discount_percent:
        rows.append(PricingRow(unit="batch_discount", percent=price.batch_discount_percent))
    return rows


def usd_per_unit(rate_micros_per_million: int, scale: int = 1) -> Decimal:
    """A rate as exact US dollars for ``scale`` units (1 credit = 1 USD): 150_000 -> 0.00000015."""
    value = Decimal(rate_micros_per_million * scale).scaleb(-12)
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value.normalize()


def price_problems(price: ModelPrice) -> list[str]:
    """What makes a price unusable, each as a sentence saying how to fix it; empty when it is fine.

    A book is accepted only when every request's cost is monotonic in every unit, which is what keeps
    a capture within its hold: no negative rate, discount or minimum, and context tiers that never
    get cheaper, in any token kind, as the prompt grows."""
    problems: list[str] = []
    named: dict[str, int | None] = {
        key: value
        for key, value in msgspec.structs.asdict(price).items()
        if key.endswith("_rate") or key.endswith("_micros")
    }
    named.update({f"tool_call_rates.{tool}": rate for tool, rate in price.tool_call_rates.items()})
    named.update({f"image_variant_rates.{variant}": rate for variant, rate in price.image_variant_rates.items()})
    named.update({f"search_variant_rates.{variant}": rate for variant, rate in price.search_variant_rates.items()})
    for index, tier in enumerate(price.context_tiers):
        named.update(
            {f"context_tiers[{index}].{k}": v for k, v in msgspec.structs.asdict(tier).items() if k.endswith("_rate")}
        )
    problems.extend(f"{name} must not be negative" for name, value in named.items() if value is not None and value < 0)
    if not 0 <= price.batch_discount_percent <= percent:
        problems.append("batch_discount_percent must lie in 0..100")
    ladder = _tier_ladder(price)
    for (_, _, lower), (label, _, upper) in itertools.pairwise(ladder):
        for unit, low, high in zip(token_units, _token_rates(lower), _token_rates(upper), strict=True):
            if high < low:
                problems.append(
                    f"context tier '{label}' prices {unit} at {high}, below the tier before it ({low}): "
                    "a longer prompt must never cost less per token"
                )
    return problems


built_in_price_version = "2026-12-03"


def default_price_book() -> PriceBook:
    """The price book a fresh Tollgate starts with. Rates in micros per million units."""
    models = [
        ModelPrice(
            model="sim-chat-small",
            category="chat",
            pool="default",
            description="Simulated small chat model: fast and cheap; reads text and images.",
            input_modalities=("text", "image"),
            features=("streaming", "vision", "tool_calling", "web_search", "json_mode"),
            context_length=32_768,
            max_output_tokens=4_096,
            input_token_rate=150_000,  # 0.15 credits per 1M input tokens (image tokens too)
            cached_input_token_rate=75_000,
            output_token_rate=600_000,  # 0.60 credits per 1M output tokens
            tool_call_rates={"web_search": web_search_call_rate},
        ),
        ModelPrice(
            model="sim-chat-large",
            category="chat",
            pool="default",
            description=(
                "Simulated large chat model: long context priced in two tiers, vision and audio input, prompt"
                " caching, web search per call, half price at batch rates."
            ),
            input_modalities=("text", "image", "audio", "file"),
            features=(
                "streaming",
                "vision",
                "audio_input",
                "tool_calling",
                "web_search",
                "json_mode",
                "prompt_caching",
                "batch",
            ),
            context_length=131_072,
            max_output_tokens=8_192,
            input_token_rate=2_500_000,
            cached_input_token_rate=1_250_000,
            cache_write_token_rate=3_125_000,  # 1.25x input, as prompt caches commonly charge
            output_token_rate=10_000_000,
            minimum_charge_micros=10,
            context_tiers=(
                ContextTier(
                    above_tokens=32_768,
                    input_token_rate=5_000_000,
                    cached_input_token_rate=2_500_000,
                    cache_write_token_rate=6_250_000,
                    output_token_rate=15_000_000,
                ),
            ),
            tool_call_rates={"web_search": web_search_call_rate},
            batch_discount_percent=50,
        ),
        ModelPrice(
            model="sim-research",
            category="chat",
            pool="default",
            description=(
                "Simulated research model: reasons before it answers and runs its own search queries; billed per"
                " token of each kind, per search query and per request."
            ),
            features=("streaming", "reasoning", "web_search"),
            context_length=65_536,
            max_output_tokens=8_192,
            input_token_rate=2_000_000,
            cached_input_token_rate=1_000_000,
            output_token_rate=8_000_000,
            reasoning_token_rate=3_000_000,
            search_unit_rate=5_000_000_000,  # 0.005 credits per search query
            call_rate=5_000_000_000,  # 0.005 credits per request
        ),
        ModelPrice(
            model="sim-embed-small",
            category="embedding",
            pool="default",
            description="Simulated text embedding model (64 dimensions by default).",
            context_length=8_192,
            max_output_tokens=0,
            input_token_rate=20_000,
            batch_discount_percent=50,
        ),
        ModelPrice(
            model="sim-image",
            category="image",
            pool="default",
            description="Simulated image generation: PNG images priced by size and quality.",
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
            description="Simulated text to speech: WAV audio priced per input character.",
            character_rate=15_000_000,  # 15 credits per 1M characters
        ),
        ModelPrice(
            model="sim-whisper",
            category="audio",
            pool="default",
            description="Simulated transcription: priced per second of audio, by the started second.",
            audio_second_rate=100_000_000,  # 0.0001 credits per second
        ),
        ModelPrice(
            model="sim-video",
            category="video",
            pool="default",
            description="Simulated video generation (always async): priced per second, at least 0.01 credits.",
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
            description="SmolLM2-135M-Instruct served by llama.cpp (the upstream test tier).",
            hugging_face_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            features=("streaming",),
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
            description="DeepSeek V4 Pro as the reference's examples name it (simulated): thinking, tools, web search.",
            features=("streaming", "tool_calling", "web_search", "reasoning"),
            context_length=131_072,
            max_output_tokens=8_192,
            input_token_rate=500_000,
            cached_input_token_rate=125_000,
            output_token_rate=2_000_000,
            tool_call_rates={"web_search": web_search_call_rate},
        ),
        ModelPrice(
            model="Qwen/Qwen3.5-4B",
            category="chat",
            pool="default",
            owned_by="qwen",
            description="Qwen3.5-4B as the reference's examples name it (simulated).",
            features=("streaming", "tool_calling", "web_search"),
            context_length=32_768,
            max_output_tokens=4_096,
            input_token_rate=50_000,
            cached_input_token_rate=25_000,
            output_token_rate=200_000,
            tool_call_rates={"web_search": web_search_call_rate},
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
    # Audio models the reference documents' examples name, on the simulated backends: transcription
    # (Casola's whisper-large-v3-turbo, EmpirioLabs' openai-whisper-1 and deepgram-nova-3) priced per
    # second of audio; speech (Qwen3-TTS, gemini-2-5-flash-tts, soulx-podcast, inworld-tts-mini,
    # tts-1-5-mini) per character. tts-1-5-mini's rate makes the 47 characters of EmpirioLabs' streaming
    # example cost the 0.0006 credits its audio.done event shows.
    models += [
        _transcriber("whisper-large-v3-turbo", "openai", 50_000_000),  # 0.003 credits per minute
        _transcriber("openai-whisper-1", "openai", 100_000_000),  # 0.006 credits per minute
        _transcriber("deepgram-nova-3", "deepgram", 72_000_000),
        ModelPrice(
            model="stable-audio-2-5",
            category="audio",
            pool="default",
            owned_by="stability",
            description="Stable Audio 2.5 as the reference's examples name it (simulated): music per second generated.",
            input_modalities=("text",),
            output_modalities=("audio",),
            audio_second_rate=2_000_000_000,  # 0.002 credits per second
        ),
        _speaker("Qwen3-TTS", "qwen", 10_000_000),  # 10 credits per 1M characters
        _speaker("gemini-2-5-flash-tts", "google", 20_000_000),
        _speaker("soulx-podcast", "soulx", 15_000_000),
        _speaker("inworld-tts-mini", "inworld", 5_000_000),
        _speaker("tts-1-5-mini", "inworld", 12_765_957),
    ]
    # Image and video models the documents' examples name: ``flux`` (Casola's quickstart, async),
    # FLUX.1-schnell and Wan 2.2 5B by their Fal slugs (POST /fal/{slug}), seedance-2-0-pro
    # (EmpirioLabs' video example), on the simulated backends.
    models += [
        ModelPrice(
            model="flux",
            category="image",
            pool="default",
            owned_by="black-forest-labs",
            description="FLUX as Casola's quickstart names it (simulated): PNG images, priced per image.",
            image_rate=3_000_000_000,  # 0.003 credits per image
        ),
        ModelPrice(
            model="black-forest-labs/FLUX.1-schnell",
            category="image",
            pool="default",
            owned_by="black-forest-labs",
            description="FLUX.1 [schnell] (simulated): PNG images, priced per image; also at its Fal slugs.",
            hugging_face_id="black-forest-labs/FLUX.1-schnell",
            image_rate=3_000_000_000,
            fal_slugs=("fal-ai/flux1-schnell-nunchaku", "fal-ai/flux/schnell"),
        ),
        ModelPrice(
            model="Wan-AI/Wan2.2-TI2V-5B",
            category="video",
            pool="default",
            owned_by="wan-ai",
            description="Wan 2.2 5B text to video (simulated, always async): priced per second; also at its Fal slug.",
            hugging_face_id="Wan-AI/Wan2.2-TI2V-5B",
            video_second_rate=20_000_000_000,  # 0.02 credits per second
            fal_slugs=("fal-ai/wan/v2.2-5b/text-to-video",),
        ),
        ModelPrice(
            model="seedance-2-0-pro",
            category="video",
            pool="default",
            owned_by="bytedance",
            description="Seedance 2.0 Pro as EmpirioLabs' video example names it (simulated, always async).",
            video_second_rate=50_000_000_000,  # 0.05 credits per second
        ),
    ]
    # 3D generation (EmpirioLabs' POST /v1/3d/generations, image to a GLB asset, always async): its
    # example's model. Priced per generation (one request: the document prices no resolution apart).
    models += [
        ModelPrice(
            model="trellis-2-4b",
            category="3d",
            pool="default",
            owned_by="microsoft",
            description="TRELLIS.2 4B image to 3D (simulated, always async): a GLB asset, priced per generation.",
            hugging_face_id="microsoft/TRELLIS.2-4B",
            max_output_tokens=0,
            call_rate=150_000_000_000,  # 0.15 credits per generation
        ),
    ]
    # Models the reference documents' examples name that the catalog lacked (issue 18, the examples
    # harness tests/e2e/test_reference_examples.py), on the simulated backends: chat (mistral-small-4 with
    # tools, qwen3-5-omni-plus with vision and audio, qwen3-5-9b on /v1/completions, qwen3-max in the
    # account usage example, qwen3-7-plus the hosted agents' default model), images (Wan 2.7 by both
    # slugs the document uses, priced by resolution; qwen-image-2-0; seedream-5-0-lite), video
    # (pixverse-v5-6) and embeddings (text-embedding-v4, tongyi-embedding-vision-plus with image
    # items, Casola's sglang-qwen3-0.6b-fp8-embed).
    models += [
        _chatter("mistral-small-4", "mistral", 100_000, 50_000, 300_000, ("streaming", "tool_calling", "json_mode")),
        ModelPrice(
            model="qwen3-5-omni-plus",
            category="chat",
            pool="default",
            owned_by="qwen",
            description="Qwen3.5 Omni Plus (simulated): reads text, images and audio.",
            input_modalities=("text", "image", "audio"),
            features=("streaming", "vision", "audio_input", "tool_calling", "json_mode"),
            context_length=65_536,
            max_output_tokens=8_192,
            input_token_rate=400_000,
            cached_input_token_rate=100_000,
            output_token_rate=1_600_000,
            audio_input_token_rate=1_000_000,
        ),
        _chatter("qwen3-5-9b", "qwen", 50_000, 25_000, 150_000, ("streaming", "tool_calling", "json_mode")),
        _chatter("qwen3-max", "qwen", 1_200_000, 240_000, 6_000_000, ("streaming", "tool_calling", "json_mode")),
        _chatter("qwen3-7-plus", "qwen", 400_000, 80_000, 1_200_000, ("streaming", "tool_calling", "json_mode")),
        _wan_image("wan-2-7-image"),
        _wan_image("wan2-7-image"),
        ModelPrice(
            model="qwen-image-2-0",
            category="image",
            pool="default",
            owned_by="qwen",
            description="Qwen-Image 2.0 (simulated): PNG images, priced per image.",
            image_rate=20_000_000_000,  # 0.02 credits per image
        ),
        ModelPrice(
            model="seedream-5-0-lite",
            category="image",
            pool="default",
            owned_by="bytedance",
            description="Seedream 5.0 Lite (simulated): PNG images, priced per image.",
            image_rate=25_000_000_000,
        ),
        ModelPrice(
            model="pixverse-v5-6",
            category="video",
            pool="default",
            owned_by="pixverse",
            description="PixVerse v5.6 (simulated, always async): priced per second.",
            video_second_rate=40_000_000_000,  # 0.04 credits per second
        ),
        _embedder("text-embedding-v4", "qwen", 70_000, ("text",)),  # 0.07 credits per 1M tokens
        _embedder("tongyi-embedding-vision-plus", "qwen", 90_000, ("text", "image")),
        _embedder("sglang-qwen3-0.6b-fp8-embed", "qwen", 10_000, ("text",)),
    ]
    # Text tools (issue 18): EmpirioLabs' search, research, answer, detection and image analysis
    # models its examples name, and Casola's PII detection, on the simulated backends
    # (workers/texttools.py). Search is priced per query at the tier the request asks for (Tavily's
    # search_depth: advanced is two of its credits; Exa's result count; Perplexity's
    # search_context_size), answers per call, detection and PII per token (a bibliography or fact
    # check also per reference or claim looked up), research per token of each kind and per query.
    models += [
        ModelPrice(
            model="tavily-search",
            category="search",
            pool="default",
            owned_by="tavily",
            description="Tavily search (simulated): per query, 0.008 credits basic, 0.016 advanced (search_depth).",
            max_output_tokens=0,
            search_unit_rate=8_000 * units_per_rate,
            search_variant_rates={
                "basic": 8_000 * units_per_rate,
                "fast": 8_000 * units_per_rate,
                "ultra-fast": 8_000 * units_per_rate,
                "advanced": 16_000 * units_per_rate,
            },
        ),
        ModelPrice(
            model="exa-search",
            category="search",
            pool="default",
            owned_by="exa",
            description=(
                "Exa neural search (simulated): per query (0.005 credits for 1-25 results, 0.025 for 26-100),"
                " summaries of results and subpages per generated token."
            ),
            max_output_tokens=0,
            output_token_rate=15_000_000,
            search_unit_rate=5_000 * units_per_rate,
            search_variant_rates={"1-25 results": 5_000 * units_per_rate, "26-100 results": 25_000 * units_per_rate},
        ),
        ModelPrice(
            model="linkup-deep-search",
            category="search",
            pool="default",
            owned_by="linkup",
            description="Linkup deep search (simulated): a sourced answer, 0.05 credits per query.",
            max_output_tokens=0,
            search_unit_rate=50_000 * units_per_rate,
        ),
        ModelPrice(
            model="exa-answer",
            category="answer",
            pool="default",
            owned_by="exa",
            description="Exa Answer (simulated): a grounded answer with citations, 0.005 credits per call.",
            max_output_tokens=0,
            call_rate=5_000 * units_per_rate,
        ),
        ModelPrice(
            model="perplexity-sonar-pro",
            category="chat",
            pool="default",
            owned_by="perplexity",
            description=(
                "Perplexity Sonar Pro (simulated): chat grounded in its own searches; per token, and per search"
                " query at its search_context_size (low, medium, high)."
            ),
            features=("streaming", "web_search"),
            context_length=200_000,
            max_output_tokens=8_192,
            input_token_rate=3_000_000,
            output_token_rate=15_000_000,
            search_unit_rate=6_000 * units_per_rate,
            search_variant_rates={
                "low": 6_000 * units_per_rate,
                "medium": 10_000 * units_per_rate,
                "high": 14_000 * units_per_rate,
            },
        ),
        ModelPrice(
            model="perplexity-advanced-deep-research",
            category="chat",
            pool="default",
            owned_by="perplexity",
            description=(
                "Perplexity Advanced Deep Research (simulated): a cited report; per token of each kind (citation"
                " tokens as input), per search query and per request."
            ),
            features=("streaming", "reasoning", "web_search"),
            context_length=128_000,
            max_output_tokens=16_384,
            input_token_rate=2_000_000,
            cached_input_token_rate=1_000_000,
            output_token_rate=8_000_000,
            reasoning_token_rate=3_000_000,
            search_unit_rate=5_000 * units_per_rate,
        ),
        ModelPrice(
            model="tavily-research",
            category="chat",
            pool="default",
            owned_by="tavily",
            description="Tavily Research (simulated): a cited report; per token and per search query.",
            features=("streaming", "reasoning", "web_search"),
            context_length=128_000,
            max_output_tokens=16_384,
            input_token_rate=1_000_000,
            output_token_rate=4_000_000,
            search_unit_rate=8_000 * units_per_rate,
        ),
        ModelPrice(
            model="gptzero",
            category="detection",
            pool="default",
            owned_by="gptzero",
            description=(
                "GPTZero (simulated): AI detection per input token; a bibliography or fact check also per"
                " reference or claim looked up."
            ),
            context_length=50_000,
            max_output_tokens=0,
            input_token_rate=10_000_000,
            search_unit_rate=2_000 * units_per_rate,
        ),
        ModelPrice(
            model="janus-pro-deepseek",
            category="vision",
            pool="default",
            owned_by="deepseek",
            description="Janus Pro (simulated): answers a question about an image; per token, image tokens as input.",
            context_length=16_384,
            max_output_tokens=1_024,
            input_token_rate=200_000,
            output_token_rate=800_000,
        ),
        ModelPrice(
            model="pii-redact",
            category="pii",
            pool="default",
            owned_by="tollgate",
            description="PII detection and redaction (simulated, Casola's /openai/v1/pii): per input token.",
            context_length=32_768,
            max_output_tokens=0,
            input_token_rate=100_000,
        ),
    ]
    # Agents (POST /v1/agents/run; EmpirioLabs' Manus): a task's steps are priced by the tokens each
    # reads and writes. One run of the agent (a task, or a follow-up to it) is bounded by the model's
    # ``context_length`` (the prompt tokens all its steps read together) and ``max_output_tokens``
    # (what they write together): its hold, and where the agent stops.
    models += [
        ModelPrice(
            model="manus",
            category="agent",
            pool="default",
            owned_by="manus",
            description="Manus as EmpirioLabs' agents example names it (simulated): a long-running task of "
            "reasoning and tool steps, each priced by the tokens it reads and writes.",
            context_length=40_000,
            max_output_tokens=4_000,
            input_token_rate=2_000_000,  # 2 credits per 1M tokens read by the steps
            output_token_rate=8_000_000,  # 8 credits per 1M tokens written
        ),
    ]
    # Files (/v1/files) are charged per byte-day stored, daily, by the ledger (ledger/storage.py).
    models.append(
        ModelPrice(
            model="file-storage",
            category="storage",
            pool="default",
            description="Storage of uploaded files (/v1/files): priced per byte-day, charged daily.",
            max_output_tokens=0,
            storage_byte_day_rate=4,  # 0.004 credits per GB-day (0.12 per GB-month)
        )
    )
    # A version never changes (tests/unit/test_built_in_price_book.py pins this one's digest): any change
    # to the built-in book's models or prices comes with a new version.
    return PriceBook(
        version=built_in_price_version,
        models={price.model: price for price in models},
        gpu_classes={gpu.slug: gpu for gpu in default_gpu_classes()},
        plans={plan.slug: plan for plan in default_plans()},
    )


def default_gpu_classes() -> list[GpuClass]:
    """The GPU Cloud catalog of the demo (EmpirioLabs' GpuType examples): hourly rates per GPU,
    billed by the second (ledger/resources.py)."""
    return [
        GpuClass(
            slug="rtx-4090",
            name="RTX 4090",
            hourly_micros=650_000,
            vram_gb=24,
            max_gpus=8,
            available_count=21,
            regions=("us-east", "eu-west"),
        ),
        GpuClass(
            slug="h100-nvl",
            name="H100 NVL",
            hourly_micros=5_600_000,
            vram_gb=94,
            max_gpus=8,
            available_count=8,
            regions=("us-east",),
        ),
    ]


def default_plans() -> list[PlanPrice]:
    """The hosted-agent plans of the demo (EmpirioLabs' HostedAgentPlan example)."""
    return [
        PlanPrice(
            slug="hosted-agent-basic",
            display_name="Hosted Agent Basic",
            description="One OpenClaw or Hermes agent runtime, 10,000 messages a month.",
            monthly_micros=15_000_000,
            included_messages_monthly=10_000,
            replica_min=1,
            replica_max=3,
        )
    ]


def _transcriber(model: str, owner: str, audio_second_rate: int) -> ModelPrice:
    return ModelPrice(
        model=model,
        category="audio",
        pool="default",
        owned_by=owner,
        description=f"{model} as the reference's examples name it (simulated): WAV or MP3, per second of audio.",
        audio_second_rate=audio_second_rate,
    )


def _speaker(model: str, owner: str, character_rate: int) -> ModelPrice:
    return ModelPrice(
        model=model,
        category="audio",
        pool="default",
        owned_by=owner,
        description=f"{model} as the reference's examples name it (simulated): WAV, MP3 or PCM, per character.",
        features=("streaming",),
        character_rate=character_rate,
    )


def _chatter(
    model: str, owner: str, input_rate: int, cached_rate: int, output_rate: int, features: tuple[str, ...]
) -> ModelPrice:
    return ModelPrice(
        model=model,
        category="chat",
        pool="default",
        owned_by=owner,
        description=f"{model} as the reference's examples name it (simulated).",
        features=features,
        context_length=32_768,
        max_output_tokens=4_096,
        input_token_rate=input_rate,
        cached_input_token_rate=cached_rate,
        output_token_rate=output_rate,
    )


def _wan_image(model: str) -> ModelPrice:
    """Wan 2.7 Image, priced by ``resolution`` (EmpirioLabs' model page: 0.030 per image, 0.075 for
    the Pro tier's 4K); ``aspect_ratio`` shapes it (``image_resolutions_px``)."""
    return ModelPrice(
        model=model,
        category="image",
        pool="default",
        owned_by="alibaba",
        description="Wan 2.7 Image (simulated): up to 4K PNG images in nine aspect ratios, priced by resolution.",
        input_modalities=("text",),
        image_rate=30_000_000_000,
        image_variant_rates={"1K": 30_000_000_000, "2K": 30_000_000_000, "4K": 75_000_000_000},
    )


def _embedder(model: str, owner: str, input_rate: int, inputs: tuple[str, ...]) -> ModelPrice:
    return ModelPrice(
        model=model,
        category="embedding",
        pool="default",
        owned_by=owner,
        description=f"{model} as the reference's examples name it (simulated): "
        + ("text and image items." if "image" in inputs else "text."),
        input_modalities=inputs if inputs != ("text",) else (),
        context_length=8_192,
        max_output_tokens=0,
        input_token_rate=input_rate,
    )


# Image models priced by EmpirioLabs' ``resolution`` rather than OpenAI's ``size/quality`` (a book's
# variants all among these): the longer side in pixels of each, the shorter one from ``aspect_ratio``.
image_resolutions_px = {"1K": 1024, "2K": 2048, "4K": 3840}
image_aspect_ratios = ("1:1", "16:9", "9:16", "3:2", "2:3", "4:3", "3:4", "5:4", "4:5")


def prices_by_resolution(price: ModelPrice) -> bool:
    return bool(price.image_variant_rates) and set(price.image_variant_rates) <= set(image_resolutions_px)


def resolution_size(resolution: str, aspect_ratio: str) -> tuple[int, int]:
    """(width, height) of an image of ``resolution`` ("4K") at ``aspect_ratio`` ("16:9"): the longer
    side the resolution's pixels, the shorter one in proportion, down to a multiple of 8 (4K 16:9 is
    3840x2160)."""
    across, down = (int(part) for part in aspect_ratio.split(":"))
    longer = image_resolutions_px[resolution]
    shorter = longer * min(across, down) // max(across, down) // 8 * 8
    return (longer, shorter) if across >= down else (shorter, longer)
