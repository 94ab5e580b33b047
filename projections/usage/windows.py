"""A time window as whole rollup buckets plus the raw partial ends, read in one query: exact to the
millisecond while reading as few raw rows as possible. Pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec


class WindowSplit(msgspec.Struct, frozen=True):
    """A time window as whole buckets (read from a rollup) and the partial ends (read raw)."""

    bucket: str  # the rollup's bucket column: "hour" or "day"
    raw: tuple[tuple[datetime | None, datetime | None], ...]  # [from, to) ranges of raw rows
    buckets: tuple[datetime | None, datetime | None] | None  # [first, end) of whole buckets, or none

    def raw_condition(self, parameters: dict[str, Any]) -> str:
        ranges = []
        for index, (lo, hi) in enumerate(self.raw):
            bounds = []
            if lo is not None:
                parameters[f"raw{index}_lo"] = lo
                bounds.append(f"created_at >= {{raw{index}_lo:DateTime64(3, 'UTC')}}")
            if hi is not None:
                parameters[f"raw{index}_hi"] = hi
                bounds.append(f"created_at < {{raw{index}_hi:DateTime64(3, 'UTC')}}")
            ranges.append("(" + (" AND ".join(bounds) or "1") + ")")
        return "(" + (" OR ".join(ranges) or "0") + ")"

    def rollup_condition(self, parameters: dict[str, Any]) -> str:
        if self.buckets is None:
            return "0"
        lo, hi = self.buckets
        bounds = []
        if lo is not None:
            parameters["bucket_lo"] = lo
            bounds.append(f"{self.bucket} >= {{bucket_lo:DateTime('UTC')}}")
        if hi is not None:
            parameters["bucket_hi"] = hi
            bounds.append(f"{self.bucket} < {{bucket_hi:DateTime('UTC')}}")
        return "(" + (" AND ".join(bounds) or "1") + ")"


def floor_to_bucket(moment: datetime, bucket: str) -> datetime:
    moment = moment.astimezone(UTC)
    floored = moment.replace(minute=0, second=0, microsecond=0)
    return floored.replace(hour=0) if bucket == "day" else floored


def split_window(start: datetime | None, end: datetime | None, bucket: str) -> WindowSplit:
    """[start, end) (None: unbounded) as whole hours or days plus the raw partial ends. Pure."""
    step = timedelta(days=1) if bucket == "day" else timedelta(hours=1)
    first = (
        None
        if start is None
        else (
            floor_to_bucket(start, bucket)
            if floor_to_bucket(start, bucket) == start
            else floor_to_bucket(start, bucket) + step
        )
    )
    last = None if end is None else floor_to_bucket(end, bucket)
    if first is not None and last is not None and first >= last:
        return WindowSplit(bucket, ((start, end),), None)
    raw: list[tuple[datetime | None, datetime | None]] = []
    if start is not None and first is not None and start < first:
        raw.append((start, first))
    if end is not None and last is not None and last < end:
        raw.append((last, end))
    return WindowSplit(bucket, tuple(raw), (first, last))
