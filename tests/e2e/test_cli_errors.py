"""What a newcomer gets wrong on the command line gets one clear line and a non-zero exit, never a
traceback: a missing or wrong admin token, a gateway that is not there, a moment that is not one, an
organization that does not exist, a second `tollgate dev` on a data directory in use. And every
option says what it is for."""

from __future__ import annotations

import argparse
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Gateway
from tests.support import free_port
from tollgate.cli import build_parser


def tollgate(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "TOLLGATE_ADMIN_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "tollgate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**environment, **(env or {})},
    )


def one_clear_line(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    for text in expected:
        assert text in message, result.stderr


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A data directory with a log that knows one organization (with credits)."""
    root = Path(tmp_path_factory.mktemp("cli"))
    gateway = Gateway(root)
    org = gateway.organization(credits="5")
    gateway.close()
    yield root, org


@pytest.fixture
def refusing_gateway() -> Iterator[str]:
    """An HTTP server that refuses every token, as a gateway does a wrong one."""

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}})
            self.send_response(401)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            """Quiet."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_version_and_help_for_every_option() -> None:
    result = tollgate("--version")
    assert result.returncode == 0 and result.stdout.startswith("tollgate "), result
    undocumented = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not action.help and action.dest != "help":
                undocumented.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "tollgate")
    assert undocumented == []


def test_verify_against_a_gateway_without_a_token(data_dir: tuple[Path, str]) -> None:
    root, _ = data_dir
    result = tollgate("audit", "verify", "--data-dir", str(root), "--gateway", "http://127.0.0.1:9")
    one_clear_line(result, "--admin-token", "TOLLGATE_ADMIN_TOKEN")
    assert result.returncode == 2


def test_replay_against_a_gateway_without_a_token(data_dir: tuple[Path, str]) -> None:
    root, _ = data_dir
    result = tollgate("replay", "--data-dir", str(root), "--gateway", "http://127.0.0.1:9")
    one_clear_line(result, "--admin-token")
    assert result.returncode == 2


def test_a_wrong_token_is_refused_by_the_gateway(data_dir: tuple[Path, str], refusing_gateway: str) -> None:
    root, _ = data_dir
    for command in (["audit", "verify"], ["replay"]):
        result = tollgate(
            *command, "--data-dir", str(root), "--gateway", refusing_gateway, "--admin-token", "tga_wrong"
        )
        one_clear_line(result, "the gateway at", "refused the token (401)")
        assert "FAILED: read model" not in result.stdout


def test_an_unreachable_gateway(data_dir: tuple[Path, str]) -> None:
    root, _ = data_dir
    closed = f"http://127.0.0.1:{free_port()}"
    result = tollgate("audit", "verify", "--data-dir", str(root), "--gateway", closed, "--admin-token", "t")
    one_clear_line(result, "cannot reach the gateway at", closed)


def test_a_moment_that_is_not_one(data_dir: tuple[Path, str]) -> None:
    root, org = data_dir
    result = tollgate("audit", "balance", "--data-dir", str(root), "--org", org, "--at", "yesterday")
    one_clear_line(result, "--at must be an ISO 8601 date-time")
    assert result.returncode == 2


def test_an_unknown_organization_is_an_error_not_zeros(data_dir: tuple[Path, str]) -> None:
    root, org = data_dir
    known = tollgate("audit", "balance", "--data-dir", str(root), "--org", org, "--at", "2299-01-01T00:00:00Z")
    assert known.returncode == 0 and json.loads(known.stdout)["amount_micros"] == 5_000_000, known
    for command in (
        ["audit", "balance", "--at", "2299-01-01T00:00:00Z"],
        ["audit", "statement", "--from", "2026-01-01", "--to", "2026-02-01"],
        ["statement", "--from", "2026-01-01", "--to", "2026-02-01"],
    ):
        result = tollgate(*command, "--data-dir", str(root), "--org", "org_nobody")
        one_clear_line(result, "no organization 'org_nobody'")


def test_a_data_directory_without_a_log(tmp_path: Path) -> None:
    result = tollgate("audit", "verify", "--data-dir", str(tmp_path / "empty"))
    one_clear_line(result, "no embedded log at", "--data-dir")
    result = tollgate(
        "statement", "--data-dir", str(tmp_path / "empty"), "--org", "o", "--from", "2026-01-01", "--to", "2026-01-02"
    )
    one_clear_line(result, "--data-dir")


def test_a_second_dev_on_a_data_directory_in_use(tmp_path: Path) -> None:
    port = free_port()
    first = subprocess.Popen(
        [sys.executable, "-m", "tollgate", "dev", "--port", str(port), "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "dev.lock").exists() or not (tmp_path / "dev.lock").read_text().strip():
            assert first.poll() is None and time.monotonic() < deadline, "the first dev did not start"
            time.sleep(0.1)
        second = tollgate("dev", "--port", str(free_port()), "--data-dir", str(tmp_path), timeout=60)
        one_clear_line(second, "is in use by another tollgate dev", f"pid {first.pid}")
    finally:
        first.terminate()
        first.wait(30)
