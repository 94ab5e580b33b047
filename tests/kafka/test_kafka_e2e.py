"""The roles as separate processes on the real broker, with the official openai SDK as the client.

The production shape: gateway, ledger, worker and projector run as `tollgate <role>` processes against
Kafka; the projector writes the usage rows to a real ClickHouse server, the gateway reads them from it
(by TOLLGATE_CLICKHOUSE_URL, in a database of this module's own that `tollgate migrate` made first).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from eventlog import topics
from eventlog.kafka import KafkaLog
from schemas.codec import decode_event
from schemas.events import HoldCaptured, HoldPlaced, HoldReleased
from tests.support import Admin, Role, free_port, migrated_database, usage, wait_until_serving

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
admin_token = "tga_kafka_e2e"


class Stack:
    def __init__(self, bootstrap: str, clickhouse: str, root: Path, extra_env: dict[str, str] | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.clickhouse_url = migrated_database(clickhouse, "kafka_e2e")
        self.env = {
            "TOLLGATE_KAFKA_BOOTSTRAP": bootstrap,
            "TOLLGATE_CLICKHOUSE_URL": self.clickhouse_url,
            "TOLLGATE_ADMIN_TOKEN": admin_token,
            "TOLLGATE_LOG_LEVEL": "INFO",
            **(extra_env or {}),
        }
        env = self.env
        self.roles = {
            "ledger": Role("ledger", ["ledger"], env, root),
            "worker": Role("worker", ["worker"], env, root),
            "projector": Role("projector", ["projector"], env, root),
            "gateway": Role(
                "gateway", ["gateway", "--port", str(self.port), "--data-dir", str(root / "gateway")], env, root
            ),
        }
        wait_until_serving(self.base_url, self.roles["gateway"])
        self.admin = Admin(self.base_url, admin_token)

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=key, max_retries=0, timeout=120)

    def stop(self) -> None:
        for role in self.roles.values():
            role.stop()


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, clickhouse_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(kafka_bootstrap, clickhouse_url, tmp_path_factory.mktemp("stack"))
    yield running
    running.stop()


def chat(client: openai.OpenAI, content: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The response body as JSON (decimals kept exact) and its headers."""
    raw = client.chat.completions.with_raw_response.create(
        model="sim-chat-small", messages=[{"role": "user", "content": content}]
    )
    assert raw.parse().choices[0].message.content
    return json.loads(raw.http_response.text, parse_float=Decimal), dict(raw.headers)


def ledger_totals(bootstrap: str, org_id: str) -> tuple[int, int, int]:
    """(captured, holds placed, holds resolved) for one organization, read from the ledger topic."""
    consumer = KafkaLog(bootstrap).consumer([topics.LEDGER], client_id="test-audit")
    captured = placed = resolved = 0
    deadline = time.monotonic() + 60
    while not consumer.caught_up() and time.monotonic() < deadline:
        for record in consumer.poll(1000, 200):
            event = decode_event(record.value)
            if event.org_id != org_id:
                continue
            if isinstance(event, HoldCaptured):
                captured += event.amount_micros
                resolved += 1
            elif isinstance(event, HoldReleased):
                resolved += 1
            elif isinstance(event, HoldPlaced):
                placed += 1
    consumer.close()
    return captured, placed, resolved


def test_a_chat_completion_is_held_run_and_charged_through_kafka(stack: Stack) -> None:
    org = stack.admin.organization()
    stack.admin.grant(org, "2")
    key = stack.admin.token(org)
    body, headers = chat(stack.client(key), "Hello over Kafka")
    cost = body["usage"]["cost_usd"]
    assert Decimal(headers["x-credits-used"]) == cost
    balance = usage(stack.base_url, key)["balance"]
    assert balance["amount_micros"] == 2_000_000 - body["usage"]["cost_micros"]
    assert balance["held_micros"] == 0


def test_402_through_kafka_changes_nothing(stack: Stack, kafka_bootstrap: str) -> None:
    org = stack.admin.organization()
    stack.admin.grant(org, "0.000005")
    key = stack.admin.token(org)
    with pytest.raises(openai.APIStatusError) as caught:
        chat(stack.client(key), "too expensive")
    assert caught.value.status_code == 402
    assert usage(stack.base_url, key)["balance"]["amount_micros"] == 5
    assert ledger_totals(kafka_bootstrap, org) == (0, 0, 0)


