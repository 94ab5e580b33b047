"""``GET /v1/account/usage`` in the reference's ``AccountUsageResponse`` shape, validated against the
schema loaded from the reference's OpenAPI document, every declared field present: the balance's
auto top-up in credits, ``summary`` over the returned page (``window_summary`` over the window),
and each event with the usage object its answer carried under ``metadata.worker_usage``."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.harness import Gateway
from tests.reference import assert_declared_fields_present, reference_validator


def _usage(gw: Gateway, key: str, **params: Any) -> dict[str, Any]:
    response = gw.call("GET", "/v1/account/usage", key, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.heavy  # waits for the projector's rows of many requests
def test_account_usage_is_the_reference_shape(gw: Gateway) -> None:
    org = gw.organization("pro", credits="5")
    topup = {"enabled": True, "threshold": "1.5", "amount": "10"}
    assert gw.admin("POST", f"/v1/organizations/{org}/auto-topup", json=topup).status_code == 200
    key, _ = gw.key(org, ["user:read", "user:write"])
    chat_body = {"model": "sim-chat-large", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 8}
    chat = gw.call("POST", "/v1/chat/completions", key, json=chat_body)
    assert chat.status_code == 200, chat.text
    image = gw.call("POST", "/v1/images/generations", key, json={"model": "sim-image", "prompt": "a cat", "n": 2})
    assert image.status_code == 200, image.text
    searched = gw.call("POST", "/v1/chat/completions", key, json={**chat_body, "web_search_options": {}})
    assert searched.status_code == 200, searched.text

    deadline = time.monotonic() + 30
    while _usage(gw, key)["window_summary"]["requests"] < 3:
        assert time.monotonic() < deadline, "the projector did not write both rows"
        time.sleep(0.05)

    body = _usage(gw, key, limit=1)
    reference_validator("/v1/account/usage").validate(body)
    assert_declared_fields_present(body, "AccountUsageResponse")
    for part in ("balance", "summary", "spend"):
        assert_declared_fields_present(body[part], f"AccountUsageResponse.{part}")
    assert body["balance"]["auto_topup_threshold"] == 1.5 and body["balance"]["auto_topup_amount"] == 10

    # summary: the returned page (one event); window_summary and spend: the whole window.
    assert body["summary"]["requests"] == 1 and body["window_summary"]["requests"] == 3
    newest = body["data"][0]
    assert body["summary"]["total_cost"] == newest["cost"]["amount"]
    assert body["spend"]["total"] == body["window_summary"]["total_cost"]

    both = _usage(gw, key)
    reference_validator("/v1/account/usage").validate(both)
    searches = [event for event in both["data"] if event["metadata"]["tool_breakdown"]]
    assert [event["request_id"] for event in searches] == [searched.headers["x-request-id"]]
    assert searches[0]["metadata"]["tool_breakdown"] == [{"tool": "web_search", "invocations": 1, "rate_usd": 0.01}]
    assert searches[0]["metadata"]["worker_usage"]["tool_calls_details"] == {"web_search": {"invocation": 1}}
    events = {event["endpoint"]: event for event in both["data"] if event not in searches}
    for event in both["data"]:
        assert_declared_fields_present(event, "UsageEvent")
    assert events["/v1/chat/completions"]["metadata"]["worker_usage"] == chat.json()["usage"]
    assert events["/v1/images/generations"]["metadata"]["worker_usage"] == image.json()["usage"]
    assert events["/v1/images/generations"]["metadata"]["pricing_tier_label"] == "1024x1024/standard"
    tokens = events["/v1/chat/completions"]["tokens"]
    assert tokens["total"] == chat.json()["usage"]["total_tokens"]
    assert tokens["input"] + tokens["cache_read"] + tokens["cache_write"] == chat.json()["usage"]["prompt_tokens"]
