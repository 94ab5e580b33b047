"""What a video generation names by reference (gateway/references.py): its reference image
(``image`` or ``image_url``, fetched and read as an image before anything is held) and EmpirioLabs'
``extend_from`` (``{job_id}`` of a completed video job of the organization, or ``{video_url}``): an
extension runs as a video of its own on the continued video's model unless it names one, charged per
second as any video; the ``cinematic-walk`` template needs one. Each refusal charges nothing."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ledger.pricing import default_price_book, price_micros
from schemas.units import Units
from tests.harness import Gateway
from tests.http.dialects import Account, reconciles


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw)


def _video(account: Account, body: dict[str, Any], key: str | None = None) -> Any:
    return account.gw.call("POST", "/v1/videos/generations", key or account.key, json=body)


def _ended(account: Account, accepted: Any) -> dict[str, Any]:
    assert accepted.status_code == 202, accepted.text
    deadline = time.monotonic() + 30
    while True:
        job: dict[str, Any] = account.gw.call("GET", accepted.json()["poll_url"], account.key).json()
        if job["status"] != "processing" or time.monotonic() > deadline:
            assert job["status"] == "completed", job
            return job
        time.sleep(0.05)


def _refused(account: Account, body: dict[str, Any], status: int, code: str, param: str) -> None:
    before = account.balance_micros()
    refused = _video(account, body)
    assert refused.status_code == status, refused.text
    assert (refused.json()["error"]["code"], refused.json()["error"]["param"]) == (code, param), refused.text
    assert account.balance_micros() == before


def _seconds_price(model: str, seconds: int) -> int:
    price = default_price_book().model(model)
    assert price is not None
    return price_micros(price, Units(video_seconds=seconds, calls=1))


def test_an_image_to_video_fetches_its_reference_image(account: Account, images_url: str) -> None:
    image = f"{images_url}/a.jpg"
    body = {"model": "pixverse-v5-6", "mode": "i2v", "prompt": "zoom out", "image": image, "duration": 5}
    before = account.balance_micros()
    job = _ended(account, _video(account, body))
    assert job["result"]["usage"]["cost_micros"] == _seconds_price("pixverse-v5-6", 5)
    reconciles(account, before, job["request_id"], job["result"]["usage"], None)
    _refused(account, {**body, "image": f"{images_url}/a.txt"}, 400, "invalid_image", "image")
    _refused(account, {**body, "image": "http://127.0.0.1:1/a.png"}, 400, "file_url_unreachable", "image")
    _refused(account, {**body, "image_url": f"{images_url}/b.jpg"}, 400, "invalid_parameter", "image")


def test_extend_from_a_job_continues_it_on_its_model(account: Account) -> None:
    first = _ended(account, _video(account, {"model": "pixverse-v5-6", "prompt": "a street at dusk", "duration": 3}))
    before = account.balance_micros()
    extended = _ended(account, _video(account, {"extend_from": {"job_id": first["job_id"]}}))
    assert extended["model"] == "pixverse-v5-6" and extended["result"]["usage"]["seconds"] == 5
    assert extended["result"]["usage"]["cost_micros"] == _seconds_price("pixverse-v5-6", 5)
    reconciles(account, before, extended["request_id"], extended["result"]["usage"], None)
    walk = {"template": "cinematic-walk", "extend_from": {"job_id": first["job_id"]}}
    composed = _ended(account, _video(account, walk))
    assert composed["model"] == "seedance-2-0-pro"  # the template's recommended model


def test_extend_from_refusals(account: Account, gw: Gateway, images_url: str) -> None:
    """(``images_url``: the gateway may fetch from 127.0.0.1, so an unreachable URL is one.)"""
    _refused(account, {"extend_from": {"job_id": "job_missing"}}, 404, "job_not_found", "extend_from.job_id")
    both = {"extend_from": {"job_id": "a", "video_url": "http://127.0.0.1:1/a.mp4"}}
    _refused(account, both, 400, "invalid_parameter", "extend_from")
    _refused(account, {"extend_from": "job_1"}, 400, "invalid_parameter", "extend_from")
    _refused(account, {"template": "cinematic-walk"}, 400, "missing_required_parameter", "extend_from")
    unreachable = {"extend_from": {"video_url": "http://127.0.0.1:1/a.mp4"}, "model": "pixverse-v5-6"}
    _refused(account, unreachable, 400, "file_url_unreachable", "extend_from.video_url")
    image = account.gw.call("POST", "/v1/images/generations", account.key, json={"prompt": "x", "sync": False})
    # Until it is charged: the refusal below must leave the balance as it was, and this job's charge,
    # landing between the two reads, was taken for the refusal's (a flaky failure).
    deadline = time.monotonic() + 30
    while True:
        polled = account.gw.call("GET", image.json()["poll_url"], account.key)
        if polled.status_code == 200 and polled.json()["status"] == "completed":
            break
        assert time.monotonic() < deadline, polled.text
        time.sleep(0.05)
    charged = before_balance = account.balance_micros()
    while time.monotonic() < deadline:  # the balance shows the job's charge a moment after the job
        time.sleep(0.2)
        charged, before_balance = account.balance_micros(), charged
        if charged == before_balance:
            break
    _refused(account, {"extend_from": {"job_id": image.json()["job_id"]}}, 400, "invalid_parameter", "extend_from")
    stranger = Account(gw)
    theirs = _video(stranger, {"model": "pixverse-v5-6", "prompt": "theirs", "duration": 1}).json()["job_id"]
    _refused(account, {"extend_from": {"job_id": theirs}}, 404, "job_not_found", "extend_from.job_id")
