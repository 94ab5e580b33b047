"""Run Tollgate roles as real processes for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

tollgate = [sys.executable, "-m", "tollgate"]


class Role:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*tollgate, *args], env={**os.environ, **env}, stdout=self._log, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 20) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self._log.close()


def wait_until_serving(base_url: str, role: Role, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if role.process.poll() is not None:
            raise RuntimeError(f"{role.name} exited with {role.process.returncode}:\n{role.output()[-4000:]}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{role.name} did not serve within {timeout_s}s:\n{role.output()[-4000:]}")


def wait_for_text(role: Role, text: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in role.output():
            return
        if role.process.poll() is not None:
            raise RuntimeError(f"{role.name} exited with {role.process.returncode}:\n{role.output()[-4000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"{role.name} never printed {text!r}:\n{role.output()[-4000:]}")


class Admin:
    """The admin API through plain HTTP."""

    def __init__(self, base_url: str, admin_token: str) -> None:
        self.client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=60)

    def organization(self, name: str = "acme", plan: str = "pro") -> str:
        response = self.client.post("/v1/organizations", json={"name": name, "plan": plan})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def grant(self, org_id: str, amount: str | int) -> dict[str, Any]:
        response = self.client.post(f"/v1/organizations/{org_id}/credits", json={"amount": amount, "kind": "paid"})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def token(self, org_id: str, scopes: list[str] | None = None) -> str:
        body = {"name": "test", "scopes": scopes or ["user:read", "user:write"]}
        response = self.client.post(f"/v1/organizations/{org_id}/tokens", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["secret"])


def usage(base_url: str, key: str, **params: Any) -> dict[str, Any]:
    response = httpx.get(f"{base_url}/v1/account/usage", params=params, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    return dict(json.loads(response.text, parse_float=Decimal))
