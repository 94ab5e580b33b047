"""The reference documents' Node examples (the OpenAI Node SDK, ``openai``, and Anthropic's,
``@anthropic-ai/sdk``), read from the documents themselves and run by ``node`` against `tollgate dev`
with only the host (the SDK's ``baseURL``) and the key changed: Casola's streamed chat (EX-27), its
quickstart's chat and image (EX-32), and EmpirioLabs' chat at the server root (EX-37) and Anthropic
message (EX-38). Each answer is checked, and each charge reconciles: the balance drop is the cost the
answers state (``usage.cost_usd``) and the cost of the usage rows recorded for them.

The snippets are labelled TypeScript but use no type syntax, so node runs them as they are, as ES
modules (``.mjs``: they ``import`` and ``await`` at the top level). Two of them end without printing
what they got (``const resp = ...``, ``const msg = ...``): a line appended after the snippet prints the
variables it leaves as JSON on stderr, which the snippet's own code never reads.

The packages come from ``tests/e2e/node/package-lock.json`` (pinned versions), installed once with
``npm ci`` into a cache folder named by the lockfile's hash (``$XDG_CACHE_HOME/tollgate/node``)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.reference import reference
from tests.support import Dev, served_media, usage

pytestmark = [pytest.mark.slow]

documents = reference.parent if reference.parent.exists() else Path("/work/shared/reference")
packages = Path(__file__).resolve().parent / "node"
hosts = ("https://api.casola.ai", "https://api.empiriolabs.ai")
placeholder_keys = ('"YOUR_API_TOKEN"', '"YOUR_TOKEN"')
# What marks a Node example in the documents: an SDK's import, or a plain fetch call.
node_marker = re.compile(r'import \w+ from "(openai|@anthropic-ai/sdk)";|\bawait fetch\(')


@dataclass(frozen=True)
class Example:
    name: str
    document: str
    source: str  # the snippet as the document shows it
    printed: tuple[str, ...]  # the variables a snippet leaves unprinted, printed after it


def snippets(document: str) -> list[str]:
    """Every Node snippet in ``document``: a fenced ```typescript block, or in a document that lost its
    fences (a flattened web page), the lines from an SDK's import up to the next blank line."""
    text = (documents / document).read_text()
    fenced = re.findall(r"```(?:typescript|javascript|ts|js)[^\n]*\n(.*?)```", text, flags=re.DOTALL)
    if fenced:
        return [block for block in fenced if node_marker.search(block)]
    found = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if node_marker.match(line):
            end = next((n for n in range(index, len(lines)) if not lines[n].strip()), len(lines))
            found.append("\n".join(lines[index:end]) + "\n")
    return found


def examples() -> dict[str, Example]:
    cc = snippets("casola-chat-guide.txt")
    cq = snippets("casola-quickstart-api-integrators.txt")
    el = snippets("empiriolabs-api-reference-openapi.txt")
    assert (len(cc), len(cq), len(el)) == (1, 1, 2), (cc, cq, el)
    return {
        "EX-27": Example("EX-27", "casola-chat-guide.txt", cc[0], ()),
        "EX-32": Example("EX-32", "casola-quickstart-api-integrators.txt", cq[0], ("chat", "image")),
        "EX-37": Example("EX-37", "empiriolabs-api-reference-openapi.txt", el[0], ("resp",)),
        "EX-38": Example("EX-38", "empiriolabs-api-reference-openapi.txt", el[1], ("msg",)),
    }


# Node examples that do not work as the documents show them, with the reason; the test asserts what
# each does today, so fixing the gap fails it until its entry goes.
not_as_documented: dict[str, str] = {}


def test_every_node_example_in_the_documents_is_listed() -> None:
    """The documents hold exactly these Node snippets (no plain fetch example): a new one fails here
    until it is run below (and, if it does not work as shown, listed with the reason in
    ``not_as_documented``)."""
    everywhere = [snippet for path in sorted(documents.glob("*.txt")) for snippet in snippets(path.name)]
    listed = examples()
    assert sorted(everywhere) == sorted(example.source for example in listed.values())
    assert set(not_as_documented) <= set(listed)
    assert not any("fetch(" in snippet for snippet in everywhere)


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """The pinned packages, installed with ``npm ci`` once per lockfile into the cache (in a folder of
    its own, then renamed into place: two test workers may install at once, one keeps its copy)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "node and npm are needed (README: the test command's install steps)"
    manifest = (packages / "package.json").read_bytes() + (packages / "package-lock.json").read_bytes()
    digest = hashlib.sha256(manifest).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tollgate" / "node" / digest
    if not (cache / "node_modules").is_dir():
        staging = cache.with_name(f"{digest}.{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        shutil.copy(packages / "package.json", staging)
        shutil.copy(packages / "package-lock.json", staging)
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=staging,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        try:
            staging.rename(cache)
        except OSError:  # another worker's copy is in place
            shutil.rmtree(staging)
    return cache / "node_modules"


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    data_dir = tmp_path_factory.mktemp("node-examples")
    server = Dev(data_dir, data_dir)
    yield server
    server.stop()


@dataclass(frozen=True)
class Ran:
    stdout: str
    printed: dict[str, Any]  # the variables the appended line printed


def run(example: Example, dev: Dev, key: str, node_modules: Path, folder: Path) -> Ran:
    """The snippet with only the host and key changed, run by node in ``folder`` (next to a link to
    the installed packages)."""
    source = example.source
    assert sum(source.count(host) for host in hosts) == 1, source
    for host in hosts:
        source = source.replace(host, dev.base_url)
    for placeholder in placeholder_keys:
        source = source.replace(placeholder, json.dumps(key))
    if example.printed:
        names = ", ".join(example.printed)
        source += f'\nconsole.error("PRINTED " + JSON.stringify({{ {names} }}));\n'
    link = folder / "node_modules"
    if not link.exists():
        link.symlink_to(node_modules, target_is_directory=True)
    script = folder / f"{example.name}.mjs"
    script.write_text(source)
    environment = {name: value for name, value in os.environ.items() if not name.startswith(("OPENAI_", "ANTHROPIC_"))}
    done = subprocess.run(
        ["node", script.name],
        cwd=folder,
        env={**environment, "EMPIRIOLABS_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (source, done.stdout, done.stderr)
    printed: dict[str, Any] = {}
    for line in done.stderr.splitlines():
        if line.startswith("PRINTED "):
            printed = json.loads(line.removeprefix("PRINTED "), parse_float=Decimal)
    assert bool(printed) == bool(example.printed), done.stderr
    return Ran(done.stdout, printed)


def balance(dev: Dev, key: str) -> int:
    return int(usage(dev.base_url, key)["balance"]["amount_micros"])


def reconciles(dev: Dev, key: str, before: int, stated: list[Decimal] | None) -> int:
    """The balance drop once settled, checked against the answers' stated costs (when they state
    them) and against the usage rows recorded for the organization (a new one per example)."""
    deadline = time.monotonic() + 30
    while True:
        report = usage(dev.base_url, key)
        spent = before - int(report["balance"]["amount_micros"])
        recorded = int(report["window_summary"]["total_cost_micros"])
        if (spent > 0 and spent == recorded) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert spent > 0 and spent == recorded, (spent, recorded)
    if stated is not None:
        assert spent == int(sum(stated) * 1_000_000), (spent, stated)
    return spent


@pytest.fixture
def account(dev: Dev) -> tuple[str, int]:
    _, key = dev.organization(credits=10)
    return key, balance(dev, key)


@pytest.mark.parametrize("name", ["EX-27", "EX-32", "EX-37", "EX-38"])
def test_the_node_example_runs_as_written(
    name: str, dev: Dev, account: tuple[str, int], node_modules: Path, tmp_path: Path
) -> None:
    example = examples()[name]
    key, before = account
    ran = run(example, dev, key, node_modules, tmp_path)
    if name == "EX-27":  # the streamed deltas, written as they come; the stream states no cost
        assert ran.stdout.strip() and not ran.stdout.startswith("undefined"), ran.stdout
        reconciles(dev, key, before, None)
    elif name == "EX-32":
        content, _, url = ran.stdout.rstrip("\n").rpartition("\n")  # console.log(content), then the url
        assert content == ran.printed["chat"]["choices"][0]["message"]["content"] and content
        assert ran.printed["chat"]["model"] == "Qwen/Qwen3.5-4B"
        image = ran.printed["image"]
        assert url == image["data"][0]["url"] and "b64_json" not in image["data"][0], image  # a signed link
        assert served_media(url, "image/png").startswith(b"\x89PNG")  # fetched with no key, as a browser would
        reconciles(dev, key, before, [ran.printed["chat"]["usage"]["cost_usd"], image["usage"]["cost_usd"]])
    elif name == "EX-37":
        resp = ran.printed["resp"]
        assert resp["object"] == "chat.completion" and resp["choices"][0]["message"]["content"], resp
        assert resp["model"] == "deepseek-v4-pro"
        reconciles(dev, key, before, [resp["usage"]["cost_usd"]])
    else:
        msg = ran.printed["msg"]
        assert (msg["type"], msg["role"], msg["model"]) == ("message", "assistant", "deepseek-v4-pro"), msg
        assert msg["content"][0]["type"] == "text" and msg["content"][0]["text"], msg
        assert msg["usage"]["input_tokens"] > 0 and msg["usage"]["output_tokens"] > 0, msg
        reconciles(dev, key, before, [msg["usage"]["cost_usd"]])
