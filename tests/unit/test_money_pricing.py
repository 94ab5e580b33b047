"""Money and pricing: exact integers, one rounding rule, applied once."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.money import MoneyFormatError, format_credits, micros_to_decimal, parse_credits
from ledger.pricing import (
    ModelPrice,
    catalog_rows,
    default_price_book,
    price_breakdown,
    price_micros,
    price_problems,
    tier_label,
    token_units,
    unit_names,
    unit_quantities,
    unit_rates,
    usd_per_unit,
    worst_case_micros,
)
from schemas.prices import ContextTier
from schemas.units import Units


@pytest.mark.parametrize(
    ("micros", "text"),
    [(0, "0"), (1, "0.000001"), (33, "0.000033"), (150_000, "0.15"), (2_000_000, "2"), (123_456_789, "123.456789")],
)
def test_format_credits_is_exact(micros: int, text: str) -> None:
    assert format_credits(micros) == text
    assert micros_to_decimal(micros) == Decimal(text)


@pytest.mark.parametrize(
    ("value", "micros"),
    [(5, 5_000_000), ("0.000001", 1), ("10.5", 10_500_000), (Decimal("0.25"), 250_000), (" 3 ", 3_000_000)],
)
def test_parse_credits(value: str | int | Decimal, micros: int) -> None:
    assert parse_credits(value) == micros


@pytest.mark.parametrize("value", ["0.0000001", "abc", "NaN", "Infinity", True])
def test_parse_credits_rejects_inexact_or_invalid(value: str | bool) -> None:
    with pytest.raises(MoneyFormatError):
        parse_credits(value)


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_format_then_parse_round_trips(micros: int) -> None:
    assert parse_credits(format_credits(micros)) == micros


price = ModelPrice(model="m", category="chat", pool="p", input_token_rate=150_000, output_token_rate=600_000)


@pytest.mark.parametrize(
    ("units", "expected"),
    [
        (Units(), 0),
        (Units(input_tokens=1), 1),  # 0.15 micros rounds up to 1
        (Units(input_tokens=6), 1),  # 0.9 -> 1
        (Units(input_tokens=7), 2),  # 1.05 -> 2
        (Units(input_tokens=1_000_000), 150_000),
        (Units(input_tokens=8, output_tokens=53), 33),  # (1.2 + 31.8) = 33 exactly
        (Units(input_tokens=9, output_tokens=53), 34),  # 33.15 -> 34: rounding happens once, on the total
    ],
)
def test_price_rounds_up_once_on_the_total(units: Units, expected: int) -> None:
    assert price_micros(price, units) == expected


def test_minimum_charge_applies() -> None:
    large = default_price_book().models["sim-chat-large"]
    assert price_micros(large, Units(input_tokens=1)) == large.minimum_charge_micros


@given(st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**7))
def test_price_is_monotonic(input_a: int, output_a: int, input_extra: int, output_extra: int) -> None:
    """What keeps a capture within its hold: more units never cost less."""
    smaller = price_micros(price, Units(input_tokens=input_a, output_tokens=output_a))
    larger = price_micros(price, Units(input_tokens=input_a + input_extra, output_tokens=output_a + output_extra))
    assert smaller <= larger


def test_longer_prompts_are_priced_at_their_context_tier() -> None:
    large = default_price_book().models["sim-chat-large"]
    short = price_micros(large, Units(input_tokens=32_768, output_tokens=1000))
    long = price_micros(large, Units(input_tokens=32_769, output_tokens=1000))
    assert short == -(-(32_768 * 2_500_000 + 1000 * 10_000_000) // 1_000_000)
    assert long == -(-(32_769 * 5_000_000 + 1000 * 15_000_000) // 1_000_000)


@pytest.mark.parametrize(
    ("variant", "expected"),
    [("1024x1024/standard", 40_000), ("1024x1024/hd", 80_000), ("1792x1024/hd", 120_000), ("odd/size", 40_000)],
)
def test_images_are_priced_by_size_and_quality(variant: str, expected: int) -> None:
    image = default_price_book().models["sim-image"]
    assert price_micros(image, Units(images=1, variant=variant)) == expected


def test_seconds_characters_and_calls_are_priced() -> None:
    book = default_price_book().models
    assert price_micros(book["sim-tts"], Units(characters=1000)) == 15_000
    assert price_micros(book["sim-whisper"], Units(audio_seconds=60)) == 6_000
    assert price_micros(book["sim-video"], Units(video_seconds=5)) == 250_000
    assert price_micros(book["sim-video"], Units(video_seconds=0)) == 10_000  # the minimum charge
    per_call = ModelPrice(model="m", category="chat", pool="p", call_rate=5_000_000_000)
    assert price_micros(per_call, Units(calls=3)) == 15_000


def test_billed_seconds_round_up_per_started_second_in_integers() -> None:
    from ledger.pricing import billed_seconds

    assert [billed_seconds(ms) for ms in (0, 1, 999, 1000, 1001, 2999, 3000)] == [1, 1, 1, 1, 2, 3, 3]
    # Past 2**53 ms a float division would round; integer division stays exact.
    assert billed_seconds(2**60 + 1) == 2**60 // 1000 + 1


tiers = st.lists(
    st.builds(
        ContextTier,
        above_tokens=st.integers(-5, 200_000),
        input_token_rate=st.integers(0, 10**7),
        cached_input_token_rate=st.integers(0, 10**7),
        output_token_rate=st.integers(0, 10**7),
    ),
    max_size=5,
)


@given(tiers, st.integers(0, 250_000))
def test_the_context_tier_is_the_highest_the_prompt_exceeds_in_any_order(
    tier_list: list[ContextTier], prompt: int
) -> None:
    """As defined: tiers sorted by threshold (stably), the last one the prompt is above wins."""
    base = default_price_book().models["sim-chat-large"]
    price = msgspec.structs.replace(base, context_tiers=tuple(tier_list))
    expected = (base.input_token_rate, base.cached_input_token_rate, base.output_token_rate)
    for tier in sorted(tier_list, key=lambda t: t.above_tokens):
        if prompt > tier.above_tokens:
            expected = (tier.input_token_rate, tier.cached_input_token_rate, tier.output_token_rate)
    rates = dict(zip(unit_names, unit_rates(price, Units(input_tokens=prompt)), strict=True))
    assert (rates["input_tokens"], rates["cached_input_tokens"], rates["output_tokens"]) == expected


# --- every unit, tier and variant (issue 17) ---

rate = st.integers(0, 10**8)
optional_rate = st.one_of(st.none(), rate)


@st.composite
def monotonic_prices(draw: st.DrawFn) -> ModelPrice:
    """Random prices that ``price_problems`` accepts: tiers never get cheaper, in any token kind."""
    base: dict[str, Any] = {
        "input_token_rate": draw(rate),
        "cached_input_token_rate": draw(rate),
        "output_token_rate": draw(rate),
        "cache_write_token_rate": draw(optional_rate),
        "image_input_token_rate": draw(optional_rate),
        "audio_input_token_rate": draw(optional_rate),
        "reasoning_token_rate": draw(optional_rate),
    }
    tiers = []
    floor = dict(zip(token_units, _rates_of(base), strict=True))
    for above in sorted(draw(st.lists(st.integers(0, 100_000), max_size=3, unique=True))):
        tier = {unit: floor[unit] + draw(st.integers(0, 10**7)) for unit in token_units}
        floor = tier
        tiers.append(
            ContextTier(
                above_tokens=above,
                input_token_rate=tier["input_tokens"],
                cached_input_token_rate=tier["cached_input_tokens"],
                cache_write_token_rate=tier["cache_write_tokens"],
                image_input_token_rate=tier["image_input_tokens"],
                audio_input_token_rate=tier["audio_input_tokens"],
                output_token_rate=tier["output_tokens"],
                reasoning_token_rate=tier["reasoning_tokens"],
            )
        )
    price = ModelPrice(
        model="m",
        category="chat",
        pool="p",
        **base,
        context_tiers=tuple(draw(st.permutations(tiers))),
        image_rate=draw(rate),
        image_variant_rates={"1024x1024/hd": draw(rate)},
        audio_second_rate=draw(rate),
        video_second_rate=draw(rate),
        character_rate=draw(rate),
        call_rate=draw(rate),
        search_unit_rate=draw(rate),
        storage_byte_day_rate=draw(st.integers(0, 100)),
        tool_call_rates={"web_search": draw(rate), "code_interpreter": draw(rate)},
        batch_discount_percent=draw(st.integers(0, 100)),
        minimum_charge_micros=draw(st.integers(0, 1000)),
    )
    assert price_problems(price) == []
    return price


def _rates_of(fields: dict[str, int | None]) -> tuple[int, ...]:
    input_rate, output_rate = fields["input_token_rate"], fields["output_token_rate"]
    assert input_rate is not None and output_rate is not None

    def either(value: int | None, fallback: int) -> int:
        return fallback if value is None else value

    return (
        input_rate,
        either(fields["cached_input_token_rate"], 0),
        either(fields["cache_write_token_rate"], input_rate),
        either(fields["image_input_token_rate"], input_rate),
        either(fields["audio_input_token_rate"], input_rate),
        output_rate,
        either(fields["reasoning_token_rate"], output_rate),
    )


small = st.integers(0, 50_000)
usages = st.builds(
    Units,
    input_tokens=small,
    cached_input_tokens=small,
    cache_write_tokens=small,
    image_input_tokens=small,
    audio_input_tokens=small,
    output_tokens=small,
    reasoning_tokens=small,
    images=st.integers(0, 4),
    audio_seconds=st.integers(0, 600),
    video_seconds=st.integers(0, 30),
    characters=small,
    calls=st.integers(0, 1),
    search_units=st.integers(0, 3),
    storage_byte_days=st.integers(0, 10**10),
    web_search_calls=st.integers(0, 2),
    code_interpreter_calls=st.integers(0, 2),
    variant=st.sampled_from(["", "1024x1024/hd", "512x512/other"]),
    batch=st.booleans(),
)


@given(monotonic_prices(), usages)
def test_the_breakdown_is_the_price(price: ModelPrice, units: Units) -> None:
    breakdown = price_breakdown(price, units)
    assert breakdown.micros == price_micros(price, units)
    assert breakdown.scaled == sum(q * r for q, r in zip(unit_quantities(units), breakdown.rates, strict=True))


@given(monotonic_prices(), usages, st.data())
def test_price_is_monotonic_in_every_unit_of_an_accepted_book(
    price: ModelPrice, units: Units, data: st.DataObject
) -> None:
    unit = data.draw(st.sampled_from(unit_names))
    more = msgspec.structs.replace(units, **{unit: getattr(units, unit) + data.draw(st.integers(1, 70_000))})
    assert price_micros(price, units) <= price_micros(price, more)


@given(monotonic_prices(), usages, st.data())
def test_the_worst_case_bounds_every_usage_within_the_bound(
    price: ModelPrice, bound: Units, data: st.DataObject
) -> None:
    """A hold is ``worst_case_micros`` of the bound: whatever mix of uncached, cached and cache-written
    text and of output and reasoning the worker reports within it, the charge fits the hold."""
    text = bound.input_tokens + bound.cached_input_tokens + bound.cache_write_tokens
    generated = bound.output_tokens + bound.reasoning_tokens
    cached = data.draw(st.integers(0, text))
    written = data.draw(st.integers(0, text - cached))
    reasoning = data.draw(st.integers(0, generated))
    actual = msgspec.structs.replace(
        bound,
        input_tokens=data.draw(st.integers(0, text - cached - written)),
        cached_input_tokens=cached,
        cache_write_tokens=written,
        output_tokens=data.draw(st.integers(0, generated - reasoning)),
        reasoning_tokens=reasoning,
        images=data.draw(st.integers(0, bound.images)),
        search_units=data.draw(st.integers(0, bound.search_units)),
    )
    assert price_micros(price, actual) <= worst_case_micros(price, bound)


def test_cached_and_cache_written_tokens_reasoning_and_tools_have_their_own_rates() -> None:
    large = default_price_book().models["sim-chat-large"]
    units = Units(input_tokens=100, cached_input_tokens=1000, cache_write_tokens=400, web_search_calls=2)
    expected = 100 * 2_500_000 + 1000 * 1_250_000 + 400 * 3_125_000 + 2 * 10_000_000_000
    assert price_micros(large, units) == -(-expected // 1_000_000)
    research = default_price_book().models["sim-research"]
    units = Units(input_tokens=10, output_tokens=20, reasoning_tokens=30, search_units=2, calls=1)
    expected = 10 * 2_000_000 + 20 * 8_000_000 + 30 * 3_000_000 + 2 * 5_000_000_000 + 5_000_000_000
    assert price_micros(research, units) == -(-expected // 1_000_000)


def test_the_batch_discount_applies_before_the_one_rounding_and_not_to_the_minimum() -> None:
    large = default_price_book().models["sim-chat-large"]
    units = Units(input_tokens=3, output_tokens=1)  # 17.5 micros, 8.75 at half price
    assert price_micros(large, units) == 18
    assert price_micros(large, msgspec.structs.replace(units, batch=True)) == 10  # 9 raised to the minimum 10
    big = Units(input_tokens=10_001, batch=True)
    assert price_micros(large, big) == -(-10_001 * 2_500_000 * 50 // 100_000_000)
    breakdown = price_breakdown(large, Units(input_tokens=1, batch=True))
    assert (breakdown.discount_percent, breakdown.rounded_micros, breakdown.minimum_topup_micros) == (50, 2, 8)


def test_storage_byte_days_are_exact_over_a_statement_and_rounded_once_per_charge() -> None:
    storage = ModelPrice(model="files", category="chat", pool="p", storage_byte_day_rate=4)  # 0.12 per GB-month
    assert price_micros(storage, Units(storage_byte_days=1)) == 1  # 4e-6 micros, rounded up
    assert price_micros(storage, Units(storage_byte_days=10**9 * 30)) == 120_000


def test_the_tier_label_names_the_tier_or_variant_that_applied() -> None:
    book = default_price_book().models
    assert tier_label(book["sim-chat-large"], Units(input_tokens=32_768)) == "Up to 32,768 prompt tokens"
    assert tier_label(book["sim-chat-large"], Units(input_tokens=32_000, image_input_tokens=769)) == (
        "Over 32,768 prompt tokens"  # every kind of prompt token counts towards the tier
    )
    assert tier_label(book["sim-image"], Units(images=1, variant="1792x1024/hd")) == "1792x1024/hd"
    assert tier_label(book["sim-chat-small"], Units(input_tokens=10**6)) == ""


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"input_token_rate": -1}, "input_token_rate must not be negative"),
        ({"tool_call_rates": {"web_search": -5}}, "tool_call_rates.web_search must not be negative"),
        ({"batch_discount_percent": 101}, "batch_discount_percent must lie in 0..100"),
        ({"minimum_charge_micros": -1}, "minimum_charge_micros must not be negative"),
    ],
)
def test_price_problems_name_what_to_fix(change: dict[str, object], problem: str) -> None:
    price = msgspec.structs.replace(default_price_book().models["sim-chat-large"], **change)
    assert any(problem in found for found in price_problems(price)), price_problems(price)


def test_a_tier_that_gets_cheaper_is_refused_in_any_token_kind() -> None:
    large = default_price_book().models["sim-chat-large"]
    cheaper = msgspec.structs.replace(large.context_tiers[0], cache_write_token_rate=3_000_000)
    problems = price_problems(msgspec.structs.replace(large, context_tiers=(cheaper,)))
    assert len(problems) == 1 and "cache_write_tokens" in problems[0]
    assert all(price_problems(price) == [] for price in default_price_book().models.values())


def test_catalog_rows_list_every_rate_with_the_tier_a_usage_names() -> None:
    large = catalog_rows(default_price_book().models["sim-chat-large"])
    by_key = {(row.unit, row.tier): row for row in large}
    assert by_key[("input_tokens", "Over 32,768 prompt tokens")].rate_micros_per_million == 5_000_000
    assert by_key[("input_tokens", "Over 32,768 prompt tokens")].above_prompt_tokens == 32_768
    assert by_key[("cache_write_tokens", "Up to 32,768 prompt tokens")].rate_micros_per_million == 3_125_000
    assert by_key[("web_search_calls", "")].rate_micros_per_million == 10_000_000_000
    assert by_key[("minimum_charge", "")].rate_micros_per_million == 10 * 1_000_000
    assert by_key[("batch_discount", "")].percent == 50
    image = {
        (row.unit, row.tier): row.rate_micros_per_million
        for row in catalog_rows(default_price_book().models["sim-image"])
    }
    assert image[("images", "1792x1024/hd")] == 120_000_000_000 and image[("images", "")] == 40_000_000_000
    assert usd_per_unit(150_000) == Decimal("0.00000015") and usd_per_unit(40_000_000_000) == Decimal("0.04")
