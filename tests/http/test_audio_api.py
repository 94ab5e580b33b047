"""Transcriptions and translations as the reference documents use them: MP3 and WAV uploads (Casola's
and EmpirioLabs' examples upload .mp3), ``verbose_json`` with segments and words, ``text``, ``srt`` and
``vtt``, the file as base64 in a JSON body or fetched from ``file_url`` (served here from 127.0.0.1),
and OpenAI's translations; through curl-shaped calls and the official SDK. Each charge is the
audio's seconds (measured from its frames) at the model's rate, and reconciles everywhere it shows;
bad input is a 4xx in the OpenAI envelope."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from gateway import uploads
from ledger.pricing import billed_seconds, default_price_book, price_micros
from schemas.units import Units
from tests.harness import Gateway
from tests.http.dialects import Account, header_reconciles, reconciles
from workers import media

meeting_mp3 = media.mp3_audio(4_200, b"meeting")
recording_wav = media.wav_audio(2_500, b"recording")


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw)


class _Files(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self) -> None:
        if self.path == "/slow.wav":
            time.sleep(1.5)
        content = self.files.get(self.path)
        if content is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, *args: Any) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (the timeout and size tests) is expected


@pytest.fixture(scope="module")
def files_url(gw: Gateway) -> Iterator[str]:
    """The test's files, served from 127.0.0.1, which this gateway may fetch from for the module
    (TOLLGATE_FILE_URL_PRIVATE_ALLOWED; off, a private address is refused: test_private_addresses_...)."""
    _Files.files = {
        "/recording.wav": recording_wav,
        "/meeting.mp3": meeting_mp3,
        "/slow.wav": recording_wav,
        "/huge.wav": b"RIFF" + bytes(uploads.upload_bytes_max + 10),
    }
    server = _QuietServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings = gw.core.settings
    gw.core.settings = replace(settings, file_url_private_allowed=True)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    gw.core.settings = settings
    server.shutdown()
    server.server_close()


def _expected_micros(model: str, audio: bytes) -> int:
    price = default_price_book().model(model)
    assert price is not None
    return price_micros(price, Units(audio_seconds=billed_seconds(media.audio_duration_ms(audio)), calls=1))


# --- the documents' examples, host and key changed ---


def test_casola_mp3_upload_verbose_json(account: Account) -> None:
    """Casola EX-4: ``-F model=whisper-large-v3-turbo -F file=@recording.mp3 -F response_format=verbose_json``."""
    before = account.balance_micros()
    response = account.gw.call(
        "POST",
        "/openai/v1/audio/transcriptions",
        account.key,
        data={"model": "whisper-large-v3-turbo", "response_format": "verbose_json"},
        files={"file": ("recording.mp3", meeting_mp3, "audio/mpeg")},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "transcribe" and body["language"] == "en" and body["text"]
    duration_ms = media.mp3_duration_ms(meeting_mp3)
    assert body["duration"] == duration_ms / 1000
    segments = body["segments"]
    assert segments and segments[0]["start"] == 0.0 and segments[-1]["end"] == body["duration"]
    assert all({"start", "end", "text"} <= set(segment) for segment in segments)
    assert "words" not in body
    assert body["usage"]["type"] == "duration" and body["usage"]["seconds"] == billed_seconds(duration_ms)
    micros = reconciles(
        account, before, response.headers["x-request-id"], body["usage"], response.headers["x-credits-used"]
    )
    assert micros == _expected_micros("whisper-large-v3-turbo", meeting_mp3)


def test_empiriolabs_multipart_with_word_and_segment_timestamps(account: Account) -> None:
    """EmpirioLabs EX-54: ``timestamp_granularities=word,segment`` as one comma-joined field."""
    response = account.gw.call(
        "POST",
        "/v1/audio/transcriptions",
        account.key,
        data={
            "model": "openai-whisper-1",
            "response_format": "verbose_json",
            "timestamp_granularities": "word,segment",
        },
        files={"file": ("meeting.mp3", meeting_mp3, "audio/mpeg")},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["segments"] and body["words"]
    assert " ".join(word["word"] for word in body["words"]).capitalize() + "." == body["text"]
    assert all(word["start"] <= word["end"] for word in body["words"])


def test_empiriolabs_file_url(account: Account, files_url: str) -> None:
    """EmpirioLabs EX-55: a JSON body with ``file_url`` (here served from 127.0.0.1), diarize, smart_format."""
    before = account.balance_micros()
    response = account.gw.call(
        "POST",
        "/v1/audio/transcriptions",
        account.key,
        json={
            "model": "deepgram-nova-3",
            "file_url": f"{files_url}/recording.wav",
            "diarize": True,
            "smart_format": True,
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"text", "usage"} and body["usage"]["seconds"] == 3
    micros = reconciles(
        account, before, response.headers["x-request-id"], body["usage"], response.headers["x-credits-used"]
    )
    assert micros == _expected_micros("deepgram-nova-3", recording_wav)


@pytest.mark.parametrize("data_url", [False, True])
def test_base64_json_input(account: Account, data_url: bool) -> None:
    encoded = base64.b64encode(meeting_mp3).decode()
    file = f"data:audio/mpeg;base64,{encoded}" if data_url else encoded
    response = account.gw.call(
        "POST",
        "/v1/audio/transcriptions",
        account.key,
        json={"model": "openai-whisper-1", "file": file, "response_format": "verbose_json"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["duration"] == media.mp3_duration_ms(meeting_mp3) / 1000


def test_the_sdk_transcribes_an_mp3_with_words(account: Account) -> None:
    client = account.openai()
    before = account.balance_micros()
    raw = client.audio.transcriptions.with_raw_response.create(
        model="openai-whisper-1",
        file=("meeting.mp3", meeting_mp3, "audio/mpeg"),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    transcript = raw.parse()
    assert transcript.text and transcript.segments and transcript.words
    assert transcript.duration == media.mp3_duration_ms(meeting_mp3) / 1000
    header_reconciles(account, before, raw)


@pytest.mark.parametrize("response_format", ["text", "srt", "vtt"])
def test_text_formats(account: Account, response_format: str) -> None:
    before = account.balance_micros()
    response = account.gw.call(
        "POST",
        "/v1/audio/transcriptions",
        account.key,
        data={"model": "sim-whisper", "response_format": response_format},
        files={"file": ("a.wav", recording_wav, "audio/wav")},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    if response_format == "srt":
        assert text.startswith("1\n00:00:00,000 --> 00:00:02,500\n")
    elif response_format == "vtt":
        assert text.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\n")
    else:
        assert text.endswith(".\n") and "\n" not in text[:-1]
    assert header_reconciles(account, before, response) == _expected_micros("sim-whisper", recording_wav)


def test_the_sdk_translates(account: Account) -> None:
    """OpenAI's ``client.audio.translations.create``: English text, priced per second as a transcription."""
    client = account.openai("/openai/v1")
    before = account.balance_micros()
    raw = client.audio.translations.with_raw_response.create(
        model="whisper-large-v3-turbo", file=("speech.mp3", meeting_mp3, "audio/mpeg")
    )
    translation = raw.parse()
    assert translation.text
    assert header_reconciles(account, before, raw) == _expected_micros("whisper-large-v3-turbo", meeting_mp3)
    verbose = client.audio.translations.create(
        model="whisper-large-v3-turbo", file=("speech.wav", recording_wav, "audio/wav"), response_format="verbose_json"
    )
    assert verbose.language == "en" and verbose.segments
    endpoint = account.usage_row(raw.headers["x-request-id"])[0]
    assert endpoint == "/v1/audio/translations"


