"""The reference documents' audio examples against `tollgate dev` as a user runs it (one process, the
default catalog), with only the host and key changed: Casola's MP3 speech and MP3 transcription on
``/openai/v1``, EmpirioLabs' transcription from a ``file_url`` served on this machine, its streamed
speech, and its music. Each charge is the balance drop."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.support import Dev, served_media
from workers import media

recording = media.mp3_audio(3_000, b"recording")


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    data_dir = tmp_path_factory.mktemp("dev-audio")
    server = Dev(data_dir, data_dir)
    yield server
    server.role.stop()


@pytest.fixture(scope="module")
def account(dev: Dev) -> tuple[str, httpx.Client]:
    org, key = dev.organization()
    return org, httpx.Client(base_url=dev.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


class _Recording(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(recording)))
        self.end_headers()
        self.wfile.write(recording)

    def log_message(self, *args: Any) -> None:
        pass


def _balance(dev: Dev, org: str) -> int:
    return int(dev.admin.client.get(f"/v1/organizations/{org}/balance").json()["amount_micros"])


def _charged(dev: Dev, org: str, before: int, response: httpx.Response, cost_usd: Any = None) -> None:
    """x-credits-used (or, for a stream, its final event's ``cost_usd``) == the balance drop."""
    micros = int(Decimal(str(cost_usd) if cost_usd is not None else response.headers["x-credits-used"]) * 1_000_000)
    assert micros > 0
    deadline = time.monotonic() + 20
    while _balance(dev, org) != before - micros and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _balance(dev, org) == before - micros


def test_casola_speech_and_transcription(dev: Dev, account: tuple[str, httpx.Client]) -> None:
    org, client = account
    before = _balance(dev, org)
    spoken = client.post(
        "/openai/v1/audio/speech",
        json={"model": "Qwen3-TTS", "input": "Hello, welcome to Casola!", "voice": "Vivian", "response_format": "mp3"},
    )
    assert spoken.status_code == 200, spoken.text
    assert media.mp3_duration_ms(spoken.content) > 0
    _charged(dev, org, before, spoken)
    before = _balance(dev, org)
    heard = client.post(
        "/openai/v1/audio/transcriptions",
        data={"model": "whisper-large-v3-turbo", "response_format": "verbose_json"},
        files={"file": ("recording.mp3", recording, "audio/mpeg")},
    )
    assert heard.status_code == 200, heard.text
    assert heard.json()["segments"] and heard.json()["usage"]["seconds"] == 4  # 3.096 s of frames
    _charged(dev, org, before, heard)


def test_empiriolabs_file_url_stream_and_music(dev: Dev, account: tuple[str, httpx.Client]) -> None:
    org, client = account
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recording)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        before = _balance(dev, org)
        body = {
            "model": "deepgram-nova-3",
            "file_url": f"http://127.0.0.1:{server.server_address[1]}/recording.mp3",
            "diarize": True,
            "smart_format": True,
        }
        heard = client.post("/v1/audio/transcriptions", json=body)
        assert heard.status_code == 200, heard.text
        _charged(dev, org, before, heard)
    finally:
        server.shutdown()
        server.server_close()
    before = _balance(dev, org)
    streamed = client.post(
        "/v1/audio/speech:stream",
        json={
            "model": "inworld-tts-mini",
            "input": "Streaming audio arrives in real time.",
            "voice": "Ashley",
            "output_format": "mp3",
        },
    )
    assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
    # Its first chunk goes out before its charge is known: the charge is in audio.done's usage.
    events = [json.loads(line[6:]) for line in streamed.text.split("\n\n") if line.startswith("data: {")]
    assert events[-1]["type"] == "audio.done" and "x-credits-used" not in streamed.headers
    _charged(dev, org, before, streamed, events[-1]["usage"]["cost_usd"])
    before = _balance(dev, org)
    music = client.post(
        "/v1/audio/generations",
        json={
            "model": "stable-audio-2-5",
            "prompt": "Lo-fi hip hop, mellow piano, gentle vinyl crackle, 90 BPM",
            "duration": 60,
            "steps": 8,
            "cfg_scale": 1,
        },
    )
    assert music.status_code == 200, music.text
    url = music.json()["data"][0]["url"]
    assert media.mp3_duration_ms(served_media(url, "audio/mpeg")) >= 60_000
    _charged(dev, org, before, music)
