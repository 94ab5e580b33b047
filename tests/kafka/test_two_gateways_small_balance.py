"""Two gateway processes, each spending slices of one small balance in memory (quota leases), and
clients hammering both: never more is charged than the balance held, never twice, nothing is lost,
and the log proves it (audit verify).

The model here costs a flat 10,000 micros a request (its minimum charge, no rates), so its hold is its
charge and a balance of 95,000 covers exactly 9 requests: at most 9 may succeed, whatever the slices
(money a slice reserves and never uses can only turn a request away, never let one more through).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from eventlog import topics
from eventlog.kafka import KafkaLog
from schemas.codec import decode_event
from schemas.events import Event, HoldCaptured, HoldPlaced, SliceGranted, SliceReturned
from tests.support import Admin, Role, free_port, wait_until_serving

admin_token = "tga_two_gateways"
flat_micros = 10_000
balance_micros = 95_000
clients_per_gateway = 8
requests_per_client = 6


class Cluster:
    def __init__(self, bootstrap: str, root: Path) -> None:
        self.root = root
        self.env = {
            "TOLLGATE_KAFKA_BOOTSTRAP": bootstrap,
            "TOLLGATE_ADMIN_TOKEN": admin_token,
            "TOLLGATE_IP_REQUESTS_PER_WINDOW_MAX": "1000000",
            # Slices small enough for this balance to get some (the default least is 0.1 credit).
            "TOLLGATE_QUOTA_SLICE_MICROS_MIN": "20000",
            "TOLLGATE_QUOTA_SLICE_TTL_S": "8",
        }
        # The ledger and worker keep the default instance id: they are static group members (KIP-345)
        # and take over the places of the previous module's roles at once; a new id would wait out
        # the departed member's session first.
        self.roles = [Role("ledger", ["ledger"], self.env, root), Role("worker", ["worker"], self.env, root)]
        self.urls: list[str] = []
        for name in ("a", "b"):
            port = free_port()
            args = ["gateway", "--port", str(port), "--data-dir", str(root / f"gw-{name}"), "--projector", "off"]
            self.roles.append(Role(f"gateway-{name}", args, {**self.env, "TOLLGATE_INSTANCE_ID": name}, root))
            self.urls.append(f"http://127.0.0.1:{port}")
        for role, url in zip(self.roles[2:], self.urls, strict=True):
            wait_until_serving(url, role)
        self.admin = Admin(self.urls[0], admin_token)

    def stop(self) -> None:
        for role in reversed(self.roles):
            role.stop()


@pytest.fixture(scope="module")
def cluster(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = Cluster(kafka_bootstrap, tmp_path_factory.mktemp("two-gateways"))
    yield running
    running.stop()


def ledger_events(bootstrap: str, org_id: str) -> list[Event]:
    consumer = KafkaLog(bootstrap).consumer([topics.LEDGER], client_id=f"two-gateways-read-{time.monotonic_ns()}")
    events: list[Event] = []
    try:
        while not consumer.caught_up():
            for record in consumer.poll(1000, 500):
                if record.key == org_id.encode():
                    events.append(decode_event(record.value))
    finally:
        consumer.close()
    return events


def wait_known(url: str, key: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError(f"{url} never learned the key")


def models(url: str, key: str) -> set[str]:
    listed = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    return {str(m["id"]) for m in listed}


def test_two_gateways_on_a_small_balance_never_overdraw(cluster: Cluster, kafka_bootstrap: str) -> None:
    book = cluster.admin.client.get("/v1/price-books").json()["data"][0]
    flat = {**book["models"]["sim-chat-small"], "model": "flat-10k", "minimum_charge_micros": flat_micros}
    for rate in ("input_token_rate", "cached_input_token_rate", "output_token_rate"):
        flat[rate] = 0
    version = f"two-gateways-{time.monotonic_ns()}"
    published = cluster.admin.client.post(
        "/v1/price-books", json={"version": version, "models": {**book["models"], "flat-10k": flat}}
    )
    assert published.status_code == 201, published.text
    org = cluster.admin.organization("small", "enterprise")
    cluster.admin.grant(org, "0.095")  # balance_micros
    key = cluster.admin.token(org)
    for url in cluster.urls:
        wait_known(url, key)
        deadline = time.monotonic() + 30
        while "flat-10k" not in models(url, key):
            assert time.monotonic() < deadline, "the price book never reached a gateway"
            time.sleep(0.1)
    outcomes: Counter[str] = Counter()
    charged: list[int] = []
    lock = threading.Lock()

    def client(url: str) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
            for i in range(requests_per_client):
                answer = http.post(
                    "/v1/chat/completions",
                    json={"model": "flat-10k", "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 8},
                )
                with lock:
                    outcomes[f"{url[-5:]}:{answer.status_code}"] += 1
                    if answer.status_code == 200:
                        charged.append(int(answer.json()["usage"]["cost_micros"]))

    threads = [threading.Thread(target=client, args=(url,)) for url in cluster.urls for _ in range(clients_per_gateway)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    answered = sum(outcomes.values())
    assert answered == len(cluster.urls) * clients_per_gateway * requests_per_client, outcomes
    successes = sum(n for k, n in outcomes.items() if k.endswith(":200"))
    refused = sum(n for k, n in outcomes.items() if k.endswith(":402"))
    assert successes + refused == answered, f"only 200 or 402: {outcomes}"
    assert 0 < successes <= balance_micros // flat_micros, outcomes  # never more than the balance covers
    assert charged == [flat_micros] * successes

    # Every slice returns (or expires); then the ledger holds exactly what the answers said.
    deadline = time.monotonic() + 60
    while True:
        events = ledger_events(kafka_bootstrap, org)
        granted = {e.slice_id for e in events if isinstance(e, SliceGranted)}
        returned = {e.slice_id for e in events if isinstance(e, SliceReturned)}
        captures = [e for e in events if isinstance(e, HoldCaptured)]
        if granted <= returned and len(captures) >= successes:
            break
        assert time.monotonic() < deadline, f"slices {granted - returned} never returned"
        time.sleep(0.5)
    assert granted, "the gateways took slices of the balance"
    carved = [e for e in events if isinstance(e, HoldPlaced) and e.slice_id]
    assert carved, "some holds were carved out of slices"
    assert len(captures) == successes and {c.amount_micros for c in captures} == {flat_micros}
    balance = cluster.admin.client.get(f"/v1/organizations/{org}/balance").json()
    assert balance["amount_micros"] == balance_micros - successes * flat_micros >= 0
    assert balance["held_micros"] == 0 and balance["reserved_by_gateways_micros"] == 0
    # The log alone proves it.
    key_file = cluster.root / "ledger.pem"
    key_file.write_text(httpx.get(f"{cluster.urls[0]}/v1/audit/public-key").json()["pem"])
    command = ["audit", "verify", "--kafka", kafka_bootstrap, "--public-key", str(key_file), "--json"]
    audit = subprocess.run(
        [sys.executable, "-m", "tollgate", *command],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(audit.stdout)
    assert audit.returncode == 0 and report["ok"], report["problems"]
