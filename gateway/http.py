"""HTTP helpers every route module shares: JSON answers, bodies decoded at the boundary, query
parameters (limits and moments) refused with a 400 that names them, and ids derived from an
Idempotency-Key."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response

from gateway.errors import ApiError, from_validation_error
from schemas.ids import new_id
from schemas.moments import MomentError, parse_moment

T = TypeVar("T")

# Decimal amounts go out as JSON numbers with their exact digits, never through a float.
_encoder = msgspec.json.Encoder(decimal_format="number")
page_size_max = 200
# JSON nesting a generation body may have: real bodies (tool schemas included) stay far below it, and
# a bound here keeps every later decode and encode of the payload (the worker's included) far from
# the interpreter's recursion limit.
json_depth_max = 64
# A query integer: ASCII digits only (str.isdigit also takes '²', which int() refuses), and short
# enough that int() stays cheap whatever is sent.
_query_int_pattern = re.compile(r"[0-9]{1,9}")


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(
        content=_encoder.encode(content), status_code=status_code, media_type="application/json", headers=headers
    )


def encode_json(content: Any) -> bytes:
    return _encoder.encode(content)


def request_id(request: Request[Any, Any, Any]) -> str:
    """The request's id (``x-request-id``); derived from the Idempotency-Key when one was sent."""
    return str(request.scope["state"]["request_id"])


def derived_id(request: Request[Any, Any, Any], prefix: str) -> str:
    """A fresh id, or with an Idempotency-Key one derived from it, so that a retry names the same
    grant, refund or adjustment and the ledger refuses to apply it twice."""
    derived = request.scope["state"].get("idempotency_derived")
    return f"{prefix}_{derived}" if derived else new_id(prefix)


async def read_body(request: Request[Any, Any, Any], body_bytes_max: int) -> bytes:
    body = await request.body()
    if len(body) > body_bytes_max:
        raise ApiError(413, f"Request body too large: at most {body_bytes_max} bytes.", code="request_too_large")
    return body


def _too_deep() -> ApiError:
    return ApiError(400, f"The request body is nested more than {json_depth_max} levels deep.", code="invalid_json")


def decode(body: bytes, kind: type[T]) -> T:
    """A JSON body as ``kind``, or a 400 naming the offending field (or saying it nests too deep)."""
    try:
        return msgspec.json.decode(body, type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        raise from_validation_error(error) from None
    except RecursionError:  # msgspec stops at the interpreter's limit, cleanly
        raise _too_deep() from None


def check_depth(value: Any) -> None:
    """A 400 when decoded JSON nests deeper than ``json_depth_max`` (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > json_depth_max:
            raise _too_deep()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


async def decode_body(request: Request[Any, Any, Any], kind: type[T], body_bytes_max: int) -> T:
    return decode(await read_body(request, body_bytes_max), kind)


def limit_param(request: Request[Any, Any, Any], default: int = 100, maximum: int = page_size_max) -> int:
    raw_limit = request.query_params.get("limit", str(default))
    if not _query_int_pattern.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= maximum:
        raise ApiError(400, f"limit must be an integer from 1 to {maximum}.", code="invalid_parameter", param="limit")
    return int(raw_limit)


def moment_param(request: Request[Any, Any, Any], name: str) -> datetime | None:
    """An ISO 8601 query moment (UTC when it names no offset) within what ClickHouse stores, or a 400."""
    value = request.query_params.get(name)
    if value is None:
        return None
    try:
        return parse_moment(value, name)
    except MomentError as error:
        raise ApiError(400, str(error), code="invalid_parameter", param=name) from None


def window_params(request: Request[Any, Any, Any]) -> tuple[datetime | None, datetime | None]:
    """``from`` and ``to``, either of them open; a window that ends before it starts is a 400."""
    start, end = moment_param(request, "from"), moment_param(request, "to")
    if start is not None and end is not None and start > end:
        raise ApiError(400, "from must not be after to.", code="invalid_parameter", param="from")
    return start, end
