"""Results as URLs (``response_format=url``, OpenAI's shape and the documents' examples): the gateway
keeps the bytes and answers a signed URL, valid about an hour, that works without an Authorization
header; an altered or expired URL, or another organization's name, is refused; the charge is the
same as inline."""

from __future__ import annotations

import base64
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.media_urls import MediaStore
from ledger.pricing import default_price_book, price_micros
from schemas.units import Units
from tests.harness import Gateway
from tests.http.dialects import Account, reconciles
from workers import media


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw)


def _per_image() -> int:
    price = default_price_book().model("sim-image")
    assert price is not None
    return price_micros(price, Units(images=1, variant="1024x1024/standard"))


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def _anonymous_get(gw: Gateway, url: str) -> Any:
    return gw.call("GET", _path(url))  # no Authorization header


def test_the_sdk_gets_a_url_that_serves_the_png_without_a_key(account: Account, gw: Gateway) -> None:
    client = account.openai()
    before = account.balance_micros()
    raw = client.images.with_raw_response.generate(
        model="sim-image", prompt="a lighthouse at dawn", n=2, response_format="url"
    )
    generated = raw.parse()
    assert generated.data is not None and len(generated.data) == 2
    urls = [item.url for item in generated.data]
    assert all(url and url.startswith("http") and "/v1/media/" in url for url in urls)
    assert all(item.b64_json is None for item in generated.data)
    assert urls[0] != urls[1]
    for url in urls:
        assert url is not None
        served = _anonymous_get(gw, url)
        assert served.status_code == 200, served.text
        assert served.headers["content-type"].startswith("image/png")
        assert media.png_size(served.content) == (1024, 1024)
    usage = raw.http_response.json()["usage"]
    micros = reconciles(account, before, raw.headers["x-request-id"], usage, raw.headers["x-credits-used"])
    assert micros == 2 * _per_image()  # a URL is not a different price


def test_the_documents_example_reads_data_0_url_by_default(account: Account, gw: Gateway) -> None:
    """Casola EX-30/EX-31: no response_format, the answer's ``data[0].url`` is a link."""
    image = account.openai("/openai/v1").images.generate(model="sim-image", prompt="a neon-lit alley in the rain")
    assert image.data and image.data[0].url
    assert _anonymous_get(gw, image.data[0].url).status_code == 200


def test_b64_json_when_asked(account: Account) -> None:
    image = account.openai().images.generate(model="sim-image", prompt="a cat", response_format="b64_json")
    assert image.data and image.data[0].b64_json and image.data[0].url is None
    assert media.png_size(base64.b64decode(image.data[0].b64_json)) == (1024, 1024)


def test_an_edit_answers_a_url_when_asked(account: Account, gw: Gateway) -> None:
    photo = media.png_image(64, 48, b"photo")
    edited = account.openai().images.edit(
        model="sim-image", image=("photo.png", photo, "image/png"), prompt="Add a balloon", response_format="url"
    )
    assert edited.data and edited.data[0].url and edited.data[0].b64_json is None
    served = _anonymous_get(gw, edited.data[0].url)
    assert served.status_code == 200 and media.png_size(served.content) == (1024, 1024)


def _refused(response: Any) -> None:
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["code"] == "media_not_found" and error["message"]


