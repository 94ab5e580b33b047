"""Money is integer micro-credits. 1 credit = 1 USD = 1,000,000 micros. Floats never touch it.

The only conversions are here: to the exact decimal the API shows (``cost_usd``, ``x-credits-used``)
and from the decimal strings or integers an admin sends.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

micros_per_credit = 1_000_000


class MoneyFormatError(ValueError):
    """An amount that is not an exact number of micro-credits."""


def micros_to_decimal(micros: int) -> Decimal:
    """The exact decimal value, without trailing zeros or an exponent: 150000 -> 0.15, 2000000 -> 2."""
    assert isinstance(micros, int), "money must be integer micros"
    value = Decimal(micros).scaleb(-6)
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value.normalize()


def format_credits(micros: int) -> str:
    """Exact decimal text with no exponent and no trailing zeros: 1500 -> '0.0015'."""
    return format(micros_to_decimal(micros), "f")


def parse_credits(value: Decimal | str | int) -> int:
    """Credits as an integer, a Decimal or a decimal string, to micros; more than 6 decimals is an error.
    An error's message names the amount as it was written (``1.0000001``, ``"abc"``), for the user."""
    if isinstance(value, bool):
        raise MoneyFormatError(f"{str(value).lower()} is a boolean, not a number of credits")
    if isinstance(value, int):
        return value * micros_per_credit
    try:
        amount = value if isinstance(value, Decimal) else Decimal(value.strip())
    except (InvalidOperation, AttributeError) as error:
        raise MoneyFormatError(f"{_as_written(value)} is not a decimal number of credits") from error
    if not amount.is_finite():
        raise MoneyFormatError(f"{_as_written(value)} is not a finite number")
    micros = amount.scaleb(6)
    if micros != micros.to_integral_value():
        raise MoneyFormatError(
            f"{_as_written(value)} has more than 6 decimal places: credits are exact to 0.000001 (one micro-credit)"
        )
    return int(micros)


def _as_written(value: object) -> str:
    """A number as the user wrote it (a JSON number arrives as a Decimal), a string in quotes."""
    return str(value) if isinstance(value, Decimal) else f'"{value}"' if isinstance(value, str) else repr(value)
