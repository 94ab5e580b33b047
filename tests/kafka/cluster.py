"""A 3-node KRaft cluster for tests that kill brokers: compose/kafka.sh with TOLLGATE_KAFKA_NODES=3 on
free ports, every topic replicated 3 times with 2 in sync required (the ``kafka_cluster`` fixture in
tests/kafka/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient

kafka_script = Path(__file__).resolve().parents[2] / "compose" / "kafka.sh"
cluster_nodes = 3
# Starting three JVMs on two busy cores took 26 to 52 s here; a restarted node rejoins in about 12 s.
cluster_start_s_max = 240
# A restarted node copies what it missed from the leaders before it is back in every ISR.
in_sync_wait_s_max = 120
# What the fault tests measured, printed at the end of the run (tests/kafka/conftest.py).
fault_figures: list[str] = []


class KafkaCluster:
    """The cluster's script (start, kill and restart a node by id) and its metadata (who leads a
    partition, which node is the active controller, whether every replica is back in sync)."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.env = {**os.environ, "TOLLGATE_KAFKA_NODES": str(cluster_nodes), "TOLLGATE_KAFKA_DATA": str(data)}
        self.env.pop("TOLLGATE_KAFKA_PORT", None)  # free ports, picked by the script
        self.bootstrap = ""

    def script(self, *args: str, timeout_s: float = cluster_start_s_max) -> str:
        """Run compose/kafka.sh; a failure fails the test with everything the script said."""
        command = ["bash", str(kafka_script), *args]
        try:
            done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as error:
            said = error.stderr.decode(errors="replace") if isinstance(error.stderr, bytes) else error.stderr
            pytest.fail(f"compose/kafka.sh {' '.join(args)} ran over {timeout_s}s:\n{said}", pytrace=False)
        if done.returncode != 0:
            pytest.fail(f"compose/kafka.sh {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}", pytrace=False)
        return done.stdout.strip()

    def start(self, node: int | None = None) -> None:
        self.script("start", *([str(node)] if node is not None else []))
        self.bootstrap = self.script("bootstrap")

    def kill(self, node: int) -> None:
        """SIGKILL: the node dies mid-write, as a crashed machine would."""
        self.script("kill", str(node), timeout_s=60)

    def stop(self) -> None:
        subprocess.run(["bash", str(kafka_script), "stop"], env=self.env, capture_output=True, text=True, timeout=120)

    def _admin(self) -> KafkaAdminClient:
        return KafkaAdminClient(
            bootstrap_servers=self.bootstrap, client_id="test-cluster-admin", request_timeout_ms=10_000
        )

    def _describe(self, topics: list[str] | None) -> list[dict[str, Any]]:
        admin = self._admin()
        try:
            return list(admin.describe_topics(topics))
        finally:
            admin.close()

    def leader(self, topic: str, partition: int) -> int:
        """The node that leads ``topic``'s ``partition`` now, from the cluster's metadata."""
        for described in self._describe([topic]):
            for entry in described["partitions"]:
                if entry["partition_index"] == partition and entry["leader_id"] >= 0:
                    return int(entry["leader_id"])
        raise AssertionError(f"{topic}[{partition}] has no leader")

    def controller(self) -> int:
        """The active controller: the leader of the metadata quorum (DescribeQuorum, KIP-595)."""
        admin = self._admin()
        try:
            quorum = admin.describe_metadata_quorum()
        finally:
            admin.close()
        leader = int(quorum["topics"][0]["partitions"][0]["leader_id"])
        assert leader >= 0, f"no active controller: {quorum}"
        return leader

    def out_of_sync(self) -> list[str]:
        """Every partition (internal topics included) whose in-sync replicas are not all its replicas."""
        lagging = []
        for described in self._describe(None):
            for entry in described["partitions"]:
                if entry["leader_id"] < 0 or set(entry["isr_nodes"]) != set(entry["replica_nodes"]):
                    lagging.append(f"{described['name']}[{entry['partition_index']}] isr {entry['isr_nodes']}")
        return lagging

    def wait_in_sync(self, timeout_s: float = in_sync_wait_s_max) -> float:
        """Wait until every replica of every partition is in sync again; the seconds it took."""
        started = time.monotonic()
        lagging = ["(not asked yet)"]
        while time.monotonic() - started < timeout_s:
            try:
                lagging = self.out_of_sync()
            except Exception as error:  # a metadata request that met the failover: ask again
                lagging = [f"{type(error).__name__}: {error}"]
            if not lagging:
                return time.monotonic() - started
            time.sleep(0.5)
        raise AssertionError(f"replicas still out of sync after {timeout_s}s: {lagging[:10]}")
