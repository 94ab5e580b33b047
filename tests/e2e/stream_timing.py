"""Times streamed chats through a running Tollgate, one at a time, in a process of its own:

    python -m tests.e2e.stream_timing BASE_URL API_KEY COUNT

prints a JSON list with one ``[total ms, first content ms, content chunks, final usage]`` per stream
(after one warm-up stream). tests/e2e/test_upstream_streams.py runs it so that what it times is
Tollgate, not the test process: in the pytest process (threads of other fixtures, a heap that a
thousand earlier tests grew) the client's own pauses would count as Tollgate's."""

from __future__ import annotations

import gc
import json
import sys
import time

import httpx

Timed = tuple[float, float, list[str], dict[str, object]]


def stream_once(client: httpx.Client, key: str) -> Timed:
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


def main(base_url: str, key: str, count: int) -> list[Timed]:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        stream_once(client, key)  # warm-up: the connection, and the first request's imports
        gc.collect()
        gc.freeze()  # this process's own pauses are not Tollgate's
        gc.disable()
        return [stream_once(client, key) for _ in range(count)]


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
