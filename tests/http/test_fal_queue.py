"""Casola's Fal-compatible queue (POST /fal/{slug}, GET /fal/requests/{id}, /status, /cancel, POST
/fal/requests/batch) and the quickstart's async image polled there: the documents' examples as
written (only the host and the key changed), each charge reconciled (usage.cost_usd == x-credits-used
when the answer has it == the balance drop == the usage row), Fal's statuses and shapes, and the
errors: unknown or another organization's request 404, bad bodies 400, unknown slugs 404, scopes."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import pytest

from tests.harness import Gateway
from tests.http.dialects import Account, media_of, reconciles
from workers import media


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw)


def curl(account: Account, method: str, path: str, body: str | None = None) -> Any:
    """A request as the documents' curl lines send it (their headers, their body text)."""
    headers = {"Authorization": f"Bearer {account.key}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    return account.gw.client.request(method, path, headers=headers, content=body)


def poll_until_done(account: Account, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        polled = curl(account, "GET", f"/fal/requests/{request_id}")
        assert polled.status_code == 200, polled.text
        body: dict[str, Any] = json.loads(polled.text, parse_float=Decimal)
        assert body["status"] in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED", "FAILED"), body
        if body["status"] in ("COMPLETED", "FAILED"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"{request_id} did not finish")


def test_sync_mode_example_ex9_answers_the_images_with_their_charge(account: Account) -> None:
    """CR "Sync vs Async", sync mode (EX-9): FLUX.1-schnell by its Fal slug, the answer waits."""
    before = account.balance_micros()
    response = curl(
        account, "POST", "/fal/fal-ai/flux1-schnell-nunchaku", '{"prompt": "A cat in space", "sync_mode": true}'
    )
    assert response.status_code == 200, response.text
    body = json.loads(response.text, parse_float=Decimal)
    assert response.headers["x-model-used"] == "black-forest-labs/FLUX.1-schnell"
    micros = reconciles(
        account, before, response.headers["x-request-id"], body["usage"], response.headers["x-credits-used"]
    )
    assert micros == 3_000  # 0.003 credits per image
    [image] = body["images"]
    assert (image["width"], image["height"], image["content_type"]) == (1024, 1024, "image/png")
    png = media_of(account.gw, image["url"], "image/png")  # a signed URL the gateway serves, as Fal's
    assert media.png_size(png) == (1024, 1024)
    assert body["request_id"].startswith("job_")
    endpoint, model, *_ = account.usage_row(response.headers["x-request-id"])
    assert (endpoint, model) == ("/v1/images/generations", "black-forest-labs/FLUX.1-schnell")


def test_async_submit_and_poll_examples_ex10_ex11(account: Account) -> None:
    """CR "Async mode (default)": submit Wan 2.2 by its slug (EX-10), then poll (EX-11) until
    COMPLETED; the video's charge is what its result's usage says, and the balance dropped by it."""
    before = account.balance_micros()
    submitted = curl(account, "POST", "/fal/fal-ai/wan/v2.2-5b/text-to-video", '{"prompt": "A sunset over the ocean"}')
    assert submitted.status_code == 200, submitted.text
    queued = submitted.json()
    request_id = queued["request_id"]
    assert queued["status"] == "IN_QUEUE" and queued["queue_position"] == 0
    base = f"http://testserver.local/fal/requests/{request_id}"
    assert (queued["response_url"], queued["status_url"], queued["cancel_url"]) == (
        base,
        base + "/status",
        base + "/cancel",
    )
    assert "x-credits-used" not in submitted.headers  # nothing charged yet
    done = poll_until_done(account, request_id)
    assert done["status"] == "COMPLETED", done
    assert done["video"]["content_type"] == "video/x-msvideo"
    clip = media_of(account.gw, done["video"]["url"], "video/x-msvideo")
    again = poll_until_done(account, request_id)["video"]["url"]
    assert again == done["video"]["url"]  # a poll reuses the copy kept for the job
    assert media.video_info(clip)[0] > 0
    micros = reconciles(account, before, submitted.headers["x-request-id"], done["usage"], None)
    assert micros == 5 * 20_000  # 5 seconds (the default) at 0.02 credits per second
    status = curl(account, "GET", f"/fal/requests/{request_id}/status").json()
    assert status["status"] == "COMPLETED" and "video" not in status
    # The same job, by the same id, on the job APIs.
    assert curl(account, "GET", f"/v1/jobs/{request_id}").json()["status"] == "completed"


def test_quickstart_async_image_ex33_polled_at_the_fal_path_ex34(account: Account) -> None:
    """CQ "Async requests": "async": true on /openai/v1/images/generations answers 202 in the
    quickstart's shape (EX-33); GET /fal/requests/{id} polls it to its images (EX-34)."""
    before = account.balance_micros()
    accepted = curl(
        account,
        "POST",
        "/openai/v1/images/generations",
        '{"model": "flux", "prompt": "a sunset timelapse", "async": true}',
    )
    assert accepted.status_code == 202, accepted.text
    shown = accepted.json()
    assert (shown["object"], shown["status"]) == ("image.generation.async", "pending")
    done = poll_until_done(account, shown["id"])
    assert done["request_id"] == shown["id"] and done["status"] == "COMPLETED"
    [image] = done["images"]
    assert (image["width"], image["height"]) == (1024, 1024)
    assert media.png_size(media_of(account.gw, image["url"], "image/png")) == (1024, 1024)
    assert reconciles(account, before, accepted.headers["x-request-id"], done["usage"], None) == 3_000


def test_a_fal_request_with_sync_mode_on_a_video_waits_for_it(account: Account) -> None:
    before = account.balance_micros()
    body = '{"prompt": "waves", "num_frames": 48, "frames_per_second": 24, "sync_mode": true}'
    response = curl(account, "POST", "/fal/fal-ai/wan/v2.2-5b/text-to-video", body)
    assert response.status_code == 200, response.text
    answer = json.loads(response.text, parse_float=Decimal)
    assert media.video_info(media_of(account.gw, answer["video"]["url"], "video/"))[0] > 0
    micros = reconciles(
        account, before, response.headers["x-request-id"], answer["usage"], response.headers["x-credits-used"]
    )
    assert micros == 2 * 20_000  # 48 frames at 24 per second


def test_batch_status_lists_each_request_in_order(gw: Gateway, account: Account) -> None:
    first = curl(account, "POST", "/fal/fal-ai/flux1-schnell-nunchaku", '{"prompt": "one"}').json()["request_id"]
    poll_until_done(account, first)
    other_org = Account(gw)
    theirs = curl(other_org, "POST", "/fal/fal-ai/flux1-schnell-nunchaku", '{"prompt": "theirs"}').json()
    asked = [first, "job_unknown", theirs["request_id"]]
    response = curl(account, "POST", "/fal/requests/batch", json.dumps({"request_ids": asked}))
    assert response.status_code == 200, response.text
    listed = response.json()["requests"]
    assert [entry["request_id"] for entry in listed] == asked
    assert [entry["status"] for entry in listed] == ["COMPLETED", "NOT_FOUND", "NOT_FOUND"]
    assert "images" not in listed[0]  # statuses only; the output is at response_url
    too_many = curl(account, "POST", "/fal/requests/batch", json.dumps({"request_ids": ["job_x"] * 51}))
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "request_ids"
    for bad in ('{"request_ids": []}', "{}", '{"request_ids": "job_x"}', "not json"):
        answer = curl(account, "POST", "/fal/requests/batch", bad)
        assert answer.status_code == 400, (bad, answer.text)


def test_cancel_stops_a_queued_or_running_request_and_charges_only_what_ran(account: Account) -> None:
    before = account.balance_micros()
    body = '{"prompt": "a long shot", "duration": 10}'
    submitted = curl(account, "POST", "/fal/fal-ai/wan/v2.2-5b/text-to-video", body)
    request_id = submitted.json()["request_id"]
    cancelled = curl(account, "PUT", f"/fal/requests/{request_id}/cancel")
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["status"] == "CANCELLATION_REQUESTED"
    done = poll_until_done(account, request_id)
    assert done["status"] == "FAILED" and done["error"]["code"] == "cancelled", done
    job = curl(account, "GET", f"/v1/jobs/{request_id}").json()
    assert (job["status"], job["state"]) == ("failed", "cancelled")
    deadline = time.monotonic() + 10
    while account.balance_micros() != before - job["cost_micros"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert account.balance_micros() == before - job["cost_micros"] < before + 1
    assert job["cost_micros"] < 10 * 20_000  # not the whole video
    again = curl(account, "PUT", f"/fal/requests/{request_id}/cancel")
    assert again.status_code == 400 and again.json()["error"]["code"] == "already_completed"


def test_unknown_and_foreign_requests_are_404_in_the_envelope(gw: Gateway, account: Account) -> None:
    other_org = Account(gw)
    theirs = curl(other_org, "POST", "/fal/fal-ai/flux1-schnell-nunchaku", '{"prompt": "mine"}').json()
    for path in (
        "/fal/requests/job_nothing",
        f"/fal/requests/{theirs['request_id']}",
        f"/fal/requests/{theirs['request_id']}/status",
    ):
        response = curl(account, "GET", path)
        assert response.status_code == 404, response.text
        error = response.json()["error"]
        assert (error["code"], error["type"]) == ("not_found", "not_found_error") and error["message"]
    response = curl(account, "PUT", f"/fal/requests/{theirs['request_id']}/cancel")
    assert response.status_code == 404
    assert curl(other_org, "GET", f"/fal/requests/{theirs['request_id']}").status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/fal/fal-ai/flux1-schnell-nunchaku", "{}", 400, "prompt"),
        ("/fal/fal-ai/flux1-schnell-nunchaku", '{"prompt": ""}', 400, "prompt"),
        ("/fal/fal-ai/flux1-schnell-nunchaku", '{"prompt": "x", "image_size": "portrait_4_3"}', 400, "image_size"),
        ("/fal/fal-ai/flux1-schnell-nunchaku", '{"prompt": "x", "num_images": 9}', 400, "num_images"),
        ("/fal/fal-ai/flux1-schnell-nunchaku", '{"prompt": "x", "sync_mode": "yes"}', 400, "sync_mode"),
        ("/fal/fal-ai/flux1-schnell-nunchaku", "[1]", 400, None),
        ("/fal/fal-ai/wan/v2.2-5b/text-to-video", '{"prompt": "x", "num_frames": 241}', 400, "num_frames"),
        ("/fal/fal-ai/wan/v2.2-5b/text-to-video", '{"prompt": "x", "duration": "11"}', 400, "duration"),
        ("/fal/fal-ai/no-such-model", '{"prompt": "x"}', 404, "slug"),
        ("/fal/sim-chat-small", '{"prompt": "x"}', 404, "slug"),
    ],
)
def test_bad_submissions_are_4xx_naming_the_field(
    account: Account, path: str, body: str, status: int, param: str | None
) -> None:
    before = account.balance_micros()
    response = curl(account, "POST", path, body)
    assert response.status_code == status, response.text
    if param is not None:
        assert response.json()["error"]["param"] == param, response.text
    assert account.balance_micros() == before


def test_a_slug_may_be_the_model_id_and_scopes_apply(gw: Gateway, account: Account) -> None:
    response = curl(account, "POST", "/fal/sim-image", '{"prompt": "by model id", "sync_mode": true}')
    assert response.status_code == 200 and response.headers["x-model-used"] == "sim-image"
    reader, _ = gw.key(account.org, ["user:read"])
    refused = gw.call("POST", "/fal/sim-image", reader, json={"prompt": "no"})
    assert refused.status_code == 403
    assert gw.call("GET", "/fal/requests/job_x").status_code == 401


def test_a_submission_the_balance_cannot_cover_is_a_402(gw: Gateway) -> None:
    poor = Account(gw, credits="0.001")
    response = curl(poor, "POST", "/fal/fal-ai/wan/v2.2-5b/text-to-video", '{"prompt": "too dear"}')
    assert response.status_code == 402, response.text
    assert response.json()["error"]["code"] == "insufficient_credits"


def test_a_speech_model_speaks_at_its_slug(account: Account) -> None:
    """Casola's Fal endpoints serve audio too: a speech model by its id, the text as Fal's ``text``,
    priced per character as /v1/audio/speech."""
    before = account.balance_micros()
    response = curl(account, "POST", "/fal/sim-tts", '{"text": "Hello from the queue.", "sync_mode": true}')
    assert response.status_code == 200, response.text
    body = json.loads(response.text, parse_float=Decimal)
    assert body["audio"]["content_type"] == "audio/wav"
    wav = media_of(account.gw, body["audio"]["url"], "audio/wav")
    assert media.wav_duration_ms(wav) > 0
    micros = reconciles(
        account, before, response.headers["x-request-id"], body["usage"], response.headers["x-credits-used"]
    )
    assert micros == -(-len("Hello from the queue.") * 15_000_000 // 1_000_000)
    queued = curl(account, "POST", "/fal/sim-tts", '{"prompt": "Later."}')
    assert queued.status_code == 200 and queued.json()["status"] == "IN_QUEUE"
    later = poll_until_done(account, queued.json()["request_id"])["audio"]["url"]
    assert media.wav_duration_ms(media_of(account.gw, later, "audio/wav")) > 0
    missing = curl(account, "POST", "/fal/sim-tts", '{"voice": "alloy"}')
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "text"


def test_a_job_that_fails_polls_as_failed_with_its_error_and_charges_nothing(account: Account) -> None:
    """A prompt and output limit past the model's context fail the job on its worker: FAILED, with
    the error, nothing charged."""
    before = account.balance_micros()
    prompt = "word " * 30_000  # with the output limit, past sim-chat-small's 32,768-token context
    body = {"model": "sim-chat-small", "messages": [{"role": "user", "content": prompt}], "async": True}
    accepted = account.gw.call("POST", "/openai/v1/chat/completions", account.key, json=body)
    assert accepted.status_code == 202, accepted.text
    done = poll_until_done(account, accepted.json()["id"])
    assert done["status"] == "FAILED" and done["error"]["code"], done
    assert "choices" not in done and "response" not in done
    deadline = time.monotonic() + 10
    while account.balance_micros() != before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert account.balance_micros() == before
