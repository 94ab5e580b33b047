"""Casola's core API table beyond the job API: voice models, catalog search, the metered prompt
rewrite and the organization's content-filter policy (stored as events; enterprise only to set)."""

from __future__ import annotations

from typing import Any

import pytest

from ledger.pricing import default_price_book
from tests.harness import Gateway
from tests.http.dialects import Account, reconciles


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw)


def test_voice_models_are_the_speech_models_with_their_voices(account: Account) -> None:
    answer = account.gw.call("GET", "/api/voice/models", account.key)
    assert answer.status_code == 200, answer.text
    models = answer.json()["models"]
    speaking = {p.model for p in default_price_book().models.values() if p.character_rate > 0}
    assert {model["model_id"] for model in models} == speaking
    assert all(
        model["voices"] and {"voice_id", "name", "languages", "gender"} <= set(model["voices"][0]) for model in models
    )
    assert account.gw.call("GET", "/api/voice/models").status_code == 401


def search(account: Account, query: str) -> Any:
    return account.gw.call("GET", f"/api/search?{query}", account.key)


def test_search_finds_models_and_templates_best_first(account: Account) -> None:
    found = search(account, "q=flux").json()
    ids = [result["id"] for result in found["results"]]
    assert ids[:2] == ["flux", "black-forest-labs/FLUX.1-schnell"] and found["total"] >= 2
    assert "studio-product-shot" in ids  # its supported models name flux
    video = search(account, "q=video&type=model").json()["results"]
    assert {"sim-video", "seedance-2-0-pro"} <= {result["id"] for result in video}
    assert {result["type"] for result in video} == {"model"}
    both = search(account, "q=stadium").json()["results"]
    assert [(r["type"], r["id"], r["url"]) for r in both] == [
        ("template", "baseball-stadium", "/v1/templates/baseball-stadium")
    ]
    assert search(account, "q=zzzz-nothing").json() == {"query": "zzzz-nothing", "total": 0, "results": []}
    assert len(search(account, "q=sim&limit=2").json()["results"]) == 2
    for query, param in (
        ("", "q"),
        ("q=", "q"),
        ("q=" + "x" * 201, "q"),
        ("q=a&type=file", "type"),
        ("q=a&limit=0", "limit"),
    ):
        refused = search(account, query)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.text


def test_a_prompt_rewrite_is_a_metered_chat_call(account: Account) -> None:
    before = account.balance_micros()
    answer = account.gw.call(
        "POST", "/api/prompt-rewrite", account.key, json={"prompt": "a cat on a roof", "target": "image"}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["original"] == "a cat on a roof" and body["rewritten"] and body["model"] == "sim-chat-small"
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 256
    reconciles(account, before, body["request_id"], usage, answer.headers["x-credits-used"])
    assert account.usage_row(body["request_id"])[:2] == ("/v1/chat/completions", "sim-chat-small")


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prompt": ""}, 400, "prompt"),
        ({}, 400, "prompt"),
        ({"prompt": "x", "target": "music"}, 400, "target"),
        ({"prompt": "x", "model": "sim-image"}, 404, "model"),
    ],
)
def test_bad_prompt_rewrites_charge_nothing(account: Account, body: dict[str, Any], status: int, param: str) -> None:
    before = account.balance_micros()
    refused = account.gw.call("POST", "/api/prompt-rewrite", account.key, json=body)
    assert refused.status_code == status and refused.json()["error"]["param"] == param, refused.text
    assert account.balance_micros() == before


def test_a_prompt_rewrite_the_balance_cannot_cover_is_a_402(gw: Gateway) -> None:
    org = gw.organization("enterprise", credits="0.000001")
    key, _ = gw.key(org, ["user:write"])
    refused = gw.call("POST", "/api/prompt-rewrite", key, json={"prompt": "a long prompt " * 50})
    assert refused.status_code == 402, refused.text


def policy(gw: Gateway, method: str, org: str, key: str | None = None, **body: Any) -> Any:
    path = f"/api/organizations/{org}/content-filter-policy"
    kwargs: dict[str, Any] = {"json": body} if body else {}
    return gw.call(method, path, key, **kwargs) if key else gw.admin(method, path, **kwargs)


def test_the_content_filter_policy_lifecycle(gw: Gateway) -> None:
    org = gw.organization("enterprise")
    admin_key, _ = gw.key(org, ["admin:read", "admin:write"])
    default = policy(gw, "GET", org, admin_key).json()
    assert (default["action"], default["source"], default["enforced"]) == ("block", "default", False)
    created = policy(gw, "POST", org, admin_key, action="flag")
    assert created.status_code == 201, created.text
    assert (created.json()["action"], created.json()["source"]) == ("flag", "organization")
    assert policy(gw, "POST", org, admin_key, action="log").json()["error"]["code"] == "policy_exists"
    off = policy(gw, "PATCH", org, admin_key, action="off")
    assert off.status_code == 200 and off.json()["effective_action"] == "off", off.text
    assert policy(gw, "GET", org).json()["created_at"] == created.json()["created_at"]
    # off is for enterprise only: a downgraded organization keeps its policy, filtered by the default.
    assert gw.admin("POST", f"/v1/organizations/{org}/plan", json={"plan": "pro"}).status_code == 200
    downgraded = policy(gw, "GET", org, admin_key).json()
    assert (downgraded["action"], downgraded["effective_action"]) == ("off", "block")
    assert policy(gw, "PATCH", org, admin_key, action="log").json()["error"]["code"] == "enterprise_only"
    deleted = policy(gw, "DELETE", org, admin_key)
    assert deleted.status_code == 200 and deleted.json()["source"] == "default"
    assert policy(gw, "DELETE", org, admin_key).status_code == 404
    assert gw.admin("POST", f"/v1/organizations/{org}/plan", json={"plan": "enterprise"}).status_code == 200
    assert policy(gw, "PATCH", org, admin_key, action="log").json()["error"]["code"] == "policy_not_found"


def test_content_filter_policy_refusals(gw: Gateway) -> None:
    pro = gw.organization("pro")
    refused = policy(gw, "POST", pro, action="block")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "enterprise_only"
    enterprise = gw.organization("enterprise")
    assert policy(gw, "POST", enterprise, action="maybe").status_code == 400
    assert policy(gw, "POST", enterprise, action="block", extra=1).status_code == 400
    assert policy(gw, "PATCH", enterprise, action="block").status_code == 404
    reader, _ = gw.key(enterprise, ["admin:read", "user:write"])
    assert policy(gw, "GET", enterprise, reader).status_code == 200
    assert policy(gw, "POST", enterprise, reader, action="block").status_code == 403
    other, _ = gw.key(pro, ["admin:read", "admin:write"])
    assert policy(gw, "GET", enterprise, other).status_code == 404
