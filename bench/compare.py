"""Side by side, in one run: the latency and CPU a billing gateway adds over calling the upstream directly.

    .venv/bin/python bench/compare.py                                  # every target, c = 1 8 32 64, 10 s a point
    .venv/bin/python bench/compare.py --targets direct,embedded --concurrency 8 --duration 3 --runs 1
    .venv/bin/python bench/compare.py --reply-ms 320 --concurrency 64  # slow upstream: is throughput kept?

Targets, all serving model ``sim-chat-small`` from one fake upstream (``bench/fake_upstream.py``, its own
process):

- ``direct``: the fake upstream itself;
- ``embedded``: ``tollgate dev`` (every role in one process, embedded log and ClickHouse);
- ``kafka``: a broker from ``compose/kafka.sh``, a ClickHouse server from ``compose/clickhouse.sh`` and
  ``tollgate ledger``, ``worker``, ``projector`` and ``gateway``, each its own process;
- ``litellm``: LiteLLM's proxy (one worker, no database), installed by this script into its own
  virtualenv (``~/.cache/tollgate/litellm-venv``).

Tollgate is driven through its ``tollgate`` command and HTTP only (never imported). For every target and
concurrency the load tool (h2load by default, or wrk) runs ``--runs`` times, targets alternating
(A B C D A B C D). Reported: requests/s, p50/p90/p99 latency, latency added over ``direct`` at the same
concurrency, errors and non-2xx answers (must be 0), and CPU seconds per 1,000 requests summed over every
process of the target (``/proc/<pid>/stat`` utime+stime+cutime+cstime of each process and its
descendants, before and after the run), and apart per process (each Tollgate role, the broker, the
ClickHouse server, the fake upstream and the load tool: everything that shares the machine's cores).
For the Kafka target, also where its requests' time went: each step's p50/p90/p99 after the request's
admission, from the records' timestamps on the topics (``bench/hops.py``, run after each point).
``--tollgate-env NAME=VALUE`` sets a setting in every Tollgate process (to compare settings);
``bench/ab.sh`` runs this script against a baseline commit and the working tree in turn.

Then a streaming measurement: sequential streamed requests on a raw socket, with the upstream at
``--stream-token-ms`` per token: time to the first byte of the response and to the first SSE ``data:``
event carrying content text.

Results: a table on stdout, ``bench/results/compare-<timestamp>.json`` and ``compare-latest.json``, and a
chart ``bench/results/compare-latest.png`` (matplotlib: this interpreter's, or installed into
``~/.cache/tollgate/bench-venv``). Git ignores all three; the README's chart is a dated copy of one
(``compare-20261203.png``).

Why h2load rather than wrk by default: wrk 4 "corrects" its latency histogram for coordinated omission
(every sample longer than the mean interval adds synthetic samples), which on a busy two-core machine turns a
single 10 ms scheduling stall at concurrency 1 into a p90 of milliseconds. h2load (nghttp2) logs every
request's own latency, so the percentiles here are of real requests. ``--load-tool wrk`` is available;
its percentiles are wrk's corrected ones.

Traffic goes to 127.0.0.1 only and is bounded by ``--duration`` per point and ``--ttfb-requests``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import platform
import re
import resource
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

repo = Path(__file__).resolve().parent.parent
results_dir = repo / "bench" / "results"
cache_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tollgate"
litellm_venv = cache_dir / "litellm-venv"
plot_venv = cache_dir / "bench-venv"
model = "sim-chat-small"
all_targets = ("direct", "embedded", "kafka", "litellm")
clock_ticks = os.sysconf("SC_CLK_TCK")
lifted_limit = 100_000_000  # the API's largest per-minute override
credits_granted = 1_000_000
# A request's records on the topics bench/hops.py reads (admission, hold, job, lease, progress,
# completion, capture, the ledger's decisions...), with room: its read stops there.
hop_records_per_request_max = 20
load_body = {
    "model": model,
    "messages": [{"role": "user", "content": "benchmark me, exactly once"}],
    "max_tokens": 16,
}


class BenchError(RuntimeError):
    """A failure with a message meant for the person running the benchmark."""


def log(message: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- ports, HTTP


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_pair() -> int:
    """A free port whose successor is free too (Kafka's controller listens on PORT+1)."""
    for _ in range(200):
        port = free_port()
        if port >= 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise BenchError("found no two consecutive free ports on 127.0.0.1")


def http_json(
    method: str, base_url: str, path: str, body: Any = None, token: str = "", timeout_s: float = 15
) -> tuple[int, Any, dict[str, str]]:
    """One request to 127.0.0.1 (no proxies): (status, JSON or text, lower-cased headers)."""
    host, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = conn.getresponse()
        raw = response.read()
        text = raw.decode("utf-8", "replace")
        try:
            data: Any = json.loads(text) if text else None
        except ValueError:
            data = text
        return response.status, data, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def wait_until(what: str, check: Callable[[], bool], timeout_s: float, alive: Callable[[], None] | None = None) -> None:
    """Polls ``check`` until true; ``alive`` raises when a process died; a clear error on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        if alive is not None:
            alive()
        with contextlib.suppress(OSError, http.client.HTTPException):
            if check():
                return
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.25)


def serving(base_url: str, path: str) -> Callable[[], bool]:
    return lambda: http_json("GET", base_url, path, timeout_s=2)[0] == 200


# ------------------------------------------------------------------------------------------------ processes


class Proc:
    """A process this script started, in its own session (a terminal's Ctrl-C reaches only this script,
    which then stops it), with its output in a log file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path, cwd: Path | None = None) -> None:
        self.name = name
        self.cmd = cmd
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        try:
            self.popen = subprocess.Popen(
                cmd,
                env=env,
                cwd=cwd or log_dir,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as error:
            self._log.close()
            raise BenchError(f"cannot start {name} ({shlex.join(cmd)}): {error}") from error

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise BenchError(f"{self.name} exited with code {code}; last lines of {self.log_path}:\n{self.tail()}")

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM to its process group, SIGKILL after ``timeout_s``."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log(f"{self.name} still running {timeout_s:.0f} s after SIGTERM; SIGKILL")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(10)
        # Whatever it left in its group (a worker that outlived its parent).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self._log.close()


def process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds: utime + stime + cutime + cstime)."""
    table: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read().decode("latin-1")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        # fields[0] is state (field 3 of stat); ppid is field 4, utime..cstime are fields 14..17.
        ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        table[int(entry.name)] = (int(fields[1]), ticks / clock_ticks)
    return table


def descendants(roots: list[int], table: dict[int, tuple[int, float]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    seen: set[int] = set()
    todo = [pid for pid in roots if pid in table]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children.get(pid, ()))
    return seen


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return (total - idle) / clock_ticks, total / clock_ticks


@dataclass
class CpuSnapshot:
    per_pid: dict[str, dict[int, float]]
    machine: tuple[float, float]


def cpu_snapshot(groups: dict[str, list[int]]) -> CpuSnapshot:
    table = process_table()
    per_pid = {name: {pid: table[pid][1] for pid in descendants(roots, table)} for name, roots in groups.items()}
    return CpuSnapshot(per_pid, machine_cpu())


def cpu_delta(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU seconds each group used between two snapshots (a process that ended in between counts 0;
    its waited-for CPU shows in its parent's cutime)."""
    used = {
        name: sum(after.per_pid[name].get(pid, value) - value for pid, value in pids.items())
        + sum(value for pid, value in after.per_pid[name].items() if pid not in pids)
        for name, pids in before.per_pid.items()
    }
    used["machine_busy"] = after.machine[0] - before.machine[0]
    used["machine_total"] = after.machine[1] - before.machine[1]
    return used


