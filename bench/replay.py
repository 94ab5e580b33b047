"""Replay benchmark: ledger events per second for `tollgate audit verify` and for a full rebuild of
every projection from the log, on an embedded log of --events events (1 million, 10 million).

    .venv/bin/python bench/replay.py                          # 1M events, every stage
    .venv/bin/python bench/replay.py --events 10000000        # 10M (tens of minutes on 2 cores)
    .venv/bin/python bench/replay.py --events 200000 --stages verify,micro --profile
    .venv/bin/python bench/replay.py --data-dir /tmp/replay-1m --keep   # keep the log to reuse it

1. generate: a valid signed ledger log, built directly (not through the ledger role) into a fresh
   EmbeddedLog: --orgs organizations each granted plenty, then requests, each a HoldPlaced and later
   (up to --in-flight requests later) its HoldCaptured, priced exactly with the default price book
   over sim-chat-small/-large and sim-embed-small, with occurred_at spread over one month. Every record
   is chained into its partition as the ledger role's ``_emit`` does, and every 1000 records of a
   partition a ChainCheckpoint signed as ``LedgerRole.checkpoints`` signs it. Appended 20k records per
   append. With --data-dir and --keep the log stays, and a later run on the same --data-dir with the
   same --events reuses it.
2. stages (--stages, comma separated; default all), each timed on its own (wall and CPU seconds):
   - read: the ledger topic through the log interface (``read_topic``), nothing else: the IO floor;
   - decode: read + ``decode_event`` (msgspec) per record;
   - hash: read + sha256 of every record (the chain's own cost);
   - verify: ``audit_log`` with the public key (chain, checkpoints, capture pricing, wallets, book),
     must be ok;
   - verify_parallel: ``audit_log_parallel``, what ``tollgate audit verify`` runs on a long log: the
     partitions split over one process per core (--processes), process start-up included;
   - balances: read + decode + ``BalancesView.apply``;
   - jobs: read + decode + ``JobsView.apply``;
   - clickhouse: read + decode + ``usage_row``/``posting_rows`` + ``UsageStore.insert`` (the projector's
     write, with its duplicate check) into a fresh embedded store, in batches of --insert-rows rows;
   - micro: per-event costs of the pieces on an in-memory sample of --sample records (no IO).
   The captured amount of every organization must agree everywhere: the generator's sum, the
   auditor's and the balances view's wallets, and ClickHouse's usage rows and revenue postings.
   --profile adds a cProfile of the auditor over the sample.

Prints figures and saves JSON to bench/results/replay-<events>.json (--out to change), with the
machine (cpus, load average, python) and the peak RSS. Target named by the issue: 100,000 events/s.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import json
import os
import platform
import pstats
import random
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

repo = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(repo))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from eventlog import (
    EventLog,
    Outgoing,
    Record,
    partition_for,
    topics,
)
from eventlog.embedded import EmbeddedLog
from eventlog.read import read_topic
from eventlog.settings import Settings
from ledger.accounts import Book
from ledger.audit import Auditor
from ledger.chain import ChainHead, Signer, load_or_create_signing_key, record_hash
from ledger.price_feed import load_price_books
from ledger.pricing import PriceBook, PriceBooks, default_price_book, price_micros
from ledger.wallet import Wallet, evolve
from projections.jobs import JobsView
from projections.role import posting_rows, usage_row
from projections.usage import PostingRow, UsageRow, UsageStore
from projections.views import BalancesView
from schemas.codec import decode_event, encode
from schemas.events import (
    ChainCheckpoint,
    CreditsGranted,
    Event,
    GrantBurn,
    HoldCaptured,
    HoldPlaced,
    LedgerFact,
)
from schemas.ids import event_id_for
from schemas.units import Units
from tollgate.audit import audit_log, audit_log_parallel

TARGET_EVENTS_PER_S = 100_000
PLENTY = 10**13  # micros granted to each organization: no hold is ever short of money
CHECKPOINT_RECORDS = 1000  # as Settings.checkpoint_records_max
APPEND_RECORDS = 20_000
HOLD_TTL = timedelta(hours=1)
START = datetime(2026, 11, 1, tzinfo=UTC)
MONTH = timedelta(days=30)
MODELS = (  # (model, endpoint, share of requests)
    ("sim-chat-small", "/v1/chat/completions", 0.60),
    ("sim-chat-large", "/v1/chat/completions", 0.25),
    ("sim-embed-small", "/v1/embeddings", 0.15),
)
ALL_STAGES = ("read", "decode", "hash", "verify", "verify_parallel", "balances", "jobs", "clickhouse", "micro")
META_FILE = "replay-meta.json"


def rss_mb() -> dict[str, float]:
    """Current and peak resident set size of this process (chdb runs in it too), in MB."""
    current = 0.0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    return {"rss_mb": round(current), "peak_rss_mb": round(peak)}


# --- 1. generate -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Generated:
    records: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    captured_by_org: dict[str, int] = field(default_factory=dict)  # sum of HoldCaptured amounts
    capped_captures: int = 0  # priced above the hold: charged the hold
    seconds: float = 0.0
    build_seconds: float = 0.0  # events, encode, chain hash, signatures
    append_seconds: float = 0.0


class LedgerWriter:
    """Chains and appends ledger records as ``LedgerRole._emit`` and ``LedgerRole.checkpoints`` do."""

    def __init__(self, log: EmbeddedLog, signer: Signer, result: Generated) -> None:
        self.log = log
        self.signer = signer
        self.result = result
        self.chains: dict[int, ChainHead] = {}
        self.partition_of: dict[str, int] = {}
        self.buffer: list[Outgoing] = []

    def emit(self, event: LedgerFact) -> None:
        org = event.org_id
        partition = self.partition_of.get(org)
        if partition is None:
            partition = self.partition_of[org] = partition_for(org.encode(), self.log.partitions)
        chain = self.chains.get(partition)
        if chain is None:
            chain = self.chains[partition] = ChainHead()
        # Built with prev_hash set (the role replaces it on the decided event: the same bytes).
        value = encode(msgspec.structs.replace(event, prev_hash=chain.head))
        chain.advance(value, org)
        self.buffer.append(Outgoing(topics.LEDGER, org, value))
        self.result.records += 1
        self.result.by_type[type(event).__name__] += 1
        if chain.since_checkpoint >= CHECKPOINT_RECORDS:
            self.checkpoint(partition, chain, event.occurred_at)
        if len(self.buffer) >= APPEND_RECORDS:
            self.flush()

    def checkpoint(self, partition: int, chain: ChainHead, now: datetime) -> None:
        checkpoint = msgspec.structs.replace(self.signer.checkpoint(partition, chain, now), prev_hash=chain.head)
        value = encode(checkpoint)
        chain.advance(value, checkpoint.org_id)
        chain.since_checkpoint = 0
        self.buffer.append(Outgoing(topics.LEDGER, checkpoint.org_id, value))
        self.result.records += 1
        self.result.by_type["ChainCheckpoint"] += 1

    def flush(self) -> None:
        if self.buffer:
            started = time.perf_counter()
            self.log.append(self.buffer)
            self.result.append_seconds += time.perf_counter() - started
            self.buffer = []


@dataclass(frozen=True, slots=True)
class Request:
    org: str
    hold_id: str
    model: str
    endpoint: str
    hold_micros: int
    units: Units
    priced_micros: int
    placed: HoldPlaced


def make_units(rng: random.Random, model: str) -> Units:
    if model == "sim-embed-small":
        return Units(input_tokens=rng.randint(8, 8_000))
    prompt = rng.randint(20, 4_000)
    if model == "sim-chat-large" and rng.random() < 0.02:
        prompt = rng.randint(32_769, 60_000)  # the long-context tier
    cached = rng.randint(0, prompt // 2) if rng.random() < 0.2 else 0
    return Units(input_tokens=prompt - cached, cached_input_tokens=cached, output_tokens=rng.randint(1, 1_500))


def generate(log: EmbeddedLog, signer: Signer, events: int, org_count: int, in_flight: int, seed: int) -> Generated:
    """About ``events`` ledger records (every hold is captured; checkpoints may add a few)."""
    result = Generated()
    writer = LedgerWriter(log, signer, result)
    book = default_price_book()
    rng = random.Random(seed)
    orgs = [f"org_{i:05d}" for i in range(org_count)]
    step = MONTH / max(events, 1)
    models = [m for m, _, _ in MODELS]
    endpoints = {m: e for m, e, _ in MODELS}
    weights = [w for _, _, w in MODELS]
    pending: deque[Request] = deque()
    started = time.perf_counter()

    def at(index: int) -> datetime:
        return START + step * index

    for org in orgs:
        writer.emit(
            CreditsGranted(
                event_id=event_id_for(f"grant-{org}", "credits.granted"),
                occurred_at=START,
                org_id=org,
                causation_id=f"grant-{org}",
                grant_id=f"grant-{org}",
                amount_micros=PLENTY,
                kind="paid",
            )
        )
        result.captured_by_org[org] = 0
    serial = 0
    next_report = 1_000_000
    while True:
        placing = result.records + len(pending) < events
        if not placing and not pending:
            break
        now = at(result.records)
        if placing and len(pending) < in_flight:
            org = orgs[rng.randrange(org_count)]
            model = rng.choices(models, weights)[0]
            units = make_units(rng, model)
            priced = price_micros(book.models[model], units)
            # Usually the hold covers the worst case; sometimes the usage prices above it (charged the hold).
            hold_micros = max(1, priced // 2) if rng.random() < 0.03 else priced + rng.randint(0, 20_000)
            hold_id = f"h{serial:09d}"
            serial += 1
            placed = HoldPlaced(
                event_id=event_id_for(f"place-{hold_id}", "hold.placed"),
                occurred_at=now,
                org_id=org,
                correlation_id=hold_id,
                causation_id=f"place-{hold_id}",
                hold_id=hold_id,
                request_id=hold_id,
                job_id=f"job-{hold_id}",
                token_id=f"tok_{org}",
                model=model,
                endpoint=endpoints[model],
                amount_micros=hold_micros,
                expires_at=now + HOLD_TTL,
                price_version=book.version,
                pool="default",
            )
            writer.emit(placed)
            pending.append(Request(org, hold_id, model, endpoints[model], hold_micros, units, priced, placed))
            continue
        request = pending.popleft()
        amount = min(request.priced_micros, request.hold_micros)
        result.capped_captures += amount < request.priced_micros
        result.captured_by_org[request.org] += amount
        writer.emit(
            HoldCaptured(
                event_id=event_id_for(f"capture-{request.hold_id}", "hold.captured"),
                occurred_at=now,
                org_id=request.org,
                correlation_id=request.hold_id,
                causation_id=f"capture-{request.hold_id}",
                hold_id=request.hold_id,
                request_id=request.hold_id,
                job_id=request.placed.job_id,
                token_id=request.placed.token_id,
                model=request.model,
                endpoint=request.endpoint,
                amount_micros=amount,
                released_micros=request.hold_micros - amount,
                priced_micros=request.priced_micros,
                price_version=book.version,
                units=request.units,
                latency_ms=rng.randint(20, 4_000),
                grant_burns=(GrantBurn(grant_id=f"grant-{request.org}", amount_micros=amount),) if amount else (),
            )
        )
        if result.records >= next_report:
            print(f"  generated {result.records:,} records ({time.perf_counter() - started:.0f} s)", flush=True)
            next_report += 1_000_000
    writer.flush()
    result.seconds = time.perf_counter() - started
    result.build_seconds = result.seconds - result.append_seconds
    return result


# --- 2. stages -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Timer:
    label: str
    wall_s: float = 0.0
    cpu_s: float = 0.0
    _wall: float = 0.0
    _cpu: float = 0.0

    def __enter__(self) -> Timer:
        gc.collect()
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall_s = time.perf_counter() - self._wall
        self.cpu_s = time.process_time() - self._cpu


def figures(label: str, count: int, timer: Timer, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    rate = count / timer.wall_s if timer.wall_s else 0.0
    memory = rss_mb()
    print(
        f"  {label:<48} {count:>11,} in {timer.wall_s:7.2f} s (cpu {timer.cpu_s:7.2f} s) = {rate:>9,.0f} events/s "
        f"({timer.wall_s / count * 1e6:5.2f} µs)  rss {memory['rss_mb']:,.0f} MB",
        flush=True,
    )
    return {
        "events": count,
        "seconds": round(timer.wall_s, 3),
        "cpu_seconds": round(timer.cpu_s, 3),
        "events_per_s": round(rate),
        "us_per_event": round(timer.wall_s / count * 1e6, 3),
        "meets_target": rate >= TARGET_EVENTS_PER_S,
        **memory,
        **(extra or {}),
    }


def ledger_records(log: EventLog) -> Iterator[Record]:
    for batch in read_topic(log, topics.LEDGER, quiet=True):
        yield from batch


def ledger_events(log: EventLog) -> Iterator[Event]:
    for batch in read_topic(log, topics.LEDGER, quiet=True):
        for record in batch:
            yield decode_event(record.value)


def stage_read(log: EventLog) -> dict[str, Any]:
    with Timer("read") as timer:
        count = sum(len(batch) for batch in read_topic(log, topics.LEDGER, quiet=True))
    return figures("read (log only)", count, timer)


def stage_decode(log: EventLog) -> dict[str, Any]:
    with Timer("decode") as timer:
        count = sum(1 for _ in ledger_events(log))
    return figures("read + decode_event", count, timer)


def stage_hash(log: EventLog) -> dict[str, Any]:
    with Timer("hash") as timer:
        count = 0
        for record in ledger_records(log):
            record_hash(record.value)
            count += 1
    return figures("read + sha256 per record", count, timer)


def verified(label: str, auditor: Auditor, timer: Timer, generated: dict[str, int], **extra: Any) -> dict[str, Any]:
    """The figures of a verify stage; the log was built valid, so any finding fails the benchmark."""
    records = sum(p.records for p in auditor.partitions.values())
    if not auditor.ok:
        print(f"  verify FAILED with {len(auditor.findings)} findings; the first ones:")
        for finding in auditor.findings[:10]:
            print(f"    {finding}")
    captured = {org: wallet.captured_micros for org, wallet in auditor.wallets.items()}
    checks = {
        "ok": auditor.ok,
        "findings": [str(f) for f in auditor.findings[:10]],
        "checkpoints": sum(p.checkpoints for p in auditor.partitions.values()),
        "unsigned_records": auditor.unsigned_records(),
        "captures_checked": auditor.captures_checked,
        "organizations": len(auditor.wallets),
        "book_total_micros": auditor.book.total_micros(),
        "captured_agrees_with_generator": captured == generated,
    }
    result = figures(label, records, timer, {**extra, **checks})
    assert checks["ok"], "the auditor found problems in a log built to be valid"
    assert checks["captured_agrees_with_generator"], "the auditor's captured amounts differ from the generator's"
    return result


def stage_verify(log: EventLog, public_key: Ed25519PublicKey, generated: dict[str, int]) -> dict[str, Any]:
    with Timer("verify") as timer:
        auditor = audit_log(log, [public_key], quiet=True, unsigned_records_max=CHECKPOINT_RECORDS)
    return verified("verify (audit_log: chain, signatures, prices, fold)", auditor, timer, generated)


def stage_verify_parallel(
    root: Path, public_key: Ed25519PublicKey, generated: dict[str, int], processes: int
) -> dict[str, Any]:
    settings = dataclasses.replace(Settings(), kafka_bootstrap="", data_dir=root)
    with Timer("verify_parallel") as timer:
        auditor = audit_log_parallel(
            settings, [public_key], processes, quiet=True, unsigned_records_max=CHECKPOINT_RECORDS
        )
    return verified(
        f"verify in {processes} processes (audit_log_parallel)",
        auditor,
        timer,
        generated,
        processes=processes,
        note="wall time includes starting the processes; RSS is the parent's (each child folds its share)",
    )


def fold_log(log: EventLog, view: BalancesView | JobsView) -> int:
    """Decode every ledger record into ``view``; how many there were."""
    count = 0
    for event in ledger_events(log):
        view.apply(event)
        count += 1
    return count


def stage_balances(log: EventLog, generated: dict[str, int]) -> dict[str, Any]:
    with Timer("balances") as timer:
        view = BalancesView()
        count = fold_log(log, view)
    captured = {org: wallet.captured_micros for org, wallet in view.wallets.items()}
    extra = {
        "organizations": len(view.wallets),
        "open_holds": sum(w.held_micros > 0 for w in view.wallets.values()),
        "book_total_micros": view.book.total_micros(),
        "captured_agrees_with_generator": captured == generated,
    }
    result = figures("balances (decode + BalancesView.apply)", count, timer, extra)
    del view
    assert extra["captured_agrees_with_generator"], "the balances view's captured amounts differ from the generator's"
    return result


def stage_jobs(log: EventLog) -> dict[str, Any]:
    with Timer("jobs") as timer:
        view = JobsView()
        count = fold_log(log, view)
    statuses = Counter(job.status for job in view.jobs.values())
    extra = {"jobs_kept": len(view.jobs), "statuses": dict(statuses)}
    result = figures("jobs (decode + JobsView.apply)", count, timer, extra)
    del view
    return result


def rebuild_clickhouse(
    log: EventLog, books: PriceBooks, path: Path, insert_rows: int, verbose: bool = False
) -> tuple[UsageStore, dict[str, Any]]:
    """Usage rows and postings as the projector writes them (``usage_row``, ``posting_rows``,
    ``UsageStore.insert`` with its duplicate check), into a fresh embedded store at ``path``."""
    timings = {"rows_s": 0.0, "insert_s": 0.0}
    started = time.perf_counter()
    store = UsageStore(path=path)  # migrates
    timings["open_s"] = time.perf_counter() - started
    usage: list[UsageRow] = []
    postings: list[PostingRow] = []
    counts = Counter[str]()
    flush_s: list[float] = []

    def flush() -> None:
        started = time.perf_counter()
        counts["usage_rows_new"] += store.insert(usage, postings)
        took = time.perf_counter() - started
        timings["insert_s"] += took
        flush_s.append(round(took, 3))
        if verbose:
            print(f"    insert {len(flush_s)}: {len(usage) + len(postings):,} rows in {took:.2f} s", flush=True)
        counts["usage_rows"] += len(usage)
        counts["posting_rows"] += len(postings)
        counts["inserts"] += 1
        usage.clear()
        postings.clear()

    for batch in read_topic(log, topics.LEDGER, quiet=True):
        started, inserting = time.perf_counter(), timings["insert_s"]
        for record in batch:
            event = decode_event(record.value)
            counts["events"] += 1
            book: PriceBook | None = books.at_version(event.price_version) if isinstance(event, HoldCaptured) else None
            row = usage_row(event, book)
            if row is not None:
                usage.append(row)
            postings.extend(posting_rows(event, str(type(event).__struct_config__.tag)))
            if len(usage) + len(postings) >= insert_rows:
                flush()
        timings["rows_s"] += time.perf_counter() - started - (timings["insert_s"] - inserting)
    flush()
    return store, {**counts, **{k: round(v, 3) for k, v in timings.items()}, "insert_s_each": flush_s}


def stage_clickhouse(
    log: EventLog, root: Path, insert_rows: int, generated: dict[str, int], verbose: bool = False
) -> dict[str, Any]:
    path = root / "clickhouse"
    shutil.rmtree(path, ignore_errors=True)
    books = load_price_books(log)
    with Timer("clickhouse") as timer:
        store, stats = rebuild_clickhouse(log, books, path, insert_rows, verbose)
    started = time.perf_counter()
    totals = store.totals_by_org()  # org -> (sum of usage cost, sum of postings to revenue)
    totals_s = time.perf_counter() - started
    store.close()
    usage_totals = {org: usage for org, (usage, _) in totals.items()}
    revenue_totals = {org: revenue for org, (_, revenue) in totals.items()}
    expected = {org: amount for org, amount in generated.items() if amount}
    extra = {
        **stats,
        "rows_per_s_of_insert": round((stats["usage_rows"] + stats["posting_rows"]) / max(stats["insert_s"], 1e-9)),
        "totals_by_org_s": round(totals_s, 3),
        "organizations": len(totals),
        "usage_agrees_with_fold": usage_totals == expected,
        "revenue_agrees_with_fold": revenue_totals == expected,
        "store_mb": round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20),
    }
    result = figures("clickhouse (decode + rows + UsageStore.insert)", stats["events"], timer, extra)
    print(
        f"    store opened in {stats['open_s']:.1f} s, rows built (with decode) in {stats['rows_s']:.1f} s, "
        f"inserted in {stats['insert_s']:.1f} s "
        f"({stats['usage_rows']:,} usage + {stats['posting_rows']:,} posting rows, {stats['inserts']} inserts, "
        f"{extra['rows_per_s_of_insert']:,} rows/s of insert time); totals_by_org {totals_s:.2f} s"
    )
    assert extra["usage_agrees_with_fold"], "ClickHouse usage totals differ from the captured amounts"
    assert extra["revenue_agrees_with_fold"], "ClickHouse revenue postings differ from the captured amounts"
    return result


def sample_records(log: EventLog, count: int) -> list[Record]:
    """The first ``count`` records as read_topic delivers them (partition by partition)."""
    records: list[Record] = []
    for batch in read_topic(log, topics.LEDGER, quiet=True):
        records.extend(batch)
        if len(records) >= count:
            break
    return records[:count]


def stage_micro(records: list[Record], public_key: Ed25519PublicKey) -> dict[str, Any]:
    """Per-event cost of each piece on records already in memory (µs per record of the sample)."""
    values = [record.value for record in records]
    events = [decode_event(v) for v in values]
    facts = [e for e in events if not isinstance(e, ChainCheckpoint)]
    book = default_price_book()
    n = len(values)

    def per_record(fn: Callable[[], object]) -> float:
        gc.collect()
        started = time.perf_counter()
        fn()
        return round((time.perf_counter() - started) / n * 1e6, 3)

    def fold_wallets() -> None:
        wallets: dict[str, Wallet] = {}
        for event in facts:
            wallet = wallets.get(event.org_id)
            if wallet is None:
                wallet = wallets[event.org_id] = Wallet(org_id=event.org_id)
            evolve(wallet, event)

    def fold_book() -> None:
        ledger_book = Book()
        for event in facts:
            ledger_book.apply(event)

    def chain() -> None:
        heads: dict[int, ChainHead] = {}
        for record in records:
            heads.setdefault(record.partition, ChainHead()).advance(record.value, "")

    def balances() -> None:
        view = BalancesView()
        for event in events:
            view.apply(event)

    def jobs() -> None:
        view = JobsView()
        for event in events:
            view.apply(event)

    def rows() -> None:
        for event in events:
            usage_row(event, book if isinstance(event, HoldCaptured) else None)
            posting_rows(event, str(type(event).__struct_config__.tag))

    def audit() -> None:
        auditor = Auditor(public_keys=[public_key], prices=PriceBooks(book))
        auditor.feed(records)
        assert auditor.ok, auditor.findings[:3]

    def decode_all() -> None:
        for value in values:
            decode_event(value)

    def hash_all() -> None:
        for value in values:
            record_hash(value)

    costs = {
        "decode_event": per_record(decode_all),
        "sha256_hexdigest": per_record(hash_all),
        "chain_advance (sha256 + ChainHead)": per_record(chain),
        "evolve (Wallet aggregate)": per_record(fold_wallets),
        "book_apply (double entry)": per_record(fold_book),
        "auditor_feed (no IO)": per_record(audit),
        "balances_view_apply (no decode)": per_record(balances),
        "jobs_view_apply (no decode)": per_record(jobs),
        "usage_row + posting_rows (no decode)": per_record(rows),
    }
    print(f"  per-record costs on {n:,} records in memory (µs):")
    for name, cost in costs.items():
        print(f"    {cost:7.3f}  {name}")
    return {"sample_records": n, "us_per_record": costs}


def profile_auditor(records: list[Record], public_key: Ed25519PublicKey, top: int = 18) -> list[dict[str, Any]]:
    auditor = Auditor(public_keys=[public_key], prices=PriceBooks(default_price_book()))
    profiler = cProfile.Profile()
    profiler.enable()
    auditor.feed(records)
    auditor.finish()
    profiler.disable()
    stats = pstats.Stats(profiler)
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, tt, _, _) in entries.values())
    rows = []
    for (filename, line, function), (_, calls, tt, ct, _) in entries.items():
        short = (
            f"{Path(filename).parent.name}/{Path(filename).name}:{line}({function})" if filename != "~" else function
        )
        rows.append((tt, ct, calls, short))
    rows.sort(reverse=True)
    print(f"  cProfile of Auditor.feed over {len(records):,} records (own time; the profiler inflates it):")
    out = []
    for tt, ct, calls, short in rows[:top]:
        print(f"    {tt / total * 100:5.1f}% own {ct / total * 100:5.1f}% cum {calls / len(records):5.2f}/rec  {short}")
        out.append(
            {
                "function": short,
                "own_pct": round(tt / total * 100, 1),
                "cumulative_pct": round(ct / total * 100, 1),
                "calls_per_record": round(calls / len(records), 2),
            }
        )
    return out


# --- main -------------------------------------------------------------------------------------------------


def open_or_generate(args: argparse.Namespace, root: Path) -> tuple[EmbeddedLog, Ed25519PublicKey, dict[str, Any]]:
    """The log (reused when root holds one of the same size and seed) and what the generator knows."""
    log_path, meta_path = root / "log.sqlite3", root / META_FILE
    key = load_or_create_signing_key(root / "ledger-signing.pem")
    wanted = {"events_requested": args.events, "orgs": args.orgs, "in_flight": args.in_flight, "seed": args.seed}
    if log_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if {k: meta.get(k) for k in wanted} == wanted:
            print(f"reusing the log in {root} ({meta['records']:,} records)")
            return EmbeddedLog(log_path, partitions=topics.partitions_per_topic), key.public_key(), meta
    for stale in (log_path, meta_path, root / "log.sqlite3-wal", root / "log.sqlite3-shm"):
        stale.unlink(missing_ok=True)
    log = EmbeddedLog(log_path, partitions=topics.partitions_per_topic)
    print(f"generating about {args.events:,} ledger records over {args.orgs:,} orgs into {log_path}", flush=True)
    generated = generate(log, Signer(key), args.events, args.orgs, args.in_flight, args.seed)
    rate = generated.records / generated.seconds
    print(
        f"  generated {generated.records:,} records in {generated.seconds:.1f} s = {rate:,.0f} records/s "
        f"(build+encode+chain {generated.build_seconds:.1f} s, EmbeddedLog.append {generated.append_seconds:.1f} s); "
        f"{dict(generated.by_type)}",
        flush=True,
    )
    meta = {
        **wanted,
        "records": generated.records,
        "by_type": dict(generated.by_type),
        "capped_captures": generated.capped_captures,
        "seconds": round(generated.seconds, 3),
        "build_seconds": round(generated.build_seconds, 3),
        "append_seconds": round(generated.append_seconds, 3),
        "records_per_s": round(rate),
        "log_mb": round(sum(p.stat().st_size for p in root.glob("log.sqlite3*")) / 2**20),
        "captured_by_org": generated.captured_by_org,
    }
    meta_path.write_text(json.dumps(meta))
    return log, key.public_key(), meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=1_000_000, help="ledger records to generate (about)")
    parser.add_argument("--stages", default=",".join(ALL_STAGES), help=f"comma separated, of {','.join(ALL_STAGES)}")
    parser.add_argument("--orgs", type=int, default=1_000)
    parser.add_argument("--in-flight", type=int, default=128, help="holds placed and not yet captured, at most")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--insert-rows",
        type=int,
        default=20_000,
        help="usage + posting rows per UsageStore.insert (above ~40k, the duplicate check's event id list passes "
        "~1 MB and the embedded engine's lookup slows from 0.2 s to over a minute)",
    )
    parser.add_argument("--sample", type=int, default=100_000, help="records in memory for the micro stage")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="for verify_parallel")
    parser.add_argument("--profile", action="store_true", help="also cProfile the auditor over the sample")
    parser.add_argument("--verbose", action="store_true", help="print the time of every UsageStore.insert")
    parser.add_argument("--data-dir", type=Path, default=None, help="where the log goes (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep --data-dir (the log can be reused)")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/replay-<events>.json")
    args = parser.parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - set(ALL_STAGES)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; choose from {','.join(ALL_STAGES)}")
    out = args.out or repo / "bench" / "results" / f"replay-{args.events}.json"
    root = args.data_dir or Path(tempfile.mkdtemp(prefix="tollgate-bench-replay-"))
    root.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "replay",
        "command": " ".join([".venv/bin/python", "bench/replay.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "stages": {},
    }
    print(f"load average {report['load_average_at_start']}, {os.cpu_count()} cpus, python {platform.python_version()}")
    log, public_key, meta = open_or_generate(args, root)
    try:
        generated: dict[str, int] = meta["captured_by_org"]
        report["generate"] = {k: v for k, v in meta.items() if k != "captured_by_org"}
        report["generate"]["rss_after"] = rss_mb()
        print(f"stages over {meta['records']:,} ledger records (target {TARGET_EVENTS_PER_S:,} events/s):")
        results = report["stages"]
        for stage in stages:
            if stage == "read":
                results["read"] = stage_read(log)
            elif stage == "decode":
                results["decode"] = stage_decode(log)
            elif stage == "hash":
                results["hash"] = stage_hash(log)
            elif stage == "verify":
                results["verify"] = stage_verify(log, public_key, generated)
            elif stage == "verify_parallel":
                results["verify_parallel"] = stage_verify_parallel(root, public_key, generated, args.processes)
            elif stage == "balances":
                results["balances"] = stage_balances(log, generated)
            elif stage == "jobs":
                results["jobs"] = stage_jobs(log)
            elif stage == "clickhouse":
                results["clickhouse"] = stage_clickhouse(log, root, args.insert_rows, generated, args.verbose)
            elif stage == "micro":
                records = sample_records(log, args.sample)
                results["micro"] = stage_micro(records, public_key)
                if args.profile:
                    results["micro"]["auditor_profile"] = profile_auditor(records, public_key)
                del records
            gc.collect()
        if args.profile and "micro" not in stages:
            results["auditor_profile"] = profile_auditor(sample_records(log, args.sample), public_key)
        rebuild = [results[s] for s in ("balances", "jobs", "clickhouse") if s in results]
        if rebuild:
            seconds = sum(r["seconds"] for r in rebuild)
            report["rebuild_total"] = {
                "stages": [s for s in ("balances", "jobs", "clickhouse") if s in results],
                "seconds": round(seconds, 3),
                "events_per_s": round(meta["records"] / seconds),
                "note": "each projection read and decoded the log on its own; one shared pass would decode once",
            }
            print(
                f"  rebuild total ({', '.join(report['rebuild_total']['stages'])}): {seconds:.1f} s = "
                f"{report['rebuild_total']['events_per_s']:,} events/s"
            )
        if "read" in results and "decode" in results and "hash" in results:
            n = meta["records"]
            read_us = results["read"]["seconds"] / n * 1e6
            report["derived_us_per_event"] = {
                "read": round(read_us, 3),
                "decode": round(results["decode"]["seconds"] / n * 1e6 - read_us, 3),
                "sha256": round(results["hash"]["seconds"] / n * 1e6 - read_us, 3),
            }
            print(f"  derived µs per event from the full passes: {report['derived_us_per_event']}")
    finally:
        log.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    report["peak_rss_mb"] = rss_mb()["peak_rss_mb"]
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(
        f"total {report['total_seconds']} s, peak RSS {report['peak_rss_mb']:,} MB, "
        f"load average at end {report['load_average_at_end']}"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
