"""The reference documents' examples as a reader copies them: every curl command and every Python
OpenAI SDK snippet of the five documents in ``reference/``, read from the documents themselves.

EmpirioLabs' document keeps its fences: each ```bash block holds one or more commands, whose lines
run on while they end with a backslash or leave a quote open. Casola's pages are flattened web pages
that lost their fences: the chat guide and the quickstart keep each command's lines (read the same
way, from a line that starts with ``curl``); the API reference joins them with `` \\ `` (an escaped
space to a shell) and glues prose to some commands' ends, so a command there is taken argument by
argument, as a reader copies it: `` \\ `` as a space, up to its last argument (``-X``, the URL,
``-H "..."``, ``-d '...'``, ``-F name=value``, ``--output file``).

A flattened Python snippet lost its indentation too: it is indented back by the one rule its lines
need (a line ending with ``:`` opens a block that holds every line after it)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.reference import reference

documents = reference.parent if reference.parent.exists() else Path("/work/shared/reference")
empiriolabs = "empiriolabs-api-reference-openapi.txt"
casola_reference = "casola-api-reference.txt"
casola_chat = "casola-chat-guide.txt"
casola_quickstart = "casola-quickstart-api-integrators.txt"
provider_compat = "provider-compat-and-headers.txt"
all_documents = (empiriolabs, casola_reference, casola_chat, casola_quickstart, provider_compat)
casola_host = "https://api.casola.ai"
empiriolabs_host = "https://api.empiriolabs.ai"

# One argument of a flattened curl command, preceded by spaces (the glued prose after the last one
# starts without a space, or runs into an unquoted argument only past what a reader would copy: an
# output file's name ends with its lower-case extension).
_flattened_argument = re.compile(
    r""" +(?:-X [A-Z]+|-N|https?://[^\s"']+|-H "[^"]*"|-d '[^']*'|-F [\w.\[\]]+=(?:"[^"]*"|[^\s"]+)"""
    r"""|--output [\w-]+\.[a-z0-9]+)"""
)


@dataclass(frozen=True)
class Curl:
    document: str
    number: int  # its place among the document's curl commands, from 1
    command: str  # as a reader copies it


def _text(document: str) -> str:
    return (documents / document).read_text()


def _prose(document: str) -> str:
    """The document without EmpirioLabs' OpenAPI YAML (its examples are bodies, not commands)."""
    text = _text(document)
    return text[: text.index("## openapi.yaml")] if "## openapi.yaml" in text else text


def multiline_curls(text: str) -> list[str]:
    """Every command of ``text`` that starts a line with ``curl``: its lines up to the last one that
    neither ends with a backslash nor leaves a single quote open."""
    lines = text.splitlines()
    commands = []
    for index, line in enumerate(lines):
        if not line.startswith("curl "):
            continue
        command = [line]
        while command[-1].endswith("\\") or "\n".join(command).count("'") % 2:
            index += 1
            command.append(lines[index])
        commands.append("\n".join(command))
    return commands


def flattened_curls(text: str) -> list[str]:
    """Every curl command of a flattened page, as a reader copies it (module doc)."""
    commands = []
    for line in text.splitlines():
        line = line.replace(" \\ ", " ")
        for start in re.finditer(r"curl (?=-X |https?://)", line):
            end = start.start() + len("curl")
            while (argument := _flattened_argument.match(line, end)) is not None:
                end = argument.end()
            commands.append(line[start.start() : end])
    return commands


def curls(document: str) -> list[Curl]:
    """The document's curl commands, in order."""
    if document == empiriolabs:
        blocks = re.findall(r"```bash[^\n]*\n(.*?)```", _prose(document), flags=re.DOTALL)
        found = [command for block in blocks for command in multiline_curls(block)]
    elif document == casola_reference:
        found = flattened_curls(_text(document))
    else:
        found = multiline_curls(_text(document))
    return [Curl(document, number, command) for number, command in enumerate(found, start=1)]


def api_reference_curl(marker: str) -> str:
    """The Casola API reference's curl command that contains ``marker``."""
    for curl in curls(casola_reference):
        if marker in curl.command:
            return curl.command
    raise AssertionError(f"no curl with {marker!r} in the API reference")


def quickstart_curl(marker: str) -> str:
    """The Casola quickstart's curl command that contains ``marker``."""
    for curl in curls(casola_quickstart):
        if marker in curl.command:
            return curl.command
    raise AssertionError(f"no curl with {marker!r} in the quickstart")


def _reindented(lines: list[str]) -> str:
    """A flattened snippet indented back: each line ending with ``:`` opens a block holding the rest."""
    depth, out = 0, []
    for line in lines:
        out.append("    " * depth + line.strip())
        if line.rstrip().endswith(":"):
            depth += 1
    return "\n".join(out) + "\n"


def python_snippets(document: str) -> list[str]:
    """The document's Python snippets that use the OpenAI SDK: a fenced ```python block, or in a
    flattened page the lines from ``from openai import OpenAI`` up to the next blank line or the
    next snippet (the Node one, ``import OpenAI from``), indented back."""
    text = _prose(document)
    fenced = re.findall(r"```python[^\n]*\n(.*?)```", text, flags=re.DOTALL)
    if "```" in text:
        return [block for block in fenced if "from openai import OpenAI" in block]
    lines = text.splitlines()
    found = []
    for index, line in enumerate(lines):
        if line.strip() != "from openai import OpenAI":
            continue
        end = index + 1
        while end < len(lines) and lines[end].strip() and not lines[end].startswith("import "):
            end += 1
        found.append(_reindented(lines[index:end]))
    return found
