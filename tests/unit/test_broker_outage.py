"""A broker that cannot answer for a moment (a node killed, its group coordinator moving) must not
kill a role: the calls a role cannot do without are retried through the failover, and a gauge that
cannot be measured marks the role not ready instead of raising out of its loop (a ledger died this
way in tests/kafka/test_broker_faults.py: an aborted transaction asked the dead coordinator for its
committed offsets)."""

from __future__ import annotations

import time

import msgspec
import pytest
from kafka.errors import KafkaConnectionError, UnknownBrokerIdError

from eventlog import LogUnavailable, Record
from eventlog import kafka as kafka_log
from eventlog.metrics import LagReporter, Metrics
from eventlog.read import Follower
from schemas.codec import encode
from tests.support import placed


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


class _BrokerLeft(_BrokerDown):
    """A partition-end lookup addressed to a node the refreshed metadata no longer lists (killed a moment
    ago): kafka-python raises UnknownBrokerIdError, which it does not mark retriable."""

    def end_offsets(self, partitions: object) -> dict[object, int]:
        raise UnknownBrokerIdError(2)


def test_a_node_that_left_the_metadata_is_a_failover_not_a_bug() -> None:
    assert kafka_log._retriable(UnknownBrokerIdError(2))
    with pytest.raises(LogUnavailable, match="partition ends"):
        kafka_log._KafkaConsumer(_BrokerLeft()).lags()


class _Batches:
    """A consumer with a record on each poll whose lag lookup raises what no one expected."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.polls = 0

    def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
        self.polls += 1
        time.sleep(0.01)
        value = encode(msgspec.structs.replace(placed, event_id=f"e{self.polls}"))
        return [Record("tollgate.ledger", 0, self.polls, b"org_a", value, 0)]

    def lags(self) -> dict[tuple[str, int], int]:
        raise self.error

    def caught_up(self) -> bool:
        return True

    def close(self) -> None:
        pass


@pytest.mark.parametrize("error", [UnknownBrokerIdError(2), RuntimeError("a bug in the gauge")])
def test_a_lag_gauge_that_raises_never_ends_the_follower_it_measures(error: Exception) -> None:
    """tests/kafka/test_broker_faults.py: the history follower's lag lookup raised UnknownBrokerIdError
    while a broker was down, the exception ended the follower's thread, and that gateway's balances and
    jobs stopped where they were (a job it then answered 404 for, a hold it still showed open)."""
    metrics = Metrics()
    folded: list[str] = []
    consumer = _Batches(error)
    reporter = LagReporter(metrics, "gateway", "history")
    follower = Follower(consumer, lambda event: folded.append(event.event_id), "follow-test", 10, 10, reporter)  # type: ignore[arg-type]
    follower.start()
    try:
        deadline = time.monotonic() + 10
        while len(folded) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert folded[:3] == ["e1", "e2", "e3"], "it goes on folding after the gauge failed"
        assert metrics.health("gateway").status(stall_s_max=60, lag_records_max=1000)["ready"] is False
    finally:
        follower.stop()
