"""A job whose result is over Kafka's record limit (the simulated backend padded past 8 MiB, as an
upstream that answers more than its request bounds), through the roles as processes on the real
broker: the client gets a 502 ``result_too_large`` at once, the hold is released, nothing is
charged. Before, the worker's send raised MessageSizeTooLargeError inside the job's task and nothing
answered it: the job stayed leased, its dispatch position uncommitted, and the client got a 504
after the request's two-minute wait."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from eventlog import record_bytes_max
from gateway.metering import job_id_for
from tests.kafka.test_kafka_e2e import Stack, ledger_totals

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, clickhouse_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(kafka_bootstrap, clickhouse_url, tmp_path_factory.mktemp("big"), {"TOLLGATE_SIM_KNOBS": "1"})
    yield running
    running.stop()


def test_a_result_over_the_record_limit_fails_at_once_uncharged(stack: Stack, kafka_bootstrap: str) -> None:
    org = stack.admin.organization()
    stack.admin.grant(org, "1")
    key = stack.admin.token(org)
    body = {
        "model": "sim-chat-small",
        "messages": [{"role": "user", "content": "Hello"}],
        "sim": {"result_padding_bytes": record_bytes_max + 1024},
    }
    started = time.monotonic()
    answer = httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        content=json.dumps(body),
        timeout=150,
    )
    took_s = time.monotonic() - started
    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["code"] == "result_too_large", answer.text
    assert took_s < 20, f"answered after {took_s:.1f} s"
    job = httpx.get(
        f"{stack.base_url}/v1/jobs/{job_id_for(answer.headers['x-request-id'])}",
        headers={"Authorization": f"Bearer {key}"},
    ).json()
    assert (job["state"], job["error"]["code"], job["cost_micros"]) == ("failed", "result_too_large", 0), job
    captured, placed, resolved = ledger_totals(kafka_bootstrap, org)
    assert (captured, placed, resolved) == (0, 1, 1)
