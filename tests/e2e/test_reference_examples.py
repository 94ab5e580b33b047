"""Every curl example of the five reference documents, and every Python OpenAI SDK snippet they show,
read from the documents themselves (tests/e2e/documents.py) and run against one `tollgate dev` with
only the host and the key changed. Each must answer 2xx, and each charged answer reconciles: the cost
its ``usage`` states (``cost_usd``) is its ``x-credits-used``, the organization's balance drop and
what its usage rows record (``GET /v1/account/usage``'s window total).

What else is changed, and why (nothing here is reachable from this machine, or it names an id only
an earlier answer gives):

- the hosts (``https://api.empiriolabs.ai``, ``https://api.casola.ai``) become the dev server's;
- the key: ``$EMPIRIOLABS_API_KEY`` and ``$CASOLA_API_KEY`` are set in the shell's environment, and
  the literal placeholders ``YOUR_API_TOKEN`` and ``YOUR_TOKEN`` are replaced by the key;
- ``https://example.com/...`` (an image, a recording) becomes a local HTTP server this test starts,
  which serves a PNG for an image path and short WAV or MP3 audio for an audio path (the dev server
  may fetch it: ``TOLLGATE_FILE_URL_PRIVATE_ALLOWED``);
- ids an earlier example's answer gives: ``job_01HV3K...`` (the video job), ``task_01HV3K...`` (the
  agent task), ``{requestId}`` (the Fal submission), ``req_abc123`` (the quickstart's async image),
  ``agent_abc123`` and ``agent_batch123`` (the agents created before), ``org_xyz`` (the organization);
- files a command uploads (``recording.mp3``, ``meeting.mp3``) are real short MP3 audio in the
  command's working folder;
- curl gets ``-sS --fail-with-body -D headers.txt`` (quiet, an HTTP error fails the command, the
  answer's headers kept), and bash runs each command with ``pipefail`` (the ``| jq`` examples).

Examples that poll a job (the video, the Fal requests) are run again until the job ends. Each example,
or each chain of examples that depend on one another, runs on an organization of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import example_runs
from tests.e2e.documents import (
    all_documents,
    casola_chat,
    casola_host,
    casola_quickstart,
    casola_reference,
    curls,
    empiriolabs,
    empiriolabs_host,
    provider_compat,
    python_snippets,
)
from tests.e2e.example_runs import Account, balance, job_cost, reconciled, recording_mp3, stated_cost
from tests.support import Dev, served_media
from workers import media

pytestmark = [pytest.mark.slow]

# The curl commands each document holds: a new one fails test_every_curl_example_is_run until it is.
expected_curls = {empiriolabs: 30, casola_reference: 16, casola_chat: 3, casola_quickstart: 5, provider_compat: 0}
expected_python = {empiriolabs: 1, casola_reference: 0, casola_chat: 1, casola_quickstart: 1, provider_compat: 0}
prefixes = {
    empiriolabs: "EL",
    casola_reference: "CR",
    casola_chat: "CC",
    casola_quickstart: "CQ",
    provider_compat: "PC",
}

# Examples that run in order on one organization: each after the one whose answer fills its placeholder.
chains = (
    ("EL-09", "EL-10"),  # a video job, then its poll
    ("EL-20", "EL-21", "EL-22"),  # an agent task, its poll, its messages
    ("CR-09", "CR-10"),  # a Fal submission, then its poll
    ("CR-12", "CR-13"),  # an agent, then its run
    ("CR-14", "CR-15"),  # a map agent, then its run
    ("CQ-03", "CQ-04"),  # the quickstart's async image, then its poll at the Fal path
)


def _agent_id(answer: dict[str, Any]) -> str:
    agent = answer.get("agent")
    return str((agent if isinstance(agent, dict) else answer)["id"])


# Placeholders each example takes from earlier answers (by example id) or from the organization.
Fill = Callable[[dict[str, Any], str], dict[str, str]]
fills: dict[str, Fill] = {
    "EL-10": lambda answers, org: {"job_01HV3K...": answers["EL-09"]["job_id"]},
    "EL-21": lambda answers, org: {"task_01HV3K...": answers["EL-20"]["task_id"]},
    "EL-22": lambda answers, org: {"task_01HV3K...": answers["EL-20"]["task_id"]},
    "CR-10": lambda answers, org: {"{requestId}": answers["CR-09"]["request_id"]},
    "CR-13": lambda answers, org: {"agent_abc123": _agent_id(answers["CR-12"])},
    "CR-15": lambda answers, org: {"agent_batch123": _agent_id(answers["CR-14"])},
    "CQ-04": lambda answers, org: {"req_abc123": answers["CQ-03"]["id"]},
    "CR-16": lambda answers, org: {"org_xyz": org},
}
# Examples that poll a job: run again until it ends (its status, in the example's vocabulary).
polls: dict[str, tuple[str, ...]] = {
    "EL-10": ("completed", "failed"),
    "EL-21": ("completed", "failed", "stopped"),  # an agent task
    "CR-10": ("COMPLETED", "FAILED"),
    "CQ-04": ("COMPLETED", "FAILED"),
}


# Examples whose answer starts work charged after it (a Casola agent's run: its nodes' sub-jobs): the
# run is read at its ``poll_url`` until it ends, and the cost it states is charged.
runs_polled = ("CR-13", "CR-15")


# Examples answered 202 with a job charged when it ends (the 3D generation, whose document shows no poll
# command): the job is read at its ``poll_url`` until it ends, and the cost its result states is charged.
jobs_polled = ("EL-23",)


def run_cost(dev: Dev, account: Account, answer: dict[str, Any]) -> Decimal:
    url = dev.base_url + answer["run"]["poll_url"]
    deadline = time.monotonic() + 90
    while True:
        polled = httpx.get(url, headers={"Authorization": f"Bearer {account.key}"})
        assert polled.status_code == 200, polled.text
        run = json.loads(polled.text, parse_float=Decimal)["run"]
        if run["status"] in ("completed", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert run["status"] == "completed", run
    return Decimal(str(run["cost_usd"]))


def example_ids() -> dict[str, str]:
    """Every curl example by id (``EL-09``: EmpirioLabs' ninth), its command as the document shows it."""
    return {f"{prefixes[c.document]}-{c.number:02d}": c.command for d in all_documents for c in curls(d)}


def scenarios() -> list[tuple[str, ...]]:
    chained = {example for chain in chains for example in chain}
    alone = [(example,) for example in example_ids() if example not in chained]
    return sorted([*chains, *alone])


def test_every_curl_example_is_run() -> None:
    """The documents hold exactly the expected curl commands and Python snippets, and every curl runs
    in one scenario below: a new example fails here until the harness runs it."""
    assert {document: len(curls(document)) for document in all_documents} == expected_curls
    assert {document: len(python_snippets(document)) for document in all_documents} == expected_python
    run = [example for scenario in scenarios() for example in scenario]
    assert sorted(run) == sorted(example_ids()) and len(run) == len(set(run)) == sum(expected_curls.values())
    assert set(fills) | set(polls) <= set(example_ids())


@pytest.fixture(scope="module")
def example_dot_com() -> Iterator[str]:
    with example_runs.example_dot_com() as site:
        yield site


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    with example_runs.dev_fetching_urls(tmp_path_factory.mktemp("reference-examples")) as server:
        yield server


@pytest.fixture
def account(dev: Dev) -> Account:
    return Account.opened(dev)


# --- running one example ---


@dataclass(frozen=True)
class Ran:
    status: int
    headers: dict[str, str]
    stdout: str
    folder: Path

    def json(self) -> Any:
        return json.loads(self.stdout, parse_float=Decimal)

    def documents(self) -> list[Any]:
        """Every JSON value the command printed (``jq`` prints one per curl), or every SSE event's."""
        if self.stdout.lstrip().startswith(("data:", "event:")):
            return [
                json.loads(line.removeprefix("data:").strip(), parse_float=Decimal)
                for line in self.stdout.splitlines()
                if line.startswith("data:") and line.removeprefix("data:").strip() not in ("", "[DONE]")
            ]
        decoder, text, found, at = json.JSONDecoder(parse_float=Decimal), self.stdout, [], 0
        while at < len(text.rstrip()):
            value, at = decoder.raw_decode(text, len(text) - len(text[at:].lstrip()))
            found.append(value)
        return found


def _headers(path: Path) -> tuple[int, dict[str, str]]:
    """The last answer's status and headers in a ``curl -D`` file."""
    text = path.read_bytes().decode(errors="replace")  # read_text would turn the CRLFs into newlines
    blocks = [block for block in text.split("\r\n\r\n") if block.startswith("HTTP/")]
    status_line, *lines = blocks[-1].split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers


def run_curl(command: str, dev: Dev, account: Account, site: str, folder: Path, placeholders: dict[str, str]) -> Ran:
    """The command with only what the module doc lists changed, run by bash in ``folder``."""
    for host in (empiriolabs_host, casola_host):
        command = command.replace(host, dev.base_url)
    command = command.replace("https://example.com/", site)
    for placeholder, value in {**placeholders, "YOUR_API_TOKEN": account.key, "YOUR_TOKEN": account.key}.items():
        command = command.replace(placeholder, value)
    assert command.startswith("curl "), command
    command = "curl -sS --fail-with-body -D headers.txt " + command.removeprefix("curl ")
    environment = {**os.environ, "EMPIRIOLABS_API_KEY": account.key, "CASOLA_API_KEY": account.key}
    done = subprocess.run(
        ["bash", "-c", "set -o pipefail\n" + command],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
    status, headers = _headers(folder / "headers.txt")
    assert 200 <= status < 300, (command, status, done.stdout[-2000:])
    return Ran(status, headers, done.stdout, folder)


def answer_cost(ran: Ran) -> Decimal | None:
    """What the answer says it cost: ``usage.cost_usd`` (the body, the job's result, the stream's last
    usage) and ``x-credits-used``, which must agree when both are there."""
    header = ran.headers.get("x-credits-used")
    answers = ran.documents() if ran.stdout.strip() else []
    stated = stated_cost(answers[-1] if len(answers) == 1 else answers)
    if len(answers) == 1 and isinstance(answers[0], dict) and answers[0].get("cost_usd") is not None and stated:
        assert Decimal(str(answers[0]["cost_usd"])) == stated, answers[0]  # a job's cost is its result's
    if header is not None and stated is not None:
        assert Decimal(header) == stated, (header, stated)
    return stated if stated is not None else (Decimal(header) if header is not None else None)


def run_example(example: str, dev: Dev, account: Account, site: str, folder: Path) -> Ran:
    command = example_ids()[example]
    placeholders = fills[example](account.answers, account.org) if example in fills else {}
    ran = run_curl(command, dev, account, site, folder, placeholders)
    if example in polls:
        deadline = time.monotonic() + 90
        while str(ran.json().get("status")) not in polls[example] and time.monotonic() < deadline:
            time.sleep(0.25)
            ran = run_curl(command, dev, account, site, folder, placeholders)
        assert str(ran.json().get("status")) == polls[example][0], ran.stdout[-2000:]
    answers = ran.documents() if ran.stdout.strip() else []
    account.answers[example] = answers[0] if len(answers) == 1 else answers
    cost = answer_cost(ran)
    if example in runs_polled:
        cost = run_cost(dev, account, account.answers[example])
    if example in jobs_polled:
        cost = job_cost(dev, account, account.answers[example])
    if cost is not None:
        micros = int(cost * 1_000_000)
        assert micros > 0, (example, cost)
        account.charged += micros
        reconciled(dev, account)
    return ran


# What some examples answer beyond a 2xx and a charge that reconciles.
def _check(example: str, ran: Ran) -> None:
    if example == "EL-03":  # tool calling: the tool's definition is metered (the simulated model answers in text)
        assert ran.json()["usage"]["prompt_tokens"] > len('{"name": "get_weather"}'), ran.json()["usage"]
    elif example == "EL-04":  # vision: the image is metered
        assert ran.json()["usage"]["prompt_tokens_details"]["image_tokens"] > 0
    elif example == "EL-06":  # a streamed completion: text, then the usage
        events = ran.documents()
        assert "".join(e["choices"][0]["text"] for e in events if e.get("choices")) and stated_cost(events)
    elif example == "EL-08":  # four 4K 16:9 images as links, priced at the 4K rate
        answer = ran.json()
        assert len(answer["data"]) == 4 and answer["usage"]["pricing_tier_label"] == "4K", answer["usage"]
        assert media.png_size(served_media(answer["data"][0]["url"], "image/png")) == (3840, 2160)
    elif example == "EL-15":  # verbose_json with words and segments
        answer = ran.json()
        assert answer["words"] and answer["segments"] and answer["usage"]["seconds"] > 0
    elif example == "EL-27":  # a text item and an image item, both embedded and metered
        answer = ran.json()
        assert len(answer["data"]) == 2 and answer["usage"]["prompt_tokens_details"]["image_tokens"] > 0
    elif example == "EL-30":  # the parameter table of wan-2-7-image
        table = {parameter["name"]: parameter for parameter in ran.json()}
        assert "4K" in table["resolution"]["allowed_values"] and "16:9" in table["aspect_ratio"]["allowed_values"]
        assert {"num_images", "thinking_mode", "prompt"} <= set(table)
    elif example == "CR-02":  # the audio itself, saved by --output
        assert media.mp3_duration_ms((ran.folder / "speech.mp3").read_bytes()) > 0


@pytest.mark.parametrize("scenario", scenarios(), ids="+".join)
def test_the_curl_example_runs_as_written(
    scenario: tuple[str, ...], dev: Dev, account: Account, example_dot_com: str, tmp_path: Path
) -> None:
    for name in ("recording.mp3", "meeting.mp3"):  # the files the documents' commands upload
        (tmp_path / name).write_bytes(recording_mp3)
    for example in scenario:
        _check(example, run_example(example, dev, account, example_dot_com, tmp_path))
    reconciled(dev, account)


# --- the Python OpenAI SDK snippets ---

_python_keys = ('"$EMPIRIOLABS_API_KEY"', '"YOUR_API_TOKEN"', '"YOUR_TOKEN"')
# Variables a snippet leaves unprinted, printed after it (on stderr, which the snippet never reads).
_python_printed = {empiriolabs: ("resp",), casola_chat: (), casola_quickstart: ("chat", "image")}


@pytest.mark.parametrize("document", [empiriolabs, casola_chat, casola_quickstart])
def test_the_python_sdk_example_runs_as_written(document: str, dev: Dev, account: Account, tmp_path: Path) -> None:
    (source,) = python_snippets(document)
    for host in (empiriolabs_host, casola_host):
        source = source.replace(host, dev.base_url)
    for placeholder in _python_keys:
        source = source.replace(placeholder, json.dumps(account.key))
    names = _python_printed[document]
    if names:
        dumped = ", ".join(f"{json.dumps(n)}: {n}.model_dump(mode='json')" for n in names)
        source += f"\nimport json, sys\nprint('PRINTED ' + json.dumps({{{dumped}}}), file=sys.stderr)\n"
    (tmp_path / "example.py").write_text(source)
    environment = {name: value for name, value in os.environ.items() if not name.startswith("OPENAI_")}
    done = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (source, done.stdout, done.stderr)
    printed: dict[str, Any] = {}
    for line in done.stderr.splitlines():
        if line.startswith("PRINTED "):
            printed = json.loads(line.removeprefix("PRINTED "), parse_float=Decimal)
    if document == casola_chat:  # the streamed text, printed as it came; a stream states no cost
        assert done.stdout.strip(), done.stdout
        deadline = time.monotonic() + 30
        while balance(dev, account.key) == account.before and time.monotonic() < deadline:
            time.sleep(0.1)
        account.charged = account.before - balance(dev, account.key)
        assert account.charged > 0
    else:
        for name in names:
            cost = printed[name]["usage"]["cost_usd"]
            account.charged += int(Decimal(str(cost)) * 1_000_000)
    if document == casola_quickstart:
        content, url = done.stdout.rstrip("\n").rsplit("\n", 1)
        assert content == printed["chat"]["choices"][0]["message"]["content"]
        assert served_media(url, "image/png").startswith(b"\x89PNG")
    reconciled(dev, account)


def test_the_json_reader_reads_jq_output() -> None:
    """Two pretty-printed JSON values in a row (two ``| jq`` commands) read as two values."""
    ran = Ran(200, {}, '{\n  "a": 1\n}\n[\n  2\n]\n', Path("."))
    assert ran.documents() == [{"a": 1}, [2]]
