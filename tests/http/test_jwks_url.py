"""The JWKS served by URL (a local HTTP server): tokens verify, a rotated key is fetched on its first
use, and a stream of unknown key ids costs at most one fetch per refresh interval."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Gateway, Signer

pytestmark = pytest.mark.heavy  # waits out the key-set refresh intervals


class JwksServer:
    def __init__(self, signers: list[Signer]) -> None:
        self.signers = signers
        self.hits = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                body = json.dumps({"keys": [s.jwk() for s in owner.signers]}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Gateway, JwksServer]]:
    server = JwksServer([Signer("url-key-1")])
    gateway = Gateway(tmp_path, jwks_file="", jwks_url=server.url, jwks_refresh_s_min=1.0)
    try:
        yield gateway, server
    finally:
        gateway.close()
        server.close()


def test_jwks_by_url_verifies_and_rotates(served: tuple[Gateway, JwksServer]) -> None:
    gateway, server = served
    org = gateway.organization()
    first = server.signers[0]
    assert gateway.call("GET", "/v1/models", first.token(org, "user:read")).status_code == 200
    assert server.hits == 1
    assert gateway.call("GET", "/v1/models", first.token(org, "user:read", sub="other")).status_code == 200
    assert server.hits == 1  # cached

    second = Signer("url-key-2")
    server.signers.append(second)
    time.sleep(1.1)  # past jwks_refresh_s_min
    assert gateway.call("GET", "/v1/models", second.token(org, "user:read")).status_code == 200
    assert server.hits == 2

    for i in range(30):  # forged key ids: the issuer sees at most one more fetch in this second
        response = gateway.call("GET", "/v1/models", Signer(f"nobody-{i}").token(org, "user:read"))
        assert response.status_code == 401
    assert server.hits <= 3


def test_an_unreachable_jwks_keeps_the_known_keys(served: tuple[Gateway, JwksServer]) -> None:
    gateway, server = served
    org = gateway.organization()
    token = server.signers[0].token(org, "user:read")
    assert gateway.call("GET", "/v1/models", token).status_code == 200
    server.close()
    gateway.core.jwks._fetched_at = None  # due for a refetch, which now fails
    fresh = server.signers[0].token(org, "user:read", sub="after-outage")
    assert gateway.call("GET", "/v1/models", fresh).status_code == 200
