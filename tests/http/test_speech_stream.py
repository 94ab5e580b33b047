"""``POST /v1/audio/speech:stream`` is progressive: each piece of audio goes out as an ``audio.chunk``
as the job synthesizes it (the simulated voice makes a character in
``speech_synthesis_ms_per_character``, clause by clause), not after the whole input. The chunks are
the audio the plain endpoint answers, byte for byte; the usage comes in ``audio.done``; a client
that leaves, or deletes the job, stops it, and it is charged for the characters synthesized by then.

Litestar's test client reads a response whole, so these tests drive the app's ASGI interface
themselves, on the test client's event loop, and note when each message arrives."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from gateway.metering import job_id_for
from ledger.pricing import default_price_book, price_micros
from schemas.units import Units
from tests.harness import Gateway
from tests.http.dialects import Account
from workers import media
from workers.backends import speech_ms_per_character, speech_piece_ends, speech_synthesis_ms_per_character

# A sentence repeated up to the stream's most (3,000 characters): 3 s of simulated synthesis.
_sentence = "The ledger holds the credits, and the worker speaks every clause of them. "
_long_text = (_sentence * (3000 // len(_sentence) + 1))[:2999].rstrip() + "."


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw)


@dataclass
class Streamed:
    """What a client of the stream saw: the status, headers, and each event with when it arrived
    (seconds after the request was sent)."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    events: list[tuple[float, Any]] = field(default_factory=list)
    chunk_seen: threading.Event = field(default_factory=threading.Event)  # ``chunks_before_signal`` chunks arrived

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for _, event in self.events if isinstance(event, dict) and event["type"] == kind]

    def audio(self) -> bytes:
        return b"".join(base64.b64decode(chunk["audio_b64"]) for chunk in self.of("audio.chunk"))


async def _stream(
    gw: Gateway,
    key: str,
    body: dict[str, Any],
    seen: Streamed,
    chunks_before_signal: int,
    leave: bool,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """POST the stream through the app's ASGI interface, recording what arrives; after
    ``chunks_before_signal`` chunks, set ``seen.chunk_seen`` and, with ``leave``, disconnect."""
    content = json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/audio/speech:stream",
        "raw_path": b"/v1/audio/speech:stream",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {key}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
            *headers,
        ],
        "client": ("testclient", 50000),
        "server": ("testserver", 80),
        "extensions": {"http.response.template": {}},
    }
    started = time.perf_counter()
    sent_body = False
    gone = asyncio.Event()
    buffer = b""

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": content, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal buffer
        if message["type"] == "http.response.start":
            seen.status = message["status"]
            seen.headers = {name.decode(): value.decode() for name, value in message["headers"]}
            return
        buffer += message.get("body", b"")
        while b"\n\n" in buffer:
            line, buffer = buffer.split(b"\n\n", 1)
            data = line.decode().removeprefix("data: ")
            seen.events.append((time.perf_counter() - started, data if data == "[DONE]" else json.loads(data)))
        if len(seen.of("audio.chunk")) >= chunks_before_signal and not seen.chunk_seen.is_set():
            seen.chunk_seen.set()
            if leave:
                gone.set()
        if not message.get("more_body", False):
            gone.set()

    await gw.app(scope, receive, send)  # type: ignore[arg-type]


