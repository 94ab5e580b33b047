"""Usage analytics benchmark on ClickHouse (embedded chdb, or a server with --clickhouse-url).

1. Ingest: synthetic usage rows for one month and many organizations, inserted from Python in
   batches through the store (materialized-view rollups included): rows/s. Two paths:
   - bulk (`UsageStore.insert_columns`, column arrays, no duplicate check): backfills and this
     benchmark's fill;
   - projector (`UsageStore.insert` of UsageRow batches of TOLLGATE_SINK_BATCH_ROWS_MAX, with the
     duplicate check that keeps rollups exact): what the projector does per flush.
2. Queries over the filled table (--rows total, default 10 million), once the load's background merges
   are done (waited for, at most --merge-wait-s-max), for random organizations:
   p50/p99 of the account-usage query (one page of 100 events + the summary by source for the
   month, as GET /v1/account/usage runs them), the admin daily rollup by model, and the statement
   (three grouped queries + the allocation), timed in-process around the store calls; then the same
   two through HTTP (`tollgate dev` on the filled data) for --http-orgs organizations created through
   the API, which take the place of the largest synthetic ones.
3. Completion to visible: `tollgate dev` on 127.0.0.1; after each chat completion returns, poll
   GET /v1/account/usage until its row is there.

    .venv/bin/python bench/usage.py                      # 10M rows (about five minutes on 2 cores)
    .venv/bin/python bench/usage.py --rows 1000000 --visible-requests 20

Prints figures and saves JSON in bench/results/usage.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

repo = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(repo))

from bench.e2e import lift_limits
from ledger.pricing import default_price_book, unit_names, unit_rates
from projections.statements import load_statement
from projections.usage import UsageFilter, UsageRow, UsageStore, rate_columns
from schemas.units import Units
from tests.support import Admin, Role, free_port, wait_for_text, wait_until_serving

admin_token = "tga_bench"
month = datetime(2026, 11, 1, tzinfo=UTC)
month_ms = 30 * 24 * 3600 * 1000
models = ("sim-chat-small", "sim-chat-large", "sim-embed-small", "sim-tts")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# Organizations created through the API (--http-orgs), standing in for the first, largest, synthetic ones.
api_orgs: list[str] = []


def org_ids(count: int) -> list[str]:
    names = [f"org_{i:06d}" for i in range(count)]
    names[: len(api_orgs)] = api_orgs
    return names


def synthetic_columns(
    start: int, count: int, orgs: int, rng: np.random.Generator, span_ms: tuple[int, int] = (0, month_ms)
) -> dict[str, Any]:
    """``count`` usage rows (ids from ``start``) in ``span_ms`` of the month: organizations skewed (a
    few are big), three tokens each, four models priced with the default book's rates."""
    org_index = np.minimum((rng.pareto(1.2, count) * orgs / 20).astype(np.int64), orgs - 1)
    model_index = rng.integers(0, len(models), count)
    created_ms = np.sort(rng.integers(span_ms[0], span_ms[1], count))  # arriving in time order
    input_tokens = rng.integers(10, 4000, count)
    output_tokens = np.where(model_index == 2, 0, rng.integers(1, 800, count))
    characters = np.where(model_index == 3, rng.integers(10, 2000, count), 0)
    book = default_price_book()
    rates = np.array([unit_rates(book.models[m], Units()) for m in models], dtype=np.int64)  # [model, unit]
    row_rates = rates[model_index]
    position = {name: index for index, name in enumerate(unit_names)}
    scaled = (
        input_tokens * row_rates[:, position["input_tokens"]]
        + output_tokens * row_rates[:, position["output_tokens"]]
        + characters * row_rates[:, position["characters"]]
    )
    cost = -(-scaled // 1_000_000)
    zeros = np.zeros(count, dtype=np.int64)
    org_names = np.array(org_ids(orgs), dtype=object)
    ids = np.arange(start, start + count)
    columns: dict[str, Any] = {
        "event_id": [f"evt_{i:012d}" for i in ids],
        "created_at": [month + timedelta(milliseconds=int(ms)) for ms in created_ms],
        "org_id": list(org_names[org_index]),
        "token_id": [f"tok_{o}_{t}" for o, t in zip(org_index, rng.integers(0, 3, count), strict=True)],
        "model": list(np.array(models, dtype=object)[model_index]),
        "endpoint": ["/v1/chat/completions"] * count,
        "source": ["api"] * count,
        "status": ["success"] * count,
        "status_code": [200] * count,
        "error": [""] * count,
        "request_id": [f"req_{i:012d}" for i in ids],
        "job_id": [f"job_{i:012d}" for i in ids],
        "latency_ms": rng.integers(5, 3000, count),
        "input_tokens": input_tokens,
        "cached_input_tokens": zeros,
        "output_tokens": output_tokens,
        "images": zeros,
        "audio_seconds": zeros,
        "video_seconds": zeros,
        "characters": characters,
        "calls": zeros,
        "cost_micros": cost,
        "price_version": [book.version] * count,
        "variant": [""] * count,
    }
    for index, column in enumerate(rate_columns):
        columns[column] = row_rates[:, index]
    return columns


def capture_postings(columns: dict[str, Any]) -> dict[str, Any]:
    """The ledger's revenue posting of each charge (what statements check their total against)."""
    count = len(columns["event_id"])
    return {
        "event_id": columns["event_id"],
        "posting": [1] * count,
        "created_at": columns["created_at"],
        "org_id": columns["org_id"],
        "kind": ["hold.captured.v1"] * count,
        "debit": [f"{org}/held" for org in columns["org_id"]],
        "credit": ["revenue"] * count,
        "amount_micros": columns["cost_micros"],
    }


def rows_of(columns: dict[str, Any], lo: int, hi: int) -> list[UsageRow]:
    def field(name: str, i: int) -> Any:  # a row's value of one column, a Python int for numpy's
        column = columns[name]
        return int(column[i]) if isinstance(column, np.ndarray) else column[i]

    names = list(columns)
    return [UsageRow(**{n: field(n, i) for n in names}) for i in range(lo, hi)]


def bench_ingest(store: UsageStore, args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    bulk_s = postings_s = generate_s = 0.0
    done = 0
    while done < args.rows:
        count = min(args.bulk_batch_rows, args.rows - done)
        started = time.perf_counter()
        columns = synthetic_columns(done, count, args.orgs, rng)
        postings = capture_postings(columns)
        generate_s += time.perf_counter() - started
        started = time.perf_counter()
        store.insert_columns(columns)
        bulk_s += time.perf_counter() - started
        started = time.perf_counter()
        store.insert_columns(postings, "ledger_postings")
        postings_s += time.perf_counter() - started
        done += count
        print(f"  inserted {done:,} usage rows ({done / bulk_s:,.0f} rows/s of insert time)", flush=True)
    # For comparison: the same bulk insert into a copy of usage_events without the rollup views.
    store.command("CREATE TABLE IF NOT EXISTS bench_usage_no_views AS usage_events")
    raw_s = 0.0
    for lo in range(0, args.raw_only_rows, args.bulk_batch_rows):
        count = min(args.bulk_batch_rows, args.raw_only_rows - lo)
        columns = synthetic_columns(lo, count, args.orgs, rng)
        started = time.perf_counter()
        store.insert_columns(columns, "bench_usage_no_views")
        raw_s += time.perf_counter() - started
    store.command("DROP TABLE bench_usage_no_views")
    # The projector's path: UsageRow batches with the duplicate check, as a live projector sees them:
    # consecutive batches of recent events (here 1,000 events a second, just after the month's rows).
    columns = synthetic_columns(
        args.rows, args.projector_rows, args.orgs, rng, (month_ms, month_ms + args.projector_rows)
    )
    rows = rows_of(columns, 0, args.projector_rows)
    started = time.perf_counter()
    for lo in range(0, len(rows), args.sink_batch_rows):
        store.insert(rows[lo : lo + args.sink_batch_rows], [])
    projector_s = time.perf_counter() - started
    started = time.perf_counter()
    assert store.insert(rows[: args.sink_batch_rows], []) == 0  # a redelivered batch writes nothing
    redelivered_s = time.perf_counter() - started
    return {
        "rows": args.rows,
        "bulk_batch_rows": args.bulk_batch_rows,
        "bulk_rows_per_s": round(args.rows / bulk_s),
        "bulk_insert_s": round(bulk_s, 1),
        "capture_postings_rows_per_s": round(args.rows / postings_s),
        "no_views_rows": args.raw_only_rows,
        "no_views_rows_per_s": round(args.raw_only_rows / raw_s) if raw_s else None,
        "generate_s": round(generate_s, 1),
        "projector_rows": args.projector_rows,
        "projector_batch_rows": args.sink_batch_rows,
        "projector_rows_per_s": round(args.projector_rows / projector_s),
        "redelivered_batch_ms": round(redelivered_s * 1000, 1),
    }


def timed(run: Any, samples: int) -> dict[str, float]:
    run(0)  # warm the caches once
    laps = []
    for i in range(samples):
        started = time.perf_counter()
        run(i)
        laps.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(percentile(laps, 50), 2), "p99_ms": round(percentile(laps, 99), 2), "samples": samples}


def settle_merges(store: UsageStore, wait_s_max: float) -> dict[str, Any]:
    """Wait (bounded) for the bulk load's background merges, so the queries are timed on the table as
    it stands afterwards, not against merges for the 2 cores."""
    started = time.perf_counter()
    at_start = store.merges_running()
    running = at_start
    while running and time.perf_counter() - started < wait_s_max:
        time.sleep(0.5)
        running = store.merges_running()
    return {"merges_at_start": at_start, "merges_left": running, "waited_s": round(time.perf_counter() - started, 1)}


def bench_queries(store: UsageStore, args: argparse.Namespace) -> dict[str, Any]:
    merges = settle_merges(store, args.merge_wait_s_max)
    print(f"  before the queries: {merges}", flush=True)
    rng = random.Random(2)
    orgs = org_ids(args.orgs)
    picks = [rng.choice(orgs) for _ in range(args.queries + 1)]
    end = month + timedelta(days=30)

    def account_usage(i: int) -> None:
        selection = UsageFilter(org_id=picks[i], limit=101, start=month, end=end)
        store.events(selection)
        store.summary(selection)

    def account_usage_unbounded(i: int) -> None:
        selection = UsageFilter(org_id=picks[i], limit=101)
        store.events(selection)
        store.summary(selection)

    def account_usage_page(i: int) -> None:
        store.events(UsageFilter(org_id=picks[i], limit=101, start=month, end=end))

    def rollup(i: int) -> None:
        store.rollup(picks[i], "day", "model", month, end, 1001)

    def statement(i: int) -> None:
        load_statement(store, picks[i], month, end)

    sizes = store.query(
        "SELECT quantileExact(0.5)(n), max(n) FROM (SELECT org_id, count() AS n FROM usage_events GROUP BY org_id)"
    )[0]
    return {
        "merges": merges,
        "orgs": args.orgs,
        "rows_per_org_median": int(sizes[0]),
        "rows_per_org_max": int(sizes[1]),
        "account_usage": timed(account_usage, args.queries),
        "account_usage_no_window": timed(account_usage_unbounded, args.queries),
        "account_usage_events_page_only": timed(account_usage_page, args.queries),
        "rollup_daily_by_model": timed(rollup, args.queries),
        "statement": timed(statement, args.queries),
    }


def bench_visible(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {"TOLLGATE_ADMIN_TOKEN": admin_token, "TOLLGATE_KAFKA_BOOTSTRAP": "", "TOLLGATE_CLICKHOUSE_URL": ""}
    role = Role("dev", ["dev", "--port", str(port), "--data-dir", str(root / "dev")], env, root)
    try:
        wait_until_serving(base_url, role)
        wait_for_text(role, "demo API key")
        admin = Admin(base_url, admin_token)
        org = admin.organization("bench")
        admin.grant(org, 100)
        lift_limits(admin, org)  # it polls every 5 ms: far past the free plan's 60 requests a minute
        key = admin.token(org)
        client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        body = {"model": "sim-chat-small", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16}
        laps = []
        for _ in range(args.visible_requests):
            response = client.post("/v1/chat/completions", json=body)
            completed = time.perf_counter()
            request_id = response.headers["x-request-id"]
            while True:
                polled = client.get("/v1/account/usage", params={"limit": 1})
                assert polled.status_code == 200, polled.text
                data = polled.json()["data"]
                if data and data[0]["request_id"] == request_id:
                    break
                if time.perf_counter() - completed > 10:
                    raise RuntimeError("a usage row did not become visible within 10 s")
                time.sleep(0.005)
            laps.append((time.perf_counter() - completed) * 1000)
            time.sleep(rng_pause(len(laps)))
        return {
            "requests": len(laps),
            "p50_ms": round(percentile(laps, 50), 1),
            "p99_ms": round(percentile(laps, 99), 1),
            "max_ms": round(max(laps), 1),
            "flush_wait_ms_max": int(os.environ.get("TOLLGATE_SINK_FLUSH_WAIT_MS_MAX", "200")),
        }
    finally:
        role.stop()


def start_dev(data_dir: Path, log_dir: Path) -> tuple[str, Role]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {"TOLLGATE_ADMIN_TOKEN": admin_token, "TOLLGATE_KAFKA_BOOTSTRAP": "", "TOLLGATE_CLICKHOUSE_URL": ""}
    data_dir.mkdir(parents=True, exist_ok=True)
    role = Role("dev", ["dev", "--port", str(port), "--data-dir", str(data_dir)], env, log_dir)
    wait_until_serving(base_url, role)
    return base_url, role


def create_api_orgs(data_dir: Path, count: int) -> dict[str, str]:
    """``count`` organizations with a user:read key, created through the admin API of `tollgate dev`."""
    base_url, role = start_dev(data_dir, data_dir)
    try:
        admin = Admin(base_url, admin_token)
        keys = {}
        for i in range(count):
            org = admin.organization(f"bench {i}")
            keys[org] = admin.token(org, ["user:read"])
        return keys
    finally:
        role.stop()


def bench_http(data_dir: Path, keys: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """p50/p99 through HTTP (`tollgate dev` on the filled data directory) for the API organizations,
    which stand in for the largest synthetic ones."""
    base_url, role = start_dev(data_dir, data_dir)
    rng = random.Random(3)
    window = {"from": "2026-11-01T00:00:00Z", "to": "2026-11-30T23:59:59.999Z"}
    period = {"from": "2026-11-01T00:00:00Z", "to": "2026-12-01T00:00:00Z"}
    try:
        with httpx.Client(base_url=base_url, timeout=60) as client:
            admin = {"Authorization": f"Bearer {admin_token}"}
            picks = [rng.choice(list(keys)) for _ in range(args.queries + 1)]

            def usage(i: int) -> None:
                headers = {"Authorization": f"Bearer {keys[picks[i]]}"}
                response = client.get("/v1/account/usage", params={"limit": 100, **window}, headers=headers)
                assert response.status_code == 200, response.text

            def statement(i: int) -> None:
                response = client.get(f"/v1/organizations/{picks[i]}/statements", params=period, headers=admin)
                assert response.status_code == 200 and response.json()["ledger"]["balanced"], response.text

            rows = [
                client.get(
                    "/v1/account/usage", params={"limit": 1, **window}, headers={"Authorization": f"Bearer {k}"}
                ).json()["window_summary"]["requests"]
                for k in keys.values()
            ]
            return {
                "orgs": len(keys),
                "rows_per_org_min": min(rows),
                "rows_per_org_max": max(rows),
                "account_usage": timed(usage, args.queries),
                "statement": timed(statement, args.queries),
            }
    finally:
        role.stop()


def rng_pause(i: int) -> float:
    """Spread requests over the projector's flush cycle instead of phase-locking to it."""
    return (i * 37 % 100) / 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000, help="usage rows in the month")
    parser.add_argument("--orgs", type=int, default=2000)
    parser.add_argument("--bulk-batch-rows", type=int, default=500_000)
    parser.add_argument("--projector-rows", type=int, default=100_000)
    parser.add_argument("--raw-only-rows", type=int, default=1_000_000, help="bulk rows into a table without views")
    parser.add_argument("--sink-batch-rows", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--merge-wait-s-max", type=float, default=300, help="wait for background merges first")
    parser.add_argument("--visible-requests", type=int, default=100)
    parser.add_argument("--http-orgs", type=int, default=50, help="organizations also measured through HTTP")
    parser.add_argument("--clickhouse-url", default="", help="a server (a fresh database is best); default: chdb")
    parser.add_argument("--data-dir", type=Path, help="keep the embedded data here; reuse it with --skip-ingest")
    parser.add_argument("--skip-ingest", action="store_true", help="query the rows already in --data-dir")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-usage-") as tmp:
        root = Path(tmp)
        data_dir = args.data_dir or root / "data"
        keys = create_api_orgs(data_dir, args.http_orgs) if args.http_orgs and not args.clickhouse_url else {}
        api_orgs.extend(keys)
        store = UsageStore(url=args.clickhouse_url, path=data_dir / "clickhouse")
        try:
            print(f"ingesting {args.rows:,} rows for {args.orgs:,} organizations ({store.mode})", flush=True)
            ingest = {} if args.skip_ingest else bench_ingest(store, args)
            print(json.dumps(ingest, indent=2), flush=True)
            queries = bench_queries(store, args)
            print(json.dumps(queries, indent=2), flush=True)
        finally:
            store.close()
        http = bench_http(data_dir, keys, args) if keys else {}
        print(json.dumps(http, indent=2), flush=True)
        visible = bench_visible(args, root) if args.visible_requests else {}
    report = {
        "benchmark": "usage",
        "clickhouse": "server" if args.clickhouse_url else "embedded chdb",
        "ingest": ingest,
        "queries": queries,
        "http": http,
        "completion_to_visible": visible,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg()},
        "targets": {"ingest_rows_per_s": 200_000, "query_p99_ms": 100, "visible_ms": 1000},
    }
    out = args.out or repo / "bench" / "results" / "usage.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
