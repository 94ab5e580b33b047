"""A credential cannot mint one that outlives or out-limits it (issue 15): a key made by an expiring
key or by a service token (which cannot be revoked) expires with it at the latest, and takes no
higher per-key limits; a service token's NumericDate claims must be JSON numbers."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.harness import Gateway

admin_scopes = ["admin:read", "admin:write", "user:read", "user:write"]


def _create(gw: Gateway, org: str, creator: str, **body: Any) -> Any:
    return gw.call(
        "POST", f"/v1/organizations/{org}/tokens", creator, json={"name": "child", "scopes": ["user:read"], **body}
    )


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_key_made_by_an_expiring_key_expires_with_it_at_the_latest(gw: Gateway) -> None:
    org = gw.organization()
    parent, parent_id = gw.key(org, admin_scopes, expires_in=60)
    parent_expiry = _moment(gw.admin("GET", f"/v1/organizations/{org}/tokens/{parent_id}").json()["expires_at"])
    forever = _create(gw, org, parent)
    assert forever.status_code == 201, forever.text
    assert _moment(forever.json()["token"]["expires_at"]) == parent_expiry
    sooner = _create(gw, org, parent, expires_in=30)
    assert sooner.status_code == 201, sooner.text
    assert _moment(sooner.json()["token"]["expires_at"]) < parent_expiry
    later = _create(gw, org, parent, expires_in=3600)
    assert later.status_code == 400 and later.json()["error"]["param"] == "expires_at", later.text
    later_at = _create(gw, org, parent, expires_at=(parent_expiry + timedelta(seconds=5)).isoformat())
    assert later_at.status_code == 400, later_at.text


def test_a_key_made_by_a_service_token_expires_with_the_token(gw: Gateway) -> None:
    org = gw.organization()
    exp = int(time.time()) + 120
    token = gw.signer.token(org, " ".join(admin_scopes), exp=exp)
    child = _create(gw, org, token, scopes=["admin:write", "user:read"])
    assert child.status_code == 201, child.text
    assert _moment(child.json()["token"]["expires_at"]) == datetime.fromtimestamp(exp, UTC)
    assert _create(gw, org, token, expires_in=86_400).status_code == 400


def test_a_key_without_expiry_still_makes_keys_without_expiry(gw: Gateway) -> None:
    org = gw.organization()
    parent, _ = gw.key(org, admin_scopes)
    child = _create(gw, org, parent)
    assert child.status_code == 201 and child.json()["token"]["expires_at"] is None, child.text


def test_a_key_cannot_make_a_key_with_higher_limits_than_its_own(gw: Gateway) -> None:
    org = gw.organization()
    parent, _ = gw.key(org, admin_scopes, rate_limits={"requests": 10})
    inherits = _create(gw, org, parent)
    assert inherits.status_code == 201 and inherits.json()["token"]["rate_limits"] == {"requests": 10}
    lower = _create(gw, org, parent, rate_limits={"requests": 5, "tokens": 100})
    assert lower.status_code == 201 and lower.json()["token"]["rate_limits"] == {"requests": 5, "tokens": 100}
    higher = _create(gw, org, parent, rate_limits={"requests": 11})
    assert higher.status_code == 400 and higher.json()["error"]["param"] == "rate_limits", higher.text


def test_the_platform_admin_is_not_bounded(gw: Gateway) -> None:
    org = gw.organization()
    response = gw.admin("POST", f"/v1/organizations/{org}/tokens", json={"name": "k", "scopes": admin_scopes})
    assert response.status_code == 201 and response.json()["token"]["expires_at"] is None


def test_a_service_token_whose_exp_is_a_numeric_string_is_refused(gw: Gateway) -> None:
    org = gw.organization()
    good = gw.signer.token(org, "user:read")
    assert gw.call("GET", "/v1/models", good).status_code == 200
    for claim in ("exp", "iat", "nbf"):
        value = str(int(time.time()) + (300 if claim == "exp" else -10))
        token = gw.signer.token(org, "user:read", **{claim: value})
        response = gw.call("GET", "/v1/models", token)
        assert response.status_code == 401, (claim, response.text)
        assert response.json()["error"]["code"] == "invalid_token"
