"""Streams through `tollgate dev` in upstream mode, against bench/fake_upstream.py streaming token by
token: every token arrives as its own chunk, and no stream stalls (the 1 s stall of a stream whose last
event and end reached the event loop in two steps stays fixed: gateway/waiters.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import Dev, FakeUpstream

streams = 500
tokens = 8
token_ms = 5.0
stall_ms_max = 50.0


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream(token_ms=token_ms, tokens=tokens)
    yield upstream
    upstream.close()


@pytest.fixture(scope="module")
def dev(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    root = tmp_path_factory.mktemp("dev-upstream")
    running = Dev(root, root, {"TOLLGATE_UPSTREAM_URL": fake.url, "TOLLGATE_IP_REQUESTS_PER_WINDOW_MAX": "1000000"})
    yield running
    running.stop()


def stream_once(client: httpx.Client, key: str) -> tuple[float, float, list[str], dict[str, object]]:
    """(total ms, first content ms, the content chunks, the final usage) of one streamed chat."""
    body = {
        "model": "sim-chat-small",
        "messages": [{"role": "user", "content": "stream me"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = 0.0
    texts: list[str] = []
    usage: dict[str, object] = {}
    with client.stream("POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}) as reply:
        assert reply.status_code == 200, reply.read()
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            content = (chunk["choices"][0]["delta"].get("content") if chunk.get("choices") else "") or ""
            if content:
                texts.append(content)
                first = first or time.perf_counter()
            usage = chunk.get("usage") or usage
    return (time.perf_counter() - started) * 1000, (first - started) * 1000, texts, usage


def test_500_streams_one_at_a_time_carry_every_token_and_none_stalls(dev: Dev, tmp_path: Path) -> None:
    _, key = dev.organization()
    expected_ms = tokens * token_ms
    with httpx.Client(base_url=dev.base_url, timeout=30) as client:
        stream_once(client, key)  # warm-up
        results = [stream_once(client, key) for _ in range(streams)]
    for _, _, texts, usage in results:
        assert texts == [f" tok{i}" for i in range(tokens)]  # token by token, as the upstream sent them
        assert usage["completion_tokens"] == tokens and usage["tokens_counted_by"] == "upstream"
    over = sorted(total - expected_ms for total, _, _, _ in results)
    firsts = sorted(first for _, first, _, _ in results)
    summary = (
        f"{streams} streams of {tokens} tokens at {token_ms:g} ms: over the expected {expected_ms:g} ms "
        f"p50 {over[len(over) // 2]:.1f} ms, max {over[-1]:.1f} ms; first text p50 {firsts[len(firsts) // 2]:.1f} ms"
    )
    print(summary)
    assert over[-1] <= stall_ms_max, summary


def test_a_client_that_leaves_a_stream_is_charged_for_what_was_generated(dev: Dev, fake: FakeUpstream) -> None:
    _, key = dev.organization()
    fake.control(token_ms=20.0, tokens=200)
    try:
        body = {"model": "sim-chat-small", "messages": [{"role": "user", "content": "long"}], "stream": True}
        with (
            httpx.Client(base_url=dev.base_url, timeout=30) as client,
            client.stream("POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}) as r,
        ):
            received = 0
            for line in r.iter_lines():
                if '"content":" tok' in line:
                    received += 1
                if received == 5:
                    break  # the client leaves
        deadline = time.monotonic() + 30
        events: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            usage = httpx.get(f"{dev.base_url}/v1/account/usage", headers={"Authorization": f"Bearer {key}"}).json()
            events = usage["data"]
            if events and usage["balance"]["held_micros"] == 0:
                break
            time.sleep(0.2)
        assert len(events) == 1
        charged_tokens = int(events[0]["tokens"]["output"])
        assert 5 <= charged_tokens < 200  # what was generated until the stop, not the whole reply
    finally:
        fake.control(token_ms=token_ms, tokens=tokens)
