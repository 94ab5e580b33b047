"""Price book validation (issue 15): any book the checks accept prices monotonically in every unit,
so a hold priced on an upper bound of the units bounds every capture (at the model or any fallback);
the books of the issue (negative tier and variant rates, a cheaper higher tier) are refused."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import assume, given, settings

from ledger.price_checks import model_price_problems, price_book_problems, rate_max
from ledger.pricing import ContextTier, ModelPrice, PriceBook, default_price_book, price_micros
from schemas.units import Units
from tests.support import examples

_variants = ("1024x1024/standard", "1024x1024/hd")
rate = st.integers(-1, 10**7)  # up to 10 credits per million units: a rate step moves a price


@st.composite
def model_prices(draw: st.DrawFn, model: str = "m", step_min: int = -(10**6)) -> ModelPrice:
    """Rates mostly valid, tiers mostly rising (each tier's rates step from the last one's by at least
    ``step_min``): books on both sides of the checks."""
    base = [draw(rate) for _ in range(3)]
    tiers: list[list[int]] = []
    for _ in range(draw(st.integers(0, 3))):
        base_or_previous = tiers[-1] if tiers else base
        step = [previous + draw(st.integers(step_min, 10**7)) for previous in base_or_previous]
        tiers.append(step)
    thresholds = draw(st.lists(st.integers(-2, 300), min_size=len(tiers), max_size=len(tiers)))
    return ModelPrice(
        model=model,
        category="chat",
        pool="default",
        input_token_rate=base[0],
        cached_input_token_rate=base[1],
        output_token_rate=base[2],
        image_rate=draw(rate),
        audio_second_rate=draw(rate),
        video_second_rate=draw(rate),
        character_rate=draw(rate),
        call_rate=draw(rate),
        minimum_charge_micros=draw(st.integers(-1, 50)),
        context_tiers=tuple(
            ContextTier(above_tokens=above, input_token_rate=t[0], cached_input_token_rate=t[1], output_token_rate=t[2])
            for above, t in zip(thresholds, tiers, strict=True)
        ),
        image_variant_rates={v: draw(rate) for v in draw(st.lists(st.sampled_from(_variants), unique=True))},
    )


quantity = st.integers(0, 600)


@st.composite
def units_and_more(draw: st.DrawFn) -> tuple[Units, Units]:
    """Some units, and units at least as large in every dimension (the same image variant)."""
    variant = draw(st.sampled_from(("", *_variants)))
    small = Units(
        input_tokens=draw(quantity),
        cached_input_tokens=draw(quantity),
        output_tokens=draw(quantity),
        images=draw(st.integers(0, 4)),
        audio_seconds=draw(quantity),
        video_seconds=draw(quantity),
        characters=draw(quantity),
        calls=draw(st.integers(0, 4)),
        variant=variant,
    )
    large = Units(
        input_tokens=small.input_tokens + draw(quantity),
        cached_input_tokens=small.cached_input_tokens + draw(quantity),
        output_tokens=small.output_tokens + draw(quantity),
        images=small.images + draw(st.integers(0, 4)),
        audio_seconds=small.audio_seconds + draw(quantity),
        video_seconds=small.video_seconds + draw(quantity),
        characters=small.characters + draw(quantity),
        calls=small.calls + draw(st.integers(0, 4)),
        variant=variant,
    )
    return small, large


@pytest.mark.heavy  # a thousand generated prices
@settings(max_examples=examples(1000), deadline=None)
@given(model_prices(), units_and_more())
def test_an_accepted_price_is_monotonic_in_every_unit(price: ModelPrice, units: tuple[Units, Units]) -> None:
    assume(not model_price_problems(price))
    small, large = units
    assert 0 <= price_micros(price, small) <= price_micros(price, large)


@pytest.mark.heavy  # hundreds of generated prices
@settings(max_examples=examples(600), deadline=None)
@given(model_prices("asked", step_min=-10), model_prices("fallback", step_min=-10), units_and_more())
def test_a_hold_on_the_bound_covers_every_capture_at_the_model_or_its_fallback(
    asked: ModelPrice, fallback: ModelPrice, units: tuple[Units, Units]
) -> None:
    """As the gateway holds (the bound at the priciest model of the chain) and the ledger captures
    (the usage at the model that served): usage within the bound never prices above the hold."""
    book = PriceBook(version="v", models={"asked": asked, "fallback": fallback})
    assume(not price_book_problems(book))
    usage, bound = units
    hold = max(price_micros(asked, bound), price_micros(fallback, bound))
    for served in (asked, fallback):
        assert price_micros(served, usage) <= hold


@settings(max_examples=examples(300), deadline=None)
@given(model_prices())
def test_a_refused_price_names_why(price: ModelPrice) -> None:
    problems = model_price_problems(price)
    negative = any(
        value < 0
        for value in (
            price.input_token_rate,
            price.cached_input_token_rate,
            price.output_token_rate,
            price.image_rate,
            price.audio_second_rate,
            price.video_second_rate,
            price.character_rate,
            price.call_rate,
            price.minimum_charge_micros,
            *price.image_variant_rates.values(),
            *(
                getattr(t, n)
                for t in price.context_tiers
                for n in ("input_token_rate", "cached_input_token_rate", "output_token_rate")
            ),
        )
    )
    if negative:
        assert any("negative" in problem for problem in problems)


def _tiered(base: int, tier: int) -> ModelPrice:
    return ModelPrice(
        model="m",
        category="chat",
        pool="default",
        input_token_rate=base,
        output_token_rate=base,
        context_tiers=(
            ContextTier(above_tokens=100, input_token_rate=tier, cached_input_token_rate=0, output_token_rate=tier),
        ),
    )


def test_the_issues_books_are_refused() -> None:
    negative_tier = ModelPrice(
        model="m",
        category="chat",
        pool="default",
        context_tiers=(
            ContextTier(above_tokens=10, input_token_rate=-1, cached_input_token_rate=0, output_token_rate=0),
        ),
    )
    negative_variant = ModelPrice(model="m", category="image", pool="default", image_variant_rates={"1024x1024/hd": -5})
    cheaper_tier = _tiered(base=3_000_000, tier=1_000_000)
    for price in (negative_tier, negative_variant, cheaper_tier):
        assert model_price_problems(price), price
    assert "lower input_token_rate" in " ".join(model_price_problems(cheaper_tier))
    # 119 micros charged for a list price of 391: the prompt's usage in the base tier prices above a
    # hold on a larger bound that fell into the cheap tier.
    assert price_micros(cheaper_tier, Units(input_tokens=90, output_tokens=40)) > price_micros(
        cheaper_tier, Units(input_tokens=150, output_tokens=40)
    )


def test_of_tiers_at_one_threshold_the_last_listed_is_checked() -> None:
    shadowed_cheap = ModelPrice(
        model="m",
        category="chat",
        pool="default",
        input_token_rate=10,
        context_tiers=(
            ContextTier(above_tokens=5, input_token_rate=1, cached_input_token_rate=0, output_token_rate=0),
            ContextTier(above_tokens=5, input_token_rate=20, cached_input_token_rate=0, output_token_rate=0),
        ),
    )
    assert model_price_problems(shadowed_cheap) == []
    assert price_micros(shadowed_cheap, Units(input_tokens=6)) >= price_micros(shadowed_cheap, Units(input_tokens=5))


def test_rates_past_the_most_are_refused_and_the_default_book_passes() -> None:
    assert price_book_problems(default_price_book()) == []
    huge = ModelPrice(model="m", category="chat", pool="default", output_token_rate=rate_max + 1)
    assert "at most" in model_price_problems(huge)[0]


def test_a_fal_slug_names_one_model_of_a_book() -> None:
    """``POST /fal/{slug}`` resolves a slug to one model: a book where two models list it is refused;
    a slug no model lists is the model of that id, if any."""
    image = ModelPrice(model="img", category="image", pool="default", image_rate=1, fal_slugs=("fal-ai/img",))
    other = ModelPrice(model="other", category="image", pool="default", image_rate=1, fal_slugs=("fal-ai/img",))
    clash = PriceBook(version="v", models={"img": image, "other": other})
    assert price_book_problems(clash) == ["model 'other': the Fal slug 'fal-ai/img' names 'img' already"]
    book = PriceBook(version="v", models={"img": image})
    assert price_book_problems(book) == []
    assert book.fal_model("fal-ai/img") is image and book.fal_model("img") is image
    assert book.fal_model("fal-ai/nothing") is None
    default = default_price_book()
    assert default.fal_model("fal-ai/flux1-schnell-nunchaku") == default.model("black-forest-labs/FLUX.1-schnell")
