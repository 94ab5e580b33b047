"""Streamed speech through the upstream backend: an upstream that streams as OpenAI's speech does
(``stream_format: "sse"``: ``speech.audio.delta`` events, then ``speech.audio.done``) has each delta
relayed as a piece as it arrives; one that answers whole (bench/fake_upstream.py) is one piece."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from schemas.units import Units
from tests.support import FakeUpstream
from workers import media
from workers.backends import AUDIO, JobContext
from workers.upstream import Upstream, UpstreamBackend, Upstreams

_pieces = [media.wav_samples(media.wav_audio(200, bytes([index]) * 32, 24000)) for index in range(6)]
_delta_s = 0.05  # between two deltas of the streaming upstream


class _StreamingSpeech(BaseHTTPRequestHandler):
    """OpenAI's speech: streamed with ``stream_format: "sse"`` (a delta every ``_delta_s``), else whole;
    the bodies it was sent, kept."""

    bodies: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _StreamingSpeech.bodies.append(body)
        self.send_response(200)
        if body.get("stream_format") != "sse":  # answered whole, as OpenAI's speech does by default
            whole = b"".join(_pieces)
            self.send_header("Content-Type", "audio/pcm")
            self.send_header("Content-Length", str(len(whole)))
            self.end_headers()
            self.wfile.write(whole)
            return
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for piece in _pieces:
            event = {"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode()}
            self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            self.wfile.flush()
            time.sleep(_delta_s)
        done = {"type": "speech.audio.done", "usage": {"input_tokens": 5, "output_tokens": 60, "total_tokens": 65}}
        self.wfile.write(b"data: " + json.dumps(done).encode() + b"\n\n")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def streaming() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StreamingSpeech)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _job(stream: bool) -> tuple[JobContext, list[tuple[float, Units, str, str]]]:
    payload = {"input": "say this slowly", "voice": "alloy", "response_format": "pcm"}
    context = JobContext("job", "m", "/v1/audio/speech", {**payload, **({"stream_format": "sse"} if stream else {})})
    points: list[tuple[float, Units, str, str]] = []
    context.on_progress = lambda milli, units, delta, part: points.append((time.perf_counter(), units, delta, part))
    return context, points


def _run(url: str, context: JobContext) -> Any:
    async def once() -> Any:
        backend = UpstreamBackend(Upstreams({}, Upstream(url=url)))
        try:
            return await backend.run(context)
        finally:
            await backend.close()

    return asyncio.run(once())


def test_each_delta_is_relayed_as_it_arrives(streaming: str) -> None:
    context, points = _job(stream=True)
    output = _run(streaming, context)
    assert _StreamingSpeech.bodies[-1]["stream_format"] == "sse"
    pieces = [json.loads(delta) for _, _, delta, part in points if part == AUDIO]
    assert [base64.b64decode(piece["audio_b64"]) for piece in pieces] == _pieces
    assert {(piece["format"], piece["sample_rate"]) for piece in pieces} == {("pcm", 24000)}
    arrived = [at for at, _, _, part in points if part == AUDIO]
    assert arrived[-1] - arrived[0] >= (len(_pieces) - 1) * _delta_s * 0.8  # as they came, not at the end
    assert base64.b64decode(output.result["audio_b64"]) == b"".join(_pieces)
    assert output.units == Units(characters=len("say this slowly")) and output.result["content_type"] == "audio/pcm"


def test_a_cancelled_stream_counts_the_input_it_was_given(streaming: str) -> None:
    """The upstream says nothing of the characters a delta covers: once audio came, the whole input."""
    context, points = _job(stream=True)

    async def cancel_after_the_first_piece() -> None:
        backend = UpstreamBackend(Upstreams({}, Upstream(url=streaming)))
        task = asyncio.ensure_future(backend.run(context))
        while not points:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await backend.close()

    asyncio.run(cancel_after_the_first_piece())
    assert context.units == Units(characters=len("say this slowly")) and len(points) < len(_pieces)


def test_an_upstream_that_answers_whole_is_one_piece() -> None:
    fake = FakeUpstream()
    try:
        context, points = _job(stream=True)
        output = _run(fake.url, context)
    finally:
        fake.close()
    (piece,) = [json.loads(delta) for _, _, delta, part in points if part == AUDIO]
    assert base64.b64decode(piece["audio_b64"]) == base64.b64decode(output.result["audio_b64"])
    assert output.units == Units(characters=len("say this slowly"))


def test_a_plain_speech_asks_for_no_stream_and_reports_no_piece(streaming: str) -> None:
    context, points = _job(stream=False)
    output = _run(streaming, context)
    assert "stream_format" not in _StreamingSpeech.bodies[-1]
    assert not [part for _, _, _, part in points if part == AUDIO]
    assert base64.b64decode(output.result["audio_b64"]) == b"".join(_pieces) and output.units.characters == 15
