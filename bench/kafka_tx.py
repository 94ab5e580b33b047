"""Latency of one read-process-write hop through the Kafka log: produce a record, poll it with a
transactional processor, commit one output in a transaction, read it back read_committed.

    .venv/bin/python bench/kafka_tx.py --bootstrap 127.0.0.1:19092 [--hops 200]

Without --bootstrap it starts its own broker with compose/kafka.sh on a free port. Prints p50/p90/max
per phase and saves bench/results/kafka_tx.json. A sync chat request crosses three such hops.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

repo = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(repo))

from eventlog import Outgoing
from eventlog.kafka import KafkaLog
from tests.support import free_port_pair


def summary(values_ms: list[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    return {
        "p50": round(ordered[len(ordered) // 2], 2),
        "p90": round(ordered[int(len(ordered) * 0.9)], 2),
        "max": round(ordered[-1], 2),
    }


def measure(bootstrap: str, hops: int) -> dict[str, dict[str, float]]:
    log = KafkaLog(bootstrap)
    unique = uuid.uuid4().hex[:8]
    source, sink = f"bench-in-{unique}", f"bench-out-{unique}"
    log.ensure_topics([source, sink])
    producer = log.producer("bench")
    processor = log.processor(
        [source], group=f"bench-{unique}", transactional_id=f"bench-{unique}", on_assigned=lambda partitions: None
    )
    reader = log.consumer([sink], client_id="bench-reader")
    for _ in range(20):  # join the group before timing
        processor.poll(10, 100)
    phases: dict[str, list[float]] = {"produce_to_poll": [], "commit_transaction": [], "hop_total": []}
    for _ in range(hops):
        started = time.perf_counter()
        producer.send([Outgoing(source, "org", b"x")])
        while not processor.poll(10, 100):
            pass
        polled = time.perf_counter()
        processor.commit_transaction([Outgoing(sink, "org", b"y")])
        committed = time.perf_counter()
        while not reader.poll(10, 100):
            pass
        done = time.perf_counter()
        phases["produce_to_poll"].append((polled - started) * 1000)
        phases["commit_transaction"].append((committed - polled) * 1000)
        phases["hop_total"].append((done - started) * 1000)
    processor.close()
    reader.close()
    producer.close()
    return {name: summary(values) for name, values in phases.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", default="")
    parser.add_argument("--hops", type=int, default=200)
    args = parser.parse_args()
    env = None
    bootstrap = args.bootstrap
    if not bootstrap:
        port = free_port_pair()
        env = {**os.environ, "TOLLGATE_KAFKA_PORT": str(port), "TOLLGATE_KAFKA_DATA": tempfile.mkdtemp()}
        subprocess.run(["bash", str(repo / "compose" / "kafka.sh"), "start"], env=env, check=True)
        bootstrap = f"127.0.0.1:{port}"
    try:
        report = {"benchmark": "kafka_transaction_hop", "hops": args.hops, "ms": measure(bootstrap, args.hops)}
    finally:
        if env is not None:
            subprocess.run(["bash", str(repo / "compose" / "kafka.sh"), "stop"], env=env, check=False)
    out = repo / "bench" / "results" / "kafka_tx.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
