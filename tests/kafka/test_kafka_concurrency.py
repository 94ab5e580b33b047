"""Many simultaneous requests against a balance that covers only some of them, on the real broker.

The simulated backend takes three seconds per job, so every hold is decided before any capture
releases money: exactly floor(balance / hold) requests may run, and the rest must get 402. (With one
second, a 14th request once fit, when the stack had become four role processes and a ClickHouse
server on the 2-core build machine: the last holds were presumably decided after the first capture.)
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import msgspec
import openai
import pytest

from gateway.requests import parse_chat
from ledger.pricing import default_price_book
from tests.kafka.test_kafka_e2e import Stack, ledger_totals
from tests.support import usage

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
requests_total = 40
max_tokens = 200
prompt = "Will I be one of the lucky ones?"


@pytest.fixture(scope="module")
def slow_stack(kafka_bootstrap: str, clickhouse_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(
        kafka_bootstrap, clickhouse_url, tmp_path_factory.mktemp("slow-stack"), {"TOLLGATE_SIM_LATENCY_MS": "3000"}
    )
    yield running
    running.stop()


def test_exactly_what_the_balance_allows_succeeds(slow_stack: Stack, kafka_bootstrap: str) -> None:
    body = {"model": "sim-chat-small", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
    hold = parse_chat(msgspec.json.encode(body), default_price_book()).hold_micros
    affordable = 13
    org = slow_stack.admin.organization()
    slow_stack.admin.grant(org, f"{(hold * affordable + hold // 2) / 1_000_000:.6f}")
    granted = usage(slow_stack.base_url, slow_stack.admin.token(org))["balance"]["amount_micros"]
    key = slow_stack.admin.token(org)
    client = slow_stack.client(key)

    def attempt(i: int) -> int | None:
        try:
            completion = client.chat.completions.create(
                model="sim-chat-small", messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens
            )
        except openai.APIStatusError as error:
            assert error.status_code == 402, error.response.text
            return None
        assert completion.usage is not None
        return int((completion.usage.model_extra or {})["cost_micros"])

    with ThreadPoolExecutor(requests_total) as pool:
        outcomes = list(pool.map(attempt, range(requests_total)))
    charges = [c for c in outcomes if c is not None]
    assert len(charges) == affordable == granted // hold
    balance = usage(slow_stack.base_url, key)["balance"]
    assert balance["amount_micros"] == granted - sum(charges)
    assert balance["held_micros"] == 0
    captured, placed, resolved = ledger_totals(kafka_bootstrap, org)
    assert (captured, placed, resolved) == (sum(charges), affordable, affordable)
