"""Price books on the wire: versioned, published as events, integer rates in micros per million units.

A rate left ``None`` follows another one (documented on the field), so a book names only what
differs. ``ledger/pricing.py`` is the one place that turns these into money, catalog rows and
statement lines; ``PricingRow`` is how the catalog lists them.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.resources import GpuClass, PlanPrice
from schemas.units import Tool

Category = Literal[
    "chat",
    "embedding",
    "image",
    "audio",
    "video",
    "rerank",
    "storage",
    # EmpirioLabs' text tools (POST /v1/search, /v1/answer, /v1/detect, /v1/images/analysis) and
    # Casola's PII detection (/openai/v1/pii); research models are chat models with search queries.
    "search",
    "answer",
    "detection",
    "vision",
    "pii",
    # EmpirioLabs' agents (POST /v1/agents/run): a task's steps priced by the tokens they read and write.
    "agent",
    # EmpirioLabs' image to 3D (POST /v1/3d/generations): a GLB asset per generation.
    "3d",
]


class ContextTier(msgspec.Struct, frozen=True, kw_only=True):
    """Token rates that apply instead of the base ones when the prompt (every kind of prompt token) is
    longer than ``above_tokens``. A rate left ``None`` is the tier's input rate (cache writes, image
    and audio input) or its output rate (reasoning)."""

    above_tokens: int
    input_token_rate: int
    cached_input_token_rate: int
    output_token_rate: int
    cache_write_token_rate: int | None = None
    image_input_token_rate: int | None = None
    audio_input_token_rate: int | None = None
    reasoning_token_rate: int | None = None
    # What a usage's pricing_tier_label says when this tier applied ("" : "Over <n> prompt tokens").
    label: str = ""


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
    # Token kinds beyond input and output; None: the input rate (cache writes, image and audio input)
    # or the output rate (reasoning).
    cache_write_token_rate: int | None = None
    image_input_token_rate: int | None = None
    audio_input_token_rate: int | None = None
    reasoning_token_rate: int | None = None
    search_unit_rate: int = 0
    # Search queries by tier (Tavily's search_depth "advanced", Perplexity's search_context_size "high"):
    # the usage's variant names the tier; search_unit_rate prices any other.
    search_variant_rates: dict[str, int] = msgspec.field(default_factory=dict)
    storage_byte_day_rate: int = 0
    # Per invocation of a tool the platform runs (web search...), micros per million invocations.
    tool_call_rates: dict[Tool, int] = msgspec.field(default_factory=dict)
    # Off the whole charge (before the minimum) of a request sent with "service_tier": "flex".
    batch_discount_percent: int = 0
    # The pricing_tier_label of the base token rates of a model with context tiers ("": "Up to <n>
    # prompt tokens").
    base_tier_label: str = ""
    # The catalog's description of the model (EmpirioLabs' model object).
    description: str = ""
    # Empty: what the category implies (chat: text in and out; image: text in, image out; ...).
    input_modalities: tuple[str, ...] = ()
    output_modalities: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    hugging_face_id: str = ""
    # Fal-compatible slugs that name this model (Casola's Fal queue: POST /fal/{slug}); a slug names
    # one model of a book.
    fal_slugs: tuple[str, ...] = ()


class PricingRow(msgspec.Struct, frozen=True, kw_only=True):
    """One rate of a model as the catalog lists it: what recomputes any charge from a usage object.

    ``unit`` is a priced unit (``ledger.pricing.unit_names``: the usage shows its count), or
    ``minimum_charge`` (``rate_micros_per_million`` per million requests: the least a request costs)
    or ``batch_discount`` (``percent`` off a request sent with ``"service_tier": "flex"``). ``tier`` is
    the ``pricing_tier_label`` a usage names when this rate applied ("" for a unit with one rate)."""

    unit: str
    tier: str = ""
    above_prompt_tokens: int | None = None  # a context tier: applies to prompts longer than this
    rate_micros_per_million: int = 0
    percent: int | None = None


class Route(msgspec.Struct, frozen=True, kw_only=True):
    """A model and the pool whose upstream serves it: where a worker sends a fallback."""

    model: str
    pool: str


class PriceBook(msgspec.Struct, frozen=True, kw_only=True):
    version: str
    models: dict[str, ModelPrice]
    # Time-metered resources and monthly plans (issue 18), by slug.
    gpu_classes: dict[str, GpuClass] = msgspec.field(default_factory=dict)
    plans: dict[str, PlanPrice] = msgspec.field(default_factory=dict)

    def model(self, model_id: str) -> ModelPrice | None:
        return self.models.get(model_id)

    def fal_model(self, slug: str) -> ModelPrice | None:
        """The model a Fal slug names: the one that lists it in ``fal_slugs``, else the model whose id
        it is."""
        for price in self.models.values():
            if slug in price.fal_slugs:
                return price
        return self.models.get(slug)

    def may_serve(self, requested: str, served: str) -> bool:
        """Whether ``served`` may answer a request for ``requested``: itself or one of its fallbacks."""
        price = self.models.get(requested)
        return served == requested or (price is not None and served in price.fallbacks and served in self.models)

    @property
    def current(self) -> PriceBook:
        return self

    def at_version(self, version: str) -> PriceBook | None:
        return self if version in ("", self.version) else None
