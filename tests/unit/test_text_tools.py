"""Text tools in the workers: the simulations are deterministic and stay within the bound the gateway
holds, PII is found and redacted by character offsets, and the upstream backend forwards search,
answers, detection and PII to the upstream's same path (research and image analysis as chat
completions), metered from the usage it reports; an answer without usage fails the job."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from gateway.texttools import parse
from ledger.pricing import default_price_book, worst_case_micros
from schemas.units import Units
from workers import texttools
from workers.backends import BackendError, JobContext, JobOutput, SimulatedBackend
from workers.upstream import Upstream, UpstreamBackend, Upstreams


def simulate(endpoint: str, model: str, payload: dict[str, Any]) -> JobOutput:
    return asyncio.run(SimulatedBackend().run(JobContext("job", model, endpoint, payload)))


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("/v1/search", {"model": "tavily-search", "query": "crdt papers", "search_depth": "advanced"}),
        (
            "/v1/search",
            {"model": "exa-search", "query": "vector db", "subpages": 10, "summary": True, "num_results": 30},
        ),
        ("/v1/search", {"model": "linkup-deep-search", "query": "benchmarks", "output_type": "searchResults"}),
        ("/v1/answer", {"model": "exa-answer", "query": "eclipse?"}),
        ("/v1/detect", {"model": "gptzero", "input": "One. Two! Three?", "scan_type": "fact_check"}),
        ("/v1/detect", {"model": "gptzero", "input": "[1] A.\n[2] B.\n\n[3] C.", "scan_type": "bibliography"}),
        ("/v1/pii", {"input": ["call 020 7946 0958", "x@y.org"]}),
        ("/v1/images/analysis", {"model": "janus-pro-deepseek", "image_url": "aGVsbG8=", "question": "What?"}),
        ("/v1/research", {"model": "perplexity-advanced-deep-research", "query": "q", "max_output_tokens": 64}),
    ],
)
def test_a_simulation_is_deterministic_and_within_its_hold(endpoint: str, body: dict[str, Any]) -> None:
    book = default_price_book()
    metered = parse(endpoint, json.dumps(body).encode(), book)
    payload = json.loads(metered.payload)
    first, again = simulate(endpoint, metered.model, payload), simulate(endpoint, metered.model, payload)
    assert first.result == again.result and first.units == again.units
    price = book.models[metered.model]
    assert worst_case_micros(price, first.units) <= metered.hold_micros
    for unit in ("input_tokens", "output_tokens", "search_units", "image_input_tokens"):
        assert getattr(first.units, unit) <= getattr(metered.bound, unit) + (
            metered.bound.output_tokens if unit == "output_tokens" else 0
        ), unit
    assert first.units.variant == metered.bound.variant


def test_detection_lookups_are_the_references_and_claims() -> None:
    assert texttools.detect_lookups("bibliography", "[1] A.\n\n[2] B.\n") == 2
    assert texttools.detect_lookups("fact_check", "One. Two! Three?") == 3
    assert texttools.detect_lookups("ai_detection", "One. Two.") == 0
    assert texttools.detect_lookups("bibliography", "\n".join(f"[{i}] x" for i in range(80))) == 50


def test_pii_offsets_overlaps_luhn_and_operators() -> None:
    text = "IP 192.168.0.1, card 4111-1111-1111-1112, ssn 078-05-1120, see https://a.example/x?q=1"
    found = texttools.find_pii(text)
    assert [(e["type"], e["text"]) for e in found] == [
        ("IP_ADDRESS", "192.168.0.1"),
        ("US_SSN", "078-05-1120"),
        ("URL", "https://a.example/x?q=1"),
    ]  # the card number fails its Luhn check
    assert all(text[e["start"] : e["end"]] == e["text"] for e in found)
    assert texttools.redact(text, found, "redact").startswith("IP , card")
    assert texttools.find_pii("é x@y.io")[0]["start"] == 2  # character offsets, not bytes
    assert texttools.find_pii("x@y.io", threshold=1.0) and not texttools.find_pii("+44 20 7946 0958", threshold=0.8)


def test_search_tiers() -> None:
    tiers = default_price_book().models["exa-search"].search_variant_rates
    assert texttools.search_tier("exa-search", {"num_results": 25}, tiers) == "1-25 results"
    assert texttools.search_tier("exa-search", {"numResults": 26}, tiers) == "26-100 results"
    sonar = default_price_book().models["perplexity-sonar-pro"].search_variant_rates
    assert texttools.search_tier("perplexity-sonar-pro", {}, sonar) == "low"
    options = {"web_search_options": {"search_context_size": "high"}}
    assert texttools.search_tier("perplexity-sonar-pro", options, sonar) == "high"
    with pytest.raises(texttools.ToolInputError):
        texttools.search_tier("tavily-search", {"search_depth": "deep"}, {"basic": 1})


# --- the upstream backend ---


class _Handler(BaseHTTPRequestHandler):
    replies: dict[str, dict[str, Any]] = {}
    seen: list[tuple[str, dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.seen.append((self.path, body))
        reply = json.dumps(self.replies.get(self.path, {"error": {"message": "no"}})).encode()
        self.send_response(200 if self.path in self.replies else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Handler.seen.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def forward(url: str, endpoint: str, model: str, payload: dict[str, Any]) -> tuple[JobOutput, JobContext]:
    backend = UpstreamBackend(Upstreams({}, Upstream(url=url)))
    context = JobContext("job", model, endpoint, payload)

    async def once() -> JobOutput:
        try:
            return await backend.run(context)
        finally:
            await backend.close()

    return asyncio.run(once()), context


def test_search_detect_pii_and_answers_go_to_the_same_path_metered_by_usage(upstream: str) -> None:
    _Handler.replies = {
        "/v1/search": {"results": [{"url": "u"}], "usage": {"num_search_queries": 1}},
        "/v1/detect": {"documents": [], "usage": {"prompt_tokens": 12, "num_search_queries": 2}},
        "/v1/pii": {"data": [{"index": 0, "entities": [], "redacted_text": "x"}], "usage": {"prompt_tokens": 3}},
        "/v1/answer": {"answer": "a", "citations": []},
    }
    search, context = forward(upstream, "/v1/search", "tavily-search", {"query": "q", "search_tier": "advanced"})
    assert search.units == Units(search_units=1, variant="advanced") and context.counted_by == "upstream"
    assert search.result == {"results": [{"url": "u"}]}
    assert _Handler.seen[-1] == ("/v1/search", {"query": "q", "model": "tavily-search"})  # no Tollgate fields
    detect, _ = forward(upstream, "/v1/detect", "gptzero", {"input": "x", "scan_type": "bibliography"})
    assert detect.units == Units(input_tokens=12, search_units=2)
    pii, _ = forward(upstream, "/v1/pii", "pii-redact", {"input": "x"})
    assert pii.units == Units(input_tokens=3) and pii.result["data"][0]["redacted_text"] == "x"
    answer, _ = forward(upstream, "/v1/answer", "exa-answer", {"query": "q"})
    assert answer.units == Units(calls=1) and answer.result["answer"] == "a"


def test_an_upstream_search_without_usage_fails_the_job(upstream: str) -> None:
    _Handler.replies = {"/v1/search": {"results": []}, "/v1/pii": {"data": []}}
    for endpoint, model in (("/v1/search", "tavily-search"), ("/v1/pii", "pii-redact")):
        with pytest.raises(BackendError) as failure:
            forward(upstream, endpoint, model, {"query": "q", "input": "x"})
        assert failure.value.code == "upstream_no_usage"


def test_research_and_analysis_run_as_chat_completions_on_the_upstream(upstream: str) -> None:
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 30,
        "completion_tokens_details": {"reasoning_tokens": 12},
        "citation_tokens": 40,
        "num_search_queries": 3,
    }
    chat = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Report."}}], "usage": usage}
    _Handler.replies = {"/v1/chat/completions": {**chat, "search_results": [{"title": "T", "url": "https://t"}]}}
    payload = {"query": "q", "messages": [{"role": "user", "content": "q"}], "max_tokens": 100, "async": True}
    report, _ = forward(upstream, "/v1/research", "perplexity-advanced-deep-research", payload)
    assert report.units == Units(input_tokens=50, output_tokens=18, reasoning_tokens=12, search_units=3)
    assert report.result["citations"] == [{"title": "T", "url": "https://t", "snippet": ""}]
    assert report.result["citation_tokens"] == 40 and report.result["report"].startswith("Report.")
    assert "async" not in _Handler.seen[-1][1] and _Handler.seen[-1][1]["stream"] is False
    payload = {"image_url": "https://e.x/a.png", "question": "What?", "max_tokens": 64}
    analysis, context = forward(upstream, "/v1/images/analysis", "janus-pro-deepseek", payload)
    assert analysis.result == {"answer": "Report."} and context.counted_by == "upstream"
    sent = _Handler.seen[-1][1]
    assert sent["messages"][0]["content"][1] == {"type": "image_url", "image_url": {"url": "https://e.x/a.png"}}
