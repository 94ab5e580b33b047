"""What the Responses and Messages tests share: an organization with its SDK clients on the in-process
gateway, and the check that a charge reconciles everywhere it shows (the answer's usage, the
x-credits-used header, the balance and the ClickHouse usage row)."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from tests.harness import Gateway

if TYPE_CHECKING:  # the SDKs take seconds to import: only the tests that build a client pay for them
    import anthropic
    import openai

base_url = "http://testserver.local"


class Account:
    def __init__(self, gw: Gateway, credits: str = "100") -> None:
        self.gw = gw
        lots = {"requests": 10_000_000, "jobs": 10_000_000, "tokens": 100_000_000}
        self.org = gw.organization("enterprise", limits=lots, credits=credits)
        self.key, _ = gw.key(self.org, ["user:read", "user:write"])

    def openai(self, base: str = "/v1") -> openai.OpenAI:
        import openai

        # The SDK takes an httpx.Client (Litestar's test client is one) but types it as an httpx2.Client.
        return openai.OpenAI(
            base_url=base_url + base,
            api_key=self.key,
            http_client=self.gw.client,  # type: ignore[arg-type,unused-ignore]
            max_retries=0,
        )

    def anthropic(self) -> anthropic.Anthropic:
        import anthropic

        return anthropic.Anthropic(
            base_url=base_url, api_key=self.key, http_client=self.gw.sdk_http_client(), max_retries=0
        )

    def balance_micros(self) -> int:
        body = self.gw.admin("GET", f"/v1/organizations/{self.org}/balance").json()
        return int(body["amount_micros"])

    def usage_row(self, request_id: str) -> tuple[str, str, int, int, int, int]:
        """(endpoint, model, input tokens, output tokens, web search calls, cost micros) of the request's
        usage row, once the projector has written it."""
        deadline = time.monotonic() + 30
        sql = (
            "SELECT endpoint, model, input_tokens, output_tokens, web_search_calls, cost_micros"
            " FROM usage_events FINAL WHERE org_id = {org:String} AND request_id = {rid:String}"
        )
        while time.monotonic() < deadline:
            rows = self.gw.store.query(sql, {"org": self.org, "rid": request_id})
            if rows:
                endpoint, model, input_tokens, output_tokens, calls, cost = rows[0]
                return str(endpoint), str(model), int(input_tokens), int(output_tokens), int(calls), int(cost)
            time.sleep(0.05)
        raise AssertionError(f"no usage row for {request_id}")


def reconciles(account: Account, before_micros: int, request_id: str, usage: Any, header: str | None) -> int:
    """usage.cost_usd == x-credits-used (when the answer has the header) == the balance drop == the
    usage row's cost; returns the charge in micros."""
    cost = getattr(usage, "cost_usd", None) if not isinstance(usage, dict) else usage.get("cost_usd")
    assert cost is not None, usage
    micros = int(Decimal(str(cost)) * 1_000_000)
    if header is not None:
        assert Decimal(header) * 1_000_000 == micros
    deadline = time.monotonic() + 10
    while account.balance_micros() != before_micros - micros and time.monotonic() < deadline:
        time.sleep(0.02)
    assert account.balance_micros() == before_micros - micros
    assert account.usage_row(request_id)[5] == micros
    return micros


def header_reconciles(account: Account, before_micros: int, response: Any) -> int:
    """An answer without a usage object (audio, plain text): x-credits-used == the balance drop == the
    usage row's cost; returns the charge in micros."""
    micros = int(Decimal(response.headers["x-credits-used"]) * 1_000_000)
    deadline = time.monotonic() + 10
    while account.balance_micros() != before_micros - micros and time.monotonic() < deadline:
        time.sleep(0.02)
    assert account.balance_micros() == before_micros - micros
    assert account.usage_row(response.headers["x-request-id"])[5] == micros
    return micros


def media_of(gw: Gateway, url: str, content_type: str) -> bytes:
    """The bytes a result URL serves, fetched without an Authorization header (a signed URL is its
    own authority), checked to be ``content_type``."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    assert parts.scheme in ("http", "https") and parts.path.startswith("/v1/media/"), url
    served = gw.call("GET", f"{parts.path}?{parts.query}")
    assert served.status_code == 200, served.text
    assert served.headers["content-type"].startswith(content_type), served.headers["content-type"]
    return bytes(served.content)
