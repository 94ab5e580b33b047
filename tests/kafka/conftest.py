"""The 3-node cluster fixture of the broker fault tests. Like the single broker's (tests/conftest.py) it
never skips: a cluster that cannot start fails the test with compose/kafka.sh's output."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kafka.cluster import KafkaCluster, fault_figures


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    cluster = KafkaCluster(tmp_path_factory.mktemp("kafka-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The broker fault test's figures (requests, outcomes, faults, money lost), in every run's output."""
    if fault_figures:
        terminalreporter.section("broker faults")
        for line in fault_figures:
            terminalreporter.line(line)
