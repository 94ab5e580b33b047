"""Requests an attacker shapes (issue 15): each is refused with a clear error in the OpenAI envelope,
never a 500, and none shapes what it is billed.

Deep JSON on every generation endpoint, text form fields that are not text, the simulated backend's
knobs from a tenant, WAV headers that claim less audio than the data holds, prompts past the model's
context, CORS preflight without a credential, and request lines and headers past the app's limits."""

from __future__ import annotations

import logging
import struct
import uuid
from typing import Any

import pytest

from gateway.app import header_bytes_max, uri_bytes_max
from gateway.http import json_depth_max
from tests.harness import Gateway
from workers.media import wav_audio

generation_bodies: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "sim-chat-small", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": "sim-chat-small", "prompt": "hi"},
    "/v1/embeddings": {"model": "sim-embed-small", "input": "hi"},
    "/v1/images/generations": {"model": "sim-image", "prompt": "a cat", "size": "1024x1024"},
    "/v1/audio/speech": {"model": "sim-tts", "input": "hi", "voice": "alloy"},
    "/v1/videos/generations": {"model": "sim-video", "prompt": "a cat", "duration": 1},
}


@pytest.fixture(scope="module")
def org(gw: Gateway) -> str:
    return gw.organization("enterprise", credits="100")


@pytest.fixture(scope="module")
def key(gw: Gateway, org: str) -> str:
    return gw.key(org, ["user:read", "user:write", "admin:read"])[0]


def assert_error(response: Any, status: int, code: str, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}, error
    assert error["code"] == code and error["param"] == param and error["message"], error
    assert response.headers["x-request-id"].startswith("req_")
    return error


def _nested(body: dict[str, Any], depth: int) -> bytes:
    """``body`` with a field nested ``depth`` arrays deep."""
    text = repr(body).replace("'", '"')
    return (text[:-1] + ', "extra": ' + "[" * depth + "]" * depth + "}").encode()


def balance_micros(gw: Gateway, org: str) -> int:
    response = gw.admin("GET", f"/v1/organizations/{org}/balance")
    assert response.status_code == 200, response.text
    return int(response.json()["amount_micros"])


# --- deep JSON ---


@pytest.mark.parametrize("depth", [json_depth_max + 1, 100_000])
@pytest.mark.parametrize("path", list(generation_bodies))
def test_json_nested_too_deep_is_a_400_on_every_generation_endpoint(
    gw: Gateway, key: str, path: str, depth: int
) -> None:
    body = _nested(generation_bodies[path], depth)
    response = gw.call("POST", path, key, content=body, headers={"content-type": "application/json"})
    assert_error(response, 400, "invalid_json")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
def test_json_nested_within_the_limit_runs(gw: Gateway, key: str, path: str) -> None:
    body = _nested(generation_bodies[path], json_depth_max - 2)
    response = gw.call("POST", path, key, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


# --- multipart text fields that are not text ---


def _form(model_part: bytes, boundary: str = "tollgateTest") -> tuple[bytes, dict[str, str]]:
    audio = wav_audio(500, b"voice")
    body = (
        f"--{boundary}\r\n".encode()
        + model_part
        + f"\r\n--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n'
        + audio
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


@pytest.mark.parametrize(
    "model_part",
    [
        b'Content-Disposition: form-data; name="model"\r\n\r\n\xff\xfe\xfa',
        b'Content-Disposition: form-data; name="model"\r\nContent-Type: text/plain; charset=no-such-charset\r\n\r\n'
        b"sim-whisper",
    ],
    ids=["invalid-utf8", "unknown-charset"],
)
def test_a_form_text_field_that_is_not_text_is_a_400(gw: Gateway, key: str, model_part: bytes) -> None:
    body, headers = _form(model_part)
    assert_error(
        gw.call("POST", "/v1/audio/transcriptions", key, content=body, headers=headers), 400, "invalid_encoding"
    )


def test_a_form_with_a_declared_charset_that_fits_runs(gw: Gateway, key: str) -> None:
    part = (
        b'Content-Disposition: form-data; name="model"\r\nContent-Type: text/plain; charset=latin-1\r\n\r\nsim-whisper'
    )
    body, headers = _form(part)
    assert gw.call("POST", "/v1/audio/transcriptions", key, content=body, headers=headers).status_code == 200


# --- the simulated backend's knobs ---


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "sim-chat-small", "messages": [], "sim": {"token_ms": 7500}}',
        b'{"model": "sim-chat-small", "messages": [], "\\u0073im": {"token_ms": 7500}}',
    ],
    ids=["plain", "escaped-key"],
)
def test_a_tenant_cannot_use_the_simulated_backends_knobs(gw: Gateway, key: str, body: bytes) -> None:
    response = gw.call("POST", "/v1/chat/completions", key, content=body, headers={"content-type": "application/json"})
    assert_error(response, 400, "unsupported_parameter", "sim")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/responses", {"model": "sim-chat-small", "input": "hi"}),
        ("/v1/messages", {"model": "sim-chat-small", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}),
    ],
)
def test_the_dialect_routes_refuse_the_knobs_too(gw: Gateway, key: str, path: str, body: dict[str, Any]) -> None:
    response = gw.call("POST", path, key, json={**body, "sim": {"token_ms": 7500}})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "unsupported_parameter" and "'sim'" in response.text


def test_a_body_that_only_mentions_sim_runs(gw: Gateway, key: str) -> None:
    body = {"model": "sim-chat-small", "messages": [{"role": "user", "content": "simulate \\u0041 sim"}]}
    assert gw.call("POST", "/v1/chat/completions", key, json=body).status_code == 200


# --- WAV metering from the data present ---

_rate = 8000  # 16-bit mono: 16,000 bytes a second


