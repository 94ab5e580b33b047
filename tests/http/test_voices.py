"""GET /v1/voices: the voices of the price book's speech models in EmpirioLabs' shape, one model's
with ?model=, at every address of the surface, for user:read, at no charge."""

from __future__ import annotations

import pytest

from tests.harness import Gateway
from tests.http.dialects import Account
from workers.voices import openai_voices, voices_of


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw)


def test_voices_of_the_speech_models_in_empiriolabs_shape(account: Account) -> None:
    before = account.balance_micros()
    for path in ("/v1/voices", "/openai/v1/voices", "/voices"):
        response = account.gw.client.get(path, headers={"x-api-key": account.key})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["object"] == "list"
        alloy = next(voice for voice in body["data"] if voice["voice_id"] == "alloy")
        assert alloy == {
            "voice_id": "alloy",
            "name": "alloy",
            "languages": ["en"],
            "gender": "neutral",
            "preview_url": "",
            "models": ["sim-tts"],
        }
    assert "x-credits-used" not in response.headers
    assert account.balance_micros() == before


def test_one_models_voices_and_a_model_that_does_not_speak(account: Account) -> None:
    response = account.gw.call("GET", "/v1/voices?model=sim-tts", account.key)
    assert [voice["voice_id"] for voice in response.json()["data"]] == [v.voice_id for v in openai_voices]
    for model in ("sim-chat-small", "sim-whisper", "nope"):
        response = account.gw.call("GET", f"/v1/voices?model={model}", account.key)
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "model_not_found"


def test_listing_voices_needs_user_read(gw: Gateway, account: Account) -> None:
    writer, _ = gw.key(account.org, ["user:write"])
    assert gw.call("GET", "/v1/voices", writer).status_code == 403
    assert gw.call("GET", "/v1/voices").status_code == 401


def test_the_documents_speech_models_have_their_own_voices() -> None:
    assert "Vivian" in {voice.voice_id for voice in voices_of("Qwen3-TTS")}  # Casola's speech example
    assert "Charon" in {voice.voice_id for voice in voices_of("gemini-2-5-flash-tts")}  # EmpirioLabs'
    assert {"arthur", "lj"} <= {voice.voice_id for voice in voices_of("soulx-podcast")}
    assert voices_of("any-other-tts") == openai_voices
