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
- ``usage``: ClickHouse usage rows, rollups and postings into a fresh store; compared with the live
  usage API totals. From ``--since``: the events that occurred in [since, the moment replay started),
  compared with the live statements of exactly that window. The fresh store is a new database on the
  ClickHouse server in use (TOLLGATE_CLICKHOUSE_URL, or the server of the ``tollgate dev`` running on
  ``--data-dir``), dropped when everything agrees and kept to be queried when something differs; or,
  without a server (or with ``--target DIR``), a new embedded store in a directory, kept.

``--since`` selects events by ``occurred_at`` and seeks the log by record timestamp to a little
before it (``since_seek_slack_s``), so it reads only the end of the log.

Each prints what it rebuilt, how fast (with a progress line on long runs) and every mismatch; the exit
code is 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from eventlog import EventLog, topics
from eventlog.read import read_topic
from eventlog.settings import Settings
from ledger.limits import kinds
from projections.jobs import JobsView
from projections.statements import load_statement, statement_days_max, statement_json
from projections.usage import StoreUnavailable, UsageStore, create_database, database_exists, drop_database
from projections.views import BalancesView, TenantsView
from schemas.codec import decode_event
from schemas.events import HoldPlaced
from schemas.moments import iso, utc_now
from tollgate.audit import moment_argument
from tollgate.clickhouse import running_url, server_directory
from tollgate.remote import CommandError, GatewayClient
from tollgate.wiring import open_log

projections_all = ("balances", "jobs", "windows", "usage")
# --since seeks by record timestamp, stamped by the appending process's clock, then selects by
# occurred_at, stamped by the deciding one's: starting this much earlier loses nothing to a skew
# (or a wait between deciding and appending) up to it.
since_seek_slack_s = 300


def seek_start_ms(since: datetime | None) -> int | None:
    return None if since is None else int(since.timestamp() * 1000) - since_seek_slack_s * 1000


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


def compare_jobs(view: JobsView, admin: GatewayClient) -> list[str]:
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


def compare_windows(limiter: Any, tenants: TenantsView, admin: GatewayClient) -> list[str]:
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


def compare_usage(
    store: UsageStore,
    admin: GatewayClient,
    since: datetime | None = None,
    until: datetime | None = None,
    orgs: set[str] | None = None,
) -> list[str]:
    """The rebuilt rows against the live usage API, organization by organization.

    The whole log: (requests, cost) of every row, refusals included, from ``usage/by-token`` with no
    window. From ``since``: the statements of [since, until), live against the same statement of the
    rebuilt store. A statement's window is exact to the millisecond (whole days from the rollups, the
    partial days from the raw rows), while ``from`` of ``usage/by-token`` selects whole days, so a
    --since that is not midnight would compare different windows. A statement covers the charges
    (quantities, per-model request counts, amounts) and the refunds, not the zero-cost refusals."""
    rebuilt = store.raw_totals_by_org()
    if since is None:
        return _compare_all_time(rebuilt, admin, set(rebuilt) | (orgs or set()))
    end = until if until is not None else datetime.now(UTC)
    mismatches: list[str] = []
    for org_id in sorted(set(rebuilt) | (orgs or set())):
        start = since
        while start < end:
            stop = min(start + timedelta(days=statement_days_max), end)
            mismatches += _compare_statement(store, admin, org_id, start, stop)
            start = stop
    return mismatches


def _compare_all_time(rebuilt: dict[str, tuple[int, int]], admin: GatewayClient, orgs: set[str]) -> list[str]:
    mismatches = []
    for org_id in sorted(orgs):
        live = admin.get(f"/v1/organizations/{org_id}/usage/by-token")
        if live.status_code != 200:
            mismatches.append(f"usage {org_id}: the gateway answered {live.status_code}")
            continue
        rows = live.json()["data"]
        live_totals = (sum(r["requests"] for r in rows), sum(r["cost_micros"] for r in rows))
        if live_totals != rebuilt.get(org_id, (0, 0)):
            mismatches.append(
                f"usage {org_id}: (requests, cost) live {live_totals}, rebuilt {rebuilt.get(org_id, (0, 0))}"
            )
    return mismatches


def _statement_figures(body: dict[str, Any]) -> dict[str, Any]:
    """The exact (integer) parts of a statement's JSON; the decimal renderings follow from them."""
    return {
        "lines": [
            (
                line["model"],
                line["price_version"],
                line["unit"],
                line["quantity"],
                line["unit_price_micros_per_million"],
                line["amount_micros"],
            )
            for line in body["lines"]
        ],
        "charges_micros": body["charges_micros"],
        "refunds_micros": body["refunds_micros"],
        "total_micros": body["total_micros"],
        "ledger_charges_micros": body["ledger"]["charges_micros"],
        "ledger_refunds_micros": body["ledger"]["refunds_micros"],
    }