def test_empiriolabs_translate_flag_makes_a_translation(account: Account) -> None:
    response = account.gw.call(
        "POST",
        "/v1/audio/transcriptions",
        account.key,
        data={"model": "openai-whisper-1", "response_format": "verbose_json", "translate": "true", "language": "de"},
        files={"file": ("a.wav", recording_wav, "audio/wav")},
    )
    assert response.status_code == 200, response.text
    assert response.json()["task"] == "translate" and response.json()["language"] == "en"


# --- bad input: a 4xx in the OpenAI envelope, nothing charged ---


def _error(response: Any, status: int, code: str, param: str | None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert (error["code"], error["param"]) == (code, param), error


def _upload(account: Account, audio: bytes, path: str = "/v1/audio/transcriptions", **fields: str) -> Any:
    data = {"model": "openai-whisper-1", **fields}
    return account.gw.call("POST", path, account.key, data=data, files={"file": ("a.mp3", audio, "audio/mpeg")})


@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/audio/translations"])
@pytest.mark.parametrize(
    "audio",
    [
        b"\xff\xfb" + bytes(400),  # a frame header with a free-format bitrate: no length to read
        meeting_mp3[:200] + b"garbage" + meeting_mp3[200:],
        b"ID3\x04\x00\x00\x00\x00\x00\x05abcde",  # a tag and nothing after it
        b"OggS" + bytes(100),
    ],
    ids=["free-format", "garbage-between-frames", "tag-only", "not-audio"],
)
def test_corrupt_audio_is_a_400(account: Account, audio: bytes, path: str) -> None:
    before = account.balance_micros()
    _error(_upload(account, audio, path), 400, "invalid_file", "file")
    assert account.balance_micros() == before


def test_an_oversized_upload_is_a_413(account: Account) -> None:
    _error(_upload(account, meeting_mp3 + bytes(uploads.upload_bytes_max)), 413, "file_too_large", "file")


@pytest.mark.parametrize("file", ["not base64!!", "data:audio/mpeg,rawbytes", "", 12])
def test_bad_base64_is_a_400(account: Account, file: Any) -> None:
    response = account.gw.call(
        "POST", "/v1/audio/transcriptions", account.key, json={"model": "openai-whisper-1", "file": file}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "file"


def test_file_url_failures_are_clear_4xx(account: Account, files_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def ask(url: Any) -> Any:
        return account.gw.call(
            "POST", "/v1/audio/transcriptions", account.key, json={"model": "deepgram-nova-3", "file_url": url}
        )

    before = account.balance_micros()
    _error(ask(f"{files_url}/missing.wav"), 400, "file_url_unreachable", "file_url")
    _error(ask("http://127.0.0.1:1/recording.wav"), 400, "file_url_unreachable", "file_url")
    _error(ask(f"{files_url}/huge.wav"), 413, "file_too_large", "file_url")
    _error(ask("file:///etc/passwd"), 400, "invalid_file_url", "file_url")
    _error(ask(42), 400, "invalid_type", "file_url")
    monkeypatch.setattr(uploads, "file_url_timeout_s", 0.3)
    _error(ask(f"{files_url}/slow.wav"), 400, "file_url_unreachable", "file_url")
    assert account.balance_micros() == before


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": "yaml"}, "response_format"),
        ({"timestamp_granularities": "word,letter"}, "timestamp_granularities"),
        ({"translate": "maybe"}, "translate"),
    ],
)
def test_bad_fields_are_a_400(account: Account, fields: dict[str, str], param: str) -> None:
    _error(
        _upload(account, meeting_mp3, **fields),
        400,
        "invalid_parameter" if param != "translate" else "invalid_type",
        param,
    )


def test_a_speech_model_does_not_transcribe(account: Account) -> None:
    response = account.gw.call(
        "POST",
        "/v1/audio/translations",
        account.key,
        data={"model": "Qwen3-TTS"},
        files={"file": ("a.mp3", meeting_mp3, "audio/mpeg")},
    )
    _error(response, 404, "model_not_found", "model")


def test_private_addresses_are_refused_unless_allowed(account: Account) -> None:
    """A tenant must not make the gateway read the platform's own network: by address, or by a name
    that resolves to one (checked on the addresses the connection uses)."""
    settings = account.gw.core.settings
    account.gw.core.settings = replace(settings, file_url_private_allowed=False)  # the default

    def ask(url: str) -> Any:
        body = {"model": "deepgram-nova-3", "file_url": url}
        return account.gw.call("POST", "/v1/audio/transcriptions", account.key, json=body)

    _Files.files = {"/recording.wav": recording_wav}
    server = _QuietServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for url in (
            "http://127.0.0.1:9/a.wav",
            "http://10.0.0.1/a.wav",
            "http://[::1]/a.wav",
            "http://169.254.169.254/",
        ):
            _error(ask(url), 400, "file_url_forbidden", "file_url")
        by_name = f"http://localhost:{server.server_address[1]}/recording.wav"
        _error(ask(by_name), 400, "file_url_unreachable", "file_url")
        account.gw.core.settings = replace(settings, file_url_private_allowed=True)
        assert ask(by_name).status_code == 200  # the same server, allowed: the address was what refused
    finally:
        account.gw.core.settings = settings
        server.shutdown()
        server.server_close()
