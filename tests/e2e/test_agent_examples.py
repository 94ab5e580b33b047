"""The reference documents' agent examples, read from the documents and run with curl against `tollgate
dev`, with only the host and the key changed, and the documents' placeholder ids (`task_01HV3K...`,
`agent_abc123`, `agent_batch123`) replaced by the ids the create calls returned: EmpirioLabs' "Start a
task", "Poll the task" and "Stream task messages", and Casola's "Create an Agent", "Run an Agent" and
the map-node agent and its run. Each charge reconciles: the cost the answer states is the balance
drop (and, for a task, its `x-credits-used`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.e2e.documents import api_reference_curl, casola_host, documents, empiriolabs, empiriolabs_host
from tests.support import Dev, balance_micros, markdown_curl, run_curl, served_media, settled_balance

pytestmark = [pytest.mark.slow]


def empiriolabs_curl(title: str) -> str:
    """The EmpirioLabs document's ```bash block titled ``title``, as written."""
    return markdown_curl(documents / empiriolabs, title)


def run_empiriolabs(dev: Dev, key: str, command: str, task_id: str = "") -> dict[str, Any]:
    command = command.replace(empiriolabs_host, dev.base_url)
    if task_id:
        command = command.replace("task_01HV3K...", task_id)
    return run_curl(command, "EMPIRIOLABS_API_KEY", key)


def run_casola(dev: Dev, key: str, command: str, **placeholders: str) -> dict[str, Any]:
    command = command.replace(casola_host, dev.base_url)
    for placeholder, value in placeholders.items():
        command = command.replace(placeholder, value)
    return run_curl(command, "CASOLA_API_KEY", key)


def balance(dev: Dev, key: str) -> int:
    return balance_micros(dev.base_url, key)


def settled(dev: Dev, key: str, expected: int) -> int:
    return settled_balance(dev.base_url, key, expected)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    data_dir = tmp_path_factory.mktemp("agent-examples")
    server = Dev(data_dir, data_dir)
    yield server
    server.stop()


