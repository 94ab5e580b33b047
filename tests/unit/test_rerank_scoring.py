"""Rerank and text pair scoring in the workers: the simulated backend's scores (deterministic, most
relevant first, top_n applied, tokens as a cross-encoder reads them) and the upstream backend's
forwarding to an upstream's /v1/rerank and /v1/score (bench/fake_upstream.py, llama.cpp's and vLLM's
shapes), metered by the usage it reports; an answer without usage fails the job."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from schemas.units import Units
from tests.support import FakeUpstream
from workers.backends import (
    BackendError,
    JobContext,
    JobOutput,
    SimulatedBackend,
    count_sim_tokens,
    ranked,
    relevance,
    score_pairs,
)
from workers.upstream import Upstream, UpstreamBackend, Upstreams, rerank_results

machine_learning = {
    "query": "What is machine learning?",
    "documents": [
        "Machine learning is a subset of artificial intelligence.",
        "The weather today is sunny.",
        "Deep learning uses neural networks with many layers.",
    ],
}


def simulate(endpoint: str, payload: dict[str, Any]) -> JobOutput:
    return asyncio.run(SimulatedBackend().run(JobContext("job", "qwen3-rerank", endpoint, payload)))


def test_relevance_is_deterministic_in_zero_one_and_ranks_as_a_reader_would() -> None:
    query, documents = machine_learning["query"], machine_learning["documents"]
    scores = [relevance(str(query), document) for document in documents]
    assert scores == [relevance(str(query), document) for document in documents]
    assert all(0.0 <= score <= 1.0 for score in scores)
    assert scores[0] > scores[2] > scores[1] == 0.0
    assert relevance("rerank models", "A rerank model.") == 1.0  # plurals match their singular


def test_ranked_sorts_descending_ties_in_order_and_applies_top_n() -> None:
    results = ranked([0.2, 0.9, 0.2, 0.5], ["a", "b", "c", "d"], top_n=3, return_documents=True)
    assert [r["index"] for r in results] == [1, 3, 0]
    assert results[0] == {"index": 1, "relevance_score": 0.9, "document": {"text": "b"}}
    assert [r["index"] for r in ranked([0.1, 0.3], ["a", "b"], top_n=10)] == [1, 0]
    assert "document" not in ranked([0.1], ["a"])[0]


def test_simulated_rerank_counts_the_query_with_each_document() -> None:
    payload = {**machine_learning, "top_n": 2, "return_documents": True}
    output = simulate("/v1/reranks", payload)
    results = output.result["results"]
    assert [r["index"] for r in results] == [0, 2]
    assert results[0]["document"] == {"text": machine_learning["documents"][0]}
    query = str(machine_learning["query"])
    expected = sum(count_sim_tokens(query) + count_sim_tokens(d) for d in machine_learning["documents"])
    assert output.units == Units(input_tokens=expected)
    assert simulate("/v1/rerank", payload) == output  # one simulation, whatever the answer's shape
    with_instruct = simulate("/v1/rerank", {**payload, "instruct": "Retrieve semantically similar text."})
    assert with_instruct.units.input_tokens == expected + 3 * count_sim_tokens("Retrieve semantically similar text.")


def test_simulated_score_pairs_one_to_many_and_list_to_list() -> None:
    one_to_many = simulate("/v1/score", {"text_1": "capital of France", "text_2": ["Paris is the capital.", "Rome."]})
    assert [d["index"] for d in one_to_many.result["data"]] == [0, 1]
    assert one_to_many.result["data"][0]["object"] == "score"
    assert one_to_many.result["data"][0]["score"] > one_to_many.result["data"][1]["score"]
    assert score_pairs(["a", "b"], ["c", "d"]) == [("a", "c"), ("b", "d")]
    assert score_pairs("a", "b") == [("a", "b")]
    with pytest.raises(ValueError):
        score_pairs(["a", "b"], ["c", "d", "e"])


# --- the upstream backend ---


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream()
    yield upstream
    upstream.close()


@pytest.fixture(autouse=True)
def reset(fake: FakeUpstream) -> None:
    fake.control(reply_ms=0.0, token_ms=0.0, rerank_usage=True)


def forward(fake: FakeUpstream, endpoint: str, payload: dict[str, Any]) -> tuple[JobOutput, JobContext]:
    backend = UpstreamBackend(Upstreams({}, Upstream(url=fake.url)))
    context = JobContext("job", "qwen3-rerank", endpoint, payload)

    async def once() -> JobOutput:
        try:
            return await backend.run(context)
        finally:
            await backend.close()

    return asyncio.run(once()), context


def test_an_upstream_rerank_is_sorted_cut_and_metered_from_its_usage(fake: FakeUpstream) -> None:
    payload = {**machine_learning, "top_n": 2, "return_documents": True}
    output, context = forward(fake, "/v1/reranks", payload)
    results = output.result["results"]
    assert len(results) == 2  # the fake answers every document (as llama.cpp does): top_n is ours
    assert results[0]["relevance_score"] >= results[1]["relevance_score"]
    for result in results:
        assert result["document"] == {"text": machine_learning["documents"][result["index"]]}
    query = str(machine_learning["query"])
    expected = sum(2 + (len(query) + len(d)) // 4 for d in machine_learning["documents"])  # the fake's usage
    assert output.units == Units(input_tokens=expected)
    assert context.counted_by == "upstream"
    plain, _ = forward(fake, "/v1/rerank", {**machine_learning})
    assert len(plain.result["results"]) == 3 and "document" not in plain.result["results"][0]


def test_an_upstream_score_is_metered_from_its_usage(fake: FakeUpstream) -> None:
    output, _ = forward(fake, "/v1/score", {"text_1": "capital", "text_2": ["Paris is the capital.", "Rome."]})
    assert [d["index"] for d in output.result["data"]] == [0, 1]
    assert all(d["object"] == "score" for d in output.result["data"])
    assert output.units.input_tokens == (2 + (7 + 21) // 4) + (2 + (7 + 5) // 4)


@pytest.mark.parametrize("endpoint", ["/v1/rerank", "/v1/score"])
def test_an_upstream_answer_without_usage_fails_the_job(fake: FakeUpstream, endpoint: str) -> None:
    fake.control(rerank_usage=False)
    payload = machine_learning if endpoint == "/v1/rerank" else {"text_1": "a", "text_2": ["b"]}
    with pytest.raises(BackendError) as failure:
        forward(fake, endpoint, dict(payload))
    assert failure.value.code == "upstream_no_usage"


def test_rerank_results_translates_vllm_and_refuses_what_was_not_asked() -> None:
    vllm = {
        "results": [
            {"index": 2, "document": {"text": "c"}, "relevance_score": 0.7},
            {"index": 0, "document": {"text": "a"}, "relevance_score": 0.9},
        ],
        "usage": {"total_tokens": 12},
    }
    results = rerank_results(vllm, ["a", "b", "c"], top_n=2, return_documents=True)
    assert results == [
        {"index": 0, "relevance_score": 0.9, "document": {"text": "a"}},
        {"index": 2, "relevance_score": 0.7, "document": {"text": "c"}},
    ]
    with pytest.raises(BackendError):
        rerank_results({"results": [{"index": 5, "relevance_score": 0.1}]}, ["a"], None, False)
    with pytest.raises(BackendError):
        rerank_results({"data": []}, ["a"], None, False)
