"""The public catalog: every rate of every model (the rates the ledger charges), in EmpirioLabs'
model object, OpenRouter's listing and Casola's pricing and billing-rate pages; validated against the
schemas of the reference's OpenAPI document, loaded from the file. Plan limits count generation POSTs
as job submissions and everything else as API requests."""

from __future__ import annotations

from decimal import Decimal

from ledger.pricing import catalog_rows, default_price_book
from tests.harness import Gateway
from tests.reference import assert_declared_fields_present, reference_validator

book = default_price_book()


def test_the_model_list_is_public_and_a_sent_credential_is_still_checked(gw: Gateway) -> None:
    anonymous = gw.call("GET", "/v1/models")
    assert anonymous.status_code == 200, anonymous.text
    # Every model a request may name; storage is priced in the book (and on /api/pricing), billed by the files API.
    models = {name for name, price in book.models.items() if price.category != "storage"}
    assert {model["id"] for model in anonymous.json()["data"]} == models
    assert gw.call("GET", "/v1/models/sim-image").status_code == 200
    assert gw.call("GET", "/v1/models/file-storage").status_code == 404
    key = gw.key(gw.organization(), ["user:read"])[0]
    assert {model["id"] for model in gw.call("GET", "/api/catalog", key).json()["data"]} == models
    assert {model["model_id"] for model in gw.call("GET", "/api/model-status", key).json()["models"]} == models
    assert gw.call("GET", "/v1/models", "tg_not_a_real_key").status_code == 401
    assert gw.call("GET", "/api/pricing").status_code == 200


def test_media_models_list_their_rates_not_zero(gw: Gateway) -> None:
    cards = {model["id"]: model for model in gw.call("GET", "/v1/models").json()["data"]}
    assert cards["sim-image"]["pricing"]["image"] == "0.04"
    assert cards["sim-tts"]["pricing"]["character"] == "0.000015"
    assert cards["sim-whisper"]["pricing"]["audio_second"] == "0.0001"
    assert cards["sim-video"]["pricing"]["video_second"] == "0.05"
    hd = next(row for row in cards["sim-image"]["pricing_rows"] if row["tier"] == "1792x1024/hd")
    assert hd["value"] == "$0.12" and hd["spec"] == "per image"
    assert cards["sim-chat-small"]["pricing"]["prompt"] == "0.00000015"  # per token, as OpenRouter
    assert "0.000001 USD" in cards["sim-chat-small"]["rounding"]


def test_context_tiers_are_listed_with_where_they_start(gw: Gateway) -> None:
    large = gw.call("GET", "/v1/models/sim-chat-large").json()
    base, tier = large["pricing"]
    assert (base["prompt"], tier["prompt"], tier["min_context"]) == ("0.0000025", "0.000005", 32_769)
    inputs = [row for row in large["pricing_rows"] if row["unit"] == "input_tokens"]
    assert [(row["tier"], row["value"]) for row in inputs] == [
        ("Up to 32,768 prompt tokens", "$2.5"),
        ("Over 32,768 prompt tokens", "$5"),
    ]
    assert inputs[1]["above_prompt_tokens"] == 32_768
    # The reported case: a 33.5k-token prompt at the tier's rate, as the catalog now says.
    assert Decimal(tier["prompt"]) * 33_554 == Decimal("0.16777")
    assert {"unit": "batch_discount", "percent": 50}.items() <= next(
        row for row in large["pricing_rows"] if row["unit"] == "batch_discount"
    ).items()


def test_every_row_is_a_rate_the_ledger_charges(gw: Gateway) -> None:
    for card in gw.call("GET", "/v1/models").json()["data"]:
        price = book.model(card["id"])
        assert price is not None
        listed = [
            (r["unit"], r["tier"], r.get("rate_micros_per_million"), r.get("percent")) for r in card["pricing_rows"]
        ]
        rows = [(r.unit, r.tier, r.rate_micros_per_million or None, r.percent or None) for r in catalog_rows(price)]
        assert [(u, t, rate or None, p) for u, t, rate, p in listed] == rows


def test_openrouter_format_lists_the_text_models(gw: Gateway) -> None:
    listing = gw.call("GET", "/v1/models", params={"format": "openrouter"}).json()["data"]
    assert {model["id"] for model in listing} == {p.model for p in book.models.values() if p.category == "chat"}
    small = next(model for model in listing if model["id"] == "sim-chat-small")
    assert small["pricing"] == {
        "prompt": "0.00000015",
        "completion": "0.0000006",
        "image": "0",
        "request": "0",
        "input_cache_read": "0.000000075",
    }
    assert small["context_length"] == 32_768 and "image" in small["input_modalities"]
    bad = gw.call("GET", "/v1/models", params={"format": "xml"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "format"


def test_casola_pricing_and_billing_rates(gw: Gateway) -> None:
    page = gw.call("GET", "/api/pricing").json()
    assert page["price_version"] == book.version and "rounded up" in page["rounding"]
    assert {entry["model"] for entry in page["data"]} == set(book.models)
    org = gw.organization("free")
    admin_key, _ = gw.key(org, ["admin:read"])
    rates = gw.call("GET", f"/api/organizations/{org}/billing/rates", admin_key)
    assert rates.status_code == 200, rates.text
    assert rates.json()["plan"] == "free"
    assert rates.json()["rate_limits"]["per_minute"] == {"requests": 60, "jobs": 10, "tokens": 40_000}
    assert rates.json()["data"] == page["data"]
    user_key, _ = gw.key(org, ["user:read"])
    assert gw.call("GET", f"/api/organizations/{org}/billing/rates", user_key).status_code == 403


def test_generation_posts_are_job_submissions_and_reads_are_api_requests(gw: Gateway) -> None:
    org = gw.organization("free", credits="5")
    key, _ = gw.key(org, ["user:read", "user:write"])
    body = {"model": "sim-chat-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    chat = gw.call("POST", "/v1/chat/completions", key, json=body)
    assert chat.status_code == 200, chat.text
    assert chat.headers["x-ratelimit-limit-jobs"] == "10"
    assert chat.headers["x-ratelimit-remaining-jobs"] == "9"
    assert "x-ratelimit-limit-requests" not in chat.headers
    image = gw.call("POST", "/v1/images/generations", key, json={"model": "sim-image", "prompt": "a cat"})
    assert image.status_code == 200 and image.headers["x-ratelimit-remaining-jobs"] == "8"
    listed = gw.call("GET", "/v1/models", key)
    assert listed.headers["x-ratelimit-limit-requests"] == "60"
    assert listed.headers["x-ratelimit-remaining-requests"] == "59"


def test_models_match_the_reference_schemas(gw: Gateway) -> None:
    listing = gw.call("GET", "/v1/models").json()
    reference_validator("/v1/models").validate(listing)
    for card in listing["data"]:
        assert_declared_fields_present(card, "Model", absent={"logo"})
        detail = gw.call("GET", f"/v1/models/{card['id']}").json()
        reference_validator("/v1/models/{model_id}").validate(detail)
        assert_declared_fields_present(detail, "ModelDetail", absent={"logo"})
