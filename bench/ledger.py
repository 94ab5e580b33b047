"""Ledger benchmarks: pure decisions per second in one process, and hold+capture pairs per second
through the ledger role on a real Kafka broker.

    .venv/bin/python bench/ledger.py                                  # both; starts its own broker
    .venv/bin/python bench/ledger.py --pairs 20000 --bootstrap 127.0.0.1:19092
    .venv/bin/python bench/ledger.py --skip-kafka --decisions 200000  # pure part only
    .venv/bin/python bench/ledger.py --skip-pure --batch-records-max 5000  # the role's batch size

a) Pure: PlaceHold + CaptureHold pairs across --orgs organizations (each granted plenty), built as
   command objects up front; timed as decide + evolve per command, as decide only on a fixed wallet,
   and as LedgerRole.decide_batch on encoded commands (decode + decide + evolve + encode). A cProfile
   run then says where the time goes. Target named by the issue: 200,000 decisions/s.
b) Kafka: the ledger role runs in a child process (this script with --ledger-child: the same
   LedgerRole.run as `tollgate ledger`, plus counters for batch sizes and timers around the
   transactional producer's calls). This process funds the orgs,
   then produces --pairs PlaceHold commands followed by their CaptureHold commands to tollgate.commands
   (keyed by org) and times first send -> last HoldCaptured visible to a read_committed consumer of
   tollgate.ledger ("live"). It then stops the role, produces another --pairs pairs, restarts the role
   and times how fast it drains that backlog ("backlog"), which leaves the load generator out of it.
   Target named by the issue: 20,000 pairs/s.

Without --bootstrap a single-node broker is started with compose/kafka.sh on a free port and a temporary
data dir, and stopped at the end; a --bootstrap broker must have no other ledger in group
tollgate-ledger. Traffic stays on 127.0.0.1; each phase gives up after --timeout-s.
Prints figures and saves JSON to bench/results/ledger.json (--out to change).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import platform
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

repo = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(repo))

from eventlog import Outgoing, topics
from eventlog.embedded import EmbeddedLog
from eventlog.kafka import KafkaLog
from eventlog.settings import Settings
from ledger.pricing import default_price_book
from ledger.role import LedgerRole
from ledger.wallet import Rejection, Wallet, decide, evolve
from schemas.codec import decode_event, encode
from schemas.commands import AnyCommand, CaptureHold, GrantCredits, JobSpec, PlaceHold
from schemas.events import HoldCaptured, HoldPlaced
from schemas.ids import event_id_for
from schemas.units import Units

MODEL = "sim-chat-small"
PLENTY = 10**12  # micros granted to each org: no hold is ever refused
HOLD_MICROS = 5_000
UNITS = Units(input_tokens=120, output_tokens=350)  # 228 micros under the default book
now = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
kafka_script = repo / "compose" / "kafka.sh"


# --- workload -----------------------------------------------------------------------------------------


def org_ids(count: int, run: str) -> list[str]:
    return [f"bench-{run}-{i:04d}" for i in range(count)]


def grants(orgs: Sequence[str]) -> list[GrantCredits]:
    return [
        GrantCredits(
            command_id=f"grant-{org}",
            org_id=org,
            issued_at=now,
            grant_id=f"grant-{org}",
            amount_micros=PLENTY,
            kind="paid",
        )
        for org in orgs
    ]


_payload = msgspec.Raw(b'{"messages":[{"role":"user","content":"benchmark me"}]}')


def place(org: str, hold_id: str) -> PlaceHold:
    return PlaceHold(
        command_id=f"place-{hold_id}",
        org_id=org,
        issued_at=now,
        correlation_id=hold_id,
        hold_id=hold_id,
        request_id=hold_id,
        amount_micros=HOLD_MICROS,
        ttl_s=900,
        job=JobSpec(
            job_id=f"job-{hold_id}",
            token_id="tok_bench",
            model=MODEL,
            endpoint="/v1/chat/completions",
            pool="default",
            payload=_payload,
        ),
    )


def capture(org: str, hold_id: str) -> CaptureHold:
    return CaptureHold(
        command_id=f"capture-{hold_id}",
        org_id=org,
        issued_at=now,
        correlation_id=hold_id,
        hold_id=hold_id,
        job_id=f"job-{hold_id}",
        units=UNITS,
        latency_ms=12,
    )


def pairs_of(orgs: Sequence[str], pairs: int, prefix: str) -> tuple[list[PlaceHold], list[CaptureHold]]:
    places, captures = [], []
    for k in range(pairs):
        org = orgs[k % len(orgs)]
        hold_id = f"{prefix}{k}"
        places.append(place(org, hold_id))
        captures.append(capture(org, hold_id))
    return places, captures


# --- a) pure decisions ----------------------------------------------------------------------------------


def funded_wallets(orgs: Sequence[str]) -> dict[str, Wallet]:
    book = default_price_book()
    wallets = {}
    for command in grants(orgs):
        wallet = Wallet(org_id=command.org_id)
        wallet.collect_events()
        result = decide(wallet, command, now, book)
        assert not isinstance(result, Rejection)
        for event in result:
            evolve(wallet, event)
        wallets[command.org_id] = wallet
    return wallets


def decide_and_evolve(wallets: dict[str, Wallet], commands: Sequence[AnyCommand]) -> int:
    """The ledger's pure work per command; the number of events decided."""
    book = default_price_book()
    events = 0
    for command in commands:
        wallet = wallets[command.org_id]
        result = decide(wallet, command, now, book)
        if isinstance(result, Rejection):
            raise AssertionError(f"{command.command_id} rejected: {result.value}")
        for event in result:
            evolve(wallet, event)
        events += len(result)
    return events


