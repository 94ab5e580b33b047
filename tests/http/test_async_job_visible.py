"""An async request's 202 names a job that GET /v1/jobs/{id} shows at once, also when the gateway
dispatched it against its slice of the balance (before the ledger's hold was on the log)."""

from __future__ import annotations

from tests.harness import Gateway

chat_body = {"model": "sim-chat-small", "messages": [{"role": "user", "content": "later"}], "async": True}


def test_a_job_accepted_against_a_slice_is_found_by_the_next_request(gw: Gateway) -> None:
    org = gw.organization(credits="100")  # enough for a slice: the gateway dispatches jobs itself
    key, _ = gw.key(org, ["user:read", "user:write"])
    assert gw.call("POST", "/v1/chat/completions", key, json={**chat_body, "async": False}).status_code == 200
    found = []
    for _ in range(40):
        accepted = gw.call("POST", "/v1/chat/completions", key, json=chat_body)
        assert accepted.status_code == 202, accepted.text
        polled = gw.call("GET", accepted.json()["poll_url"], key)
        found.append(polled.status_code)
        if polled.status_code == 200:
            assert polled.json()["id"] == accepted.json()["job_id"]
    assert found == [200] * 40, found
