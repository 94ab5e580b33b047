"""Deterministic, real media for the simulated backends: same inputs give identical bytes.

- Images are 8-bit RGB PNG (signature, IHDR, one zlib IDAT, IEND, real CRCs).
- Audio is mono 16-bit PCM WAV written with the standard ``wave`` module: a sequence of sine tones
  and pauses picked from the seed, a stand-in for synthesised speech; as MP3, the same samples
  encoded by LAME (``lameenc``, deterministic: the same samples give the same frames).
- Video is an uncompressed RIFF AVI (``hdrl``/``avih``/``strl``/``strh``/``strf`` with a 24-bit BI_RGB
  BITMAPINFOHEADER, ``00db`` frames in ``movi``, and an ``idx1`` index). It is the simplest container
  that ffmpeg, VLC and other standard tools play without any codec: frames are raw DIBs, so the
  standard library alone can write it honestly. Keep frames tiny (e.g. 64x36 at 4 fps) so clips stay small.

The parsers (``png_size``, ``wav_duration_ms``, ``mp3_duration_ms``, ``video_info``) validate structure and
raise ``ValueError`` on anything else; they count what the bytes actually hold rather than what a header claims.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import struct
import wave
import zlib
from dataclasses import dataclass

import lameenc

__all__ = [
    "SpokenAudio",
    "audio_duration_ms",
    "audio_format",
    "image_size",
    "mp3_audio",
    "mp3_duration_ms",
    "png_image",
    "png_size",
    "transcript_for",
    "transcript_words",
    "video_clip",
    "video_info",
    "wav_audio",
    "wav_duration_ms",
    "wav_header",
    "wav_samples",
]

# ---------------------------------------------------------------------------------------------- common


def _stream(label: bytes, seed: bytes, length: int) -> bytes:
    """``length`` deterministic pseudo-random bytes for one purpose (``label``) and one seed."""
    return hashlib.shake_256(b"tollgate-media\0" + label + b"\0" + seed).digest(length)


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")


# ------------------------------------------------------------------------------------------------- PNG

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
png_max_side = 16384
_png_cell = 16  # background gradient cells: runs of identical pixels and rows compress very well
_png_rectangles = 4
_png_colour_depths = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_image(width: int, height: int, seed: bytes) -> bytes:
    """An 8-bit RGB PNG: a blocky gradient tinted by the seed with a few seed-coloured rectangles."""
    _check_int("width", width, 1, png_max_side)
    _check_int("height", height, 1, png_max_side)
    noise = _stream(b"png", seed, 4 + 8 * _png_rectangles)
    tint_r, tint_g, blue = noise[0], noise[1], noise[2]
    columns = -(-width // _png_cell)
    bands = -(-height // _png_cell)
    cells = b"".join(
        bytes(((c * 255 // max(columns - 1, 1) * 3 + tint_r) // 4, 0, blue)) * _png_cell for c in range(columns)
    )[: 3 * width]
    band_rows: list[bytes] = []
    for band in range(bands):
        green = (band * 255 // max(bands - 1, 1) * 3 + tint_g) // 4
        row = bytearray(cells)
        row[1::3] = bytes((green,)) * width
        band_rows.append(bytes(row))

    rectangles: list[tuple[int, int, int, int, bytes]] = []
    for k in range(_png_rectangles):
        d = noise[4 + 8 * k : 12 + 8 * k]
        rect_w = max(1, width // 8 + d[0] * (width // 4) // 256)
        rect_h = max(1, height // 8 + d[1] * (height // 4) // 256)
        x0 = d[2] * width // 256
        y0 = d[3] * height // 256
        x1, y1 = min(width, x0 + rect_w), min(height, y0 + rect_h)
        rectangles.append((x0, y0, x1, y1, bytes(d[4:7]) * (x1 - x0)))

    rows: list[bytes] = []
    for y in range(height):
        base = band_rows[y // _png_cell]
        covering = [r for r in rectangles if r[1] <= y < r[3]]
        if covering:
            row = bytearray(base)
            for x0, _, x1, _, pixels in covering:
                row[3 * x0 : 3 * x1] = pixels
            base = bytes(row)
        rows.append(b"\x00")  # filter type None
        rows.append(base)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        (
            PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(b"".join(rows), 6)),
            _png_chunk(b"IEND", b""),
        )
    )


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG. Checks the signature, IHDR, every chunk's length and CRC, at least one IDAT
    and a final IEND (bytes after IEND are ignored, as libpng does). Raises ValueError otherwise."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError("PNG data must be bytes")
    data = bytes(data)
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG: bad signature")
    position = len(PNG_SIGNATURE)
    size: tuple[int, int] | None = None
    seen_idat = False
    while True:
        if position + 12 > len(data):
            raise ValueError("truncated PNG: chunk header or IEND missing")
        (length,) = struct.unpack_from(">I", data, position)
        kind = data[position + 4 : position + 8]
        if length > 0x7FFFFFFF:
            raise ValueError(f"corrupt PNG: chunk length {length} too large")
        if not kind.isalpha() or not kind.isascii():
            raise ValueError(f"corrupt PNG: bad chunk type {kind!r}")
        end = position + 8 + length
        if end + 4 > len(data):
            raise ValueError(f"truncated PNG: chunk {kind.decode()} runs past the end of the data")
        body = data[position + 8 : end]
        (crc,) = struct.unpack_from(">I", data, end)
        if zlib.crc32(kind + body) != crc:
            raise ValueError(f"corrupt PNG: bad CRC in chunk {kind.decode()}")
        if size is None:
            if kind != b"IHDR" or length != 13:
                raise ValueError("corrupt PNG: first chunk must be a 13-byte IHDR")
            width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", body)
            if not (0 < width <= 0x7FFFFFFF and 0 < height <= 0x7FFFFFFF):
                raise ValueError(f"corrupt PNG: bad dimensions {width}x{height}")
            if depth not in _png_colour_depths.get(colour, ()):
                raise ValueError(f"corrupt PNG: bit depth {depth} is invalid for colour type {colour}")
            if compression != 0 or filtering != 0 or interlace not in (0, 1):
                raise ValueError("corrupt PNG: unknown compression, filter or interlace method")
            size = (width, height)
        elif kind == b"IHDR":
            raise ValueError("corrupt PNG: more than one IHDR")
        elif kind == b"IDAT":
            seen_idat = True
        elif kind == b"IEND":
            if not seen_idat:
                raise ValueError("corrupt PNG: no IDAT before IEND")
            return size
        position = end + 4


_jpeg_frame_markers = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)})


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG, JPEG, GIF or WebP image, from its header (what a prompt's image is
    metered by); the pixels are not decoded. Raises ValueError for anything else."""
    data = bytes(data)
    if data.startswith(PNG_SIGNATURE):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ValueError("truncated PNG: no IHDR")
        width, height = struct.unpack_from(">II", data, 16)
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        if len(data) < 10:
            raise ValueError("truncated GIF")
        width, height = struct.unpack_from("<HH", data, 6)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        width, height = _webp_size(data)
    elif data.startswith(b"\xff\xd8"):
        width, height = _jpeg_size(data)
    else:
        raise ValueError("not a PNG, JPEG, GIF or WebP image")
    if width <= 0 or height <= 0:
        raise ValueError(f"bad image dimensions {width}x{height}")
    return width, height


