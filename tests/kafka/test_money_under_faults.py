"""Money under faults on the real broker, with real processes (issue 15): a gateway killed between the
charge and its reply, and a ledger down longer than a job's lease.

- The gateway that took a request is frozen (SIGSTOP) while its job runs, so it cannot write the reply;
  the worker finishes and the ledger captures (seen through a second gateway); then it is killed
  (SIGKILL) and restarted. The client's retry with its Idempotency-Key gets the original answer, in
  bounded time, on the restarted gateway and on the other one, and the request is charged once.
- The ledger is killed while requests run against a gateway's slice; their jobs finish within their
  leases while it is down, it stays down past the lease, and comes back: every finished job is
  captured (the ledger decides each command as of the broker's append time), none released as expired.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventlog import topics
from eventlog.kafka import KafkaLog
from gateway.idempotency import key_hash
from schemas.codec import decode_event
from schemas.events import Event, HoldCaptured, HoldReleased
from tests.kafka.invariants import audit_verify
from tests.support import Admin, Role, free_port, wait_until_serving

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
admin_token = "tga_money_faults"
lease_s = 3
retry_answer_s_max = 10.0  # a retry whose outcome is on the log answers within this (no 120 s wait)


class Cluster:
    """A ledger, a worker and two gateways (a and b) on the broker."""

    def __init__(self, bootstrap: str, root: Path) -> None:
        self.root = root
        self.bootstrap = bootstrap
        self.ports = {"a": free_port(), "b": free_port()}
        self.env = {
            "TOLLGATE_KAFKA_BOOTSTRAP": bootstrap,
            "TOLLGATE_ADMIN_TOKEN": admin_token,
            "TOLLGATE_JOB_LEASE_S": str(lease_s),
            "TOLLGATE_HOLD_TTL_S": "60",
            "TOLLGATE_REQUEST_WAIT_S_MAX": "60",
            "TOLLGATE_CHECKPOINT_INTERVAL_S": "1",
            "TOLLGATE_SIM_KNOBS": "1",  # slow jobs on purpose
        }
        self.roles: dict[str, Role] = {}
        for name in ("ledger", "worker", "gateway-a", "gateway-b"):
            self.start(name)
        for name in ("a", "b"):
            wait_until_serving(self.url(name), self.roles[f"gateway-{name}"])
        self.admin = Admin(self.url("b"), admin_token)

    def url(self, gateway: str) -> str:
        return f"http://127.0.0.1:{self.ports[gateway]}"

    def start(self, name: str) -> None:
        if name.startswith("gateway-"):
            instance = name.removeprefix("gateway-")
            args = ["gateway", "--port", str(self.ports[instance]), "--data-dir", str(self.root / name)]
            env = {**self.env, "TOLLGATE_INSTANCE_ID": f"money-{instance}"}
        else:
            args, env = [name], self.env
        self.roles[name] = Role(name, args, env, self.root)

    def restart_gateway(self, gateway: str) -> None:
        self.start(f"gateway-{gateway}")
        wait_until_serving(self.url(gateway), self.roles[f"gateway-{gateway}"])

    def stop(self) -> None:
        for role in self.roles.values():
            if role.process.poll() is None:
                os.kill(role.process.pid, signal.SIGCONT)  # a frozen role must be able to stop
            role.stop()


@pytest.fixture(scope="module")
def cluster(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = Cluster(kafka_bootstrap, tmp_path_factory.mktemp("money-faults"))
    yield running
    running.stop()


def ledger_events(bootstrap: str, org_id: str) -> list[Event]:
    """Every committed ledger event of the organization."""
    consumer = KafkaLog(bootstrap).consumer([topics.LEDGER], client_id=f"test-money-read-{uuid.uuid4().hex[:6]}")
    events: list[Event] = []
    deadline = time.monotonic() + 60
    try:
        while not consumer.caught_up() and time.monotonic() < deadline:
            events += [decode_event(r.value) for r in consumer.poll(1000, 200) if r.key == org_id.encode()]
    finally:
        consumer.close()
    return events


def wait_for(what: str, check: Any, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def job_status(base_url: str, key: str, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{base_url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    return dict(response.json()) if response.status_code == 200 else {}


def test_a_retry_after_the_gateway_died_between_charge_and_reply_gets_the_original_answer(
    cluster: Cluster, kafka_bootstrap: str
) -> None:
    org = cluster.admin.organization("crash-reply", plan="enterprise")
    cluster.admin.grant(org, "10")
    key = cluster.admin.token(org)
    idempotency_key = f"crash-{uuid.uuid4().hex[:8]}"
    job_id = "job_" + key_hash(org, idempotency_key)[:32]
    body = {
        "model": "sim-chat-small",
        "messages": [{"role": "user", "content": "answer me once"}],
        "max_tokens": 24,
        "sim": {"token_ms": 150},  # about 3.6 s of generation: time to freeze the gateway mid-job
    }
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": idempotency_key}
    lost: list[BaseException] = []

    def first_attempt() -> None:
        try:
            response = httpx.post(f"{cluster.url('a')}/v1/chat/completions", json=body, headers=headers, timeout=60)
            lost.append(AssertionError(f"the frozen gateway answered: {response.status_code} {response.text}"))
        except httpx.HTTPError as error:
            lost.append(error)  # the reply never came: the gateway died

    client = threading.Thread(target=first_attempt)
    client.start()
    gateway_a = cluster.roles["gateway-a"]
    wait_for("the job to run", lambda: job_status(cluster.url("b"), key, job_id).get("state") == "running")
    os.kill(gateway_a.process.pid, signal.SIGSTOP)  # it can no longer write a reply
    charged = wait_for(
        "the ledger's capture (seen through gateway b)",
        lambda: (job := job_status(cluster.url("b"), key, job_id)).get("status") == "completed" and job,
    )
    gateway_a.kill()  # SIGKILL: no shutdown hook, no reply
    client.join(60)
    assert lost and isinstance(lost[0], httpx.HTTPError), lost
    cluster.restart_gateway("a")

    for gateway in ("a", "b"):
        started = time.monotonic()
        again = httpx.post(f"{cluster.url(gateway)}/v1/chat/completions", json=body, headers=headers, timeout=60)
        elapsed = time.monotonic() - started
        assert again.status_code == 200, (gateway, again.text)
        assert elapsed < retry_answer_s_max, (gateway, elapsed)
        answer = again.json()
        assert answer["usage"]["cost_micros"] == charged["cost_micros"]
        assert answer["choices"] == charged["result"]["choices"]
        assert again.headers["x-request-id"] == "req_" + key_hash(org, idempotency_key)[:32]

    events = ledger_events(kafka_bootstrap, org)
    captures = [e for e in events if isinstance(e, HoldCaptured)]
    assert [c.job_id for c in captures] == [job_id]  # charged once
    balance = httpx.get(
        f"{cluster.url('b')}/v1/organizations/{org}/balance", headers={"Authorization": f"Bearer {admin_token}"}
    ).json()
    assert balance["amount_micros"] == 10_000_000 - captures[0].amount_micros


def test_a_ledger_outage_longer_than_a_lease_keeps_the_revenue(cluster: Cluster, kafka_bootstrap: str) -> None:
    org = cluster.admin.organization("ledger-outage", plan="enterprise")
    cluster.admin.grant(org, "10")
    key = cluster.admin.token(org)
    url = cluster.url("b")
    auth = {"Authorization": f"Bearer {key}"}

    def chat(index: int) -> httpx.Response:
        body = {
            "model": "sim-chat-small",
            "messages": [{"role": "user", "content": f"during the outage {index}"}],
            "max_tokens": 8,
            "sim": {"token_ms": 60},  # about half a second: well within a lease
        }
        return httpx.post(f"{url}/v1/chat/completions", json=body, headers=auth, timeout=60)

    # Warm up until gateway b holds a slice of the organization: requests then need no ledger decision.
    wait_for("a slice", lambda: chat(-1).status_code == 200 and _has_slice(url, org))
    cluster.roles["ledger"].kill()
    down_at = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(chat, range(16)))
    assert [a.status_code for a in answers] == [200] * 16, [a.text for a in answers if a.status_code != 200]
    time.sleep(max(0.0, 3 * lease_s - (time.monotonic() - down_at)))  # down well past every lease
    assert time.monotonic() - down_at > 3 * lease_s
    cluster.start("ledger")

    request_ids = {a.headers["x-request-id"] for a in answers}
    charged = {a.headers["x-request-id"]: int(a.json()["usage"]["cost_micros"]) for a in answers}

    def settled() -> list[Event] | None:
        events = ledger_events(kafka_bootstrap, org)
        done = {e.request_id for e in events if isinstance(e, (HoldCaptured, HoldReleased))}
        return events if request_ids <= done else None

    events = wait_for("the ledger to settle every hold", settled, timeout_s=120)
    captures = {e.request_id: e for e in events if isinstance(e, HoldCaptured) and e.request_id in request_ids}
    released = [e for e in events if isinstance(e, HoldReleased) and e.request_id in request_ids]
    assert released == [], [(e.request_id, e.reason) for e in released]
    assert {rid: c.amount_micros for rid, c in captures.items()} == charged  # every answered charge, no loss

    audit_verify(kafka_bootstrap)


def _has_slice(url: str, org: str) -> bool:
    balance = httpx.get(f"{url}/v1/organizations/{org}/balance", headers={"Authorization": f"Bearer {admin_token}"})
    return int(balance.json()["reserved_by_gateways_micros"]) > 0
