"""Shared fixtures. The Kafka fixture starts a real broker with compose/kafka.sh, and the ClickHouse
fixture a real ClickHouse server with compose/clickhouse.sh, each once per session (per xdist worker)
when a test first needs it: tests never skip for want of either; if one cannot start, they fail and
say why."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port_pair

repo = Path(__file__).resolve().parent.parent
kafka_script = repo / "compose" / "kafka.sh"
clickhouse_script = repo / "compose" / "clickhouse.sh"


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


@pytest.fixture(scope="session")
def clickhouse_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ClickHouse server for the session: ClickHouse's own HTTP and native servers from the
    chdb-core engine (compose/clickhouse.sh), on free ports, its data under the session's temporary
    directory, stopped at the end. TOLLGATE_TEST_CLICKHOUSE_URL points the tests at another server
    instead (a clickhouse-server of your own: http://host:8123). Tests make databases of their own."""
    given = os.environ.get("TOLLGATE_TEST_CLICKHOUSE_URL")
    if given:
        yield given.rstrip("/")
        return
    env = {
        **os.environ,
        "TOLLGATE_CLICKHOUSE_DATA": str(tmp_path_factory.mktemp("clickhouse")),
        "TOLLGATE_CLICKHOUSE_HTTP_PORT": "0",
        "TOLLGATE_CLICKHOUSE_TCP_PORT": "0",
        "TOLLGATE_PYTHON": sys.executable,
    }
    started = subprocess.run(
        ["bash", str(clickhouse_script), "start"], env=env, capture_output=True, text=True, timeout=180
    )
    if started.returncode != 0:
        pytest.fail(f"compose/clickhouse.sh start failed:\n{started.stdout}\n{started.stderr}", pytrace=False)
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(clickhouse_script), "stop"], env=env, capture_output=True, text=True, timeout=120)


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


# What `bin/test --quick` selects: no real process, no real server, no test that waits a second or more.
quick_loop_marks = "not slow and not heavy"


def pytest_configure(config: pytest.Config) -> None:
    """The inner loops (``-m "not slow"``, and ``bin/test --quick``) run property tests with fewer
    examples (tests.support.examples).

    Every ``tollgate dev`` a test starts runs its ClickHouse server on a free port (tests run side by
    side; the default, 8123, is the user's). A ClickHouse URL from the caller's shell reaches no test:
    the tests that want a server say which (the session's, above)."""
    if config.getoption("markexpr", "") in ("not slow", quick_loop_marks):
        os.environ["TOLLGATE_TEST_QUICK"] = "1"
    os.environ["TOLLGATE_DEV_CLICKHOUSE_HTTP_PORT"] = "0"
    os.environ.pop("TOLLGATE_CLICKHOUSE_URL", None)


# Real processes (tollgate dev, roles on a broker, llama.cpp's server): not in the inner loop. (tests/api,
# the schemathesis fuzz of every operation, marks itself slow.)
tiers_slow = ("e2e", "kafka", "upstream")
tiers_all_slow = (*tiers_slow, "api")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With slow tests deselected (the inner loops), the tiers whose every test is slow are not even
    imported: their modules import the SDKs, selenium and schemathesis, seconds of every worker's
    collection for tests that would be deselected anyway."""
    if "not slow" not in config.getoption("markexpr", ""):
        return None
    tests_dir = Path(__file__).resolve().parent
    if collection_path.resolve().parent == tests_dir and collection_path.name in tiers_all_slow:
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests are grouped by tier (unit, contract, http, e2e, kafka, upstream), one folder each. Everything that
    starts real processes is ``slow``; everything on the broker is ``kafka`` (and slow), so
    ``-m "not slow"`` is the inner loop and the full suite is what CI runs."""
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        tier = Path(str(item.path)).resolve().relative_to(tests_dir).parts[0]
        if tier == "kafka":
            item.add_marker(pytest.mark.kafka)
        if tier in tiers_slow or item.get_closest_marker("kafka") is not None:
            item.add_marker(pytest.mark.slow)
