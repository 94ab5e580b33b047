"""Files (and their storage limit) and batches through the official openai SDK, with every role a
separate process on the real broker: the file events are the ledger's, the gateway lists what it
folded from the ledger topic."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from eventlog import topics
from eventlog.kafka import KafkaLog
from schemas.codec import decode_event
from schemas.events import FileDeleted, FileStored
from tests.kafka.test_kafka_e2e import Stack
from tests.support import usage

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, clickhouse_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(
        kafka_bootstrap,
        clickhouse_url,
        tmp_path_factory.mktemp("files"),
        # Storage limit of 1 MB; the simulated backend's knobs on, for the slow lines a cancel needs.
        extra_env={"TOLLGATE_STORAGE_BYTES_MAX": "1000000", "TOLLGATE_SIM_KNOBS": "1"},
    )
    yield running
    running.stop()


def file_events(bootstrap: str, org_id: str) -> list[str]:
    consumer = KafkaLog(bootstrap).consumer([topics.LEDGER], client_id="test-files")
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while not consumer.caught_up() and time.monotonic() < deadline:
        for record in consumer.poll(1000, 200):
            event = decode_event(record.value)
            if event.org_id == org_id and isinstance(event, (FileStored, FileDeleted)):
                seen.append(f"{type(event).__name__} {event.file_id}")
    consumer.close()
    return seen


def test_files_through_kafka(stack: Stack, kafka_bootstrap: str) -> None:
    org = stack.admin.organization()
    stack.admin.grant(org, "5")
    client = stack.client(stack.admin.token(org))
    data = b"line one\nline two\n"
    raw = client.files.with_raw_response.create(file=("notes.txt", io.BytesIO(data)), purpose="user_data")
    created = raw.parse()
    assert raw.headers["x-storage-used-bytes"] == str(len(data))
    assert raw.headers["x-storage-limit-bytes"] == "1000000"
    assert [f.id for f in client.files.list()] == [created.id]
    assert client.files.content(created.id).read() == data
    with pytest.raises(openai.APIStatusError) as refused:
        client.files.create(file=("big.bin", io.BytesIO(b"x" * 999_990)), purpose="user_data")
    assert refused.value.status_code == 413
    assert client.files.delete(created.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)
    assert file_events(kafka_bootstrap, org) == [f"FileStored {created.id}", f"FileDeleted {created.id}"]


def chat_line(custom_id: str, extra: dict[str, Any] | None = None) -> bytes:
    body = {"model": "sim-chat-small", "messages": [{"role": "user", "content": f"hi {custom_id}"}], "max_tokens": 8}
    item = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": {**body, **(extra or {})}}
    return json.dumps(item).encode() + b"\n"


def ended(client: openai.OpenAI, batch_id: str) -> Any:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "cancelled", "failed"):
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} did not end")


def cost_of(client: openai.OpenAI, file_id: str | None) -> tuple[int, int]:
    """(lines, the sum of their charges) of a batch's output file."""
    if file_id is None:
        return 0, 0
    rows = [json.loads(row) for row in client.files.content(file_id).text.splitlines()]
    return len(rows), sum(row["response"]["body"]["usage"]["cost_micros"] for row in rows)


def settled_balance(stack: Stack, key: str, expected: int) -> int:
    deadline = time.monotonic() + 30
    while True:
        balance = usage(stack.base_url, key)["balance"]
        if (balance["amount_micros"] == expected and balance["held_micros"] == 0) or time.monotonic() > deadline:
            return int(balance["amount_micros"])
        time.sleep(0.2)


def test_a_batch_and_a_cancelled_batch_through_kafka(stack: Stack) -> None:
    org = stack.admin.organization()
    stack.admin.grant(org, "50")
    key = stack.admin.token(org)
    client = stack.client(key)
    data = b"".join(chat_line(f"r{i}") for i in range(100)) + b"not json\n"
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = ended(client, batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (100, 1)
    lines, cost = cost_of(client, done.output_file_id)
    assert lines == 100
    assert settled_balance(stack, key, 50_000_000 - cost) == 50_000_000 - cost

    slow = b"".join(chat_line(f"s{i}", {"sim": {"token_ms": 25}}) for i in range(300))
    uploaded = client.files.create(file=("slow.jsonl", io.BytesIO(slow)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    time.sleep(1)
    client.batches.cancel(batch.id)
    cancelled = ended(client, batch.id)
    assert cancelled.status == "cancelled" and cancelled.request_counts is not None
    finished = cancelled.request_counts.completed
    assert 0 < finished < 300
    lines, more = cost_of(client, cancelled.output_file_id)
    assert lines == finished
    assert settled_balance(stack, key, 50_000_000 - cost - more) == 50_000_000 - cost - more
