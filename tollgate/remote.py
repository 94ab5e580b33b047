"""The live gateway, as the audit and replay commands see it: its admin API, with the errors a
newcomer hits (no token, a wrong token, nothing listening) turned into one clear line."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

request_timeout_s = 30.0


class CommandError(Exception):
    """A command cannot go on; the message is one line that says what to do. Exit code 2 for a usage
    mistake, 1 for everything else."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class GatewayClient:
    """The platform admin's view of one gateway (``--gateway URL --admin-token T``)."""

    def __init__(self, base_url: str, admin_token: str) -> None:
        if not admin_token:
            raise CommandError(
                "--gateway needs the platform admin token: pass --admin-token or set TOLLGATE_ADMIN_TOKEN "
                "(`tollgate dev` prints it, and keeps it in its data directory as admin-token)",
                exit_code=2,
            )
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=request_timeout_s
        )
        self.check()

    def check(self) -> None:
        """Fail at once, with the reason, rather than after reading the whole log."""
        response = self.get("/v1/price-books")
        if response.status_code != 200:
            raise CommandError(f"the gateway at {self.base_url} answered {response.status_code}: {_message(response)}")

    def get(self, path: str, params: Mapping[str, str] | None = None) -> httpx.Response:
        try:
            response = self._client.get(path, params=params)
        except httpx.HTTPError as error:
            raise CommandError(f"cannot reach the gateway at {self.base_url}: {error}") from None
        if response.status_code in (401, 403):
            raise CommandError(
                f"the gateway at {self.base_url} refused the token ({response.status_code}): pass the platform "
                "admin token (TOLLGATE_ADMIN_TOKEN of that gateway) with --admin-token"
            )
        return response

    def close(self) -> None:
        self._client.close()

    def compare_balances(self, derived: Mapping[str, tuple[int, int]]) -> list[str]:
        """Every organization's (balance, held) micros derived from the log against the gateway's
        balances read model; one line per difference."""
        mismatches = []
        for org_id in sorted(derived):
            response = self.get(f"/v1/organizations/{org_id}/balance")
            if response.status_code != 200:
                mismatches.append(f"balances {org_id}: the gateway answered {response.status_code}")
                continue
            live = response.json()
            for name, value in zip(("amount_micros", "held_micros"), derived[org_id], strict=True):
                if live.get(name) != value:
                    mismatches.append(f"balances {org_id}: {name} is {live.get(name)} live, {value} from the log")
        return mismatches


def _message(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
        return str(body["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]
