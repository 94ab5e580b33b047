"""`tollgate dev` with an upstream (bench/fake_upstream.py, which answers /v1/rerank in llama.cpp's
shape and /v1/score in vLLM's): both rerank shapes and scores are forwarded, translated, and charged
exactly the tokens the upstream reported; an answer without usage is a 502 and charges nothing."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import httpx

from ledger.pricing import default_price_book, price_micros
from schemas.units import Units
from tests.support import Dev, FakeUpstream, usage

query = "What is a rerank model?"
documents = [
    "Rerank models sort candidate documents by relevance.",
    "Quantum computing is a cutting-edge field of computer science.",
    "Pre-trained language models advanced rerank models.",
]
reported_tokens = sum(2 + (len(query) + len(d)) // 4 for d in documents)  # the fake upstream's usage


def test_dev_forwards_reranks_and_scores_and_charges_what_the_upstream_reported(tmp_path: Path) -> None:
    fake = FakeUpstream()
    dev = Dev(tmp_path, tmp_path, {"TOLLGATE_UPSTREAM_URL": fake.url, "TOLLGATE_DEV_CLICKHOUSE": "embedded"})
    try:
        _, key = dev.organization()
        headers = {"Authorization": f"Bearer {key}"}
        body = {"model": "qwen3-rerank", "query": query, "documents": documents, "top_n": 2, "return_documents": True}
        answer = httpx.post(f"{dev.base_url}/v1/reranks", json=body, headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        reranked = json.loads(answer.text, parse_float=Decimal)
        expected = price_micros(default_price_book().models["qwen3-rerank"], Units(input_tokens=reported_tokens))
        assert reranked["usage"]["total_tokens"] == reported_tokens
        assert reranked["usage"]["cost_micros"] == expected
        assert Decimal(answer.headers["x-credits-used"]) * 1_000_000 == expected
        results = reranked["output"]["results"]
        assert len(results) == 2 and results[0]["relevance_score"] >= results[1]["relevance_score"]
        assert all(r["document"] == {"text": documents[r["index"]]} for r in results)

        casola = httpx.post(f"{dev.base_url}/openai/v1/rerank", json=body, headers=headers, timeout=30)
        assert casola.status_code == 200, casola.text
        assert [d["document"] for d in casola.json()["data"]] == [r["document"]["text"] for r in results]
        scored = httpx.post(
            f"{dev.base_url}/v1/score",
            json={"model": "qwen3-rerank", "text_1": query, "text_2": documents},
            headers=headers,
            timeout=30,
        )
        assert scored.status_code == 200, scored.text
        assert [d["index"] for d in scored.json()["data"]] == [0, 1, 2]
        spent = expected + casola.json()["usage"]["cost_micros"] + scored.json()["usage"]["cost_micros"]
        assert usage(dev.base_url, key)["balance"]["amount_micros"] == 1_000 * 1_000_000 - spent

        fake.control(rerank_usage=False)
        failed = httpx.post(f"{dev.base_url}/v1/reranks", json=body, headers=headers, timeout=30)
        assert failed.status_code == 502, failed.text
        assert failed.json()["error"]["code"] == "upstream_no_usage"
        balance = usage(dev.base_url, key)["balance"]
        assert balance["amount_micros"] == 1_000 * 1_000_000 - spent and balance["held_micros"] == 0
    finally:
        fake.control(rerank_usage=True)
        dev.stop()
        fake.close()
