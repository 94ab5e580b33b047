"""A ClickHouse server as a child process (``tollgate/clickhouse_server.py`` on a data directory), and
finding the one that runs on a data directory.

``tollgate dev`` starts one in ``<data dir>/clickhouse-server`` and stops it when it stops; the child
also watches dev's pid, so a dev killed by SIGKILL or a crash leaves no server behind, and it runs in
a session of its own, so a Ctrl-C in the terminal reaches dev alone (which flushes its projector into
the server before it stops the server). ``tollgate statement`` and ``tollgate replay`` find the
running server of a data directory by its lock and ports file, or start one of their own on it for
the duration of the command.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tollgate.remote import CommandError

server_script = Path(__file__).with_name("clickhouse_server.py")
host = "127.0.0.1"
start_wait_s_max = 60.0  # /ping answers 0.3-1.5 s after start on the 2-core build machine
stop_wait_s_max = 30.0  # a clean shutdown (merges stop, tables detach) before SIGKILL
log_tail_bytes_max = 4000


def server_directory(data_dir: Path) -> Path:
    """Where ``tollgate dev`` keeps its ClickHouse server's files (config, databases, logs)."""
    return data_dir / "clickhouse-server"


def _ports(directory: Path) -> dict[str, int]:
    try:
        text = (directory / "ports").read_text()
    except OSError:
        return {}
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key.strip(): int(value) for key, value in pairs if value.strip().isdigit()}


def _locked(directory: Path) -> bool:
    """A server holds ``server.lock`` (an exclusive flock) for as long as it runs on ``directory``."""
    path = directory / "server.lock"
    if not path.exists():
        return False
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def running_url(directory: Path) -> str | None:
    """The HTTP URL of the server running on ``directory``, or None when none runs there."""
    port = _ports(directory).get("http_port")
    if port is None or not _locked(directory):
        return None
    return f"http://{host}:{port}"


def ping(url: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=timeout_s) as response:
            return bytes(response.read()).startswith(b"Ok.")
    except OSError:
        return False


class ClickHouseServer:
    """One ClickHouse server on ``directory``, a child of this process, until ``stop``."""

    def __init__(self, directory: Path, http_port: int = 0, tcp_port: int = 0, log_level: str = "warning") -> None:
        self.directory = directory.resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        if running_url(self.directory) is not None:
            pid_file = self.directory / "clickhouse.pid"
            pid = pid_file.read_text().strip() if pid_file.exists() else "?"
            raise CommandError(
                f"a ClickHouse server (pid {pid}) already runs on {self.directory}: stop it first "
                f"(TOLLGATE_CLICKHOUSE_DATA={self.directory} compose/clickhouse.sh stop)"
            )
        (self.directory / "ports").unlink(missing_ok=True)  # the child writes the ports it chose
        self.log_path = self.directory / "stdout.log"
        started = time.monotonic()
        with self.log_path.open("wb") as output:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    str(server_script),
                    "--data-dir",
                    str(self.directory),
                    "--host",
                    host,
                    "--http-port",
                    str(http_port),
                    "--tcp-port",
                    str(tcp_port),
                    "--log-level",
                    log_level,
                    "--stop-timeout",
                    str(stop_wait_s_max),
                    "--parent-pid",
                    str(os.getpid()),
                ],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C goes to us; we stop the server in order
            )
        # As compose/clickhouse.sh records its server, so that its `stop` and `status` work here too.
        (self.directory / "clickhouse.pid").write_text(f"{self.process.pid}\n")
        try:
            self.url, self.tcp_port = self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        self.start_s = time.monotonic() - started

    def _wait_ready(self, started: float) -> tuple[str, int]:
        while time.monotonic() - started < start_wait_s_max:
            if self.process.poll() is not None:
                raise CommandError(
                    f"the ClickHouse server on {self.directory} exited at start ({self.process.returncode}):\n"
                    + self.log_tail()
                )
            ports = _ports(self.directory)
            if "http_port" in ports and ping(f"http://{host}:{ports['http_port']}"):
                return f"http://{host}:{ports['http_port']}", ports.get("tcp_port", 0)
            time.sleep(0.05)
        raise CommandError(
            f"the ClickHouse server on {self.directory} did not answer within {start_wait_s_max:.0f}s:\n"
            + self.log_tail()
        )

    def log_tail(self) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-log_tail_bytes_max:].decode(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), SIGKILL after ``stop_wait_s_max``; idempotent."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(stop_wait_s_max + 5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        (self.directory / "clickhouse.pid").unlink(missing_ok=True)


@contextlib.contextmanager
def server_url_for(directory: Path) -> Iterator[str]:
    """The URL of the server running on ``directory``, or of one started for the duration (on free
    ports, stopped after): a command can read a dev's usage data whether the dev runs or not."""
    url = running_url(directory)
    if url is not None:
        yield url
        return
    server = ClickHouseServer(directory)
    try:
        yield server.url
    finally:
        server.stop()
