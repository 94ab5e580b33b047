"""Crash safety on the real broker: SIGKILL the worker, the gateway and the ledger during a stream of
requests, then prove from the log alone that every job ended once, no hold outlived its time-to-live,
and the charges are exactly the priced usage. Then deliver every command again: nothing changes."""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ledger.log.kafka import KafkaLog
from ledger.pricing import default_price_book, price_micros
from schemas import topics
from schemas.codec import decode_event
from schemas.events import CreditsGranted, Event, HoldCaptured, HoldPlaced, HoldReleased, JobLeased, JobLeaseLost
from tests.conftest import free_port
from tests.processes import Admin, Role, wait_until_serving

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
admin_token = "tga_faults"
book = default_price_book()
requests_total = 60


class Cluster:
    def __init__(self, bootstrap: str, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "TOLLGATE_KAFKA_BOOTSTRAP": bootstrap,
            "TOLLGATE_ADMIN_TOKEN": admin_token,
            "TOLLGATE_HOLD_TTL_S": "25",
            "TOLLGATE_JOB_LEASE_S": "3",
            "TOLLGATE_SIM_VIDEO_SECOND_MS": "300",
            "TOLLGATE_JOB_RETRY_BACKOFF_MS": "50",
            "TOLLGATE_REQUEST_WAIT_S_MAX": "60",
            "TOLLGATE_CHECKPOINT_INTERVAL_S": "1",
        }
        self.roles: dict[str, Role] = {}
        for name in ("ledger", "worker", "gateway"):
            self.start(name)
        wait_until_serving(self.base_url, self.roles["gateway"])
        self.admin = Admin(self.base_url, admin_token)

    def start(self, name: str) -> None:
        args = (
            ["gateway", "--port", str(self.port), "--data-dir", str(self.root / "gateway")]
            if name == "gateway"
            else [name]
        )
        self.roles[name] = Role(name, args, self.env, self.root)

    def kill_and_restart(self, name: str, down_s: float) -> None:
        self.roles[name].kill()  # SIGKILL: no shutdown hook runs
        time.sleep(down_s)
        self.start(name)
        if name == "gateway":
            wait_until_serving(self.base_url, self.roles["gateway"])

    def stop(self) -> None:
        for role in self.roles.values():
            role.stop()


@pytest.fixture(scope="module")
def cluster(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = Cluster(kafka_bootstrap, tmp_path_factory.mktemp("faults"))
    yield running
    running.stop()


def org_events(bootstrap: str, topic: str, org_id: str) -> list[Event]:
    consumer = KafkaLog(bootstrap).consumer([topic], client_id="test-faults-audit")
    events: list[Event] = []
    deadline = time.monotonic() + 60
    try:
        while not consumer.caught_up() and time.monotonic() < deadline:
            for record in consumer.poll(1000, 200):
                if record.key == org_id.encode():
                    events.append(decode_event(record.value))
    finally:
        consumer.close()
    return events


def submit(base_url: str, key: str, stop: threading.Event, outcomes: Counter[str]) -> None:
    """A steady stream of sync chats, async chats and async videos; failures while a role is down are expected."""
    chooser = random.Random(7)
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=90) as client:
        for i in range(requests_total):
            if stop.is_set():
                return
            kind = ("sync-chat", "async-chat", "video")[i % 3]
            if kind == "video":
                path, body = "/v1/videos/generations", {"prompt": f"clip {i}", "duration": chooser.randint(1, 4)}
            else:
                path = "/v1/chat/completions"
                body = {
                    "model": "sim-chat-small",
                    "messages": [{"role": "user", "content": f"request {i}"}],
                    "sim": {"token_ms": 20},
                    "async": kind == "async-chat",
                }
            try:
                outcomes[f"{kind}:{client.post(path, json=body).status_code}"] += 1
            except httpx.HTTPError:
                outcomes[f"{kind}:unreachable"] += 1
            time.sleep(0.15)


