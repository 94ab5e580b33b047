"""EmpirioLabs' generation templates: the list and slug endpoints answer the document's
``GenerationTemplate`` shapes with their filters, and a generation's ``template`` applies one (its
canonical prompt blended in, its recommended model, its default parameters) and is charged as the
request it becomes; a template's rules (supported models, required inputs) are 400s that charge
nothing."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from gateway import generation_templates
from ledger.pricing import default_price_book, price_micros
from schemas.units import Units
from tests.harness import Gateway
from tests.http.dialects import Account, reconciles
from tests.reference import reference_validator

list_paths = ("/v1/templates", "/v1/images/templates", "/v1/videos/templates")


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw)


def get(account: Account, path: str) -> Any:
    return account.gw.call("GET", path, account.key)


@pytest.mark.parametrize("path", list_paths)
def test_each_list_answers_the_documents_shape(account: Account, path: str) -> None:
    answer = get(account, path)
    assert answer.status_code == 200, answer.text
    reference_validator(path).validate(json.loads(answer.text))
    body = answer.json()
    assert body["object"] == "list" and body["template_count"] == len(body["data"]) > 0
    modalities = {template["modality"] for template in body["data"]}
    assert modalities == {"images": {"image"}, "videos": {"video"}}.get(path.split("/")[2], {"image", "video"})
    for template in body["data"]:
        one = get(account, f"{path}/{template['slug']}")
        assert one.status_code == 200 and one.json() == template
        reference_validator(f"{path}/{{slug}}").validate(json.loads(one.text))


def test_filters_and_their_errors(account: Account) -> None:
    def slugs(query: str) -> list[str]:
        answer = get(account, f"/v1/templates?{query}")
        assert answer.status_code == 200, answer.text
        return [template["slug"] for template in answer.json()["data"]]

    videos = {"baseball-stadium", "action-hero", "slow-orbit", "cinematic-walk"}
    assert set(slugs("modality=video")) == set(slugs("type=video")) == videos
    assert slugs("category=viral") == ["baseball-stadium"]
    assert slugs("featured=true") == ["studio-product-shot", "baseball-stadium"]
    assert set(slugs("model=flux")) == {"studio-product-shot", "neon-poster", "cinematic-portrait"}
    assert slugs("model=no-such-model") == []
    images_on_videos = get(account, "/v1/videos/templates?modality=image").json()["data"]
    assert {template["modality"] for template in images_on_videos} == {"image"}
    for query, param in (("modality=audio", "modality"), ("category=nope", "category"), ("featured=yes", "featured")):
        refused = get(account, f"/v1/templates?{query}")
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.text
    assert get(account, "/v1/templates?modality=image&type=video").status_code == 400
    assert get(account, "/v1/templates/no-such-template").status_code == 404
    assert get(account, "/v1/images/templates/baseball-stadium").status_code == 404  # a video template
    assert get(account, "/v1/videos/templates/baseball-stadium").status_code == 200


def test_a_key_is_needed(gw: Gateway) -> None:
    assert gw.call("GET", "/v1/templates").status_code == 401


def test_every_model_a_template_names_is_in_the_built_in_book_for_its_modality() -> None:
    book = default_price_book()
    for template in generation_templates.built_in:
        assert template.recommended_model in template.supported_models
        for model in template.supported_models:
            price = book.model(model)
            assert price is not None and price.category == template.modality, (template.slug, model)


def _image_price(variant: str) -> int:
    price = default_price_book().model("sim-image")
    assert price is not None
    return price_micros(price, Units(images=1, variant=variant, calls=1))


def test_an_image_template_applies_its_prompt_model_and_defaults_and_is_charged_so(account: Account) -> None:
    before = account.balance_micros()
    body = {"template": "studio-product-shot", "prompt": "a red running shoe", "response_format": "b64_json"}
    answer = account.gw.call("POST", "/v1/images/generations", account.key, json=body)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    canonical = generation_templates.find("studio-product-shot")
    assert canonical is not None
    assert result["data"][0]["revised_prompt"] == f"{canonical.canonical_prompt}. a red running shoe"
    assert answer.headers["x-model-used"] == "sim-image"
    usage = result["usage"]
    assert usage["pricing_tier_label"] == "1024x1024/hd"  # the template's default quality
    assert usage["cost_micros"] == _image_price("1024x1024/hd")
    reconciles(account, before, answer.headers["x-request-id"], usage, answer.headers["x-credits-used"])


def test_the_background_swap_template_refuses_a_request_without_its_reference_image(account: Account) -> None:
    """The document's image template example sends its product photo by URL (run as an edit:
    tests/http/test_image_generation_modes.py); without it the template is a 400 that charges nothing."""
    before = account.balance_micros()
    body = {"template": "background-swap", "prompt": "Place this product on a brushed steel studio plinth"}
    refused = account.gw.call("POST", "/v1/images/generations", account.key, json=body)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "image", refused.text
    answer = account.gw.call("POST", "/v1/images/generations", account.key, json={"template": "neon-poster"})
    assert answer.status_code == 200 and answer.json()["usage"]["cost_micros"] == _image_price("1024x1024/standard")
    assert account.balance_micros() < before


def _video_job(account: Account, body: dict[str, Any]) -> dict[str, Any]:
    accepted = account.gw.call("POST", "/v1/videos/generations", account.key, json=body)
    assert accepted.status_code == 202, accepted.text
    deadline = time.monotonic() + 30
    while True:
        job: dict[str, Any] = account.gw.call("GET", accepted.json()["poll_url"], account.key).json()
        if job["status"] != "processing" or time.monotonic() > deadline:
            assert job["status"] == "completed", job
            return job
        time.sleep(0.05)


def test_the_documents_video_template_examples(account: Account, images_url: str) -> None:
    before = account.balance_micros()
    job = _video_job(account, {"template": "baseball-stadium", "image_url": f"{images_url}/me.jpg"})
    assert job["model"] == "seedance-2-0-pro"  # the recommended model
    price = default_price_book().model("seedance-2-0-pro")
    assert price is not None
    usage = job["result"]["usage"]
    assert usage["seconds"] == 5 and usage["cost_micros"] == price_micros(price, Units(video_seconds=5, calls=1))
    reconciles(account, before, job["request_id"], usage, None)
    chosen = _video_job(
        account,
        {"template": "action-hero", "model": "seedance-2-0-pro", "image_url": f"{images_url}/subject.jpg"},
    )
    assert chosen["model"] == "seedance-2-0-pro" and chosen["result"]["usage"]["seconds"] == 4
    overridden = _video_job(account, {"template": "slow-orbit", "prompt": "a teapot", "duration": 2})
    assert overridden["model"] == "Wan-AI/Wan2.2-TI2V-5B" and overridden["result"]["usage"]["seconds"] == 2


refusals = [
    ("/v1/images/generations", {"template": "studio-product-shot", "model": "sim-chat-small"}, "model"),
    ("/v1/videos/generations", {"template": "action-hero", "prompt": "x"}, "image"),
    ("/v1/videos/generations", {"template": "action-hero", "image": ["a", "b"]}, "image"),
    ("/v1/images/generations", {"template": "baseball-stadium", "prompt": "x"}, "template"),
    ("/v1/images/generations", {"template": 7, "prompt": "x"}, "template"),
    ("/v1/videos/generations", {"template": "baseball-stadium"}, "image"),
    ("/v1/videos/generations", {"template": "no-such-template", "prompt": "x"}, "template"),
    ("/v1/videos/generations", {"template": "slow-orbit", "model": "sim-image"}, "model"),
]


@pytest.mark.parametrize(("path", "body", "param"), refusals)
def test_a_templates_rules_are_400s_that_charge_nothing(
    account: Account, path: str, body: dict[str, Any], param: str
) -> None:
    before = account.balance_micros()
    refused = account.gw.call("POST", path, account.key, json=body)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == param
    assert account.balance_micros() == before
