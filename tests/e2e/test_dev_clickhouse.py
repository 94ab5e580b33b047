"""`tollgate dev` runs a ClickHouse server as its child: while dev runs, a SQL client (the README's
curl line, as printed), `tollgate statement` and `tollgate replay` (which find the server by the data
directory), and any other process reach the usage data at the URL dev prints. The server stops with
dev, however dev ends; a statement of a stopped dev's data starts a server of its own for the command.
A data directory that an earlier version filled with an embedded store gets its usage rebuilt from
the log into the server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from projections.usage.schema import migrations
from schemas.moments import iso
from tests.support import Dev, Role, dev_admin_token, free_port, usage
from tollgate.clickhouse import ping, running_url, server_directory

readme = Path(__file__).resolve().parents[2] / "README.md"
readme_clickhouse_url = "http://127.0.0.1:8123"


def readme_block(containing: str) -> str:
    """The README's fenced shell block that contains ``containing``."""
    blocks = re.findall(r"```bash\n(.*?)```", readme.read_text(), flags=re.DOTALL)
    found = [block for block in blocks if containing in block]
    assert len(found) == 1, f"one README block with {containing!r}"
    return found[0]


def chat(dev: Dev, content: str) -> None:
    dev.client(dev.demo["api_key"]).chat.completions.create(
        model="sim-chat-small", messages=[{"role": "user", "content": content}]
    )


def wait_for_usage(dev: Dev, requests: int) -> dict[str, object]:
    """The demo key's usage report once the rollups (its summary) and the raw rows (its events page)
    both show ``requests``: one INSERT writes the table's part and its views' parts side by side."""
    deadline = time.monotonic() + 30
    while True:
        report = usage(dev.base_url, dev.demo["api_key"], limit=100)
        if report["summary"]["requests"] >= requests and len(report["data"]) >= requests:
            return report
        assert time.monotonic() < deadline, "the projector did not catch up"
        time.sleep(0.2)


