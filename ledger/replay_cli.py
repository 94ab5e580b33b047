"""`tollgate replay`: rebuild projections from the log into fresh targets and compare them with the
live ones.

- ``balances``: every wallet and the double-entry book, from offset 0 (a balance has no midpoint);
  compared with the gateway's balances read model.
- ``jobs``: job state from the ledger and jobs topics; compared, job by job, with the gateway's
  (``GET /v1/jobs/{id}`` with an organization key is per organization, so the comparison uses the
  admin's job lookup by organization). From ``--since``: the jobs placed (``HoldPlaced``) at or
  after it, each with all of its events, so the state of a job placed earlier is not half rebuilt.
- ``windows``: the rate-limit windows of the last minute from ``tollgate.requests`` and the charges;
  compared with ``used_in_window`` of ``GET /v1/organizations/{id}/limits``.
- ``usage``: ClickHouse usage rows, rollups and postings into a fresh store in ``--target``; compared
  with the live usage API totals. From ``--since``: the events that occurred in [since, the moment
  replay started), compared with the live statements of exactly that window.

``--since`` selects events by ``occurred_at`` and seeks the log by record timestamp to a little
before it (``since_seek_slack_s``), so it reads only the end of the log.

Each prints what it rebuilt, how fast (with a progress line on long runs) and every mismatch; the exit
code is 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from eventlog import EventLog, topics
from eventlog.settings import Settings
from ledger.audit_cli import open_log, read_topic
from ledger.limits import kinds
from projections.jobs import JobsView
from projections.views import BalancesView, TenantsView
from schemas.codec import decode_event
from schemas.events import HoldPlaced

projections_all = ("balances", "jobs", "windows", "usage")
# --since seeks by record timestamp, stamped by the appending process's clock, then selects by
# occurred_at, stamped by the deciding one's: starting this much earlier loses nothing to a skew
# (or a wait between deciding and appending) up to it.
since_seek_slack_s = 300


def seek_start_ms(since: datetime | None) -> int | None:
    return None if since is None else int(since.timestamp() * 1000) - since_seek_slack_s * 1000


def parse_moment(text: str) -> datetime:
    """An ISO 8601 moment (UTC when no offset), on whole milliseconds: ClickHouse keeps created_at to
    the millisecond, so a finer bound would split rows differently there and here."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


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


def rebuild_jobs(log: EventLog, since: datetime | None, retention: timedelta = timedelta(hours=1)) -> JobsView:
    """Every job, or those placed at or after ``since``. A job exists from its HoldPlaced on, and the
    view sets aside the events of jobs it does not know, so skipping the earlier HoldPlaced is what
    leaves out exactly the jobs placed before ``since`` (whose later events alone would misstate them)."""
    view = JobsView(retention)
    start_ms = seek_start_ms(since)
    for topic in (topics.LEDGER, topics.JOBS):
        for batch in read_topic(log, topic, label=f"jobs from {topic}", start_ms=start_ms):
            for record in batch:
                event = decode_event(record.value)
                if since is not None and isinstance(event, HoldPlaced) and event.occurred_at < since:
                    continue
                view.apply(event)
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
    since = parse_moment(args.since) if args.since else None
    # The end of a --since window: events that occur while replay runs are not compared.
    until = parse_moment(datetime.now(UTC).isoformat())
    if since is not None and since >= until:
        sys.exit(f"--since {since.isoformat()} is not in the past")
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
        jobs = rebuild_jobs(log, since, timedelta(seconds=settings.job_retention_s))
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
        end = until if since is not None else None  # the whole log is compared whole
        store, totals = rebuild_usage(log, target, since, end, start_ms=seek_start_ms(since))
        report["usage"] = {"target": str(target), "seconds": round(time.monotonic() - started, 3), **totals}
        if since is not None:
            report["usage"].update({"from": since.isoformat(), "to": until.isoformat()})
        if admin is not None:
            mismatches += compare_usage(store, admin, since, end, orgs=organizations(log))
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
    parser.add_argument(
        "--since",
        help="rebuild jobs placed and usage that occurred from this ISO moment on, instead of from offset 0",
    )
    parser.add_argument("--target", help="a fresh directory for the rebuilt ClickHouse store")
    parser.add_argument("--gateway", help="compare with this gateway's read models")
    parser.add_argument("--admin-token", default="", help="the platform admin token for --gateway")
