"""EmpirioLabs' text-tool examples, read from the document's "Search and research" and "Detection"
sections and run with curl against `tollgate dev` with only the host and the key changed: Tavily
search with crawl, Perplexity Sonar with geo + date filter (on chat), Exa neural search with subpages,
GPTZero AI-detection and bibliography scan. Each charge reconciles: usage.cost_usd ==
usage.cost_micros == the balance drop (x-credits-used is checked by the HTTP tier, which reads headers);
the research, answer and image analysis paths (YAML examples only, no curl) run through the same
server with the YAML's bodies, and Casola's /openai/v1/pii too."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from tests.reference import reference
from tests.support import Dev, balance_micros, markdown_curl, run_curl, settled_balance

pytestmark = [pytest.mark.slow]

document = reference if reference.exists() else Path("/work/shared/reference/empiriolabs-api-reference-openapi.txt")
empiriolabs_host = "https://api.empiriolabs.ai"
examples = [
    # (block title, what the charge must be in micros: None where it depends on the tokens)
    ("Tavily search with crawl", 16_000),
    ("Perplexity Sonar with geo + date filter", None),
    ("Exa neural search with subpages", None),
    ("GPTZero AI-detection", 100),
    ("GPTZero bibliography scan", None),
]


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    data_dir = tmp_path_factory.mktemp("text-tools")
    server = Dev(data_dir, data_dir)
    yield server
    server.stop()


def test_the_documents_curl_examples_run_as_written_and_reconcile(dev: Dev) -> None:
    _, key = dev.organization(credits=10)
    spent = 0
    before = balance_micros(dev.base_url, key)
    for title, expected in examples:
        command = markdown_curl(document, title)
        assert command.startswith(f"curl {empiriolabs_host}/v1/"), command
        answer = run_curl(command.replace(empiriolabs_host, dev.base_url), "EMPIRIOLABS_API_KEY", key)
        usage = answer["usage"]
        micros = int(usage["cost_micros"])
        assert Decimal(usage["cost_usd"]) * 1_000_000 == micros > 0, (title, usage)
        if expected is not None:
            assert micros == expected, (title, usage)
        spent += micros
        assert settled_balance(dev.base_url, key, before - spent) == before - spent, title
    # what each answered, briefly: the shapes are the HTTP tier's
    tavily = run_curl(
        markdown_curl(document, examples[0][0]).replace(empiriolabs_host, dev.base_url), "EMPIRIOLABS_API_KEY", key
    )
    assert len(tavily["results"]) == 10 and tavily["usage"]["pricing_tier_label"] == "advanced"


def test_the_yaml_examples_without_curl_and_casola_pii(dev: Dev) -> None:
    _, key = dev.organization(credits=10)
    headers = {"Authorization": f"Bearer {key}"}
    bodies = [
        (
            "/v1/answer",
            {"model": "exa-answer", "query": "When was the last total solar eclipse visible from the US mainland?"},
        ),
        (
            "/v1/research",
            {
                "model": "perplexity-advanced-deep-research",
                "query": "State of humanoid-robot startup funding in 2025",
                "reasoning_effort": "high",
                "max_output_tokens": 14000,
                "async": False,
            },
        ),
        (
            "/v1/images/analysis",
            {
                "model": "janus-pro-deepseek",
                "image_url": "https://example.com/photo.jpg",
                "question": "What is in this image?",
            },
        ),
        ("/openai/v1/pii", {"input": "Write to jane.doe@example.com"}),
    ]
    before = balance_micros(dev.base_url, key)
    spent = 0
    for path, body in bodies:
        response = httpx.post(dev.base_url + path, json=body, headers=headers, timeout=60)
        assert response.status_code == 200, (path, response.text)
        usage = json.loads(response.text, parse_float=Decimal)["usage"]
        micros = int(usage["cost_micros"])
        assert (
            Decimal(response.headers["x-credits-used"]) * 1_000_000 == Decimal(usage["cost_usd"]) * 1_000_000 == micros
        )
        spent += micros
        assert settled_balance(dev.base_url, key, before - spent) == before - spent, path
