"""Casola's job APIs through the roles as separate processes on the real broker: a Fal submission
queued and polled to its output (and one in sync_mode), the quickstart's async image polled at the
Fal path, and a /api/jobs job; each charge reconciles in the polled answer's usage, the usage rows, the
balance and the ledger's captures on the topic."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.kafka.test_kafka_dialects import usage_row_micros
from tests.kafka.test_kafka_e2e import Stack, ledger_totals
from tests.support import served_media, usage

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, clickhouse_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(kafka_bootstrap, clickhouse_url, tmp_path_factory.mktemp("fal"))
    yield running
    running.stop()


def send(stack: Stack, key: str, method: str, path: str, body: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    return httpx.request(method, stack.base_url + path, headers=headers, content=body, timeout=120)


def polled(stack: Stack, key: str, path: str, done: tuple[str, ...]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer = send(stack, key, "GET", path)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = json.loads(answer.text, parse_float=Decimal)
        if body["status"] in done:
            return body
        time.sleep(0.1)
    raise AssertionError(f"{path} did not finish")


def test_fal_submit_and_poll_round_trip_through_kafka(stack: Stack, kafka_bootstrap: str) -> None:
    org = stack.admin.organization()
    stack.admin.grant(org, "1")
    key = stack.admin.token(org)
    charges: list[tuple[str, int]] = []

    submitted = send(
        stack, key, "POST", "/fal/fal-ai/wan/v2.2-5b/text-to-video", '{"prompt": "A sunset over the ocean"}'
    )
    assert submitted.status_code == 200, submitted.text
    queued = submitted.json()
    assert queued["status"] == "IN_QUEUE" and queued["status_url"].endswith(
        f"/fal/requests/{queued['request_id']}/status"
    )
    done = polled(stack, key, f"/fal/requests/{queued['request_id']}", ("COMPLETED", "FAILED"))
    assert done["status"] == "COMPLETED", done
    assert served_media(done["video"]["url"], "video/")
    assert done["usage"]["cost_micros"] == 5 * 20_000
    charges.append((submitted.headers["x-request-id"], int(done["usage"]["cost_micros"])))

    sync = send(
        stack, key, "POST", "/fal/fal-ai/flux1-schnell-nunchaku", '{"prompt": "A cat in space", "sync_mode": true}'
    )
    assert sync.status_code == 200, sync.text
    answer = json.loads(sync.text, parse_float=Decimal)
    assert served_media(answer["images"][0]["url"], "image/png").startswith(b"\x89PNG")
    assert Decimal(sync.headers["x-credits-used"]) == answer["usage"]["cost_usd"] == Decimal("0.003")
    charges.append((sync.headers["x-request-id"], int(answer["usage"]["cost_micros"])))

    image = send(
        stack,
        key,
        "POST",
        "/openai/v1/images/generations",
        '{"model": "flux", "prompt": "a sunset timelapse", "async": true}',
    )
    assert image.status_code == 202 and image.json()["object"] == "image.generation.async", image.text
    image_done = polled(stack, key, f"/fal/requests/{image.json()['id']}", ("COMPLETED", "FAILED"))
    assert image_done["status"] == "COMPLETED" and len(image_done["images"]) == 1
    charges.append((image.headers["x-request-id"], int(image_done["usage"]["cost_micros"])))

    body = {
        "model_id": "Qwen/Qwen3.5-4B",
        "task": "openai/chat-completion",
        "payload": {"messages": [{"role": "user", "content": "Hi"}]},
    }
    job = send(stack, key, "POST", "/api/jobs", json.dumps(body))
    assert job.status_code == 202 and job.json()["queue_id"] == "default", job.text
    job_done = polled(stack, key, f"/api/jobs/{job.json()['id']}", ("completed", "failed", "cancelled", "dead_letter"))
    assert job_done["status"] == "completed" and job_done["result"]["choices"], job_done
    charges.append((job.headers["x-request-id"], int(job_done["cost_micros"])))

    statuses = send(
        stack, key, "POST", "/fal/requests/batch", json.dumps({"request_ids": [queued["request_id"], "job_x"]})
    )
    assert [entry["status"] for entry in statuses.json()["requests"]] == ["COMPLETED", "NOT_FOUND"]

    total = sum(micros for _, micros in charges)
    for request_id, micros in charges:
        assert usage_row_micros(stack, key, request_id) == micros
    assert usage(stack.base_url, key)["balance"]["amount_micros"] == 1_000_000 - total
    assert ledger_totals(kafka_bootstrap, org) == (total, len(charges), len(charges))
