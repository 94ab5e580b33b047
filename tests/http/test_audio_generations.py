"""EmpirioLabs' audio generation (``/v1/audio/generations``: music from a prompt, a podcast from a
speech model's script; music on ``/v1/audio/speech`` too) and the provider page's
``/v1/music/generations``: an ``AudioResponse``, music priced per second of its duration, a job and a
202 past a minute (or with ``"async": true``), whose result is the same ``AudioResponse``."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from ledger.pricing import default_price_book, price_micros
from schemas.units import Units
from tests.harness import Gateway
from tests.http.dialects import Account, media_of, reconciles
from workers import media

lofi = {
    "model": "stable-audio-2-5",
    "prompt": "Lo-fi hip hop, mellow piano, gentle vinyl crackle, 90 BPM",
    "duration": 60,
    "steps": 8,
    "cfg_scale": 1,
}


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw)


def _post(account: Account, path: str, body: dict[str, Any]) -> Any:
    headers = {"Authorization": f"Bearer {account.key}", "Content-Type": "application/json"}
    return account.gw.client.post(path, headers=headers, content=json.dumps(body))


def _per_second(seconds: int) -> int:
    price = default_price_book().model("stable-audio-2-5")
    assert price is not None
    return price_micros(price, Units(audio_seconds=seconds, calls=1))


@pytest.mark.parametrize("path", ["/v1/audio/generations", "/v1/audio/speech", "/v1/music/generations"])
def test_empiriolabs_music_example(account: Account, path: str) -> None:
    """EmpirioLabs EX-53/EX-98/EX-101: sixty seconds of music, answered at once."""
    before = account.balance_micros()
    response = _post(account, path, lofi)
    assert response.status_code == 200, response.text
    body = response.json()
    item = body["data"][0]
    assert item["format"] == "mp3"
    audio = media_of(account.gw, item["url"], "audio/mpeg")  # a signed URL, as EmpirioLabs' AudioResponse
    assert media.mp3_duration_ms(audio) == item["duration"] * 1000 >= 60_000
    assert body["usage"]["seconds"] == 60
    micros = reconciles(
        account, before, response.headers["x-request-id"], body["usage"], response.headers["x-credits-used"]
    )
    assert micros == _per_second(60)


def test_empiriolabs_podcast_on_audio_generations(account: Account) -> None:
    """EmpirioLabs EX-102: a speech model's script, priced per character, as an AudioResponse."""
    script = "[S1] Welcome to the show. [S2] Glad to be here."
    body = {"model": "soulx-podcast", "input": script, "voice_s1": "arthur", "voice_s2": "lj", "output_format": "mp3"}
    response = _post(account, "/v1/audio/generations", body)
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["format"] == "mp3" and response.json()["usage"]["characters"] == len(script)


def test_longer_than_a_minute_is_a_job(account: Account) -> None:
    before = account.balance_micros()
    response = _post(account, "/v1/audio/generations", {**lofi, "duration": 90, "output_format": "wav"})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["poll_url"] == f"/v1/jobs/{accepted['job_id']}"
    deadline = time.monotonic() + 30
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = account.gw.call("GET", accepted["poll_url"], account.key).json()
        if job["status"] in ("completed", "failed", "dead_letter"):
            break
        time.sleep(0.05)
    assert job["status"] == "completed", job
    result = job["result"]
    item = result["data"][0]
    assert item["format"] == "wav" and media.wav_duration_ms(media_of(account.gw, item["url"], "audio/wav")) == 90_000
    assert job["cost_micros"] == _per_second(90) == result["usage"]["cost_micros"]
    deadline = time.monotonic() + 10
    while account.balance_micros() != before - _per_second(90) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert account.balance_micros() == before - _per_second(90)


def test_inline_bytes(account: Account) -> None:
    response = _post(account, "/v1/music/generations", {**lofi, "duration": 2.5, "response_format": "b64_json"})
    assert response.status_code == 200, response.text
    item = response.json()["data"][0]
    assert "url" not in item and media.mp3_duration_ms(base64.b64decode(item["b64_json"])) >= 2_500
    assert response.json()["usage"]["seconds"] == 3


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"duration": 0}, 400, "duration"),
        ({"duration": 121}, 400, "duration"),
        ({"duration": "60"}, 400, "duration"),
        ({"output_format": "flac"}, 400, "output_format"),
        ({"prompt": ""}, 400, "prompt"),
        ({"model": "sim-tts"}, 404, "model"),
        ({"model": "openai-whisper-1"}, 404, "model"),
    ],
)
def test_bad_music_is_a_4xx(account: Account, body: dict[str, Any], status: int, param: str) -> None:
    response = _post(account, "/v1/music/generations", {**lofi, **body})
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
