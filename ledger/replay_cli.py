"""`tollgate replay`: rebuild projections from the log into fresh targets and compare them with the
live ones.

- ``balances``: every wallet and the double-entry book, from offset 0 (a balance has no midpoint);
  compared with the gateway's balances read model.
- ``jobs``: job state from the ledger and jobs topics (from ``--since`` or 0); compared, job by job,
  with the gateway's (``GET /v1/jobs/{id}`` with an organization key is per organization, so the
  comparison uses the admin's job lookup by organization).
- ``windows``: the rate-limit windows of the last minute from ``tollgate.requests`` and the charges;
  compared with ``used_in_window`` of ``GET /v1/organizations/{id}/limits``.
- ``usage``: ClickHouse usage rows, rollups and postings into a fresh store in ``--target`` (from
  ``--since`` or 0); compared with the live usage API totals.

Each prints what it rebuilt, how fast (with a progress line on long runs) and every mismatch; the exit
code is 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from ledger.audit_cli import open_log, read_topic
from ledger.limits import kinds
from ledger.log import EventLog
from ledger.settings import Settings
from projections.jobs import JobsView
from projections.views import BalancesView, TenantsView
from schemas import topics
from schemas.codec import decode_event

projections_all = ("balances", "jobs", "windows", "usage")


def _admin(args: argparse.Namespace) -> httpx.Client | None:
    if not args.gateway:
        return None
    return httpx.Client(base_url=args.gateway, headers={"Authorization": f"Bearer {args.admin_token}"}, timeout=30)


def rebuild_balances(log: EventLog) -> BalancesView:
    view = BalancesView()
    for batch in read_topic(log, topics.LEDGER, label="balances"):
        for record in batch:
            view.apply(decode_event(record.value))
    return view


def organizations(log: EventLog) -> set[str]:
    tenants = TenantsView()
    for batch in read_topic(log, topics.TENANTS, label="tenants", quiet=True):
        for record in batch:
            tenants.apply(decode_event(record.value))
    return set(tenants.organizations)


def compare_balances(view: BalancesView, admin: httpx.Client, orgs: set[str]) -> list[str]:
    """Every organization, those with no ledger event left included (their balance is zero)."""
    mismatches = []
    for org_id in sorted(orgs | set(view.wallets)):
        wallet = view.get(org_id)
        live = admin.get(f"/v1/organizations/{org_id}/balance")
        if live.status_code != 200:
            mismatches.append(f"balances {org_id}: the gateway answered {live.status_code}")
            continue
        for name, rebuilt in (("amount_micros", wallet.balance_micros), ("held_micros", wallet.held_micros)):
            if live.json().get(name) != rebuilt:
                mismatches.append(f"balances {org_id}: {name} live {live.json().get(name)}, rebuilt {rebuilt}")
    return mismatches


def rebuild_jobs(log: EventLog, since_ms: int | None) -> JobsView:
    view = JobsView()
    for topic in (topics.LEDGER, topics.JOBS):
        for batch in read_topic(log, topic, label=f"jobs from {topic}"):
            for record in batch:
                if since_ms is None or record.timestamp_ms >= since_ms:
                    view.apply(decode_event(record.value))
    return view


def compare_jobs(view: JobsView, admin: httpx.Client) -> list[str]:
    mismatches = []
    for job in view.jobs.values():
        live = admin.get(f"/v1/organizations/{job.org_id}/jobs/{job.job_id}")
        if live.status_code != 200:
            mismatches.append(f"jobs {job.job_id}: the gateway answered {live.status_code}")
            continue
        body = live.json()
        for name, rebuilt in (("status", job.status), ("cost_micros", job.cost_micros), ("attempt", job.attempt)):
            if body.get(name) != rebuilt:
                mismatches.append(f"jobs {job.job_id}: {name} live {body.get(name)}, rebuilt {rebuilt}")
    return mismatches


def rebuild_windows(log: EventLog, settings: Settings) -> tuple[Any, TenantsView]:
    from gateway.ratelimit import RateLimiter, window_s

    tenants = TenantsView()
    for batch in read_topic(log, topics.TENANTS, label="tenants"):
        for record in batch:
            tenants.apply(decode_event(record.value))
    limiter = RateLimiter(settings, tenants)
    limiter.instance_id = "replay"  # count every instance's admissions, none as its own
    since_ms = limiter.now_ms() - window_s * 1000
    for topic in (topics.REQUESTS, topics.LEDGER):
        for batch in read_topic(log, topic, label=f"windows from {topic}"):
            for record in batch:
                if record.timestamp_ms >= since_ms:
                    limiter.apply(decode_event(record.value))
    return limiter, tenants


def compare_windows(limiter: Any, tenants: TenantsView, admin: httpx.Client) -> list[str]:
    mismatches = []
    for org_id in sorted(tenants.organizations):
        live = admin.get(f"/v1/organizations/{org_id}/limits")
        if live.status_code != 200:
            mismatches.append(f"windows {org_id}: the gateway answered {live.status_code}")
            continue
        rebuilt = limiter.window_totals("organization", org_id, tuple(kinds))
        if live.json().get("used_in_window") != rebuilt:
            mismatches.append(f"windows {org_id}: live {live.json().get('used_in_window')}, rebuilt {rebuilt}")
    return mismatches


def replay(args: argparse.Namespace, settings: Settings) -> int:
    wanted = [p.strip() for p in args.projections.split(",") if p.strip()]
    unknown = set(wanted) - set(projections_all)
    if unknown:
        sys.exit(f"unknown projections {sorted(unknown)}; choose from {', '.join(projections_all)}")
    since = datetime.fromisoformat(args.since.replace("Z", "+00:00")) if args.since else None
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    since_ms = int(since.timestamp() * 1000) if since else None
    log = open_log(settings)
    admin = _admin(args)
    report: dict[str, Any] = {}
    mismatches: list[str] = []
    if "balances" in wanted:
        started = time.monotonic()
        balances = rebuild_balances(log)
        report["balances"] = {
            "organizations": len(balances.wallets),
            "seconds": round(time.monotonic() - started, 3),
            "book_total_micros": balances.book.total_micros(),
        }
        if balances.book.total_micros() != 0:
            mismatches.append(f"balances: the rebuilt book sums to {balances.book.total_micros()}")
        if admin is not None:
            mismatches += compare_balances(balances, admin, organizations(log))
    if "jobs" in wanted:
        started = time.monotonic()
        jobs = rebuild_jobs(log, since_ms)
        report["jobs"] = {
            "jobs": len(jobs.jobs),
            "by_status": dict(Counter(job.status for job in jobs.jobs.values())),
            "seconds": round(time.monotonic() - started, 3),
        }
        if admin is not None:
            mismatches += compare_jobs(jobs, admin)
    if "windows" in wanted:
        limiter, tenants = rebuild_windows(log, settings)
        report["windows"] = {"organizations": len(tenants.organizations)}
        if admin is not None:
            mismatches += compare_windows(limiter, tenants, admin)
    if "usage" in wanted:
        from projections.replay import compare_usage, rebuild_usage

        target = Path(args.target) if args.target else settings.data_dir / f"replay-{int(time.time())}"
        started = time.monotonic()
        store, totals = rebuild_usage(log, target, since_ms)
        report["usage"] = {"target": str(target), "seconds": round(time.monotonic() - started, 3), **totals}
        if admin is not None:
            mismatches += compare_usage(store, admin, since)
        store.close()
    report["mismatches"] = mismatches[:100]
    report["ok"] = not mismatches
    print(json.dumps(report, indent=2, default=str))
    return 0 if not mismatches else 1


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("replay", help="rebuild projections from the log and compare them with the live ones")
    parser.add_argument("--data-dir", type=Path, help="the embedded log's data directory")
    parser.add_argument("--kafka", help="a Kafka bootstrap address (default: TOLLGATE_KAFKA_BOOTSTRAP)")
    parser.add_argument("--projections", default=",".join(projections_all), help="comma separated")
    parser.add_argument("--since", help="rebuild jobs and usage from this ISO moment instead of offset 0")
    parser.add_argument("--target", help="a fresh directory for the rebuilt ClickHouse store")
    parser.add_argument("--gateway", help="compare with this gateway's read models")
    parser.add_argument("--admin-token", default="", help="the platform admin token for --gateway")
