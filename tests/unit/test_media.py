"""Deterministic media for the simulated backends: real PNG, WAV and AVI files, and the parsers that meter them."""

from __future__ import annotations

import io
import math
import struct
import wave
import zlib

import pytest

from workers.media import (
    PNG_SIGNATURE,
    png_image,
    png_size,
    transcript_for,
    video_clip,
    video_info,
    wav_audio,
    wav_duration_ms,
)

# ------------------------------------------------------------------------------------------------- PNG


def png_chunks(data: bytes) -> list[tuple[bytes, bytes, int]]:
    """Every chunk as (type, body, stored CRC); asserts the chunks tile the file exactly."""
    assert data[:8] == PNG_SIGNATURE
    chunks = []
    position = 8
    while position < len(data):
        (length,) = struct.unpack_from(">I", data, position)
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        assert len(body) == length
        (crc,) = struct.unpack_from(">I", data, position + 8 + length)
        chunks.append((kind, body, crc))
        position += 12 + length
    assert position == len(data)
    return chunks


@pytest.mark.parametrize(("width", "height"), [(1, 1), (17, 5), (300, 200), (1024, 1024), (1792, 1024)])
def test_png_is_valid(width: int, height: int) -> None:
    data = png_image(width, height, b"seed")
    chunks = png_chunks(data)
    assert [kind for kind, _, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    for kind, body, crc in chunks:
        assert zlib.crc32(kind + body) == crc, kind
    assert struct.unpack(">IIBBBBB", chunks[0][1]) == (width, height, 8, 2, 0, 0, 0)
    raw = zlib.decompress(chunks[1][1])
    assert len(raw) == height * (1 + 3 * width)
    assert all(raw[y * (1 + 3 * width)] == 0 for y in range(height))  # filter type None on every row
    assert chunks[2][1] == b""
    assert png_size(data) == (width, height)
    assert len(data) < 150_000


def test_png_is_deterministic_and_seeded() -> None:
    assert png_image(640, 480, b"a") == png_image(640, 480, b"a")
    assert png_image(640, 480, b"a") != png_image(640, 480, b"b")
    pixels_a = zlib.decompress(png_chunks(png_image(64, 64, b"a"))[1][1])
    pixels_b = zlib.decompress(png_chunks(png_image(64, 64, b"b"))[1][1])
    assert pixels_a != pixels_b  # the pictures differ, not only the bytes around them


def test_png_rejects_bad_dimensions() -> None:
    with pytest.raises(ValueError):
        png_image(0, 10, b"s")
    with pytest.raises(ValueError):
        png_image(10, -1, b"s")


def test_png_size_ignores_bytes_after_iend() -> None:
    assert png_size(png_image(7, 9, b"s") + b"trailing") == (7, 9)


def test_png_size_rejects_garbage_and_damage() -> None:
    good = png_image(32, 16, b"s")
    idat_body = good.index(b"IDAT") + 4
    flipped = good[:idat_body] + bytes((good[idat_body] ^ 0xFF,)) + good[idat_body + 1 :]
    bad_ihdr = bytearray(good)
    bad_ihdr[24] = 3  # bit depth 3 is invalid; the CRC is stale too
    no_idat = PNG_SIGNATURE + good[8:33] + good[-12:]
    damaged = [b"", b"garbage", b"GIF89a" + bytes(100), PNG_SIGNATURE, good[:30], good[:-1], good[:-12], flipped]
    for data in [*damaged, bytes(bad_ihdr), no_idat, wav_audio(100, b"s")]:
        with pytest.raises(ValueError):
            png_size(data)


# ------------------------------------------------------------------------------------------------- WAV


@pytest.mark.parametrize("milliseconds", [0, 1, 2, 159, 160, 999, 1000, 2500, 10_000])
def test_wav_reads_back_with_wave(milliseconds: int) -> None:
    data = wav_audio(milliseconds, b"voice")
    with wave.open(io.BytesIO(data), "rb") as reader:
        assert reader.getnchannels() == 1
        assert reader.getsampwidth() == 2
        assert reader.getframerate() == 16000
        assert reader.getcomptype() == "NONE"
        assert reader.getnframes() == milliseconds * 16
        assert len(reader.readframes(reader.getnframes() + 1)) == 2 * milliseconds * 16
    assert wav_duration_ms(data) == milliseconds


@pytest.mark.parametrize("sample_rate", [1000, 8000, 11025, 22050, 44100, 48000])
@pytest.mark.parametrize("milliseconds", [1, 7, 333, 2500])
def test_wav_duration_is_exact_at_any_rate(sample_rate: int, milliseconds: int) -> None:
    assert wav_duration_ms(wav_audio(milliseconds, b"r", sample_rate=sample_rate)) == milliseconds


def test_wav_is_deterministic_and_seeded() -> None:
    assert wav_audio(2500, b"a") == wav_audio(2500, b"a")
    assert wav_audio(2500, b"a") != wav_audio(2500, b"b")
    with wave.open(io.BytesIO(wav_audio(2500, b"a")), "rb") as reader:
        samples = struct.unpack(f"<{reader.getnframes()}h", reader.readframes(reader.getnframes()))
    assert 1000 < max(samples) < 32767  # real tones, well clear of clipping
    assert min(samples) < -1000


def test_wav_duration_of_a_stereo_8_bit_file() -> None:
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(2)
        writer.setsampwidth(1)
        writer.setframerate(11025)
        writer.writeframes(bytes(range(256)) * 10 + b"\x80\x80" * 4)  # 1284 frames
    assert wav_duration_ms(out.getvalue()) == math.ceil(1284 * 1000 / 11025) == 117


def test_wav_duration_counts_frames_present_not_the_header() -> None:
    data = wav_audio(1000, b"s")  # 16000 frames, 32000 bytes after a 44-byte header
    assert wav_duration_ms(data[: 44 + 16000]) == 500
    assert wav_duration_ms(data[: 44 + 3]) == 1  # one whole frame and half of another
    streamed = data[:40] + struct.pack("<I", 0xFFFFFFFF) + data[44:]
    assert wav_duration_ms(streamed) == 1000


def test_wav_duration_rejects_garbage() -> None:
    good = wav_audio(100, b"s")
    adpcm = good[:20] + struct.pack("<H", 2) + good[22:]
    bad_align = good[:32] + struct.pack("<H", 3) + good[34:]
    no_data = good[:36]
    not_wave = good[:8] + b"AVI " + good[12:]
    for data in [b"", b"garbage", b"RIFF", good[:12], good[:30], no_data, adpcm, bad_align, not_wave]:
        with pytest.raises(ValueError):
            wav_duration_ms(data)
    with pytest.raises(ValueError, match="not PCM"):
        wav_duration_ms(adpcm)
    with pytest.raises(ValueError):
        wav_duration_ms(png_image(4, 4, b"s"))


def test_wav_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        wav_audio(-1, b"s")
    with pytest.raises(ValueError):
        wav_audio(100, b"s", sample_rate=500)


# ------------------------------------------------------------------------------------------------- AVI


def riff_tree(data: bytes, start: int, end: int) -> list[tuple[bytes, bytes, int, int]]:
    """Chunks between start and end as (id, list type, offset of the chunk header, body length); asserts they
    tile the range exactly (word-aligned) and recurses into LISTs."""
    chunks = []
    position = start
    while position < end:
        kind = data[position : position + 4]
        (length,) = struct.unpack_from("<I", data, position + 4)
        assert position + 8 + length <= end, kind
        list_type = data[position + 8 : position + 12] if kind == b"LIST" else b""
        chunks.append((kind, list_type, position, length))
        if kind == b"LIST":
            chunks.extend(riff_tree(data, position + 12, position + 8 + length))
        position += 8 + length + (length & 1)
    assert position == end
    return chunks


@pytest.mark.parametrize(
    ("seconds", "width", "height", "fps"), [(10, 64, 36, 4), (1, 1, 1, 1), (3, 13, 7, 5), (2, 160, 90, 24)]
)
def test_avi_structure(seconds: int, width: int, height: int, fps: int) -> None:
    data = video_clip(seconds, width, height, fps, b"film")
    assert data[:4] == b"RIFF" and data[8:12] == b"AVI "
    assert struct.unpack_from("<I", data, 4)[0] == len(data) - 8
    tree = riff_tree(data, 12, len(data))
    assert [(kind, list_type) for kind, list_type, _, _ in tree if kind == b"LIST"] == [
        (b"LIST", b"hdrl"),
        (b"LIST", b"strl"),
        (b"LIST", b"movi"),
    ]
    lengths = {kind: length for kind, _, _, length in tree if kind in (b"avih", b"strh", b"strf")}
    assert lengths == {b"avih": 56, b"strh": 56, b"strf": 40}

    stride = (3 * width + 3) // 4 * 4
    frames = [(offset, length) for kind, _, offset, length in tree if kind == b"00db"]
    assert len(frames) == seconds * fps
    assert all(length == stride * height for _, length in frames)

    movi = next(offset for kind, list_type, offset, _ in tree if list_type == b"movi") + 8  # the "movi" fourcc
    [(_, _, idx1, idx1_length)] = [chunk for chunk in tree if chunk[0] == b"idx1"]
    assert idx1_length == 16 * len(frames)
    for number, (frame_offset, frame_length) in enumerate(frames):
        kind, flags, offset, length = struct.unpack_from("<4sIII", data, idx1 + 8 + 16 * number)
        assert (kind, flags, length) == (b"00db", 0x10, frame_length)
        assert data[movi + offset : movi + offset + 4] == b"00db"
        assert movi + offset == frame_offset

    assert video_info(data) == (width, height, fps, seconds * fps)


def test_avi_headers() -> None:
    data = video_clip(10, 64, 36, 4, b"film")
    assert len(data) < 1_000_000
    avih = data.index(b"avih") + 8
    microseconds, _, _, flags, total, _, streams, _, width, height = struct.unpack_from("<10I", data, avih)
    assert (microseconds, flags & 0x10, total, streams, width, height) == (250_000, 0x10, 40, 1, 64, 36)
    strh = data.index(b"strh") + 8
    assert data[strh : strh + 4] == b"vids"
    assert struct.unpack_from("<II", data, strh + 20) == (1, 4)  # dwScale, dwRate
    strf = data.index(b"strf") + 8
    assert struct.unpack_from("<IiiHHI", data, strf) == (40, 64, 36, 1, 24, 0)  # BITMAPINFOHEADER, BI_RGB


def test_avi_is_deterministic_and_moves() -> None:
    data = video_clip(2, 64, 36, 4, b"a")
    assert data == video_clip(2, 64, 36, 4, b"a")
    assert data != video_clip(2, 64, 36, 4, b"b")
    tree = riff_tree(data, 12, len(data))
    frames = [data[offset + 8 : offset + 8 + length] for kind, _, offset, length in tree if kind == b"00db"]
    assert frames[0] != frames[1]  # the bar moves


def test_video_info_counts_frames_present() -> None:
    data = bytearray(video_clip(2, 8, 8, 4, b"a"))
    avih = data.index(b"avih") + 8
    struct.pack_into("<I", data, avih + 16, 999)  # a lying dwTotalFrames
    assert video_info(bytes(data)) == (8, 8, 4, 8)


def test_video_info_rejects_garbage() -> None:
    good = video_clip(1, 16, 9, 4, b"s")
    for data in [b"", b"garbage", good[:12], good[:100], good[:-1], wav_audio(100, b"s"), png_image(4, 4, b"s")]:
        with pytest.raises(ValueError):
            video_info(data)
    bad_frame = bytearray(good)
    first = bad_frame.index(b"00db")
    struct.pack_into("<I", bad_frame, first + 4, 1 << 20)  # a frame running past the movi list
    with pytest.raises(ValueError):
        video_info(bytes(bad_frame))
    audio_only = bytearray(good)
    audio_only[audio_only.index(b"vids") : audio_only.index(b"vids") + 4] = b"auds"
    with pytest.raises(ValueError, match="no video stream"):
        video_info(bytes(audio_only))


def test_video_clip_rejects_bad_arguments() -> None:
    for seconds, width, height, fps in [(0, 64, 36, 4), (1, 0, 36, 4), (1, 64, 36, 0), (3600, 4096, 4096, 60)]:
        with pytest.raises(ValueError):
            video_clip(seconds, width, height, fps, b"s")


# ---------------------------------------------------------------------------------------------- speech


def test_transcript_is_deterministic() -> None:
    audio = wav_audio(3000, b"a")
    assert transcript_for(audio) == transcript_for(audio)
    assert transcript_for(audio) != transcript_for(wav_audio(3000, b"b"))
    text = transcript_for(audio)
    assert text[0].isupper() and text.endswith(".")


@pytest.mark.parametrize(("milliseconds", "words"), [(0, 1), (1, 1), (500, 1), (1000, 2), (2500, 5), (10_000, 20)])
def test_transcript_length_scales_with_duration(milliseconds: int, words: int) -> None:
    assert len(transcript_for(wav_audio(milliseconds, b"x")).split()) == words


def test_transcript_needs_a_wav() -> None:
    with pytest.raises(ValueError):
        transcript_for(b"not audio")
