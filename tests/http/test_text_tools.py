"""The text tools (issue 18): EmpirioLabs' /v1/search, /v1/research, /v1/answer, /v1/detect and
/v1/images/analysis, and Casola's /openai/v1/pii, metered as every generation endpoint. The
documents' examples (the prose's curl bodies, the OpenAPI YAML's examples) as written there, each
charge reconciled everywhere it shows (usage.cost_usd, x-credits-used, the balance, the usage row) and
recomputed from the catalog's rates; tiers, async research, 402, idempotency, and bad input as a 400
naming the field in the OpenAI envelope."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import pytest

from tests.harness import Gateway
from tests.http.dialects import Account, reconciles
from tests.reference import reference_validator

json_headers = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw)


def _ceil(numerator: int) -> int:
    return -(-numerator // 1_000_000)


def reconciled(account: Account, before: int, response: Any) -> tuple[dict[str, Any], int]:
    """The answer (numbers as Decimal) once usage.cost_usd == x-credits-used == the balance drop ==
    the usage row's cost; and the charge in micros."""
    assert response.status_code == 200, response.text
    body = json.loads(response.text, parse_float=Decimal)
    cost = Decimal(body["usage"]["cost_usd"])
    assert Decimal(response.headers["x-credits-used"]) == cost
    micros = int(cost * 1_000_000)
    assert micros == body["usage"]["cost_micros"] > 0
    assert reconciles(account, before, response.headers["x-request-id"], body["usage"], None) == micros
    return body, micros


def post(account: Account, path: str, content: str, **headers: str) -> Any:
    return account.gw.client.post(
        path, headers={"Authorization": f"Bearer {account.key}", **json_headers, **headers}, content=content
    )


def search_row(account: Account, request_id: str) -> tuple[str, str, int, str, str]:
    """(endpoint, model, search units, variant, tier label) of the request's usage row."""
    sql = (
        "SELECT endpoint, model, search_units, variant, pricing_tier FROM usage_events FINAL"
        " WHERE org_id = {org:String} AND request_id = {rid:String}"
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = account.gw.store.query(sql, {"org": account.org, "rid": request_id})
        if rows:
            endpoint, model, units, variant, tier = rows[0]
            return str(endpoint), str(model), int(units), str(variant), str(tier)
        time.sleep(0.05)
    raise AssertionError(f"no usage row for {request_id}")


def test_tavily_search_with_crawl_example_is_one_advanced_query(account: Account) -> None:
    """EmpirioLabs "Search and research", "Tavily search with crawl", as its curl sends it."""
    before = account.balance_micros()
    response = post(
        account,
        "/v1/search",
        """{
    "model": "tavily-search",
    "query": "latest CRDT research papers 2026",
    "search_depth": "advanced",
    "include_answer": "advanced",
    "max_results": 10,
    "topic": "general"
  }""",
    )
    body, micros = reconciled(account, before, response)
    assert micros == 16_000  # one advanced search: two of Tavily's 0.008 credits
    assert body["query"] == "latest CRDT research papers 2026" and isinstance(body["answer"], str)
    assert len(body["results"]) == 10
    assert {"title", "url", "content", "score", "raw_content"} <= set(body["results"][0])
    usage = body["usage"]
    assert usage["num_search_queries"] == 1 and usage["pricing_tier_label"] == "advanced"
    assert usage["tool_usage"] == {"search": 1} and usage["tool_calls_details"] == {"search": {"invocation": 1}}
    rid = response.headers["x-request-id"]
    assert search_row(account, rid) == ("/v1/search", "tavily-search", 1, "advanced", "advanced")


def test_a_basic_search_costs_half_and_the_catalog_lists_both_tiers(account: Account) -> None:
    before = account.balance_micros()
    response = post(account, "/search", '{"model": "tavily-search", "query": "crdt"}')
    body, micros = reconciled(account, before, response)
    assert micros == 8_000 and body["usage"]["pricing_tier_label"] == "basic" and len(body["results"]) == 5
    card = account.gw.call("GET", "/v1/models/tavily-search", account.key).json()
    rows = {(row["unit"], row["tier"]): row["rate_micros_per_million"] for row in card["pricing_rows"]}
    assert rows[("search_units", "basic")] == 8_000_000_000 and rows[("search_units", "advanced")] == 16_000_000_000
    assert card["supported_endpoints"] == ["/v1/search"] and card["category"] == "tools"


def test_exa_neural_search_with_subpages_example(account: Account) -> None:
    """EmpirioLabs "Exa neural search with subpages": one query of up to 25 results, and every
    summary of a result or subpage as generated tokens."""
    before = account.balance_micros()
    response = post(
        account,
        "/v1/search",
        """{
    "model": "exa-search",
    "query": "alternatives to vector databases",
    "search_type": "neural",
    "category": "research paper",
    "subpages": 3,
    "summary": true
  }""",
    )
    body, micros = reconciled(account, before, response)
    assert body["resolvedSearchType"] == "neural" and len(body["results"]) == 10
    assert all(len(result["subpages"]) == 3 and result["summary"] for result in body["results"])
    tokens = body["usage"]["completion_tokens"]
    assert tokens > 0 and body["usage"]["pricing_tier_label"] == "1-25 results"
    assert micros == _ceil(5_000 * 1_000_000 + tokens * 15_000_000)
    assert body["costDollars"]["total"] == body["usage"]["cost_usd"]


def test_linkup_example_of_the_yaml(account: Account) -> None:
    before = account.balance_micros()
    body = {
        "model": "linkup-deep-search",
        "query": "LLM benchmarks",
        "output_type": "sourcedAnswer",
        "domain_filter_mode": "Include",
        "include_domains": "arxiv.org, openreview.net",
        "enable_inline_citations": True,
    }
    answer, micros = reconciled(account, before, post(account, "/v1/search", json.dumps(body)))
    assert micros == 50_000 and answer["answer"] and len(answer["sources"]) == 5
    # Include: every source is on one of the domains; the answer cites them inline.
    hosts = {source["url"].split("/")[2] for source in answer["sources"]}
    assert hosts == {"arxiv.org", "openreview.net"} and "[1]" in answer["answer"], answer


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"domain_filter_mode": "Include"}, "include_domains"),
        ({"domain_filter_mode": "Sometimes", "include_domains": "arxiv.org"}, "domain_filter_mode"),
        ({"domain_filter_mode": "Include", "include_domains": 7}, "include_domains"),
    ],
)
def test_linkup_domain_filter_refusals(account: Account, fields: dict[str, Any], param: str) -> None:
    before = account.balance_micros()
    body = {"model": "linkup-deep-search", "query": "LLM benchmarks", **fields}
    refused = post(account, "/v1/search", json.dumps(body))
    assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.text
    assert account.balance_micros() == before


