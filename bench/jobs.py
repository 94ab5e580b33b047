"""Async jobs benchmark: jobs per second through submit -> worker -> completion -> charge, and the
time from a job's completion (the worker's JobCompleted) to GET /v1/jobs/{id} showing it completed.

    .venv/bin/python bench/jobs.py --mode embedded --jobs 2000 --concurrency 32
    .venv/bin/python bench/jobs.py --mode kafka --jobs 2000 --concurrency 32

Submits async chat completions (simulated backend, no latency) from --concurrency keep-alive
connections; a sampler polls every --sample-every'th job every 5 ms to see when it becomes visible.
Throughput is jobs / (last job's charge time - first submit). Traffic goes to 127.0.0.1 only and is
bounded by --jobs. Prints the figures and saves JSON in bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

repo = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(repo))

from bench.e2e import Connection, admin_token, kafka_broker, lift_limits, percentile, start_stack
from tests.support import Admin, Role

poll_interval_s = 0.005
settle_wait_s_max = 300.0


def _request(method: str, path: str, host: str, port: int, key: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def _moment(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def run(base_url: str, key: str, jobs: int, concurrency: int, sample_every: int) -> dict[str, Any]:
    host, port_text = base_url.removeprefix("http://").split(":")
    port = int(port_text)
    body = json.dumps(
        {"model": "sim-chat-small", "messages": [{"role": "user", "content": "later, please"}], "async": True}
    ).encode()
    submit = _request("POST", "/v1/chat/completions", host, port, key, body)
    job_ids: list[str] = []
    errors: dict[int, int] = {}
    visible_ms: list[float] = []
    issued = 0
    sampled: asyncio.Queue[str] = asyncio.Queue(maxsize=jobs)

    async def submitter() -> None:
        nonlocal issued
        connection = await Connection.open(host, port)
        try:
            while issued < jobs:
                issued += 1
                status, _, reply = await connection.request(submit)
                if status != 202:
                    errors[status] = errors.get(status, 0) + 1
                    continue
                job_id = json.loads(reply)["job_id"]
                job_ids.append(job_id)
                if len(job_ids) % sample_every == 0:
                    sampled.put_nowait(job_id)
        finally:
            connection.close()

    async def sampler() -> None:
        connection = await Connection.open(host, port)
        try:
            while True:
                job_id = await sampled.get()
                get = _request("GET", f"/v1/jobs/{job_id}", host, port, key)
                deadline = time.monotonic() + settle_wait_s_max
                while time.monotonic() < deadline:
                    _, _, reply = await connection.request(get)
                    job = json.loads(reply)
                    if job["status"] == "completed":
                        visible_ms.append((time.time() - _moment(job["run_finished_at"])) * 1000)
                        break
                    if job["status"] in ("failed", "dead_letter", "cancelled"):
                        break  # counted by the final pass
                    await asyncio.sleep(poll_interval_s)
                sampled.task_done()
        finally:
            connection.close()

    started_wall = time.time()
    sampler_task = asyncio.create_task(sampler())
    await asyncio.gather(*(submitter() for _ in range(concurrency)))
    submitted_s = time.time() - started_wall
    await sampled.join()
    sampler_task.cancel()
    # Every job's settle time, from the jobs API (one pass once they are all done).
    connection = await Connection.open(host, port)
    settled: list[float] = []
    deadline = time.monotonic() + settle_wait_s_max
    try:
        for job_id in job_ids:
            while time.monotonic() < deadline:
                _, _, reply = await connection.request(_request("GET", f"/v1/jobs/{job_id}", host, port, key))
                job = json.loads(reply)
                if job["status"] in ("completed", "failed", "dead_letter", "cancelled"):
                    settled.append(_moment(job["completed_at"]))
                    break
                await asyncio.sleep(0.05)
    finally:
        connection.close()
    span_s = max(settled) - started_wall if settled else float("nan")
    return {
        "jobs_submitted": len(job_ids),
        "jobs_settled": len(settled),
        "errors": errors,
        "submit_s": round(submitted_s, 3),
        "jobs_per_s": round(len(settled) / span_s, 1),
        "completion_to_visible_ms": {
            "samples": len(visible_ms),
            "p50": round(percentile(visible_ms, 50), 2),
            "p99": round(percentile(visible_ms, 99), 2),
            "max": round(max(visible_ms), 2) if visible_ms else None,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("embedded", "kafka"), default="embedded")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--sample-every", type=int, default=20)
    parser.add_argument("--bootstrap", default=os.environ.get("TOLLGATE_KAFKA_BOOTSTRAP", ""))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix=f"tollgate-bench-jobs-{args.mode}-"))
    roles: list[Role] = []
    with kafka_broker(args.mode, args.bootstrap, root) as bootstrap:
        try:
            base_url, roles = start_stack(args.mode, root, bootstrap)
            admin = Admin(base_url, admin_token)
            org = admin.organization("bench-jobs")
            lift_limits(admin, org)
            admin.grant(org, 1_000_000)
            key = admin.token(org)
            result = asyncio.run(run(base_url, key, args.jobs, args.concurrency, args.sample_every))
        finally:
            for role in roles:
                role.stop()
    report = {
        "benchmark": "async_jobs",
        "mode": args.mode,
        "concurrency": args.concurrency,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
        **result,
    }
    out = args.out or repo / "bench" / "results" / f"jobs-{args.mode}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
