"""Moments: the one clock, the one ISO 8601 parser and formatter, and the range every stored moment
lies in. Every layer reads time through these, so "now", "Z" and "no offset means UTC" mean the same
thing in the API, the CLI, the log and ClickHouse."""

from __future__ import annotations

from datetime import UTC, datetime

# What ClickHouse's DateTime64 holds (and so what a query moment may name): outside it, a moment would
# be silently clamped there, so the API refuses it instead.
moment_min = datetime(1900, 1, 1, tzinfo=UTC)
moment_max = datetime(2299, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
moment_example = "2026-11-01T00:00:00Z"


class MomentError(ValueError):
    """Text that is not an ISO 8601 moment in range; the message says what is expected."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def in_moment_range(moment: datetime) -> bool:
    """Whether an aware ``moment`` lies in [moment_min, moment_max]; never raises, whatever its offset."""
    try:
        utc = moment.astimezone(UTC)
    except (OverflowError, ValueError):
        return False  # its UTC form is before year 1 or after 9999
    return moment_min <= utc <= moment_max


def parse_moment(text: str, name: str = "moment", whole_ms: bool = False) -> datetime:
    """An ISO 8601 moment (``Z`` or an offset; UTC when it names none) within the stored range.

    ``whole_ms`` truncates to the millisecond, the precision ClickHouse keeps ``created_at`` at (a
    finer bound would split rows differently there and here)."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise MomentError(f"{name} must be an ISO 8601 date-time, e.g. {moment_example}.") from None
    moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    if not in_moment_range(moment):
        raise MomentError(f"{name} must lie from {iso(moment_min)} to {iso(moment_max.replace(microsecond=0))}.")
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000) if whole_ms else moment


def iso(moment: datetime) -> str:
    """A moment as the API shows it: ISO 8601 in UTC with ``Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def iso_or_none(moment: datetime | None) -> str | None:
    return None if moment is None else iso(moment)
