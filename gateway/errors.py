"""One map from error categories to status codes and the OpenAI error envelope.

Every error the gateway returns has this shape: {"error": {"message", "type", "code", "param"}}.
Messages say how to fix the problem.
"""

from __future__ import annotations

import logging
import re
import uuid

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Send

from eventlog import RecordTooLarge, record_value_bytes_max
from schemas.api import ErrorBody, ErrorEnvelope

logger = logging.getLogger(__name__)

_types_by_status = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    414: "invalid_request_error",
    431: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


class ApiError(Exception):
    def __init__(
        self,
        status_code: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        outcome: bool = False,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}
        # The outcome of a request that ran (refused by the ledger, failed, cancelled): kept for its
        # Idempotency-Key and replayed, as a success is. Other errors are not: a retry may succeed.
        self.outcome = outcome


_path_pattern = re.compile(r"at `\$\.?([^`]*)`")
_missing_pattern = re.compile(r"missing required field `([^`]+)`")


def from_validation_error(error: msgspec.ValidationError | msgspec.DecodeError) -> ApiError:
    """A msgspec decode error as a 400 that names the offending field (``param``: its path, e.g.
    ``messages[0].role``), also when the field is missing rather than wrong."""
    text = str(error)
    match = _path_pattern.search(text)
    path = match.group(1) if match else ""
    if isinstance(error, msgspec.ValidationError):
        missing = _missing_pattern.search(text)
        if missing is not None:
            # As OpenAI words it, so SDK users recognise it.
            param = f"{path}.{missing.group(1)}" if path else missing.group(1)
            return ApiError(
                400, f"Missing required parameter: '{param}'.", code="missing_required_parameter", param=param
            )
        return ApiError(400, f"Invalid request body: {text}", code="invalid_parameter", param=path or None)
    return ApiError(400, f"Request body is not valid JSON: {text}", code="invalid_json")


def error_response(error: ApiError, request_id: str | None = None) -> Response[bytes]:
    body = ErrorEnvelope(
        error=ErrorBody(
            message=error.message,
            type=_types_by_status.get(error.status_code, "api_error"),
            code=error.code,
            param=error.param,
        )
    )
    headers = {"x-request-id": request_id or f"req_{uuid.uuid4().hex}", **error.headers}
    return Response(
        content=msgspec.json.encode(body),
        status_code=error.status_code,
        media_type="application/json",
        headers=headers,
    )


async def send_error(send: Send, error: ApiError, request_id: str | None) -> None:
    """An error answered from ASGI middleware, before any handler: the same envelope and headers."""
    response = error_response(error, request_id)
    body = response.content if isinstance(response.content, bytes) else b""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers.extend((k.encode(), v.encode()) for k, v in response.headers.items())
    start: HTTPResponseStartEvent = {"type": "http.response.start", "status": error.status_code, "headers": headers}
    await send(start)
    await send(HTTPResponseBodyEvent(type="http.response.body", body=body, more_body=False))


def _request_id(request: Request) -> str | None:
    request_id = request.scope.get("state", {}).get("request_id")
    return str(request_id) if request_id else None


def handle_api_error(request: Request, error: ApiError) -> Response[bytes]:
    if error.outcome:
        request.scope.setdefault("state", {})["idempotent_outcome"] = True  # gateway/idempotency.py keeps it
    return error_response(error, _request_id(request))


def handle_http_exception(request: Request, error: HTTPException) -> Response[bytes]:
    if isinstance(error, NotFoundException):
        path = request.scope.get("state", {}).get("path_as_sent") or request.url.path  # an alias as sent
        api_error = ApiError(404, f"No such route: {request.method} {path}", code="not_found")
    elif isinstance(error, ValidationException):
        api_error = ApiError(400, f"Invalid request: {error.detail}", code="invalid_parameter")
    else:
        api_error = ApiError(error.status_code, str(error.detail), code=None)
    return error_response(api_error, _request_id(request))


def handle_record_too_large(request: Request, error: RecordTooLarge) -> Response[bytes]:
    """What a request asked to record (its hold, with the prompt and the files it names inlined) is
    over the log's limit for one record: the request's size, not a fault of the service. Raised before
    anything of it was appended, so nothing is held or charged."""
    api_error = ApiError(
        413,
        f"This request, with the files it names, is over the {record_value_bytes_max:,} bytes one request "
        "may take; send less (fewer or smaller files or images).",
        code="request_too_large",
    )
    return error_response(api_error, _request_id(request))


def handle_unexpected(request: Request, error: Exception) -> Response[bytes]:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(
        ApiError(500, "Internal error. Retry later; quote the x-request-id header when reporting it."),
        _request_id(request),
    )


exception_handlers = {
    ApiError: handle_api_error,
    HTTPException: handle_http_exception,
    RecordTooLarge: handle_record_too_large,
    Exception: handle_unexpected,
}
