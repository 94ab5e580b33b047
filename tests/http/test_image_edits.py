"""``POST /v1/images/edits`` (OpenAI's multipart shape, Casola's "image editing / inpainting"): one
image or several, an optional PNG mask and a prompt; PNG results as ``b64_json``, priced per image
as generations are, through the OpenAI SDK's ``images.edit`` and plain multipart. Bad input is a 4xx
in the OpenAI envelope and charges nothing."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from gateway import uploads
from ledger.pricing import default_price_book, price_micros
from schemas.units import Units
from tests.harness import Gateway
from tests.http.dialects import Account, reconciles
from workers import media

photo = media.png_image(64, 48, b"photo")
mask = media.png_image(64, 48, b"mask")


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw)


def _per_image(variant: str = "1024x1024/standard") -> int:
    price = default_price_book().model("sim-image")
    assert price is not None
    return price_micros(price, Units(images=1, variant=variant))


def test_the_sdk_edits_an_image_with_a_mask(account: Account) -> None:
    client = account.openai("/openai/v1")
    before = account.balance_micros()
    raw = client.images.with_raw_response.edit(
        model="sim-image",
        image=("photo.png", photo, "image/png"),
        mask=("mask.png", mask, "image/png"),
        prompt="Add a red balloon",
        n=2,
    )
    edited = raw.parse()
    assert edited.data is not None and len(edited.data) == 2
    for item in edited.data:
        assert item.b64_json is not None
        assert media.png_size(base64.b64decode(item.b64_json)) == (1024, 1024)
    usage = raw.http_response.json()["usage"]
    assert usage["images"] == 2
    micros = reconciles(account, before, raw.headers["x-request-id"], usage, raw.headers["x-credits-used"])
    assert micros == 2 * _per_image()
    assert account.usage_row(raw.headers["x-request-id"])[0] == "/v1/images/edits"


def test_several_images_and_a_variant(account: Account) -> None:
    """The SDK sends a list of images as ``image[]``; each edit's result depends on its images."""
    client = account.openai()
    jpeg_like = media.png_image(32, 32, b"other")
    first = client.images.edit(
        model="sim-image",
        image=[("a.png", photo, "image/png"), ("b.png", jpeg_like, "image/png")],
        prompt="Blend them",
        size="1792x1024",
        quality="standard",
    )
    assert first.data and first.data[0].b64_json
    assert media.png_size(base64.b64decode(first.data[0].b64_json)) == (1792, 1024)
    other = client.images.edit(
        model="sim-image",
        image=("a.png", photo, "image/png"),
        prompt="Blend them",
        size="1792x1024",
        quality="standard",
    )
    assert other.data and other.data[0].b64_json != first.data[0].b64_json


def _edit(account: Account, files: dict[str, Any] | list[Any], **fields: str) -> Any:
    data = {"model": "sim-image", "prompt": "Make it night", **fields}
    return account.gw.call("POST", "/v1/images/edits", account.key, data=data, files=files)


def test_curl_shaped_edit_runs(account: Account) -> None:
    response = _edit(account, {"image": ("photo.png", photo, "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["created"] and body["data"][0]["b64_json"] and body["usage"]["images"] == 1


@pytest.mark.parametrize(
    ("files", "fields", "status", "param"),
    [
        ({"image": ("a.png", b"not an image", "image/png")}, {}, 400, "image"),
        ({"image": ("a.png", photo, "image/png"), "mask": ("m.png", b"\xff\xd8jpeg", "image/jpeg")}, {}, 400, "mask"),
        ({"mask": ("m.png", mask, "image/png")}, {}, 400, "image"),
        ({"image": ("a.png", photo, "image/png")}, {"prompt": ""}, 400, "prompt"),
        ({"image": ("a.png", photo, "image/png")}, {"size": "640x480"}, 400, "size"),
        ({"image": ("a.png", photo, "image/png")}, {"n": "9"}, 400, "n"),
        ({"image": ("a.png", photo, "image/png")}, {"response_format": "base64"}, 400, "response_format"),
        ({"image": ("a.png", photo + bytes(uploads.upload_bytes_max), "image/png")}, {}, 413, "image"),
        ({"image": ("a.png", photo, "image/png")}, {"model": "sim-tts"}, 404, "model"),
    ],
)
def test_bad_edits_are_a_4xx(
    account: Account, files: dict[str, Any], fields: dict[str, str], status: int, param: str
) -> None:
    before = account.balance_micros()
    response = _edit(account, files, **fields)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"} and error["param"] == param
    assert account.balance_micros() == before