def test_an_altered_url_is_refused(account: Account, gw: Gateway) -> None:
    url = account.openai().images.generate(model="sim-image", prompt="a fox").data[0].url  # type: ignore[index]
    assert url is not None
    parts = urlsplit(url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    signature, expires = query["signature"], int(query["expires"])
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    _refused(gw.call("GET", f"{parts.path}?expires={expires}&signature={flipped}"))
    _refused(gw.call("GET", f"{parts.path}?expires={expires + 3600}&signature={signature}"))  # a later expiry
    _refused(gw.call("GET", f"{parts.path}?expires={expires}"))
    _refused(gw.call("GET", parts.path))
    _refused(gw.call("GET", f"{parts.path}?expires=abc&signature=!!"))
    assert gw.call("GET", _path(url)).status_code == 200  # the URL as given still works


def test_another_organization_cannot_reach_a_result(account: Account, gw: Gateway) -> None:
    other = Account(gw)
    url = account.openai().images.generate(model="sim-image", prompt="an owl").data[0].url  # type: ignore[index]
    assert url is not None
    parts = urlsplit(url)
    _, _, org_id, name = parts.path.split("/")[1:] if parts.path.count("/") == 4 else ("", "", "", "")
    assert org_id == account.org and name
    # The same name under the other organization, with this URL's signature: not the same key.
    _refused(gw.call("GET", f"/v1/media/{other.org}/{name}?{parts.query}"))
    # A key is 128 random bits: a guessed name with no valid signature is refused like any other.
    _refused(gw.call("GET", f"/v1/media/{account.org}/{'0' * 32}-png?{parts.query}"))
    # The other organization's key does not open it either (the signature is the only authority).
    _refused(gw.call("GET", f"/v1/media/{account.org}/{name}", other.key))


def test_an_expired_url_is_refused_and_its_media_swept(tmp_path: Any) -> None:
    from gateway.blobs import DirectoryBlobStore

    blobs = DirectoryBlobStore(tmp_path)
    store = MediaStore(blobs, b"secret", ttl_s=3600)
    now = time.time()
    url = store.put("org_a", b"\x89PNG...", "image/png", now=now)
    path, _, query = url.partition("?")
    org_id, name = path.removeprefix("/v1/media/").split("/")
    fields = {key: values[0] for key, values in parse_qs(query).items()}
    assert store.get(org_id, name, fields["expires"], fields["signature"], now=now + 3599) is not None
    assert store.get(org_id, name, fields["expires"], fields["signature"], now=now + 3600) is None
    assert blobs.get(f"media-{org_id}/{name}") is not None
    assert store.sweep(now + 3600) == 1
    assert blobs.get(f"media-{org_id}/{name}") is None
    # A store with another secret (another deployment) does not accept this one's URLs.
    url = store.put("org_a", b"x", "image/png", now=now)
    path, _, query = url.partition("?")
    fields = {key: values[0] for key, values in parse_qs(query).items()}
    elsewhere = MediaStore(blobs, b"other secret", ttl_s=3600)
    assert elsewhere.get(org_id, path.rsplit("/", 1)[1], fields["expires"], fields["signature"], now=now) is None
    # Another instance with the same secret (the admin token) serves it: any gateway behind the balancer.
    sibling = MediaStore(blobs, b"secret", ttl_s=3600)
    assert sibling.get(org_id, path.rsplit("/", 1)[1], fields["expires"], fields["signature"], now=now) is not None


def test_the_worker_is_always_asked_for_the_bytes() -> None:
    """An upstream's own default may be a link of its own: the worker asks for b64_json whatever the
    client asked, and the gateway makes the link (``answer_url``)."""
    import msgspec

    from gateway.requests import parse_image

    book = default_price_book()
    for asked, answer_url in ((None, True), ("url", True), ("b64_json", False)):
        body: dict[str, Any] = {"model": "sim-image", "prompt": "a cat"}
        if asked is not None:
            body["response_format"] = asked
        metered = parse_image(msgspec.json.encode(body), book)
        assert msgspec.json.decode(metered.payload)["response_format"] == "b64_json"
        assert metered.answer_url is answer_url


def test_a_sweep_does_bounded_work(tmp_path: Any) -> None:
    from gateway.blobs import DirectoryBlobStore
    from gateway.media_urls import sweep_max

    store = MediaStore(DirectoryBlobStore(tmp_path), b"secret", ttl_s=60)
    now = time.time()
    for _ in range(sweep_max + 8):
        store.put("org_a", b"x", "image/png", now=now)
    assert store.sweep(now + 59) == 0  # none expired yet
    assert store.sweep(now + 60) == sweep_max
    assert store.sweep(now + 60) == 8
    assert not any((tmp_path / "media-org_a").iterdir())
