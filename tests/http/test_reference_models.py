"""The models and shapes the reference documents' examples need (issue 18's examples harness,
tests/e2e/test_reference_examples.py): Wan 2.7's images by resolution and aspect ratio with its
parameter table, multimodal embedding items, an async image polled as a link, and a long
transcription routed to a job whose result is the transcript in the synchronous shape. Each charge
reconciles (usage.cost_usd == x-credits-used == the balance drop == the usage row)."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import pytest

from ledger.pricing import default_price_book
from tests.harness import Gateway
from tests.http.dialects import Account, reconciles
from workers import media
from workers.metering import image_tokens_max


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw)


def post(account: Account, path: str, body: dict[str, Any]) -> Any:
    return account.gw.client.post(path, json=body, headers={"Authorization": f"Bearer {account.key}"})


def answer(response: Any) -> dict[str, Any]:
    assert 200 <= response.status_code < 300, response.text
    parsed: dict[str, Any] = json.loads(response.text, parse_float=Decimal)
    return parsed


def poll(account: Account, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = answer(account.gw.client.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {account.key}"}))
        if job["status"] != "processing":
            return job
        time.sleep(0.05)
    raise AssertionError(f"{job_id} did not finish")


def test_wan_images_by_resolution_and_aspect_ratio_as_the_example_sends_them(account: Account) -> None:
    before = account.balance_micros()
    body = {
        "model": "wan-2-7-image",
        "prompt": "A glass cathedral at sunset, dramatic lighting",
        "aspect_ratio": "16:9",
        "resolution": "1K",
        "thinking_mode": True,
        "num_images": 2,
    }
    response = post(account, "/v1/images/generations", body)
    shown = answer(response)
    assert len(shown["data"]) == 2 and all("url" in item for item in shown["data"])
    assert shown["usage"]["images"] == 2 and shown["usage"]["pricing_tier_label"] == "1K"
    micros = reconciles(
        account, before, response.headers["x-request-id"], shown["usage"], response.headers["x-credits-used"]
    )
    assert micros == 2 * 30_000  # 0.030 credits per 1K image
    before = account.balance_micros()
    response = post(account, "/v1/images/generations", {**body, "resolution": "4K", "num_images": 1})
    shown = answer(response)
    micros = reconciles(
        account, before, response.headers["x-request-id"], shown["usage"], response.headers["x-credits-used"]
    )
    assert micros == 75_000 and shown["usage"]["pricing_tier_label"] == "4K"


def test_wan_images_come_in_the_size_their_resolution_and_aspect_ratio_give(account: Account) -> None:
    body = {"model": "wan2-7-image", "prompt": "tall", "aspect_ratio": "9:16", "resolution": "1K"}
    shown = answer(post(account, "/v1/images/generations", {**body, "response_format": "b64_json"}))
    import base64

    assert media.png_size(base64.b64decode(shown["data"][0]["b64_json"])) == (576, 1024)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "wan-2-7-image", "prompt": "x", "size": "1024x1024"}, "size"),
        ({"model": "wan-2-7-image", "prompt": "x", "resolution": "8K"}, None),
        ({"model": "wan-2-7-image", "prompt": "x", "aspect_ratio": "7:3"}, None),
        ({"model": "wan-2-7-image", "prompt": "x", "num_images": 5}, None),
        ({"model": "wan-2-7-image", "prompt": "x", "thinking_mode": "yes"}, None),
        ({"model": "sim-image", "prompt": "x", "resolution": "2K"}, "resolution"),
        ({"model": "flux", "prompt": "x", "n": 2, "num_images": 3}, "num_images"),
        ({"model": "qwen-image-2-0", "prompt": "x", "image": ["https://example.com/a.jpg"]}, "image"),
    ],
)
def test_image_parameters_a_model_does_not_take_are_a_400(
    account: Account, body: dict[str, Any], param: str | None
) -> None:
    before = account.balance_micros()
    response = post(account, "/v1/images/generations", body)
    assert response.status_code == 400, response.text
    if param is not None:
        assert response.json()["error"]["param"] == param
    assert account.balance_micros() == before


def test_the_wan_model_page_lists_its_parameters(gw: Gateway) -> None:
    card = gw.client.get("/v1/models/wan-2-7-image").json()
    table = {parameter["name"]: parameter for parameter in card["parameters"]}
    assert table["resolution"]["allowed_values"] == ["1K", "2K", "4K"] and table["resolution"]["default"] == "2K"
    assert "16:9" in table["aspect_ratio"]["allowed_values"] and table["num_images"]["max"] == 4
    assert table["thinking_mode"]["type"] == "boolean"
    rates = {row["tier"]: row["rate_micros_per_million"] for row in card["pricing_rows"] if row["unit"] == "images"}
    assert {tier: rates[tier] for tier in ("1K", "2K", "4K")} == {
        "1K": 30_000_000_000,
        "2K": 30_000_000_000,
        "4K": 75_000_000_000,
    }


def test_a_multimodal_embedding_meters_its_text_and_image_items(account: Account) -> None:
    before = account.balance_micros()
    body = {
        "model": "tongyi-embedding-vision-plus",
        "input": [
            {"type": "text", "text": "a glass cathedral at sunset"},
            {"type": "image", "url": "https://example.com/photo.jpg"},
        ],
    }
    response = post(account, "/v1/embeddings", body)
    shown = answer(response)
    assert [item["index"] for item in shown["data"]] == [0, 1]
    # An image by URL is not fetched: it counts as the largest image (workers/metering.py).
    assert shown["usage"]["prompt_tokens_details"]["image_tokens"] == image_tokens_max
    assert shown["usage"]["prompt_tokens"] > image_tokens_max
    reconciles(account, before, response.headers["x-request-id"], shown["usage"], response.headers["x-credits-used"])


@pytest.mark.parametrize(
    "body",
    [
        {"model": "text-embedding-v4", "input": [{"type": "image", "url": "https://example.com/a.png"}]},
        {"model": "tongyi-embedding-vision-plus", "input": [{"type": "video", "url": "https://example.com/a.mp4"}]},
        {"model": "tongyi-embedding-vision-plus", "input": [{"type": "text"}]},
        {"model": "tongyi-embedding-vision-plus", "input": ["text", {"type": "text", "text": "mixed"}]},
    ],
)
def test_embedding_items_it_cannot_read_are_a_400(account: Account, body: dict[str, Any]) -> None:
    response = post(account, "/v1/embeddings", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith("input")


def test_every_model_the_examples_name_for_these_endpoints_is_in_the_catalog() -> None:
    book = default_price_book()
    named = (
        "mistral-small-4 qwen3-5-omni-plus qwen3-5-9b qwen3-max qwen3-7-plus wan-2-7-image wan2-7-image"
        " qwen-image-2-0 seedream-5-0-lite pixverse-v5-6 text-embedding-v4 tongyi-embedding-vision-plus"
        " sglang-qwen3-0.6b-fp8-embed"
    )
    assert not [model for model in named.split() if book.model(model) is None]


def test_an_async_image_polled_at_the_jobs_endpoint_is_a_link_unless_b64_json_was_asked(account: Account) -> None:
    for asked, key in ((None, "url"), ("url", "url"), ("b64_json", "b64_json")):
        body: dict[str, Any] = {"model": "flux", "prompt": "a sunset timelapse", "async": True}
        if asked:
            body["response_format"] = asked
        accepted = answer(post(account, "/v1/images/generations", body))
        job = poll(account, accepted["job_id"])
        assert job["status"] == "completed", job
        item = job["result"]["data"][0]
        assert key in item and ({"url", "b64_json"} - {key}).isdisjoint(item), item
        assert "answer_shape" not in job["result"]
        if key == "url":
            assert "/v1/media/" in item["url"]


def test_a_transcription_longer_than_five_minutes_is_a_job_with_the_transcript_as_its_result(account: Account) -> None:
    long_mp3 = media.mp3_audio(301_000, b"long")  # 5 min 1 s
    before = account.balance_micros()
    response = account.gw.client.post(
        "/v1/audio/transcriptions",
        data={
            "model": "openai-whisper-1",
            "response_format": "verbose_json",
            "timestamp_granularities": "word,segment",
        },
        files={"file": ("meeting.mp3", long_mp3, "audio/mpeg")},
        headers={"Authorization": f"Bearer {account.key}"},
    )
    assert response.status_code == 200, response.text  # EmpirioLabs: 200 with a JobAccepted
    accepted = response.json()
    assert (accepted["status"], accepted["poll_url"]) == ("processing", f"/v1/jobs/{accepted['job_id']}")
    assert accepted["created_at"] and "text" not in accepted and "x-credits-used" not in response.headers
    job = poll(account, accepted["job_id"])
    transcript = job["result"]
    assert job["status"] == "completed" and transcript["task"] == "transcribe"
    assert transcript["segments"] and transcript["words"] and transcript["text"]
    assert transcript["usage"]["seconds"] == 302 and "answer_shape" not in transcript
    # Metered as the synchronous request is: per started second of audio.
    assert Decimal(str(transcript["usage"]["cost_usd"])) == Decimal(str(job["cost_usd"])) == Decimal("0.0302")
    reconciles(account, before, accepted["request_id"], transcript["usage"], None)


def test_a_short_transcription_still_answers_inline(account: Account) -> None:
    response = account.gw.client.post(
        "/v1/audio/transcriptions",
        data={"model": "openai-whisper-1", "response_format": "json"},
        files={"file": ("meeting.mp3", media.mp3_audio(3_000, b"short"), "audio/mpeg")},
        headers={"Authorization": f"Bearer {account.key}"},
    )
    assert response.status_code == 200 and set(response.json()) == {"text", "usage"}, response.text


def test_an_async_transcription_in_text_format_polls_as_that_text(account: Account) -> None:
    response = account.gw.client.post(
        "/v1/audio/transcriptions",
        data={"model": "openai-whisper-1", "response_format": "srt", "async": "true"},
        files={"file": ("meeting.mp3", media.mp3_audio(3_000, b"short"), "audio/mpeg")},
        headers={"Authorization": f"Bearer {account.key}"},
    )
    job = poll(account, answer(response)["job_id"])
    assert job["result"]["text"].startswith("1\n00:00:00,000 --> ") and job["result"]["usage"]["seconds"] == 4