def _run(
    gw: Gateway,
    key: str,
    body: dict[str, Any],
    chunks_before_signal: int = 1,
    leave: bool = False,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> Any:
    """Start the stream on the test client's event loop; (what it sees, the future of its end)."""
    seen = Streamed()
    with gw.client.portal() as portal:
        future = portal.start_task_soon(_stream, gw, key, body, seen, chunks_before_signal, leave, headers)
    return seen, future


def _price(model: str, characters: int) -> int:
    price = default_price_book().model(model)
    assert price is not None
    return price_micros(price, Units(characters=characters, calls=1))


def _settled(account: Account, before: int, request_id: str) -> tuple[int, int]:
    """(characters, cost micros) of the request's usage row, once its charge is in the balance too."""
    sql = (
        "SELECT characters, cost_micros FROM usage_events FINAL"
        " WHERE org_id = {org:String} AND request_id = {rid:String}"
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = account.gw.store.query(sql, {"org": account.org, "rid": request_id})
        if rows and account.balance_micros() == before - int(rows[0][1]):
            return int(rows[0][0]), int(rows[0][1])
        time.sleep(0.05)
    raise AssertionError(f"no settled usage row for {request_id}")


def _check_shapes(events: list[tuple[float, Any]], audio_format: str, sample_rate: int) -> None:
    """Every event as the reference's example shows it: chunks, timestamps, done, then ``[DONE]``."""
    assert events[-1][1] == "[DONE]"
    kinds = [event["type"] for _, event in events[:-1]]
    chunks = kinds.count("audio.chunk")
    assert kinds[:chunks] == ["audio.chunk"] * chunks and kinds[-1] == "audio.done"
    assert kinds[chunks:-1] in ([], ["audio.timestamps"])
    for seq, (_, event) in enumerate(events[:-2]):
        assert event["seq"] == seq
        if event["type"] == "audio.chunk":
            assert set(event) == {"type", "seq", "audio_b64", "format", "sample_rate", "elapsed_ms"}
            assert event["format"] == audio_format and event["sample_rate"] == sample_rate
            assert isinstance(event["elapsed_ms"], int) and event["elapsed_ms"] >= 0
            assert base64.b64decode(event["audio_b64"], validate=True)
        else:
            assert set(event) == {"type", "seq", "timestamp_info"}
    done = events[-2][1]
    assert set(done) == {"type", "url", "duration_seconds", "usage"} and done["url"] is None
    assert isinstance(done["usage"]["processed_characters"], int) and "cost_usd" in done["usage"]
    elapsed = [event["elapsed_ms"] for _, event in events if isinstance(event, dict) and "elapsed_ms" in event]
    assert elapsed == sorted(elapsed)


@pytest.mark.heavy  # 3 s of simulated synthesis
def test_the_first_chunk_comes_long_before_the_whole_input_is_synthesized(account: Account) -> None:
    whole_s = len(_long_text) * speech_synthesis_ms_per_character / 1000
    assert whole_s >= 3
    body = {
        "model": "inworld-tts-mini",
        "input": _long_text,
        "voice": "Ashley",
        "output_format": "WAV",
        "sample_rate": "24000",
        "timestamp_type": "WORD",
    }
    before = account.balance_micros()
    seen, future = _run(account.gw, account.key, body)
    future.result(timeout=60)
    assert seen.status == 200 and seen.headers["content-type"].startswith("text/event-stream")
    assert "x-credits-used" not in seen.headers  # the charge is not known at the first byte: see audio.done
    _check_shapes(seen.events, "wav", 24000)
    arrived = [at for at, event in seen.events if isinstance(event, dict) and event["type"] == "audio.chunk"]
    done_at = next(at for at, event in seen.events if isinstance(event, dict) and event["type"] == "audio.done")
    # The first chunk is the first clause's (a few ms of synthesis); the rest take the whole input's
    # time. Before, every chunk came after the whole input was made, all at once.
    assert arrived[0] < whole_s / 2, arrived[0]
    assert done_at - arrived[0] > whole_s / 2, (arrived[0], done_at)
    assert len(arrived) == len(speech_piece_ends(_long_text))
    # One WAV (its header first, sized for the whole audio), the plain endpoint's audio byte for byte.
    audio = seen.audio()
    assert media.wav_duration_ms(audio) == len(_long_text) * speech_ms_per_character
    # 8.6 MB of audio: too large for one result, so the plain endpoint refuses it up front, and the
    # stream's completion leaves it in its pieces (tests/http/test_big_results.py replays it from them).
    plain = account.gw.client.post(
        "/v1/audio/speech",
        headers={"Authorization": f"Bearer {account.key}"},
        json={**{k: v for k, v in body.items() if k != "timestamp_type"}, "response_format": "b64_json"},
    )
    assert plain.status_code == 400 and plain.json()["error"]["code"] == "result_too_large", plain.text
    done = seen.of("audio.done")[0]
    assert done["duration_seconds"] == len(_long_text) * speech_ms_per_character / 1000
    (stamps,) = seen.of("audio.timestamps")
    assert [word["text"] for word in stamps["timestamp_info"]["words"]] == _long_text.split()
    usage = done["usage"]
    assert usage["processed_characters"] == usage["characters"] == len(_long_text)
    micros = int(Decimal(str(usage["cost_usd"])) * 1_000_000)
    assert micros == _price("inworld-tts-mini", len(_long_text))
    assert _settled(account, before, seen.headers["x-request-id"]) == (len(_long_text), micros)


@pytest.mark.parametrize(("audio_format", "sample_rate"), [("PCM", 24000), ("MP3", 16000)])
def test_chunks_concatenate_to_the_plain_answer(account: Account, audio_format: str, sample_rate: int) -> None:
    text = "Streaming audio arrives in real time. It comes clause by clause, and each clause is one chunk."
    body = {"model": "inworld-tts-mini", "input": text, "voice": "Ashley", "output_format": audio_format}
    seen, future = _run(account.gw, account.key, body)
    future.result(timeout=30)
    _check_shapes(seen.events, audio_format.lower(), sample_rate)
    assert len(seen.of("audio.chunk")) > 1
    plain = account.gw.client.post(
        "/v1/audio/speech",
        headers={"Authorization": f"Bearer {account.key}"},
        json={**body, "response_format": "b64_json"},
    )
    assert base64.b64decode(plain.json()["data"][0]["b64_json"]) == seen.audio()
    if audio_format == "MP3":
        assert media.mp3_duration_ms(seen.audio()) == seen.of("audio.done")[0]["duration_seconds"] * 1000


def _cancelled_charge(account: Account, before: int, request_id: str, received: bytes) -> int:
    """The stopped stream's charge: the characters synthesized by then (more than the chunks the
    client received, fewer than the input), at the catalog's price, in the balance and the usage row."""
    job = account.gw.call("GET", f"/v1/jobs/{job_id_for(request_id)}", account.key)
    deadline = time.monotonic() + 30
    while job.json()["state"] != "cancelled" and time.monotonic() < deadline:
        time.sleep(0.05)
        job = account.gw.call("GET", f"/v1/jobs/{job_id_for(request_id)}", account.key)
    assert job.json()["state"] == "cancelled", job.json()
    characters, micros = _settled(account, before, request_id)
    ends = speech_piece_ends(_long_text)
    assert characters in ends and 0 < characters < len(_long_text)
    received_characters = len(received) // 2 * 1000 // 24000 // speech_ms_per_character  # PCM at 24 kHz
    assert characters >= received_characters
    assert micros == _price("inworld-tts-mini", characters) < _price("inworld-tts-mini", len(_long_text))
    assert job.json()["cost_micros"] == micros
    return micros


def test_a_client_that_leaves_is_charged_for_the_characters_synthesized(account: Account) -> None:
    body = {"model": "inworld-tts-mini", "input": _long_text, "voice": "Ashley", "output_format": "PCM"}
    before = account.balance_micros()
    seen, future = _run(account.gw, account.key, body, chunks_before_signal=2, leave=True)
    future.result(timeout=30)
    assert not seen.of("audio.done") and len(seen.of("audio.chunk")) >= 2
    _cancelled_charge(account, before, seen.headers["x-request-id"], seen.audio())


def test_deleting_the_job_ends_the_stream_with_its_charge(account: Account) -> None:
    body = {"model": "inworld-tts-mini", "input": _long_text, "voice": "Ashley", "output_format": "PCM"}
    before = account.balance_micros()
    seen, future = _run(account.gw, account.key, body, chunks_before_signal=2)
    assert seen.chunk_seen.wait(30)
    deleted = account.gw.call("DELETE", f"/v1/jobs/{job_id_for(seen.headers['x-request-id'])}", account.key)
    assert deleted.status_code == 200, deleted.text
    future.result(timeout=30)
    _check_shapes(seen.events, "pcm", 24000)
    micros = _cancelled_charge(account, before, seen.headers["x-request-id"], seen.audio())
    usage = seen.of("audio.done")[0]["usage"]
    assert Decimal(str(usage["cost_usd"])) * 1_000_000 == micros
    assert usage["processed_characters"] * speech_ms_per_character * 48 >= len(seen.audio())
    assert seen.of("audio.done")[0]["duration_seconds"] * 1000 == len(seen.audio()) // 48