def _transcribe(gw: Gateway, key: str, audio: bytes) -> Any:
    files = {"file": ("a.wav", audio, "audio/wav")}
    return gw.call("POST", "/v1/audio/transcriptions", key, data={"model": "sim-whisper"}, files=files)


def test_a_wav_whose_data_chunk_claims_one_second_over_ninety_is_billed_ninety(gw: Gateway, key: str) -> None:
    audio = wav_audio(90_000, b"long", sample_rate=_rate)
    claims_one_second = audio[:40] + struct.pack("<I", 2 * _rate) + audio[44:]
    response = _transcribe(gw, key, claims_one_second)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["seconds"] == 90


def test_a_wav_with_an_empty_data_chunk_before_a_large_one_is_billed_the_large_one(gw: Gateway, key: str) -> None:
    audio = wav_audio(60_000, b"long", sample_rate=_rate)
    empty_then_full = audio[:36] + b"data" + struct.pack("<I", 0) + audio[36:]
    response = _transcribe(gw, key, empty_then_full)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["seconds"] == 60


@pytest.mark.parametrize("rate", [4_000_000_000, 400_000, 999])
def test_a_wav_header_rate_no_audio_has_is_a_400(gw: Gateway, key: str, rate: int) -> None:
    audio = wav_audio(90_000, b"long", sample_rate=_rate)
    # The rate, and the byte rate derived from it, in the fmt chunk.
    forged = audio[:24] + struct.pack("<II", rate, min(rate * 2, 0xFFFFFFFF)) + audio[32:]
    assert_error(_transcribe(gw, key, forged), 400, "invalid_file", "file")


# --- prompts past the model's context ---


def test_a_chat_prompt_past_the_models_context_is_a_400_and_charges_nothing(gw: Gateway, org: str, key: str) -> None:
    before = balance_micros(gw, org)
    body = {"model": "sim-chat-small", "messages": [{"role": "user", "content": "a " * 40_000}], "max_tokens": 8}
    error = assert_error(
        gw.call("POST", "/v1/chat/completions", key, json=body), 400, "context_length_exceeded", "messages"
    )
    assert "32768" in error["message"]
    assert error["type"] == "invalid_request_error"
    assert balance_micros(gw, org) == before


def test_a_completion_prompt_past_the_models_context_is_a_400(gw: Gateway, key: str) -> None:
    body = {"model": "sim-chat-small", "prompt": "word " * 33_000, "max_tokens": 8}
    assert_error(gw.call("POST", "/v1/completions", key, json=body), 400, "context_length_exceeded", "prompt")


def test_a_prompt_that_fits_with_its_output_limit_runs(gw: Gateway, key: str) -> None:
    body = {"model": "sim-chat-small", "messages": [{"role": "user", "content": "a " * 30_000}], "max_tokens": 8}
    response = gw.call("POST", "/v1/chat/completions", key, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] > 30_000


# --- preflight and the server's limits ---


def test_a_cors_preflight_needs_no_credential_and_logs_no_error(gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    headers = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
    }
    response = gw.call("OPTIONS", "/v1/chat/completions", headers=headers)
    assert response.status_code == 204, response.text
    assert response.headers["access-control-allow-origin"] in ("*", "https://app.example")
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "idempotency-key" in response.headers["access-control-allow-headers"].lower()
    plain = gw.call("OPTIONS", "/v1/organizations/org_x/credits")
    assert plain.status_code == 204, plain.text
    assert "POST" in plain.headers["allow"]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_cross_origin_answer_exposes_the_request_id(gw: Gateway, key: str) -> None:
    response = gw.call("GET", "/v1/models", key, headers={"Origin": "https://app.example"})
    assert response.status_code == 200
    assert "x-request-id" in response.headers["access-control-expose-headers"]


def test_a_uri_past_the_limit_is_a_414_in_the_envelope(gw: Gateway, key: str) -> None:
    response = gw.call("GET", "/v1/models", key, params={"q": "a" * uri_bytes_max})
    assert_error(response, 414, "uri_too_long")


def test_headers_past_the_limit_are_a_431_in_the_envelope(gw: Gateway, key: str) -> None:
    response = gw.call("GET", "/v1/models", key, headers={"x-filler": "a" * header_bytes_max})
    assert_error(response, 431, "headers_too_large")


# --- price books that would break "the hold bounds the capture" ---


def _book(version: str, **model: Any) -> dict[str, Any]:
    price = {"model": "probe", "category": "chat", "pool": "default", "input_token_rate": 1000, **model}
    return {"version": version, "models": {"probe": price}}


@pytest.mark.parametrize(
    "model",
    [
        {
            "context_tiers": [
                {"above_tokens": 10, "input_token_rate": -5, "cached_input_token_rate": 0, "output_token_rate": 0}
            ]
        },
        {"category": "image", "image_variant_rates": {"1024x1024/hd": -1}},
        {
            "output_token_rate": 3000,
            "context_tiers": [
                {"above_tokens": 64, "input_token_rate": 1000, "cached_input_token_rate": 0, "output_token_rate": 1000}
            ],
        },
        {"minimum_charge_micros": -1},
    ],
    ids=["negative-tier-rate", "negative-variant-rate", "cheaper-higher-tier", "negative-minimum"],
)
def test_a_price_book_that_is_not_monotonic_is_refused(gw: Gateway, model: dict[str, Any]) -> None:
    version = f"probe-{uuid.uuid4().hex[:8]}"
    response = gw.admin("POST", "/v1/price-books", json=_book(version, **model))
    assert_error(response, 400, "invalid_price_book", "models")
    assert version not in gw.admin("GET", "/v1/price-books").json()["versions"]
