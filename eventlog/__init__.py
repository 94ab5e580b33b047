"""The event log: the interface every role uses, with Kafka and embedded implementations beside it.

Semantics both implementations keep (and tests/test_log_contract.py checks on both):
- records are keyed; one key always lands in the same partition, in append order;
- consumers see committed data only (Kafka: read_committed);
- a processor's transaction makes its output records and its input positions visible together,
  or neither (read-process-write, exactly-once effects);
- every read takes a limit (``max_records``).
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

partition_cache_keys_max = 100_000
# The largest record either log takes, key, value and framing together: a transcription upload rides
# in its job (3 MiB of audio, as base64, in a command and then in the job), and a job's outcome
# (``JobCompleted``: its result, audio or images as base64) in one record. Kafka's topics are created
# with it and its producers use it as ``max_request_size``; the embedded log refuses the same records,
# so a result too large for Kafka is too large on a laptop too.
record_bytes_max = 8 * 1024 * 1024
# What a record may need beside its value: Kafka's batch header (61 bytes) and the record's own
# varints, timestamp and key (an organization id), with room to spare. A value within
# ``record_value_bytes_max`` is never refused, by the producer or by the broker.
record_framing_bytes_max = 4 * 1024
record_value_bytes_max = record_bytes_max - record_framing_bytes_max


class Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    timestamp_ms: int


class Outgoing(NamedTuple):
    topic: str
    key: str
    value: bytes


class LogError(RuntimeError):
    """The log could not do what was asked; the message says what to check."""


class LogUnavailable(LogError):
    """The broker could not answer (a node down, a leader or coordinator moving): the call may work
    later. A gauge skips its measurement; a role's own retries are bounded by the adapter."""


class RecordTooLarge(LogError):
    """A record whose value is over ``record_value_bytes_max``: no log takes it, however often it is
    sent. Raised by ``send`` before any record of the call is appended (the call appends all or none)."""

    def __init__(self, topic: str, value_bytes: int = 0) -> None:
        size = f"of {value_bytes:,} bytes " if value_bytes else ""
        super().__init__(
            f"a record {size}for {topic} is over the log's limit of {record_value_bytes_max:,} bytes a value"
        )
        self.topic = topic
        self.value_bytes = value_bytes


def check_record_sizes(records: Sequence[Outgoing]) -> None:
    """Raise ``RecordTooLarge`` for the first record over the limit, before anything is sent."""
    for record in records:
        if len(record.value) > record_value_bytes_max:
            raise RecordTooLarge(record.topic, len(record.value))


Acknowledged = Callable[[BaseException | None], None]


class Producer(abc.ABC):
    """Idempotent, non-transactional appends: the gateway's requests, commands and jobs, the workers'
    outcomes. Safe to call from several threads. A record appended twice (a retry after a crash)
    carries the same event id, and its readers drop the copy."""

    # Whether the records of one send land in the log in their order across topics, so that a reader
    # of the second topic acts only after the first is written. The embedded log appends a send at
    # once; Kafka orders a partition only: a record to another topic may be written first (its
    # leader was up while the first one's moved).
    ordered_across_topics = False

    @abc.abstractmethod
    def send(self, records: Sequence[Outgoing]) -> None:
        """Append without waiting (Kafka batches and retries in the background). Raises
        ``RecordTooLarge`` (and appends none of them) when a record is over the limit."""

    @abc.abstractmethod
    def send_acknowledged(self, records: Sequence[Outgoing], on_done: Acknowledged) -> None:
        """Append, and call ``on_done(None)`` once every record is durable (``on_done(error)`` if one
        could not be written). ``on_done`` may run on another thread. Raises ``RecordTooLarge`` as
        ``send`` does, before appending any."""

    def send_in_turn(
        self, first: Sequence[Outgoing], then: Sequence[Outgoing], on_failed: Callable[[BaseException], None]
    ) -> None:
        """Append ``first``, and ``then`` once ``first`` is durable, so that a reader of ``then`` acts
        only on what ``first`` wrote (a worker's job after its hold). ``then`` is sent from the thread
        that learns ``first`` was written, with no hop to the caller's: ``send`` must not block there.
        If ``first`` cannot be written (``then`` is not sent) or ``then`` cannot be sent,
        ``on_failed(error)`` runs, possibly on another thread; ``then`` is sent as ``send`` sends,
        without waiting for it. Raises ``RecordTooLarge`` before appending any record of either."""
        check_record_sizes([*first, *then])

        def written(error: BaseException | None) -> None:
            if error is None:
                self._send_written_turn(then, on_failed)
            else:
                on_failed(error)

        self.send_acknowledged(first, written)

    def _send_written_turn(self, then: Sequence[Outgoing], on_failed: Callable[[BaseException], None]) -> None:
        """``send_in_turn``'s second part, on the thread that learned the first was written."""
        try:
            self.send(then)
        except Exception as unsent:  # on a producer's thread: reported, never raised there
            on_failed(unsent)

    @abc.abstractmethod
    def flush(self, timeout_s: float) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class Consumer(abc.ABC):
    @abc.abstractmethod
    def poll(self, max_records: int, timeout_ms: int) -> list[Record]: ...

    @abc.abstractmethod
    def commit(self, positions: Mapping[tuple[str, int], int] | None = None, wait: bool = True) -> None:
        """Commit the positions after every record polled so far, or exactly ``positions``
        ((topic, partition) -> the next offset to read). Group consumers only. ``wait=False`` sends
        the commit without waiting for it (a failed one is logged; a later commit covers it): for a
        member that commits often and for whom a lost commit only means a redelivery."""

    @abc.abstractmethod
    def caught_up(self) -> bool:
        """True when every assigned partition has been read up to its last committed record."""

    @abc.abstractmethod
    def lag(self) -> int:
        """Offsets left to read up to the end of every assigned partition (an upper bound on records:
        Kafka's transaction markers take offsets too). For progress and time-left estimates."""

    @abc.abstractmethod
    def lags(self) -> dict[tuple[str, int], int]:
        """``lag`` per assigned (topic, partition), for the consumer-lag gauges. Call it from the thread
        that polls (Kafka asks the broker for the ends: about a millisecond)."""

    @abc.abstractmethod
    def close(self) -> None: ...


