"""MP3 as a transcription is billed by it: the duration is counted from the MPEG audio frames present,
in integers, never from a header's claim; tags are skipped, anything else is a ValueError."""

from __future__ import annotations

import pytest

from workers.media import audio_duration_ms, audio_format, mp3_audio, mp3_duration_ms, transcript_for

# MPEG-1 layer III, 128 kbit/s, 44.1 kHz, no CRC, stereo: 417 bytes (418 with the padding bit), 1152 samples.
_header = bytes((0xFF, 0xFB, 0x90, 0x00))
_padded = bytes((0xFF, 0xFB, 0x92, 0x00))


def frames(count: int, padded_every: int = 0) -> bytes:
    out = b""
    for index in range(count):
        padded = padded_every and index % padded_every == 0
        out += (_padded + bytes(414)) if padded else (_header + bytes(413))
    return out


def expected_ms(count: int, samples: int = 1152, rate: int = 44100) -> int:
    return -(-count * samples * 1000 // rate)


@pytest.mark.parametrize("count", [1, 2, 38, 1000])
def test_the_duration_is_the_frames_samples(count: int) -> None:
    assert mp3_duration_ms(frames(count, padded_every=3)) == expected_ms(count)


def test_tags_are_skipped() -> None:
    id3v2 = b"ID3\x04\x00\x00" + bytes((0, 0, 1, 0)) + bytes(128)  # synchsafe 128
    id3v1 = b"TAG" + bytes(125)
    ape = b"APETAGEX" + bytes(24)
    assert mp3_duration_ms(id3v2 + frames(10) + id3v1) == expected_ms(10)
    assert mp3_duration_ms(frames(10) + ape) == expected_ms(10)
    assert audio_format(id3v2 + frames(1)) == "mp3"


def test_an_encoder_tag_frame_holds_no_audio_and_its_claim_is_not_read() -> None:
    xing = bytearray(_header + bytes(413))
    xing[36:40] = b"Xing"
    xing[40:48] = bytes((0, 0, 0, 1, 0x7F, 0xFF, 0xFF, 0xFF))  # claims 2^31 frames
    assert mp3_duration_ms(bytes(xing) + frames(5)) == expected_ms(5)
    info = bytearray(xing)
    info[36:40] = b"Info"
    assert mp3_duration_ms(bytes(info) + frames(5)) == expected_ms(5)


def test_a_final_frame_cut_short_is_not_counted() -> None:
    assert mp3_duration_ms(frames(6)[:-100]) == expected_ms(5)
    assert mp3_duration_ms(frames(6) + b"\xff\xfb") == expected_ms(6)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello",
        frames(3)[:417] + b"junk" + frames(3)[417:],
        frames(2) + bytes((0xFF, 0xFB, 0x94, 0x00)) + bytes(500),  # 48 kHz after 44.1 kHz
        bytes((0xFF, 0xFB, 0x00, 0x00)) + bytes(413),  # free format: no length to read
        bytes((0xFF, 0xFB, 0xF0, 0x00)) + bytes(413),  # bitrate index 15
        bytes((0xFF, 0xFB, 0x9C, 0x00)) + bytes(413),  # sample rate index 3
        b"ID3\x04\x00\x00\x00\x00\x00\x05abcde",
        b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f",  # a tag longer than the data
        b"ID3\x04\x00\x00\x80\x00\x00\x00",  # not synchsafe
    ],
)
def test_anything_else_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        mp3_duration_ms(data)


def test_other_layers_and_versions() -> None:
    layer_two = bytes((0xFF, 0xFD, 0x90, 0x00))  # MPEG-1 layer II 160 kbit/s 44.1 kHz: 522 bytes
    assert mp3_duration_ms((layer_two + bytes(518)) * 4) == expected_ms(4)
    layer_one = bytes((0xFF, 0xFF, 0x90, 0x00))  # MPEG-1 layer I 288 kbit/s 44.1 kHz: 312 bytes, 384 samples
    assert mp3_duration_ms((layer_one + bytes(308)) * 7) == expected_ms(7, samples=384)
    mpeg2 = bytes((0xFF, 0xF3, 0x48, 0xC4))  # MPEG-2 layer III 32 kbit/s 16 kHz mono: 144 bytes, 576 samples
    assert mp3_duration_ms((mpeg2 + bytes(140)) * 9) == expected_ms(9, samples=576, rate=16000)


def test_encoded_speech_is_deterministic_and_reads_back() -> None:
    first, again = mp3_audio(2_000, b"seed"), mp3_audio(2_000, b"seed")
    assert first == again and first != mp3_audio(2_000, b"other")
    duration = mp3_duration_ms(first)
    assert 2_000 <= duration <= 2_000 + 3 * 36  # LAME's delay and padding: a few 36 ms frames
    assert audio_duration_ms(first) == duration and audio_format(first) == "mp3"
    assert transcript_for(first) == transcript_for(again)
