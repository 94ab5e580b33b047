"""A GPU instance on the real broker whose balance runs out (issue 18): the ledger role's clock charges
it interval by interval and stops it when the balance cannot cover the next interval, within one
interval, never overdrawing; `tollgate audit verify` re-derives every charge from the log."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from eventlog import topics
from eventlog.kafka import KafkaLog
from ledger.resources import run_cost_micros
from schemas.codec import decode_event
from schemas.events import Event, ResourceBalanceLow, ResourceCharged, ResourceStarted
from tests.support import Admin, Role, free_port, wait_until_serving

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
admin_token = "tga_gpu_runs_out"
interval_s = 1
h100_hourly_micros = 5_600_000
balance_micros = 10_000  # covers 6 seconds of an H100 (9,334 micros), not 7 (10,889)


class Cluster:
    """A ledger and a gateway on the broker (GPU time needs no worker)."""

    def __init__(self, bootstrap: str, root: Path) -> None:
        self.root = root
        env = {
            "TOLLGATE_KAFKA_BOOTSTRAP": bootstrap,
            "TOLLGATE_ADMIN_TOKEN": admin_token,
            "TOLLGATE_RESOURCE_INTERVAL_S": str(interval_s),
            "TOLLGATE_CHECKPOINT_INTERVAL_S": "1",
        }
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        gateway = ["gateway", "--port", str(port), "--data-dir", str(root / "gw"), "--projector", "off"]
        self.roles = [
            Role("ledger", ["ledger"], env, root),
            Role("gateway", gateway, {**env, "TOLLGATE_INSTANCE_ID": "gpu-runs-out"}, root),
        ]
        wait_until_serving(self.url, self.roles[1])
        self.admin = Admin(self.url, admin_token)

    def stop(self) -> None:
        for role in reversed(self.roles):
            role.stop()


@pytest.fixture(scope="module")
def cluster(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = Cluster(kafka_bootstrap, tmp_path_factory.mktemp("gpu-runs-out"))
    yield running
    running.stop()


def ledger_events(bootstrap: str, org_id: str) -> list[Event]:
    consumer = KafkaLog(bootstrap).consumer([topics.LEDGER], client_id=f"gpu-runs-out-read-{time.monotonic_ns()}")
    events: list[Event] = []
    try:
        while not consumer.caught_up():
            for record in consumer.poll(1000, 500):
                if record.key == org_id.encode():
                    events.append(decode_event(record.value))
    finally:
        consumer.close()
    return events


def test_a_gpu_whose_balance_runs_out_is_stopped_by_the_ledger_never_overdrawing(
    cluster: Cluster, kafka_bootstrap: str
) -> None:
    org = cluster.admin.organization("gpu", "enterprise")
    cluster.admin.grant(org, "0.01")
    key = cluster.admin.token(org)
    http = httpx.Client(base_url=cluster.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    deadline = time.monotonic() + 60
    while http.get("/v1/gpu/instances").status_code != 200:  # the gateway folds the new key
        assert time.monotonic() < deadline, "the gateway never learned the key"
        time.sleep(0.1)
    started = http.post("/v1/gpu/instances", json={"gpu_slug": "h100-nvl", "name": "runs out"})
    assert started.status_code == 200, started.text
    instance_id = started.json()["instance"]["id"]
    assert started.json()["instance"]["status"] == "running"
    deadline = time.monotonic() + 60
    while (card := http.get(f"/v1/gpu/instances/{instance_id}").json()["instance"])["status"] == "running":
        assert time.monotonic() < deadline, f"the ledger never stopped the instance: {card}"
        time.sleep(0.2)
    assert card["status"] == "stopped" and card["stop_reason"] == "insufficient_credits"
    charged = run_cost_micros(h100_hourly_micros, 1, 6)
    assert card["billed_micros"] == charged == 9_334
    balance = cluster.admin.client.get(f"/v1/organizations/{org}/balance").json()
    assert balance["amount_micros"] == balance_micros - charged >= 0  # never overdrawn
    assert balance["held_micros"] == 0

    events = ledger_events(kafka_bootstrap, org)
    (start,) = [e for e in events if isinstance(e, ResourceStarted)]
    charges = [e for e in events if isinstance(e, ResourceCharged)]
    assert [(c.from_s, c.to_s) for c in charges] == [(s, s + 1) for s in range(6)]
    assert [c.ended for c in charges] == [""] * 5 + ["insufficient_credits"]
    assert sum(c.amount_micros for c in charges) == charged
    # Stopped within one interval of the end of the last interval the balance covered.
    end = start.occurred_at.timestamp() + 6
    assert end <= charges[-1].occurred_at.timestamp() <= end + interval_s + 1
    (warning,) = [e for e in events if isinstance(e, ResourceBalanceLow)]
    assert warning.occurred_at <= charges[-2].occurred_at

    key_file = cluster.root / "ledger.pem"
    key_file.write_text(httpx.get(f"{cluster.url}/v1/audit/public-key").json()["pem"])
    command = ["audit", "verify", "--kafka", kafka_bootstrap, "--public-key", str(key_file), "--json"]
    audit = subprocess.run([sys.executable, "-m", "tollgate", *command], capture_output=True, text=True, timeout=300)
    report = json.loads(audit.stdout)
    assert audit.returncode == 0 and report["ok"], report["problems"]
    assert report["time_charges_checked"] >= 1 + 6  # this run's start and intervals, among others
