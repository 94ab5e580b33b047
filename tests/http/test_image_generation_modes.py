"""EmpirioLabs' image generation modes on ``POST /v1/images/generations``: reference images by URL
(``image: ["https://..."]``, fetched as a transcription's ``file_url`` is, run as an edit of them, at
most the model's documented number), the ``background-swap`` template that needs one, Image Set mode
(``enable_sequential`` with ``num_images_set``: that many images, each charged) and ``sync: false``
(alias ``wait``: the JobAccepted envelope, answered 200 and polled at /v1/jobs/{id}). Each answer is
charged exactly; each refusal is a 400 that charges nothing."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ledger.pricing import default_price_book, price_micros
from schemas.units import Units
from tests.harness import Gateway
from tests.http.dialects import Account, reconciles
from tests.reference import component, reference_validator


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw)


def _price(model: str, units: Units) -> int:
    price = default_price_book().model(model)
    assert price is not None
    return price_micros(price, units)


def _generate(account: Account, body: dict[str, Any]) -> Any:
    return account.gw.call("POST", "/v1/images/generations", account.key, json=body)


def _refused(account: Account, body: dict[str, Any], code: str, param: str) -> None:
    before = account.balance_micros()
    answer = _generate(account, body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == code and answer.json()["error"]["param"] == param, answer.text
    assert account.balance_micros() == before


def test_reference_images_by_url_run_as_an_edit(account: Account, images_url: str) -> None:
    before = account.balance_micros()
    body = {"model": "qwen-image-2-0", "prompt": "Add a soft pink sunset", "image": [f"{images_url}/source.png"]}
    answer = _generate(account, {**body, "num_images": 2, "response_format": "b64_json"})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert len(result["data"]) == 2 and result["usage"]["images"] == 2
    assert result["usage"]["cost_micros"] == _price("qwen-image-2-0", Units(images=2, calls=1))
    reconciles(account, before, answer.headers["x-request-id"], result["usage"], answer.headers["x-credits-used"])
    # The reference image is an input: another image gives other results for the same prompt.
    plain = _generate(account, {"model": "qwen-image-2-0", "prompt": body["prompt"], "response_format": "b64_json"})
    assert plain.json()["data"][0]["b64_json"] != result["data"][0]["b64_json"]


def test_reference_images_past_the_models_limit_or_not_images_are_refused(account: Account, images_url: str) -> None:
    four = [f"{images_url}/{index}.png" for index in range(4)]
    _refused(account, {"model": "qwen-image-2-0", "prompt": "p", "image": four}, "too_many_images", "image")
    ten = [f"{images_url}/{index}.png" for index in range(10)]
    _refused(account, {"model": "wan2-7-image", "prompt": "p", "image": ten}, "too_many_images", "image")
    not_an_image = [f"{images_url}/a.txt"]
    _refused(account, {"model": "qwen-image-2-0", "prompt": "p", "image": not_an_image}, "invalid_image", "image")
    _refused(account, {"model": "qwen-image-2-0", "prompt": "p", "image": []}, "invalid_parameter", "image")
    unreachable = {"model": "qwen-image-2-0", "prompt": "p", "image": ["http://127.0.0.1:1/a.png"]}
    _refused(account, unreachable, "file_url_unreachable", "image")
    nine = [f"{images_url}/{index}.png" for index in range(9)]
    assert _generate(account, {"model": "wan2-7-image", "prompt": "p", "image": nine}).status_code == 200


def test_the_background_swap_template_needs_a_reference_image(account: Account, images_url: str) -> None:
    body = {"template": "background-swap", "prompt": "on a brushed steel studio plinth"}
    _refused(account, body, "missing_required_parameter", "image")
    before = account.balance_micros()
    answer = _generate(account, {**body, "image": [f"{images_url}/product.png"]})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-model-used"] == "qwen-image-2-0"
    usage, header = answer.json()["usage"], answer.headers["x-credits-used"]
    reconciles(account, before, answer.headers["x-request-id"], usage, header)


def test_image_set_mode_answers_and_charges_each_image(account: Account) -> None:
    before = account.balance_micros()
    body = {"model": "wan2-7-image", "prompt": "Morning. Midday. Dusk.", "enable_sequential": True, "num_images_set": 3}
    answer = _generate(account, body)
    assert answer.status_code == 200, answer.text
    usage = answer.json()["usage"]
    assert len(answer.json()["data"]) == 3 and usage["images"] == 3
    assert usage["cost_micros"] == _price("wan2-7-image", Units(images=3, variant="2K", calls=1))
    reconciles(account, before, answer.headers["x-request-id"], usage, answer.headers["x-credits-used"])
    _refused(account, {**body, "enable_sequential": False}, "invalid_parameter", "num_images_set")
    _refused(account, {**body, "model": "qwen-image-2-0"}, "unsupported_parameter", "enable_sequential")


@pytest.mark.parametrize("flag", ["sync", "wait"])
def test_sync_false_answers_the_job_accepted_envelope(account: Account, flag: str) -> None:
    before = account.balance_micros()
    answer = _generate(account, {"model": "qwen-image-2-0", "prompt": "a lighthouse", flag: False})
    assert answer.status_code == 200, answer.text
    accepted = answer.json()
    assert set(component("JobAccepted")["properties"]) <= set(accepted) and accepted["status"] == "processing"
    assert accepted["data"] is None and accepted["poll_url"] == f"/v1/jobs/{accepted['job_id']}"
    reference_validator("/v1/images/generations", "post").validate(accepted)  # one of its oneOf, not both
    deadline = time.monotonic() + 10
    while (job := account.gw.call("GET", accepted["poll_url"], account.key).json())["status"] != "completed":
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    assert len(job["result"]["data"]) == 1
    reconciles(account, before, accepted["request_id"], job["result"]["usage"], None)
    waited = _generate(account, {"model": "qwen-image-2-0", "prompt": "a lighthouse", flag: True})
    assert waited.status_code == 200 and len(waited.json()["data"]) == 1, waited.text
    reference_validator("/v1/images/generations", "post").validate(waited.json())
    plain = {"model": "qwen-image-2-0", "prompt": "p"}
    _refused(account, {**plain, "sync": True, "wait": False}, "invalid_parameter", "wait")
    _refused(account, {**plain, "sync": False, "async": False}, "invalid_parameter", "async")
