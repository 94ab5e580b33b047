"""The embedded log: one SQLite file, for `tollgate dev` and for a newcomer's laptop.

One process owns the file. A transaction is one SQLite transaction, so output records and input
positions become visible together, which is the same exactly-once contract the Kafka log gives.
Partitions follow Kafka's partitioner. A group has a single member, which owns every partition.
Transactional ids are accepted and not needed: within one process there is no zombie to fence.
Records are refused over the same size limit as Kafka's (``eventlog.record_value_bytes_max``).

Producers' appends are group-committed: ``send`` hands its records to a flusher thread and returns at
once (an event loop never waits on SQLite); the flusher writes whatever has gathered since its last
write in one SQLite transaction, in the order it was handed over, and wakes the readers. Processor
transactions (records with their input positions) are written at once, as before.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from eventlog import (
    Acknowledged,
    AssignmentListener,
    Consumer,
    EventLog,
    LogError,
    Outgoing,
    Processor,
    Producer,
    Record,
    check_record_sizes,
    partition_for,
)

_schema = """
CREATE TABLE IF NOT EXISTS records (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    key BLOB NOT NULL, value BLOB NOT NULL, timestamp_ms INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_offsets (
    grp TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, partition)
) WITHOUT ROWID;
"""

TopicPartition = tuple[str, int]
pending_submissions_max = 10_000  # submissions waiting for the flusher; past it, a producer writes its own
logger = logging.getLogger(__name__)


class EmbeddedLog(EventLog):
    def __init__(self, path: Path, partitions: int = 4, durable_fsync: bool = False) -> None:
        self.partitions = partitions
        path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._connection.execute("PRAGMA journal_mode=WAL")
        # NORMAL survives a killed process; FULL also survives power loss, at an fsync per commit.
        self._connection.execute(f"PRAGMA synchronous={'FULL' if durable_fsync else 'NORMAL'}")
        self._connection.executescript(_schema)
        self._lock = threading.RLock()
        # Readers waiting for new records, each with the topics it reads: an append wakes only those
        # that read one of its topics (waking every reader on every append was a thundering herd
        # that cost a sixth of the CPU of `tollgate dev` under load).
        self._readers: list[tuple[frozenset[str], threading.Event]] = []
        self._end_offsets: dict[TopicPartition, int] = {
            (topic, partition): end
            for topic, partition, end in self._connection.execute(
                "SELECT topic, partition, MAX(offset) + 1 FROM records GROUP BY topic, partition"
            )
        }
        self._closed = False
        # Group commit: records handed over by producers, in order, with who waits for them.
        self._pending: list[tuple[Sequence[Outgoing], Acknowledged | None]] = []
        self._pending_lock = threading.Lock()
        self._pending_added = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="embedded-log-flush", daemon=True)
        self._flusher.start()

    # --- group commit ---

    def submit(self, records: Sequence[Outgoing], on_done: Acknowledged | None = None) -> None:
        """Append soon, in order with every other submission; ``on_done`` once written. A record
        over the limit raises here, as Kafka's producer does, rather than fail the flusher's whole
        batch (every other producer's records with it)."""
        check_record_sizes(records)
        with self._pending_lock:
            if self._closed:
                raise LogError("the embedded log is closed")
            full = len(self._pending) >= pending_submissions_max
        if full:
            self.flush_pending()  # a bound, not a queue: past it, the caller writes what waits
        with self._pending_lock:
            self._pending.append((records, on_done))
        self._pending_added.set()

    def flush_pending(self) -> None:
        """Write everything submitted so far (one SQLite transaction) and tell who waits."""
        with self._pending_lock:
            batch, self._pending = self._pending, []
        if not batch:
            return
        records = [record for submitted, _ in batch for record in submitted]
        error: BaseException | None = None
        try:
            self.append(records)
        except BaseException as failed:
            error = failed
        for _, on_done in batch:
            if on_done is not None:
                on_done(error)

    def _flush_loop(self) -> None:
        while True:
            self._pending_added.wait()
            self._pending_added.clear()
            if self._closed and not self._pending:
                return
            try:
                self.flush_pending()
            except Exception:
                logger.exception("the embedded log could not write submitted records")

    # --- used by the clients below ---

    def append(
        self, records: Sequence[Outgoing], group: str | None = None, positions: dict[TopicPartition, int] | None = None
    ) -> None:
        now_ms = int(time.time() * 1000)
        with self._lock:
            if self._closed:
                raise LogError("the embedded log is closed")
            rows = []
            pending_ends: dict[TopicPartition, int] = {}
            for topic, key, value in records:
                key_bytes = key.encode()
                partition = partition_for(key_bytes, self.partitions)
                tp = (topic, partition)
                offset = pending_ends.get(tp, self._end_offsets.get(tp, 0))
                pending_ends[tp] = offset + 1
                rows.append((topic, partition, offset, key_bytes, value, now_ms))
            cursor = self._connection.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                cursor.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)", rows)
                if group is not None and positions:
                    cursor.executemany(
                        "INSERT INTO group_offsets VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (grp, topic, partition) DO UPDATE SET offset = excluded.offset",
                        [(group, topic, partition, offset) for (topic, partition), offset in positions.items()],
                    )
                cursor.execute("COMMIT")
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            self._end_offsets.update(pending_ends)
            appended = {topic for topic, _ in pending_ends}
            for topics, woken in self._readers:
                if not topics.isdisjoint(appended):
                    woken.set()

    def read(self, positions: dict[TopicPartition, int], max_records: int, timeout_ms: int) -> list[Record]:
        deadline = time.monotonic() + timeout_ms / 1000
        topics = frozenset(topic for topic, _ in positions)
        woken = threading.Event()
        while True:
            with self._lock:
                records = self._read_now(positions, max_records)
                remaining = deadline - time.monotonic()
                if records or remaining <= 0 or self._closed:
                    return records
                woken.clear()
                self._readers.append((topics, woken))
            try:
                woken.wait(remaining)
            finally:
                with self._lock:
                    self._readers.remove((topics, woken))

    def _read_now(self, positions: dict[TopicPartition, int], max_records: int) -> list[Record]:
        records: list[Record] = []
        for (topic, partition), position in positions.items():
            if len(records) >= max_records:
                break
            if self._end_offsets.get((topic, partition), 0) <= position:
                continue
            rows = self._connection.execute(
                "SELECT offset, key, value, timestamp_ms FROM records "
                "WHERE topic = ? AND partition = ? AND offset >= ? ORDER BY offset LIMIT ?",
                (topic, partition, position, max_records - len(records)),
            ).fetchall()
            records.extend(Record(topic, partition, offset, key, value, ts) for offset, key, value, ts in rows)
        return records

    def end_offset(self, tp: TopicPartition) -> int:
        with self._lock:
            return self._end_offsets.get(tp, 0)

    def offset_for_time(self, tp: TopicPartition, start_ms: int) -> int:
        """The first offset stamped at or after ``start_ms`` (the end offset when none is)."""
        with self._lock:
            row = self._connection.execute(
                "SELECT MIN(offset) FROM records WHERE topic = ? AND partition = ? AND timestamp_ms >= ?",
                (tp[0], tp[1], start_ms),
            ).fetchone()
            return int(row[0]) if row and row[0] is not None else self._end_offsets.get(tp, 0)

    def committed(self, group: str, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        with self._lock:
            found = {
                (topic, partition): offset
                for topic, partition, offset in self._connection.execute(
                    "SELECT topic, partition, offset FROM group_offsets WHERE grp = ?", (group,)
                )
            }
        return {tp: found.get(tp, 0) for tp in tps}

    # --- EventLog ---

    def ensure_topics(self, topics: Sequence[str]) -> None:
        """Topics exist implicitly in the embedded log."""

    def producer(self, client_id: str) -> Producer:
        return _EmbeddedProducer(self)

    def consumer(
        self,
        topics: Sequence[str],
        *,
        client_id: str,
        group: str | None = None,
        from_beginning: bool = True,
        partitions: Sequence[int] | None = None,
        start_ms: int | None = None,
        on_assigned: AssignmentListener | None = None,
        fill_wait_ms: int = 0,
    ) -> Consumer:
        # fill_wait_ms is not used: a read here is a query of one process's SQLite, with no round
        # trip to save.
        tps = [
            (topic, p) for topic in topics for p in (partitions if partitions is not None else range(self.partitions))
        ]
        if group is not None:
            positions = self.committed(group, tps)
            if on_assigned is not None:
                on_assigned(set(partitions if partitions is not None else range(self.partitions)))
        elif start_ms is not None:
            positions = {tp: self.offset_for_time(tp, start_ms) for tp in tps}
        elif from_beginning:
            positions = dict.fromkeys(tps, 0)
        else:
            positions = {tp: self.end_offset(tp) for tp in tps}
        return _EmbeddedConsumer(self, positions, group)

    def processor(
        self, topics: Sequence[str], *, group: str, transactional_id: str, on_assigned: AssignmentListener
    ) -> Processor:
        consumer = _EmbeddedConsumer(
            self, self.committed(group, [(t, p) for t in topics for p in range(self.partitions)]), group
        )
        on_assigned(set(range(self.partitions)))
        return _EmbeddedProcessor(self, consumer, group)

    def close(self) -> None:
        self.flush_pending()
        with self._pending_lock:
            self._closed = True
        self._pending_added.set()
        self._flusher.join(timeout=5)
        with self._lock:
            for _, woken in self._readers:
                woken.set()
            self._connection.close()


class _EmbeddedProducer(Producer):
    ordered_across_topics = True  # a send is written whole, in its order, in one SQLite transaction

    def __init__(self, log: EmbeddedLog) -> None:
        self._log = log

    def send(self, records: Sequence[Outgoing]) -> None:
        self._log.submit(records)

    def send_acknowledged(self, records: Sequence[Outgoing], on_done: Acknowledged) -> None:
        self._log.submit(records, on_done)

    def flush(self, timeout_s: float) -> None:
        self._log.flush_pending()

    def close(self) -> None:
        """Nothing to release."""


class _EmbeddedConsumer(Consumer):
    def __init__(self, log: EmbeddedLog, positions: dict[TopicPartition, int], group: str | None) -> None:
        self._log = log
        self.positions = positions
        self.committed_positions = dict(positions)
        self._group = group

    def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
        assert max_records > 0, "every read takes a limit"
        records = self._log.read(self.positions, max_records, timeout_ms)
        for record in records:
            self.positions[(record.topic, record.partition)] = record.offset + 1
        return records

    def commit(self, positions: Mapping[TopicPartition, int] | None = None, wait: bool = True) -> None:
        assert self._group is not None, "only a group consumer commits"
        committing = dict(self.positions) if positions is None else dict(positions)
        self._log.append([], self._group, committing)
        self.committed_positions.update(committing)

    def caught_up(self) -> bool:
        return all(self._log.end_offset(tp) <= position for tp, position in self.positions.items())

    def lag(self) -> int:
        return sum(self.lags().values())

    def lags(self) -> dict[TopicPartition, int]:
        return {tp: max(self._log.end_offset(tp) - position, 0) for tp, position in list(self.positions.items())}

    def close(self) -> None:
        """Nothing to release."""


class _EmbeddedProcessor(Processor):
    def __init__(self, log: EmbeddedLog, consumer: _EmbeddedConsumer, group: str) -> None:
        self._log = log
        self._consumer = consumer
        self._group = group

    def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
        return self._consumer.poll(max_records, timeout_ms)

    def commit_transaction(
        self, outputs: Sequence[Outgoing], positions: Mapping[TopicPartition, int] | None = None
    ) -> None:
        check_record_sizes(outputs)
        committing = dict(self._consumer.positions) if positions is None else dict(positions)
        self._log.append(outputs, self._group, committing)
        self._consumer.committed_positions.update(committing)

    def abort_transaction(self) -> None:
        self._consumer.positions = dict(self._consumer.committed_positions)

    def lags(self) -> dict[TopicPartition, int]:
        return self._consumer.lags()

    def close(self) -> None:
        """Nothing to release."""