def test_balance_ledger_and_clickhouse_agree_after_many_requests(stack: Stack, kafka_bootstrap: str) -> None:
    org = stack.admin.organization(plan="enterprise")  # 150 job submissions in a minute
    stack.admin.grant(org, 10)
    key = stack.admin.token(org)
    client = stack.client(key)
    count = 150
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda i: chat(client, f"message {i} " + "token " * (i % 23)), range(count)))
    charged = sum(int(Decimal(h["x-credits-used"]) * 1_000_000) for _, h in results)
    assert charged == sum(b["usage"]["cost_micros"] for b, _ in results)
    assert charged > 0

    report = usage(stack.base_url, key, limit=200)
    assert report["balance"]["amount_micros"] == 10_000_000 - charged
    assert report["balance"]["held_micros"] == 0
    # A request is answered when its result arrives and captured by the ledger just after (the gateway's
    # balance above already counts the answered charges): the ledger's own record catches up.
    deadline = time.monotonic() + 15
    while (totals := ledger_totals(kafka_bootstrap, org)) != (charged, count, count) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert totals == (charged, count, count)

    deadline = time.monotonic() + 15
    while report["window_summary"]["requests"] < count and time.monotonic() < deadline:
        time.sleep(0.3)
        report = usage(stack.base_url, key, limit=200)
    assert report["window_summary"]["total_cost_micros"] == charged
    assert report["window_summary"]["requests"] == count

    # What the projector wrote to the ClickHouse server, which the gateway's usage API just read, in SQL.
    time.sleep(1)
    reserved = usage(stack.base_url, key)["balance"]["reserved_by_gateways_micros"]
    from projections.usage import UsageStore

    store = UsageStore(url=stack.clickhouse_url, migrate=False)
    try:
        # The rollups above are complete; the raw rows of the last INSERT may show a moment later (an
        # INSERT writes the table's part and its views' parts side by side).
        deadline = time.monotonic() + 15
        while store.raw_totals_by_org().get(org, (0, 0))[0] < count and time.monotonic() < deadline:
            time.sleep(0.2)
        usage_cost, revenue = store.totals_by_org()[org]
        assert usage_cost == revenue == charged
        raw = store.raw_totals_by_org()[org]
        assert store.rollup_totals_by_org("usage_hourly")[org] == store.rollup_totals_by_org("usage_daily")[org] == raw
        accounts = store.account_balances()
        # Held is what the gateway's open slice still reserves (no request is in flight): wallet and
        # held together are the balance.
        assert accounts[f"{org}/wallet"] + accounts.get(f"{org}/held", 0) == 10_000_000 - charged
        assert accounts.get(f"{org}/held", 0) == reserved
        assert sum(accounts.values()) == 0, "double entry: every account sums to zero"
    finally:
        store.close()


def test_restarted_ledger_and_gateway_rebuild_exact_state_from_the_log(stack: Stack, kafka_bootstrap: str) -> None:
    """Wallets and balances are projections: new processes derive them from the log alone."""
    org = stack.admin.organization()
    stack.admin.grant(org, "0.01")  # 10,000 micros: room for a few requests, not for many
    key = stack.admin.token(org)
    client = stack.client(key)
    spent = sum(int(b["usage"]["cost_micros"]) for b, _ in (chat(client, f"before {i}") for i in range(3)))

    env = stack.env
    stack.roles["ledger"].stop()
    stack.roles["ledger"] = Role("ledger-restarted", ["ledger"], env, stack.root)
    stack.roles["gateway"].stop()
    stack.roles["gateway"] = Role(
        "gateway-restarted",
        ["gateway", "--port", str(stack.port), "--data-dir", str(stack.root / "gateway")],
        env,
        stack.root,
    )
    wait_until_serving(stack.base_url, stack.roles["gateway"])

    assert usage(stack.base_url, key)["balance"]["amount_micros"] == 10_000 - spent
    body, _ = chat(client, "after the restart")
    spent += int(body["usage"]["cost_micros"])
    assert usage(stack.base_url, key)["balance"]["amount_micros"] == 10_000 - spent
    # The rebuilt wallet still refuses what it cannot cover: a worst case above what is left.
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="sim-chat-large", messages=[{"role": "user", "content": "expensive"}], max_tokens=8000
        )
    assert caught.value.status_code == 402
    assert ledger_totals(kafka_bootstrap, org)[0] == spent
