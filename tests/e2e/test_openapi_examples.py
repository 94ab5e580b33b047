"""Every requestBody example of EmpirioLabs' OpenAPI document (``examples:`` of each operation, read
from the document as it is: tests/reference.py) sent verbatim to one `tollgate dev`, and the GET
endpoints the document gives a response schema, with its documented query parameter values.

Each example must answer 2xx with a status the document gives the operation; its JSON answer
validates against the response schema the document gives that path and status; an async answer
(a ``poll_url``: the JobAccepted envelope, an agent task) is read until it ends and validated against
the job's (or the task's) schema; and the charge reconciles: ``usage.cost_usd`` (of the answer, the
stream's last event or the ended job) equals ``x-credits-used`` where both are given, the balance
drop and the usage rows' total.

What is changed in a body, and why: ``https://example.com/...`` becomes a local HTTP server
(tests/e2e/example_runs.py) the dev server may fetch, and an id only an earlier answer gives
(``job_01HV3KABCDE``: the video to extend; ``task_01HV3K...``: the agent task to follow up) is that
answer's. Examples that depend on one another run in order on one organization."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.e2e import example_runs
from tests.e2e.example_runs import Account, polled_until_ended, reconciled, stated_cost
from tests.reference import document, reference_validator
from tests.support import Dev

pytestmark = [pytest.mark.slow]

# The requestBody examples the document holds: a new one fails test_every_example_is_run until it is.
expected_examples = 34


@dataclass(frozen=True)
class Example:
    path: str
    name: str
    body: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.path}#{self.name}"


def request_examples() -> dict[str, Example]:
    """Every JSON requestBody example of the document's POST operations, by ``path#name``."""
    found = {}
    for path, operations in document()["paths"].items():
        request = operations.get("post", {}).get("requestBody", {})
        for name, example in request.get("content", {}).get("application/json", {}).get("examples", {}).items():
            found[f"{path}#{name}"] = Example(path, name, example["value"])
    return found


# Examples that run in order on one organization: each after the one whose answer fills its placeholder.
chains = (
    ("/v1/videos/generations#t2v", "/v1/videos/generations#extend", "/v1/videos/generations#extend_compose"),
    ("/v1/agents/run#start_task", "/v1/agents/run#follow_up"),
)
Fill = Callable[[dict[str, Any]], dict[str, str]]


def _video_job(answers: dict[str, Any]) -> dict[str, str]:
    return {"job_01HV3KABCDE": answers["/v1/videos/generations#t2v"]["job_id"]}


fills: dict[str, Fill] = {
    "/v1/videos/generations#extend": _video_job,
    "/v1/videos/generations#extend_compose": _video_job,
    "/v1/agents/run#follow_up": lambda answers: {"task_01HV3K...": answers["/v1/agents/run#start_task"]["task_id"]},
}
# Where a polled resource's schema is documented, by the start of its poll_url; and the statuses that end it.
poll_schemas = {"/v1/jobs/": "/v1/jobs/{job_id}", "/v1/agents/": "/v1/agents/{task_id}"}
poll_ends = {"/v1/jobs/": ("completed", "failed"), "/v1/agents/": ("completed", "failed", "stopped")}


def scenarios() -> list[tuple[str, ...]]:
    chained = {example for chain in chains for example in chain}
    return sorted([*chains, *((example,) for example in request_examples() if example not in chained)])


def test_every_example_is_run() -> None:
    run = [example for scenario in scenarios() for example in scenario]
    assert len(request_examples()) == expected_examples
    assert sorted(run) == sorted(request_examples()) and len(run) == len(set(run))
    assert set(fills) <= set(request_examples())


@pytest.fixture(scope="module")
def example_dot_com() -> Iterator[str]:
    with example_runs.example_dot_com() as site:
        yield site


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    with example_runs.dev_fetching_urls(tmp_path_factory.mktemp("openapi-examples")) as server:
        yield server


@pytest.fixture
def account(dev: Dev) -> Account:
    return Account.opened(dev)


def _filled(body: dict[str, Any], site: str, placeholders: dict[str, str]) -> dict[str, Any]:
    text = json.dumps(body).replace("https://example.com/", site)
    for placeholder, value in placeholders.items():
        text = text.replace(placeholder, value)
    filled: dict[str, Any] = json.loads(text)
    return filled


def _events(text: str) -> list[Any]:
    """Every JSON ``data:`` of a server-sent event stream."""
    data = [line.removeprefix("data:").strip() for line in text.splitlines() if line.startswith("data:")]
    return [json.loads(item, parse_float=Decimal) for item in data if item not in ("", "[DONE]")]


