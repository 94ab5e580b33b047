"""Casola's library share links over finished jobs: one link per item, kept past the job (its result
is copied when shared), served without a credential while it exists, refused once deleted or when
its token is altered."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.harness import Gateway
from tests.http.dialects import Account


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw)


def finished_video(account: Account) -> str:
    body = {"model": "sim-video", "prompt": "a harbour at night", "duration": 1}
    accepted = account.gw.call("POST", "/v1/videos/generations", account.key, json=body)
    assert accepted.status_code == 202, accepted.text
    job_id = str(accepted.json()["job_id"])
    deadline = time.monotonic() + 30
    while account.gw.call("GET", f"/v1/jobs/{job_id}", account.key).json()["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return job_id


def share_path(item_id: str) -> str:
    return f"/api/library/items/{item_id}/share"


def anonymous(gw: Gateway, url: str) -> Any:
    return gw.call("GET", urlsplit(url).path)


def test_a_shared_item_is_served_by_its_link_until_the_link_is_deleted(account: Account, gw: Gateway) -> None:
    item = finished_video(account)
    created = gw.call("POST", share_path(item), account.key)
    assert created.status_code == 201, created.text
    share = created.json()["share"]
    assert share["item_id"] == item and share["url"].endswith(f"/api/shares/{share['token']}")
    again = gw.call("POST", share_path(item), account.key)
    assert again.status_code == 200 and again.json()["share"] == share  # one link per item
    assert gw.call("GET", share_path(item), account.key).json()["share"] == share
    served = anonymous(gw, share["url"])
    assert served.status_code == 200, served.text
    shared = served.json()["item"]
    assert shared["id"] == item and shared["model"] == "sim-video"
    media_url = shared["result"]["data"][0]["url"]
    media = gw.call("GET", f"{urlsplit(media_url).path}?{urlsplit(media_url).query}")
    assert media.status_code == 200 and media.headers["content-type"] == "video/x-msvideo"
    assert shared["result"]["usage"]["cost_usd"] > 0
    altered = share["token"][:-2] + ("AA" if not share["token"].endswith("AA") else "BB")
    assert gw.call("GET", f"/api/shares/{altered}").status_code == 404
    deleted = gw.call("DELETE", share_path(item), account.key)
    assert deleted.status_code == 200 and deleted.json() == {"item_id": item, "deleted": True}
    assert anonymous(gw, share["url"]).status_code == 404
    assert gw.call("GET", share_path(item), account.key).status_code == 404
    assert gw.call("DELETE", share_path(item), account.key).status_code == 404


def test_only_the_owners_completed_items_can_be_shared(account: Account, gw: Gateway) -> None:
    assert gw.call("POST", share_path("job_nope"), account.key).json()["error"]["code"] == "item_not_found"
    item = finished_video(account)
    other = Account(gw)
    refused = gw.call("POST", share_path(item), other.key)
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "item_not_found"
    reader, _ = gw.key(account.org, ["user:read"])
    assert gw.call("POST", share_path(item), reader).status_code == 403
    assert gw.call("GET", share_path(item), reader).status_code == 404  # no link yet
    running = account.gw.call(
        "POST", "/v1/videos/generations", account.key, json={"model": "sim-video", "prompt": "x", "duration": 10}
    ).json()["job_id"]
    pending = gw.call("POST", share_path(running), account.key)
    assert pending.status_code in (201, 409), pending.text  # 409 while it runs (it may have finished already)
    if pending.status_code == 409:
        assert pending.json()["error"]["code"] == "item_not_ready"
