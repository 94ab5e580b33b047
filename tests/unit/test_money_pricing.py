"""Money and pricing: exact integers, one rounding rule, applied once."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.money import MoneyFormatError, format_credits, micros_to_decimal, parse_credits
from ledger.pricing import ModelPrice, default_price_book, price_micros, unit_rates
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
    assert unit_rates(price, Units(input_tokens=prompt))[:3] == expected