def _webp_size(data: bytes) -> tuple[int, int]:
    kind = data[12:16]
    if kind == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if kind == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if kind == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    raise ValueError("truncated or unknown WebP")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """The size in the first start-of-frame segment, walking the segments before it."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise ValueError("corrupt JPEG: segment without a marker")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length
            position += 2
            continue
        (length,) = struct.unpack_from(">H", data, position + 2)
        if marker in _jpeg_frame_markers:
            if position + 9 > len(data):
                break
            height, width = struct.unpack_from(">HH", data, position + 5)
            return width, height
        position += 2 + length
    raise ValueError("truncated JPEG: no start of frame")


# ------------------------------------------------------------------------------------------------- WAV

_wav_segment_ms = 160
_wav_fade_ms = 8
_wav_amplitude = 9000  # about -11 dBFS
# Pauses (0 Hz) stand for the gaps between words.
_wav_notes = (0, 196, 220, 247, 262, 294, 330, 0, 392, 440, 494, 523, 587)
_wav_format_pcm = 1
# What a billed WAV may declare: a rate far above any real audio's would make its samples "last" almost
# nothing, and so would a huge channel count.
wav_rate_hz_min, wav_rate_hz_max = 1000, 384_000
wav_channels_max = 32
_wav_format_float = 3
_wav_format_extensible = 0xFFFE


@functools.lru_cache(maxsize=64)  # a voice's few notes, made again for every piece of a streamed speech
def _tone(frequency: int, frames: int, sample_rate: int) -> bytes:
    """``frames`` little-endian 16-bit samples of a sine tone with short linear fades at both ends."""
    if frequency == 0:
        return bytes(2 * frames)
    fade = max(1, sample_rate * _wav_fade_ms // 1000)
    step = 2 * math.pi * frequency / sample_rate
    samples = [
        round(_wav_amplitude * min(1.0, i / fade, (frames - 1 - i) / fade) * math.sin(step * i)) for i in range(frames)
    ]
    return struct.pack(f"<{frames}h", *samples)


def _wav_pcm(frames: int, seed: bytes, sample_rate: int, start: int, end: int) -> bytes:
    """Samples ``start`` to ``end`` of the ``frames`` that ``wav_audio`` writes (the notes of a segment
    depend only on the seed and the segment's index, so any range is made without the rest)."""
    segment = max(1, sample_rate * _wav_segment_ms // 1000)
    notes = _stream(b"wav", seed, -(-frames // segment))
    first = start // segment
    parts: list[bytes] = []
    for index in range(first, -(-end // segment)):
        segment_start = index * segment
        parts.append(
            _tone(_wav_notes[notes[index] % len(_wav_notes)], min(segment, frames - segment_start), sample_rate)
        )
    offset = first * segment
    return b"".join(parts)[2 * (start - offset) : 2 * (end - offset)]


def _wav_frames(seconds_milli: int, sample_rate: int) -> int:
    _check_int("seconds_milli", seconds_milli, 0, 24 * 3600 * 1000)
    _check_int("sample_rate", sample_rate, 1000, 384000)  # >= 1000 Hz: the frame count is exact to the ms
    frames = seconds_milli * sample_rate // 1000
    if 2 * frames > 0xFFFFFFFF - 36:
        raise ValueError("audio too long for a WAV file")
    return frames


def wav_audio(seconds_milli: int, seed: bytes, sample_rate: int = 16000) -> bytes:
    """A mono 16-bit PCM WAV lasting ``seconds_milli`` ms (``wav_duration_ms`` reads back exactly that):
    160 ms tones and pauses picked from the seed."""
    frames = _wav_frames(seconds_milli, sample_rate)
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes(_wav_pcm(frames, seed, sample_rate, 0, frames))
    return out.getvalue()


wav_header_bytes = 44


def wav_header(frames: int, sample_rate: int) -> bytes:
    """The 44-byte header ``wav_audio`` (the ``wave`` module) writes for ``frames`` mono 16-bit samples:
    a streamed WAV sends it first, its lengths already those of the whole audio."""
    data_bytes = 2 * frames
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        _wav_format_pcm,
        1,
        sample_rate,
        2 * sample_rate,
        2,
        16,
        b"data",
        data_bytes,
    )


def _wav_sample_bytes(data: bytes, position: int) -> int:
    """The sample bytes from the data chunk at ``position`` on: a data chunk followed right at its end by
    another one counts what it claims (its header is no sample), the last of such a chain runs to the
    end of the file, whatever it claims."""
    samples = 0
    while True:
        (length,) = struct.unpack_from("<I", data, position + 4)
        start = position + 8
        end = start + length + (length & 1)
        if end + 8 <= len(data) and data[end : end + 4] == b"data":
            samples += length
            position = end
            continue
        return samples + len(data) - start


def wav_duration_ms(data: bytes) -> int:
    """Duration in ms (rounded up) of a RIFF/WAVE file with PCM (or IEEE float, or extensible PCM/float) samples,
    at 1 kHz to 384 kHz, 1 to 32 channels. This is what a transcription is billed for, so it is measured from the
    data present, never from what a header claims: every byte from the first data chunk's samples to the end of
    the file counts as samples (a decoder that ignores a chunk's length, as streamed WAVs need, plays them all),
    but the headers of data chunks that follow one another, so neither a data chunk that claims less than
    follows it nor an empty data chunk before a large one shortens it; a chunk claiming more than the file holds
    is measured by what it holds. Raises ValueError for anything that is not such a WAV."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError("WAV data must be bytes")
    data = bytes(data)
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV file: missing RIFF/WAVE header")
    position = 12
    fmt: tuple[int, int, int, int] | None = None  # channels, rate, block align, bits
    data_bytes: int | None = None
    while position + 8 <= len(data) and data_bytes is None:
        kind = data[position : position + 4]
        (length,) = struct.unpack_from("<I", data, position + 4)
        start = position + 8
        available = len(data) - start
        if kind == b"fmt ":
            if length < 16 or available < 16:
                raise ValueError("corrupt WAV: fmt chunk shorter than 16 bytes")
            tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", data, start)
            if tag == _wav_format_extensible:
                if length < 40 or available < 40:
                    raise ValueError("corrupt WAV: extensible fmt chunk shorter than 40 bytes")
                (tag,) = struct.unpack_from("<H", data, start + 24)
            if tag not in (_wav_format_pcm, _wav_format_float):
                raise ValueError(f"unsupported WAV: sample format {tag:#06x} is not PCM")
            if channels < 1 or rate < 1 or bits < 1:
                raise ValueError(f"corrupt WAV: {channels} channels, {rate} Hz, {bits} bits per sample")
            if not wav_rate_hz_min <= rate <= wav_rate_hz_max or channels > wav_channels_max:
                raise ValueError(
                    f"unsupported WAV: {rate} Hz and {channels} channels (WAV audio here has "
                    f"{wav_rate_hz_min} to {wav_rate_hz_max} Hz and at most {wav_channels_max} channels)"
                )
            if block_align != channels * ((bits + 7) // 8):
                raise ValueError(f"corrupt WAV: block align {block_align} does not match {channels}x{bits} bits")
            fmt = (channels, rate, block_align, bits)
        elif kind == b"data":
            if fmt is None:
                raise ValueError("corrupt WAV: data chunk before fmt chunk")
            data_bytes = _wav_sample_bytes(data, position)
        position = start + length + (length & 1)
    if fmt is None:
        raise ValueError("corrupt WAV: no fmt chunk")
    if data_bytes is None:
        raise ValueError("corrupt WAV: no data chunk")
    _, rate, block_align, _ = fmt
    frames = data_bytes // block_align
    return -(-frames * 1000 // rate)


# ------------------------------------------------------------------------------------------------- MP3

# MPEG audio frame headers (ISO 11172-3, ISO 13818-3 and the unofficial MPEG 2.5): kbit/s by version
# family (1: MPEG-1, 2: MPEG-2 and 2.5) and layer; sample rates by version; samples per frame.
_mpeg_versions = {0b11: "1", 0b10: "2", 0b00: "2.5"}
_mpeg_layers = {0b11: 1, 0b10: 2, 0b01: 3}
_mpeg_bitrates = {
    ("1", 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    ("1", 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    ("1", 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    ("2", 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    ("2", 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    ("2", 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_mpeg_rates = {"1": (44100, 48000, 32000), "2": (22050, 24000, 16000), "2.5": (11025, 12000, 8000)}
_id3v1_bytes = 128
mp3_bit_rate_kbps = 32  # speech: small files; LAME resamples nothing at the rates used here


@dataclass(frozen=True, slots=True)
class _MpegFrame:
    version: str
    layer: int
    sample_rate: int
    samples: int  # per frame
    length: int  # bytes, header included
    side_info_end: int  # where a Xing/Info tag would start, from the frame's first byte


def _mpeg_frame(data: bytes, position: int) -> _MpegFrame | None:
    """The MPEG audio frame whose header starts at ``position``; None when none does (free-format
    frames, whose length no header gives, are not read)."""
    if position + 4 > len(data) or data[position] != 0xFF or data[position + 1] & 0xE0 != 0xE0:
        return None
    b1, b2, b3 = data[position + 1], data[position + 2], data[position + 3]
    version = _mpeg_versions.get((b1 >> 3) & 0b11)
    layer = _mpeg_layers.get((b1 >> 1) & 0b11)
    bitrate_index, rate_index = b2 >> 4, (b2 >> 2) & 0b11
    if version is None or layer is None or bitrate_index in (0, 15) or rate_index == 3:
        return None
    family = "1" if version == "1" else "2"
    bitrate = _mpeg_bitrates[family, layer][bitrate_index] * 1000
    rate = _mpeg_rates[version][rate_index]
    padding = (b2 >> 1) & 1
    if layer == 1:
        samples, length = 384, (12 * bitrate // rate + padding) * 4
    elif layer == 2 or version == "1":
        samples, length = 1152, 144 * bitrate // rate + padding
    else:  # layer III of MPEG-2 and 2.5: half the samples
        samples, length = 576, 72 * bitrate // rate + padding
    mono = (b3 >> 6) == 0b11
    side_info = (17 if mono else 32) if version == "1" else (9 if mono else 17)
    crc = 0 if b1 & 1 else 2
    return _MpegFrame(version, layer, rate, samples, length, 4 + crc + side_info)


def _id3v2_end(data: bytes) -> int:
    """Where the audio starts after a leading ID3v2 tag (0 without one)."""
    if len(data) < 10 or data[:3] != b"ID3":
        return 0
    size_bytes = data[6:10]
    if any(byte & 0x80 for byte in size_bytes):
        raise ValueError("corrupt MP3: ID3v2 tag size is not synchsafe")
    size = 0
    for byte in size_bytes:
        size = size << 7 | byte
    footer = 10 if data[5] & 0x10 else 0
    return 10 + size + footer


def _is_tag_or_end(data: bytes, position: int) -> bool:
    """Whether what follows the last frame is a trailing tag (ID3v1, APEv2, Lyrics3) or nothing."""
    rest = data[position:]
    return (
        not rest
        or (rest[:3] == b"TAG" and len(rest) == _id3v1_bytes)
        or rest[:8] == b"APETAGEX"
        or rest[:6] == b"LYRICS"
    )


def mp3_duration_ms(data: bytes) -> int:
    """Duration in ms (rounded up) of an MPEG audio stream (MP3: MPEG-1, 2 or 2.5, layer I, II or III),
    counted from its frames: every complete frame present adds its samples (1152, 576 or 384), at the
    stream's one sample rate, in integers. What a header claims (a Xing, Info or VBRI tag's frame count)
    is never read: such a tag's frame holds no audio and is not counted. A leading ID3v2 tag and a
    trailing ID3v1, APEv2 or Lyrics3 tag are skipped; a final frame cut short is not counted. Anything
    else between frames, a change of version, layer or sample rate, or no audio frame at all, raises
    ValueError."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError("MP3 data must be bytes")
    data = bytes(data)
    position = _id3v2_end(data)
    if position > len(data):
        raise ValueError("truncated MP3: the ID3v2 tag runs past the end of the data")
    first: _MpegFrame | None = None
    frames = 0
    while not _is_tag_or_end(data, position):
        frame = _mpeg_frame(data, position)
        if frame is None:
            if first is not None and len(data) - position < 4:
                break  # a few stray bytes after the last frame: a cut-off header
            what = "no MPEG audio frame" if first is None else "bytes that are not an MPEG audio frame"
            raise ValueError(f"not an MP3 stream: {what} at byte {position}")
        if first is None:
            first = frame
            tag = data[position + frame.side_info_end : position + frame.side_info_end + 4]
            vbri = data[position + 36 : position + 40]
            if tag in (b"Xing", b"Info") or vbri == b"VBRI":
                position += frame.length  # an encoder's tag in a frame of silence: no audio
                continue
        elif (frame.version, frame.layer, frame.sample_rate) != (first.version, first.layer, first.sample_rate):
            raise ValueError(f"corrupt MP3: the stream changes format at byte {position}")
        if position + frame.length > len(data):
            break  # cut short: not played whole, not counted
        frames += 1
        position += frame.length
    if first is None or frames == 0:
        raise ValueError("not an MP3 stream: no complete MPEG audio frame")
    return -(-frames * first.samples * 1000 // first.sample_rate)


def _mp3_encoder(sample_rate: int) -> lameenc.Encoder:
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(mp3_bit_rate_kbps)
    encoder.set_in_sample_rate(sample_rate)
    encoder.set_channels(1)
    encoder.set_quality(7)
    return encoder


def mp3_audio(seconds_milli: int, seed: bytes, sample_rate: int = 16000) -> bytes:
    """``wav_audio``'s samples as a mono MP3 (MPEG-2 layer III at 16 kHz, 32 kbit/s), encoded by LAME:
    the same arguments give the same bytes. LAME pads the stream to whole frames (and adds its encoder
    delay), so ``mp3_duration_ms`` reads back a little more than ``seconds_milli``."""
    pcm = wav_samples(wav_audio(seconds_milli, seed, sample_rate))
    encoder = _mp3_encoder(sample_rate)
    return bytes(encoder.encode(pcm)) + bytes(encoder.flush())


class SpokenAudio:
    """The audio of ``wav_audio``/``mp3_audio`` (or its raw samples: ``pcm``) for ``seconds_milli`` ms,
    made piece by piece, as a streaming voice makes it: ``piece(until_ms)`` is the bytes that follow
    those made before, so the pieces, concatenated, are byte for byte the audio made whole. A WAV's
    first piece starts with the header of the whole audio (its length is known before the samples);
    an MP3's pieces are LAME's frames as they come out of one encoder, its last piece with the flush.
    Not thread-safe: one caller, pieces in order."""

    def __init__(self, audio_format: str, seconds_milli: int, seed: bytes, sample_rate: int) -> None:
        if audio_format not in ("wav", "mp3", "pcm"):
            raise ValueError(f"audio format {audio_format!r} is not wav, mp3 or pcm")
        self.audio_format = audio_format
        self.seconds_milli = seconds_milli
        self.sample_rate = sample_rate
        self._seed = seed
        self._frames = _wav_frames(seconds_milli, sample_rate)
        self._made_frames = 0
        self._started = False
        self._encoder = _mp3_encoder(sample_rate) if audio_format == "mp3" else None

    def piece(self, until_ms: int) -> bytes:
        """The audio from where the last piece ended up to ``until_ms`` (the end at ``seconds_milli``)."""
        _check_int("until_ms", until_ms, 0, self.seconds_milli)
        end = until_ms * self.sample_rate // 1000
        if end < self._made_frames:
            raise ValueError("pieces go forward: this one ends before the last one did")
        samples = _wav_pcm(self._frames, self._seed, self.sample_rate, self._made_frames, end)
        self._made_frames = end
        out = b""
        if self.audio_format == "wav" and not self._started:
            out = wav_header(self._frames, self.sample_rate)
        self._started = True
        if self._encoder is None:
            return out + samples
        out = bytes(self._encoder.encode(samples))
        return out + (bytes(self._encoder.flush()) if end == self._frames else b"")


def wav_samples(data: bytes) -> bytes:
    """The sample bytes of a WAV ``wav_audio`` wrote (raw PCM, as OpenAI's ``pcm`` format is)."""
    with wave.open(io.BytesIO(data), "rb") as reader:
        return reader.readframes(reader.getnframes())


def audio_format(data: bytes) -> str:
    """``wav`` or ``mp3``, from the first bytes; ValueError for anything else."""
    head = bytes(data[:4])
    if head == b"RIFF":
        return "wav"
    if head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    raise ValueError("not WAV or MP3 audio")


def audio_duration_ms(data: bytes) -> int:
    """The duration of WAV or MP3 audio as its parser measures it (``wav_duration_ms``,
    ``mp3_duration_ms``); ValueError for anything else."""
    return wav_duration_ms(data) if audio_format(data) == "wav" else mp3_duration_ms(data)


# ------------------------------------------------------------------------------------------------- AVI

_avi_keyframe = 0x10  # AVIIF_KEYFRAME
_avi_has_index = 0x10  # AVIF_HASINDEX
_avi_max_bytes = 1 << 30  # AVI 1.0 files (without OpenDML extensions) stop at 1 GiB
video_max_side = 4096
video_max_fps = 240


def _riff_chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) & 1 else b"")


def _riff_list(kind: bytes, *chunks: bytes) -> bytes:
    return _riff_chunk(b"LIST", kind + b"".join(chunks))


def _dib_stride(width: int, bit_count: int) -> int:
    return (width * bit_count + 31) // 32 * 4


def video_clip(seconds: int, width: int, height: int, fps: int, seed: bytes) -> bytes:
    """An uncompressed RIFF AVI of ``seconds * fps`` 24-bit frames: a seed-coloured vertical bar sliding across
    a seed-tinted vertical gradient."""
    _check_int("seconds", seconds, 1, 24 * 3600)
    _check_int("width", width, 1, video_max_side)
    _check_int("height", height, 1, video_max_side)
    _check_int("fps", fps, 1, video_max_fps)
    frame_count = seconds * fps
    stride = _dib_stride(width, 24)
    frame_bytes = stride * height
    if frame_count * (frame_bytes + 24) + 4096 > _avi_max_bytes:
        raise ValueError("video too large for an AVI 1.0 file; use smaller frames, a lower fps or fewer seconds")

    noise = _stream(b"avi", seed, 16)
    bar = bytes((noise[0], noise[1], noise[2]))  # stored as BGR
    bar_width = max(1, width // 8)
    step = 1 + noise[3] % 4
    offset = noise[4] * width // 256
    padding = bytes(stride - 3 * width)
    background_rows: list[bytes] = []
    for y in range(height):  # top to bottom; a DIB with positive height stores rows bottom-up
        shade = y * 255 // max(height - 1, 1)
        pixel = bytes(((noise[5] + shade) // 2 % 256, (noise[6] * 3 + shade) // 4 % 256, noise[7] // 2))
        background_rows.append(pixel * width)

    cache: dict[int, bytes] = {}
    movi: list[bytes] = [b"movi"]
    index: list[bytes] = []
    movi_offset = 4  # idx1 offsets count from the "movi" list type
    for frame in range(frame_count):
        x = (offset + frame * step) % width
        if x not in cache:
            columns = [(x, min(width, x + bar_width))]
            if x + bar_width > width:
                columns.append((0, x + bar_width - width))
            rows = []
            for background in reversed(background_rows):
                row = bytearray(background)
                for start, end in columns:
                    row[3 * start : 3 * end] = bar * (end - start)
                rows.append(bytes(row) + padding)
            cache[x] = b"".join(rows)
        chunk = _riff_chunk(b"00db", cache[x])
        movi.append(chunk)
        index.append(struct.pack("<4sIII", b"00db", _avi_keyframe, movi_offset, frame_bytes))
        movi_offset += len(chunk)

    avih = struct.pack(
        "<14I",
        1_000_000 // fps,  # dwMicroSecPerFrame
        frame_bytes * fps,  # dwMaxBytesPerSec
        0,  # dwPaddingGranularity
        _avi_has_index,  # dwFlags
        frame_count,  # dwTotalFrames
        0,  # dwInitialFrames
        1,  # dwStreams
        frame_bytes,  # dwSuggestedBufferSize
        width,
        height,
        0,
        0,
        0,
        0,  # dwReserved
    )
    strh = struct.pack(
        "<4s4sIHHIIIIIIIIhhhh",
        b"vids",
        b"DIB ",
        0,  # dwFlags
        0,  # wPriority
        0,  # wLanguage
        0,  # dwInitialFrames
        1,  # dwScale
        fps,  # dwRate: fps = dwRate / dwScale
        0,  # dwStart
        frame_count,  # dwLength
        frame_bytes,  # dwSuggestedBufferSize
        0xFFFFFFFF,  # dwQuality: default
        0,  # dwSampleSize: varies (one frame per chunk)
        0,
        0,
        min(width, 0x7FFF),
        min(height, 0x7FFF),  # rcFrame
    )
    strf = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, frame_bytes, 0, 0, 0, 0)
    hdrl = _riff_list(
        b"hdrl",
        _riff_chunk(b"avih", avih),
        _riff_list(b"strl", _riff_chunk(b"strh", strh), _riff_chunk(b"strf", strf)),
    )
    body = b"AVI " + hdrl + _riff_list(b"movi", *movi[1:]) + _riff_chunk(b"idx1", b"".join(index))
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _riff_children(data: bytes, start: int, end: int) -> list[tuple[bytes, bytes, int, int]]:
    """The chunks between ``start`` and ``end``: (id, list type or b"", body start, body end)."""
    children: list[tuple[bytes, bytes, int, int]] = []
    position = start
    while position < end:
        if position + 8 > end:
            raise ValueError("corrupt AVI: truncated chunk header")
        kind = data[position : position + 4]
        (length,) = struct.unpack_from("<I", data, position + 4)
        body = position + 8
        if body + length > end:
            raise ValueError(f"corrupt AVI: chunk {kind!r} runs past its container")
        list_type = b""
        if kind in (b"LIST", b"RIFF"):
            if length < 4:
                raise ValueError("corrupt AVI: LIST chunk without a type")
            list_type = data[body : body + 4]
        children.append((kind, list_type, body, body + length))
        position = min(end, body + length + (length & 1))
    return children


def _find(children: list[tuple[bytes, bytes, int, int]], kind: bytes, list_type: bytes = b"") -> tuple[int, int]:
    for child_kind, child_type, start, end in children:
        if child_kind == kind and child_type == list_type:
            return (start + 4, end) if list_type else (start, end)
    what = f"LIST {list_type.decode(errors='replace')}" if list_type else kind.decode(errors="replace")
    raise ValueError(f"corrupt AVI: no {what} chunk")


def video_info(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, fps, frame_count) of a RIFF AVI's first video stream. ``frame_count`` is the number of that
    stream's frame chunks actually present in ``movi``; ``fps`` is dwRate/dwScale rounded to an integer.
    Raises ValueError for anything that is not a structurally valid AVI."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError("AVI data must be bytes")
    data = bytes(data)
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"AVI ":
        raise ValueError("not an AVI file: missing RIFF/AVI header")
    (riff_size,) = struct.unpack_from("<I", data, 4)
    if riff_size + 8 > len(data):
        raise ValueError(f"truncated AVI: RIFF declares {riff_size + 8} bytes, only {len(data)} present")
    top = _riff_children(data, 12, riff_size + 8)
    hdrl = _riff_children(data, *_find(top, b"LIST", b"hdrl"))
    avih_start, avih_end = _find(hdrl, b"avih")
    if avih_end - avih_start < 56:
        raise ValueError("corrupt AVI: avih shorter than 56 bytes")

    video: tuple[int, int, int, int, int] | None = None  # stream, width, height, rate, scale
    expected: int | None = None  # the size of every frame chunk, when frames are uncompressed DIBs
    streams = [child for child in hdrl if child[0] == b"LIST" and child[1] == b"strl"]
    for number, (_, _, start, end) in enumerate(streams):
        strl = _riff_children(data, start + 4, end)
        strh_start, strh_end = _find(strl, b"strh")
        if strh_end - strh_start < 48:
            raise ValueError("corrupt AVI: strh shorter than 48 bytes")
        if data[strh_start : strh_start + 4] != b"vids":
            continue
        scale, rate = struct.unpack_from("<II", data, strh_start + 20)
        strf_start, strf_end = _find(strl, b"strf")
        if strf_end - strf_start < 40:
            raise ValueError("corrupt AVI: video strf is not a BITMAPINFOHEADER")
        _, width, height, _planes, bit_count, compression, _ = struct.unpack_from("<IiiHHII", data, strf_start)
        if width <= 0 or height == 0:
            raise ValueError(f"corrupt AVI: bad frame size {width}x{height}")
        if scale == 0 or rate == 0:
            raise ValueError(f"corrupt AVI: bad frame rate {rate}/{scale}")
        video = (number, width, abs(height), rate, scale)
        expected = _dib_stride(width, bit_count) * abs(height) if compression == 0 and bit_count else None
        break
    if video is None:
        raise ValueError("corrupt AVI: no video stream")
    number, width, height, rate, scale = video
    fps = round(rate / scale)
    if fps < 1:
        raise ValueError(f"unsupported AVI: frame rate {rate}/{scale} is below 0.5 fps")

    prefix = f"{number:02d}".encode()
    frames = 0
    pending = [_find(top, b"LIST", b"movi")]
    while pending:
        for kind, list_type, start, end in _riff_children(data, *pending.pop()):
            if kind == b"LIST" and list_type == b"rec ":
                pending.append((start + 4, end))
            elif kind[:2] == prefix and kind[2:] in (b"db", b"dc"):
                if expected is not None and end - start not in (0, expected):
                    raise ValueError(f"corrupt AVI: frame of {end - start} bytes, expected {expected}")
                frames += 1
    return width, height, fps, frames


# ---------------------------------------------------------------------------------------------- speech

_transcript_words = (
    "the", "meter", "counts", "every", "second", "of", "audio", "and", "the", "ledger", "settles", "each",
    "charge", "once", "credits", "flow", "from", "wallets", "to", "invoices", "while", "workers", "listen",
    "speak", "render", "frames", "tokens", "prices", "balance", "event", "stream", "replay",
)  # fmt: skip
_transcript_words_per_second = 2


def transcript_words(audio: bytes) -> list[str]:
    """A deterministic pseudo-transcript of WAV or MP3 audio, as words: about two per second of audio
    (at least one), chosen from a small vocabulary by the audio's SHA-256. Raises ValueError if
    ``audio`` is neither."""
    duration_ms = audio_duration_ms(audio)
    count = max(1, -(-duration_ms * _transcript_words_per_second // 1000))
    digest = hashlib.sha256(bytes(audio)).digest()
    picks = hashlib.shake_256(b"tollgate-transcript\0" + digest).digest(count)
    return [_transcript_words[b % len(_transcript_words)] for b in picks]


def transcript_for(audio: bytes) -> str:
    """``transcript_words`` as one sentence."""
    return " ".join(transcript_words(audio)).capitalize() + "."