def test_linkup_exclude_keeps_the_excluded_domains_out(account: Account) -> None:
    body = {"model": "linkup-deep-search", "query": "LLM benchmarks", "domain_filter_mode": "Exclude"}
    excluded = post(account, "/v1/search", json.dumps({**body, "exclude_domains": ["sources.example.org"]}))
    assert excluded.status_code == 200, excluded.text
    assert all("sources.example.org" not in source["url"] for source in excluded.json()["sources"])


def test_perplexity_sonar_with_geo_and_date_filter_example(account: Account) -> None:
    """EmpirioLabs "Perplexity Sonar with geo + date filter" on /v1/chat/completions: its search
    params accepted, its queries priced at search_context_size high."""
    before = account.balance_micros()
    response = post(
        account,
        "/v1/chat/completions",
        """{
    "model": "perplexity-sonar-pro",
    "messages": [{"role": "user", "content": "Recent FDA approvals"}],
    "search_context_size": "high",
    "search_recency_filter": "week",
    "country": "US",
    "search_mode": "default"
  }""",
    )
    body, micros = reconciled(account, before, response)
    usage = body["usage"]
    queries = usage["num_search_queries"]
    assert queries >= 1 and usage["pricing_tier_label"] == "high"
    tokens = usage["prompt_tokens"] * 3_000_000 + usage["completion_tokens"] * 15_000_000
    assert micros == _ceil(tokens + queries * 14_000 * 1_000_000)
    low = post(
        account,
        "/v1/chat/completions",
        json.dumps({**json.loads(response.request.content), "search_context_size": "low"}),
    )
    assert low.status_code == 200 and low.json()["usage"]["pricing_tier_label"] == "low"
    bad = post(
        account,
        "/v1/chat/completions",
        json.dumps(
            {
                "model": "perplexity-sonar-pro",
                "messages": [{"role": "user", "content": "x"}],
                "search_context_size": "huge",
            }
        ),
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "search_context_size"


def test_gptzero_ai_detection_example(account: Account) -> None:
    before = account.balance_micros()
    response = post(
        account,
        "/v1/detect",
        """{
    "model": "gptzero",
    "input": "The quick brown fox jumps over the lazy dog.",
    "scan_type": "ai_detection",
    "multilingual": false
  }""",
    )
    body, micros = reconciled(account, before, response)
    document = body["documents"][0]
    assert document["predicted_class"] in ("human", "ai", "mixed")
    assert set(document["class_probabilities"]) == {"human", "ai", "mixed"}
    assert [s["sentence"] for s in document["sentences"]] == ["The quick brown fox jumps over the lazy dog."]
    assert body["usage"]["prompt_tokens"] == 10 and "num_search_queries" not in body["usage"]
    assert micros == _ceil(10 * 10_000_000)


def test_gptzero_bibliography_scan_example_looks_each_reference_up(account: Account) -> None:
    before = account.balance_micros()
    response = post(
        account,
        "/v1/detect",
        """{
    "model": "gptzero",
    "scan_type": "bibliography",
    "input": "[1] Smith, J. (2024). Title. Journal, 12(3), 45-67."
  }""",
    )
    body, micros = reconciled(account, before, response)
    citations = body["documents"][0]["citations"]
    assert len(citations) == 1 and citations[0]["text"].startswith("[1] Smith")
    assert body["usage"]["num_search_queries"] == 1
    assert micros == _ceil(body["usage"]["prompt_tokens"] * 10_000_000 + 2_000 * 1_000_000)


def test_exa_answer_example_is_one_call_in_the_documented_shape(account: Account) -> None:
    before = account.balance_micros()
    body = {"model": "exa-answer", "query": "When was the last total solar eclipse visible from the US mainland?"}
    response = post(account, "/v1/answer", json.dumps(body))
    answer, micros = reconciled(account, before, response)
    assert micros == 5_000 and answer["usage"]["requests"] == 1
    assert isinstance(answer["answer"], str) and answer["answer"]
    assert all(set(c) >= {"title", "url", "snippet"} for c in answer["citations"])
    reference_validator("/v1/answer", "post").validate(json.loads(response.text))


def test_research_is_a_job_by_default_and_its_report_is_charged_per_dimension(account: Account) -> None:
    """The YAML's "Perplexity Advanced Deep Research" example: 202 with a job, polled to its report."""
    before = account.balance_micros()
    body = {
        "model": "perplexity-advanced-deep-research",
        "query": "State of humanoid-robot startup funding in 2025",
        "reasoning_effort": "high",
        "max_output_tokens": 14000,
    }
    accepted = post(account, "/v1/research", json.dumps(body))
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    assert job["status"] == "processing" and job["poll_url"] == f"/v1/jobs/{job['job_id']}" and job["created_at"]
    deadline = time.monotonic() + 20
    while True:
        polled = account.gw.call("GET", job["poll_url"], account.key).json()
        if polled["status"] != "processing" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert polled["status"] == "completed", polled
    report = polled["result"]
    usage = report["usage"]
    assert report["object"] == "research.report" and "## References" in report["report"] and report["citations"]
    assert usage["num_search_queries"] >= 1 and usage["reasoning_tokens"] == 32 and usage["citation_tokens"] > 0
    micros = (
        (usage["prompt_tokens"]) * 2_000_000
        + (usage["completion_tokens"] - usage["reasoning_tokens"]) * 8_000_000
        + usage["reasoning_tokens"] * 3_000_000
        + usage["num_search_queries"] * 5_000 * 1_000_000
    )
    assert usage["cost_micros"] == _ceil(micros) == polled["cost_micros"]
    deadline = time.monotonic() + 10
    while account.balance_micros() != before - usage["cost_micros"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert account.balance_micros() == before - usage["cost_micros"]


def test_research_answers_at_once_with_async_false(account: Account) -> None:
    before = account.balance_micros()
    body = {"model": "tavily-research", "query": "latest US economic indicators", "citation_format": "footnote"}
    report, _ = reconciled(account, before, post(account, "/v1/research", json.dumps({**body, "async": False})))
    assert report["status"] == "completed" and report["query"] == "latest US economic indicators"


def test_image_analysis_counts_the_image_as_input(account: Account) -> None:
    before = account.balance_micros()
    body = {"model": "janus-pro-deepseek", "image_url": "https://example.com/photo.jpg", "question": "What is it?"}
    response = post(account, "/v1/images/analysis", json.dumps(body))
    answer, micros = reconciled(account, before, response)
    usage = answer["usage"]
    assert answer["answer"] and usage["image_tokens"] == 1_445  # a URL: the largest image
    assert micros == _ceil(usage["prompt_tokens"] * 200_000 + usage["completion_tokens"] * 800_000)
    reference_validator("/v1/images/analysis", "post").validate(json.loads(response.text))


@pytest.mark.parametrize("path", ["/openai/v1/pii", "/v1/pii", "/pii"])
def test_pii_finds_and_redacts_at_every_address(account: Account, path: str) -> None:
    before = account.balance_micros()
    text = "Mail jane.doe@example.com or call +1 415 555 0100; card 4111 1111 1111 1111, SSN 123-45-6789."
    response = post(account, path, json.dumps({"input": text}))
    body, micros = reconciled(account, before, response)
    assert body["model"] == "pii-redact" and body["object"] == "list"
    result = body["data"][0]
    assert [(e["type"], e["text"]) for e in result["entities"]] == [
        ("EMAIL_ADDRESS", "jane.doe@example.com"),
        ("PHONE_NUMBER", "+1 415 555 0100"),
        ("CREDIT_CARD", "4111 1111 1111 1111"),
        ("US_SSN", "123-45-6789"),
    ]
    assert all(text[e["start"] : e["end"]] == e["text"] and 0 < e["score"] <= 1 for e in result["entities"])
    assert result["redacted_text"] == ("Mail <EMAIL_ADDRESS> or call <PHONE_NUMBER>; card <CREDIT_CARD>, SSN <US_SSN>.")
    assert micros == _ceil(body["usage"]["prompt_tokens"] * 100_000)


def test_pii_masks_filters_and_takes_lists(account: Account) -> None:
    body = {"input": ["a@b.io and 10.0.0.1", "nothing here"], "entities": ["IP_ADDRESS"], "operator": "mask"}
    response = post(account, "/v1/pii", json.dumps(body))
    assert response.status_code == 200, response.text
    first, second = response.json()["data"]
    assert first["redacted_text"] == "a@b.io and ********" and second["entities"] == []


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/search", {"model": "tavily-search"}, 400, "query"),
        ("/v1/search", {"model": "tavily-search", "query": "x", "search_depth": "deepest"}, 400, "search_depth"),
        ("/v1/search", {"model": "tavily-search", "query": "x", "max_results": 21}, 400, "max_results"),
        ("/v1/search", {"model": "exa-search", "query": "x", "subpages": 11}, 400, "subpages"),
        ("/v1/search", {"model": "gptzero", "query": "x"}, 404, "model"),
        ("/v1/detect", {"model": "gptzero", "input": "x", "scan_type": "vibes"}, 400, "scan_type"),
        ("/v1/detect", {"model": "gptzero", "input": "x" * 50_001}, 400, "input"),
        ("/v1/detect", {"model": "tavily-search", "input": "x"}, 404, "model"),
        ("/v1/answer", {"model": "exa-answer", "query": "x", "stream": True}, 400, "stream"),
        ("/v1/research", {"model": "perplexity-advanced-deep-research"}, 400, "query"),
        ("/v1/research", {"model": "sim-chat-small", "query": "x"}, 404, "model"),
        (
            "/v1/research",
            {"model": "tavily-research", "query": "x", "reasoning_effort": "max"},
            400,
            "reasoning_effort",
        ),
        ("/v1/images/analysis", {"model": "janus-pro-deepseek", "image_url": "https://e.x/a.png"}, 400, "question"),
        ("/v1/pii", {"input": 5}, 400, "input"),
        ("/v1/pii", {"input": "x", "entities": ["SHOE_SIZE"]}, 400, "entities"),
        ("/v1/pii", {"input": "x", "async": "yes"}, 400, "async"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field_and_charges_nothing(
    account: Account, path: str, body: dict[str, Any], status: int, param: str
) -> None:
    before = account.balance_micros()
    response = post(account, path, json.dumps(body))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]
    assert account.balance_micros() == before


def test_a_balance_that_cannot_cover_the_hold_is_a_402(gw: Gateway) -> None:
    poor = Account(gw, credits="0.01")
    response = post(poor, "/v1/search", json.dumps({"model": "linkup-deep-search", "query": "x"}))
    assert response.status_code == 402, response.text
    assert response.json()["error"]["code"] == "insufficient_credits"


def test_a_key_without_user_write_is_refused(gw: Gateway, account: Account) -> None:
    reader, _ = gw.key(account.org, ["user:read"])
    for path in ("/v1/search", "/v1/research", "/v1/answer", "/v1/detect", "/v1/images/analysis", "/v1/pii"):
        response = gw.call("POST", path, reader, json={"model": "tavily-search", "query": "x"})
        assert response.status_code == 403, (path, response.text)


def test_the_same_idempotency_key_charges_once(account: Account) -> None:
    before = account.balance_micros()
    body = json.dumps({"model": "tavily-search", "query": "idempotent search"})
    first = post(account, "/v1/search", body, **{"Idempotency-Key": "search-once"})
    again = post(account, "/v1/search", body, **{"Idempotency-Key": "search-once"})
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and first.json()["usage"]["cost_micros"] == 8_000
    deadline = time.monotonic() + 10
    while account.balance_micros() != before - 8_000 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert account.balance_micros() == before - 8_000