# -------------------------------------------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    label: str
    base_url: str = ""
    key: str = ""
    procs: list[Proc] = field(default_factory=list)
    extra_pids: list[int] = field(default_factory=list)  # processes we did not spawn directly (the broker)
    extra_names: list[str] = field(default_factory=list)  # one per extra pid, for the per-process breakdown
    notes: dict[str, Any] = field(default_factory=dict)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs] + self.extra_pids

    def parts(self) -> dict[str, list[int]]:
        """Each process of the target (with its descendants) by name: where its CPU per request goes."""
        names = self.extra_names + [f"pid-{pid}" for pid in self.extra_pids[len(self.extra_names) :]]
        return {p.name: [p.pid] for p in self.procs} | dict(zip(names, ([pid] for pid in self.extra_pids), strict=True))

    def check_alive(self) -> None:
        for proc in self.procs:
            proc.check_alive()
        for pid in self.extra_pids:
            if not Path(f"/proc/{pid}").exists():
                raise BenchError(f"{self.name}: process {pid} (the Kafka broker) is gone")


@dataclass
class Context:
    args: argparse.Namespace
    root: Path
    upstream: Proc | None = None
    upstream_url: str = ""
    cleanups: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    admin_token: str = field(default_factory=lambda: "tga_compare_" + secrets.token_hex(8))

    def on_exit(self, what: str, action: Callable[[], None]) -> None:
        self.cleanups.append((what, action))

    def start(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> Proc:
        proc = Proc(name, cmd, env, self.root / "logs", cwd)
        self.on_exit(f"stop {name}", proc.stop)
        return proc

    def cleanup(self) -> None:
        while self.cleanups:
            what, action = self.cleanups.pop()
            try:
                action()
            except Exception as error:  # keep stopping the others
                log(f"cleanup step '{what}' failed: {error}")


def base_env() -> dict[str, str]:
    """The environment for child processes: no proxies for 127.0.0.1."""
    env = dict(os.environ)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def tollgate_env(ctx: Context, data_dir: Path, bootstrap: str) -> dict[str, str]:
    """Inherited TOLLGATE_* settings are dropped (a stray TOLLGATE_CLICKHOUSE_URL would change what is measured)."""
    env = {k: v for k, v in base_env().items() if not k.startswith("TOLLGATE_")}
    env.update(
        {
            "TOLLGATE_UPSTREAM_URL": ctx.upstream_url,
            "TOLLGATE_ADMIN_TOKEN": ctx.admin_token,
            "TOLLGATE_DATA_DIR": str(data_dir),
            "TOLLGATE_KAFKA_BOOTSTRAP": bootstrap,
            "TOLLGATE_LOG_LEVEL": "WARNING",
            # The per-IP flood net (default 5,000 requests per 10 minutes) would 429 a load test from one address.
            "TOLLGATE_IP_REQUESTS_PER_WINDOW_MAX": str(10**12),
        }
    )
    env.update(ctx.args.tollgate_env)
    return env


def tollgate_cmd(ctx: Context) -> list[str]:
    if ctx.args.tollgate:
        return shlex.split(ctx.args.tollgate)
    local = repo / ".venv" / "bin" / "tollgate"
    if local.exists():
        return [str(local)]
    found = shutil.which("tollgate")
    if not found:
        raise BenchError("no `tollgate` command: install the project (.venv) or pass --tollgate")
    return [found]


def start_upstream(ctx: Context) -> None:
    ready = ctx.root / "upstream.port"
    cmd = [sys.executable, str(repo / "bench" / "fake_upstream.py"), "--port", "0", "--ready-file", str(ready)]
    cmd += ["--reply-ms", str(ctx.args.reply_ms), "--tokens", str(ctx.args.tokens)]
    ctx.upstream = ctx.start("upstream", cmd, base_env())
    upstream = ctx.upstream
    wait_until(
        "the fake upstream to listen",
        lambda: ready.exists() and ready.read_text().strip() != "",
        20,
        upstream.check_alive,
    )
    ctx.upstream_url = f"http://127.0.0.1:{int(ready.read_text())}"
    wait_until("the fake upstream to answer", serving(ctx.upstream_url, "/healthz"), 10, upstream.check_alive)
    log(f"fake upstream on {ctx.upstream_url} (pid {upstream.pid}, reply_ms={ctx.args.reply_ms})")


def upstream_control(ctx: Context, **settings: float) -> None:
    status, data, _ = http_json("POST", ctx.upstream_url, "/_control", settings)
    if status != 200:
        raise BenchError(f"fake upstream refused /_control {settings}: {status} {data}")


def org_setup(ctx: Context, target: Target, org_id: str) -> None:
    """Lifts the organization's limits and grants credits, through the admin API."""
    limits = {"requests": lifted_limit, "jobs": lifted_limit, "tokens": lifted_limit}
    for path, body, expected in (
        (f"/v1/organizations/{org_id}/limits", limits, 200),
        (f"/v1/organizations/{org_id}/credits", {"amount": credits_granted, "kind": "paid"}, 201),
    ):
        last: tuple[int, Any] = (0, None)

        def done(path: str = path, body: Any = body, expected: int = expected) -> bool:
            nonlocal last
            status, data, _ = http_json("POST", target.base_url, path, body, ctx.admin_token)
            last = (status, data)
            if status in (expected, 200, 201):
                return True
            if status in (404, 409, 503, 504):  # not folded yet
                return False
            raise BenchError(f"{target.name}: POST {path} answered {status}: {data}")

        try:
            wait_until(f"{target.name}: POST {path}", done, 60, target.check_alive)
        except BenchError as error:
            raise BenchError(f"{error}; last answer {last}") from error


def smoke(ctx: Context, target: Target, timeout_s: float = 90) -> None:
    """One chat completion must be a 200 with usage (and lifted rate limits) before any load."""
    last: tuple[int, Any, dict[str, str]] = (0, None, {})

    def ok() -> bool:
        nonlocal last
        last = http_json("POST", target.base_url, "/v1/chat/completions", load_body, target.key, timeout_s=30)
        status, data, headers = last
        if status != 200 or not isinstance(data, dict) or "usage" not in data:
            return False
        limit = headers.get("x-ratelimit-limit-requests")
        return limit is None or int(limit) >= 1_000_000

    try:
        wait_until(
            f"{target.name}: a 200 chat completion with usage and lifted limits", ok, timeout_s, target.check_alive
        )
    except BenchError as error:
        status, data, headers = last
        limit = headers.get("x-ratelimit-limit-requests")
        raise BenchError(f"{error}; last answer {status} (rate limit {limit}): {str(data)[:600]}") from error


def start_direct(ctx: Context) -> Target:
    assert ctx.upstream is not None
    target = Target("direct", "upstream direct", base_url=ctx.upstream_url, key="none")
    target.procs.append(ctx.upstream)
    return target


def start_embedded(ctx: Context) -> Target:
    port = free_port()
    data_dir = ctx.root / "embedded"
    data_dir.mkdir()
    cmd = [*tollgate_cmd(ctx), "dev", "--port", str(port), "--data-dir", str(data_dir)]
    # One process, ClickHouse inside it, as this target has always been measured (its CPU per request
    # counts every process; dev's default ClickHouse server would be a child outside the count).
    env = {**tollgate_env(ctx, data_dir, ""), "TOLLGATE_DEV_CLICKHOUSE": "embedded"}
    proc = ctx.start("tollgate-dev", cmd, env, cwd=data_dir)
    target = Target("embedded", "Tollgate embedded", base_url=f"http://127.0.0.1:{port}", procs=[proc])
    demo_file = data_dir / "demo.json"
    wait_until(
        "`tollgate dev` to write demo.json and serve /healthz",
        lambda: demo_file.exists() and serving(target.base_url, "/healthz")(),
        120,
        proc.check_alive,
    )
    demo = json.loads(demo_file.read_text())
    target.key = demo["api_key"]
    target.notes["org_id"] = demo["org_id"]
    org_setup(ctx, target, demo["org_id"])
    smoke(ctx, target)
    log(f"Tollgate embedded on {target.base_url} (pid {proc.pid})")
    return target


def start_clickhouse(ctx: Context, tollgate: list[str]) -> tuple[str, int]:
    """A ClickHouse server (compose/clickhouse.sh, free ports) with Tollgate's schema, as production has:
    the projector writes it, the gateway reads it. Its URL and pid (its CPU counts, as the broker's does)."""
    data = ctx.root / "clickhouse"
    env = {k: v for k, v in base_env().items() if not k.startswith("TOLLGATE_CLICKHOUSE")}
    env.update({"TOLLGATE_CLICKHOUSE_DATA": str(data), "TOLLGATE_CLICKHOUSE_HTTP_PORT": "0"})
    env.update({"TOLLGATE_CLICKHOUSE_TCP_PORT": "0", "TOLLGATE_PYTHON": sys.executable})
    script = repo / "compose" / "clickhouse.sh"

    def clickhouse_sh(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(script), command], env=env, capture_output=True, text=True, timeout=120)

    def stop_server() -> None:
        stopped = clickhouse_sh("stop")
        if stopped.returncode != 0:
            log(f"clickhouse.sh stop exited {stopped.returncode}: {stopped.stderr[-800:]}")

    ctx.on_exit("stop the ClickHouse server", stop_server)
    started = clickhouse_sh("start")
    if started.returncode != 0:
        raise BenchError(f"compose/clickhouse.sh start failed ({started.returncode}):\n{started.stderr[-3000:]}")
    url = f"{started.stdout.strip().splitlines()[-1]}/tollgate_bench"
    migrated = subprocess.run(
        [*tollgate, "migrate"], env={**env, "TOLLGATE_CLICKHOUSE_URL": url}, capture_output=True, text=True, timeout=120
    )
    if migrated.returncode != 0:
        raise BenchError(f"tollgate migrate failed:\n{migrated.stderr[-3000:]}")
    log(f"ClickHouse server on {url} (compose/clickhouse.sh)")
    return url, int((data / "clickhouse.pid").read_text().strip())


