"""The usage page over HTTP (the browser tests in tests/e2e/test_dashboard_browser.py draw it): signing
in with a key (in a form body, never a URL), the session cookie, what the page says, and statements
whose lines add up to what the ledger charged."""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar.testing import TestClient

from gateway import sessions
from gateway.usage_page import tier_label
from ledger.pricing import default_price_book
from schemas.prices import ContextTier, ModelPrice
from tests.harness import Gateway, admin_token

_open: list[TestClient[Any]] = []


@pytest.fixture(autouse=True)
def _close_browsers() -> Iterator[None]:
    yield
    while _open:
        _open.pop().__exit__(None, None, None)


def browser(gw: Gateway) -> TestClient[Any]:
    """A client of its own (its own cookie jar), as a browser is; closed after the test."""
    client = TestClient(gw.app)
    client.__enter__()
    _open.append(client)
    return client


def sign_in(gw: Gateway, key: str) -> TestClient[Any]:
    client = browser(gw)
    answer = client.post("/dashboard/login", data={"key": key}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/dashboard"
    return client


def chat(gw: Gateway, key: str, content: str = "hello page") -> int:
    body = {"model": "sim-chat-small", "messages": [{"role": "user", "content": content}], "max_tokens": 12}
    answer = gw.call("POST", "/v1/chat/completions", key, json=body)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["usage"]["cost_micros"])