def test_empiriolabs_agent_examples_run_as_written(dev: Dev) -> None:
    _, key = dev.organization(credits=10)
    before = balance(dev, key)
    started = run_empiriolabs(dev, key, empiriolabs_curl("Start a task"))
    task_id = started["task_id"]
    assert started["status"] == "queued" and started["poll_url"] == f"/v1/agents/{task_id}"
    deadline = time.monotonic() + 90
    polled = run_empiriolabs(dev, key, empiriolabs_curl("Poll the task"), task_id)
    while polled["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.3)
        polled = run_empiriolabs(dev, key, empiriolabs_curl("Poll the task"), task_id)
    assert polled["status"] == "completed", polled
    messages = run_empiriolabs(dev, key, empiriolabs_curl("Stream task messages"), task_id)
    steps = messages["result"]["messages"]
    assert messages["object"] == "agent.messages" and messages["task_id"] == task_id
    assert steps[0]["content"].startswith("Summarize the top 5 humanoid robotics startups")
    assert steps[-1]["type"] == "answer" and polled["output"] == steps[-1]["content"]
    tokens = sum(s["usage"]["prompt_tokens"] + s["usage"]["completion_tokens"] for s in steps)
    assert polled["usage"]["total_tokens"] == tokens
    cost = polled["usage"]["cost_usd"]
    header = httpx.get(f"{dev.base_url}/v1/agents/{task_id}", headers={"Authorization": f"Bearer {key}"})
    assert Decimal(header.headers["x-credits-used"]) == cost > 0
    spent = int(polled["usage"]["cost_micros"])
    assert Decimal(spent) / 1_000_000 == cost
    assert settled(dev, key, before - spent) == before - spent

    # The same example started again and stopped (the document's stop route; it shows no curl for it):
    # only the steps completed are charged, the rest of the hold comes back.
    again = run_empiriolabs(dev, key, empiriolabs_curl("Start a task"))["task_id"]
    while len(run_empiriolabs(dev, key, empiriolabs_curl("Stream task messages"), again)["result"]["messages"]) < 3:
        time.sleep(0.1)
    stopped = httpx.post(f"{dev.base_url}/v1/agents/{again}/stop", headers={"Authorization": f"Bearer {key}"})
    assert stopped.status_code == 200, stopped.text
    body = json.loads(stopped.text, parse_float=Decimal)
    assert body["status"] == "stopped" and 0 < body["usage"]["cost_micros"] < spent
    assert Decimal(stopped.headers["x-credits-used"]) == body["usage"]["cost_usd"]
    spent += int(body["usage"]["cost_micros"])
    assert settled(dev, key, before - spent) == before - spent


def _polled(dev: Dev, key: str, path: str, ended: Callable[[dict[str, Any]], bool], timeout_s: float) -> dict[str, Any]:
    """``path``'s body (amounts as Decimal) once ``ended`` says so, or after ``timeout_s`` as it is then."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = httpx.get(f"{dev.base_url}{path}", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text
        found: dict[str, Any] = json.loads(response.text, parse_float=Decimal)
        if ended(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _run_until_done(dev: Dev, key: str, agent_id: str, run_id: str) -> dict[str, Any]:
    path = f"/api/agents/{agent_id}/runs/{run_id}"
    return _polled(dev, key, path, lambda body: body["run"]["status"] in ("completed", "failed"), 90)["run"]


def _job_once_completed(dev: Dev, key: str, job_id: str) -> dict[str, Any]:
    """A job as /api/jobs shows it once it is ``completed`` (or after 30 s, as it is then). A run ends
    on its sub-jobs' outcomes (the workers'); the jobs view follows the ledger's events, up to its
    linger later (docs/architecture.md, "The ledger's linger"), so a job read the moment its run ended
    can still show ``queued`` or ``running``."""
    return _polled(dev, key, f"/api/jobs/{job_id}", lambda job: job["status"] == "completed", 30)


def test_casola_agent_examples_run_as_written(dev: Dev) -> None:
    _, key = dev.organization(credits=10)
    before = balance(dev, key)
    agent = run_casola(dev, key, api_reference_curl('"name": "Image Generator"'))["agent"]
    assert agent["name"] == "Image Generator" and agent["id"].startswith("agent_")
    started = run_casola(dev, key, api_reference_curl("agent_abc123/run"), agent_abc123=agent["id"])["run"]
    assert (started["agent_id"], started["status"]) == (agent["id"], "pending")
    assert started["input_params"] == {"prompt": "a sunset over the ocean"} and isinstance(started["created_at"], int)
    done = _run_until_done(dev, key, agent["id"], started["id"])
    assert done["status"] == "completed", done
    assert served_media(done["nodes"]["gen"]["result"]["images[0].url"], "image/png").startswith(b"\x89PNG")
    spent = int(done["cost_micros"])
    assert spent == 3_000 and Decimal(spent) / 1_000_000 == done["cost_usd"]
    assert settled(dev, key, before - spent) == before - spent

    batch = run_casola(dev, key, api_reference_curl('"name": "Batch Image Generator"'))["agent"]
    started = run_casola(dev, key, api_reference_curl("agent_batch123/run"), agent_batch123=batch["id"])["run"]
    done = _run_until_done(dev, key, batch["id"], started["id"])
    assert done["status"] == "completed", done
    generate = done["nodes"]["generate"]
    assert (generate["total"], generate["succeeded"]) == (3, 3) and len(generate["job_ids"]) == 3
    prompts = [item["prompt"] for item in generate["result"]["items"]]
    assert prompts == [
        "a neon cityscape at night",
        "a watercolor forest in autumn",
        "a pencil sketch of a mountain lake",
    ]
    # Each sub-job is a job of its own, charged as one image.
    for job_id in generate["job_ids"]:
        job = _job_once_completed(dev, key, job_id)
        assert job["status"] == "completed" and job["cost_micros"] == 3_000
    spent += int(done["cost_micros"])
    assert int(done["cost_micros"]) == 9_000
    assert settled(dev, key, before - spent) == before - spent
