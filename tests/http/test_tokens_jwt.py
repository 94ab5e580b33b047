"""API keys (shown once, stored as a hash, listed, revoked, expiring, last used) and service tokens
(EdDSA JWTs by key id against a JWKS: forged, expired, unknown key, wrong audience or issuer -> 401)."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from eventlog import topics
from tests.harness import Gateway, Signer, audience, issuer, write_jwks


def _models(gw: Gateway, key: str) -> int:
    return int(gw.call("GET", "/v1/models", key).status_code)


def _log_bytes(gw: Gateway) -> bytes:
    consumer = gw.log.consumer([topics.TENANTS], client_id="test-read")
    data = b""
    while records := consumer.poll(1000, 10):
        data += b"".join(r.value for r in records)
    return data


def test_secret_is_shown_once_and_only_its_hash_is_kept(gw: Gateway) -> None:
    org = gw.organization()
    response = gw.admin("POST", f"/v1/organizations/{org}/tokens", json={"name": "ci", "scopes": ["user:read"]})
    assert response.status_code == 201
    body = response.json()
    secret = body["secret"]
    assert secret.startswith("tg_") and body["token"]["status"] == "active"
    assert secret.encode() not in _log_bytes(gw)  # the log holds a sha256, never the secret
    listed = gw.admin("GET", f"/v1/organizations/{org}/tokens").json()["data"]
    assert [t["id"] for t in listed] == [body["token"]["id"]]
    assert "secret" not in listed[0] and secret not in str(listed)
    assert listed[0]["secret_prefix"] == secret[:8]


def test_list_shows_last_used_time(gw: Gateway) -> None:
    org = gw.organization()
    key, token_id = gw.key(org, ["user:read"])
    card = gw.admin("GET", f"/v1/organizations/{org}/tokens/{token_id}").json()
    assert card["last_used_at"] is None
    assert _models(gw, key) == 200
    card = gw.admin("GET", f"/v1/organizations/{org}/tokens/{token_id}").json()
    assert card["last_used_at"] is not None and card["last_used_at"] >= card["created_at"]


def test_revoked_key_gets_401_and_is_listed_as_revoked(gw: Gateway) -> None:
    org = gw.organization()
    admin_key, _ = gw.key(org, ["admin:read", "admin:write"])
    key, token_id = gw.key(org, ["user:read"])
    assert _models(gw, key) == 200
    response = gw.call("DELETE", f"/v1/organizations/{org}/tokens/{token_id}", admin_key)
    assert response.status_code == 200 and response.json()["status"] == "revoked"
    response = gw.call("GET", "/v1/models", key)
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    listed = gw.call("GET", f"/v1/organizations/{org}/tokens", admin_key).json()["data"]
    assert {t["id"]: t["status"] for t in listed}[token_id] == "revoked"


@pytest.mark.heavy  # waits for a key to expire
def test_expired_key_gets_401(gw: Gateway) -> None:
    org = gw.organization()
    key, token_id = gw.key(org, ["user:read"], expires_in=1)
    assert _models(gw, key) == 200
    time.sleep(1.2)
    response = gw.call("GET", "/v1/models", key)
    assert response.status_code == 401 and response.json()["error"]["code"] == "api_key_expired"
    card = gw.admin("GET", f"/v1/organizations/{org}/tokens/{token_id}").json()
    assert card["status"] == "expired"


def test_expiry_in_the_past_is_a_400(gw: Gateway) -> None:
    org = gw.organization()
    body = {"name": "x", "expires_at": "2020-01-01T00:00:00Z"}
    response = gw.admin("POST", f"/v1/organizations/{org}/tokens", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "expires_at"


def test_a_key_grants_only_scopes_it_holds(gw: Gateway) -> None:
    org = gw.organization()
    writer, _ = gw.key(org, ["admin:write"])
    body = {"name": "escalate", "scopes": ["user:write"]}
    response = gw.call("POST", f"/v1/organizations/{org}/tokens", writer, json=body)
    assert response.status_code == 403
    response = gw.call(
        "POST", f"/v1/organizations/{org}/tokens", writer, json={"name": "ok", "scopes": ["admin:write"]}
    )
    assert response.status_code == 201


def test_a_key_cannot_see_or_revoke_another_organizations_tokens(gw: Gateway) -> None:
    org_a, org_b = gw.organization(), gw.organization()
    admin_a, _ = gw.key(org_a, ["admin:read", "admin:write"])
    _, token_b = gw.key(org_b, ["user:read"])
    for method, path in (
        ("GET", f"/v1/organizations/{org_b}/tokens"),
        ("GET", f"/v1/organizations/{org_b}/tokens/{token_b}"),
        ("DELETE", f"/v1/organizations/{org_b}/tokens/{token_b}"),
        ("GET", f"/v1/organizations/{org_a}/tokens/{token_b}"),  # B's token id under A's own path
        ("DELETE", f"/v1/organizations/{org_a}/tokens/{token_b}"),
    ):
        response = gw.call(method, path, admin_a)
        assert response.status_code == 404, (method, path, response.text)
    ids = [t["id"] for t in gw.call("GET", f"/v1/organizations/{org_a}/tokens", admin_a).json()["data"]]
    assert token_b not in ids
    assert gw.admin("GET", f"/v1/organizations/{org_b}/tokens/{token_b}").json()["status"] == "active"


# --- service tokens ---


def _jwt_error(gw: Gateway, token: str) -> tuple[int, str]:
    response = gw.call("GET", "/v1/models", token)
    return int(response.status_code), str(response.json().get("error", {}).get("code"))


def test_valid_service_token_carries_its_org_and_scopes(gw: Gateway) -> None:
    org = gw.organization()
    assert _models(gw, gw.signer.token(org, "user:read")) == 200
    assert _models(gw, gw.signer.token(org, "user:write")) == 403  # exactly the scopes it was given
    balance = gw.call("GET", f"/v1/organizations/{org}/balance", gw.signer.token(org, "admin:read"))
    assert balance.status_code == 200
    other = gw.organization()
    response = gw.call("GET", f"/v1/organizations/{other}/balance", gw.signer.token(org, "admin:read"))
    assert response.status_code == 404


def test_forged_token_gets_401(gw: Gateway) -> None:
    org = gw.organization()
    forger = Signer(gw.signer.kid)  # the right key id, another private key
    assert _jwt_error(gw, forger.token(org, "user:read")) == (401, "invalid_token")
    # A valid token whose claims were edited after signing.
    header, payload, signature = gw.signer.token(org, "user:read").split(".")
    edited = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(payload).replace(b'"user:read"', b'"admin:write"')
    ).decode()
    assert _jwt_error(gw, f"{header}.{edited}.{signature}")[0] == 401
    # Other algorithms are refused even when the signature is right for them.
    hs = jwt.encode(
        {"iss": issuer, "aud": audience, "sub": "x", "exp": int(time.time()) + 60, "org_id": org, "scope": "user:read"},
        "a shared secret of 32 bytes or more",  # long enough that PyJWT does not warn about it
        algorithm="HS256",
        headers={"kid": gw.signer.kid},
    )
    assert _jwt_error(gw, hs)[0] == 401
    # PyJWT's key type leaves out None, the key its "none" algorithm requires (it raises on any other).
    unsigned = jwt.encode({"org_id": org}, None, algorithm="none", headers={"kid": gw.signer.kid})  # type: ignore[arg-type]
    assert _jwt_error(gw, unsigned + "x")[0] == 401


def test_expired_token_gets_401(gw: Gateway) -> None:
    org = gw.organization()
    past = int(time.time()) - 3600
    assert _jwt_error(gw, gw.signer.token(org, "user:read", exp=past, iat=past - 60)) == (401, "token_expired")


def test_unknown_key_id_gets_401(gw: Gateway) -> None:
    org = gw.organization()
    assert _jwt_error(gw, Signer("key-nobody-published").token(org, "user:read")) == (401, "invalid_token")


def test_wrong_audience_issuer_org_or_missing_claims_get_401(gw: Gateway) -> None:
    org = gw.organization()
    assert _jwt_error(gw, gw.signer.token(org, "user:read", aud="someone-else")) == (401, "invalid_token")
    assert _jwt_error(gw, gw.signer.token(org, "user:read", iss="https://evil.test")) == (401, "invalid_token")
    assert _jwt_error(gw, gw.signer.token("org_does_not_exist", "user:read")) == (401, "invalid_token")
    assert _jwt_error(gw, gw.signer.token(org, "user:read", exp=None))[0] == 401
    assert _jwt_error(gw, gw.signer.token(org, "user:read", sub=None))[0] == 401


def test_keys_rotate_without_restart(gw: Gateway) -> None:
    """Publish a new key: tokens signed with it verify at once (an unknown kid refetches the JWKS).
    Retire the old key: its tokens stop verifying once the JWKS is refetched."""
    org = gw.organization()
    new = Signer("key-2")
    assert _jwt_error(gw, new.token(org, "user:read"))[0] == 401  # not published yet
    write_jwks(gw.jwks_path, [gw.signer, new])
    time.sleep(0.3)  # jwks_refresh_s_min in the harness is 0.2 s
    assert _models(gw, new.token(org, "user:read")) == 200
    old_token = gw.signer.token(org, "user:read")
    assert _models(gw, old_token) == 200  # both during the overlap (and the old one is now cached)
    write_jwks(gw.jwks_path, [new])
    gw.core.jwks._fetched_at = None  # as if jwks_age_s_max had passed
    assert _jwt_error(gw, old_token)[0] == 401  # a retired key's tokens fail, cached or not
    assert _models(gw, new.token(org, "user:read")) == 200
    write_jwks(gw.jwks_path, [gw.signer, new])
    gw.core.jwks._fetched_at = None


def test_unknown_key_ids_refetch_at_most_once_per_interval(gw: Gateway) -> None:
    org = gw.organization()
    time.sleep(0.3)
    before = gw.core.jwks.fetches
    for i in range(20):
        assert _jwt_error(gw, Signer(f"forged-{i}").token(org, "user:read"))[0] == 401
    assert gw.core.jwks.fetches - before <= 2  # 20 unknown kids within ~0.2 s: one or two fetches


@pytest.mark.heavy  # waits for tokens to expire
def test_verified_tokens_are_cached_but_expire(gw: Gateway) -> None:
    org = gw.organization()
    token = gw.signer.token(org, "user:read", exp=int(time.time()) + 2)
    assert _models(gw, token) == 200
    assert token in gw.core.jwks.verified
    assert _models(gw, token) == 200
    time.sleep(3.2)  # past exp plus the harness's 1 s leeway
    assert _jwt_error(gw, token) == (401, "token_expired")


def test_service_tokens_are_refused_without_a_jwks(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, jwks_file="")
    try:
        org = gateway.organization()
        token = Signer("k").token(org, "user:read")
        assert _jwt_error(gateway, token) == (401, "invalid_token")
    finally:
        gateway.close()


def test_a_token_signed_by_an_unrelated_ed25519_key_with_a_published_kid_is_refused(gw: Gateway) -> None:
    org = gw.organization()
    stranger = Ed25519PrivateKey.generate()
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": "s",
        "iat": now,
        "exp": now + 60,
        "org_id": org,
        "scope": "user:read",
    }
    token = jwt.encode(claims, stranger, algorithm="EdDSA", headers={"kid": gw.signer.kid})
    assert _jwt_error(gw, token) == (401, "invalid_token")
