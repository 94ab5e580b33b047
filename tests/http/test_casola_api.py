"""Casola's core API over Tollgate's routes: the async job API (/api/jobs create, get, cancel) in its
shapes and status vocabulary, each job metered as the request its task names (its charge
reconciled); /api/model-status (EX-13) and /api/catalog; the organization routes under
/api/organizations/{id} (tokens: EX-20, usage, usage/by-token). Errors in the envelope: an unknown or
another organization's job 404, bad bodies 400, scopes."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import pytest

from tests.harness import Gateway
from tests.http.dialects import Account, media_of, reconciles
from tests.reference import reference_validator
from workers import media


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw)


def curl(account: Account, method: str, path: str, body: str | None = None, key: str = "") -> Any:
    headers = {"Authorization": f"Bearer {key or account.key}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    return account.gw.client.request(method, path, headers=headers, content=body)


def poll(account: Account, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = curl(account, "GET", f"/api/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = json.loads(answer.text, parse_float=Decimal)
        assert body["status"] in ("pending", "running", "completed", "failed", "cancelled", "dead_letter")
        if body["status"] not in ("pending", "running"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"{job_id} did not finish")


@pytest.mark.parametrize(
    ("task", "model", "payload", "shape"),
    [
        (
            "openai/chat-completion",
            "Qwen/Qwen3.5-4B",
            {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16},
            "choices",
        ),
        ("fal/text-to-image", "black-forest-labs/FLUX.1-schnell", {"prompt": "a sunset"}, "data"),
        ("openai/image-generation", "flux", {"prompt": "a sunset"}, "data"),
        ("openai/embedding", "sim-embed-small", {"input": "hello"}, "data"),
    ],
)
def test_a_job_is_created_polled_and_charged_as_its_task(
    account: Account, task: str, model: str, payload: dict[str, Any], shape: str
) -> None:
    """EX-12's flow: POST /api/jobs → {id, queue_id}; GET /api/jobs/{id} → {status, result, ...}."""
    before = account.balance_micros()
    created = curl(account, "POST", "/api/jobs", json.dumps({"model_id": model, "task": task, "payload": payload}))
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["id"].startswith("job_") and job["queue_id"] == "default"
    assert (job["status"], job["model_id"], job["task"]) == ("pending", model, task)
    assert isinstance(job["created_at"], int)
    done = poll(account, job["id"])
    assert done["status"] == "completed" and done["error"] is None, done
    assert shape in done["result"] and done["model_id"] == model
    assert isinstance(done["completed_at"], int) and done["completed_at"] >= done["created_at"]
    micros = reconciles(account, before, created.headers["x-request-id"], done["result"]["usage"], None)
    assert micros == done["cost_micros"] > 0 and Decimal(done["cost_usd"]) * 1_000_000 == micros
    # One id on every job API.
    assert curl(account, "GET", f"/v1/jobs/{job['id']}").json()["status"] == "completed"
    assert curl(account, "GET", f"/fal/requests/{job['id']}").json()["status"] == "COMPLETED"


