"""``POST /v1/3d/generations`` as EmpirioLabs documents it: always async (the ``JobAccepted`` 202),
polled at ``/v1/jobs/{id}`` (its ``Job`` schema), whose completed ``result.data[0]`` is a signed URL
serving a deterministic GLB (``model/gltf-binary``); priced per generation, the charge the same in the
result's usage, the job, the balance and the usage row; bad input a 400 and no charge."""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from ledger.pricing import default_price_book, price_micros
from schemas.units import Units
from tests.harness import Gateway
from tests.http.dialects import Account, reconciles
from tests.reference import reference_validator
from workers import media, meshes

accepted_schema = reference_validator("/v1/3d/generations", "post", "202")
job_schema = reference_validator("/v1/jobs/{job_id}")
# The document's example body (its curl and its OpenAPI example are the same).
example = {
    "model": "trellis-2-4b",
    "image_url": "https://example.com/product-photo.png",
    "resolution": "1024",
    "texture_size": "2048",
    "decimation_target": 500000,
    "seed": 42,
}


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw)


def _per_generation() -> int:
    price = default_price_book().model("trellis-2-4b")
    assert price is not None
    return price_micros(price, Units(calls=1))


def submit(account: Account, body: dict[str, Any]) -> Any:
    return account.gw.call("POST", "/v1/3d/generations", account.key, json=body)


def completed(account: Account, poll_url: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        answer = account.gw.call("GET", poll_url, account.key)
        assert answer.status_code == 200, answer.text
        job_schema.validate(json.loads(answer.text))
        job: dict[str, Any] = answer.json()
        if job["status"] != "processing" or time.monotonic() > deadline:
            assert job["status"] == "completed", job
            return job
        time.sleep(0.05)


def served_glb(gw: Gateway, url: str) -> bytes:
    parts = urlsplit(url)
    served = gw.call("GET", f"{parts.path}?{parts.query}")  # no Authorization: the signature is the authority
    assert served.status_code == 200, served.text
    assert served.headers["content-type"] == "model/gltf-binary"
    content: bytes = served.content
    return content


def test_the_documents_example_is_a_job_whose_result_is_a_signed_glb(account: Account, gw: Gateway) -> None:
    before = account.balance_micros()
    accepted = submit(account, example)
    assert accepted.status_code == 202, accepted.text
    accepted_schema.validate(json.loads(accepted.text))
    body = accepted.json()
    assert body["status"] == "processing" and body["poll_url"] == f"/v1/jobs/{body['job_id']}"
    assert body["job_id"].startswith("job_") and body["created_at"]
    job = completed(account, body["poll_url"])
    assert job["progress"] == 1 and job["error"] is None
    item = job["result"]["data"][0]
    assert item["content_type"] == "model/gltf-binary" and "/v1/media/" in item["url"]
    document, binary = meshes.read_glb(served_glb(gw, item["url"]))
    assert document["asset"]["version"] == "2.0"
    assert document["asset"]["extras"]["resolution"] == "1024"
    assert document["accessors"][3]["count"] == 1280 * 3  # the 1024 resolution's triangles
    assert document["buffers"][0]["byteLength"] == len(binary)
    usage = job["result"]["usage"]
    assert usage["generations"] == 1 and usage["cost_micros"] == _per_generation() == job["cost_micros"]
    reconciles(account, before, job["request_id"], usage, None)
    assert account.usage_row(job["request_id"])[:2] == ("/v1/3d/generations", "trellis-2-4b")


def test_the_same_request_gives_the_same_asset_and_another_seed_another(account: Account, gw: Gateway) -> None:
    assets = []
    for seed in (7, 7, 8):
        accepted = submit(account, {**example, "seed": seed, "resolution": "512"})
        assert accepted.status_code == 202, accepted.text
        job = completed(account, accepted.json()["poll_url"])
        assets.append(served_glb(gw, job["result"]["data"][0]["url"]))
    assert assets[0] == assets[1] != assets[2]
    assert meshes.read_glb(assets[0])[0]["accessors"][3]["count"] == 320 * 3


def test_b64_json_and_an_inline_image(account: Account) -> None:
    image = "data:image/png;base64," + base64.b64encode(media.png_image(16, 16, b"photo")).decode()
    body = {"model": "trellis-2-4b", "image": image, "response_format": "b64_json", "resolution": "1536"}
    accepted = submit(account, body)
    assert accepted.status_code == 202, accepted.text
    item = completed(account, accepted.json()["poll_url"])["result"]["data"][0]
    assert item["content_type"] == "model/gltf-binary" and "url" not in item
    document, _ = meshes.read_glb(base64.b64decode(item["b64_json"]))
    assert document["accessors"][3]["count"] == 5120 * 3


bad_bodies = [
    ({"model": "trellis-2-4b"}, "image", "missing_required_parameter"),
    ({**example, "image": "https://example.com/a.png"}, "image", "invalid_parameter"),
    ({**example, "image_url": "ftp://example.com/a.png"}, "image_url", "invalid_parameter"),
    ({"model": "trellis-2-4b", "image": "not base64!"}, "image", "invalid_base64"),
    ({"model": "trellis-2-4b", "image": base64.b64encode(b"plain text").decode()}, "image", "invalid_image"),
    ({**example, "resolution": "2048"}, "resolution", None),
    ({**example, "resolution": 1024}, "resolution", None),
    ({**example, "seed": -1}, "seed", None),
    ({**example, "decimation_target": 5}, "decimation_target", None),
    ({**example, "texture_size": "512"}, "texture_size", None),
    ({**example, "max_num_tokens": 10}, "max_num_tokens", None),
    ({**example, "response_format": "glb"}, "response_format", None),
    ({**example, "model": "sim-video"}, "model", "model_not_found"),
    ({**example, "model": "no-such-model"}, "model", "model_not_found"),
    ({**example, "model": ""}, "model", None),
]


@pytest.mark.parametrize(("body", "param", "code"), bad_bodies)
def test_bad_input_is_a_clear_4xx_and_charges_nothing(
    account: Account, body: dict[str, Any], param: str, code: str | None
) -> None:
    before = account.balance_micros()
    refused = submit(account, body)
    assert refused.status_code in (400, 404), refused.text
    error = refused.json()["error"]
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    assert account.balance_micros() == before


def test_a_balance_below_one_generation_is_a_402_and_no_job(gw: Gateway) -> None:
    org = gw.organization("enterprise", credits="0.01")
    key, _ = gw.key(org, ["user:read", "user:write"])
    refused = gw.call("POST", "/v1/3d/generations", key, json=example)
    assert refused.status_code == 402, refused.text
    assert refused.json()["error"]["type"] == "insufficient_quota" or refused.json()["error"]["code"]
    assert gw.call("GET", "/v1/jobs", key).json()["data"] == []


def test_a_read_only_key_may_not_generate(account: Account, gw: Gateway) -> None:
    reader, _ = gw.key(account.org, ["user:read"])
    assert gw.call("POST", "/v1/3d/generations", reader, json=example).status_code == 403


def test_the_catalog_lists_the_model_as_3d(gw: Gateway) -> None:
    card = gw.call("GET", "/v1/models/trellis-2-4b").json()
    assert card["type"] == "3d" and card["supported_endpoints"] == ["/v1/3d/generations"]
    assert card["input_modalities"] == ["image"] and card["output_modalities"] == ["3d"]
    names = {parameter["name"] for parameter in card["parameters"]}
    assert {"image_url", "resolution", "texture_size", "decimation_target", "seed"} <= names
