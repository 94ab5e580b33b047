"""One organization's usage, ledger entries, balance, tokens, jobs (and the files uploaded with them),
idempotent replies and limits are invisible to every other: another organization's ids are 404, and
lists only hold one's own rows. (Every route with an organization in its path is also covered for
every credential by tests/test_auth_scopes.py.)"""

from __future__ import annotations

import time

from tests.harness import Gateway

chat_body = {"model": "sim-chat-small", "messages": [{"role": "user", "content": "Which organization am I?"}]}


def _wait_for_rows(gw: Gateway, key: str, count: int) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while True:
        body = gw.call("GET", "/v1/account/usage", key).json()
        if len(body["data"]) >= count or time.monotonic() > deadline:
            return dict(body)
        time.sleep(0.1)


def test_usage_ledger_and_balance_belong_to_one_organization(gw: Gateway) -> None:
    org_a, org_b = gw.organization(credits="3"), gw.organization(credits="7")
    user_a, _ = gw.key(org_a, ["user:read", "user:write", "admin:read"])
    user_b, _ = gw.key(org_b, ["user:read", "user:write", "admin:read"])
    request_ids = {}
    for org, key, n in ((org_a, user_a, 2), (org_b, user_b, 3)):
        request_ids[org] = [gw.call("POST", "/v1/chat/completions", key, json=chat_body) for _ in range(n)]
        assert all(r.status_code == 200 for r in request_ids[org])
    usage_a, usage_b = _wait_for_rows(gw, user_a, 2), _wait_for_rows(gw, user_b, 3)
    ids_a = {row["request_id"] for row in usage_a["data"]}  # type: ignore[attr-defined]
    ids_b = {row["request_id"] for row in usage_b["data"]}  # type: ignore[attr-defined]
    assert ids_a == {r.headers["x-request-id"] for r in request_ids[org_a]}
    assert ids_b == {r.headers["x-request-id"] for r in request_ids[org_b]}
    assert usage_a["balance"]["amount_micros"] < 3_000_000  # type: ignore[index]
    assert 3_000_000 < usage_b["balance"]["amount_micros"] < 7_000_000  # type: ignore[index]
    for path in ("balance", "ledger", "tokens", "limits"):
        assert gw.call("GET", f"/v1/organizations/{org_b}/{path}", user_a).status_code == 404
        assert gw.call("GET", f"/v1/organizations/{org_a}/{path}", user_a).status_code == 200
    ledger_a = gw.call("GET", f"/v1/organizations/{org_a}/ledger", user_a).json()["data"]
    assert ledger_a and all(org_a in (row["debit"] + row["credit"]) for row in ledger_a)
    assert not any(org_b in (row["debit"] + row["credit"]) for row in ledger_a)


def test_refunding_another_organizations_request_is_not_possible(gw: Gateway) -> None:
    org_a, org_b = gw.organization(credits="3"), gw.organization(credits="3")
    user_b, _ = gw.key(org_b, ["user:write"])
    charged = gw.call("POST", "/v1/chat/completions", user_b, json=chat_body)
    assert charged.status_code == 200
    refund = {"amount": "0.000001", "reason": "wrong org", "reference": charged.headers["x-request-id"]}
    response = gw.admin("POST", f"/v1/organizations/{org_a}/refunds", json=refund)
    assert response.status_code == 404 and response.json()["error"]["code"] == "reference_not_found"


def test_idempotency_keys_are_per_organization(gw: Gateway) -> None:
    org_a, org_b = gw.organization(credits="3"), gw.organization(credits="3")
    key_a, _ = gw.key(org_a, ["user:write"])
    key_b, _ = gw.key(org_b, ["user:write"])
    headers = {"Idempotency-Key": "same-key-in-two-orgs"}
    first = gw.call("POST", "/v1/chat/completions", key_a, json=chat_body, headers=headers)
    second = gw.call("POST", "/v1/chat/completions", key_b, json=chat_body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert "idempotent-replayed" not in second.headers  # B never sees A's stored answer
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_rate_limits_are_per_organization(gw: Gateway) -> None:
    org_a, org_b = gw.organization("free", limits={"requests": 2}), gw.organization("free", limits={"requests": 2})
    key_a, _ = gw.key(org_a, ["user:read"])
    key_b, _ = gw.key(org_b, ["user:read"])
    assert [gw.call("GET", "/v1/models", key_a).status_code for _ in range(3)] == [200, 200, 429]
    assert gw.call("GET", "/v1/models", key_b).status_code == 200


def test_jobs_and_their_uploads_belong_to_one_organization(gw: Gateway) -> None:
    """Uploaded files ride in their job (a transcription's WAV), so a job's isolation is its file's."""
    org_a, org_b = gw.organization(credits="3"), gw.organization(credits="3")
    admin_a, _ = gw.key(org_a, ["user:read", "user:write", "admin:read"])
    admin_b, _ = gw.key(org_b, ["user:read", "user:write", "admin:read"])
    submitted = gw.call("POST", "/v1/chat/completions", admin_a, json={**chat_body, "async": True})
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]
    assert gw.call("GET", f"/v1/jobs/{job_id}", admin_a).status_code == 200
    assert gw.call("GET", f"/v1/organizations/{org_a}/jobs/{job_id}", admin_a).status_code == 200
    for method, path in (
        ("GET", f"/v1/jobs/{job_id}"),
        ("DELETE", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/organizations/{org_b}/jobs/{job_id}"),  # its own admin path, another's job
        ("GET", f"/v1/organizations/{org_a}/jobs/{job_id}"),  # another organization's path
    ):
        assert gw.call(method, path, admin_b).status_code == 404, (method, path)
    listed = gw.call("GET", "/v1/jobs", admin_b).json()["data"]
    assert job_id not in {job["id"] for job in listed}