def start_kafka(ctx: Context) -> Target:
    port = free_port_pair()
    kafka_data = ctx.root / "kafka"
    script = repo / "compose" / "kafka.sh"
    env = {k: v for k, v in base_env().items() if k not in ("TOLLGATE_KAFKA_PORT", "TOLLGATE_KAFKA_DATA")}
    env.update({"TOLLGATE_KAFKA_PORT": str(port), "TOLLGATE_KAFKA_DATA": str(kafka_data)})

    def kafka_sh(command: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                ["bash", str(script), command], env=env, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise BenchError(f"`compose/kafka.sh {command}` did not finish within {timeout_s:.0f} s") from error

    def stop_broker() -> None:
        result = kafka_sh("stop", 90)
        if result.returncode != 0:
            log(f"kafka.sh stop exited {result.returncode}: {result.stderr[-800:]}")
        # A broker started just before an interrupt, before kafka.sh wrote its pid file: ours by its data dir.
        marker = f"-Dkafka.logs.dir={kafka_data}".encode()
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if marker + b"\0" in Path(entry.path, "cmdline").read_bytes():
                        log(f"killing leftover broker pid {entry.name}")
                        os.kill(int(entry.name), signal.SIGKILL)

    log(f"starting a Kafka broker on 127.0.0.1:{port} (compose/kafka.sh start; first use fetches jars with Maven)")
    ctx.on_exit("stop the Kafka broker", stop_broker)
    result = kafka_sh("start", 600)
    if result.returncode != 0:
        raise BenchError(f"compose/kafka.sh start failed ({result.returncode}):\n{result.stderr[-3000:]}")
    pid_text = (kafka_data / "kafka.pid").read_text().strip() if (kafka_data / "kafka.pid").exists() else ""
    if not pid_text.isdigit():
        raise BenchError(f"compose/kafka.sh started no broker of its own (no pid in {kafka_data / 'kafka.pid'})")
    bootstrap = f"127.0.0.1:{port}"
    tollgate = tollgate_cmd(ctx)
    clickhouse_url, clickhouse_pid = start_clickhouse(ctx, tollgate)
    http_port = free_port()
    target = Target(
        "kafka",
        "Tollgate on Kafka",
        base_url=f"http://127.0.0.1:{http_port}",
        extra_pids=[int(pid_text), clickhouse_pid],
        extra_names=["kafka-broker", "clickhouse-server"],
    )
    target.notes["broker_pid"] = int(pid_text)
    target.notes["clickhouse_pid"] = clickhouse_pid
    target.notes["bootstrap"] = bootstrap
    gateway_help = subprocess.run(
        [*tollgate, "gateway", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    for role in ("ledger", "worker", "projector", "gateway"):
        data_dir = ctx.root / f"kafka-{role}"
        data_dir.mkdir()
        cmd = [*tollgate, role, "--data-dir", str(data_dir)]
        if role == "gateway":
            cmd += ["--port", str(http_port)]
            # One projector (its own role), as in production; the gateway would otherwise run a second one.
            if "--projector" in gateway_help.stdout:
                cmd += ["--projector", "off"]
        env = {**tollgate_env(ctx, data_dir, bootstrap), "TOLLGATE_CLICKHOUSE_URL": clickhouse_url}
        target.procs.append(ctx.start(f"tollgate-{role}", cmd, env, cwd=data_dir))
    target.notes["roles"] = {p.name: shlex.join(p.cmd) for p in target.procs}
    wait_until("the Kafka gateway to serve /healthz", serving(target.base_url, "/healthz"), 180, target.check_alive)

    def create_org() -> bool:
        status, data, _ = http_json(
            "POST",
            target.base_url,
            "/v1/organizations",
            {"name": "compare-bench", "plan": "pro"},
            ctx.admin_token,
            timeout_s=30,
        )
        if status in (200, 201) and isinstance(data, dict):
            target.notes["org_id"] = data["id"]
            return True
        if status >= 500:
            return False
        raise BenchError(f"kafka: POST /v1/organizations answered {status}: {data}")

    wait_until("kafka: the organization to be created", create_org, 90, target.check_alive)
    org_id = str(target.notes["org_id"])
    org_setup(ctx, target, org_id)

    def create_key() -> bool:
        body = {"name": "compare-bench", "scopes": ["user:read", "user:write"]}
        status, data, _ = http_json(
            "POST", target.base_url, f"/v1/organizations/{org_id}/tokens", body, ctx.admin_token
        )
        if status in (200, 201) and isinstance(data, dict):
            target.key = str(data["secret"])
            return True
        if status in (404, 503, 504):
            return False
        raise BenchError(f"kafka: POST /v1/organizations/{org_id}/tokens answered {status}: {data}")

    wait_until("kafka: an API key", create_key, 60, target.check_alive)
    smoke(ctx, target, 120)
    log(f"Tollgate on Kafka on {target.base_url} (broker pid {pid_text}, roles {[p.pid for p in target.procs]})")
    return target


def litellm_version(venv: Path) -> str:
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def ensure_litellm(args: argparse.Namespace) -> str:
    """LiteLLM's proxy in its own virtualenv; returns its version."""
    version = litellm_version(litellm_venv) if (litellm_venv / "bin" / "litellm").exists() else ""
    if version:
        return version
    if args.skip_install:
        raise BenchError(
            f"LiteLLM is not installed in {litellm_venv} and --skip-install was given: run once without "
            "--skip-install, or leave litellm out of --targets"
        )
    log(f"installing {args.litellm_spec!r} into {litellm_venv} (one time; a few minutes)")
    run_install([sys.executable, "-m", "venv", "--clear", str(litellm_venv)], 300)
    run_install([str(litellm_venv / "bin" / "pip"), "install", "--quiet", args.litellm_spec], 1500)
    version = litellm_version(litellm_venv)
    if not version:
        raise BenchError(f"installed {args.litellm_spec!r} into {litellm_venv} but cannot import litellm there")
    return version


def run_install(cmd: list[str], timeout_s: float) -> None:
    log(f"$ {shlex.join(cmd)}")
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as error:
        raise BenchError(f"`{shlex.join(cmd)}` did not finish within {timeout_s:.0f} s") from error
    if result.returncode != 0:
        raise BenchError(
            f"`{shlex.join(cmd)}` failed ({result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}"
        )


def start_litellm(ctx: Context) -> Target:
    version = ensure_litellm(ctx.args)
    port = free_port()
    workdir = ctx.root / "litellm"
    workdir.mkdir()
    master_key = "sk-compare-" + secrets.token_hex(12)
    # A price for the model, so LiteLLM computes a cost per request as a billing gateway must (0 otherwise).
    config = f"""model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: {ctx.upstream_url}/v1
      api_key: fake-upstream-key
      input_cost_per_token: 0.0000002
      output_cost_per_token: 0.0000006
litellm_settings:
  drop_params: true
  telemetry: false
  set_verbose: false
  json_logs: false
  request_timeout: 600
general_settings:
  master_key: {master_key}
"""
    (workdir / "config.yaml").write_text(config)
    env = {k: v for k, v in base_env().items() if not k.startswith(("LITELLM_", "DATABASE_URL", "REDIS_"))}
    env.update(
        {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the cost map from GitHub
            "LITELLM_LOG": "ERROR",
            "LITELLM_MODE": "PRODUCTION",  # no .env loading
            "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
        }
    )
    cmd = [str(litellm_venv / "bin" / "litellm"), "--config", str(workdir / "config.yaml")]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    proc = ctx.start("litellm", cmd, env, cwd=workdir)
    target = Target("litellm", f"LiteLLM {version}", base_url=f"http://127.0.0.1:{port}", key=master_key, procs=[proc])
    target.notes.update({"version": version, "config": config.replace(master_key, "sk-...")})
    wait_until(
        "LiteLLM to serve /health/liveliness", serving(target.base_url, "/health/liveliness"), 180, proc.check_alive
    )
    smoke(ctx, target)
    log(f"LiteLLM {version} on {target.base_url} (pid {proc.pid})")
    return target


starters: dict[str, Callable[[Context], Target]] = {
    "direct": start_direct,
    "embedded": start_embedded,
    "kafka": start_kafka,
    "litellm": start_litellm,
}


# ----------------------------------------------------------------------------------------------- load tools


@dataclass
class LoadResult:
    requests_ok: int
    duration_s: float
    latencies_ms: list[float]  # every request's, when the tool logs them (h2load)
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: dict[str, int]
    client_cpu_s: float


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_h2load(url: str, key: str, concurrency: int, duration_s: float, work: Path) -> LoadResult:
    body_file = work / "body.json"
    body_file.write_text(json.dumps(load_body))
    log_file = work / f"h2load-{time.monotonic_ns()}.log"
    threads = str(min(2, concurrency))
    cmd = ["h2load", "--h1", "-c", str(concurrency), "-t", threads, "-D", f"{round(duration_s * 1000)}ms"]
    cmd += ["-d", str(body_file), "-H", "content-type: application/json", "-H", f"authorization: Bearer {key}"]
    cmd += [f"--log-file={log_file}", f"{url}/v1/chat/completions"]
    cpu_before = children_cpu_s()
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 120, check=False)
    except subprocess.TimeoutExpired as error:
        raise BenchError(f"h2load did not finish within {duration_s + 120:.0f} s") from error
    client_cpu = children_cpu_s() - cpu_before
    if result.returncode != 0:
        raise BenchError(f"h2load failed ({result.returncode}): {(result.stdout + result.stderr)[-2000:]}")
    out = result.stdout
    latencies: list[float] = []
    non_2xx: dict[str, int] = {}
    with log_file.open() as handle:
        for line in handle:
            parts = line.split()
            if len(parts) < 3:
                continue
            status = parts[1]
            if status.startswith("2"):
                latencies.append(int(parts[2]) / 1000)
            else:
                non_2xx[status] = non_2xx.get(status, 0) + 1
    log_file.unlink()
    duration = _h2load_field(out, r"finished in ([0-9.]+)(ms|s)")
    counts = _h2load_counts(out)
    errors = {f"status_{k}": v for k, v in non_2xx.items()}
    for name in ("failed", "errored", "timeout"):
        if counts.get(name):
            errors[name] = counts[name]
    # A request h2load counts as failed without a log line (connection reset...) shows here.
    missing = counts.get("done", len(latencies)) - len(latencies) - sum(non_2xx.values())
    if missing > 0 and not any(k in errors for k in ("failed", "errored")):
        errors["unlogged"] = missing
    latencies.sort()
    return LoadResult(
        requests_ok=len(latencies),
        duration_s=duration,
        latencies_ms=latencies,
        p50_ms=percentile(latencies, 50),
        p90_ms=percentile(latencies, 90),
        p99_ms=percentile(latencies, 99),
        mean_ms=sum(latencies) / len(latencies) if latencies else math.nan,
        max_ms=latencies[-1] if latencies else math.nan,
        errors=errors,
        client_cpu_s=client_cpu,
    )


def _h2load_field(out: str, pattern: str) -> float:
    match = re.search(pattern, out)
    if not match:
        raise BenchError(f"cannot read h2load's output:\n{out[-2000:]}")
    value = float(match.group(1))
    return value / 1000 if match.group(2) == "ms" else value


def _h2load_counts(out: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in out.splitlines():
        if line.startswith("requests:"):
            for number, name in re.findall(r"(\d+) (\w+)", line):
                counts[name] = int(number)
    return counts


wrk_lua = """
wrk.method = "POST"
wrk.body = [==[%(body)s]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,"status":%%d,"timeout":%%d,' ..
    '"p50":%%d,"p90":%%d,"p99":%%d,"max":%%d,"mean":%%.1f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def run_wrk(url: str, key: str, concurrency: int, duration_s: float, work: Path) -> LoadResult:
    script = work / "post.lua"
    script.write_text(wrk_lua % {"body": json.dumps(load_body), "key": key})
    cmd = ["wrk", "-t", str(min(2, concurrency)), "-c", str(concurrency), "-d", f"{max(1, round(duration_s))}s"]
    cmd += ["--timeout", "30s", "-s", str(script), f"{url}/v1/chat/completions"]
    cpu_before = children_cpu_s()
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 120, check=False)
    except subprocess.TimeoutExpired as error:
        raise BenchError(f"wrk did not finish within {duration_s + 120:.0f} s") from error
    client_cpu = children_cpu_s() - cpu_before
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if result.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({result.returncode}): {(result.stdout + result.stderr)[-2000:]}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    errors = {f"wrk_{k}": int(data[k]) for k in ("connect", "read", "write", "timeout") if data[k]}
    if data["status"]:
        errors["non_2xx"] = int(data["status"])
    ok = int(data["requests"]) - int(data["status"])
    return LoadResult(
        requests_ok=ok,
        duration_s=data["duration_us"] / 1e6,
        latencies_ms=[],
        p50_ms=data["p50"] / 1000,
        p90_ms=data["p90"] / 1000,
        p99_ms=data["p99"] / 1000,
        mean_ms=data["mean"] / 1000,
        max_ms=data["max"] / 1000,
        errors=errors,
        client_cpu_s=client_cpu,
    )


# --------------------------------------------------------------------------------------------- measurement


part_separator = "/"  # a group named "<target>/<process>" is one process of a target, not summed again


def cpu_groups(ctx: Context, targets: list[Target], parts_of: Target | None = None) -> dict[str, list[int]]:
    groups = {t.name: t.pids() for t in targets if t.name != "direct"}
    assert ctx.upstream is not None
    groups["upstream"] = [ctx.upstream.pid]
    if parts_of is not None and parts_of.name != "direct":
        groups |= {f"{parts_of.name}{part_separator}{name}": pids for name, pids in parts_of.parts().items()}
    return groups


def measure_point(ctx: Context, targets: list[Target], target: Target, concurrency: int, run: int) -> dict[str, Any]:
    target.check_alive()
    groups = cpu_groups(ctx, targets, parts_of=target)
    tool = run_h2load if ctx.args.load_tool == "h2load" else run_wrk
    before = cpu_snapshot(groups)
    started_ms = int(time.time() * 1000)
    load = tool(target.base_url, target.key, concurrency, ctx.args.duration, ctx.root)
    after = cpu_snapshot(groups)
    used = cpu_delta(before, after)
    prefix = f"{target.name}{part_separator}"
    by_process = {k.removeprefix(prefix): v for k, v in used.items() if k.startswith(prefix)}
    used = {k: v for k, v in used.items() if part_separator not in k}
    own = used["upstream"] if target.name == "direct" else used[target.name]
    others = sum(v for k, v in used.items() if k not in ("upstream", target.name, "machine_busy", "machine_total"))
    bench_total = sum(v for k, v in used.items() if k not in ("machine_busy", "machine_total")) + load.client_cpu_s
    wall = max(load.duration_s, 1e-9)

    def per_1k(cpu: float) -> float | None:
        return round(cpu / load.requests_ok * 1000, 4) if load.requests_ok else None

    n_errors = sum(load.errors.values())
    record = {
        "target": target.name,
        "concurrency": concurrency,
        "run": run,
        "requests_ok": load.requests_ok,
        "duration_s": round(load.duration_s, 3),
        "requests_per_s": round(load.requests_ok / wall, 1),
        "latency_ms": {
            "p50": round(load.p50_ms, 3),
            "p90": round(load.p90_ms, 3),
            "p99": round(load.p99_ms, 3),
            "mean": round(load.mean_ms, 3),
            "max": round(load.max_ms, 3),
        },
        "errors": load.errors,
        "errors_total": n_errors,
        "cpu_s": {
            "target": round(own, 3),
            "upstream": round(used["upstream"], 3),
            "load_tool": round(load.client_cpu_s, 3),
            "other_targets_idle": round(others, 3),
        },
        "cpu_s_per_1k_requests": {"target": per_1k(own), "upstream": per_1k(used["upstream"])},
        # Every process of the target apart, then the fake upstream and the load tool: what shares the cores.
        "cpu_s_by_process": {
            **{name: round(v, 3) for name, v in by_process.items()},
            "upstream": round(used["upstream"], 3),
            "load_tool": round(load.client_cpu_s, 3),
        },
        # Cores busy on the machine outside this benchmark's processes during the run (other jobs: noise).
        "outside_load_cores": round(max(0.0, used["machine_busy"] - bench_total) / wall, 2),
    }
    flag = f"  !! {n_errors} ERRORS {load.errors}" if n_errors else ""
    log(
        f"  {target.name:>8} c={concurrency:<3} run {run}: {record['requests_per_s']:>9} req/s  "
        f"p50 {load.p50_ms:8.3f} ms  p99 {load.p99_ms:8.3f} ms  cpu/1k {per_1k(own)}{flag}"
    )
    if "bootstrap" in target.notes:
        record["hops"] = measure_hops(ctx, target, started_ms, load.requests_ok, concurrency, run)
    return {"record": record, "latencies": load.latencies_ms}


def measure_hops(
    ctx: Context, target: Target, since_ms: int, requests: int, concurrency: int, run: int
) -> dict[str, Any]:
    """Where the point's requests spent their time on the way through the log (bench/hops.py, run
    apart: this script never imports Tollgate), after the load so that it costs the point nothing."""
    out = ctx.root / f"hops-{concurrency}-{run}.json"
    command = [
        sys.executable,
        str(Path(__file__).resolve().parent / "hops.py"),
        *("--bootstrap", str(target.notes["bootstrap"]), "--since-ms", str(since_ms)),
        *("--records-max", str(max(requests, 1) * hop_records_per_request_max), "--out", str(out)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0 or not out.exists():
        log(f"  !! hops of {target.name} could not be read: {done.stderr.strip()[-300:]}")
        return {}
    report: dict[str, Any] = json.loads(out.read_text())
    p50 = {name: figures["p50"] for name, figures in report["ms_after_admission"].items()}
    log(f"  {target.name:>8} c={concurrency:<3} run {run} hops, p50 ms after the admission: {p50}")
    return report


def measure_idle(ctx: Context, targets: list[Target], seconds: float) -> dict[str, float]:
    """Cores each target's processes use with no traffic (pollers, heartbeats, the broker): what its CPU per
    request includes at low throughput."""
    groups = cpu_groups(ctx, targets)
    before = cpu_snapshot(groups)
    time.sleep(seconds)
    used = cpu_delta(before, cpu_snapshot(groups))
    wall = used["machine_total"] / (os.cpu_count() or 1) or seconds
    idle = {t.name: round((used["upstream"] if t.name == "direct" else used[t.name]) / wall, 3) for t in targets}
    log(f"idle CPU over {seconds:g} s, in cores: {idle}")
    return idle


def warm_up_s(args: argparse.Namespace, target: str) -> float:
    """The broker this script starts compiles its hot paths in its first minutes (its C1 and C2
    threads used 12 of its first 28 CPU seconds, and its C2 thread was still a seventh of its CPU after
    five minutes), which a production broker did long ago: measured after 2 s, that charged 5-6 ms of
    broker CPU to each request; after 30 s, 3.1-3.5; after 180 s, 1.6 (2026-12-04, 64 clients, 320 ms
    upstream: the stack's 10.9 ms per request became 9.0)."""
    return max(args.warmup, args.kafka_warmup) if target == "kafka" else float(args.warmup)


def warm_up(ctx: Context, target: Target) -> None:
    """Not recorded: lets lazy imports, JITs and connection pools settle."""
    tool = run_h2load if ctx.args.load_tool == "h2load" else run_wrk
    load = tool(target.base_url, target.key, 8, warm_up_s(ctx.args, target.name), ctx.root)
    if load.errors:
        log(f"  !! warm-up of {target.name} saw errors: {load.errors}")


def aggregate(
    points: dict[tuple[str, int], list[dict[str, Any]]], names: list[str], concurrency: list[int]
) -> list[dict[str, Any]]:
    """Per target and concurrency: throughput averaged over runs; percentiles over every request of every run
    (h2load) or averaged over runs (wrk); added latency against ``direct`` at the same concurrency."""
    rows: list[dict[str, Any]] = []
    by_key: dict[tuple[str, int], dict[str, Any]] = {}
    for c in concurrency:
        for name in names:
            runs = points.get((name, c), [])
            if not runs:
                continue
            records = [r["record"] for r in runs]
            pooled = sorted(v for r in runs for v in r["latencies"])

            def mean(values: list[float]) -> float:
                return sum(values) / len(values) if values else math.nan

            if pooled:
                lat = {q: percentile(pooled, n) for q, n in (("p50", 50), ("p90", 90), ("p99", 99))}
            else:
                lat = {q: mean([r["latency_ms"][q] for r in records]) for q in ("p50", "p90", "p99")}
            ok = sum(r["requests_ok"] for r in records)
            cpu = sum(r["cpu_s"]["target"] for r in records)
            up_cpu = sum(r["cpu_s"]["upstream"] for r in records)
            by_process: dict[str, float] = {}
            for r in records:
                for process, v in r.get("cpu_s_by_process", {}).items():
                    by_process[process] = by_process.get(process, 0.0) + v
            row = {
                "target": name,
                "concurrency": c,
                "runs": len(records),
                "requests_ok": ok,
                "requests_per_s": round(mean([r["requests_per_s"] for r in records]), 1),
                "requests_per_s_runs": [r["requests_per_s"] for r in records],
                "latency_ms": {k: round(v, 3) for k, v in lat.items()},
                "latency_p50_ms_runs": [r["latency_ms"]["p50"] for r in records],
                "latency_p99_ms_runs": [r["latency_ms"]["p99"] for r in records],
                "errors_total": sum(r["errors_total"] for r in records),
                "cpu_s_per_1k_requests": round(cpu / ok * 1000, 4) if ok else None,
                "upstream_cpu_s_per_1k_requests": round(up_cpu / ok * 1000, 4) if ok else None,
                "cpu_s_per_1k_requests_by_process": {k: round(v / ok * 1000, 4) for k, v in by_process.items()}
                if ok
                else {},
                "outside_load_cores": round(mean([r["outside_load_cores"] for r in records]), 2),
                "added_ms": None,
            }
            by_key[(name, c)] = row
            rows.append(row)
    for row in rows:
        direct = by_key.get(("direct", row["concurrency"]))
        if direct is not None and row["target"] != "direct":
            row["added_ms"] = {q: round(row["latency_ms"][q] - direct["latency_ms"][q], 3) for q in ("p50", "p99")}
            base = direct["requests_per_s"]
            row["throughput_vs_direct"] = round(row["requests_per_s"] / base, 3) if base else None
    return rows


# -------------------------------------------------------------------------------------------- streaming TTFB


@dataclass
class StreamTiming:
    status: int
    first_byte_ms: float
    first_content_ms: float | None
    total_ms: float
    usage_seen: bool
    done_seen: bool
    events: int
    error: str = ""


class StreamClient:
    """Sequential streamed chat completions on one keep-alive connection (reopened when the server closes it)."""

    def __init__(self, base_url: str, key: str, body: dict[str, Any]) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.address = (host, int(port))
        payload = json.dumps(body).encode()
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        self.request = head.encode() + payload
        self.sock: socket.socket | None = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def one(self, timeout_s: float = 60) -> StreamTiming:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=timeout_s)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = self.sock
        started = time.perf_counter()
        sock.sendall(self.request)
        first_byte: float | None = None
        first_content: float | None = None
        head = b""
        status = 0
        headers: dict[str, str] = {}
        raw = bytearray()  # body bytes not yet de-chunked
        text = ""  # de-chunked SSE text not yet split into events
        mode = ""
        remaining = 0
        finished = False
        keep_alive = True
        usage_seen = done_seen = False
        events = 0

        def on_event(block: str, now: float) -> None:
            nonlocal first_content, usage_seen, done_seen, events
            data = "\n".join(line[5:].lstrip() for line in block.split("\n") if line.startswith("data:"))
            if not data:
                return
            events += 1
            if data == "[DONE]":
                done_seen = True
                return
            with contextlib.suppress(ValueError):
                chunk = json.loads(data)
                if isinstance(chunk, dict):
                    if chunk.get("usage"):
                        usage_seen = True
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or {}
                        if first_content is None and (delta.get("content") or choice.get("text")):
                            first_content = now

        while not finished:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                self.close()
                return StreamTiming(status, math.nan, None, math.nan, usage_seen, done_seen, events, "timeout")
            now = time.perf_counter()
            if first_byte is None and data:
                first_byte = now
            if not data:  # the server closed the connection
                keep_alive = False
                finished = mode == "eof"
                break
            if not mode:
                head += data
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    continue
                lines = head[:end].decode("latin-1").split("\r\n")
                status = int(lines[0].split(" ", 2)[1])
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
                keep_alive = headers.get("connection", "").lower() != "close"
                raw += head[end + 4 :]
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    mode = "chunked"
                elif "content-length" in headers:
                    mode, remaining = "length", int(headers["content-length"])
                else:
                    mode, keep_alive = "eof", False
            else:
                raw += data
            # De-chunk what has arrived.
            if mode == "chunked":
                while True:
                    line_end = raw.find(b"\r\n")
                    if line_end < 0:
                        break
                    size = int(raw[:line_end].split(b";")[0] or b"0", 16)
                    if size == 0:
                        finished = True
                        break
                    if len(raw) < line_end + 2 + size + 2:
                        break
                    text += raw[line_end + 2 : line_end + 2 + size].decode("utf-8", "replace")
                    del raw[: line_end + 2 + size + 2]
            else:
                take = len(raw) if mode == "eof" else min(len(raw), remaining)
                text += raw[:take].decode("utf-8", "replace")
                del raw[:take]
                if mode == "length":
                    remaining -= take
                    finished = remaining <= 0
            text = text.replace("\r\n", "\n")
            while "\n\n" in text:
                block, text = text.split("\n\n", 1)
                on_event(block, now)
        ended = time.perf_counter()
        if text.strip():
            on_event(text, ended)
        if not keep_alive or not finished:
            self.close()
        error = "" if status == 200 and finished else f"status {status}" if status != 200 else "stream cut short"
        return StreamTiming(
            status=status,
            first_byte_ms=((first_byte or ended) - started) * 1000,
            first_content_ms=None if first_content is None else (first_content - started) * 1000,
            total_ms=(ended - started) * 1000,
            usage_seen=usage_seen,
            done_seen=done_seen,
            events=events,
            error=error,
        )


def measure_streams(ctx: Context, targets: list[Target]) -> list[dict[str, Any]]:
    args = ctx.args
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "stream me, exactly once"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    upstream_control(ctx, token_ms=args.stream_token_ms, tokens=args.stream_tokens)
    timings: dict[str, list[StreamTiming]] = {t.name: [] for t in targets}
    per_round = max(1, args.ttfb_requests // max(1, args.runs))
    log(
        f"streaming: {per_round * args.runs} sequential streams per target, upstream at {args.stream_token_ms:g} ms "
        f"per token x {args.stream_tokens} tokens, at most {args.ttfb_seconds_max:g} s per target"
    )
    try:
        for round_index in range(args.runs):
            for target in targets:
                target.check_alive()
                client = StreamClient(target.base_url, target.key, body)
                got: list[StreamTiming] = []
                deadline = time.monotonic() + args.ttfb_seconds_max / args.runs
                try:
                    client.one()  # warm-up, not recorded
                    while len(got) < per_round and time.monotonic() < deadline:
                        got.append(client.one())
                finally:
                    client.close()
                timings[target.name].extend(got)
                if len(got) < per_round:
                    log(f"  {target.name}: stopped at {len(got)} streams this round (--ttfb-seconds-max)")
                contents = [t.first_content_ms for t in got if t.first_content_ms is not None]
                log(
                    f"  {target.name:>8} round {round_index + 1}: first byte p50 "
                    f"{percentile(sorted(t.first_byte_ms for t in got), 50):.2f} ms, first content p50 "
                    + (f"{percentile(sorted(contents), 50):.2f} ms" if contents else "none (no content text)")
                )
    finally:
        upstream_control(ctx, token_ms=0, tokens=args.tokens)
    rows: list[dict[str, Any]] = []
    direct: dict[str, Any] | None = None
    for target in targets:
        got = timings[target.name]
        ok = [t for t in got if not t.error]
        first = sorted(t.first_byte_ms for t in ok)
        content = sorted(t.first_content_ms for t in ok if t.first_content_ms is not None)
        total = sorted(t.total_ms for t in ok)
        errors: dict[str, int] = {}
        for t in got:
            if t.error:
                errors[t.error] = errors.get(t.error, 0) + 1
        row: dict[str, Any] = {
            "target": target.name,
            "requests": len(got),
            "errors": errors,
            "errors_total": sum(errors.values()),
            "first_byte_ms": {"p50": _r(percentile(first, 50)), "p99": _r(percentile(first, 99))},
            "first_content_ms": (
                {"p50": _r(percentile(content, 50)), "p99": _r(percentile(content, 99))} if content else None
            ),
            "streams_with_content": len(content),
            "streams_with_usage": sum(1 for t in ok if t.usage_seen),
            "streams_with_done": sum(1 for t in ok if t.done_seen),
            "total_ms": {"p50": _r(percentile(total, 50)), "p99": _r(percentile(total, 99))},
            "added_first_content_ms": None,
            "added_first_byte_ms": None,
        }
        if target.name == "direct":
            direct = row
        rows.append(row)
    if direct is not None:
        for row in rows:
            if row is direct:
                continue
            row["added_first_byte_ms"] = {
                q: _r(row["first_byte_ms"][q] - direct["first_byte_ms"][q]) for q in ("p50", "p99")
            }
            if row["first_content_ms"] and direct["first_content_ms"]:
                row["added_first_content_ms"] = {
                    q: _r(row["first_content_ms"][q] - direct["first_content_ms"][q]) for q in ("p50", "p99")
                }
    return rows


def _r(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


# ------------------------------------------------------------------------------------------------- reporting


def fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append(
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
    return "\n".join(lines)


def render(report: dict[str, Any]) -> str:
    labels = {t["name"]: t["label"] for t in report["targets"]}
    out = []
    scenario = report["scenario"]
    out.append(
        f"Load: {report['load_tool']}, POST /v1/chat/completions ({model}, non-streamed), {scenario['duration_s']:g} s "
        f"per point, {scenario['runs']} run(s) each, upstream reply delay {scenario['reply_ms']:g} ms"
    )
    headers = [
        "target",
        "conc",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "+p50 ms",
        "+p99 ms",
        "errors",
        "cpu s/1k",
        "upstr s/1k",
        "ext load",
    ]
    rows = []
    for row in report["load"]:
        added = row["added_ms"] or {}
        errors = row["errors_total"]
        rows.append(
            [
                labels.get(row["target"], row["target"]),
                str(row["concurrency"]),
                fmt(row["requests_per_s"], 0),
                fmt(row["latency_ms"]["p50"], 3),
                fmt(row["latency_ms"]["p90"], 3),
                fmt(row["latency_ms"]["p99"], 3),
                fmt(added.get("p50"), 3),
                fmt(added.get("p99"), 3),
                f"{errors} !!" if errors else "0",
                fmt(row["cpu_s_per_1k_requests"], 3),
                fmt(row["upstream_cpu_s_per_1k_requests"], 3),
                fmt(row["outside_load_cores"], 2),
            ]
        )
    out.append(table(headers, rows))
    out.append(
        "cpu s/1k: CPU seconds per 1,000 requests of the target's own processes (direct: the upstream); upstr s/1k: "
        "the fake upstream's; ext load: cores busy outside this benchmark during the run (machine noise)."
    )
    out.append("")
    out.append("CPU seconds per 1,000 requests by process (the fake upstream and the load tool share the same cores):")
    for row in report["load"]:
        parts = row.get("cpu_s_per_1k_requests_by_process") or {}
        if parts:
            listed = ", ".join(f"{name} {value:.3f}" for name, value in parts.items())
            out.append(f"  {row['target']} c={row['concurrency']}: {listed}")
    idle = [f"{labels[t['name']]} {t['idle_cores']:.3f}" for t in report["targets"] if t.get("idle_cores") is not None]
    if idle:
        out.append("idle CPU with no traffic, in cores: " + ", ".join(idle))
    if report.get("streams"):
        s = report["scenario"]
        out.append("")
        out.append(
            f"Streaming (sequential, stream_options.include_usage, upstream {s['stream_token_ms']:g} ms/token x "
            f"{s['stream_tokens']} tokens): time to first byte of the response and to the first data: event with text"
        )
        headers = [
            "target",
            "n",
            "byte p50",
            "byte p99",
            "content p50",
            "content p99",
            "+content p50",
            "+content p99",
            "total p50",
            "w/ text",
            "w/ usage",
            "errors",
        ]
        rows = []
        for row in report["streams"]:
            content = row["first_content_ms"] or {}
            added = row["added_first_content_ms"] or {}
            rows.append(
                [
                    labels.get(row["target"], row["target"]),
                    str(row["requests"]),
                    fmt(row["first_byte_ms"]["p50"], 2),
                    fmt(row["first_byte_ms"]["p99"], 2),
                    fmt(content.get("p50"), 2) if content else "none",
                    fmt(content.get("p99"), 2) if content else "none",
                    fmt(added.get("p50"), 2),
                    fmt(added.get("p99"), 2),
                    fmt(row["total_ms"]["p50"], 2),
                    f"{row['streams_with_content']}/{row['requests']}",
                    f"{row['streams_with_usage']}/{row['requests']}",
                    f"{row['errors_total']} !!" if row["errors_total"] else "0",
                ]
            )
        out.append(table(headers, rows))
    for line in report.get("findings", []):
        out.append(line)
    return "\n".join(out)


def findings(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    bad = [r for r in report["load"] if r["errors_total"]]
    bad_streams = [r for r in report.get("streams", []) if r["errors_total"]]
    if bad or bad_streams:
        lines.append("")
        lines.append("!! ERRORS: some requests failed or were not 2xx; their points are not comparable:")
        for r in bad:
            lines.append(f"!!   {r['target']} c={r['concurrency']}: {r['errors_total']} errors")
        for r in bad_streams:
            lines.append(f"!!   {r['target']} streams: {r['errors']}")
    no_text = [r["target"] for r in report.get("streams", []) if r["requests"] and not r["streams_with_content"]]
    if no_text:
        lines.append("")
        lines.append(f"Streams that carried no content text at all: {', '.join(no_text)} (first-content TTFB: none).")
    if report["scenario"]["reply_ms"] > 0:
        top = max(report["scenario"]["concurrency"])
        direct = next((r for r in report["load"] if r["target"] == "direct" and r["concurrency"] == top), None)
        if direct:
            lines.append("")
            lines.append(
                f"Slow upstream ({report['scenario']['reply_ms']:g} ms), throughput at {top} clients vs direct:"
            )
            for r in report["load"]:
                if r["concurrency"] == top and r["target"] != "direct" and direct["requests_per_s"]:
                    ratio = r["requests_per_s"] / direct["requests_per_s"]
                    verdict = "within 10%" if ratio >= 0.9 else "NOT within 10%"
                    lines.append(
                        f"  {r['target']}: {r['requests_per_s']:.1f} / {direct['requests_per_s']:.1f} req/s"
                        f" = {ratio:.1%} ({verdict})"
                    )
    return lines


def plot(report_path: Path, png_path: Path) -> None:
    """The chart: p50 and p99 latency and throughput per concurrency, one line per target."""
    import matplotlib  # type: ignore[import-not-found,unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]

    report = json.loads(report_path.read_text())
    labels = {t["name"]: t["label"] for t in report["targets"]}
    s = report["scenario"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    for name in [t["name"] for t in report["targets"]]:
        rows = sorted((r for r in report["load"] if r["target"] == name), key=lambda r: r["concurrency"])
        if not rows:
            continue
        xs = [r["concurrency"] for r in rows]
        axes[0].plot(xs, [r["latency_ms"]["p50"] for r in rows], marker="o", label=labels[name])
        axes[1].plot(xs, [r["latency_ms"]["p99"] for r in rows], marker="o", label=labels[name])
        axes[2].plot(xs, [r["requests_per_s"] for r in rows], marker="o", label=labels[name])
    for ax, title, unit in (
        (axes[0], "p50 latency", "ms"),
        (axes[1], "p99 latency", "ms"),
        (axes[2], "throughput", "requests/s"),
    ):
        ax.set_title(title)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(unit)
        ax.set_xscale("log", base=2)
        ax.set_xticks(s["concurrency"], [str(c) for c in s["concurrency"]])
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Billing gateway overhead vs upstream direct - {report['load_tool']}, {s['duration_s']:g} s x {s['runs']} "
        f"runs per point, upstream reply {s['reply_ms']:g} ms - {report['started_at']}"
    )
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)


def make_plot(args: argparse.Namespace, report_path: Path, png_path: Path) -> str:
    """Plots with this interpreter's matplotlib, else with the bench venv's (installed unless --skip-install)."""
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]  # noqa: F401

        plot(report_path, png_path)
        return str(png_path)
    except ImportError:
        pass
    python = plot_venv / "bin" / "python"
    has = (
        python.exists()
        and subprocess.run([str(python), "-c", "import matplotlib"], capture_output=True, check=False).returncode == 0
    )
    if not has:
        if args.skip_install:
            return f"skipped: no matplotlib here or in {plot_venv} (run without --skip-install to install it there)"
        log(f"installing matplotlib into {plot_venv} (one time)")
        run_install([sys.executable, "-m", "venv", str(plot_venv)], 300)
        run_install([str(plot_venv / "bin" / "pip"), "install", "--quiet", "matplotlib"], 900)
    result = subprocess.run(
        [str(python), str(Path(__file__).resolve()), "--plot-from", str(report_path), "--plot-to", str(png_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        return f"failed: {result.stderr[-1500:]}"
    return str(png_path)


# ------------------------------------------------------------------------------------------------------- main


def check_tools(args: argparse.Namespace, names: list[str]) -> dict[str, str]:
    versions: dict[str, str] = {}
    if args.load_tool == "h2load":
        if not shutil.which("h2load"):
            raise BenchError("h2load is missing: apt-get install -y nghttp2-client   (or use --load-tool wrk)")
        out = subprocess.run(["h2load", "--version"], capture_output=True, text=True, check=False).stdout
        versions["h2load"] = out.strip()
    else:
        if not shutil.which("wrk"):
            raise BenchError("wrk is missing: apt-get install -y wrk   (or use --load-tool h2load)")
        probe = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
        text = probe.stdout + probe.stderr
        versions["wrk"] = text.splitlines()[0] if text else "?"
    if "kafka" in names:
        if not shutil.which(os.environ.get("JAVA", "java")):
            raise BenchError("java is missing (Kafka 4 needs Java 17+): apt-get install -y openjdk-17-jre-headless")
        if not (repo / "compose" / "kafka.sh").exists():
            raise BenchError(f"{repo / 'compose' / 'kafka.sh'} is missing")
    return versions


def git_describe() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        rev = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    return "unknown"


def env_setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("TOLLGATE_"):
        raise argparse.ArgumentTypeError(f"expected TOLLGATE_NAME=VALUE, not {text!r}")
    return name, value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--targets", default=",".join(all_targets), help=f"comma-separated subset of {','.join(all_targets)}"
    )
    parser.add_argument("--concurrency", default="1,8,32,64", help="comma-separated client counts (default 1,8,32,64)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load point (default 10)")
    parser.add_argument(
        "--runs", type=int, default=2, help="runs per target and concurrency, targets alternating (default 2)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of unrecorded load per target first (default 2)"
    )
    parser.add_argument(
        "--kafka-warmup",
        type=float,
        default=180.0,
        help="at least this much warm-up for the kafka target, whose broker JIT-compiles first (default 180)",
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=3.0, help="seconds measuring each target's idle CPU (0 skips; default 3)"
    )
    parser.add_argument(
        "--reply-ms",
        type=float,
        default=0.0,
        help="the upstream's fixed delay per reply (slow-upstream scenario, e.g. 320)",
    )
    parser.add_argument("--tokens", type=int, default=16, help="completion tokens per non-streamed reply (default 16)")
    parser.add_argument(
        "--ttfb-requests", type=int, default=200, help="sequential streamed requests per target (0 skips; default 200)"
    )
    parser.add_argument(
        "--ttfb-seconds-max", type=float, default=60.0, help="time cap of the streaming part per target (default 60)"
    )
    parser.add_argument(
        "--stream-token-ms", type=float, default=20.0, help="upstream delay per streamed token (default 20)"
    )
    parser.add_argument("--stream-tokens", type=int, default=8, help="tokens per streamed reply (default 8)")
    parser.add_argument("--load-tool", choices=("h2load", "wrk"), default="h2load", help="default h2load (see above)")
    parser.add_argument(
        "--skip-install", action="store_true", help="install nothing (LiteLLM, matplotlib); fail or skip instead"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (processes' logs, data)")
    parser.add_argument(
        "--tollgate", default="", help="the tollgate command (default: <repo>/.venv/bin/tollgate, then PATH)"
    )
    parser.add_argument(
        "--tollgate-env",
        action="append",
        type=env_setting,
        default=[],
        metavar="NAME=VALUE",
        help="a TOLLGATE_* setting for every Tollgate process (repeatable), to compare settings",
    )
    parser.add_argument("--litellm-spec", default="litellm[proxy]", help="what pip installs for the LiteLLM target")
    parser.add_argument(
        "--out", type=Path, default=results_dir, help="directory for the JSON and PNG (default bench/results)"
    )
    parser.add_argument("--plot-from", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--plot-to", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def validate(args: argparse.Namespace) -> tuple[list[str], list[int]]:
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in all_targets]
    if unknown or not names:
        raise BenchError(f"unknown targets {unknown}; choose from {','.join(all_targets)}")
    names = [n for n in all_targets if n in names]  # a fixed order: direct first
    try:
        levels = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    except ValueError as error:
        raise BenchError(f"--concurrency takes integers: {error}") from error
    if not levels or levels[0] < 1 or levels[-1] > 1024:
        raise BenchError("--concurrency values must lie in 1..1024")
    if not 0.5 <= args.duration <= 600 or not 1 <= args.runs <= 20:
        raise BenchError("--duration must lie in 0.5..600 s and --runs in 1..20")
    if args.ttfb_requests < 0 or args.ttfb_requests > 5000 or args.stream_tokens < 1 or args.ttfb_seconds_max <= 0:
        raise BenchError("--ttfb-requests must lie in 0..5000 and --stream-tokens be at least 1")
    return names, levels


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handle(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    names, levels = validate(args)
    versions = check_tools(args, names)
    if "litellm" in names:
        versions["litellm"] = ensure_litellm(args)
    if "embedded" in names or "kafka" in names:
        versions["tollgate"] = git_describe()
    per_point = args.duration + 1.5
    estimate = sum(warm_up_s(args, name) + 1 for name in names) + args.runs * len(levels) * len(names) * per_point
    estimate += len(names) * (args.ttfb_requests + args.runs) * (args.stream_tokens * args.stream_token_ms + 15) / 1000
    log(
        f"targets {names}, concurrency {levels}, {args.runs} run(s) x {args.duration:g} s; "
        f"about {estimate / 60:.1f} min of measuring plus start-up"
    )
    root = Path(tempfile.mkdtemp(prefix="tollgate-compare-"))
    (root / "logs").mkdir()
    ctx = Context(args, root)
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    keep = args.keep
    targets: list[Target] = []
    try:
        with sigterm_as_interrupt():
            start_upstream(ctx)
            for name in names:
                targets.append(starters[name](ctx))
            for target in targets:
                warm_up(ctx, target)
            idle = measure_idle(ctx, targets, args.idle_seconds) if args.idle_seconds > 0 else {}
            points: dict[tuple[str, int], list[dict[str, Any]]] = {}
            loadavg_before = os.getloadavg()
            for run_index in range(1, args.runs + 1):
                for c in levels:
                    for target in targets:
                        points.setdefault((target.name, c), []).append(
                            measure_point(ctx, targets, target, c, run_index)
                        )
            streams = measure_streams(ctx, targets) if args.ttfb_requests > 0 else []
            loadavg_after = os.getloadavg()
        report: dict[str, Any] = {
            "benchmark": "compare_gateways",
            "started_at": started_at,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_tool": args.load_tool,
            "latency_note": (
                "percentiles over every request of every run (h2load per-request log)"
                if args.load_tool == "h2load"
                else "wrk's percentiles (corrected for coordinated omission), averaged over runs"
            ),
            "scenario": {
                "model": model,
                "body": load_body,
                "duration_s": args.duration,
                "runs": args.runs,
                "warmup_s": args.warmup,
                "kafka_warmup_s": args.kafka_warmup,
                "concurrency": levels,
                "threads": "min(2, concurrency)",
                "reply_ms": args.reply_ms,
                "tokens": args.tokens,
                "ttfb_requests": args.ttfb_requests,
                "stream_token_ms": args.stream_token_ms,
                "stream_tokens": args.stream_tokens,
                "tollgate_env": dict(args.tollgate_env),
                "order": "per run, per concurrency: targets in turn (A B C D A B C D)",
            },
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "loadavg_before": [round(x, 2) for x in loadavg_before],
                "loadavg_after": [round(x, 2) for x in loadavg_after],
            },
            "versions": versions,
            "targets": [
                {"name": t.name, "label": t.label, "pids": t.pids(), "idle_cores": idle.get(t.name), "notes": t.notes}
                for t in targets
            ],
            "load": aggregate(points, names, levels),
            "runs": [p["record"] for c in levels for n in names for p in points.get((n, c), [])],
            "streams": streams,
        }
        report["findings"] = findings(report)
        args.out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = args.out / f"compare-{stamp}.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        shutil.copyfile(path, args.out / "compare-latest.json")
    except KeyboardInterrupt:
        log("interrupted; stopping everything this benchmark started")
        return 130
    except BenchError as error:
        log(f"error: {error}")
        keep = True
        return 1
    finally:
        ctx.cleanup()
        if keep:
            log(f"logs and data kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(render(report))
    chart = make_plot(args, path, args.out / "compare-latest.png")
    print()
    print(f"results: {path} (and {args.out / 'compare-latest.json'}); chart: {chart}")
    return 2 if any(r["errors_total"] for r in report["load"]) or any(r["errors_total"] for r in streams) else 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.plot_from:
        plot(args.plot_from, args.plot_to or args.plot_from.with_suffix(".png"))
        return
    try:
        sys.exit(run(args))
    except BenchError as error:
        log(f"error: {error}")
        sys.exit(1)


if __name__ == "__main__":
    main()
