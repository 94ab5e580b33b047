"""Files, as OpenAI's Files API: ``POST /v1/files`` (multipart ``file`` and ``purpose``), ``GET
/v1/files`` (cursor pages), ``GET /v1/files/{id}``, ``DELETE /v1/files/{id}`` and ``GET
/v1/files/{id}/content``.

The bytes go to the blob store (``gateway/blobs.py``) first, then the ledger records the file
(``StoreFile`` → ``FileStored``) or refuses it past the organization's storage limit; the ledger
meters storage from those events (``ledger/storage.py``). Every answer says the organization's
``x-storage-used-bytes`` and ``x-storage-limit-bytes``. Another organization's file is a 404.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from litestar import Request, Response, delete, get, post
from litestar.datastructures import UploadFile
from litestar.params import FromPath

from gateway.auth import authorize
from gateway.core import Core, GatewayCore
from gateway.errors import ApiError
from gateway.http import derived_id, json_response, limit_param
from ledger.storage import storage_limit_exceeded
from projections.files import FileRecord
from schemas.commands import DeleteFile, StoreFile
from schemas.events import CommandRejected, FileDeleted, FileStored
from schemas.ids import new_id
from schemas.moments import utc_now

FILES = "/v1/files"
# OpenAI's purposes; "batch" files are a batch's input (/v1/batches), and its output files are
# "batch_output".
purposes = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
files_page_size_max = 10_000  # OpenAI's bound on GET /v1/files?limit
filename_chars_max = 255
unlimited_bytes = 1 << 62  # the limit a batch's output files are recorded under: never refused


def storage_headers(core: GatewayCore, org_id: str) -> dict[str, str]:
    return {
        "x-storage-used-bytes": str(core.stored_files.used_bytes(org_id)),
        "x-storage-limit-bytes": str(core.settings.storage_bytes_max),
    }


def file_body(record: FileRecord) -> dict[str, Any]:
    return {
        "id": record.file_id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": record.created_at,
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


def _not_found(file_id: str) -> ApiError:
    return ApiError(404, f"No file '{file_id}' in this organization.", code="file_not_found", param="file_id")


def _found(core: GatewayCore, org_id: str, file_id: str) -> FileRecord:
    record = core.stored_files.get(org_id, file_id)
    if record is None:
        raise _not_found(file_id)
    return record


async def store_file(
    core: GatewayCore,
    org_id: str,
    token_id: str,
    file_id: str,
    filename: str,
    purpose: str,
    data: bytes,
    over_limit_allowed: bool = False,
) -> FileRecord:
    """Put the bytes in the blob store, then have the ledger record the file (or refuse it past the
    storage limit, and the bytes are deleted). Batches store their output files this way too, past
    the limit (``over_limit_allowed``): they hold answers already charged; they count toward it after."""
    earlier = core.stored_files.get(org_id, file_id)
    if earlier is not None:
        return earlier  # a retry (its Idempotency-Key names the same file) of an upload that was recorded
    limit = core.settings.storage_bytes_max
    if over_limit_allowed:
        limit = unlimited_bytes
    if core.stored_files.used_bytes(org_id) + len(data) > limit:
        raise _over_limit(core, org_id, len(data))  # known here already; the ledger decides races
    blob_key = f"{org_id}/{file_id}"
    await asyncio.to_thread(core.blobs.put, blob_key, data)  # a disk or network write: off the event loop
    command = StoreFile(
        command_id=f"store:{file_id}",
        org_id=org_id,
        issued_at=utc_now(),
        correlation_id=file_id,
        file_id=file_id,
        filename=filename,
        purpose=purpose,
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        blob_key=blob_key,
        limit_bytes=limit,
        token_id=token_id,
    )
    try:
        outcome = await core.ledger_command(command)
    except BaseException:
        core.blobs.delete(blob_key)  # unknown outcome: a recorded file without bytes is worse than none
        raise
    if isinstance(outcome, CommandRejected):
        core.blobs.delete(blob_key)
        if outcome.code == storage_limit_exceeded:
            raise _over_limit(core, org_id, len(data))
        raise ApiError(409, f"The file could not be recorded: {outcome.code}.", code=outcome.code)
    assert isinstance(outcome, FileStored), outcome
    record = core.stored_files.get(org_id, file_id)
    assert record is not None
    return record


def _over_limit(core: GatewayCore, org_id: str, size: int) -> ApiError:
    used, limit = core.stored_files.used_bytes(org_id), core.settings.storage_bytes_max
    return ApiError(
        413,
        f"This file ({size} bytes) would take the organization's stored files past its storage limit: {used} of "
        f"{limit} bytes are used. Delete files (DELETE /v1/files/{{id}}) or ask for a larger limit.",
        code=storage_limit_exceeded,
        param="file",
        headers=storage_headers(core, org_id),
    )


def _form_text(form: Any, name: str) -> str | None:
    value = form.get(name)
    if value is None or isinstance(value, str):
        return value
    raise ApiError(400, f"'{name}' must be a text field, not a file.", code="invalid_type", param=name)


@post(FILES, operation_id="createFile", opt={"scope": "user:write", "rate": "requests"}, status_code=200)
async def create_file(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    token = authorize(request, "user:write")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(
            400,
            "Upload a file as multipart/form-data with a 'file' part and a 'purpose' field.",
            code="invalid_request",
            param="file",
        )
    try:
        form = await request.form()
    except (UnicodeDecodeError, LookupError):
        raise ApiError(
            400,
            "A form text field is not valid in its declared charset; send text fields as UTF-8.",
            code="invalid_encoding",
        ) from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(
            400, "Send the file as a multipart 'file' part.", code="missing_required_parameter", param="file"
        )
    purpose = _form_text(form, "purpose")
    if purpose is None:
        raise ApiError(400, "'purpose' is required.", code="missing_required_parameter", param="purpose")
    if purpose not in purposes:
        raise ApiError(
            400, f"'purpose' must be one of {', '.join(purposes)}.", code="invalid_parameter", param="purpose"
        )
    data = await upload.read()
    if len(data) > core.settings.request_body_bytes_max:  # the body limit bounds it already; kept explicit
        raise ApiError(413, "The file is too large.", code="file_too_large", param="file")
    if not data:
        raise ApiError(400, "The file is empty.", code="invalid_file", param="file")
    filename = (upload.filename or "file").replace("\\", "/").rsplit("/", 1)[-1][:filename_chars_max] or "file"
    file_id = derived_id(request, "file").replace("file_", "file-", 1)
    record = await store_file(core, token.org_id, token.token_id, file_id, filename, purpose, data)
    return json_response(file_body(record), headers=storage_headers(core, token.org_id))


@get(FILES, operation_id="listFiles", opt={"scope": "user:read"})
async def list_files(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    token = authorize(request, "user:read")
    limit = limit_param(request, default=files_page_size_max, maximum=files_page_size_max)
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, "order must be 'asc' or 'desc'.", code="invalid_parameter", param="order")
    purpose = request.query_params.get("purpose")
    after = request.query_params.get("after")
    records, more = core.stored_files.page(token.org_id, limit, after, order == "desc", purpose)
    body = {
        "object": "list",
        "data": [file_body(record) for record in records],
        "first_id": records[0].file_id if records else None,
        "last_id": records[-1].file_id if records else None,
        "has_more": more,
    }
    return json_response(body, headers=storage_headers(core, token.org_id))


@get(f"{FILES}/{{file_id:str}}", operation_id="retrieveFile", opt={"scope": "user:read"})
async def retrieve_file(request: Request[Any, Any, Any], core: Core, file_id: FromPath[str]) -> Response[bytes]:
    token = authorize(request, "user:read")
    record = _found(core, token.org_id, file_id)
    return json_response(file_body(record), headers=storage_headers(core, token.org_id))


@get(f"{FILES}/{{file_id:str}}/content", operation_id="downloadFile", opt={"scope": "user:read"})
async def file_content(request: Request[Any, Any, Any], core: Core, file_id: FromPath[str]) -> Response[bytes]:
    token = authorize(request, "user:read")
    record = _found(core, token.org_id, file_id)
    data = await asyncio.to_thread(core.blobs.get, record.blob_key)
    if data is None:
        raise ApiError(
            503,
            "The file's bytes cannot be read from the file store right now; retry shortly.",
            code="file_unavailable",
        )
    headers = {
        **storage_headers(core, token.org_id),
        "content-disposition": f'attachment; filename="{record.filename.replace(chr(34), "")}"',
    }
    return Response(content=data, media_type="application/octet-stream", headers=headers)


@delete(
    f"{FILES}/{{file_id:str}}",
    operation_id="deleteFile",
    opt={"scope": "user:write", "rate": "requests"},
    status_code=200,
)
async def delete_file(request: Request[Any, Any, Any], core: Core, file_id: FromPath[str]) -> Response[bytes]:
    token = authorize(request, "user:write")
    record = _found(core, token.org_id, file_id)
    command = DeleteFile(
        command_id=new_id("cmd"),
        org_id=token.org_id,
        issued_at=utc_now(),
        correlation_id=file_id,
        file_id=file_id,
    )
    outcome = await core.ledger_command(command)
    if isinstance(outcome, CommandRejected):
        raise _not_found(file_id)
    assert isinstance(outcome, FileDeleted), outcome
    core.blobs.delete(record.blob_key)
    body = {"id": file_id, "object": "file", "deleted": True}
    return json_response(body, headers=storage_headers(core, token.org_id))


route_handlers = [create_file, list_files, retrieve_file, file_content, delete_file]
