"""The rules every chat input is counted by (workers/metering.py): images by size and detail, audio by
duration, tool definitions and calls as text, files by their contents, cacheable prefixes; and the
image header reader they rely on."""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

import pytest

from workers import media, metering
from workers.metering import MeteringError, chat_prompt, image_tokens


@pytest.mark.parametrize(
    ("size", "detail", "tokens"),
    [
        ((1024, 1024), "low", 85),
        ((4096, 4096), "low", 85),
        (None, "low", 85),
        ((512, 512), "high", 85 + 170),  # one tile
        ((1024, 1024), "high", 85 + 170 * 4),  # 768 x 768 after scaling: 2 x 2 tiles
        ((1024, 1024), "auto", 765),
        ((2048, 4096), "high", 85 + 170 * 6),  # 1024 x 2048, then 768 x 1536: 2 x 3 tiles
        ((800, 600), "high", 85 + 170 * 4),  # as it is: 2 x 2 tiles
        ((100, 100), "high", 85 + 170),
        ((768, 2048), "high", 1445),  # the largest
        (None, "high", 1445),  # unknown size: the largest
        (None, "auto", 1445),
    ],
)
def test_images_count_by_openais_tile_rule(size: tuple[int, int] | None, detail: str, tokens: int) -> None:
    assert image_tokens(size, detail) == tokens
    assert image_tokens(size, detail) <= metering.image_tokens_max


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return media.PNG_SIGNATURE + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def _jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + bytes(9)
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + bytes(3)
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


def _webp_vp8x(width: int, height: int) -> bytes:
    body = (
        b"VP8X"
        + struct.pack("<I", 10)
        + bytes(4)
        + (width - 1).to_bytes(3, "little")
        + (height - 1).to_bytes(3, "little")
    )
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (media.png_image(40, 30, b"seed"), (40, 30)),
        (_png_header(3000, 2000), (3000, 2000)),
        (b"GIF89a" + struct.pack("<HH", 320, 200) + bytes(8), (320, 200)),
        (_jpeg(1920, 1080), (1920, 1080)),
        (_webp_vp8x(640, 480), (640, 480)),
    ],
)
def test_image_sizes_are_read_from_headers(data: bytes, size: tuple[int, int]) -> None:
    assert media.image_size(data) == size


@pytest.mark.parametrize("data", [b"", b"not an image", b"\xff\xd8\xff\xe0", b"GIF89a"])
def test_unreadable_images_are_refused_by_the_reader(data: bytes) -> None:
    with pytest.raises(ValueError):
        media.image_size(data)


def _data_uri(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def _message(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": list(parts)}]}


def test_a_prompt_is_split_by_kind() -> None:
    wav = media.wav_audio(2_450, b"a")
    prompt = chat_prompt(
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this", "cache_control": {"type": "ephemeral"}},
                        {"type": "image_url", "image_url": {"url": _data_uri(_png_header(1024, 1024))}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
                        {
                            "type": "input_audio",
                            "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"},
                        },
                        {
                            "type": "file",
                            "file": {"filename": "a.txt", "file_data": base64.b64encode(b"file words").decode()},
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        }
    )
    assert prompt.messages == 4
    assert prompt.image_tokens == 765 + 85
    assert prompt.audio_ms == [2_450] and prompt.audio_tokens == 25  # by the started 100 ms
    assert "file words" in prompt.texts
    assert prompt.cacheable_texts == 2  # the system message and the marked part
    assert any('"arguments":"{\\"x\\":1}"' in text for text in prompt.texts)  # the tool call, as JSON
    assert any('"name":"f"' in text and "parameters" in text for text in prompt.texts)  # the tool definition
    assert "c1" in prompt.texts and "42" in prompt.texts


@pytest.mark.parametrize(
    ("part", "code"),
    [
        ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "mp3"}}, "unsupported_audio_format"),
        ({"type": "input_audio", "input_audio": {"data": "not base64!", "format": "wav"}}, "invalid_audio"),
        ({"type": "audio_url", "audio_url": {"url": "https://example.com/a.mp3"}}, "unsupported_audio_input"),
        ({"type": "image_url", "image_url": {}}, "invalid_image"),
        ({"type": "file", "file": {"file_data": "%%%"}}, "invalid_file"),
    ],
)
def test_inputs_that_cannot_be_measured_are_refused(part: dict[str, Any], code: str) -> None:
    with pytest.raises(MeteringError) as raised:
        chat_prompt(_message(part))
    assert raised.value.code == code and raised.value.param.startswith("messages[0].content[0]")


class Files:
    def __init__(self, files: dict[tuple[str, str], bytes]) -> None:
        self.files = files

    def read(self, org_id: str, file_id: str, bytes_max: int) -> tuple[str, bytes] | None:
        data = self.files.get((org_id, file_id))
        return None if data is None else (f"{file_id}.txt", data)


def test_a_file_id_is_metered_as_its_contents() -> None:
    fields = _message({"type": "file", "file": {"file_id": "file-1"}})
    metering.inline_files(fields, "org_a", Files({("org_a", "file-1"): b"the contents"}))
    assert chat_prompt(fields).texts == ["the contents"]
    with pytest.raises(MeteringError) as raised:
        metering.inline_files(_message({"type": "file", "file": {"file_id": "file-1"}}), "org_b", Files({}))
    assert raised.value.code == "file_not_found"
    big = Files({("org_a", "f"): bytes(metering.file_bytes_max + 1)})
    with pytest.raises(MeteringError) as raised:
        metering.inline_files(_message({"type": "file", "file": {"file_id": "f"}}), "org_a", big)
    assert raised.value.code == "files_too_large"
