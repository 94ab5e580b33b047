"""Files a generation request sends (audio to transcribe, images to edit): a multipart file, base64 in
a JSON body (a ``data:`` URL too), or a URL the gateway fetches (``file_url``). Each is bounded in size,
because one Kafka record carries it to its worker, and a fetch is bounded in time; every failure is a
4xx in the OpenAI envelope naming the field, never a 500.

A fetched URL is read by the gateway, before the hold, so that the hold is priced on what the file
holds (a transcription's duration), exactly as an upload's is.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from litestar import Request
from litestar.datastructures import UploadFile

from gateway.errors import ApiError

upload_bytes_max = 3 * 1024 * 1024  # fits one Kafka record with its base64 and envelope
file_url_timeout_s = 10.0  # the whole fetch: connect, headers and body
file_url_redirects_max = 3
_fetch_chunk_bytes = 64 * 1024


@dataclass(frozen=True, slots=True)
class Upload:
    content: bytes
    filename: str | None


def too_large(param: str, bytes_max: int = upload_bytes_max) -> ApiError:
    return ApiError(413, f"Files may be at most {bytes_max} bytes.", code="file_too_large", param=param)


async def read_form(request: Request[Any, Any, Any]) -> Any:
    """The multipart (or urlencoded) form, or a 400 when a text field cannot be decoded."""
    try:
        return await request.form()
    except (UnicodeDecodeError, LookupError):  # Litestar decodes text fields by their declared charset
        raise ApiError(
            400,
            "A form text field is not valid in its declared charset, or names a charset that does not exist; "
            "send text fields as UTF-8.",
            code="invalid_encoding",
        ) from None


def form_text(form: Any, name: str) -> str | None:
    """A multipart field that must be text: a part sent as a file is a 400 naming it, here rather than
    a failure to encode the job's payload later."""
    value = form.get(name)
    if value is None or isinstance(value, str):
        return value
    raise ApiError(400, f"'{name}' must be a text field, not a file.", code="invalid_type", param=name)


def form_texts(form: Any, name: str) -> list[str]:
    """Every value of a repeated text field (``timestamp_granularities[]`` as the OpenAI SDK sends it)."""
    values = form.getall(name) if hasattr(form, "getall") and name in form else []
    for value in values:
        if not isinstance(value, str):
            raise ApiError(400, f"'{name}' must be a text field, not a file.", code="invalid_type", param=name)
    return [str(value) for value in values]


async def optional_form_file(form: Any, name: str) -> Upload | None:
    """The file of a multipart field that may be left out."""
    return None if form.get(name) is None else await form_file(form, name)


async def form_file(form: Any, name: str) -> Upload:
    """The file of a multipart field, at most ``upload_bytes_max`` bytes."""
    upload = form.get(name)
    if not isinstance(upload, UploadFile):
        raise ApiError(
            400, f"Send the file as a multipart '{name}' field.", code="missing_required_parameter", param=name
        )
    return Upload(await _bounded_read(upload, name), upload.filename)


async def form_files(form: Any, name: str) -> list[Upload]:
    """Every file of a repeated multipart field (``image`` or ``image[]``), at most ``upload_bytes_max``
    bytes together."""
    uploads = form.getall(name) if name in form else []
    files: list[Upload] = []
    total = 0
    for upload in uploads:
        if not isinstance(upload, UploadFile):
            raise ApiError(400, f"'{name}' must be a file.", code="invalid_type", param=name)
        content = await _bounded_read(upload, name, upload_bytes_max - total)
        total += len(content)
        files.append(Upload(content, upload.filename))
    return files


async def _bounded_read(upload: UploadFile, param: str, bytes_max: int = upload_bytes_max) -> bytes:
    content = await upload.read(bytes_max + 1)
    if len(content) > bytes_max:
        raise too_large(param)
    return content


def base64_file(value: Any, param: str) -> bytes:
    """A file sent as base64 text (standard or URL-safe alphabet), or as a ``data:`` URL."""
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"'{param}' must be base64 text or a data: URL.", code="invalid_type", param=param)
    text = value
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ApiError(400, f"'{param}' is a data: URL that is not base64.", code="invalid_base64", param=param)
    if len(text) > (upload_bytes_max + 2) // 3 * 4 + 4:
        raise too_large(param)
    try:
        content = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"'{param}' is not valid base64.", code="invalid_base64", param=param) from None
    if not content:
        raise ApiError(400, f"'{param}' is empty.", code="invalid_file", param=param)
    if len(content) > upload_bytes_max:
        raise too_large(param)
    return content


def _unreachable(url: str, why: str) -> ApiError:
    return ApiError(400, f"Could not fetch file_url {url[:200]}: {why}.", code="file_url_unreachable", param="file_url")


class _PublicOnly(AbstractResolver):
    """Resolves as usual, keeping public addresses only: the connection is made to the addresses
    checked here (no second lookup a changed DNS answer could slip through), redirects included."""

    def __init__(self) -> None:
        self._resolver = aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        public = [entry for entry in found if ipaddress.ip_address(entry["host"]).is_global]
        if not public:
            raise OSError(f"{host} is not a public address")
        return public

    async def close(self) -> None:
        await self._resolver.close()


async def fetch_url(url: Any, private_allowed: bool = False) -> Upload:
    """GET ``url`` (http or https), at most ``upload_bytes_max`` bytes within ``file_url_timeout_s``;
    only from public addresses unless ``private_allowed`` (``TOLLGATE_FILE_URL_PRIVATE_ALLOWED``)."""
    timeout_s = file_url_timeout_s
    if not isinstance(url, str) or not url:
        raise ApiError(400, "'file_url' must be an http(s) URL.", code="invalid_type", param="file_url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(400, "'file_url' must be an http(s) URL.", code="invalid_file_url", param="file_url")
    if not private_allowed:
        try:
            literal = ipaddress.ip_address(parts.hostname.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None and not literal.is_global:
            raise ApiError(400, "'file_url' must name a public address.", code="file_url_forbidden", param="file_url")
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(resolver=None if private_allowed else _PublicOnly())
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout, connector=connector) as session,
            session.get(url, max_redirects=file_url_redirects_max) as response,
        ):
            if response.status != 200:
                raise _unreachable(url, f"it answered HTTP {response.status}")
            if (response.content_length or 0) > upload_bytes_max:
                raise too_large("file_url")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_chunked(_fetch_chunk_bytes):
                size += len(chunk)
                if size > upload_bytes_max:
                    raise too_large("file_url")
                chunks.append(chunk)
    except (TimeoutError, aiohttp.ClientError, ValueError, OSError) as error:
        why = f"it took longer than {timeout_s:g} s" if isinstance(error, TimeoutError) else str(error)
        raise _unreachable(url, why or type(error).__name__) from None
    name = parts.path.rsplit("/", 1)[-1] or None
    return Upload(b"".join(chunks), name)
