"""Opaque page cursors of the usage events and ledger postings pages: a position (moment, event id)
that the API hands out and takes back, validated so that a forged cursor is a 400, never a crash."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta

from projections.usage.rows import PostingRow, UsageRow
from schemas.moments import in_moment_range


class CursorError(ValueError):
    """A cursor this store did not hand out."""


def posting_cursor(row: PostingRow) -> str:
    return f"{row.created_at.isoformat()}~{row.event_id}~{row.posting}"


_epoch = datetime(1970, 1, 1, tzinfo=UTC)
# Millis since the epoch of any moment in range fit in 13 digits and a sign; more is not ours.
_millis_pattern = re.compile(r"-?[0-9]{1,13}")
_posting_pattern = re.compile(r"[0-9]{1,3}")
posting_index_max = 255  # ledger_postings.posting is a UInt8


def parse_posting_cursor(cursor: str) -> tuple[datetime, str, int]:
    try:
        created_at, event_id, posting = cursor.split("~")
        moment = datetime.fromisoformat(created_at)
        if not _posting_pattern.fullmatch(posting) or int(posting) > posting_index_max:
            raise ValueError("posting out of range")
        if not in_moment_range(moment if moment.tzinfo else moment.replace(tzinfo=UTC)):
            raise ValueError("moment out of range")
        return moment, event_id, int(posting)
    except ValueError as error:
        raise CursorError(f"cursor {cursor!r} is not one this API returned") from error


cursor_prefix = "cur_"


def usage_cursor(row: UsageRow) -> str:
    """An opaque position after ``row`` in newest-first order: (created_at, event_id), so rows that
    share a millisecond at a page boundary are neither skipped nor repeated."""
    millis = int(row.created_at.timestamp() * 1000 + 0.5)
    raw = f"{millis}:{row.event_id}".encode()
    return cursor_prefix + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_usage_cursor(cursor: str) -> tuple[datetime, str]:
    if not cursor.startswith(cursor_prefix):
        raise CursorError(f"cursor {cursor!r} is not one this API returned")
    body = cursor.removeprefix(cursor_prefix)
    try:
        millis, _, event_id = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode().partition(":")
        if not event_id or not _millis_pattern.fullmatch(millis):
            raise ValueError("no event id, or no millis")
        # Integer arithmetic, no float: exact, and 13 digits cannot overflow a datetime.
        moment = _epoch + timedelta(milliseconds=int(millis))
        if not in_moment_range(moment):
            raise ValueError("moment out of range")
        return moment, event_id
    except (ValueError, OverflowError) as error:
        raise CursorError(f"cursor {cursor!r} is not one this API returned") from error
