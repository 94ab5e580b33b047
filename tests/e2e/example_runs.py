"""What the e2e tests that run the reference documents' examples against one `tollgate dev` share: the
local stand-in for ``https://example.com`` (the dev server may fetch it:
``TOLLGATE_FILE_URL_PRIVATE_ALLOWED``), an organization per scenario and the reconciliation of what
the answers stated with the balance drop and the usage rows."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.support import Dev, usage
from workers import media

recording_mp3 = media.mp3_audio(3_000, b"recording")
job_wait_s_max = 90  # how long a job (a video, an agent task) may take on the simulated backends
settle_wait_s_max = 30  # how long the balance and the usage rows may take to show a charge


class _ExampleDotCom(BaseHTTPRequestHandler):
    """Any path: audio for an audio name (WAV or MP3), else a PNG image."""

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path.endswith(".wav"):
            body, content_type = media.wav_audio(3_000, path.encode(), 16_000), "audio/wav"
        elif path.endswith(".mp3"):
            body, content_type = recording_mp3, "audio/mpeg"
        else:
            body, content_type = media.png_image(64, 48, path.encode()), "image/png"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def example_dot_com() -> Iterator[str]:
    """A local HTTP server standing in for ``https://example.com/``: its base URL, ending with ``/``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ExampleDotCom)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def dev_fetching_urls(data_dir: Path) -> Iterator[Dev]:
    """A `tollgate dev` that may fetch media from the local stand-in for example.com."""
    server = Dev(data_dir, data_dir, env={"TOLLGATE_FILE_URL_PRIVATE_ALLOWED": "1"})
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Account:
    org: str
    key: str
    before: int  # the balance before the scenario, micros
    charged: int = 0  # what the answers stated so far, micros
    answers: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def opened(cls, dev: Dev, credits: int = 10) -> Account:
        """A new organization with ``credits`` and a key with every user and admin scope."""
        org, _ = dev.organization(credits=credits)
        key = dev.admin.token(org, ["user:read", "user:write", "admin:read", "admin:write"])
        return cls(org, key, balance(dev, key))


def balance(dev: Dev, key: str) -> int:
    return int(usage(dev.base_url, key)["balance"]["amount_micros"])


def reconciled(dev: Dev, account: Account) -> None:
    """The balance drop and the usage rows' total, once settled, are what the answers stated."""
    deadline = time.monotonic() + settle_wait_s_max
    while True:
        report = usage(dev.base_url, account.key)
        spent = account.before - int(report["balance"]["amount_micros"])
        recorded = int(report["window_summary"]["total_cost_micros"])
        if (spent == recorded == account.charged) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert spent == recorded == account.charged, {"spent": spent, "recorded": recorded, "stated": account.charged}


def stated_cost(value: Any) -> Decimal | None:
    """``usage.cost_usd`` of an answer, of a job's result, or the last one of a stream's events."""
    if isinstance(value, list):
        costs = [cost for item in value if (cost := stated_cost(item)) is not None]
        return costs[-1] if costs else None
    if not isinstance(value, dict):
        return None
    used = value.get("usage")
    if isinstance(used, dict) and used.get("cost_usd") is not None:
        return Decimal(str(used["cost_usd"]))
    result = value.get("result")
    return stated_cost(result) if isinstance(result, dict) else None


def polled_until_ended(
    dev: Dev, account: Account, poll_url: str, ended: tuple[str, ...] = ("completed", "failed")
) -> dict[str, Any]:
    """The resource at ``poll_url`` (a job, an agent task), read until its ``status`` is in ``ended``."""
    deadline = time.monotonic() + job_wait_s_max
    while True:
        polled = httpx.get(dev.base_url + poll_url, headers={"Authorization": f"Bearer {account.key}"})
        assert polled.status_code == 200, polled.text
        found: dict[str, Any] = json.loads(polled.text, parse_float=Decimal)
        if found["status"] in ended or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def job_cost(dev: Dev, account: Account, answer: dict[str, Any]) -> Decimal:
    """The cost a 202 answer's job states when it completes (its result's, which is the job's)."""
    job = polled_until_ended(dev, account, answer["poll_url"])
    assert job["status"] == "completed", job
    stated = Decimal(str(job["result"]["usage"]["cost_usd"]))
    assert stated == Decimal(str(job["cost_usd"])), job
    return stated
