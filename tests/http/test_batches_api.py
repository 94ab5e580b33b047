"""Batches through the official OpenAI SDK (``client.files`` and ``client.batches``), unchanged: a
JSONL file of requests, each line run as a job at the batch rate, progress counts, output and error
files downloaded through files, cancel charging only the finished lines."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from eventlog import topics
from eventlog.read import read_topic
from gateway.routes import batches as batch_routes
from ledger.pricing import default_price_book, price_micros
from schemas.codec import decode_event
from schemas.events import HoldCaptured, HoldPlaced, SliceGranted, SliceReturned
from schemas.units import Units
from tests.harness import Gateway
from tests.http.dialects import Account
from tollgate.audit import audit_log

book = default_price_book()


@pytest.fixture
def account(gw: Gateway) -> Account:
    return Account(gw, credits="1000")


def line(custom_id: str, content: str, model: str = "sim-chat-large", max_tokens: int = 8) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens},
    }


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(
        (json.dumps(item) if not isinstance(item, bytes) else item.decode()).encode() + b"\n" for item in lines
    )


def wait_ended(client: openai.OpenAI, batch_id: str, timeout_s: float = 120) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "cancelled", "failed", "expired"):
            return batch
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} did not end: {batch}")


def records(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    return [json.loads(row, parse_float=Decimal) for row in text.splitlines()]


def ledger_events(gw: Gateway, org_id: str) -> list[Any]:
    return [
        event
        for batch in read_topic(gw.log, topics.LEDGER, quiet=True)
        for event in (decode_event(record.value) for record in batch)
        if event.org_id == org_id
    ]


def balance_micros(account: Account) -> int:
    body = account.gw.admin("GET", f"/v1/organizations/{account.org}/balance").json()
    return int(body["amount_micros"])


@pytest.mark.heavy  # waits for a batch to run
def test_a_batch_runs_every_line_at_the_batch_rate_with_the_sdk(account: Account) -> None:
    client = account.openai()
    before = balance_micros(account)
    slowed = line("c", "slow please")
    slowed["body"]["sim"] = {"token_ms": 7500}  # the simulated backend's knobs are not open to keys
    data = jsonl([line("a", "Hello there"), line("b", "How are you?"), b"not json", line("a", "dup"), slowed])
    uploaded = client.files.create(file=("batch.jsonl", io.BytesIO(data)), purpose="batch")
    created = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"run": "1"}
    )
    assert created.object == "batch" and created.status == "in_progress"
    assert created.request_counts is not None and created.request_counts.total == 5
    ended = wait_ended(client, created.id)
    assert ended.status == "completed", ended
    assert ended.request_counts is not None
    assert (ended.request_counts.completed, ended.request_counts.failed) == (2, 3)
    assert ended.metadata == {"run": "1"}

    outputs = records(client, ended.output_file_id)
    assert [row["custom_id"] for row in outputs] == ["a", "b"]
    price = book.models["sim-chat-large"]
    total = 0
    for row in outputs:
        usage = row["response"]["body"]["usage"]
        units = Units(
            input_tokens=usage["prompt_tokens"], output_tokens=usage["completion_tokens"], calls=1, batch=True
        )
        assert usage["cost_micros"] == price_micros(price, units)  # the batch discount applied
        assert usage["cost_micros"] < price_micros(
            price, Units(input_tokens=units.input_tokens, output_tokens=units.output_tokens, calls=1)
        )
        total += usage["cost_micros"]
    errors = records(client, ended.error_file_id)
    codes = sorted(row["error"]["code"] for row in errors)
    assert codes == ["duplicate_custom_id", "invalid_json", "unsupported_parameter"]
    deadline = time.monotonic() + 10
    while balance_micros(account) != before - total and time.monotonic() < deadline:
        time.sleep(0.05)
    assert balance_micros(account) == before - total
    assert [b.id for b in client.batches.list()] == [created.id]

    # One reservation for the batch's worst case, each line's hold carved from it and captured on its
    # own, what is left returned to the wallet.
    events = ledger_events(account.gw, account.org)
    reserved = [e for e in events if isinstance(e, SliceGranted)]
    assert [e.slice_id for e in reserved] == [f"slice_{created.id}"]
    holds = [e for e in events if isinstance(e, HoldPlaced)]
    assert [e.slice_id for e in holds] == [f"slice_{created.id}"] * 2
    assert reserved[0].amount_micros == sum(e.amount_micros for e in holds)
    captured = [e for e in events if isinstance(e, HoldCaptured)]
    assert sum(e.amount_micros for e in captured) == total
    deadline = time.monotonic() + 10
    while not any(isinstance(e, SliceReturned) for e in events) and time.monotonic() < deadline:
        time.sleep(0.05)
        events = ledger_events(account.gw, account.org)
    returned = [e for e in events if isinstance(e, SliceReturned)]
    assert [e.amount_micros for e in returned] == [reserved[0].amount_micros - total]
    held = account.gw.admin("GET", f"/v1/organizations/{account.org}/balance").json()["held_micros"]
    assert held == 0


@pytest.mark.heavy  # 1.4 s on the shared 2-core machine (30 s once under heavy load)
def test_a_batch_of_1000_lines_costs_exactly_the_sum_of_its_lines(account: Account) -> None:
    client = account.openai()
    before = balance_micros(account)
    data = jsonl([line(f"r{i}", f"Request number {i}", model="sim-chat-small", max_tokens=4) for i in range(1000)])
    uploaded = client.files.create(file=("big.jsonl", io.BytesIO(data)), purpose="batch")
    created = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    ended = wait_ended(client, created.id, timeout_s=300)
    assert ended.status == "completed" and ended.request_counts is not None
    assert (ended.request_counts.completed, ended.request_counts.failed) == (1000, 0)
    outputs = records(client, ended.output_file_id)
    assert len(outputs) == 1000 and ended.error_file_id is None
    price = book.models["sim-chat-small"]
    total = 0
    for row in outputs:
        usage = row["response"]["body"]["usage"]
        units = Units(
            input_tokens=usage["prompt_tokens"], output_tokens=usage["completion_tokens"], calls=1, batch=True
        )
        assert usage["cost_micros"] == price_micros(price, units)
        total += usage["cost_micros"]
    deadline = time.monotonic() + 20
    while balance_micros(account) != before - total and time.monotonic() < deadline:
        time.sleep(0.05)
    assert balance_micros(account) == before - total


@pytest.fixture(scope="module")
def knobs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(Path(tmp_path_factory.mktemp("batch-knobs")), sim_knobs=True)
    yield gateway
    gateway.close()


@pytest.mark.heavy  # a gateway of its own, slow lines
def test_a_cancelled_batch_charges_only_its_finished_lines(knobs: Gateway) -> None:
    account = Account(knobs, credits="1000")
    client = account.openai()
    before = balance_micros(account)
    # Slow lines (simulated GPU time per token), so that the cancel lands while most have not started.
    slow = [line(f"s{i}", f"slow {i}", model="sim-chat-small", max_tokens=8) for i in range(200)]
    for item in slow:
        item["body"]["sim"] = {"token_ms": 20}
    uploaded = client.files.create(file=("slow.jsonl", io.BytesIO(jsonl(slow))), purpose="batch")
    created = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    time.sleep(0.5)
    cancelling = client.batches.cancel(created.id)
    assert cancelling.status in ("cancelling", "cancelled")
    ended = wait_ended(client, created.id)
    assert ended.status == "cancelled" and ended.request_counts is not None
    finished = ended.request_counts.completed
    assert 0 < finished < 200
    outputs = records(client, ended.output_file_id)
    assert len(outputs) == finished
    total = sum(row["response"]["body"]["usage"]["cost_micros"] for row in outputs)
    deadline = time.monotonic() + 10
    while balance_micros(account) != before - total and time.monotonic() < deadline:
        time.sleep(0.05)
    assert balance_micros(account) == before - total
    while (
        account.gw.admin("GET", f"/v1/organizations/{account.org}/balance").json()["held_micros"]
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert account.gw.admin("GET", f"/v1/organizations/{account.org}/balance").json()["held_micros"] == 0
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(created.id)
    # audit verify re-derives the batch's reservation, its lines' carved holds and captures.
    auditor = audit_log(knobs.log, None, quiet=True)
    assert auditor.ok, auditor.findings[:3]


def test_bad_batches_are_a_4xx(account: Account) -> None:
    client = account.openai()
    other = Account(account.gw).openai()
    user_file = client.files.create(file=("x.txt", io.BytesIO(b"{}\n")), purpose="user_data")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=user_file.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    batch_file = client.files.create(file=("b.jsonl", io.BytesIO(jsonl([line("a", "hi")]))), purpose="batch")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=batch_file.id, endpoint="/v1/chat/completions", completion_window="1h")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        other.batches.create(input_file_id=batch_file.id, endpoint="/v1/chat/completions", completion_window="24h")
    created = client.batches.create(
        input_file_id=batch_file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.cancel(created.id)


def test_a_batch_past_the_balance_is_a_402(gw: Gateway) -> None:
    poor = Account(gw, credits="0.0001")
    client = poor.openai()
    data = jsonl([line(f"r{i}", "x" * 1000, max_tokens=4000) for i in range(20)])
    uploaded = client.files.create(file=("b.jsonl", io.BytesIO(data)), purpose="batch")
    with pytest.raises(openai.APIStatusError) as refused:
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert refused.value.status_code == 402
    assert list(client.batches.list()) == []


@pytest.mark.heavy  # two gateways in turn, slow lines
def test_a_batch_resumes_after_its_gateway_restarts_and_charges_each_line_once(tmp_path: Path) -> None:
    first = Gateway(tmp_path, sim_knobs=True, instance_id="batch-resume")
    try:
        account = Account(first, credits="1000")
        client = account.openai()
        slow = [line(f"s{i}", f"slow {i}", model="sim-chat-small", max_tokens=8) for i in range(120)]
        for item in slow:
            item["body"]["sim"] = {"token_ms": 15}
        uploaded = client.files.create(file=("slow.jsonl", io.BytesIO(jsonl(slow))), purpose="batch")
        created = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        time.sleep(0.6)
        assert client.batches.retrieve(created.id).status == "in_progress"
        before = 1_000_000_000
    finally:
        first.close()
    second = Gateway(tmp_path, sim_knobs=True, instance_id="batch-resume")
    try:
        account.gw = second
        client = account.openai()
        # The file list is a fold of the ledger's events: the restarted gateway has it from the log.
        assert uploaded.id in [f.id for f in client.files.list(purpose="batch")]
        ended = wait_ended(client, created.id)
        assert ended.status == "completed", ended
        assert ended.request_counts is not None
        assert (ended.request_counts.completed, ended.request_counts.failed) == (120, 0)
        outputs = records(client, ended.output_file_id)
        assert sorted(row["custom_id"] for row in outputs) == sorted(f"s{i}" for i in range(120))
        total = sum(row["response"]["body"]["usage"]["cost_micros"] for row in outputs)
        deadline = time.monotonic() + 20
        while balance_micros(account) != before - total and time.monotonic() < deadline:
            time.sleep(0.05)
        assert balance_micros(account) == before - total
        captures = [e for e in ledger_events(second, account.org) if isinstance(e, HoldCaptured)]
        assert len(captures) == len({e.hold_id for e in captures}) == 120  # each line charged once
        assert auditor_ok(second)
    finally:
        second.close()


def auditor_ok(gw: Gateway) -> bool:
    auditor = audit_log(gw.log, None, quiet=True)
    return auditor.ok


@pytest.mark.heavy  # slow lines
def test_a_batch_past_its_completion_window_expires_and_charges_only_what_ran(
    knobs: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(The window is shortened to a second: the lines that had not started go to the error file.)"""
    monkeypatch.setattr(batch_routes, "completion_window", timedelta(seconds=1))
    account = Account(knobs, credits="1000")
    client = account.openai()
    before = balance_micros(account)
    slow = [line(f"s{i}", f"slow {i}", model="sim-chat-small", max_tokens=8) for i in range(300)]
    for item in slow:
        item["body"]["sim"] = {"token_ms": 20}
    uploaded = client.files.create(file=("slow.jsonl", io.BytesIO(jsonl(slow))), purpose="batch")
    created = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    ended = wait_ended(client, created.id)
    assert ended.status == "expired" and ended.expired_at is not None and ended.request_counts is not None
    finished, failed = ended.request_counts.completed, ended.request_counts.failed
    assert 0 < finished < 300 and finished + failed == 300
    outputs = records(client, ended.output_file_id)
    errors = records(client, ended.error_file_id)
    assert len(outputs) == finished and {row["error"]["code"] for row in errors} == {"batch_expired"}
    total = sum(row["response"]["body"]["usage"]["cost_micros"] for row in outputs)
    deadline = time.monotonic() + 10
    while balance_micros(account) != before - total and time.monotonic() < deadline:
        time.sleep(0.05)
    assert balance_micros(account) == before - total


