"""Rerank (Casola's /v1/rerank and EmpirioLabs' /v1/reranks) and text pair scoring (/v1/score),
metered like every generation endpoint: the reference documents' examples as written there (only the
host and the key changed) with their charge reconciled everywhere it shows, each answer's shape, async
jobs, 402, and bad input as a 400 naming the field."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from tests.harness import Gateway
from tests.http.dialects import Account, reconciles


@pytest.fixture(scope="module")
def account(gw: Gateway) -> Account:
    return Account(gw)


def reconciled(account: Account, before: int, response: Any) -> tuple[dict[str, Any], int]:
    """The answer's body (numbers as Decimal), once its charge reconciles: usage.cost_usd ==
    x-credits-used == the balance drop == the usage row's cost; and the charge in micros."""
    assert response.status_code == 200, response.text
    body = json.loads(response.text, parse_float=Decimal)
    cost = Decimal(body["usage"]["cost_usd"])
    assert Decimal(response.headers["x-credits-used"]) == cost
    micros = int(cost * 1_000_000)
    assert micros == body["usage"]["cost_micros"] > 0
    assert reconciles(account, before, response.headers["x-request-id"], body["usage"], None) == micros
    return body, micros


def test_casola_rerank_example_ex7(account: Account) -> None:
    """Casola API reference, "Example: Document Reranking" (EX-7), at /openai/v1/rerank."""
    before = account.balance_micros()
    response = account.gw.client.post(
        "/openai/v1/rerank",
        headers={"Authorization": f"Bearer {account.key}", "Content-Type": "application/json"},
        content='{ "model": "qwen3-0.6b-fp8-score", "query": "What is machine learning?", "documents": [ "Machine '
        'learning is a subset of artificial intelligence.", "The weather today is sunny.", "Deep learning uses '
        'neural networks with many layers." ], "top_n": 2, "return_documents": true }',
    )
    body, micros = reconciled(account, before, response)
    assert body["object"] == "list"
    assert [(d["index"], d["document"]) for d in body["data"]] == [
        (0, "Machine learning is a subset of artificial intelligence."),
        (2, "Deep learning uses neural networks with many layers."),
    ]
    assert 1 >= body["data"][0]["relevance_score"] > body["data"][1]["relevance_score"] >= 0
    tokens = body["usage"]["total_tokens"]
    assert body["usage"]["prompt_tokens"] == tokens > 0
    assert micros == -(-tokens * 50_000 // 1_000_000)  # qwen3-0.6b-fp8-score: 0.05 credits per 1M tokens
    endpoint, model, input_tokens, output_tokens, _, _ = account.usage_row(response.headers["x-request-id"])
    assert (endpoint, model, input_tokens, output_tokens) == ("/v1/rerank", "qwen3-0.6b-fp8-score", tokens, 0)


def test_empiriolabs_reranks_example_ex67(account: Account) -> None:
    """EmpirioLabs "Reranks" (EX-67), "Rerank a candidate list", as its cURL sends it."""
    before = account.balance_micros()
    response = account.gw.client.post(
        "/v1/reranks",
        headers={"Authorization": f"Bearer {account.key}", "Content-Type": "application/json"},
        content="""{
    "model": "qwen3-rerank",
    "query": "What is a rerank model?",
    "documents": [
      "Rerank models sort candidate documents by relevance.",
      "Quantum computing is a cutting-edge field of computer science.",
      "Pre-trained language models advanced rerank models."
    ],
    "top_n": 2,
    "return_documents": true
  }""",
    )
    body, micros = reconciled(account, before, response)
    assert set(body) == {"output", "usage", "request_id"}
    assert body["request_id"] == response.headers["x-request-id"]
    results = body["output"]["results"]
    assert [(r["index"], r["document"]) for r in results] == [
        (0, {"text": "Rerank models sort candidate documents by relevance."}),
        (2, {"text": "Pre-trained language models advanced rerank models."}),
    ]
    assert all(0 <= r["relevance_score"] <= 1 for r in results)
    tokens = body["usage"]["total_tokens"]
    assert micros == -(-tokens * 100_000 // 1_000_000)  # qwen3-rerank: 0.10 credits per 1M tokens, as EX-67
    assert account.usage_row(response.headers["x-request-id"])[:3] == ("/v1/reranks", "qwen3-rerank", tokens)


def test_documents_only_when_asked_all_without_top_n_at_the_root_with_x_api_key(account: Account) -> None:
    documents = ["alpha beta", "gamma", "beta gamma delta", "beta"]
    body = {"model": "qwen3-rerank", "query": "beta gamma", "documents": documents}
    casola = account.gw.client.post("/rerank", json=body, headers={"x-api-key": account.key})
    assert casola.status_code == 200, casola.text
    data = casola.json()["data"]
    assert sorted(d["index"] for d in data) == [0, 1, 2, 3]
    assert [d["relevance_score"] for d in data] == sorted((d["relevance_score"] for d in data), reverse=True)
    assert all("document" not in d for d in data)
    empiriolabs = account.gw.client.post("/reranks", json={**body, "top_n": 500}, headers={"x-api-key": account.key})
    assert empiriolabs.status_code == 200, empiriolabs.text
    results = empiriolabs.json()["output"]["results"]
    assert [(r["index"], r["relevance_score"]) for r in results] == [(d["index"], d["relevance_score"]) for d in data]
    assert all("document" not in r for r in results)


def test_score_one_to_many_and_pairwise(account: Account) -> None:
    before = account.balance_micros()
    body = {"model": "qwen3-0.6b-fp8-score", "text_1": "What is the capital of France?"}
    response = account.gw.call(
        "POST", "/openai/v1/score", account.key, json={**body, "text_2": ["Paris is the capital of France.", "Rome."]}
    )
    answer, _ = reconciled(account, before, response)
    assert answer["object"] == "list" and answer["model"] == "qwen3-0.6b-fp8-score"
    assert [(d["index"], d["object"]) for d in answer["data"]] == [(0, "score"), (1, "score")]
    assert answer["data"][0]["score"] > answer["data"][1]["score"]
    pairwise = {"model": "qwen3-rerank", "text_1": ["a cat", "a dog"], "text_2": ["cats", "a car"]}
    response = account.gw.call("POST", "/v1/score", account.key, json=pairwise)
    assert response.status_code == 200, response.text
    assert [d["score"] for d in response.json()["data"]] == [1.0, 0.0]


def test_async_rerank_is_a_job_whose_result_has_the_shape(account: Account) -> None:
    body = {"model": "qwen3-rerank", "query": "beta", "documents": ["beta", "alpha"], "async": True}
    accepted = account.gw.call("POST", "/v1/reranks", account.key, json=body)
    assert accepted.status_code == 202, accepted.text
    job: dict[str, Any] = {}
    for _ in range(500):
        job = account.gw.call("GET", accepted.json()["poll_url"], account.key).json()
        if job.get("status") == "completed":
            break
    result = job["result"]
    assert [r["index"] for r in result["output"]["results"]] == [0, 1]
    assert result["usage"]["cost_micros"] == job["cost_micros"] > 0


def test_a_rerank_the_balance_cannot_cover_is_a_402(gw: Gateway) -> None:
    poor = Account(gw, credits="0.000001")
    for path in ("/v1/rerank", "/v1/reranks", "/v1/score"):
        body: dict[str, Any] = {"model": "qwen3-rerank", "query": "q", "documents": ["a", "b"]}
        if path == "/v1/score":
            body = {"model": "qwen3-rerank", "text_1": "q", "text_2": ["a", "b"]}
        response = gw.call("POST", path, poor.key, json=body)
        assert response.status_code == 402, response.text
        assert response.json()["error"]["code"] == "insufficient_credits"
    assert poor.balance_micros() == 1


rerank_body = {"model": "qwen3-rerank", "query": "q", "documents": ["a", "b"]}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**rerank_body, "documents": []}, "documents"),
        ({**rerank_body, "documents": ["a"] * 501}, "documents"),
        ({**rerank_body, "documents": ["a", 2]}, "documents[1]"),
        ({**rerank_body, "documents": "a"}, "documents"),
        ({**rerank_body, "top_n": 0}, "top_n"),
        ({**rerank_body, "top_n": 501}, "top_n"),
        ({**rerank_body, "top_n": True}, "top_n"),
        ({**rerank_body, "return_documents": "yes"}, "return_documents"),
        ({**rerank_body, "query": ""}, "query"),
        ({"model": "qwen3-rerank", "documents": ["a"]}, "query"),
        ({**rerank_body, "async": "yes"}, "async"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/rerank", "/v1/reranks"])
def test_bad_rerank_bodies_are_a_400_naming_the_field(
    account: Account, path: str, body: dict[str, Any], param: str
) -> None:
    before = account.balance_micros()
    response = account.gw.call("POST", path, account.key, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert account.balance_micros() == before


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "qwen3-rerank", "text_1": ["a", "b"], "text_2": ["c"]}, "text_2"),
        ({"model": "qwen3-rerank", "text_1": "a", "text_2": []}, "text_2"),
        ({"model": "qwen3-rerank", "text_1": "a"}, "text_2"),
        ({"model": "qwen3-rerank", "text_1": "a", "text_2": [1]}, "text_2"),
    ],
)
def test_bad_score_bodies_are_a_400_naming_the_field(account: Account, body: dict[str, Any], param: str) -> None:
    response = account.gw.call("POST", "/v1/score", account.key, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith(param)


def test_a_model_that_does_not_rerank_is_a_404(account: Account) -> None:
    for model in ("sim-chat-small", "nope"):
        response = account.gw.call("POST", "/v1/reranks", account.key, json={**rerank_body, "model": model})
        assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
