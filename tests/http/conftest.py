"""The HTTP tier: the real app (guards, middleware, routes) behind Litestar's test client, on one
in-process stack for the whole tier (the embedded log, the ledger, a simulated worker and a projector
into the embedded ClickHouse engine in threads). Each test makes its own organizations, so they share
it without seeing each other."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Gateway
from workers import media


@pytest.fixture(scope="package")  # closed with the tier: one process holds one embedded ClickHouse at a time
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(Path(tmp_path_factory.mktemp("http")), with_usage=True)
    yield gateway
    gateway.close()


class _Images(BaseHTTPRequestHandler):
    """A PNG for a ``.png`` or ``.jpg`` path (each its own), else bytes that are no image."""

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        content = media.png_image(64, 48, path.encode()) if path.endswith((".png", ".jpg")) else b"not an image"
        self.send_response(200)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def images_url(gw: Gateway) -> Iterator[str]:
    """Reference images served from 127.0.0.1 (no trailing slash), which the gateway may fetch from for
    the module (TOLLGATE_FILE_URL_PRIVATE_ALLOWED)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = gw.core.settings
    gw.core.settings = replace(settings, file_url_private_allowed=True)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    gw.core.settings = settings
    server.shutdown()
    server.server_close()
