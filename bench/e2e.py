"""End-to-end benchmark: sync chat completions on the simulated backend (zero latency) at a fixed
concurrency, in embedded mode (`tollgate dev`) or Kafka mode (broker + separate role processes).

Prints requests/s, client-observed latency and the gateway's added latency (server-side time minus
the backend's job duration, from the x-gateway-added-ms header) at p50/p99, and saves JSON.

    .venv/bin/python bench/e2e.py --mode embedded --requests 3000 --concurrency 32
    .venv/bin/python bench/e2e.py --mode kafka --requests 3000 --concurrency 32

Traffic goes to 127.0.0.1 only and stops after --requests or --duration-s, whichever comes first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

repo = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(repo))

from tests.support import Admin, Role, free_port, free_port_pair, wait_until_serving

admin_token = "tga_bench"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@contextlib.contextmanager
def kafka_broker(mode: str, bootstrap: str, root: Path) -> Iterator[str]:
    """The given broker, or (in kafka mode without one) a fresh one from compose/kafka.sh, stopped after."""
    if mode != "kafka" or bootstrap:
        yield bootstrap
        return
    port = free_port_pair()
    env = {**os.environ, "TOLLGATE_KAFKA_PORT": str(port), "TOLLGATE_KAFKA_DATA": str(root / "kafka")}
    subprocess.run(["bash", str(repo / "compose" / "kafka.sh"), "start"], env=env, check=True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run(["bash", str(repo / "compose" / "kafka.sh"), "stop"], env=env, check=False)


def lift_limits(admin: Admin, org: str) -> None:
    """A benchmark measures throughput, not the plan's limits: lift them for its organization."""
    lifted = {"requests": 100_000_000, "jobs": 100_000_000, "tokens": 100_000_000}
    assert admin.client.post(f"/v1/organizations/{org}/limits", json=lifted).status_code == 200


def start_stack(mode: str, root: Path, bootstrap: str) -> tuple[str, list[Role]]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {"TOLLGATE_ADMIN_TOKEN": admin_token, "TOLLGATE_SIM_LATENCY_MS": "0"}
    if mode == "embedded":
        env["TOLLGATE_KAFKA_BOOTSTRAP"] = ""
        env["TOLLGATE_DEV_CLICKHOUSE_HTTP_PORT"] = "0"  # dev's ClickHouse server on any free port
        roles = [Role("dev", ["dev", "--port", str(port), "--data-dir", str(root / "dev")], env, root)]
    else:
        env["TOLLGATE_KAFKA_BOOTSTRAP"] = bootstrap
        roles = [
            Role("ledger", ["ledger"], env, root),
            Role("worker", ["worker"], env, root),
            Role("gateway", ["gateway", "--port", str(port), "--data-dir", str(root / "gateway")], env, root),
        ]
    wait_until_serving(base_url, roles[-1])
    return base_url, roles


class Connection:
    """A minimal HTTP/1.1 keep-alive client: the load generator shares two cores with everything it
    measures, so it must cost far less per request than httpx does."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def request(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body

    def close(self) -> None:
        self.writer.close()


def chat_request(host: str, port: int, key: str) -> bytes:
    body = json.dumps(
        {
            "model": "sim-chat-small",
            "messages": [{"role": "user", "content": "benchmark me, exactly once"}],
            "max_tokens": 32,
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def load(base_url: str, key: str, requests_max: int, duration_s: float, concurrency: int) -> dict[str, Any]:
    host, port = base_url.removeprefix("http://").split(":")
    raw = chat_request(host, int(port), key)
    latencies_ms: list[float] = []
    added_ms: list[float] = []
    errors: dict[int, int] = {}
    issued = 0
    deadline = time.monotonic() + duration_s

    async def one_client() -> None:
        nonlocal issued
        connection = await Connection.open(host, int(port))
        try:
            while issued < requests_max and time.monotonic() < deadline:
                issued += 1
                started = time.perf_counter()
                status, headers, _ = await connection.request(raw)
                elapsed = (time.perf_counter() - started) * 1000
                if status == 200:
                    latencies_ms.append(elapsed)
                    added_ms.append(float(headers["x-gateway-added-ms"]))
                else:
                    errors[status] = errors.get(status, 0) + 1
        finally:
            connection.close()

    warmup = await Connection.open(host, int(port))
    for _ in range(20):
        await warmup.request(raw)
    warmup.close()
    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    wall_s = time.perf_counter() - started
    return {
        "requests_ok": len(latencies_ms),
        "errors": errors,
        "wall_s": round(wall_s, 3),
        "requests_per_s": round(len(latencies_ms) / wall_s, 1),
        "client_latency_ms": {
            "p50": round(percentile(latencies_ms, 50), 2),
            "p99": round(percentile(latencies_ms, 99), 2),
            "mean": round(statistics.fmean(latencies_ms), 2) if latencies_ms else None,
        },
        "gateway_added_ms": {"p50": round(percentile(added_ms, 50), 2), "p99": round(percentile(added_ms, 99), 2)},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("embedded", "kafka"), default="embedded")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--duration-s", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("TOLLGATE_KAFKA_BOOTSTRAP", ""),
        help="an existing broker; default: start one with compose/kafka.sh",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix=f"tollgate-bench-{args.mode}-"))
    roles: list[Role] = []
    with kafka_broker(args.mode, args.bootstrap, root) as bootstrap:
        try:
            base_url, roles = start_stack(args.mode, root, bootstrap)
            admin = Admin(base_url, admin_token)
            org = admin.organization("bench")
            lift_limits(admin, org)
            admin.grant(org, 1_000_000)
            key = admin.token(org)
            result = asyncio.run(load(base_url, key, args.requests, args.duration_s, args.concurrency))
        finally:
            for role in roles:
                role.stop()
    report = {
        "benchmark": "e2e_sync_chat",
        "mode": args.mode,
        "concurrency": args.concurrency,
        "backend_latency_ms": 0,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        **result,
    }
    out = args.out or repo / "bench" / "results" / f"e2e-{args.mode}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
