"""A broker that cannot answer for a moment (a node killed, its group coordinator moving) must not
kill a role: the calls a role cannot do without are retried through the failover, and a gauge that
cannot be measured marks the role not ready instead of raising out of its loop (a ledger died this
way in tests/kafka/test_broker_faults.py: an aborted transaction asked the dead coordinator for its
committed offsets)."""

from __future__ import annotations

import pytest
from kafka.errors import KafkaConnectionError

from eventlog import LogUnavailable
from eventlog import kafka as kafka_log
from eventlog.metrics import LagReporter, Metrics


def failing(times: int, error: Exception) -> tuple[list[int], object]:
    calls: list[int] = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "answered"

    return calls, call


def test_a_call_the_broker_refuses_is_retried_until_it_answers() -> None:
    calls, call = failing(2, KafkaConnectionError("111 ECONNREFUSED"))
    assert kafka_log._through_outage(call, "committed offset") == "answered"  # type: ignore[arg-type]
    assert len(calls) == 3


def test_a_broker_down_past_the_bound_is_log_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_log, "outage_wait_s_max", 0.05)
    calls, call = failing(1000, KafkaConnectionError("111 ECONNREFUSED"))
    with pytest.raises(LogUnavailable, match="committed offset"):
        kafka_log._through_outage(call, "committed offset")  # type: ignore[arg-type]
    assert 1 <= len(calls) < 1000


def test_an_error_a_retry_cannot_fix_is_raised_at_once() -> None:
    calls, call = failing(5, ValueError("a bug"))
    with pytest.raises(ValueError):
        kafka_log._through_outage(call, "committed offset")  # type: ignore[arg-type]
    assert len(calls) == 1


def test_a_lag_the_broker_cannot_measure_marks_the_role_not_ready() -> None:
    metrics = Metrics()
    reporter = LagReporter(metrics, "ledger", "commands")

    def unavailable() -> dict[object, int]:
        raise LogUnavailable("partition ends: KafkaConnectionError")

    reporter.tick(unavailable)  # type: ignore[arg-type]  # no exception out of the role's loop
    status = metrics.health("ledger").status(stall_s_max=60, lag_records_max=1000)
    assert status["ready"] is False


class _BrokerDown:
    """A KafkaConsumer's calls as they go while the broker is down: each asks the broker and fails."""

    def __init__(self) -> None:
        self.commits = 0

    def assignment(self) -> set[tuple[str, int]]:
        return {("tollgate.jobs", 0)}

    def end_offsets(self, partitions: object) -> dict[object, int]:
        raise KafkaConnectionError("111 ECONNREFUSED")

    def commit(self, offsets: object = None) -> None:
        self.commits += 1
        if self.commits < 3:
            raise KafkaConnectionError("111 ECONNREFUSED")


def test_a_follower_is_not_caught_up_while_the_broker_cannot_say() -> None:
    consumer = kafka_log._KafkaConsumer(_BrokerDown())
    assert consumer.caught_up() is False  # not an exception that stops the gateway's follower


def test_a_waited_offset_commit_outlasts_a_coordinators_failover() -> None:
    down = _BrokerDown()
    kafka_log._KafkaConsumer(down).commit()
    assert down.commits == 3
