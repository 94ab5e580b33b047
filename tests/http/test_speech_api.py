"""Speech in the formats the reference documents name: Casola's binary MP3 (``response_format: mp3``),
EmpirioLabs' JSON ``AudioResponse`` (``output_format``, ``b64_json``) and its streamed speech
(``/v1/audio/speech:stream``: ``audio.chunk``, ``audio.timestamps``, ``audio.done`` with the usage);
the OpenAI SDK's ``audio.speech``. Each is priced per character and reconciles everywhere it shows."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from typing import Any

import pytest

from ledger.pricing import default_price_book, price_micros
from schemas.units import Units
from tests.harness import Gateway
from tests.http.dialects import Account, header_reconciles, media_of, reconciles
from workers import media


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw)


def _price(model: str, text: str) -> int:
    price = default_price_book().model(model)
    assert price is not None
    return price_micros(price, Units(characters=len(text), calls=1))


def _speak(account: Account, body: str, path: str = "/v1/audio/speech") -> Any:
    headers = {"Authorization": f"Bearer {account.key}", "Content-Type": "application/json"}
    return account.gw.client.post(path, headers=headers, content=body)


def test_casola_mp3_is_the_binary_answer(account: Account) -> None:
    """Casola EX-3, verbatim body: ``--output speech.mp3``."""
    before = account.balance_micros()
    response = _speak(
        account,
        '{ "model": "Qwen3-TTS", "input": "Hello, welcome to Casola!", "voice": "Vivian", "response_format": "mp3" }',
        "/openai/v1/audio/speech",
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/mpeg"
    assert media.mp3_duration_ms(response.content) >= len("Hello, welcome to Casola!") * 60
    assert header_reconciles(account, before, response) == _price("Qwen3-TTS", "Hello, welcome to Casola!")
    again = _speak(
        account,
        '{ "model": "Qwen3-TTS", "input": "Hello, welcome to Casola!", "voice": "Vivian", "response_format": "mp3" }',
    )
    assert again.content == response.content  # deterministic


@pytest.mark.parametrize(
    ("response_format", "media_type"), [("mp3", "audio/mpeg"), ("wav", "audio/wav"), ("pcm", "audio/pcm")]
)
def test_the_sdk_speaks_each_format(account: Account, response_format: Any, media_type: str) -> None:
    client = account.openai()
    raw = client.audio.speech.with_raw_response.create(
        model="sim-tts", voice="alloy", input="The ledger settles.", response_format=response_format
    )
    assert raw.headers["content-type"] == media_type
    audio = raw.content
    if response_format == "mp3":
        assert media.mp3_duration_ms(audio) >= 19 * 60
    elif response_format == "wav":
        assert media.wav_duration_ms(audio) == 19 * 60
    else:
        assert len(audio) == 19 * 60 * 48  # 16-bit mono at 24 kHz: 48 bytes per ms
    assert Decimal(raw.headers["x-credits-used"]) * 1_000_000 == _price("sim-tts", "The ledger settles.")


def test_empiriolabs_single_voice_is_an_audio_response(account: Account) -> None:
    """EmpirioLabs EX-50: ``output_format: WAV`` answers the JSON AudioResponse."""
    before = account.balance_micros()
    response = _speak(
        account,
        """{
    "model": "gemini-2-5-flash-tts",
    "input": "Hello from EmpirioLabs.",
    "voice": "Charon",
    "output_format": "WAV"
  }""",
    )
    assert response.status_code == 200, response.text
    body = response.json()
    item = body["data"][0]
    assert item["format"] == "wav"
    audio = media_of(account.gw, item["url"], "audio/wav")
    assert media.wav_duration_ms(audio) == item["duration"] * 1000 == len("Hello from EmpirioLabs.") * 60
    micros = reconciles(
        account, before, response.headers["x-request-id"], body["usage"], response.headers["x-credits-used"]
    )
    assert micros == _price("gemini-2-5-flash-tts", "Hello from EmpirioLabs.")


def test_empiriolabs_podcast_mp3_and_inline_bytes(account: Account) -> None:
    """EmpirioLabs EX-52 (two speakers, mp3), and ``response_format: b64_json`` for inline bytes."""
    podcast = "[S1] Welcome to the show. [S2] Glad to be here. [S1] Lets dive in."
    body = {"model": "soulx-podcast", "input": podcast, "voice_s1": "arthur", "voice_s2": "lj", "output_format": "mp3"}
    response = _speak(account, json.dumps(body))
    assert response.status_code == 200, response.text
    item = response.json()["data"][0]
    assert item["format"] == "mp3" and media_of(account.gw, item["url"], "audio/mpeg")
    assert response.json()["usage"]["characters"] == len(podcast)
    inline = _speak(account, json.dumps({**body, "response_format": "b64_json"})).json()["data"][0]
    assert "url" not in inline
    assert media.mp3_duration_ms(base64.b64decode(inline["b64_json"])) == inline["duration"] * 1000


def _events(response: Any) -> list[Any]:
    assert response.headers["content-type"].startswith("text/event-stream")
    lines = [line[len("data: ") :] for line in response.text.split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_empiriolabs_streaming_tts_with_word_timestamps(account: Account) -> None:
    """EmpirioLabs EX-99: PCM at 24 kHz with WORD timestamps; its audio.done shows 47 characters and
    0.0006 credits, as the document's example does."""
    before = account.balance_micros()
    text = "Hello — this audio streams as it's synthesized."
    body = {
        "model": "tts-1-5-mini",
        "input": text,
        "voice": "Sarah",
        "output_format": "PCM",
        "sample_rate": "24000",
        "timestamp_type": "WORD",
    }
    response = _speak(account, json.dumps(body), "/v1/audio/speech:stream")
    assert response.status_code == 200, response.text
    events = _events(response)
    chunks = [event for event in events if event["type"] == "audio.chunk"]
    assert [chunk["seq"] for chunk in chunks] == list(range(len(chunks))) and len(chunks) > 1
    assert all(chunk["format"] == "pcm" and chunk["sample_rate"] == 24000 for chunk in chunks)
    audio = b"".join(base64.b64decode(chunk["audio_b64"]) for chunk in chunks)
    assert len(audio) == len(text) * 60 * 48
    (stamps,) = [event for event in events if event["type"] == "audio.timestamps"]
    assert [word["text"] for word in stamps["timestamp_info"]["words"]] == text.split()
    done = events[-1]
    assert done["type"] == "audio.done" and done["duration_seconds"] == len(text) * 60 / 1000
    usage = done["usage"]
    assert usage["processed_characters"] == 47 and Decimal(str(usage["cost_usd"])) == Decimal("0.0006")
    # The first chunk goes out before the charge is known: it is in audio.done (as chat streams' usage).
    assert "x-credits-used" not in response.headers
    reconciles(account, before, response.headers["x-request-id"], usage, None)


