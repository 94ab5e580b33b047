"""What a price book must be before it may price anything: the checks a publication passes.

"The hold is an upper bound of the capture" rests on the cost function being monotonic in every
unit: the gateway holds the price of an upper bound of the units, and the usage it captures is at
most that bound in every unit. ``price_micros`` sums quantity x rate with the rates of the context
tier the prompt reaches, rounds up and applies a minimum charge; that is monotonic in every unit
exactly when

- no rate and no minimum charge is negative (base rates, every context tier, every image variant);
- a tier the prompt reaches with more tokens has no lower rate, in any of its three token rates,
  than the base rates or a tier reached with fewer tokens (else a longer prompt drops into a cheaper
  tier, and the hold, priced on the byte bound in that cheap tier, no longer bounds a capture in the
  base tier: 119 micros charged for a list price of 391, issue 15);

and every rate is small enough that a request's cost stays an integer ClickHouse and the ledger can
hold (``rate_max``). Pure: no IO, no clock.
"""

from __future__ import annotations

import msgspec

from schemas.prices import ContextTier, ModelPrice, PriceBook

# Micros per million units: 1e15 is a billion credits per unit, far beyond any real price, and keeps
# quantity x rate of any request (at most a few million units) well inside a signed 64-bit integer.
rate_max = 10**15
_token_rate_names = ("input_token_rate", "cached_input_token_rate", "output_token_rate")


def _rates(price: ModelPrice) -> dict[str, int]:
    """The model's own integer rates and charges, by field name (every ``*_rate`` and ``*_micros``)."""
    return {
        name: value
        for name, value in msgspec.structs.asdict(price).items()
        if (name.endswith("_rate") or name.endswith("_micros")) and isinstance(value, int)
    }


def _effective_tiers(tiers: tuple[ContextTier, ...]) -> list[ContextTier]:
    """The tiers that can apply, by threshold: of tiers with one threshold, the last listed
    (``ledger.pricing._token_rates``)."""
    by_threshold = {tier.above_tokens: tier for tier in tiers}
    return [by_threshold[above] for above in sorted(by_threshold)]


def _out_of_range(what: str, value: int) -> str | None:
    if value < 0:
        return f"{what} is {value}; rates and charges must not be negative"
    if value > rate_max:
        return f"{what} is {value}; rates may be at most {rate_max} micros per million units"
    return None


def model_price_problems(price: ModelPrice) -> list[str]:
    """Why ``price`` cannot price requests (empty: it can)."""
    problems = [_out_of_range(name, value) for name, value in _rates(price).items()]
    for tier in price.context_tiers:
        problems += [
            _out_of_range(f"the tier above {tier.above_tokens} tokens' {name}", getattr(tier, name))
            for name in _token_rate_names
        ]
        if tier.above_tokens < 0:
            problems.append(f"a tier starts above {tier.above_tokens} tokens; thresholds must not be negative")
    for variant, rate in price.image_variant_rates.items():
        problems.append(_out_of_range(f"image variant '{variant}'", rate))
    for variant, rate in price.search_variant_rates.items():
        problems.append(_out_of_range(f"search tier '{variant}'", rate))
    lower_name, lower = "the base rates", tuple(getattr(price, name) for name in _token_rate_names)
    for tier in _effective_tiers(price.context_tiers):
        rates = tuple(getattr(tier, name) for name in _token_rate_names)
        for name, below, above in zip(_token_rate_names, lower, rates, strict=True):
            if above < below:
                problems.append(
                    f"the tier above {tier.above_tokens} tokens has a lower {name} ({above}) than {lower_name} "
                    f"({below}); a longer prompt must never cost less per token"
                )
        lower_name, lower = f"the tier above {tier.above_tokens} tokens", rates
    return [problem for problem in problems if problem is not None]


def price_book_problems(book: PriceBook) -> list[str]:
    """Why ``book`` cannot be published, each naming its model (empty: it can)."""
    problems = [
        f"model '{model_id}': {problem}"
        for model_id, price in book.models.items()
        for problem in model_price_problems(price)
    ]
    named: dict[str, str] = {}
    for model_id, price in book.models.items():
        for slug in price.fal_slugs:
            if slug in named and named[slug] != model_id:
                problems.append(f"model '{model_id}': the Fal slug '{slug}' names '{named[slug]}' already")
            named.setdefault(slug, model_id)
    return problems
