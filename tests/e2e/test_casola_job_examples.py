"""The Casola documents' job-API examples, read from the documents themselves and run with curl against
`tollgate dev` with only the host and the key changed (and the documents' placeholders, `{requestId}`,
`req_abc123`, `org_xyz`, filled with real ids): the Fal queue (EX-9, EX-10, EX-11), the quickstart's
async image polled at the Fal path (EX-33, EX-34), model status (EX-13) and token creation (EX-20).
Each charge reconciles: the cost the answer states is the balance drop.

The commands are read as a reader copies them (tests/e2e/documents.py: the API reference is a
flattened web page)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests.e2e.documents import api_reference_curl, casola_host, quickstart_curl
from tests.support import Dev, served_media, usage

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    data_dir = tmp_path_factory.mktemp("casola-examples")
    server = Dev(data_dir, data_dir)
    yield server
    server.stop()


def run(dev: Dev, key: str, command: str, **placeholders: str) -> dict[str, Any]:
    """The command with the host (and placeholders) changed, run by bash with the key in the
    documents' variable; its JSON answer."""
    command = command.replace(casola_host, dev.base_url)
    for placeholder, value in placeholders.items():
        command = command.replace(placeholder, value)
    done = subprocess.run(
        ["bash", "-c", command + " -s --fail-with-body"],
        env={**os.environ, "CASOLA_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    answer: dict[str, Any] = json.loads(done.stdout, parse_float=Decimal)
    return answer


def balance(dev: Dev, key: str) -> int:
    return int(usage(dev.base_url, key)["balance"]["amount_micros"])


def settled(dev: Dev, key: str, expected: int) -> int:
    deadline = time.monotonic() + 30
    while balance(dev, key) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return balance(dev, key)


def poll(dev: Dev, key: str, command: str, **placeholders: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        answer = run(dev, key, command, **placeholders)
        assert answer["status"] in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED", "FAILED"), answer
        if answer["status"] in ("COMPLETED", "FAILED") or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def test_the_fal_queue_examples_run_as_written(dev: Dev) -> None:
    _, key = dev.organization(credits=10)
    before = balance(dev, key)
    # EX-9: sync mode waits for the images.
    sync = run(dev, key, api_reference_curl('"sync_mode": true'))
    assert served_media(sync["images"][0]["url"], "image/png").startswith(b"\x89PNG")
    spent = int(sync["usage"]["cost_micros"])
    assert settled(dev, key, before - spent) == before - spent
    # EX-10 submits (async, the default), EX-11 polls its {requestId}.
    queued = run(dev, key, api_reference_curl("text-to-video"))
    assert queued["status"] == "IN_QUEUE" and queued["request_id"]
    done = poll(dev, key, api_reference_curl("/fal/requests/{requestId}"), **{"{requestId}": queued["request_id"]})
    assert done["status"] == "COMPLETED", done
    assert served_media(done["video"]["url"], "video/")
    spent += int(done["usage"]["cost_micros"])
    assert settled(dev, key, before - spent) == before - spent


def test_the_quickstarts_async_image_polls_at_the_fal_path(dev: Dev) -> None:
    _, key = dev.organization(credits=10)
    before = balance(dev, key)
    accepted = run(dev, key, quickstart_curl('"async": true'))
    assert (accepted["object"], accepted["status"]) == ("image.generation.async", "pending")
    done = poll(dev, key, quickstart_curl("/fal/requests/req_abc123"), req_abc123=accepted["id"])
    assert done["request_id"] == accepted["id"] and done["images"][0]["width"] == 1024
    spent = int(done["usage"]["cost_micros"])
    assert spent == 3_000 and settled(dev, key, before - spent) == before - spent


def test_model_status_and_token_creation_examples(dev: Dev) -> None:
    org, _ = dev.organization(credits=1)
    admin_key = dev.admin.token(org, ["user:read", "user:write", "admin:read", "admin:write"])
    status = run(dev, admin_key, api_reference_curl("/api/model-status"))
    qwen = next(model for model in status["models"] if model["model_id"] == "Qwen/Qwen3.5-4B")
    assert qwen["enabled"] is True and "openai/chat-completion" in qwen["tasks"]
    created = run(dev, admin_key, api_reference_curl("/tokens"), org_xyz=org)
    assert created["token"]["name"] == "CI Pipeline Token" and created["token"]["status"] == "active"
    assert created["token"]["scopes"] == ["user:read", "user:write"] and created["secret"]