def wait_for_usage(gw: Gateway, org_id: str, rows: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = gw.store.query("SELECT count() FROM usage_events FINAL WHERE org_id = {org:String}", {"org": org_id})
        if found[0][0] >= rows:
            return
        time.sleep(0.1)
    raise AssertionError("the projector did not write the usage rows in time")


def test_the_login_form_opens_a_session_without_putting_the_key_in_a_url(gw: Gateway) -> None:
    org = gw.organization("pro", credits="3")
    key, _ = gw.key(org, ["user:read"])
    client = browser(gw)
    page = client.get("/dashboard")
    assert page.status_code == 200 and 'action="/dashboard/login"' in page.text and 'method="post"' in page.text
    answer = client.post("/dashboard/login", data={"key": key}, follow_redirects=False)
    assert answer.status_code == 303 and key not in answer.headers["location"]
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/dashboard" in cookie
    assert key not in cookie  # the cookie names the key by id, never its secret
    page = client.get("/dashboard")
    assert page.status_code == 200 and "Usage log" in page.text and org in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    out = client.post("/dashboard/logout", follow_redirects=False)
    assert out.status_code == 303 and 'tollgate_session=""' in out.headers["set-cookie"]
    assert "Sign in" in client.get("/dashboard").text


@pytest.mark.parametrize(
    ("key", "status", "says"),
    [
        ("", 400, "Paste an API key"),
        ("tg_not_a_key", 401, "unknown, revoked or expired"),
    ],
)
def test_a_bad_key_gets_the_form_again_with_why(gw: Gateway, key: str, status: int, says: str) -> None:
    answer = browser(gw).post("/dashboard/login", data={"key": key}, follow_redirects=False)
    assert answer.status_code == status and says in answer.text and "set-cookie" not in answer.headers


def test_a_key_without_user_read_cannot_sign_in(gw: Gateway) -> None:
    org = gw.organization("pro")
    key, _ = gw.key(org, ["user:write"])
    answer = browser(gw).post("/dashboard/login", data={"key": key}, follow_redirects=False)
    assert answer.status_code == 403 and "user:read" in answer.text


def test_a_service_token_with_user_read_opens_a_session_until_it_expires(gw: Gateway) -> None:
    org = gw.organization("pro", credits="1")
    token = gw.signer.token(org, "user:read", exp=int(time.time()) + 600)
    client = sign_in(gw, token)
    page = client.get("/dashboard")
    assert "Usage log" in page.text and org in page.text
    cookie = client.cookies.get(sessions.cookie_name)
    assert cookie is not None
    session = sessions.read(sessions.signing_key(admin_token), cookie, time.time())
    assert session is not None and session.expires_at <= int(time.time()) + 600
    writer = browser(gw).post("/dashboard/login", data={"key": gw.signer.token(org, "user:write")})
    assert writer.status_code == 403 and "user:read" in writer.text


def test_a_revoked_key_ends_its_session_and_a_forged_cookie_opens_none(gw: Gateway) -> None:
    org = gw.organization("pro", credits="1")
    key, token_id = gw.key(org, ["user:read"])
    client = sign_in(gw, key)
    assert "Usage log" in client.get("/dashboard").text
    assert gw.admin("DELETE", f"/v1/organizations/{org}/tokens/{token_id}").status_code == 200
    assert "Sign in" in client.get("/dashboard").text
    forged = sessions.issue(b"not the key", sessions.Session(admin=True, expires_at=int(time.time()) + 60))
    intruder = browser(gw)
    intruder.cookies.set(sessions.cookie_name, forged, path="/dashboard")
    assert "Sign in" in intruder.get("/dashboard").text
    late = sessions.issue(sessions.signing_key(admin_token), sessions.Session(admin=True, expires_at=1))
    intruder.cookies.set(sessions.cookie_name, late, path="/dashboard")
    assert "Sign in" in intruder.get("/dashboard").text


def test_the_page_shows_the_balance_and_spend_the_ledger_holds(gw: Gateway) -> None:
    org = gw.organization("pro", credits="2")
    key, _ = gw.key(org, ["user:read", "user:write"])
    spent = sum(chat(gw, key, f"request {n}") for n in range(4))
    wait_for_usage(gw, org, 4)
    page = sign_in(gw, key).get("/dashboard")
    assert page.status_code == 200
    balance = int(re.search(r'data-balance-micros="(-?\d+)"', page.text).group(1))  # type: ignore[union-attr]
    assert balance == 2_000_000 - spent
    total = int(re.search(r'data-spend-micros="(\d+)"', page.text).group(1))  # type: ignore[union-attr]
    assert total == spent
    costs = [int(c) for c in re.findall(r'<tr data-cost-micros="(\d+)"', page.text)]
    assert len(costs) == 4 and sum(costs) == spent
    assert "sim-chat-small" in page.text and "4 requests" in page.text
    assert '<script type="application/json" id="chart-data">' in page.text
    assert 'src="/dashboard/assets/chart.umd.min.js"' in page.text  # served by the project, no CDN
    assert "https://" not in page.text


def test_a_statement_download_adds_up_to_what_the_ledger_charged(gw: Gateway) -> None:
    org = gw.organization("pro", credits="2")
    key, _ = gw.key(org, ["user:read", "user:write"])
    spent = sum(chat(gw, key, f"statement {n}") for n in range(3))
    wait_for_usage(gw, org, 3)
    client = sign_in(gw, key)
    today = datetime.now(UTC).date()
    period = {"from": (today - timedelta(days=1)).isoformat(), "to": today.isoformat()}
    answer = client.get("/dashboard/statement", params={**period, "format": "csv"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    assert answer.headers["content-disposition"].startswith("attachment;")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    lines = [row for row in rows if row["unit"] != "total"]
    assert sum(int(row["amount_micros"]) for row in lines) == spent
    assert int(next(row for row in rows if row["unit"] == "total")["amount_micros"]) == spent
    pdf = client.get("/dashboard/statement", params={**period, "format": "pdf"})
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-")
    bad = client.get("/dashboard/statement", params={"from": "yesterday", "to": today.isoformat()})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_parameter"
    assert browser(gw).get("/dashboard/statement", params=period, follow_redirects=False).status_code == 303


def test_the_platform_admin_picks_an_organization(gw: Gateway) -> None:
    org = gw.organization("pro", credits="1")
    client = sign_in(gw, admin_token)
    assert "Pick an organization" in client.get("/dashboard").text
    page = client.get("/dashboard", params={"org": org, "days": 7})
    assert page.status_code == 200 and f'<option value="{org}" selected>' in page.text
    assert 'aria-current="page">7 days' in page.text


def test_the_assets_come_from_the_package() -> None:
    from gateway.routes.dashboard import assets

    for path, _ in assets.values():
        assert path.exists(), path
    assert assets["chart.umd.min.js"][0].read_bytes().startswith(b"/*!\n * Chart.js v4")


def test_tier_badges_name_the_rate_that_priced_a_row() -> None:
    tiered = ModelPrice(
        model="m",
        category="chat",
        pool="default",
        input_token_rate=1,
        context_tiers=(
            ContextTier(above_tokens=128_000, input_token_rate=2, cached_input_token_rate=1, output_token_rate=3),
        ),
    )
    assert tier_label(tiered, 1000, "") == "base context"
    assert tier_label(tiered, 200_000, "") == "> 128K context"
    assert tier_label(None, 10, "1024x1024/hd") == "1024x1024 · hd"
    assert tier_label(default_price_book().model("sim-chat-small"), 10, "") == ""