def _validated(path: str, method: str, status: int, answer: Any) -> None:
    plain = json.loads(json.dumps(answer, default=float))  # the Decimals as JSON numbers
    errors = sorted(reference_validator(path, method, str(status)).iter_errors(plain), key=str)
    assert not errors, (path, status, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]], answer)


def _kind_checked(example: Example, answer: Any) -> None:
    """What the example asks for beyond its schema: the images it asks for (a sync answer's ``data``),
    or a JobAccepted envelope."""
    if isinstance(answer, dict) and answer.get("poll_url"):
        assert {"status", "poll_url"} <= set(answer) and ("job_id" in answer or "task_id" in answer), answer
        return
    asked = example.body.get("num_images_set") or example.body.get("num_images") or example.body.get("n")
    if example.path == "/v1/images/generations":
        assert len(answer["data"]) == (asked or 1) and answer["usage"]["images"] == (asked or 1), (example.id, answer)
    if example.body.get("domain_filter_mode") == "Include":  # Linkup: sources on the included domains only
        domains = {domain.strip() for domain in str(example.body["include_domains"]).split(",")}
        assert {source["url"].split("/")[2] for source in answer["sources"]} <= domains, answer


def _polled(dev: Dev, account: Account, answer: dict[str, Any]) -> dict[str, Any]:
    """The ended job or task an async answer points at, validated against its documented schema."""
    poll_url = str(answer["poll_url"])
    prefix = next(prefix for prefix in poll_schemas if poll_url.startswith(prefix))
    ended = polled_until_ended(dev, account, poll_url, poll_ends[prefix])
    assert ended["status"] == "completed", ended
    _validated(poll_schemas[prefix], "get", 200, ended)
    return ended


def run_example(example: Example, dev: Dev, account: Account, site: str, charged_tasks: dict[str, int]) -> None:
    placeholders = fills[example.id](account.answers) if example.id in fills else {}
    body = _filled(example.body, site, placeholders)
    answered = httpx.post(
        dev.base_url + example.path, json=body, headers={"Authorization": f"Bearer {account.key}"}, timeout=180
    )
    assert 200 <= answered.status_code < 300, (example.id, answered.status_code, answered.text[:2000])
    documented = document()["paths"][example.path]["post"]["responses"]
    assert str(answered.status_code) in documented, (example.id, answered.status_code, list(documented))
    content_type = answered.headers.get("content-type", "")
    if content_type.startswith("text/event-stream"):
        assert "text/event-stream" in documented[str(answered.status_code)]["content"], example.id
        events = _events(answered.text)
        assert events, (example.id, answered.text[:2000])
        cost = stated_cost(events)
        answer: Any = events
    else:
        answer = json.loads(answered.text, parse_float=Decimal)
        _validated(example.path, "post", answered.status_code, answer)
        _kind_checked(example, answer)
        cost = stated_cost(answer)
        if isinstance(answer, dict) and answer.get("poll_url") and cost is None:
            ended = _polled(dev, account, answer)
            total = int(Decimal(str(stated_cost(ended))) * 1_000_000)
            already = charged_tasks.get(answer["poll_url"], 0)  # an agent task's cost spans its turns
            charged_tasks[answer["poll_url"]] = total
            cost = Decimal(total - already) / 1_000_000
    header = answered.headers.get("x-credits-used")
    if header is not None and cost is not None and not (isinstance(answer, dict) and answer.get("poll_url")):
        assert Decimal(header) == cost, (example.id, header, cost)
    assert cost is not None and cost > 0, (example.id, answered.headers, answered.text[:2000])
    account.answers[example.id] = answer
    account.charged += int(cost * 1_000_000)
    reconciled(dev, account)


@pytest.mark.parametrize("scenario", scenarios(), ids="+".join)
def test_the_openapi_example_runs_as_written(
    scenario: tuple[str, ...], dev: Dev, account: Account, example_dot_com: str
) -> None:
    charged_tasks: dict[str, int] = {}
    for example in scenario:
        run_example(request_examples()[example], dev, account, example_dot_com, charged_tasks)
    reconciled(dev, account)


# --- the documented GET endpoints ---