def _compare_statement(
    store: UsageStore, admin: GatewayClient, org_id: str, start: datetime, end: datetime
) -> list[str]:
    period = f"[{start.isoformat()}, {end.isoformat()})"
    live = admin.get(
        f"/v1/organizations/{org_id}/statements", params={"from": start.isoformat(), "to": end.isoformat()}
    )
    if live.status_code != 200:
        return [f"usage {org_id} {period}: the gateway answered {live.status_code}"]
    live_figures = _statement_figures(live.json())
    rebuilt = _statement_figures(statement_json(load_statement(store, org_id, start, end)))
    return [
        f"usage {org_id} {period}: {name} live {live_figures[name]}, rebuilt {rebuilt[name]}"
        for name in rebuilt
        if live_figures[name] != rebuilt[name]
    ]


def open_target(target: str | None, settings: Settings) -> tuple[UsageStore, str]:
    """The fresh store usage is rebuilt into, and its name for the report (see the module docstring):
    ``--target`` as a URL (``http://host:8123/database``) or a directory, else a new database on the
    server in use, else a new directory in the data directory."""
    server = settings.clickhouse_url or running_url(server_directory(settings.data_dir))
    if target is None and server:
        parts = urlsplit(server)
        target = urlunsplit(parts._replace(path=f"/tollgate_replay_{int(time.time() * 1000)}"))
    if target is not None and "://" in target:
        if database_exists(target):
            raise CommandError(f"the database of --target {target} exists; replay builds into a fresh one", 2)
        try:
            create_database(target)
            return UsageStore(url=target), target
        except StoreUnavailable as error:
            raise CommandError(str(error)) from None
    directory = Path(target) if target is not None else settings.data_dir / f"replay-{int(time.time())}"
    if (directory / "clickhouse").exists():
        raise CommandError(f"{directory / 'clickhouse'} exists; replay builds into a fresh target", 2)
    return UsageStore(path=directory / "clickhouse"), str(directory)


def replay(args: argparse.Namespace, settings: Settings) -> int:
    wanted = [p.strip() for p in args.projections.split(",") if p.strip()]
    unknown = set(wanted) - set(projections_all)
    if unknown:
        raise CommandError(f"unknown projections {sorted(unknown)}; choose from {', '.join(projections_all)}", 2)
    # On whole milliseconds: ClickHouse keeps created_at to the millisecond, so a finer bound would
    # split rows differently there and here.
    since = moment_argument(args.since, "--since", whole_ms=True) if args.since else None
    # The end of a --since window: events that occur while replay runs are not compared.
    until = moment_argument(iso(utc_now()), "now", whole_ms=True)
    if since is not None and since >= until:
        raise CommandError(f"--since {iso(since)} is not in the past", 2)
    admin = GatewayClient(args.gateway, args.admin_token or settings.admin_token) if args.gateway else None
    log = open_log(settings, must_exist=True)
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
            orgs = organizations(log) | set(balances.wallets)
            mismatches += admin.compare_balances(
                {org: (balances.get(org).balance_micros, balances.get(org).holds_micros) for org in orgs}
            )
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
        from projections.replay import rebuild_usage

        store, target = open_target(args.target, settings)
        started = time.monotonic()
        end = until if since is not None else None  # the whole log is compared whole
        try:
            totals = rebuild_usage(log, store, since, end, start_ms=seek_start_ms(since))
            report["usage"] = {"target": target, "seconds": round(time.monotonic() - started, 3), **totals}
            if since is not None:
                report["usage"].update({"from": since.isoformat(), "to": until.isoformat()})
            if admin is not None:
                mismatches += compare_usage(store, admin, since, end, orgs=organizations(log))
        finally:
            store.close()
        if store.url:  # a scratch database on a live server: dropped once compared and found equal
            agree = admin is not None and not mismatches and report["usage"].get("rollups_agree", False)
            report["usage"]["target_kept"] = not agree
            if not report["usage"]["target_kept"]:
                drop_database(store.url)
    report["mismatches"] = mismatches[:100]
    report["ok"] = not mismatches
    print(json.dumps(report, indent=2, default=str))
    return 0 if not mismatches else 1


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("replay", help="rebuild projections from the log and compare them with the live ones")
    parser.add_argument("--data-dir", type=Path, help="the embedded log's data directory")
    parser.add_argument("--kafka", help="a Kafka bootstrap address (default: TOLLGATE_KAFKA_BOOTSTRAP)")
    parser.add_argument(
        "--projections",
        default=",".join(projections_all),
        help=f"which to rebuild, comma separated (default: {','.join(projections_all)})",
    )
    parser.add_argument(
        "--since",
        help="rebuild jobs placed and usage that occurred from this ISO moment on, instead of from offset 0",
    )
    parser.add_argument(
        "--target",
        help="where to rebuild the usage rows: a new ClickHouse database by URL (http://host:8123/name) or a "
        "new directory (default: a new database on the server in use, else a directory in --data-dir)",
    )
    parser.add_argument("--gateway", help="compare with this gateway's read models")
    parser.add_argument(
        "--admin-token", default="", help="the platform admin token for --gateway (default: TOLLGATE_ADMIN_TOKEN)"
    )
