"""The upstream backend forwards to an OpenAI-compatible server and meters what that server reports."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest

from ledger.pricing import default_price_book, price_micros
from schemas.units import Units
from tests.support import Admin, Role, free_port, usage, wait_until_serving
from workers.backends import BackendError, JobContext, JobOutput
from workers.upstream import Upstream, UpstreamBackend, Upstreams

reported_usage = {
    "prompt_tokens": 120,
    "completion_tokens": 45,
    "total_tokens": 165,
    "prompt_tokens_details": {"cached_tokens": 20},
}


class FakeUpstream(BaseHTTPRequestHandler):
    mode = "ok"
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        FakeUpstream.seen.append(body)
        if FakeUpstream.mode == "error":
            self.send_response(503)
            self.end_headers()
            return
        reply: dict[str, Any] = {
            "id": "upstream-1",
            "object": "chat.completion",
            "created": 1,
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "from upstream"}, "finish_reason": "stop"}
            ],
        }
        if FakeUpstream.mode == "ok":
            reply["usage"] = reported_usage
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), FakeUpstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def upstream_backend(url: str, **options: Any) -> UpstreamBackend:
    return UpstreamBackend(Upstreams({}, Upstream(url=url, **options)))


def run(backend: UpstreamBackend, job: JobContext) -> JobOutput:
    async def once() -> JobOutput:
        try:
            return await backend.run(job)
        finally:
            await backend.close()

    return asyncio.run(once())


def test_meters_the_usage_the_upstream_reports(upstream: str) -> None:
    FakeUpstream.mode = "ok"
    output = run(
        upstream_backend(upstream),
        JobContext("job", "sim-chat-small", "/v1/chat/completions", {"messages": [], "stream_options": {}}),
    )
    assert output.units == Units(input_tokens=100, cached_input_tokens=20, output_tokens=45)
    assert "usage" not in output.result
    # Not streamed: stream false, and never stream_options with it (vLLM answers that with a 400).
    assert FakeUpstream.seen[-1]["stream"] is False and "stream_options" not in FakeUpstream.seen[-1]


def test_no_usage_fails_the_job_rather_than_guessing(upstream: str) -> None:
    FakeUpstream.mode = "no_usage"
    with pytest.raises(BackendError) as caught:
        run(upstream_backend(upstream), JobContext("job", "m", "/v1/chat/completions", {"messages": []}))
    assert caught.value.code == "upstream_no_usage"


def test_server_errors_are_retryable(upstream: str) -> None:
    FakeUpstream.mode = "error"
    with pytest.raises(BackendError) as caught:
        run(upstream_backend(upstream), JobContext("job", "m", "/v1/chat/completions", {"messages": []}))
    assert caught.value.retryable


def test_unreachable_upstream_is_retryable() -> None:
    with pytest.raises(BackendError) as caught:
        run(
            upstream_backend(f"http://127.0.0.1:{free_port()}", connect_timeout_s=2),
            JobContext("job", "m", "/v1/chat/completions", {"messages": []}),
        )
    assert caught.value.code == "upstream_unreachable"


def test_dev_charges_what_the_upstream_reported(upstream: str, tmp_path: Path) -> None:
    FakeUpstream.mode = "ok"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    role = Role(
        "dev-upstream",
        ["dev", "--port", str(port), "--data-dir", str(tmp_path)],
        {"TOLLGATE_ADMIN_TOKEN": "tga_u", "TOLLGATE_UPSTREAM_URL": upstream, "TOLLGATE_KAFKA_BOOTSTRAP": ""},
        tmp_path,
    )
    try:
        wait_until_serving(base_url, role)
        admin = Admin(base_url, "tga_u")
        org = admin.organization()
        admin.grant(org, 1)
        key = admin.token(org)
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0)
        completion = client.chat.completions.create(
            model="sim-chat-small", messages=[{"role": "user", "content": "x" * 200}]
        )
        expected = price_micros(
            default_price_book().models["sim-chat-small"],
            Units(input_tokens=100, cached_input_tokens=20, output_tokens=45),
        )
        assert completion.usage is not None
        assert completion.usage.prompt_tokens == 120 and completion.usage.completion_tokens == 45
        assert (completion.usage.model_extra or {})["cost_micros"] == expected
        assert usage(base_url, key)["balance"]["amount_micros"] == 1_000_000 - expected

        FakeUpstream.mode = "error"
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="sim-chat-small", messages=[{"role": "user", "content": "y"}])
        assert caught.value.status_code == 502
        balance = usage(base_url, key)["balance"]
        assert balance["amount_micros"] == 1_000_000 - expected and balance["held_micros"] == 0
    finally:
        role.stop()