def timed(label: str, count: int, run: Callable[[], object], unit: str = "decisions") -> dict[str, Any]:
    started = time.perf_counter()
    run()
    elapsed = time.perf_counter() - started
    rate = count / elapsed
    print(f"  {label:<58} {count:>8,} in {elapsed:6.2f} s = {rate:>10,.0f} {unit}/s ({elapsed / count * 1e6:.2f} µs)")
    return {
        "count": count,
        "seconds": round(elapsed, 4),
        "per_s": round(rate),
        "us_each": round(elapsed / count * 1e6, 3),
    }


def pure_benchmark(decisions: int, org_count: int) -> dict[str, Any]:
    pairs = decisions // 2
    print(f"a) pure decisions: {decisions:,} commands ({pairs:,} PlaceHold + CaptureHold pairs), {org_count:,} orgs")
    orgs = org_ids(org_count, "pure")
    places, captures = pairs_of(orgs, decisions // 2, "h")
    interleaved: list[AnyCommand] = [c for pair in zip(places, captures, strict=True) for c in pair]
    results: dict[str, Any] = {"commands": len(interleaved), "orgs": org_count}

    decide_and_evolve(funded_wallets(orgs), interleaved[:2_000])  # warm up (first calls, allocations)
    wallets = funded_wallets(orgs)
    events: list[int] = []
    results["decide_evolve"] = timed(
        "decide + evolve, place/capture pairs",
        len(interleaved),
        lambda: events.append(decide_and_evolve(wallets, interleaved)),
    )
    results["events_per_decision"] = round(events[0] / len(interleaved), 2)

    # Decide only, on one fixed wallet: nothing is applied, so the wallet never changes.
    book = default_price_book()
    fixed = funded_wallets([orgs[0]])[orgs[0]]
    opened = decide(fixed, place(orgs[0], "open"), now, book)
    assert isinstance(opened, list)
    for event in opened:
        evolve(fixed, event)
    only_places = [place(orgs[0], f"p{k}") for k in range(decisions // 2)]
    only_captures = [capture(orgs[0], "open")] * (decisions // 2)

    def decide_only(commands: Sequence[AnyCommand]) -> None:
        for command in commands:
            decide(fixed, command, now, book)

    results["decide_only_place"] = timed(
        "decide only, PlaceHold (2 events each)", len(only_places), lambda: decide_only(only_places)
    )
    results["decide_only_capture"] = timed(
        "decide only, CaptureHold (1 event each)", len(only_captures), lambda: decide_only(only_captures)
    )

    # What the Kafka role does per command, without Kafka: decode, decide, evolve, encode.
    role = LedgerRole(EmbeddedLog(Path(":memory:")), Settings(), default_price_book(), lambda: now)
    role.decide_batch([encode(g) for g in grants(orgs)])
    encoded = [encode(c) for c in interleaved]
    batch = Settings().batch_records_max

    def role_batches() -> None:
        for start in range(0, len(encoded), batch):
            role.decide_batch(encoded[start : start + batch])

    results["role_decide_batch"] = timed(
        f"LedgerRole.decide_batch (decode+decide+evolve+encode, {batch}/batch)", len(encoded), role_batches
    )
    results["micro"] = micro_costs(orgs[0])
    results["profile"] = profile(orgs, min(len(interleaved), 60_000))
    return results


def micro_costs(org: str) -> dict[str, float]:
    """Per-call costs of the pieces one decision is made of (µs)."""
    book = default_price_book()
    command = place(org, "micro")
    wallet = funded_wallets([org])[org]
    placed = decide(wallet, command, now, book)
    assert isinstance(placed, list)
    hold_placed = placed[0]
    assert isinstance(hold_placed, HoldPlaced)
    fields = {f: getattr(hold_placed, f) for f in hold_placed.__struct_fields__}
    encoded = encode(hold_placed)
    n = 50_000

    def per_call(fn: Callable[[], object]) -> float:
        started = time.perf_counter()
        for _ in range(n):
            fn()
        return round((time.perf_counter() - started) / n * 1e6, 3)

    placed_events = [msgspec.structs.replace(hold_placed, hold_id=f"micro-{k}") for k in range(n)]
    target = funded_wallets([org])[org]
    events = iter(placed_events)

    def fresh_wallet() -> None:
        Wallet(org_id=org).collect_events()

    costs = {
        "uuid5_event_id": per_call(lambda: event_id_for("place-h123456", "hold.placed")),
        "msgspec_HoldPlaced_struct": per_call(lambda: HoldPlaced(**fields)),
        "encode_HoldPlaced": per_call(lambda: encode(hold_placed)),
        "decode_HoldPlaced": per_call(lambda: decode_event(encoded)),
        "datetime_now_utc": per_call(lambda: datetime.now(UTC)),
        "new_wallet_aggregate": per_call(fresh_wallet),
        "evolve_HoldPlaced": per_call(lambda: evolve(target, next(events))),
    }
    print("  per-call costs (µs): " + ", ".join(f"{k} {v}" for k, v in costs.items()))
    return costs


def _category(filename: str, function: str) -> str:
    if "eventsourcing" in filename:
        return "eventsourcing (@event: domain event object, mutate, pending list)"
    if filename.endswith("uuid.py") or "sha1" in function or "_hashlib" in function:
        return "uuid5 event ids (uuid.py + sha1)"
    if filename.endswith(os.path.join("ledger", "wallet.py")):
        return "ledger/wallet.py own time (incl. msgspec struct and dataclass creation)"
    if filename.endswith(os.path.join("ledger", "pricing.py")):
        return "ledger/pricing.py"
    if "dataclasses" in filename or "<string>" in filename:
        return "generated dataclass __init__/__eq__"
    if filename == "~":
        return f"C builtins ({function.split(' ')[-1].strip('>')})" if "isinstance" in function else "other C builtins"
    return "other Python"


def profile(orgs: Sequence[str], count: int) -> dict[str, Any]:
    places, captures = pairs_of(orgs, count // 2, "prof")
    commands: list[AnyCommand] = [c for pair in zip(places, captures, strict=True) for c in pair]
    wallets = funded_wallets(orgs)
    profiler = cProfile.Profile()
    profiler.enable()
    decide_and_evolve(wallets, commands)
    profiler.disable()
    stats = pstats.Stats(profiler)
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, tt, _, _) in entries.values())
    by_category: Counter[str] = Counter()
    rows = []
    for (filename, line, function), (_, calls, tt, ct, _) in entries.items():
        by_category[_category(filename, function)] += tt
        short = f"{Path(filename).name}:{line}({function})" if filename != "~" else function
        rows.append((tt, ct, calls, short))
    rows.sort(reverse=True)
    print(f"  cProfile of decide + evolve over {len(commands):,} commands (own time; profiler overhead inflates it):")
    shares = {}
    for name, tt in by_category.most_common():
        shares[name] = round(tt / total * 100, 1)
        print(f"    {tt / total * 100:5.1f}%  {name}")
    print("    top functions by own time:")
    top = []
    for tt, _, calls, short in rows[:14]:
        per_command = calls / len(commands)
        print(f"    {tt / total * 100:5.1f}%  {calls:>9,} calls ({per_command:4.1f}/command)  {short}")
        top.append(
            {"function": short, "own_pct": round(tt / total * 100, 1), "calls_per_command": round(per_command, 2)}
        )
    return {"commands": len(commands), "own_time_pct_by_category": shares, "top_functions": top}


# --- b) through the ledger role on Kafka ----------------------------------------------------------------


class MeasuredLedgerRole(LedgerRole):
    """The ledger role as `tollgate ledger` runs it, counting its batches (child process only)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.input_batches: list[int] = []
        self.decide_s = 0.0
        self.rebuild_s = 0.0
        self.rebuilt_events = 0

    def decide_batch(self, values: list[bytes], appended_at: Sequence[datetime] | None = None) -> list[Outgoing]:
        started = time.perf_counter()
        outputs = super().decide_batch(values, appended_at)
        self.decide_s += time.perf_counter() - started
        self.input_batches.append(len(values))
        return outputs

    def rebuild(self, partitions: set[int]) -> None:
        started = time.perf_counter()
        super().rebuild(partitions)
        self.rebuild_s += time.perf_counter() - started


class TransactionLog(logging.Handler):
    """Collects eventlog.kafka's debug line "transaction of N records in T ms"."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.transactions: list[tuple[int, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if isinstance(record.msg, str) and record.msg.startswith("transaction of") and isinstance(args, tuple):
            records, ms = args[0], args[1]
            assert isinstance(records, int) and isinstance(ms, float)
            self.transactions.append((records, ms))


def summary_of(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "mean": round(statistics.fmean(ordered), 2),
        "p50": ordered[len(ordered) // 2],
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max": ordered[-1],
    }


def time_producer_calls() -> dict[str, list[float]]:
    """Time the transactional producer's blocking calls (child process only; wraps kafka-python's
    KafkaProducer methods, changes nothing else)."""
    from kafka import KafkaProducer

    spent: dict[str, list[float]] = {}
    for name in ("begin_transaction", "send", "send_offsets_to_transaction", "commit_transaction"):
        original = getattr(KafkaProducer, name)
        spent[name] = []

        def timed_call(self: Any, *args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return _original(self, *args, **kwargs)
            finally:
                spent[_name].append(time.perf_counter() - started)

        setattr(KafkaProducer, name, timed_call)
    return spent


def ledger_child(stats_path: Path) -> None:
    """Run the ledger role until SIGTERM, then write its counters to ``stats_path``."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    transactions = TransactionLog()
    kafka_logger = logging.getLogger("eventlog.kafka")
    kafka_logger.setLevel(logging.DEBUG)
    kafka_logger.addHandler(transactions)
    kafka_logger.propagate = False
    producer_calls = time_producer_calls()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    settings = Settings()
    log = KafkaLog(settings.kafka_bootstrap, partitions=topics.partitions_per_topic)
    role = MeasuredLedgerRole(log, settings, default_price_book())
    started = time.perf_counter()
    cpu_started = time.process_time()
    role.run(stop)
    busy = [b for b in role.input_batches if b]
    stats = {
        "wall_s": round(time.perf_counter() - started, 3),
        "cpu_s": round(time.process_time() - cpu_started, 3),
        "decide_batch_s": round(role.decide_s, 3),
        "rebuild_s": round(role.rebuild_s, 3),
        "commands_per_poll": summary_of(busy),
        "records_per_transaction": summary_of([n for n, _ in transactions.transactions]),
        "transaction_ms": summary_of([ms for _, ms in transactions.transactions]),
        "transaction_s_total": round(sum(ms for _, ms in transactions.transactions) / 1000, 3),
        "rejections": dict(role.rejections),
        "producer_calls_ms": {
            name: {
                "calls": len(times),
                "total": round(sum(times) * 1000),
                "mean": round(statistics.fmean(times) * 1000, 3),
            }
            for name, times in producer_calls.items()
            if times
        },
    }
    stats_path.write_text(json.dumps(stats))


class LedgerWatcher(threading.Thread):
    """A read_committed consumer of tollgate.ledger that notes when this run's events become visible."""

    def __init__(self, log: KafkaLog, run: str) -> None:
        super().__init__(name="ledger-watcher", daemon=True)
        self._consumer = log.consumer([topics.LEDGER], client_id=f"bench-ledger-watch-{run}")
        self._prefix = f"bench-{run}-".encode()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.first_seen: dict[str, float] = {}
        self.last_seen: dict[str, float] = {}
        self.captured_ids: set[str] = set()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self._done.is_set():
                records = self._consumer.poll(5_000, 100)
                seen_at = time.perf_counter()
                for record in records:
                    if not record.key.startswith(self._prefix):
                        continue
                    event = decode_event(record.value)
                    kind = type(event).__name__
                    if isinstance(event, HoldCaptured):
                        phase = event.hold_id.split("-", 1)[0]
                        kind = f"HoldCaptured/{phase}"
                        assert event.hold_id not in self.captured_ids, f"{event.hold_id} captured twice"
                        self.captured_ids.add(event.hold_id)
                    elif isinstance(event, HoldPlaced):
                        kind = f"HoldPlaced/{event.hold_id.split('-', 1)[0]}"
                    with self._lock:
                        self.counts[kind] += 1
                        self.first_seen.setdefault(kind, seen_at)
                        self.last_seen[kind] = seen_at
        except BaseException as error:  # surfaced by wait_for
            self.error = error
        finally:
            self._consumer.close()

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=10)

    def wait_for(self, kind: str, count: int, timeout_s: float, child: subprocess.Popen[bytes] | None) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.error is not None:
                raise RuntimeError("the ledger watcher failed") from self.error
            if child is not None and child.poll() is not None:
                raise RuntimeError(f"the ledger role exited with {child.returncode}")
            with self._lock:
                if self.counts[kind] >= count:
                    return True
            time.sleep(0.005)
        return False


def start_child(
    bootstrap: str, run: str, phase: str, root: Path, batch_records_max: int
) -> tuple[subprocess.Popen[bytes], Path]:
    stats = root / f"ledger-{phase}.json"
    env = {
        **os.environ,
        "TOLLGATE_KAFKA_BOOTSTRAP": bootstrap,
        "TOLLGATE_BATCH_RECORDS_MAX": str(batch_records_max),
        "TOLLGATE_INSTANCE_ID": f"bench-{run}",
        "TOLLGATE_LOG_LEVEL": "WARNING",
    }
    output = (root / f"ledger-{phase}.log").open("ab")
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--ledger-child", str(stats)],
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    output.close()
    return child, stats


def stop_child(child: subprocess.Popen[bytes], stats: Path) -> dict[str, Any]:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return json.loads(stats.read_text()) if stats.exists() else {}


def send(log: KafkaLog, client_id: str, commands: Sequence[AnyCommand]) -> tuple[float, float]:
    """Produce ``commands`` (pre-encoded); (seconds to hand them to the producer, seconds to flush)."""
    records = [Outgoing(topics.COMMANDS, c.org_id, encode(c)) for c in commands]
    producer = log.producer(client_id)
    try:
        started = time.perf_counter()
        producer.send(records)
        handed = time.perf_counter()
        producer.flush(60)
        return handed - started, time.perf_counter() - started
    finally:
        producer.close()


def kafka_benchmark(
    bootstrap: str, pairs: int, org_count: int, timeout_s: float, root: Path, batch_records_max: int
) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    log = KafkaLog(bootstrap, partitions=topics.partitions_per_topic)
    log.ensure_topics(topics.all_topics(("default",)))
    orgs = org_ids(org_count, run)
    watcher = LedgerWatcher(log, run)
    watcher.start()
    result: dict[str, Any] = {
        "pairs": pairs,
        "orgs": org_count,
        "bootstrap": bootstrap,
        "timeout_s": timeout_s,
        "batch_records_max": batch_records_max,
    }
    print(
        f"b) Kafka ({bootstrap}): {pairs:,} pairs over {org_count:,} orgs, ledger role in a child process, "
        f"batch_records_max {batch_records_max}"
    )
    child, stats = start_child(bootstrap, run, "live", root, batch_records_max)
    try:
        started = time.perf_counter()
        send(log, f"bench-ledger-grants-{run}", grants(orgs))
        if not watcher.wait_for("CreditsGranted", org_count, 120, child):
            raise RuntimeError(f"the ledger did not grant {org_count} orgs within 120 s; see {root}/ledger-live.log")
        print(f"  ledger up and {org_count:,} orgs funded in {time.perf_counter() - started:.1f} s")

        # live: the role decides while the commands arrive
        places, captures = pairs_of(orgs, pairs, "live-")
        t0 = time.perf_counter()
        handed_s, flushed_s = send(log, f"bench-ledger-load-{run}", [*places, *captures])
        done = watcher.wait_for("HoldCaptured/live", pairs, timeout_s, child)
        live = phase_result(watcher, "live", pairs, t0, done)
        live["producer_handoff_s"] = round(handed_s, 3)
        live["producer_flush_s"] = round(flushed_s, 3)
        live["producer_commands_per_s"] = round(2 * pairs / flushed_s)
        live["ledger"] = stop_child(child, stats)
        result["live"] = live
        print_phase("live", live)

        # backlog: commands wait in the topic; a fresh role drains them
        places, captures = pairs_of(orgs, pairs, "backlog-")
        send(log, f"bench-ledger-load-{run}", [*places, *captures])
        child, stats = start_child(bootstrap, run, "backlog", root, batch_records_max)
        t0 = time.perf_counter()
        done = watcher.wait_for("HoldCaptured/backlog", pairs, timeout_s, child)
        backlog = phase_result(watcher, "backlog", pairs, t0, done)
        backlog["ledger"] = stop_child(child, stats)
        result["backlog"] = backlog
        print_phase("backlog", backlog)
    finally:
        stop_child(child, stats)
        watcher.stop()
    result["rejected"] = watcher.counts["CommandRejected"] + watcher.counts["HoldRejected"]
    return result


def phase_result(watcher: LedgerWatcher, phase: str, pairs: int, t0: float, done: bool) -> dict[str, Any]:
    captured = watcher.counts[f"HoldCaptured/{phase}"]
    first = watcher.first_seen.get(f"HoldPlaced/{phase}", float("nan"))
    last = watcher.last_seen.get(f"HoldCaptured/{phase}", float("nan"))
    out: dict[str, Any] = {"completed": done, "captured": captured}
    if done:
        out["seconds_from_start"] = round(last - t0, 3)
        out["pairs_per_s_from_start"] = round(pairs / (last - t0))
        out["seconds_first_to_last_visible"] = round(last - first, 3)
        out["pairs_per_s_first_to_last_visible"] = round(pairs / (last - first))
    return out


def print_phase(phase: str, result: dict[str, Any]) -> None:
    if not result["completed"]:
        print(f"  {phase}: only {result['captured']:,} captures visible before the timeout")
        return
    ledger = result.get("ledger", {})
    extra = ""
    if "producer_flush_s" in result:
        extra = f"; producer flushed {result['producer_commands_per_s']:,} commands/s"
    print(
        f"  {phase}: {result['pairs_per_s_from_start']:,} pairs/s from start "
        f"({result['seconds_from_start']} s), {result['pairs_per_s_first_to_last_visible']:,} pairs/s first→last "
        f"visible{extra}"
    )
    if ledger:
        print(
            f"    role: {ledger['cpu_s']} s CPU of {ledger['wall_s']} s wall; "
            f"decide_batch {ledger['decide_batch_s']} s, transactions {ledger['transaction_s_total']} s, "
            f"rebuild {ledger['rebuild_s']} s"
        )
        print(f"    commands per poll {ledger['commands_per_poll']}")
        print(f"    records per transaction {ledger['records_per_transaction']}")
        print(f"    transaction ms {ledger['transaction_ms']}")
        print(f"    producer calls ms {ledger['producer_calls_ms']}")


def start_broker(root: Path) -> tuple[str, dict[str, str]]:
    sys.path.insert(0, str(repo))
    from tests.support import free_port_pair

    port = free_port_pair()
    env = {**os.environ, "TOLLGATE_KAFKA_PORT": str(port), "TOLLGATE_KAFKA_DATA": str(root / "kafka")}
    subprocess.run(["bash", str(kafka_script), "start"], env=env, check=True)
    return f"127.0.0.1:{port}", env


# --- main -------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--decisions", type=int, default=200_000, help="commands for the pure benchmark")
    parser.add_argument("--pairs", type=int, default=20_000, help="hold+capture pairs per Kafka phase")
    parser.add_argument("--orgs", type=int, default=1_000)
    parser.add_argument("--bootstrap", default="", help="an existing broker; default: start one with compose/kafka.sh")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="per Kafka phase")
    parser.add_argument(
        "--batch-records-max",
        type=int,
        default=Settings().batch_records_max,
        help="the role's TOLLGATE_BATCH_RECORDS_MAX (commands per poll and transaction)",
    )
    parser.add_argument("--skip-kafka", action="store_true")
    parser.add_argument("--skip-pure", action="store_true")
    parser.add_argument("--out", type=Path, default=repo / "bench" / "results" / "ledger.json")
    parser.add_argument("--ledger-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ledger_child is not None:
        ledger_child(args.ledger_child)
        return

    report: dict[str, Any] = {
        "benchmark": "ledger",
        "command": " ".join([".venv/bin/python", "bench/ledger.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "targets": {"pure_decisions_per_s": 200_000, "kafka_pairs_per_s": 20_000},
    }
    if not args.skip_pure:
        report["pure"] = pure_benchmark(args.decisions, args.orgs)
    if not args.skip_kafka:
        root = Path(tempfile.mkdtemp(prefix="tollgate-bench-ledger-"))
        broker_env: dict[str, str] | None = None
        bootstrap = args.bootstrap
        try:
            if not bootstrap:
                bootstrap, broker_env = start_broker(root)
            report["kafka"] = kafka_benchmark(
                bootstrap, args.pairs, args.orgs, args.timeout_s, root, args.batch_records_max
            )
            report["kafka"]["logs"] = str(root)
        finally:
            if broker_env is not None:
                subprocess.run(["bash", str(kafka_script), "stop"], env=broker_env, check=False)
                shutil.rmtree(root / "kafka", ignore_errors=True)  # the broker's data; the role logs stay
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