def test_empiriolabs_streaming_mp3(account: Account) -> None:
    """EmpirioLabs EX-51, verbatim body."""
    response = _speak(
        account,
        """{
    "model": "inworld-tts-mini",
    "input": "Streaming audio arrives in real time.",
    "voice": "Ashley",
    "output_format": "mp3"
  }""",
        "/v1/audio/speech:stream",
    )
    assert response.status_code == 200, response.text
    events = _events(response)
    audio = b"".join(base64.b64decode(e["audio_b64"]) for e in events if e["type"] == "audio.chunk")
    assert media.mp3_duration_ms(audio) * 1 == events[-1]["duration_seconds"] * 1000
    assert not [e for e in events if e["type"] == "audio.timestamps"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"response_format": "opus"}, "response_format"),
        ({"output_format": "OGG_OPUS"}, "output_format"),
        ({"sample_rate": "1234"}, "sample_rate"),
        ({"input": ""}, "input"),
    ],
)
def test_bad_speech_is_a_400(account: Account, body: dict[str, Any], param: str) -> None:
    request = {"model": "sim-tts", "input": "hello", **body}
    for path in ("/v1/audio/speech", "/v1/audio/speech:stream"):
        response = _speak(account, json.dumps(request), path)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param


def test_the_stream_takes_at_most_3000_characters(account: Account) -> None:
    response = _speak(account, json.dumps({"model": "tts-1-5-mini", "input": "a" * 3001}), "/v1/audio/speech:stream")
    assert response.status_code == 400 and response.json()["error"]["param"] == "input"
    # The plain endpoint takes it (as a job: 3,001 characters take the simulated voice 3 s to make).
    plain = _speak(account, json.dumps({"model": "tts-1-5-mini", "input": "a" * 3001, "async": True}))
    assert plain.status_code == 202, plain.text


def test_a_transcription_model_does_not_speak(account: Account) -> None:
    response = _speak(account, json.dumps({"model": "openai-whisper-1", "input": "hello"}), "/v1/audio/speech:stream")
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
