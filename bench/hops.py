"""Where a request's time goes on the Kafka stack: for every request of a window, the moment each step
of its way reached the log (the records' timestamps), from its admission on.

    .venv/bin/python bench/hops.py --bootstrap 127.0.0.1:19092 --since-ms 1796390000000 [--records-max N]

Steps, in the order a sync chat request takes them: the rate limiter's admission (``tollgate.requests``),
the gateway's hold (``tollgate.commands``), its job (``tollgate.dispatch.*``), the worker's lease, its
completion (``tollgate.jobs``) and capture, and the ledger's decisions (``tollgate.ledger``). A record's
timestamp is its producer's clock at the send, or the broker's at the append on topics stamped with
LogAppendTime (``tollgate.commands``); every process here shares one clock. The admission's moment is
its event's ``occurred_at`` (the limiter's decision): the gateway appends it with the request's hold
(``gateway/deferred.py``), so its record's timestamp is the hold's. Reads at most
``--records-max`` records. Prints p50/p90/p99 per step in ms and saves bench/results/hops.json;
``bench/compare.py`` runs it after each Kafka point.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec

repo = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(repo))

from bench.e2e import percentile
from eventlog import topics
from eventlog.kafka import KafkaLog
from eventlog.read import read_topic
from schemas.moments import parse_moment

# (step, record type), in the order a request takes them.
steps = [
    ("admitted", "request.admitted.v1"),
    ("hold sent", "place_hold.v1"),
    ("job sent", "job.queued.v1"),
    ("lease sent", "start_job.v1"),
    ("completion sent", "job.completed.v1"),
    ("capture sent", "capture_hold.v1"),
    ("hold placed", "hold.placed.v1"),
    ("leased", "job.leased.v1"),
    ("captured", "hold.captured.v1"),
]
records_max_default = 2_000_000


class _Stamp(msgspec.Struct):
    type: str = ""
    correlation_id: str = ""
    occurred_at: str = ""


def read_stamps(bootstrap: str, since_ms: int, records_max: int) -> dict[str, dict[str, int]]:
    """correlation id -> {record type: the first such record's timestamp}, from ``since_ms`` on."""
    log = KafkaLog(bootstrap)
    wanted = {kind for _, kind in steps}
    names = [topics.REQUESTS, topics.COMMANDS, topics.dispatch_topic("default"), topics.JOBS, topics.LEDGER]
    decoder = msgspec.json.Decoder(_Stamp)
    stamps: dict[str, dict[str, int]] = defaultdict(dict)
    try:
        batches = (batch for name in names for batch in read_topic(log, name, quiet=True, start_ms=since_ms))
        for record in itertools.islice(itertools.chain.from_iterable(batches), records_max):
            try:
                stamp = decoder.decode(record.value)
            except msgspec.DecodeError:
                continue
            if stamp.type in wanted and stamp.correlation_id:
                at_ms = record.timestamp_ms
                if stamp.type == "request.admitted.v1" and stamp.occurred_at:
                    at_ms = int(parse_moment(stamp.occurred_at).timestamp() * 1000)
                stamps[stamp.correlation_id].setdefault(stamp.type, at_ms)
    finally:
        log.close()  # and the reader an early stop at records_max left open
    return stamps


def hop_delays(stamps: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Per step, p50/p90/p99 ms after the request's admission, over the requests that completed."""
    after: dict[str, list[float]] = defaultdict(list)
    requests = 0
    for seen in stamps.values():
        start = seen.get("request.admitted.v1")
        if start is None or "job.completed.v1" not in seen:
            continue
        requests += 1
        for name, kind in steps:
            if kind in seen:
                after[name].append(seen[kind] - start)

    figures = {}
    for name, _ in steps:
        values = after[name]
        if values:
            figures[name] = {"n": len(values), **{f"p{q}": percentile(values, q) for q in (50, 90, 99)}}
    return {"requests": requests, "ms_after_admission": figures}


def describe(report: dict[str, Any]) -> str:
    lines = [f"{report['requests']} completed requests; ms after the admission:"]
    for name, figures in report["ms_after_admission"].items():
        lines.append(f"  {name:16} p50 {figures['p50']:6}  p90 {figures['p90']:6}  p99 {figures['p99']:6}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--since-ms", type=int, required=True, help="the window's start (ms since the epoch)")
    parser.add_argument("--records-max", type=int, default=records_max_default)
    parser.add_argument("--out", default=str(repo / "bench" / "results" / "hops.json"))
    args = parser.parse_args()
    report = hop_delays(read_stamps(args.bootstrap, args.since_ms, args.records_max))
    print(describe(report))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"benchmark": "hops", "since_ms": args.since_ms, **report}, indent=2))


if __name__ == "__main__":
    main()