@pytest.mark.heavy  # waits for a batch to run
def test_a_responses_batch_answers_response_objects_at_the_batch_rate(account: Account) -> None:
    client = account.openai()
    before = balance_micros(account)
    lines = [
        {
            "custom_id": f"r{index}",
            "method": "POST",
            "url": "/v1/responses",
            "body": {"model": "sim-chat-large", "input": f"Tell me about item {index}"},
        }
        for index in range(3)
    ]
    chat_line = line("c", "Not a responses line")  # another endpoint's url goes to the error file
    uploaded = client.files.create(file=("batch.jsonl", io.BytesIO(jsonl([*lines, chat_line]))), purpose="batch")
    created = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/responses", completion_window="24h")
    ended = wait_ended(client, created.id)
    assert ended.status == "completed", ended
    assert ended.request_counts is not None
    assert (ended.request_counts.completed, ended.request_counts.failed) == (3, 1)
    outputs = records(client, ended.output_file_id)
    assert [row["custom_id"] for row in outputs] == ["r0", "r1", "r2"]
    price = book.models["sim-chat-large"]
    total = 0
    for row in outputs:
        body = row["response"]["body"]
        assert body["object"] == "response" and body["status"] == "completed"
        assert body["output"][0]["content"][0]["text"]
        usage = body["usage"]
        units = Units(input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"], calls=1, batch=True)
        assert usage["cost_micros"] == price_micros(price, units)  # the batch discount applied
        assert usage["cost_micros"] < price_micros(
            price, Units(input_tokens=units.input_tokens, output_tokens=units.output_tokens, calls=1)
        )
        total += usage["cost_micros"]
    assert [row["error"]["code"] for row in records(client, ended.error_file_id)] == ["invalid_url"]
    deadline = time.monotonic() + 10
    while balance_micros(account) != before - total and time.monotonic() < deadline:
        time.sleep(0.05)
    assert balance_micros(account) == before - total
