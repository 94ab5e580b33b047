"""What the tests (and the benchmarks) share: free ports, Tollgate roles as real processes, the admin
API over HTTP, a `tollgate dev` process, and builders of usage rows and job events."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import httpx
import msgspec

from ledger.pricing import default_price_book, price_breakdown, price_micros, unit_names
from projections.usage import PostingRow, UsageRow
from schemas.events import HoldCaptured, HoldPlaced, JobCompleted, JobLeased, JobProgressed
from schemas.units import Units

if TYPE_CHECKING:
    import openai

tollgate = [sys.executable, "-m", "tollgate"]


def examples(full: int) -> int:
    """Hypothesis examples for a property test: ``full`` in the whole suite, a tenth (at least 10) in
    the inner loop (``-m "not slow"``, which sets TOLLGATE_TEST_QUICK; see tests/conftest.py), and
    TOLLGATE_TEST_EXAMPLES_TIMES as many to hunt (``TOLLGATE_TEST_EXAMPLES_TIMES=50 bin/test tests/unit``)."""
    times = int(os.environ.get("TOLLGATE_TEST_EXAMPLES_TIMES", "1"))
    return max(full // 10, 10) * times if os.environ.get("TOLLGATE_TEST_QUICK") == "1" else full * times


dev_admin_token = "tga_test_admin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_pair() -> int:
    """A free port whose successor is free too: compose/kafka.sh puts the controller on port + 1."""
    for _ in range(50):
        port = free_port()
        if port < 65535 and _port_free(port + 1):
            return port
    raise RuntimeError("no two adjacent free ports on 127.0.0.1")


def migrated_database(server_url: str, prefix: str) -> str:
    """A new database on the ClickHouse server, with the schema applied by ``tollgate migrate`` as a
    deployment applies it (once, before the roles): its URL, for the roles' TOLLGATE_CLICKHOUSE_URL."""
    url = f"{server_url}/{prefix}_{uuid.uuid4().hex[:10]}"
    done = subprocess.run(
        [*tollgate, "migrate"], env={**os.environ, "TOLLGATE_CLICKHOUSE_URL": url}, capture_output=True, text=True
    )
    assert done.returncode == 0, f"tollgate migrate failed:\n{done.stdout}{done.stderr}"
    return url


class Role:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*tollgate, *args], env={**os.environ, **env}, stdout=self._log, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 20) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self._log.close()


def wait_until_serving(base_url: str, role: Role, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if role.process.poll() is not None:
            raise RuntimeError(f"{role.name} exited with {role.process.returncode}:\n{role.output()[-4000:]}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{role.name} did not serve within {timeout_s}s:\n{role.output()[-4000:]}")


def wait_for_text(role: Role, text: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in role.output():
            return
        if role.process.poll() is not None:
            raise RuntimeError(f"{role.name} exited with {role.process.returncode}:\n{role.output()[-4000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"{role.name} never printed {text!r}:\n{role.output()[-4000:]}")


class Admin:
    """The admin API through plain HTTP."""

    def __init__(self, base_url: str, admin_token: str) -> None:
        self.client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=60)

    def organization(self, name: str = "acme", plan: str = "pro") -> str:
        response = self.client.post("/v1/organizations", json={"name": name, "plan": plan})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def grant(self, org_id: str, amount: str | int) -> dict[str, Any]:
        response = self.client.post(f"/v1/organizations/{org_id}/credits", json={"amount": amount, "kind": "paid"})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def token(self, org_id: str, scopes: list[str] | None = None) -> str:
        body = {"name": "test", "scopes": scopes or ["user:read", "user:write"]}
        response = self.client.post(f"/v1/organizations/{org_id}/tokens", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["secret"])


def usage(base_url: str, key: str, **params: Any) -> dict[str, Any]:
    response = httpx.get(f"{base_url}/v1/account/usage", params=params, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    return dict(json.loads(response.text, parse_float=Decimal))


class Dev:
    def __init__(self, data_dir: Path, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        log = log_dir / "dev.log"
        banners_before = log.read_text(errors="replace").count("demo API key") if log.exists() else 0
        self.role = Role(
            "dev",
            ["dev", "--port", str(self.port), "--data-dir", str(data_dir)],
            {"TOLLGATE_ADMIN_TOKEN": dev_admin_token, "TOLLGATE_KAFKA_BOOTSTRAP": "", **(env or {})},
            log_dir,
        )
        wait_until_serving(self.base_url, self.role)
        # The log is appended to across restarts on one directory: wait for this run's banner.
        deadline = time.monotonic() + 90
        while self.role.output().count("demo API key") <= banners_before:
            assert time.monotonic() < deadline and self.role.process.poll() is None, self.role.output()[-4000:]
            time.sleep(0.1)
        self.demo = json.loads((data_dir / "demo.json").read_text())
        self.admin = Admin(self.base_url, dev_admin_token)
        # The ClickHouse server dev runs (and prints), as SQL clients reach it.
        found = re.findall(r"ClickHouse: +(http://\S+)", self.role.output())
        self.clickhouse_url = found[-1] if found else ""

    def client(self, key: str) -> openai.OpenAI:
        import openai  # here: the SDK takes a second to import, and every test module imports this one

        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=key, max_retries=0)

    def organization(self, credits: int = 1_000) -> tuple[str, str]:
        """(org id, API key) of a new organization with paid credits and its rate limits lifted."""
        org = self.admin.organization()
        self.admin.grant(org, credits)
        lifted = {"requests": 100_000_000, "jobs": 100_000_000, "tokens": 100_000_000}
        response = self.admin.client.post(f"/v1/organizations/{org}/limits", json=lifted)
        assert response.status_code == 200, response.text
        return org, self.admin.token(org)

    def stop(self) -> None:
        self.role.stop()


# --- builders ---


def charge(
    event_id: str,
    created_at: datetime,
    org_id: str = "org_a",
    model: str = "sim-chat-small",
    token_id: str = "tok_1",
    source: str = "api",
    units: Units | None = None,
) -> UsageRow:
    """A usage row priced exactly as the ledger prices it, with the rates the projector records."""
    units = units or Units(input_tokens=1000, output_tokens=200)
    price = default_price_book().models[model]
    priced = price_breakdown(price, units)
    rates = dict(zip([f"{n}_rate" for n in unit_names], priced.rates, strict=True))
    return UsageRow(
        event_id=event_id,
        created_at=created_at,
        org_id=org_id,
        token_id=token_id,
        model=model,
        endpoint="/v1/chat/completions",
        source=source,
        status="success",
        status_code=200,
        error="",
        request_id=f"req_{event_id}",
        job_id=f"job_{event_id}",
        latency_ms=25,
        **{n: getattr(units, n) for n in unit_names},
        cost_micros=price_micros(price, units),
        priced_micros=price_micros(price, units),
        price_version="2026-11-01",
        variant=units.variant,
        **rates,
        pricing_tier=priced.tier_label,
        discount_percent=priced.discount_percent,
        minimum_topup_micros=priced.minimum_topup_micros,
        source_id="",
    )


def refusal(event_id: str, created_at: datetime, org_id: str = "org_a") -> UsageRow:
    return UsageRow(
        event_id=event_id,
        created_at=created_at,
        org_id=org_id,
        token_id="tok_1",
        model="sim-chat-large",
        endpoint="/v1/chat/completions",
        source="api",
        status="error",
        status_code=402,
        error="insufficient_credits",
        request_id=f"req_{event_id}",
        job_id="",
        latency_ms=0,
    )


def capture_posting(row: UsageRow) -> PostingRow:
    return PostingRow(
        event_id=row.event_id,
        posting=0,
        created_at=row.created_at,
        org_id=row.org_id,
        kind="hold.captured.v1",
        debit=f"{row.org_id}/held",
        credit="revenue",
        amount_micros=row.cost_micros,
    )


now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


class Envelope(TypedDict):
    occurred_at: datetime
    org_id: str


class JobIds(TypedDict):
    job_id: str
    request_id: str


envelope: Envelope = {"occurred_at": now, "org_id": "org_a"}
job: JobIds = {"job_id": "job_1", "request_id": "req_1"}
placed = HoldPlaced(
    event_id="e1",
    hold_id="req_1",
    token_id="t",
    model="m",
    endpoint="/v1/chat/completions",
    amount_micros=100,
    expires_at=now + timedelta(minutes=15),
    **job,
    **envelope,
)
leased = JobLeased(
    event_id="e2",
    hold_id="req_1",
    worker_id="w",
    run_id="r",
    attempt=1,
    lease_expires_at=now + timedelta(seconds=30),
    **job,
    **envelope,
)
progressed = JobProgressed(event_id="e3", attempt=1, sequence=1, progress_milli=500, **job, **envelope)
completed = JobCompleted(
    event_id="e4",
    model="m",
    result=msgspec.Raw(b'{"ok": true}'),
    units=Units(output_tokens=3),
    duration_ms=5,
    **job,
    **envelope,
)
captured = HoldCaptured(
    event_id="e5",
    hold_id="req_1",
    token_id="t",
    model="m",
    endpoint="/v1/chat/completions",
    amount_micros=40,
    released_micros=60,
    priced_micros=40,
    price_version="v",
    units=Units(output_tokens=3),
    **job,
    **envelope,
)


class FakeUpstream:
    """bench/fake_upstream.py's server on its own event loop, in a thread of this process: an
    OpenAI-compatible upstream that streams token by token (``control`` sets its delays and tokens)."""

    def __init__(self, **settings: Any) -> None:
        import asyncio
        import threading

        from bench import fake_upstream

        self._module = fake_upstream
        self.control(**{"reply_ms": 0.0, "token_ms": 0.0, "tokens": 16, "stream_usage": True, **settings})
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(
            self._loop.create_server(fake_upstream.UpstreamProtocol, "127.0.0.1", 0, backlog=1024)
        )
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-upstream", daemon=True)
        self._thread.start()

    def control(self, **settings: Any) -> None:
        for name, value in settings.items():
            assert hasattr(self._module.config, name), name
            setattr(self._module.config, name, value)

    @property
    def requests(self) -> int:
        return int(self._module.config.requests)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class FakeUpstreamProcess:
    """bench/fake_upstream.py as a process of its own, for tests that time streams: a fake upstream on a
    thread of the test process shares its interpreter lock, and its collector pauses, with the client
    that measures (``control`` goes through the fake's ``/_control``)."""

    def __init__(self, token_ms: float = 0.0, tokens: int = 16) -> None:
        repository = Path(__file__).resolve().parent.parent
        self._ready = Path(os.environ.get("TMPDIR", "/tmp")) / f"fake-upstream-{uuid.uuid4().hex}.port"
        command = [sys.executable, str(repository / "bench" / "fake_upstream.py"), "--ready-file", str(self._ready)]
        command += ["--token-ms", str(token_ms), "--tokens", str(tokens)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not (self._ready.exists() and self._ready.read_text().strip()):
            assert time.monotonic() < deadline and self.process.poll() is None, "the fake upstream did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{int(self._ready.read_text())}"

    def control(self, **settings: Any) -> None:
        response = httpx.post(f"{self.url}/_control", json=settings, timeout=10)
        assert response.status_code == 200, response.text

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self._ready.unlink(missing_ok=True)


def served_media(url: str, content_type: str) -> bytes:
    """The bytes a result's signed media URL serves over real HTTP, fetched without an Authorization
    header (the URL is its own authority), checked to be ``content_type``."""
    import httpx

    assert url.startswith("http") and "/v1/media/" in url, url
    served = httpx.get(url, timeout=30)
    assert served.status_code == 200, served.text
    assert served.headers["content-type"].startswith(content_type), served.headers["content-type"]
    return served.content


# --- the reference documents' curl examples, run against `tollgate dev` ---


def run_curl(command: str, key_variable: str, key: str, timeout_s: float = 120) -> dict[str, Any]:
    """A document's curl command (its host and placeholders already changed) run by bash, the key in
    the document's own variable (``$CASOLA_API_KEY``, ``$EMPIRIOLABS_API_KEY``); its JSON answer,
    numbers as Decimal. A status of 400 or more fails (curl's --fail-with-body)."""
    done = subprocess.run(
        ["bash", "-c", command + " -s --fail-with-body"],
        env={**os.environ, key_variable: key},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    answer: dict[str, Any] = json.loads(done.stdout, parse_float=Decimal)
    return answer


def balance_micros(base_url: str, key: str) -> int:
    """The organization's balance as its own key reads it (``GET /v1/account/usage``)."""
    return int(usage(base_url, key)["balance"]["amount_micros"])


def usage_rows_of(
    base_url: str, key: str, request_id: str, timeout_s: float = 30, **params: Any
) -> list[dict[str, Any]]:
    """The usage rows of one request once the projector has written them (ClickHouse is a read model:
    within about a second of the charge, TOLLGATE_SINK_FLUSH_INTERVAL_MS_MIN), or [] after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = [row for row in usage(base_url, key, **params)["data"] if row["request_id"] == request_id]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def settled_balance(base_url: str, key: str, expected: int, timeout_s: float = 30) -> int:
    """The balance once it is ``expected`` (the ledger records a charge just after its answer), or
    as it is when ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    while balance_micros(base_url, key) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return balance_micros(base_url, key)


def markdown_curl(document: Path, title: str) -> str:
    """The curl command of a Markdown document's fenced block titled ``title`` (```bash title="..."),
    whole, as a reader copies it into a shell."""
    text = document.read_text()
    marker = f'```bash title="{title}"\n'
    start = text.find(marker)
    assert start >= 0, f"no block titled {title!r} in {document.name}"
    body = text[start + len(marker) :]
    return body[: body.index("\n```")].strip()