def tollgate(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tollgate", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    """dev on ``<dir>/.tollgate``, so that the README's commands run in ``<dir>`` as printed."""
    home = tmp_path_factory.mktemp("home")
    running = Dev(home / ".tollgate", home)
    for i in range(3):
        chat(running, f"Hello {i}!")
    wait_for_usage(running, 3)
    yield running
    running.role.stop()


def test_dev_prints_its_clickhouse_url_and_the_exports(dev: Dev) -> None:
    assert dev.clickhouse_url.startswith("http://127.0.0.1:") and ping(dev.clickhouse_url)
    assert running_url(server_directory(dev.data_dir)) == dev.clickhouse_url
    output = dev.role.output()
    assert f"export TOLLGATE_ADMIN_TOKEN={dev_admin_token} ORG={dev.demo['org_id']}" in output
    assert "experimental" not in output and "Warning" not in output  # granian's start notice, any warning


def test_the_readme_finance_sql_answers_through_curl_while_dev_runs(dev: Dev) -> None:
    script = readme_block(f"curl -s {readme_clickhouse_url}")
    # The README's line as printed; only the port differs (tests run dev on a free one).
    script = script.replace(readme_clickhouse_url, dev.clickhouse_url)
    result = subprocess.run(
        ["bash", "-e", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ORG": dev.demo["org_id"]},
    )
    assert result.returncode == 0, result.stderr
    charged = usage(dev.base_url, dev.demo["api_key"])["summary"]["total_cost_micros"]
    rows = [line.split() for line in result.stdout.splitlines() if "sim-chat-small" in line]
    assert rows and str(charged) in rows[0] and "3" in rows[0], result.stdout


def test_the_readme_statement_runs_as_printed_and_equals_the_api(dev: Dev) -> None:
    line = next(line for line in readme_block("tollgate statement").splitlines() if "tollgate statement" in line)
    command = line.split("#")[0].replace(".venv/bin/tollgate", f"{sys.executable} -m tollgate")
    printed = subprocess.run(
        ["bash", "-e", "-c", command],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=dev.data_dir.parent,
        env={**os.environ, "ORG": dev.demo["org_id"]},
    )
    assert printed.returncode == 0, printed.stderr
    assert "sim-chat-small" in printed.stdout
    # The same period by both ways: the command's JSON and GET .../statements.
    start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = datetime.now(UTC) + timedelta(hours=1)
    period = {"from": iso(start), "to": iso(end)}
    found = tollgate(
        "statement",
        "--org",
        dev.demo["org_id"],
        "--from",
        period["from"],
        "--to",
        period["to"],
        cwd=dev.data_dir.parent,
    )
    assert found.returncode == 0, found.stderr
    api = dev.admin.client.get(f"/v1/organizations/{dev.demo['org_id']}/statements", params=period)
    assert api.status_code == 200, api.text
    assert json.loads(found.stdout, parse_float=Decimal)["lines"] == json.loads(api.text, parse_float=Decimal)["lines"]
    assert json.loads(api.text)["lines"] != []


def test_another_process_reaches_the_server_by_its_url(dev: Dev) -> None:
    migrated = tollgate("migrate", env={"TOLLGATE_CLICKHOUSE_URL": dev.clickhouse_url})
    latest = migrations[-1][0]
    assert migrated.returncode == 0 and f"version {latest}" in migrated.stdout, migrated.stderr
    answer = httpx.post(
        dev.clickhouse_url,
        content=f"SELECT count() FROM usage_events FINAL WHERE org_id = '{dev.demo['org_id']}'",
    )
    assert answer.status_code == 200 and int(answer.text) >= 3


def test_replay_rebuilds_usage_in_a_database_of_devs_server_and_drops_it(dev: Dev) -> None:
    result = tollgate(
        "replay",
        "--data-dir",
        str(dev.data_dir),
        "--projections",
        "usage",
        "--gateway",
        dev.base_url,
        "--admin-token",
        dev_admin_token,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)["usage"]
    assert report["target"].startswith(f"{dev.clickhouse_url}/tollgate_replay_")
    assert report["rows"] >= 3 and report["rollups_agree"] and not report["target_kept"]


def test_the_server_stops_with_dev_and_a_statement_starts_its_own(tmp_path: Path) -> None:
    first = Dev(tmp_path, tmp_path)
    chat(first, "Hello!")
    wait_for_usage(first, 1)
    url = first.clickhouse_url
    first.role.process.send_signal(signal.SIGTERM)
    assert first.role.process.wait(60) == 0
    assert running_url(server_directory(tmp_path)) is None and not ping(url)
    # dev is gone: the statement starts a server on its files for the command, and stops it.
    found = tollgate("statement", "--org", first.demo["org_id"], "--from", "2026-01-01", "--data-dir", str(tmp_path))
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["charges_micros"] > 0
    assert running_url(server_directory(tmp_path)) is None


def test_a_killed_dev_leaves_no_server_behind(tmp_path: Path) -> None:
    first = Dev(tmp_path, tmp_path)
    url = first.clickhouse_url
    first.role.kill()  # SIGKILL: no shutdown code of dev runs
    deadline = time.monotonic() + 30
    while running_url(server_directory(tmp_path)) is not None:
        assert time.monotonic() < deadline, "the ClickHouse server outlived its dev"
        time.sleep(0.2)
    assert not ping(url)
    again = Dev(tmp_path, tmp_path)  # and the next dev starts on the same files
    again.role.stop()


def test_the_usage_of_an_embedded_store_of_an_earlier_version_is_rebuilt_into_the_server(tmp_path: Path) -> None:
    before = Dev(tmp_path, tmp_path, {"TOLLGATE_DEV_CLICKHOUSE": "embedded"})
    assert "embedded in this process" in before.role.output()
    chat(before, "Hello from the embedded store")
    report = wait_for_usage(before, 1)
    before.role.stop()
    assert (tmp_path / "clickhouse").is_dir() and not server_directory(tmp_path).exists()
    after = Dev(tmp_path, tmp_path)
    try:
        assert "is no longer used" in after.role.output()
        assert wait_for_usage(after, 1)["summary"] == report["summary"]
    finally:
        after.role.stop()


def test_a_stop_while_the_server_starts_leaves_nothing_running(tmp_path: Path) -> None:
    args = ["dev", "--port", str(free_port()), "--data-dir", str(tmp_path)]
    role = Role("dev", args, {"TOLLGATE_KAFKA_BOOTSTRAP": ""}, tmp_path)
    deadline = time.monotonic() + 30
    while not (server_directory(tmp_path) / "stdout.log").exists():
        assert time.monotonic() < deadline and role.process.poll() is None, role.output()
        time.sleep(0.02)
    role.stop()
    deadline = time.monotonic() + 30
    while running_url(server_directory(tmp_path)) is not None:
        assert time.monotonic() < deadline, "a server outlived a dev stopped at its start"
        time.sleep(0.2)


def test_the_readme_admin_curls_work_with_the_platform_token(dev: Dev) -> None:
    """Create an organization, grant credits, make a key, set a plan: the README's curl lines, with
    the organization the first one made in place of ``org_...``."""
    block = readme_block('-d \'{"name": "Acme", "plan": "free"}\'').replace("http://127.0.0.1:8000", dev.base_url)
    commands = re.split(r"(?<!\\)\n", block.strip())
    env = {**os.environ, "TOLLGATE_ADMIN_TOKEN": dev_admin_token}
    outputs: list[dict[str, Any]] = []
    for command in commands:
        if outputs:
            command = command.replace("org_...", outputs[0]["id"])
        done = subprocess.run(["bash", "-e", "-c", command], capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr
        outputs.append(json.loads(done.stdout))
    created, granted, key, plan = outputs
    assert created["plan"] == "free" and granted.get("amount_micros", 25_500_000) == 25_500_000, granted
    assert key["secret"].startswith("tg_") and plan["plan"] == "pro", plan
    assert usage(dev.base_url, key["secret"])["balance"]["amount_micros"] == 25_500_000
