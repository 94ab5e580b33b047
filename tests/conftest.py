"""Shared fixtures. The Kafka fixture starts a real broker with compose/kafka.sh: tests of the Kafka
path never skip; if the broker cannot start, they fail and say why."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

repo = Path(__file__).resolve().parent.parent
kafka_script = repo / "compose" / "kafka.sh"


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


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real single-node KRaft broker for the session (or TOLLGATE_TEST_KAFKA_BOOTSTRAP if set)."""
    given = os.environ.get("TOLLGATE_TEST_KAFKA_BOOTSTRAP")
    if given:
        yield given
        return
    # A free port: a broker someone else left running must never stand in for ours.
    port = int(os.environ.get("TOLLGATE_TEST_KAFKA_PORT", "0")) or free_port_pair()
    env = {
        **os.environ,
        "TOLLGATE_KAFKA_PORT": str(port),
        "TOLLGATE_KAFKA_DATA": str(tmp_path_factory.mktemp("kafka")),
    }
    started = subprocess.run(["bash", str(kafka_script), "start"], env=env, capture_output=True, text=True)
    if started.returncode != 0:
        pytest.fail(f"compose/kafka.sh start failed:\n{started.stdout}\n{started.stderr}", pytrace=False)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run(["bash", str(kafka_script), "stop"], env=env, capture_output=True, text=True)


@pytest.fixture(scope="session", autouse=True)
def ledger_signing_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One ledger key for every role the suite starts, so that a shared broker's ledger topic is
    signed by one key (and no key lands in the working tree's .tollgate)."""
    path = tmp_path_factory.mktemp("keys") / "ledger-signing-key.pem"
    previous = os.environ.get("TOLLGATE_LEDGER_SIGNING_KEY_FILE")
    os.environ["TOLLGATE_LEDGER_SIGNING_KEY_FILE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("TOLLGATE_LEDGER_SIGNING_KEY_FILE", None)
    else:
        os.environ["TOLLGATE_LEDGER_SIGNING_KEY_FILE"] = previous


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]