def test_killed_roles_lose_no_charge_and_double_none(cluster: Cluster, kafka_bootstrap: str) -> None:
    org = cluster.admin.organization()
    cluster.admin.grant(org, "100")
    key = cluster.admin.token(org)
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    # Three clients at once, so the kills find requests in flight.
    submitters = [
        threading.Thread(target=submit, args=(cluster.base_url, key, stop, outcomes), daemon=True) for _ in range(3)
    ]
    for submitter in submitters:
        submitter.start()
    try:
        time.sleep(2.5)
        cluster.kill_and_restart("worker", down_s=4)  # longer than a lease: the ledger sees it lost
        time.sleep(2.0)
        cluster.kill_and_restart("gateway", down_s=1)
        time.sleep(2.0)
        cluster.kill_and_restart("ledger", down_s=1)
        for submitter in submitters:
            submitter.join(120)
    finally:
        stop.set()
    assert sum(v for k, v in outcomes.items() if k.endswith((":200", ":202"))) > requests_total // 3, outcomes

    # Wait until every hold on the log is resolved: the time-to-live bounds this.
    deadline = time.monotonic() + 90
    while True:
        ledger = org_events(kafka_bootstrap, topics.LEDGER, org)
        placed = {e.hold_id: e for e in ledger if isinstance(e, HoldPlaced)}
        ends = Counter(e.hold_id for e in ledger if isinstance(e, (HoldCaptured, HoldReleased)))
        if set(ends) >= set(placed) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert placed, "requests reached the ledger"
    assert set(ends) == set(placed), f"holds never resolved: {set(placed) - set(ends)}"
    assert all(count == 1 for count in ends.values()), "every job ends exactly once"

    # The worker died mid-job: some job lost its lease and ran again as a second attempt.
    assert any(isinstance(e, JobLeaseLost) for e in ledger), "the kill hit a running job"
    assert any(isinstance(e, JobLeased) and e.attempt >= 2 for e in ledger), "and a second run finished it"
    print(
        "outcomes", dict(outcomes), "holds", len(placed), "captured", sum(isinstance(e, HoldCaptured) for e in ledger)
    )

    captures = [e for e in ledger if isinstance(e, HoldCaptured)]
    for capture in captures:
        priced = price_micros(book.models[capture.model], capture.units)
        assert capture.priced_micros == priced
        assert capture.amount_micros == min(priced, placed[capture.hold_id].amount_micros)
    charged = sum(c.amount_micros for c in captures)
    assert charged == sum(min(c.priced_micros, placed[c.hold_id].amount_micros) for c in captures)
    granted = sum(e.amount_micros for e in ledger if isinstance(e, CreditsGranted))
    balance = httpx.get(
        f"{cluster.base_url}/v1/account/usage", headers={"Authorization": f"Bearer {key}"}, timeout=30
    ).json()["balance"]
    assert balance["held_micros"] == 0
    assert balance["amount_micros"] == granted - charged

    # Every job event on the jobs topic belongs to a hold, and its terminal events agree with the ledger.
    jobs = org_events(kafka_bootstrap, topics.JOBS, org)
    job_of_hold = {e.job_id: e.hold_id for e in placed.values()}
    assert all(getattr(e, "job_id", None) in job_of_hold for e in jobs)

    # Duplicate delivery of every command changes nothing.
    commands = KafkaLog(kafka_bootstrap).consumer([topics.COMMANDS], client_id="test-faults-replay")
    replay: list[tuple[str, bytes]] = []
    while not commands.caught_up():
        replay += [(r.key.decode(), r.value) for r in commands.poll(1000, 200) if r.key == org.encode()]
    commands.close()
    producer = KafkaLog(kafka_bootstrap).producer("test-faults-duplicates")
    from ledger.log import Outgoing

    producer.send([Outgoing(topics.COMMANDS, k, v) for k, v in replay])
    producer.flush(30)
    producer.close()
    time.sleep(8)
    after = org_events(kafka_bootstrap, topics.LEDGER, org)
    money = (HoldPlaced, HoldCaptured, HoldReleased, CreditsGranted)
    assert [e.event_id for e in after if isinstance(e, money)] == [e.event_id for e in ledger if isinstance(e, money)]


def test_the_crashed_log_verifies_from_the_log_alone(cluster: Cluster, kafka_bootstrap: str) -> None:
    """After the kills above: the chain is unbroken, every checkpoint is signed by the ledger's key,
    every capture is its priced usage, and the gateway's balances equal the ones derived from the log."""
    import json
    import subprocess
    import sys

    time.sleep(2)  # the last checkpoint
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledger.cli",
            "audit",
            "verify",
            "--kafka",
            kafka_bootstrap,
            "--public-key",
            os.environ["TOLLGATE_LEDGER_SIGNING_KEY_FILE"],
            "--gateway",
            cluster.base_url,
            "--admin-token",
            admin_token,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["captures_checked"] > 0
    assert sum(p["checkpoints"] for p in report["partitions"].values()) > 0


def test_a_replay_of_the_crashed_log_reproduces_balances_and_usage(
    cluster: Cluster, kafka_bootstrap: str, tmp_path: Path
) -> None:
    import json
    import subprocess
    import sys

    args = ["--kafka", kafka_bootstrap, "--gateway", cluster.base_url, "--admin-token", admin_token]
    command = [sys.executable, "-m", "ledger.cli", "replay", "--projections", "balances,jobs,usage"]
    deadline = time.monotonic() + 60
    while True:  # the gateway's own projector may still be writing the last rows
        result = subprocess.run(
            [*command, "--target", str(tmp_path / f"rebuilt-{time.monotonic_ns()}"), *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["usage"]["rollups_agree"] and report["balances"]["book_total_micros"] == 0