def test_cancel_stops_the_job_and_charges_only_what_ran(account: Account) -> None:
    before = account.balance_micros()
    body = {"model_id": "sim-video", "task": "openai/video-generation", "payload": {"prompt": "long", "duration": 10}}
    created = curl(account, "POST", "/api/jobs", json.dumps(body))
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    cancelled = curl(account, "POST", f"/api/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["cancel_requested"] is True
    done = poll(account, job_id)
    assert done["status"] == "cancelled", done
    deadline = time.monotonic() + 10
    while account.balance_micros() != before - done["cost_micros"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert account.balance_micros() == before - done["cost_micros"]
    assert done["cost_micros"] < 500_000  # less than the whole 10 seconds at 0.05 per second
    again = curl(account, "POST", f"/api/jobs/{job_id}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_already_finished"


def test_unknown_and_foreign_jobs_are_404_in_casolas_envelope(gw: Gateway, account: Account) -> None:
    other = Account(gw)
    body = {"model_id": "sim-embed-small", "task": "openai/embedding", "payload": {"input": "theirs"}}
    theirs = curl(other, "POST", "/api/jobs", json.dumps(body)).json()["id"]
    for method, path in (
        ("GET", "/api/jobs/job_nothing"),
        ("GET", f"/api/jobs/{theirs}"),
        ("POST", f"/api/jobs/{theirs}/cancel"),
        ("POST", "/api/jobs/job_nothing/cancel"),
    ):
        answer = curl(account, method, path)
        assert answer.status_code == 404, answer.text
        error = answer.json()["error"]
        assert (error["code"], error["type"], error["message"]) == ("not_found", "not_found_error", "Job not found.")
    assert curl(other, "GET", f"/api/jobs/{theirs}").status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ("{}", 400, "task"),
        ('{"task": "openai/chat-completion"}', 400, "payload"),
        ('{"task": "no/such", "model_id": "sim-chat-small", "payload": {}}', 400, "task"),
        ('{"task": "openai/embedding", "payload": {"input": "x"}}', 400, "model_id"),
        ('{"task": "openai/embedding", "model_id": "nope", "payload": {"input": "x"}}', 404, "model"),
        ('{"task": "openai/embedding", "model_id": "sim-embed-small", "payload": []}', 400, "payload"),
        ('{"task": "openai/embedding", "model_id": "sim-embed-small", "payload": {}}', 400, "input"),
        ('{"task": "openai/chat-completion", "model_id": "sim-chat-small", "payload": {"messages": []}}', 400, None),
        (
            '{"task": "openai/chat-completion", "model_id": "sim-chat-small", "payload": '
            '{"messages": [{"role": "user", "content": "x"}], "stream": true}}',
            400,
            "payload.stream",
        ),
        (
            '{"task": "fal/text-to-video", "model_id": "fal-ai/flux/schnell", "payload": {"prompt": "x"}}',
            400,
            "model_id",
        ),
        ("not json", 400, None),
        (
            '{"task": "openai/chat-completion", "model_id": "sim-chat-small", "payload": '
            '{"messages": [{"role": "user", "content": "x"}], "sim": {"token_ms": 1000}}}',
            400,
            "payload.sim",
        ),
    ],
)
def test_bad_job_bodies_are_4xx_naming_the_field(account: Account, body: str, status: int, param: str | None) -> None:
    before = account.balance_micros()
    answer = curl(account, "POST", "/api/jobs", body)
    assert answer.status_code == status, answer.text
    if param is not None:
        assert answer.json()["error"]["param"] == param, answer.text
    assert account.balance_micros() == before


def test_jobs_need_their_scopes(gw: Gateway, account: Account) -> None:
    reader, _ = gw.key(account.org, ["user:read"])
    body = {"model_id": "sim-embed-small", "task": "openai/embedding", "payload": {"input": "x"}}
    assert curl(account, "POST", "/api/jobs", json.dumps(body), key=reader).status_code == 403
    assert gw.call("GET", "/api/jobs/job_x").status_code == 401


def test_a_job_the_balance_cannot_cover_is_a_402(gw: Gateway) -> None:
    poor = Account(gw, credits="0.001")
    body = {"model_id": "sim-video", "task": "openai/video-generation", "payload": {"prompt": "x", "duration": 10}}
    answer = curl(poor, "POST", "/api/jobs", json.dumps(body))
    assert answer.status_code == 402 and answer.json()["error"]["code"] == "insufficient_credits", answer.text


def test_model_status_example_ex13(account: Account) -> None:
    """CR "Example: Check Model Status" (EX-13)."""
    answer = account.gw.client.get("/api/model-status", headers={"Authorization": f"Bearer {account.key}"})
    assert answer.status_code == 200, answer.text
    models = {model["model_id"]: model for model in answer.json()["models"]}
    qwen = models["Qwen/Qwen3.5-4B"]
    assert qwen["enabled"] is True and qwen["spec_id"].startswith("spec_")
    assert "openai/chat-completion" in qwen["tasks"]
    flux = models["black-forest-labs/FLUX.1-schnell"]
    assert "fal-ai/flux1-schnell-nunchaku" in flux["fal_slugs"] and "fal/text-to-image" in flux["tasks"]
    assert models["Wan-AI/Wan2.2-TI2V-5B"]["fal_slugs"] == ["fal-ai/wan/v2.2-5b/text-to-video"]
    assert account.gw.client.get("/api/model-status").status_code == 401


def test_catalog_lists_every_model_with_its_rates(account: Account) -> None:
    answer = curl(account, "GET", "/api/catalog")
    assert answer.status_code == 200, answer.text
    cards = {card["id"]: card for card in answer.json()["data"]}
    assert {"flux", "Qwen/Qwen3.5-4B", "Wan-AI/Wan2.2-TI2V-5B"} <= set(cards)
    assert cards["flux"]["pricing_rows"]
    assert account.gw.client.get("/api/catalog").status_code == 401


def test_create_token_example_ex20_and_the_organization_routes(gw: Gateway, account: Account) -> None:
    """CR "Example: Create an API Token" (EX-20), by an organization admin's key; then the token list,
    usage and usage by token under /api/organizations/{id}."""
    admin, admin_id = gw.key(account.org, ["user:read", "user:write", "admin:read", "admin:write"])
    curl(account, "POST", "/openai/v1/embeddings", '{"model": "sim-embed-small", "input": "counted"}', key=admin)
    answer = curl(
        account,
        "POST",
        f"/api/organizations/{account.org}/tokens",
        '{ "name": "CI Pipeline Token", "scopes": ["user:read", "user:write"] }',
        key=admin,
    )
    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert set(created) == {"token", "secret"} and created["secret"]
    token = created["token"]
    assert (token["name"], token["scopes"], token["status"]) == (
        "CI Pipeline Token",
        ["user:read", "user:write"],
        "active",
    )
    assert token["id"].startswith("tok_")
    listed = curl(account, "GET", f"/api/organizations/{account.org}/tokens", key=admin)
    assert listed.status_code == 200 and token["id"] in [t["id"] for t in listed.json()["data"]]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        by_token = curl(account, "GET", f"/api/organizations/{account.org}/usage/by-token", key=admin)
        assert by_token.status_code == 200, by_token.text
        if admin_id in [row["token_id"] for row in by_token.json()["data"]]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(by_token.text)
    usage = curl(account, "GET", f"/api/organizations/{account.org}/usage", key=admin)
    assert usage.status_code == 200 and usage.json()["object"] == "organization_usage" and usage.json()["data"]
    # Another organization's ids do not exist; a key without the admin scope is refused.
    other = Account(gw)
    for path in ("tokens", "usage", "usage/by-token"):
        assert curl(account, "GET", f"/api/organizations/{other.org}/{path}", key=admin).status_code == 404
        assert curl(account, "GET", f"/api/organizations/{account.org}/{path}").status_code == 403
    bad = curl(account, "POST", f"/api/organizations/{account.org}/tokens", '{"name": 5}', key=admin)
    assert bad.status_code == 400


def test_empiriolabs_video_example_answers_processing_and_polls_at_its_own_path(account: Account) -> None:
    """EmpirioLabs "Video generation" (its submit example, verbatim): 202 JobAccepted (``processing``,
    ``poll_url``, ``created_at``); GET /v1/videos/generations/{job_id} in its Job shape to the result."""
    before = account.balance_micros()
    accepted = account.gw.client.post(
        "/v1/videos/generations",
        headers={"Authorization": f"Bearer {account.key}", "Content-Type": "application/json"},
        content="""{
    "model": "seedance-2-0-pro",
    "prompt": "A cinematic dolly shot of a city street at dusk in the rain",
    "resolution": "1080p",
    "aspect_ratio": "16:9",
    "duration": 8,
    "generate_audio": true
  }""",
    )
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    assert job["status"] == "processing" and job["poll_url"] == f"/v1/jobs/{job['job_id']}"
    assert job["created_at"].endswith("Z")
    reference_validator("/v1/videos/generations", "post", "202").validate(job)
    deadline = time.monotonic() + 30
    while True:
        polled = curl(account, "GET", f"/v1/videos/generations/{job['job_id']}")
        assert polled.status_code == 200, polled.text
        state = json.loads(polled.text, parse_float=Decimal)
        assert state["status"] in ("processing", "completed", "failed")
        assert set(state) >= {"job_id", "status", "progress", "created_at", "completed_at", "result", "error"}
        reference_validator("/v1/jobs/{job_id}").validate(json.loads(polled.text))
        if state["status"] != "processing" or time.monotonic() > deadline:
            break
        assert state["result"] is None and state["completed_at"] is None
        time.sleep(0.05)
    assert state["status"] == "completed" and state["progress"] == 1 and state["error"] is None, state
    assert state["result"]["data"][0]["content_type"] == "video/x-msvideo"
    # EX-114: result.data[].url, a link the gateway serves (no bytes inline)
    video = state["result"]["data"][0]
    assert "b64_json" not in video and media.video_info(media_of(account.gw, video["url"], "video/x-msvideo"))[0] > 0
    micros = reconciles(account, before, accepted.headers["x-request-id"], state["result"]["usage"], None)
    assert micros == 8 * 50_000  # 8 seconds at 0.05 credits per second
    # The same job at the openai prefix; another kind of job, an unknown id: 404.
    assert curl(account, "GET", f"/openai/v1/videos/generations/{job['job_id']}").status_code == 200
    embedding = curl(account, "POST", "/v1/embeddings", '{"model": "sim-embed-small", "input": "x", "async": true}')
    other_job = embedding.json()["job_id"]
    for unknown in (other_job, "job_nothing"):
        answer = curl(account, "GET", f"/v1/videos/generations/{unknown}")
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "job_not_found"