# GET paths with a response schema this test leaves out, and why.
gets_left_out = {
    "/v1/playground/conversations/{conversation_id}": "a conversation is only saved by the Playground UI",
    "/v1/gpu/instances/{instance_id}": "an instance is a GPU rental, not created here",
    "/v1/hosted-agents/instances/{instance_id}": "an instance is a hosted agent, not created here",
    "/v1/hosted-agents/instances/{instance_id}/skills": "an instance is a hosted agent, not created here",
}


def documented_gets() -> list[str]:
    """The GET paths the document gives a JSON 200 schema."""
    return [
        path
        for path, operations in document()["paths"].items()
        if "application/json" in (operations.get("get", {}).get("responses", {}).get("200", {}).get("content") or {})
    ]


def query_cases(path: str) -> list[dict[str, str]]:
    """No query, then each documented value of each query parameter (its example, enum values,
    default; ``true`` for a boolean), one parameter at a time."""
    cases: list[dict[str, str]] = [{}]
    for parameter in document()["paths"][path]["get"].get("parameters", []):
        if parameter.get("in") != "query":
            continue
        schema = parameter.get("schema", {})
        values = [*schema.get("enum", [])]
        for key in ("example", "default"):
            for holder in (parameter, schema):
                if key in holder and holder[key] not in values:
                    values.append(holder[key])
        if schema.get("type") == "boolean":
            values = [True]
        cases += [{parameter["name"]: json.dumps(value).strip('"')} for value in values]
    return cases


def test_every_documented_get_is_checked() -> None:
    assert set(gets_left_out) <= set(documented_gets())
    assert {path for path in documented_gets() if path not in gets_left_out} == set(path_ids)


# Path parameters: the document's example, else an id made by an example above.
def _job_id(dev: Dev, account: Account, site: str) -> str:
    example = request_examples()["/v1/3d/generations#image_to_3d"]
    answered = httpx.post(
        dev.base_url + example.path,
        json=_filled(example.body, site, {}),
        headers={"Authorization": f"Bearer {account.key}"},
        timeout=60,
    )
    assert answered.status_code == 202, answered.text
    return str(answered.json()["job_id"])


def _task_id(dev: Dev, account: Account, site: str) -> str:
    example = request_examples()["/v1/agents/run#start_task"]
    answered = httpx.post(
        dev.base_url + example.path, json=example.body, headers={"Authorization": f"Bearer {account.key}"}, timeout=60
    )
    assert answered.status_code == 202, answered.text
    return str(answered.json()["task_id"])


IdSource = Callable[[Dev, Account, str], str]
path_ids: dict[str, dict[str, IdSource]] = {
    "/v1/models": {},
    "/v1/models/{model_id}": {},
    "/v1/templates": {},
    "/v1/templates/{slug}": {},
    "/v1/images/templates": {},
    "/v1/images/templates/{slug}": {},
    "/v1/videos/templates": {},
    "/v1/videos/templates/{slug}": {},
    "/v1/voices": {},
    "/v1/agents/{task_id}": {"task_id": _task_id},
    "/v1/agents/{task_id}/messages": {"task_id": _task_id},
    "/v1/account/usage": {},
    "/v1/playground/conversations": {},
    "/v1/jobs": {},
    "/v1/jobs/{job_id}": {"job_id": _job_id},
    "/v1/gpu/catalog": {},
    "/v1/gpu/catalog/{slug}": {},
    "/v1/gpu/instances": {},
    "/v1/hosted-agents/config": {},
    "/v1/hosted-agents/instances": {},
}


def _path_example(path: str, name: str) -> str:
    for parameter in document()["paths"][path]["get"].get("parameters", []):
        if parameter.get("in") == "path" and parameter["name"] == name:
            example = parameter.get("example", parameter.get("schema", {}).get("example"))
            assert example is not None, (path, name)
            return str(example)
    raise AssertionError((path, name))


@pytest.mark.parametrize("path", sorted(path_ids))
def test_the_documented_get_answers_its_schema(path: str, dev: Dev, account: Account, example_dot_com: str) -> None:
    url = path
    for name in [part[1:-1] for part in path.split("/") if part.startswith("{")]:
        source = path_ids[path].get(name)
        value = source(dev, account, example_dot_com) if source else _path_example(path, name)
        url = url.replace("{" + name + "}", value)
    for query in query_cases(path):
        answered = httpx.get(
            dev.base_url + url, params=query, headers={"Authorization": f"Bearer {account.key}"}, timeout=30
        )
        assert answered.status_code == 200, (url, query, answered.text[:2000])
        _validated(path, "get", 200, json.loads(answered.text, parse_float=Decimal))
