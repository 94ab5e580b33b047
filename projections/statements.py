"""Statements: an organization's charges in a period as line items that add up exactly. Pure.

A request's cost is rounded up once, on its total (``ledger.pricing.price_micros``), then raised to
the model's minimum charge. Line items therefore cannot each be rounded on their own and still add
up. The allocation, defined once here:

- one line per (model, price version, pricing tier, batch discount, unit, unit price): quantity = the
  period's sum of that unit, amount = floor(sum of quantity x rate x (100 - discount) / (100 x
  1,000,000)), where rate is micros per million units; each context tier and image variant is so its
  own line, and batch-priced usage a line of its own at its discount;
- one ``minimum_charge`` line per (model, price version) whose requests were raised to the model's
  minimum charge: what those raises added;
- one ``rounding`` line per (model, price version): what the usage listed at (each request's price,
  rounded up once and raised to the minimum charge) minus its unit and minimum lines. It holds the
  per-request round-ups, and is never negative (the sum of per-request ceilings is at least the floor
  of the sum);
- one negative ``hold_cap`` line per (model, price version) where captures were capped at their
  hold (usage priced above the hold; the ledger never charges more than it held): what the ledger
  charged minus what the usage listed at;
- one ``refund`` line (negative) for the period's refunds, if any;
- one ``gpu_intervals`` or ``plan_months`` line per GPU class or plan and price version: what the
  ledger charged for a time-metered resource's intervals or a plan's months (``ledger/resources.py``).

So sum(unit lines + rounding lines + time lines) == sum of the period's charges (HoldCaptured,
ResourceCharged, PlanSubscribed and PlanRenewed amounts), exactly,
and total == charges - refunds.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import datetime

import msgspec

from ledger.money import micros_to_decimal
from ledger.pricing import (
    ModelPrice,
    percent,
    price_breakdown,
    tiered_units,
    unit_names,
    unit_quantities,
    units_per_rate,
)
from projections.usage import ChargedTotal, PricedUsage, UsageStore
from schemas.units import Units

statement_days_max = 366  # the longest period one statement covers (the API's bound; replay compares in such periods)
rounding_unit = "rounding"
minimum_charge_unit = "minimum_charge"
hold_cap_unit = "hold_cap"
refund_unit = "refund"
# Charges of time-metered resources and plans (ledger/resources.py), by their usage rows' model prefix:
# the line's quantity counts the charges (intervals, months).
time_metered_units = {"gpu-cloud:": "gpu_intervals", "hosted-agent:": "plan_months"}


class StatementLine(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    price_version: str
    unit: str
    quantity: int
    # Micros per million units, the list price (0 for rounding, minimum, cap and refund lines).
    unit_price_micros_per_million: int
    amount_micros: int
    tier: str = ""  # the pricing tier (context tier or image variant) of a unit line
    discount_percent: int = 0  # the batch discount of a unit line, off its list price


class Statement(msgspec.Struct, frozen=True, kw_only=True):
    org_id: str
    start: datetime
    end: datetime
    lines: tuple[StatementLine, ...]
    charges_micros: int
    refunds_micros: int
    total_micros: int
    # What the ledger's postings say for the same period; equal to the above once the projector caught up.
    ledger_charges_micros: int
    ledger_refunds_micros: int

    @property
    def balanced(self) -> bool:
        return (self.charges_micros, self.refunds_micros) == (self.ledger_charges_micros, self.ledger_refunds_micros)


def build_statement(
    org_id: str,
    start: datetime,
    end: datetime,
    priced: list[PricedUsage],
    charged: list[ChargedTotal],
    posted: dict[str, int],
) -> Statement:
    """Line items for [start, end) from the grouped usage and the charged totals (see module doc)."""
    unit_lines: dict[tuple[str, str], list[StatementLine]] = {}
    for group in priced:
        unit_lines.setdefault((group.model, group.price_version), []).append(
            StatementLine(
                model=group.model,
                price_version=group.price_version,
                tier=group.tier,
                discount_percent=group.discount_percent,
                unit=group.unit,
                quantity=group.quantity,
                unit_price_micros_per_million=group.rate,
                amount_micros=group.scaled * (percent - group.discount_percent) // (percent * units_per_rate),
            )
        )
    lines: list[StatementLine] = []
    for total in charged:
        own = unit_lines.pop((total.model, total.price_version), [])
        time_unit = next((unit for prefix, unit in time_metered_units.items() if total.model.startswith(prefix)), None)
        if time_unit is not None and not own:
            # A GPU's intervals or a plan's months, each charged at its rate by the ledger: one line.
            lines.append(
                StatementLine(
                    model=total.model,
                    price_version=total.price_version,
                    unit=time_unit,
                    quantity=total.requests,
                    unit_price_micros_per_million=0,
                    amount_micros=total.cost_micros,
                )
            )
            continue
        rounding = total.priced_micros - total.minimum_topup_micros - sum(line.amount_micros for line in own)
        capped = total.cost_micros - total.priced_micros
        assert rounding >= 0, "a sum of ceilings is at least the floor of the sum"
        assert capped <= 0, "the ledger never charges more than the usage listed at"
        lines.extend(own)
        extra = ((minimum_charge_unit, total.minimum_topup_micros), (rounding_unit, rounding), (hold_cap_unit, capped))
        lines.extend(
            StatementLine(
                model=total.model,
                price_version=total.price_version,
                unit=unit,
                quantity=total.requests,
                unit_price_micros_per_million=0,
                amount_micros=amount,
            )
            for unit, amount in extra
            if amount or unit == rounding_unit
        )
    assert not unit_lines, "every priced group belongs to a charged model and version"
    charges = sum(total.cost_micros for total in charged)
    refunds = posted.get("credits.refunded.v1", 0)
    if refunds:
        lines.append(
            StatementLine(
                model="",
                price_version="",
                unit=refund_unit,
                quantity=1,
                unit_price_micros_per_million=0,
                amount_micros=-refunds,
            )
        )
    assert sum(line.amount_micros for line in lines) == charges - refunds
    return Statement(
        org_id=org_id,
        start=start,
        end=end,
        lines=tuple(lines),
        charges_micros=charges,
        refunds_micros=refunds,
        total_micros=charges - refunds,
        ledger_charges_micros=sum(amount for kind, amount in posted.items() if kind != "credits.refunded.v1"),
        ledger_refunds_micros=refunds,
    )


class Tally:
    """Charges grouped as ClickHouse groups them, from the charges themselves (pure): the statement
    of a period derived from the ledger's events (replay, tests), to compare with the store's."""

    def __init__(self) -> None:
        self._priced: dict[tuple[str, str, str, int, str, int], list[int]] = defaultdict(lambda: [0, 0])
        self._charged: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])

    def add(
        self, model: str, price_version: str, price: ModelPrice | None, units: Units, amount: int, priced: int
    ) -> None:
        """One charge of ``amount`` micros whose usage listed at ``priced`` under ``price`` (None: a
        version nobody knows, whose whole charge then shows as rounding, as the projector records it)."""
        if price is not None:
            breakdown = price_breakdown(price, units)
            rates, tier, discount = breakdown.rates, breakdown.tier_label, breakdown.discount_percent
            topup = breakdown.minimum_topup_micros
        else:
            rates, tier, discount, topup = (0,) * len(unit_names), "", 0, 0
        for unit, quantity, rate in zip(unit_names, unit_quantities(units), rates, strict=True):
            if quantity > 0:
                group = self._priced[(model, price_version, tier if unit in tiered_units else "", discount, unit, rate)]
                group[0] += quantity
                group[1] += quantity * rate
        total = self._charged[(model, price_version)]
        for index, value in enumerate((1, amount, priced, topup)):
            total[index] += value

    def priced_usage(self) -> list[PricedUsage]:
        return [
            PricedUsage(model=m, price_version=v, tier=t, discount_percent=d, unit=u, rate=r, quantity=q, scaled=s)
            for (m, v, t, d, u, r), (q, s) in sorted(self._priced.items())
        ]

    def charged_totals(self) -> list[ChargedTotal]:
        return [
            ChargedTotal(model=m, price_version=v, requests=n, cost_micros=c, priced_micros=p, minimum_topup_micros=t)
            for (m, v), (n, c, p, t) in sorted(self._charged.items())
        ]

    @property
    def charges_micros(self) -> int:
        return sum(total[1] for total in self._charged.values())


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def statement_json(statement: Statement) -> dict[str, object]:
    return {
        "object": "statement",
        "org_id": statement.org_id,
        "from": _iso(statement.start),
        "to": _iso(statement.end),
        "currency": "USD",
        "lines": [
            {
                "model": line.model or None,
                "price_version": line.price_version or None,
                "unit": line.unit,
                "tier": line.tier or None,
                "discount_percent": line.discount_percent,
                "quantity": line.quantity,
                "unit_price_per_million": micros_to_decimal(line.unit_price_micros_per_million),
                "unit_price_micros_per_million": line.unit_price_micros_per_million,
                "amount": micros_to_decimal(line.amount_micros),
                "amount_micros": line.amount_micros,
            }
            for line in statement.lines
        ],
        "charges_micros": statement.charges_micros,
        "refunds_micros": statement.refunds_micros,
        "total": micros_to_decimal(statement.total_micros),
        "total_micros": statement.total_micros,
        "ledger": {
            "charges_micros": statement.ledger_charges_micros,
            "refunds_micros": statement.ledger_refunds_micros,
            "balanced": statement.balanced,
        },
    }


csv_header = (
    "model",
    "price_version",
    "tier",
    "discount_percent",
    "unit",
    "quantity",
    "unit_price_micros_per_million",
    "amount_micros",
    "amount",
)


def statement_csv(statement: Statement) -> str:
    """One row per line item and a final total row; amounts in micros and in credits (exact decimals)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(csv_header)
    for line in statement.lines:
        writer.writerow(
            (
                line.model,
                line.price_version,
                line.tier,
                line.discount_percent,
                line.unit,
                line.quantity,
                line.unit_price_micros_per_million,
                line.amount_micros,
                micros_to_decimal(line.amount_micros),
            )
        )
    total = statement.total_micros
    writer.writerow(("", "", "", "", "total", "", "", total, micros_to_decimal(total)))
    return out.getvalue()


def load_statement(store: UsageStore, org_id: str, start: datetime, end: datetime) -> Statement:
    """Three grouped queries on ClickHouse, then the pure allocation above."""
    return build_statement(
        org_id,
        start,
        end,
        store.priced_usage(org_id, start, end),
        store.charged_totals(org_id, start, end),
        store.posted_totals(org_id, start, end),
    )
