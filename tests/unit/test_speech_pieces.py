"""Streamed speech, made piece by piece: the simulated voice's pieces (clause by clause, bounded) and
their audio, which concatenates into the audio made whole, byte for byte, in every format."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.waiters import stream_events_max
from schemas.units import Units
from tests.support import examples
from workers import media
from workers.backends import (
    AUDIO,
    JobContext,
    SimulatedBackend,
    speech_first_piece_characters_max,
    speech_piece_characters_max,
    speech_piece_ends,
)


@settings(max_examples=examples(300), deadline=None)
@given(st.text(alphabet="ab .,!?\n\u2014", min_size=1, max_size=4096))
def test_pieces_cover_the_text_in_bounded_steps(text: str) -> None:
    ends = speech_piece_ends(text)
    assert ends[-1] == len(text) and ends == sorted(set(ends)) and ends[0] > 0
    assert ends[0] <= speech_first_piece_characters_max
    assert all(0 < end - start <= speech_piece_characters_max for start, end in itertools.pairwise(ends))


def test_the_longest_input_has_far_fewer_pieces_than_a_stream_may_queue() -> None:
    """A stream's waiter queues at most ``stream_events_max`` events; a piece it dropped would break the
    audio, so the worst input (a clause every three characters) must stay far below that."""
    assert len(speech_piece_ends("a, " * 1366)) * 4 < stream_events_max
    assert len(speech_piece_ends("a" * 4096)) * 4 < stream_events_max


def test_pieces_end_at_clauses_a_short_one_joined_to_the_next() -> None:
    text = "Hello there, this is the ledger. It holds credits; it charges once!\nThen it stops."
    assert [text[start:end] for start, end in itertools.pairwise([0, *speech_piece_ends(text)])] == [
        "Hello there, this is the ledger. ",
        "It holds credits; it charges once!\n",
        "Then it stops.",
    ]


_rates = (8000, 16000, 22050, 24000, 44100, 48000)


# The simulated voice makes MP3 at 16 kHz only.
@pytest.mark.parametrize(("audio_format", "rate"), [*((f, r) for f in ("wav", "pcm") for r in _rates), ("mp3", 16000)])
def test_spoken_audio_in_pieces_is_the_audio_made_whole(audio_format: str, rate: int) -> None:
    seed = hashlib.sha256(b"voice").digest()
    for total_ms in (0, 60, 1_000, 8_220):
        whole = media.wav_audio(total_ms, seed, rate)
        expected = {"wav": whole, "pcm": media.wav_samples(whole), "mp3": media.mp3_audio(total_ms, seed, rate)}
        spoken = media.SpokenAudio(audio_format, total_ms, seed, rate)
        cuts = [*range(420, total_ms, 420), total_ms]
        assert b"".join(spoken.piece(cut) for cut in cuts) == expected[audio_format]
    assert media.wav_header(rate * 3, rate) == media.wav_audio(3_000, seed, rate)[:44]


def test_a_streamed_job_reports_each_piece_and_answers_the_same_audio() -> None:
    text = "The ledger settles. Every charge is once, and the stream shows it clause by clause, as made."
    reported: list[tuple[int, Units, str, str]] = []

    def run(stream: bool) -> dict[str, object]:
        payload = {"input": text, "voice": "alloy", "response_format": "pcm"}
        job = JobContext(
            "job", "sim-tts", "/v1/audio/speech", {**payload, **({"stream_format": "sse"} if stream else {})}
        )
        job.on_progress = lambda milli, units, delta, part: reported.append((milli, units, delta, part))
        return asyncio.run(SimulatedBackend().run(job)).result

    plain = run(False)
    assert all(delta == "" for _, _, delta, _ in reported)
    reported.clear()
    streamed = run(True)
    assert streamed == plain
    assert [units.characters for _, units, _, _ in reported] == speech_piece_ends(text)
    assert reported[-1][0] == 1000 and {part for _, _, _, part in reported} == {AUDIO}
    pieces = [json.loads(delta) for _, _, delta, _ in reported]
    assert {(piece["format"], piece["sample_rate"]) for piece in pieces} == {("pcm", 24000)}
    assert b"".join(base64.b64decode(piece["audio_b64"]) for piece in pieces) == base64.b64decode(
        str(plain["audio_b64"])
    )
