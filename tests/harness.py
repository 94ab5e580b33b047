"""An in-process gateway on the embedded log, with the ledger and a simulated worker in threads:
the real app, guards and middleware behind Litestar's TestClient, plus helpers for keys and JWTs."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from litestar.testing import TestClient

from eventlog import Outgoing, topics
from eventlog.embedded import EmbeddedLog
from eventlog.settings import Settings
from gateway.app import create_app
from tollgate.wiring import Stack
from workers.backends import SimulatedBackend

admin_token = "tga_harness_admin"
issuer = "https://issuer.test"
audience = "tollgate-test"


class Signer:
    """An Ed25519 key pair with a key id, and the JWKS entry of its public half."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = Ed25519PrivateKey.generate()

    def jwk(self) -> dict[str, Any]:
        entry = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(self.private.public_key()))
        return {**entry, "kid": self.kid, "use": "sig", "alg": "EdDSA"}

    def token(self, org_id: str, scopes: str, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": issuer, "aud": audience, "sub": "svc-test", "iat": now, "exp": now + 300}
        body.update({"org_id": org_id, "scope": scopes})
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.private, algorithm="EdDSA", headers={"kid": self.kid})


def write_jwks(path: Path, signers: list[Signer]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"keys": [s.jwk() for s in signers]}))
    temporary.replace(path)


class Gateway:
    def __init__(self, root: Path, with_usage: bool = False, **overrides: Any) -> None:
        self.root = root
        self.jwks_path = root / "jwks.json"
        self.signer = Signer("key-1")
        write_jwks(self.jwks_path, [self.signer])
        settings = Settings(
            kafka_bootstrap="",
            data_dir=root,
            admin_token=admin_token,
            instance_id=f"harness-{uuid.uuid4().hex[:6]}",
            jwks_file=str(self.jwks_path),
            jwt_issuer=issuer,
            jwt_audience=audience,
            jwks_refresh_s_min=0.2,
            jwt_leeway_s=1,
            ip_requests_per_window_max=1_000_000,
            poll_wait_ms=20,
        )
        self.settings = replace(settings, **overrides)
        self.stack = Stack(self.settings, EmbeddedLog(root / "log.sqlite3", partitions=topics.partitions_per_topic))
        self.log = self.stack.log
        self.stop_event = self.stack.stop
        self.stack.start_ledger(signed=False)
        self.stack.start_workers(lambda: SimulatedBackend(0))
        self.store: Any = None
        if with_usage:
            self.store = self.stack.open_store()
            self.stack.start_projector("tollgate-projector-harness")
        self.core = self.stack.start_gateway(admin_token)
        self.app = create_app(self.core)
        self.client = TestClient(self.app)
        self.client.__enter__()

    def close(self) -> None:
        self.client.__exit__(None, None, None)
        self.stack.close()

    def sdk_http_client(self) -> httpx2.Client:
        """An httpx2 client (what the anthropic SDK takes) whose requests go to this in-process app."""

        def handle(request: httpx2.Request) -> httpx2.Response:
            answer = self.client.request(
                request.method, str(request.url), headers=list(request.headers.multi_items()), content=request.read()
            )
            return httpx2.Response(answer.status_code, headers=answer.headers.multi_items(), content=answer.content)

        return httpx2.Client(transport=httpx2.MockTransport(handle))

    def record_sends(
        self, monkeypatch: pytest.MonkeyPatch, passing: Callable[[Outgoing], bool] = lambda record: True
    ) -> list[list[Outgoing]]:
        """The records of every call of the gateway producer's ``send`` from here on, a list per call; of
        them only those ``passing`` reach the log. Until ``monkeypatch.undo()``."""
        producer = self.core._producer
        send = producer.send
        calls: list[list[Outgoing]] = []

        def recording(records: list[Outgoing]) -> None:
            calls.append(list(records))
            send([record for record in records if passing(record)])

        monkeypatch.setattr(producer, "send", recording)
        return calls

    def call(self, method: str, path: str, key: str | None = None, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return self.client.request(method, path, headers=headers, **kwargs)

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.call(method, path, admin_token, **kwargs)

    def organization(self, plan: str = "pro", limits: dict[str, int] | None = None, credits: str = "") -> str:
        response = self.admin("POST", "/v1/organizations", json={"name": "org", "plan": plan})
        assert response.status_code == 201, response.text
        org_id = str(response.json()["id"])
        if limits is not None:
            response = self.admin("POST", f"/v1/organizations/{org_id}/limits", json=limits)
            assert response.status_code == 200, response.text
        if credits:
            response = self.admin("POST", f"/v1/organizations/{org_id}/credits", json={"amount": credits})
            assert response.status_code == 201, response.text
        return org_id

    def key(self, org_id: str, scopes: list[str], **extra: Any) -> tuple[str, str]:
        """(secret, token id) of a new key."""
        response = self.admin(
            "POST", f"/v1/organizations/{org_id}/tokens", json={"name": "k", "scopes": scopes, **extra}
        )
        assert response.status_code == 201, response.text
        return str(response.json()["secret"]), str(response.json()["token"]["id"])
