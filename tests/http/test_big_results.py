"""Results too large for one log record (``eventlog.record_value_bytes_max``, 8 MiB less framing): a
request whose worst-case answer cannot fit is a 400 before anything is held, naming what to change;
a long speech stream, whose audio travels in pieces, completes with only its metadata and is
replayed from its pieces; an answer larger than its request bounds (an upstream's) fails the job at
once, uncharged (workers/role.py; tests/unit/test_worker_role.py and
tests/kafka/test_kafka_big_results.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import pytest

from eventlog import topics
from gateway.metering import job_id_for
from gateway.routes.generation import _audio_past
from schemas.codec import decode_event
from schemas.events import JobCompleted
from tests.harness import Gateway
from tests.http.dialects import Account
from tests.http.test_speech_stream import _long_text, _run
from workers import media, result_sizes
from workers.backends import speech_ms_per_character


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw)


def _refused(account: Account, path: str, body: dict[str, Any], param: str, *hints: str) -> None:
    """A 400 ``result_too_large`` naming ``param`` and each hint, before anything is held."""
    before = account.balance_micros()
    answer = account.gw.call("POST", path, account.key, json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "result_too_large", param)
    for hint in hints:
        assert hint in error["message"], error["message"]
    assert account.balance_micros() == before


def test_speech_whose_audio_cannot_fit_one_result_is_refused_up_front(account: Account) -> None:
    longest = ("Every clause is spoken. " * 200)[:4096]  # 245.8 s: 7.9 MB of WAV at 16 kHz, 10.5 MB as base64
    _refused(
        account,
        "/v1/audio/speech",
        {"model": "sim-tts", "input": longest},
        "input",
        "4,096 characters",
        "MP3",
        "sample_rate of at most 8000",
        "at most 3,268 characters",
    )
    hd = {"model": "sim-tts", "input": longest[:1500], "response_format": "wav", "sample_rate": "48000"}
    _refused(account, "/v1/audio/speech", hd, "sample_rate", "48000 Hz", "sample_rate of at most 32000")
    # EmpirioLabs' AudioResponse, a podcast script, the Fal queue and Casola's job API: the same rule.
    _refused(account, "/v1/audio/speech", {"model": "sim-tts", "input": longest, "output_format": "PCM"}, "input")
    podcast = {"model": "soulx-podcast", "input": longest, "response_format": "b64_json"}
    _refused(account, "/v1/audio/generations", podcast, "input")
    _refused(account, "/fal/sim-tts", {"text": longest}, "text", "at most 3,268 characters")
    job = {"model_id": "sim-tts", "task": "openai/speech", "payload": {"model": "sim-tts", "input": longest}}
    _refused(account, "/api/jobs", job, "input")


def test_the_same_speech_as_mp3_fits_and_is_answered(account: Account) -> None:
    longest = ("Every clause is spoken. " * 200)[:4096]
    answer = account.gw.call(
        "POST", "/v1/audio/speech", account.key, json={"model": "sim-tts", "input": longest, "response_format": "mp3"}
    )
    assert answer.status_code == 200, answer.text
    assert media.mp3_duration_ms(answer.content) >= 4096 * speech_ms_per_character


def test_embeddings_whose_answer_cannot_fit_one_result_are_refused_up_front(account: Account) -> None:
    inputs = ["hello world"] * 2048
    body = {"model": "sim-embed-small", "input": inputs, "dimensions": 4096}
    _refused(account, "/v1/embeddings", body, "input", "2,048 embeddings", "at most 203 inputs", "fewer dimensions")
    # 2,048 x 1,024 floats (21 MB as JSON) does not fit; as base64 float32 (11 MB) neither.
    _refused(account, "/v1/embeddings", {**body, "dimensions": 1024}, "input", "at most 811 inputs")
    # 600 x 1,024: 6.2 MB as JSON fits; 1,000 x 1,024 (10 MB) does not, but as base64 (5.5 MB) would.
    _refused(account, "/v1/embeddings", {**body, "input": inputs[:1000], "dimensions": 1024}, "input", "base64")


def test_the_bounds_are_the_simulated_voice_s_sizes() -> None:
    """The gateway's bound is what the worker makes (WAV and PCM exactly, MP3 from above)."""
    for audio_format, rate in (("wav", 16000), ("wav", 48000), ("pcm", 24000), ("mp3", 16000)):
        spoken = media.SpokenAudio(audio_format, 37 * speech_ms_per_character, b"seed", rate)
        made = len(spoken.piece(spoken.seconds_milli))
        bound = result_sizes.spoken_audio_bytes(audio_format, spoken.seconds_milli, rate)
        assert made == bound if audio_format != "mp3" else made <= bound, (audio_format, made, bound)


def _completion_on_the_log(gw: Gateway, job_id: str) -> JobCompleted:
    consumer = gw.log.consumer([topics.JOBS], client_id="test-big-results")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for record in consumer.poll(1000, 100):
            event = decode_event(record.value)
            if isinstance(event, JobCompleted) and event.job_id == job_id:
                consumer.close()
                return event
    raise AssertionError(f"no completion of {job_id} on the log")


@pytest.mark.heavy  # 3 s of simulated synthesis
def test_a_long_stream_completes_without_its_audio_and_replays_it_from_its_pieces(account: Account) -> None:
    """3,000 characters as WAV at 24 kHz: 8.6 MB of audio, 11.5 MB as base64, over one record. The
    stream relays every piece; the job's completion carries the metadata only; a retry with the same
    Idempotency-Key reads the pieces back from the log and answers the same audio."""
    body = {"model": "inworld-tts-mini", "input": _long_text, "output_format": "WAV", "sample_rate": "24000"}
    key = (b"idempotency-key", f"long-stream-{time.time_ns()}".encode())
    seen, future = _run(account.gw, account.key, body, headers=(key,))
    future.result(timeout=60)
    assert seen.status == 200 and seen.of("audio.done"), seen.events[-3:]
    audio = seen.audio()
    assert media.wav_duration_ms(audio) == len(_long_text) * speech_ms_per_character
    assert result_sizes.base64_bytes(len(audio)) > result_sizes.job_result_bytes_max

    completed = _completion_on_the_log(account.gw, job_id_for(seen.headers["x-request-id"]))
    result = json.loads(bytes(completed.result))
    assert "audio_b64" not in result and result["audio_in_pieces"] is True and result["audio_bytes"] == len(audio)
    # A stream that missed its pieces past some byte gets the rest from the pieces on the log.
    missed = asyncio.run(_audio_past(account.gw.core, completed, result, 100_000))
    assert missed == audio[100_000:]

    before = account.balance_micros()
    replay = account.gw.call(  # the same bytes as the first attempt's body
        "POST",
        "/v1/audio/speech:stream",
        account.key,
        content=json.dumps(body).encode(),
        headers={"Idempotency-Key": key[1].decode(), "Content-Type": "application/json"},
    )
    assert replay.status_code == 200, replay.text
    events = [json.loads(line[6:]) for line in replay.text.splitlines() if line.startswith("data: {")]
    replayed = b"".join(base64.b64decode(e["audio_b64"]) for e in events if e["type"] == "audio.chunk")
    assert replayed == audio
    assert events[-1]["type"] == "audio.done" and events[-1]["usage"] == seen.of("audio.done")[0]["usage"]
    assert account.balance_micros() == before  # charged once
