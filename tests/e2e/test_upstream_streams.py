"""Streams through `tollgate dev` in upstream mode, against bench/fake_upstream.py streaming token by
token: every token arrives as its own chunk, and no stream stalls (the 1 s stall of a stream whose last
event and end reached the event loop in two steps stays fixed: gateway/waiters.py).

The fake upstream and the timing client (tests/e2e/stream_timing.py) run as processes of their own: in
the test process, which a thousand earlier tests have grown, their pauses were counted as Tollgate's."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import Dev, FakeUpstreamProcess

streams = 500
tokens = 8
token_ms = 5.0
stall_ms_max = 50.0  # over a stream's expected time: the upstream's own plus what Tollgate adds at the median
runs_max = 3  # see the test's docstring
added_ms_median_max = 30.0  # what Tollgate adds to a stream at the median (about 12-15 ms here)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstreamProcess]:
    upstream = FakeUpstreamProcess(token_ms=token_ms, tokens=tokens)
    yield upstream
    upstream.close()


@pytest.fixture(scope="module")
def dev(fake: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    root = tmp_path_factory.mktemp("dev-upstream")
    running = Dev(root, root, {"TOLLGATE_UPSTREAM_URL": fake.url, "TOLLGATE_IP_REQUESTS_PER_WINDOW_MAX": "1000000"})
    yield running
    running.stop()


def timed_streams(dev: Dev, key: str) -> list[tuple[float, float, list[str], dict[str, Any]]]:
    """``streams`` streamed chats, one at a time, timed by tests/e2e/stream_timing.py."""
    timing = subprocess.run(
        [sys.executable, "-m", "tests.e2e.stream_timing", dev.base_url, key, str(streams)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert timing.returncode == 0, timing.stderr[-4000:]
    results: list[tuple[float, float, list[str], dict[str, Any]]] = json.loads(timing.stdout)
    assert len(results) == streams
    return results


def test_500_streams_one_at_a_time_carry_every_token_and_none_stalls(dev: Dev) -> None:
    """A stream's expected time is the upstream's own plus what Tollgate adds to a stream at the median.
    A stall of Tollgate's shows in every run (the 1 s one this guards against hit a stream in ten); noise
    from this 2-core virtual machine's host does not: with the machine otherwise idle, runs of the same
    code ranged from the slowest stream 11 ms over to 145 ms over (p50 12 to 20 ms), in periods that come
    and go. So a run with a stream over its expected time by more than ``stall_ms_max`` is timed again, up
    to ``runs_max`` runs in all, and every run is printed."""
    _, key = dev.organization()
    upstream_ms = tokens * token_ms
    summaries: list[str] = []
    for _ in range(runs_max):
        results = timed_streams(dev, key)
        for _, _, texts, usage in results:
            assert texts == [f" tok{i}" for i in range(tokens)]  # token by token, as the upstream sent them
            assert usage["completion_tokens"] == tokens and usage["tokens_counted_by"] == "upstream"
        added = sorted(total - upstream_ms for total, _, _, _ in results)
        added_median = added[len(added) // 2]
        slowest_over = added[-1] - added_median
        firsts = sorted(first for _, first, _, _ in results)
        summaries.append(
            f"{streams} streams of {tokens} tokens at {token_ms:g} ms: Tollgate adds p50 {added_median:.1f} ms, "
            f"p99 {added[int(len(added) * 0.99)]:.1f} ms, max {added[-1]:.1f} ms; the slowest is "
            f"{slowest_over:.1f} ms over the expected {upstream_ms + added_median:.1f} ms; first text p50 "
            f"{firsts[len(firsts) // 2]:.1f} ms"
        )
        print(summaries[-1])
        assert added_median <= added_ms_median_max, summaries
        if slowest_over <= stall_ms_max:
            break
    assert slowest_over <= stall_ms_max, summaries


def test_a_client_that_leaves_a_stream_is_charged_for_what_was_generated(dev: Dev, fake: FakeUpstreamProcess) -> None:
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
