"""One contract suite for the event log, run against every implementation.

Each subclass provides only a factory (and how to die in the middle of a transaction)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from eventlog import Consumer, EventLog, Outgoing, Processor, Record, RecordTooLarge, record_value_bytes_max

wait_s_max = 30.0


def poll_until(reader: Consumer | Processor, count: int, timeout_s: float = wait_s_max) -> list[Record]:
    records: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        records.extend(reader.poll(max_records=count - len(records), timeout_ms=200))
    return records


def poll_quiet(reader: Consumer | Processor, seconds: float = 1.5) -> list[Record]:
    records: list[Record] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        records.extend(reader.poll(max_records=100, timeout_ms=100))
    return records


class LogContract:
    # How long a test watches for records that must not come. The embedded log is synchronous (an
    # append is readable when it returns), so a short watch proves as much there as a long one on Kafka.
    quiet_s = 1.5

    @pytest.fixture
    def log(self) -> Iterator[EventLog]:
        raise NotImplementedError

    def die_mid_transaction(self, processor: Processor, outputs: list[Outgoing]) -> None:
        """Leave outputs appended but uncommitted, as a crash would, then abort."""
        raise NotImplementedError

    def test_a_key_keeps_its_order_in_one_partition(self, log: EventLog, unique: str) -> None:
        topic = f"t-order-{unique}"
        log.ensure_topics([topic])
        producer = log.producer("test")
        producer.send([Outgoing(topic, f"org_{i % 3}", f"{i}".encode()) for i in range(60)])
        producer.flush(10)
        consumer = log.consumer([topic], client_id="test")
        records = poll_until(consumer, 60)
        assert len(records) == 60
        for key in (b"org_0", b"org_1", b"org_2"):
            mine = [r for r in records if r.key == key]
            assert len({r.partition for r in mine}) == 1
            assert [int(r.value) for r in sorted(mine, key=lambda r: r.offset)] == [
                i for i in range(60) if f"org_{i % 3}".encode() == key
            ]
        consumer.close()
        producer.close()

    def test_every_read_takes_a_limit(self, log: EventLog, unique: str) -> None:
        topic = f"t-limit-{unique}"
        log.ensure_topics([topic])
        producer = log.producer("test")
        producer.send([Outgoing(topic, "k", b"x") for _ in range(30)])
        producer.flush(10)
        consumer = log.consumer([topic], client_id="test")
        poll_until(consumer, 1)  # let the first fetch arrive
        assert len(consumer.poll(max_records=5, timeout_ms=1000)) <= 5
        consumer.close()

    def test_caught_up_reports_the_end(self, log: EventLog, unique: str) -> None:
        topic = f"t-end-{unique}"
        log.ensure_topics([topic])
        producer = log.producer("test")
        producer.send([Outgoing(topic, "k", b"x") for _ in range(10)])
        producer.flush(10)
        consumer = log.consumer([topic], client_id="test")
        assert len(poll_until(consumer, 10)) == 10
        assert consumer.caught_up()
        consumer.close()

    @pytest.mark.heavy  # waits a second between records
    def test_a_consumer_can_start_at_a_time(self, log: EventLog, unique: str) -> None:
        """``start_ms``: the first record stamped at or after it (the rate-limit windows' last minute)."""
        topic = f"t-time-{unique}"
        log.ensure_topics([topic])
        producer = log.producer("test")
        producer.send([Outgoing(topic, f"k{i}", b"old") for i in range(8)])
        producer.flush(10)
        time.sleep(0.3)
        start_ms = int(time.time() * 1000)
        time.sleep(0.05)
        producer.send([Outgoing(topic, f"k{i}", b"new") for i in range(8)])
        producer.flush(10)
        consumer = log.consumer([topic], client_id="test", start_ms=start_ms)
        records = poll_until(consumer, 8)
        assert [r.value for r in records] == [b"new"] * 8
        assert poll_quiet(consumer, self.quiet_s) == []
        consumer.close()
        future = log.consumer([topic], client_id="test", start_ms=int(time.time() * 1000) + 60_000)
        assert poll_quiet(future, self.quiet_s) == []  # nothing stamped that late: start at the end
        future.close()
        producer.close()

    def test_lag_counts_what_is_left_to_read(self, log: EventLog, unique: str) -> None:
        topic = f"t-lag-{unique}"
        log.ensure_topics([topic])
        producer = log.producer("test")
        producer.send([Outgoing(topic, "org", f"{i}".encode()) for i in range(7)])
        producer.flush(10)
        consumer = log.consumer([topic], client_id="test")
        assert len(poll_until(consumer, 3)) == 3
        assert 4 <= consumer.lag() <= 4 + 1  # Kafka's idempotent, non-transactional appends add no markers
        poll_until(consumer, 4)
        assert consumer.lag() == 0
        consumer.close()

    def test_a_group_consumer_resumes_after_its_commit(self, log: EventLog, unique: str) -> None:
        topic, group = f"t-group-{unique}", f"g-{unique}"
        log.ensure_topics([topic])
        producer = log.producer("test")
        producer.send([Outgoing(topic, "k", f"{i}".encode()) for i in range(10)])
        producer.flush(10)
        first = log.consumer([topic], client_id="test", group=group)
        assert len(poll_until(first, 10)) == 10
        first.commit()
        first.close()
        producer.send([Outgoing(topic, "k", b"10")])
        producer.flush(10)
        second = log.consumer([topic], client_id="test", group=group)
        assert [r.value for r in poll_until(second, 1)] == [b"10"]
        assert poll_quiet(second, self.quiet_s) == []
        second.close()

    def test_a_transaction_makes_outputs_and_offsets_visible_together(self, log: EventLog, unique: str) -> None:
        source, sink, group = f"t-in-{unique}", f"t-out-{unique}", f"g-{unique}"
        log.ensure_topics([source, sink])
        producer = log.producer("test")
        producer.send([Outgoing(source, "org", f"{i}".encode()) for i in range(5)])
        producer.flush(10)
        processor = log.processor([source], group=group, transactional_id=f"tx-{unique}", on_assigned=lambda p: None)
        inputs = poll_until(processor, 5)
        assert len(inputs) == 5
        processor.commit_transaction([Outgoing(sink, "org", b"out-" + r.value) for r in inputs])
        processor.close()
        reader = log.consumer([sink], client_id="test")
        assert sorted(r.value for r in poll_until(reader, 5)) == [f"out-{i}".encode() for i in range(5)]
        reader.close()
        again = log.processor([source], group=group, transactional_id=f"tx-{unique}", on_assigned=lambda p: None)
        assert poll_quiet(again, self.quiet_s) == [], "committed inputs are never delivered again"
        again.close()

    def test_a_transaction_commits_only_the_positions_it_names(self, log: EventLog, unique: str) -> None:
        source, sink, group = f"t-in-{unique}", f"t-out-{unique}", f"g-{unique}"
        log.ensure_topics([source, sink])
        producer = log.producer("test")
        producer.send([Outgoing(source, "org", f"{i}".encode()) for i in range(5)])
        producer.flush(10)
        processor = log.processor([source], group=group, transactional_id=f"tx-{unique}", on_assigned=lambda p: None)
        inputs = sorted(poll_until(processor, 5), key=lambda r: r.offset)
        assert len(inputs) == 5
        processor.commit_transaction([Outgoing(sink, "org", b"progress")], {})  # outputs alone
        tp = (inputs[0].topic, inputs[0].partition)
        processor.commit_transaction([Outgoing(sink, "org", b"done-0-1")], {tp: inputs[2].offset})
        processor.close()
        reader = log.consumer([sink], client_id="test")
        assert sorted(r.value for r in poll_until(reader, 2)) == [b"done-0-1", b"progress"]
        reader.close()
        again = log.processor([source], group=group, transactional_id=f"tx-{unique}", on_assigned=lambda p: None)
        redelivered = poll_until(again, 3)
        assert [r.value for r in sorted(redelivered, key=lambda r: r.offset)] == [b"2", b"3", b"4"]
        again.close()

    def test_an_aborted_transaction_leaves_nothing_and_redelivers(self, log: EventLog, unique: str) -> None:
        source, sink, group = f"t-in-{unique}", f"t-out-{unique}", f"g-{unique}"
        log.ensure_topics([source, sink])
        producer = log.producer("test")
        producer.send([Outgoing(source, "org", f"{i}".encode()) for i in range(3)])
        producer.flush(10)
        assigned: list[set[int]] = []
        processor = log.processor([source], group=group, transactional_id=f"tx-{unique}", on_assigned=assigned.append)
        inputs = poll_until(processor, 3)
        assert len(inputs) == 3
        assert assigned and assigned[-1], "the processor is told which partitions it owns"
        self.die_mid_transaction(processor, [Outgoing(sink, "org", b"never")])
        redelivered = poll_until(processor, 3)
        assert sorted(r.value for r in redelivered) == sorted(r.value for r in inputs)
        processor.commit_transaction([Outgoing(sink, "org", b"once")])
        processor.close()
        reader = log.consumer([sink], client_id="test")
        assert [r.value for r in poll_until(reader, 1)] == [b"once"]
        assert poll_quiet(reader, self.quiet_s) == [], "read_committed hides aborts"
        reader.close()

    def test_a_value_over_the_record_limit_is_refused_and_none_of_its_send_appended(
        self, log: EventLog, unique: str
    ) -> None:
        """The limit is one (``record_value_bytes_max``) and both logs keep it: the largest value is
        taken (the framing allowance covers the broker's own count), one byte more raises at the send,
        before any record of that send goes out (a job's outcome and its capture go together or not)."""
        topic = f"t-size-{unique}"
        log.ensure_topics([topic])
        producer = log.producer("test")
        with pytest.raises(RecordTooLarge):
            producer.send([Outgoing(topic, "k", b"before"), Outgoing(topic, "k", b"x" * (record_value_bytes_max + 1))])
        with pytest.raises(RecordTooLarge):
            producer.send_acknowledged([Outgoing(topic, "k", b"y" * (record_value_bytes_max + 1))], lambda _: None)
        acknowledged: list[BaseException | None] = []
        producer.send_acknowledged([Outgoing(topic, "k", b"z" * record_value_bytes_max)], acknowledged.append)
        producer.flush(30)
        consumer = log.consumer([topic], client_id="test")
        records = poll_until(consumer, 1) + poll_quiet(consumer, self.quiet_s)
        assert acknowledged == [None]
        assert [len(r.value) for r in records] == [record_value_bytes_max]
        consumer.close()
        producer.close()

    def test_a_send_in_turn_appends_the_second_part_once_the_first_is_written(self, log: EventLog, unique: str) -> None:
        """A hold, then its job: the job's topic is one this producer has never sent to (on Kafka its
        metadata is unknown, and a send from the acknowledging thread waiting for it would stall that
        thread for max_block_ms). Whoever reads the job finds the hold written already."""
        holds, jobs = f"t-holds-{unique}", f"t-jobs-{unique}"
        log.ensure_topics([holds, jobs])
        producer = log.producer("test")
        failures: list[BaseException] = []
        started = time.monotonic()
        producer.send_in_turn([Outgoing(holds, "org", b"hold")], [Outgoing(jobs, "org", b"job")], failures.append)
        job_reader = log.consumer([jobs], client_id="test-jobs")
        assert [r.value for r in poll_until(job_reader, 1, timeout_s=10)] == [b"job"]
        assert time.monotonic() - started < 10
        hold_reader = log.consumer([holds], client_id="test-holds")
        assert [r.value for r in poll_until(hold_reader, 1, timeout_s=0.5)] == [b"hold"]
        assert failures == []
        job_reader.close()
        hold_reader.close()
        producer.close()

    def test_a_send_in_turn_too_large_appends_neither_part(self, log: EventLog, unique: str) -> None:
        holds, jobs = f"t-holds-{unique}", f"t-jobs-{unique}"
        log.ensure_topics([holds, jobs])
        producer = log.producer("test")
        with pytest.raises(RecordTooLarge):
            producer.send_in_turn(
                [Outgoing(holds, "org", b"hold")],
                [Outgoing(jobs, "org", b"j" * (record_value_bytes_max + 1))],
                lambda _: None,
            )
        producer.flush(30)
        reader = log.consumer([holds, jobs], client_id="test")
        assert poll_quiet(reader, self.quiet_s) == []
        reader.close()
        producer.close()


class TestEmbeddedLog(LogContract):
    quiet_s = 0.3

    @pytest.fixture
    def log(self, tmp_path: Path) -> Iterator[EventLog]:
        from eventlog.embedded import EmbeddedLog

        log = EmbeddedLog(tmp_path / "log.sqlite3")
        yield log
        log.close()

    def die_mid_transaction(self, processor: Processor, outputs: list[Outgoing]) -> None:
        processor.abort_transaction()  # a SQLite transaction that never committed leaves nothing

    def test_records_survive_reopening(self, tmp_path: Path) -> None:
        from eventlog.embedded import EmbeddedLog

        first = EmbeddedLog(tmp_path / "log.sqlite3")
        first.producer("t").send([Outgoing("t", "k", b"kept")])
        first.close()
        second = EmbeddedLog(tmp_path / "log.sqlite3")
        assert [r.value for r in poll_until(second.consumer(["t"], client_id="t"), 1)] == [b"kept"]
        second.producer("t").send([Outgoing("t", "k", b"next")])
        assert [r.offset for r in poll_until(second.consumer(["t"], client_id="t"), 2)] == [0, 1]
        second.close()


@pytest.mark.kafka
class TestKafkaLog(LogContract):
    @pytest.fixture
    def log(self, kafka_bootstrap: str) -> Iterator[EventLog]:
        from eventlog.kafka import KafkaLog

        log = KafkaLog(kafka_bootstrap)
        yield log
        log.close()  # every client a test left open (a fenced zombie too), before the broker stops

    def die_mid_transaction(self, processor: Processor, outputs: list[Outgoing]) -> None:
        producer = processor._producer  # type: ignore[attr-defined]
        producer.begin_transaction()
        for topic, key, value in outputs:
            producer.send(topic, value=value, key=key.encode())
        producer.flush()
        processor.abort_transaction()

    def test_a_rebalance_leaves_the_lost_partitions_uncommitted(self, log: EventLog, unique: str) -> None:
        """A processor that polled records and has not committed them (the ledger gathering a batch)
        when another member joins: what it polled from the partitions it keeps it commits; those it
        lost it does not (their new owner reads them), or they would be decided twice."""
        source, group = f"t-in-{unique}", f"g-{unique}"
        log.ensure_topics([source])
        producer = log.producer("test")
        sent = {f"{key}".encode() for key in range(24)}
        producer.send([Outgoing(source, f"org-{value.decode()}", value) for value in sorted(sent)])
        producer.flush(10)
        assigned: list[set[int]] = []
        first = log.processor([source], group=group, transactional_id=f"tx-a-{unique}", on_assigned=assigned.append)
        before = poll_until(first, len(sent))
        assert {r.value for r in before} == sent
        second = log.processor([source], group=group, transactional_id=f"tx-b-{unique}", on_assigned=lambda p: None)
        stop = threading.Event()
        read_by_second: list[Record] = []

        def join_and_read() -> None:  # the second member joins as it polls
            while not stop.is_set():
                read_by_second.extend(second.poll(100, 100))

        joining = threading.Thread(target=join_and_read, daemon=True)
        joining.start()
        deadline = time.monotonic() + 60
        # The first may rejoin alone before the second has joined (all four again): wait for the split.
        while not (len(assigned) >= 2 and len(assigned[-1]) < len(assigned[0])) and time.monotonic() < deadline:
            assert first.poll(len(sent), 200) == [], "a partition it keeps goes on from where it was"
        kept = assigned[-1]
        assert 0 < len(kept) < len(assigned[0]), assigned
        first.commit_transaction([])
        looker = KafkaConsumer(bootstrap_servers=log.bootstrap, group_id=group, enable_auto_commit=False)  # type: ignore[attr-defined]
        committed = {p: looker.committed(TopicPartition(source, p)) for p in range(log.partitions)}
        looker.close()
        ends = {p: 1 + max((r.offset for r in before if r.partition == p), default=-1) for p in range(log.partitions)}
        assert {p: o for p, o in committed.items() if o is not None} == {p: ends[p] for p in kept if ends[p]}
        lost = {r.value for r in before if r.partition not in kept}
        deadline = time.monotonic() + 30
        while {r.value for r in read_by_second} != lost and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        joining.join(10)
        second.close()
        first.close()
        assert {r.value for r in read_by_second} == lost, "the lost partitions are read again by their new owner"

    def test_a_zombie_cannot_commit(self, log: EventLog, unique: str) -> None:
        """Two processors with one transactional id: the newer fences the older."""
        from kafka.errors import KafkaError

        source, sink = f"t-in-{unique}", f"t-out-{unique}"
        log.ensure_topics([source, sink])
        producer = log.producer("test")
        producer.send([Outgoing(source, "org", b"1")])
        producer.flush(10)
        zombie = log.processor(
            [source], group=f"g-{unique}", transactional_id=f"tx-{unique}", on_assigned=lambda p: None
        )
        assert len(poll_until(zombie, 1)) == 1
        successor = log.processor(
            [source], group=f"g2-{unique}", transactional_id=f"tx-{unique}", on_assigned=lambda p: None
        )
        with pytest.raises(KafkaError):
            zombie.commit_transaction([Outgoing(sink, "org", b"zombie")])
        successor.close()
        reader = log.consumer([sink], client_id="test")
        assert poll_quiet(reader, self.quiet_s) == []
        reader.close()
