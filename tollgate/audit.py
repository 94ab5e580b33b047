"""`tollgate audit verify|balance|public-key|statement`: the auditor's side of ``ledger/audit.py``, with its IO.

The log is the embedded one in ``--data-dir`` or Kafka at ``--kafka`` (default: the settings). Every
read takes a limit; long reads show a progress line (records, rate, time left) on stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, wait
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from eventlog import EventLog, topics
from eventlog.read import Progress, progress_interval_s, read_topic, topic_length
from eventlog.settings import Settings
from ledger.audit import Auditor
from ledger.chain import load_public_key, public_key_jwk, public_key_pem
from ledger.price_feed import load_price_books
from projections.views import TenantsView
from schemas.codec import decode_event
from schemas.moments import MomentError, iso, parse_moment
from tollgate.remote import CommandError, GatewayClient
from tollgate.wiring import open_log


@contextmanager
def fewer_collections() -> Iterator[None]:
    """A fold allocates millions of long-lived objects (wallets keep every hold) and frees few, so
    the cycle collector's default thresholds rescan them again and again: 12% of a 1M-event verify."""
    before = gc.get_threshold()
    gc.set_threshold(100_000, 50, 1000)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def audit_log(
    log: EventLog,
    public_keys: Any,
    until: datetime | None = None,
    quiet: bool = False,
    unsigned_records_max: int | None = None,
) -> Auditor:
    auditor = Auditor(
        public_keys=public_keys, prices=load_price_books(log), until=until, unsigned_records_max=unsigned_records_max
    )
    with fewer_collections():
        for batch in read_topic(log, topics.LEDGER, label="verifying tollgate.ledger", quiet=quiet):
            auditor.feed(batch)
    auditor.finish()
    return auditor


# Below this many records a verify runs in one process: starting another costs about a second.
parallel_records_min = 200_000
_records_done: Any = None  # a process-shared counter in each verify process (set by _start_worker)


def _start_worker(records_done: Any) -> None:
    global _records_done
    _records_done = records_done


def _audit_partitions(
    settings: Settings, partitions: list[int], public_keys_pem: list[str], unsigned_records_max: int | None
) -> Auditor:
    """One process's share of a parallel verify: its partitions, folded as ``audit_log`` folds them."""
    log = open_log(settings, must_exist=True)
    try:
        auditor = Auditor(
            public_keys=[load_public_key(pem.encode()) for pem in public_keys_pem],
            prices=load_price_books(log),
            unsigned_records_max=unsigned_records_max,
        )
        with fewer_collections():
            for batch in read_topic(log, topics.LEDGER, partitions=partitions, quiet=True):
                auditor.feed(batch)
                with _records_done.get_lock():
                    _records_done.value += len(batch)
    finally:
        log.close()
    auditor.drop_resolved_holds()
    auditor.public_keys = None  # keys do not pickle; the parent has them
    return auditor


def audit_log_parallel(
    settings: Settings,
    public_keys: list[Ed25519PublicKey],
    processes: int,
    quiet: bool = False,
    unsigned_records_max: int | None = None,
) -> Auditor:
    """``audit_log`` over the partitions split among ``processes`` processes (the fold is CPU-bound
    Python: one process per core). The same findings, in the same order, as one process."""
    log = open_log(settings, must_exist=True)
    try:
        prices = load_price_books(log)
        total = topic_length(log, topics.LEDGER)
    finally:
        log.close()
    shares = [list(range(topics.partitions_per_topic))[i::processes] for i in range(processes)]
    pems = [public_key_pem(key) for key in public_keys]
    context = multiprocessing.get_context("spawn")  # no fork: the parent may hold client threads
    records_done = context.Value("q", 0)
    progress = Progress("verifying tollgate.ledger", total, sys.stderr)
    auditor = Auditor(public_keys=public_keys, prices=prices, unsigned_records_max=unsigned_records_max)
    with ProcessPoolExecutor(
        max_workers=processes, mp_context=context, initializer=_start_worker, initargs=(records_done,)
    ) as pool:
        futures = [pool.submit(_audit_partitions, settings, share, pems, unsigned_records_max) for share in shares]
        while not all(future.done() for future in futures):
            wait(futures, timeout=progress_interval_s)
            if not quiet:
                progress.advance(records_done.value - progress.done)
        for future in futures:
            auditor.merge(future.result())
    if not quiet:
        progress.show()
    auditor.finish()
    return auditor


def _public_keys(settings: Settings, given: list[str] | None) -> list[Any]:
    paths = [Path(p) for p in given] if given else [settings.signing_key_path]
    keys = []
    for path in paths:
        if not path.exists():
            raise CommandError(
                f"no key at {path}: pass --public-key (a PEM or JWK file; GET /v1/audit/public-key serves it)"
            )
        try:
            keys.append(load_public_key(path.read_bytes()))
        except ValueError as error:
            raise CommandError(f"{path} is not an Ed25519 public key (PEM or JWK): {error}") from None
    return keys


def verify(args: argparse.Namespace, settings: Settings) -> int:
    # Everything that can be wrong with the command is checked before the log is read.
    gateway = GatewayClient(args.gateway, args.admin_token or settings.admin_token) if args.gateway else None
    log = open_log(settings, must_exist=True)
    public_keys = _public_keys(settings, args.public_key)
    # The ledger signs at least every checkpoint_records_max records; a log written with another
    # setting (or by an older ledger, which signed only between batches) needs it passed here.
    bound = args.unsigned_records_max if args.unsigned_records_max is not None else settings.checkpoint_records_max
    started = time.monotonic()
    processes = args.processes
    if processes is None:  # as many as cores and partitions allow, once the log is long enough to pay off
        long_log = topic_length(log, topics.LEDGER) >= parallel_records_min
        processes = min(os.cpu_count() or 1, topics.partitions_per_topic) if long_log else 1
    if processes > 1:
        log.close()
        auditor = audit_log_parallel(settings, public_keys, processes, quiet=args.json, unsigned_records_max=bound)
    else:
        auditor = audit_log(log, public_keys, quiet=args.json, unsigned_records_max=bound)
    problems = [str(finding) for finding in auditor.findings]
    if gateway is not None:
        derived = {org_id: _balance_pair(auditor, org_id) for org_id in auditor.wallets}
        problems += [f"read model: {m}" for m in gateway.compare_balances(derived)]
        gateway.close()
    records = sum(p.records for p in auditor.partitions.values())
    report = {
        "ok": not problems,
        "records": records,
        "records_per_s": round(records / max(time.monotonic() - started, 1e-9)),
        "partitions": {
            str(p): {
                "records": a.records,
                "checkpoints": a.checkpoints,
                "signed_records": a.signed_records,
                "unsigned_tail": a.unsigned_run,
                "longest_unsigned_run": a.unsigned_run_max,
            }
            for p, a in sorted(auditor.partitions.items())
        },
        "unsigned_records": auditor.unsigned_records(),
        "unsigned_records_max": bound,
        "organizations": len(auditor.wallets),
        "captures_checked": auditor.captures_checked,
        "time_charges_checked": auditor.time_charges_checked,
        "book_total_micros": auditor.book.total_micros(),
        "first_problem": problems[0] if problems else None,
        "problems": problems[:50],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        partitions = len(auditor.partitions)
        print(f"{records:,} ledger records in {partitions} partitions, {report['organizations']} organizations")
        print(
            f"chain and checkpoints: {sum(a.checkpoints for a in auditor.partitions.values())} checkpoints, "
            f"{report['unsigned_records']} records after the last checkpoint (chained, not yet signed); "
            f"at most {bound} allowed in a row per partition"
        )
        print(
            f"captures checked against the price book: {auditor.captures_checked}, GPU time and plan "
            f"charges: {auditor.time_charges_checked}; book sums to "
            f"{report['book_total_micros']}"
        )
        print("OK: the log proves every balance" if not problems else f"FAILED: {problems[0]}")
        for problem in problems[1:10]:
            print(f"  also: {problem}")
    return 0 if not problems else 1


def _balance_pair(auditor: Auditor, org_id: str) -> tuple[int, int]:
    balance = auditor.balance(org_id)
    return balance["amount_micros"], balance["held_micros"]


def known_organizations(log: EventLog) -> set[str]:
    tenants = TenantsView()
    for batch in read_topic(log, topics.TENANTS, quiet=True):
        for record in batch:
            tenants.apply(decode_event(record.value))
    return set(tenants.organizations)


def require_organization(log: EventLog, org_id: str) -> None:
    if org_id not in known_organizations(log):
        raise CommandError(f"no organization {org_id!r} in this log (check --org, and --data-dir or --kafka)")


def balance_at(args: argparse.Namespace, settings: Settings) -> int:
    at = moment_argument(args.at, "--at")
    log = open_log(settings, must_exist=True)
    require_organization(log, args.org)
    auditor = audit_log(log, None, until=at, quiet=True)
    print(json.dumps({"org_id": args.org, "at": iso(at), **auditor.balance(args.org)}, indent=2))
    return 0


def statement(args: argparse.Namespace, settings: Settings) -> int:
    """An organization's statement for [from, to) from the log alone (compare with ClickHouse's)."""
    from projections.replay import statement_from_log
    from projections.statements import statement_csv, statement_json

    start, end = period_arguments(args.start, args.end)
    log = open_log(settings, must_exist=True)
    require_organization(log, args.org)
    built = statement_from_log(log, args.org, start, end)
    if args.format == "csv":
        print(statement_csv(built), end="")
    else:
        import msgspec

        print(msgspec.json.format(msgspec.json.Encoder(decimal_format="number").encode(statement_json(built))).decode())
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def moment_argument(text: str, name: str, whole_ms: bool = False) -> datetime:
    """An ISO 8601 command-line moment, or a usage error saying what is expected."""
    try:
        return parse_moment(text, name, whole_ms=whole_ms)
    except MomentError as error:
        raise CommandError(str(error), exit_code=2) from None


def period_arguments(start: str, end: str) -> tuple[datetime, datetime]:
    period = moment_argument(start, "--from"), moment_argument(end, "--to")
    if not period[0] < period[1]:
        raise CommandError("--from must be before --to", exit_code=2)
    return period


def show_public_key(args: argparse.Namespace, settings: Settings) -> int:
    public_key = _public_keys(settings, None)[0]
    print(json.dumps(public_key_jwk(public_key)) if args.jwk else public_key_pem(public_key), end="")
    return 0


def add_parsers(sub: Any) -> None:
    audit = sub.add_parser("audit", help="verify the ledger from the log alone")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    for name, help_text in (
        ("verify", "check the hash chain, the signed checkpoints, every balance and every charge"),
        ("balance", "an organization's balance as of a past moment, from the log"),
        ("public-key", "the ledger's public key (PEM, or --jwk)"),
        ("statement", "an organization's statement for a period, from the log alone"),
    ):
        parser = audit_sub.add_parser(name, help=help_text)
        parser.add_argument("--data-dir", type=Path, help="the embedded log's data directory")
        parser.add_argument("--kafka", help="a Kafka bootstrap address (default: TOLLGATE_KAFKA_BOOTSTRAP)")
        if name == "verify":
            parser.add_argument(
                "--public-key",
                action="append",
                help="the ledger's public key file (PEM or JWK); repeat it for keys rotated out",
            )
            parser.add_argument("--gateway", help="also compare with this gateway's balances read model")
            parser.add_argument(
                "--admin-token", help="the platform admin token for --gateway (default: TOLLGATE_ADMIN_TOKEN)"
            )
            parser.add_argument("--json", action="store_true", help="print the report as JSON")
            parser.add_argument(
                "--processes",
                type=_positive,
                help=f"verify the partitions in this many processes (default: one per core for logs of "
                f"{parallel_records_min:,} records or more, else 1)",
            )
            parser.add_argument(
                "--unsigned-records-max",
                type=_positive,
                help="fail a partition with more records than this in a row without a valid checkpoint "
                "(default: TOLLGATE_CHECKPOINT_RECORDS_MAX, the most the ledger writes between two)",
            )
        if name == "balance":
            parser.add_argument("--org", required=True, help="the organization id (org_...)")
            parser.add_argument("--at", required=True, help="an ISO 8601 moment, e.g. 2026-11-01T00:00:00Z")
        if name == "public-key":
            parser.add_argument("--jwk", action="store_true", help="print the key as a JWK instead of PEM")
        if name == "statement":
            parser.add_argument("--org", required=True, help="the organization id (org_...)")
            parser.add_argument("--from", dest="start", required=True, help="period start, ISO 8601 (inclusive)")
            parser.add_argument("--to", dest="end", required=True, help="period end, ISO 8601 (exclusive)")
            parser.add_argument(
                "--format", choices=("json", "csv"), default="json", help="output format (default json)"
            )


def run(args: argparse.Namespace, settings: Settings) -> int:
    command = {"verify": verify, "balance": balance_at, "public-key": show_public_key, "statement": statement}[
        args.audit_command
    ]
    return command(args, settings)
