"""Statements: the allocation of per-request rounding (property test against the real pricing) and
the `tollgate statement` command on an embedded ClickHouse."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.pricing import catalog_rows, default_price_book, price_micros, unit_names
from projections.statements import (
    Tally,
    build_statement,
    hold_cap_unit,
    load_statement,
    minimum_charge_unit,
    rounding_unit,
)
from projections.usage import UsageStore
from schemas.units import Units
from tests.support import capture_posting, charge, examples

book = default_price_book()
month = datetime(2026, 11, 1, tzinfo=UTC)

requests = st.lists(
    st.tuples(
        st.sampled_from(sorted(book.models)),
        st.builds(
            Units,
            input_tokens=st.integers(0, 200_000),
            cached_input_tokens=st.integers(0, 5_000),
            cache_write_tokens=st.integers(0, 5_000),
            image_input_tokens=st.integers(0, 3_000),
            audio_input_tokens=st.integers(0, 3_000),
            output_tokens=st.integers(0, 9_000),
            reasoning_tokens=st.integers(0, 9_000),
            images=st.integers(0, 4),
            audio_seconds=st.integers(0, 900),
            video_seconds=st.integers(0, 30),
            characters=st.integers(0, 20_000),
            calls=st.integers(0, 5),
            search_units=st.integers(0, 5),
            storage_byte_days=st.integers(0, 10**9),
            web_search_calls=st.integers(0, 3),
            variant=st.sampled_from(("", "1024x1024/hd", "1792x1024/standard", "512x512/unknown")),
            batch=st.booleans(),
        ),
    ),
    max_size=60,
)


@settings(max_examples=examples(300), deadline=None)
@given(requests)
def test_lines_add_up_to_the_charges_exactly_and_rounding_is_never_negative(
    batch: list[tuple[str, Units]],
) -> None:
    """Grouped as ClickHouse groups them: per (model, version, tier, discount, unit, rate) and per
    (model, version). Each tier and batch discount is a line of its own, the minimum charges too."""
    tally = Tally()
    for model, units in batch:
        price = book.models[model]
        cost = price_micros(price, units)
        tally.add(model, book.version, price, units, cost, cost)
    statement = build_statement(
        "org",
        month,
        month + timedelta(days=30),
        tally.priced_usage(),
        tally.charged_totals(),
        {"hold.captured.v1": tally.charges_micros},
    )
    expected = sum(price_micros(book.models[m], u) for m, u in batch)
    assert sum(line.amount_micros for line in statement.lines) == statement.charges_micros == expected
    assert statement.balanced
    assert all(line.amount_micros >= 0 for line in statement.lines)
    for line in statement.lines:
        price = book.models[line.model]
        if line.unit == rounding_unit:
            # Less than one micro per request and unit line (each floors what requests round up).
            unit_lines = sum(1 for other in statement.lines if other.model == line.model and other.unit in unit_names)
            assert line.amount_micros < line.quantity + unit_lines
        elif line.unit == minimum_charge_unit:
            assert 0 < line.amount_micros <= line.quantity * price.minimum_charge_micros
        else:
            assert line.unit in unit_names
            assert line.discount_percent in (0, price.batch_discount_percent)
            listed = {row.unit: row.rate_micros_per_million for row in catalog_rows(price) if row.tier == line.tier}
            # (Random usage includes kinds a model is never sent, e.g. audio to a text model: unlisted.)
            assert line.unit_price_micros_per_million == listed.get(line.unit, line.unit_price_micros_per_million)


@pytest.mark.heavy  # a store per generated example
def test_a_capture_capped_at_its_hold_still_adds_up(tmp_path: Path) -> None:
    """Usage priced above its hold is charged the hold: its unit lines exceed the charge, and a
    negative hold_cap line (not a failed assertion, not a 500) makes the statement add up."""
    store = UsageStore(path=tmp_path / "clickhouse")
    full = charge("c_full", month + timedelta(hours=1), units=Units(input_tokens=1000, output_tokens=200))
    capped = charge("c_capped", month + timedelta(hours=2), units=Units(input_tokens=90_000, output_tokens=9_000))
    capped = msgspec.structs.replace(capped, cost_micros=1_000)
    rows = [full, capped]
    store.insert(rows, [capture_posting(r) for r in rows])
    statement = load_statement(store, "org_a", month, month + timedelta(days=1))
    store.close()
    charged = full.cost_micros + 1_000
    assert statement.charges_micros == statement.ledger_charges_micros == charged
    assert sum(line.amount_micros for line in statement.lines) == charged
    # The cap and the round-ups are lines of their own: the cap is exactly what the hold forgave
    # (not netted against the round-ups, which once showed -73 where 97 micros were forgiven).
    caps = [line for line in statement.lines if line.unit == hold_cap_unit]
    assert [line.amount_micros for line in caps] == [1_000 - capped.priced_micros]
    roundings = [line for line in statement.lines if line.unit == rounding_unit]
    assert len(roundings) == 1 and roundings[0].amount_micros >= 0
    units = [line for line in statement.lines if line.unit not in (hold_cap_unit, rounding_unit)]
    assert (
        sum(line.amount_micros for line in units) + roundings[0].amount_micros
        == full.priced_micros + capped.priced_micros
    )
