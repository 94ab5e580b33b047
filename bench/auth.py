"""Authentication benchmark: what an API key and a service token (EdDSA JWT) cost per request.

Two parts:
- in process: microseconds per authentication (API key: sha256 and a lookup; JWT uncached: header
  parse, Ed25519 verify, claim checks; JWT cached: a lookup), per rate-limit admission, and per
  append of its event to the embedded log, on the real GatewayCore;
- over HTTP against `tollgate dev`: requests/s and client latency p50/p99 of one admin:read route
  (GET /v1/organizations/{id}/limits) with the platform admin token (the baseline: a constant-time
  compare, no rate limit), an API key and a JWT; "added" is the difference to the baseline (latency
  p50, and server time per request = 1 / throughput at saturation). The public /healthz for scale.

    .venv/bin/python bench/auth.py --requests 3000 --concurrency 16

Traffic goes to 127.0.0.1 only and stops after --requests per credential.
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
from pathlib import Path
from typing import Any

repo = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(repo))

from bench.e2e import Connection, percentile
from gateway.auth import _verify_service_token, verify_service_token
from gateway.ratelimit import record
from tests.harness import Gateway, Signer, audience, issuer, write_jwks
from tests.support import Admin, Role, free_port, wait_until_serving

admin_token = "tga_bench_auth"
lots = {"requests": 100_000_000, "jobs": 100_000_000, "tokens": 100_000_000}


def in_process(iterations: int) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="tollgate-bench-auth-inproc-"))
    gateway = Gateway(root)
    try:
        org = gateway.organization("enterprise", limits=lots)
        secret, _ = gateway.key(org, ["user:read"])
        token = gateway.signer.token(org, "user:read", exp=int(time.time()) + 3600)
        core = gateway.core
        principal = core.authenticate(secret)
        assert principal is not None
        core.jwks.fetch_if_needed(gateway.signer.kid)
        verify_service_token(core, token)

        def per_call_us(fn: Any) -> float:
            started = time.perf_counter()
            for _ in range(iterations):
                fn()
            return round((time.perf_counter() - started) / iterations * 1e6, 2)

        admission = core.limiter.admit(principal, {"requests": 1}, "r", "/v1/models")
        return {
            "api_key_us": per_call_us(lambda: core.authenticate(secret)),
            "jwt_cached_us": per_call_us(lambda: verify_service_token(core, token)),
            "jwt_uncached_us": per_call_us(lambda: _verify_service_token(core, core.jwks, token)),
            "ratelimit_admit_us": per_call_us(
                lambda: core.limiter.admit(principal, {"requests": 1}, "r", "/v1/models")
            ),
            # What every limited request also pays in embedded mode: one synchronous SQLite append.
            "embedded_log_append_us": per_call_us(lambda: core.send([record(admission)])),
        }
    finally:
        gateway.close()


def get_request(host: str, port: int, path: str, credential: str | None) -> bytes:
    auth = f"Authorization: Bearer {credential}\r\n" if credential else ""
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}\r\n".encode()


async def load(base_url: str, raw: bytes, requests_max: int, concurrency: int) -> dict[str, Any]:
    host, port = base_url.removeprefix("http://").split(":")
    latencies_ms: list[float] = []
    errors: dict[int, int] = {}
    issued = 0

    async def one_client() -> None:
        nonlocal issued
        connection = await Connection.open(host, int(port))
        try:
            while issued < requests_max:
                issued += 1
                started = time.perf_counter()
                status, _, _ = await connection.request(raw)
                if status == 200:
                    latencies_ms.append((time.perf_counter() - started) * 1000)
                else:
                    errors[status] = errors.get(status, 0) + 1
        finally:
            connection.close()

    warmup = await Connection.open(host, int(port))
    for _ in range(50):
        await warmup.request(raw)
    warmup.close()
    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    wall_s = time.perf_counter() - started
    return {
        "requests_ok": len(latencies_ms),
        "errors": errors,
        "requests_per_s": round(len(latencies_ms) / wall_s, 1),
        "latency_ms": {"p50": round(percentile(latencies_ms, 50), 3), "p99": round(percentile(latencies_ms, 99), 3)},
    }


def over_http(requests_max: int, concurrency: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="tollgate-bench-auth-"))
    signer = Signer("bench-key")
    write_jwks(root / "jwks.json", [signer])
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        "TOLLGATE_ADMIN_TOKEN": admin_token,
        "TOLLGATE_KAFKA_BOOTSTRAP": "",
        "TOLLGATE_DEV_CLICKHOUSE_HTTP_PORT": "0",  # dev's ClickHouse server on any free port
        "TOLLGATE_JWKS_FILE": str(root / "jwks.json"),
        "TOLLGATE_JWT_ISSUER": issuer,
        "TOLLGATE_JWT_AUDIENCE": audience,
        "TOLLGATE_IP_REQUESTS_PER_WINDOW_MAX": "100000000",
    }
    role = Role("dev", ["dev", "--port", str(port), "--data-dir", str(root / "dev")], env, root)
    try:
        wait_until_serving(base_url, role)
        admin = Admin(base_url, admin_token)
        org = admin.organization("bench-auth", "enterprise")
        assert admin.client.post(f"/v1/organizations/{org}/limits", json=lots).status_code == 200
        key = admin.token(org, ["admin:read"])
        token = signer.token(org, "admin:read", exp=int(time.time()) + 3600)
        host, path = "127.0.0.1", f"/v1/organizations/{org}/limits"
        cases = {
            "public_healthz": get_request(host, port, "/healthz", None),
            # One handler, three credentials: the platform admin token is a constant-time compare
            # and no rate limit, so the differences are what keys and JWTs cost (auth + limits).
            "admin_token_limits": get_request(host, port, path, admin_token),
            "api_key_limits": get_request(host, port, path, key),
            "jwt_limits": get_request(host, port, path, token),
        }
        return {name: asyncio.run(load(base_url, raw, requests_max, concurrency)) for name, raw in cases.items()}
    finally:
        role.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000, help="per credential")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=5000, help="in-process calls per measurement")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    inproc = in_process(args.iterations)
    http = over_http(args.requests, args.concurrency)
    baseline = http["admin_token_limits"]["latency_ms"]["p50"]
    base_rps = http["admin_token_limits"]["requests_per_s"]
    report = {
        "benchmark": "auth",
        "concurrency": args.concurrency,
        "in_process": inproc,
        "http": http,
        "added_p50_ms_vs_admin_token": {
            "api_key": round(http["api_key_limits"]["latency_ms"]["p50"] - baseline, 3),
            "jwt": round(http["jwt_limits"]["latency_ms"]["p50"] - baseline, 3),
        },
        # Server time per request at saturation (1 / throughput), over the admin-token baseline.
        "added_cpu_ms_per_request": {
            "api_key": round(1000 / http["api_key_limits"]["requests_per_s"] - 1000 / base_rps, 3),
            "jwt": round(1000 / http["jwt_limits"]["requests_per_s"] - 1000 / base_rps, 3),
        },
        "load_average": os.getloadavg(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    out = args.out or repo / "bench" / "results" / "auth.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