class Processor(abc.ABC):
    """A group consumer and a transactional producer: consume, decide, append, commit as one."""

    @abc.abstractmethod
    def poll(self, max_records: int, timeout_ms: int) -> list[Record]: ...

    @abc.abstractmethod
    def commit_transaction(
        self, outputs: Sequence[Outgoing], positions: Mapping[tuple[str, int], int] | None = None
    ) -> None:
        """Append ``outputs`` and commit input positions, atomically. The positions are those after
        every record polled so far in the partitions it owns, or when given exactly ``positions``
        ((topic, partition) -> the next offset to read; ``{}`` commits outputs alone). A rebalance
        inside ``poll`` calls the processor's ``on_assigned`` before that poll returns: what was polled
        before it in a partition kept is still to commit, and reading goes on from there; in a partition
        lost, the new owner reads it again from the committed position, and it is not committed here.
        A member that works on several records at once (a worker) commits only up to its oldest
        unfinished one."""

    @abc.abstractmethod
    def abort_transaction(self) -> None:
        """Drop uncommitted outputs and rewind to the last committed positions."""

    @abc.abstractmethod
    def lags(self) -> dict[tuple[str, int], int]:
        """The input consumer's ``Consumer.lags``."""

    @abc.abstractmethod
    def close(self) -> None: ...


AssignmentListener = Callable[[set[int]], None]


class EventLog(abc.ABC):
    partitions: int

    @abc.abstractmethod
    def ensure_topics(self, topics: Sequence[str]) -> None: ...

    @abc.abstractmethod
    def producer(self, client_id: str) -> Producer: ...

    @abc.abstractmethod
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
        """A group consumer when ``group`` is set, else one assigned ``partitions`` (default: all).
        ``start_ms`` (assigned consumers only): start at the first record stamped at or after it.
        ``on_assigned`` (group consumers only) is told the partitions this member owns.
        ``fill_wait_ms``: how long the log may hold a read back to fill it, for a reader no request
        waits on (0: hand over each record as soon as it is there)."""

    @abc.abstractmethod
    def processor(
        self,
        topics: Sequence[str],
        *,
        group: str,
        transactional_id: str,
        on_assigned: AssignmentListener,
    ) -> Processor:
        """``on_assigned`` is told the input partitions this member owns, before their records come."""

    @abc.abstractmethod
    def close(self) -> None: ...


@functools.lru_cache(maxsize=partition_cache_keys_max)
def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2 of the key), so both logs place a key alike. Keys are
    organization ids, few and repeated, and kafka-python's murmur2 is pure Python: cached."""
    from kafka.partitioner.default import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions
