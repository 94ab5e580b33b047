"""The Kafka log (kafka-python): the log of record.

- Producers are idempotent (acks=all, enable_idempotence).
- Consumers read committed data only (isolation_level=read_committed).
- A processor pairs a group consumer with a transactional producer; its input offsets are sent to
  the transaction with the consumer's group metadata (KIP-447), so a zombie member whose generation
  is stale cannot commit, and output plus offsets commit atomically.
- Every client survives a broker's death: a partition's new leader, a moved group or transaction
  coordinator and a restarted broker are found again (tests/kafka/test_broker_faults.py kills the
  leaders and the controller of a 3-node cluster under load). The settings that make it so are
  explained where they are set (``producer_settings``, ``_consumer_config``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import selectors
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import (
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    TopicAlreadyExistsError,
    UnknownBrokerIdError,
)
from kafka.partitioner.default import DefaultPartitioner
from kafka.structs import OffsetAndMetadata

try:  # kafka-python 3.x
    from kafka.net.compat import KafkaNetClient
except ImportError:  # pragma: no cover - 2.x has another client, and its sender retries on its own
    KafkaNetClient = None

from eventlog import (
    Acknowledged,
    AssignmentListener,
    Consumer,
    EventLog,
    LogError,
    LogUnavailable,
    Outgoing,
    Processor,
    Producer,
    Record,
    RecordTooLarge,
    check_record_sizes,
    partition_for,
    record_bytes_max,  # topics are created with it and every client allows it (eventlog/__init__.py)
)

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

# An idle fetch parks on the broker this long. The broker answers as soon as committed data arrives,
# so this costs no latency; a short wait (5 ms was tried) only burns broker CPU on empty fetches
# and made the end-to-end benchmark slower. Kafka's default (500): at 200 an idle stack's empty
# fetches (three consumers in a gateway alone) kept the gateway at 4.7% of a core and the broker at
# 11% with no traffic.
fetch_wait_ms_max = 500
# What a reader with a fill wait asks the broker to gather before it answers (less comes after the
# wait): about a second of a busy stack's ledger events, so that under load such a reader fetches a
# few times a second, and when idle no more often than any other reader.
fill_fetch_bytes_min = 64 * 1024
# The default 100 ms back-off after a retriable transaction error (CONCURRENT_TRANSACTIONS while the
# previous commit's markers are written) showed up as 100 ms steps in transaction latency.
retry_backoff_ms = 10
metadata_wait_s_max = 30.0
# Job results and progress are read from the start of tollgate.jobs by every gateway: a day of it
# covers the hour that finished jobs stay visible, with room for a gateway that was down.
jobs_retention_ms = 24 * 3600 * 1000
# A record is retried (to the partition's new leader, after a metadata refresh) for this long before
# its send fails; a leader election takes seconds (compose/kafka.sh fences a dead broker after 4 s).
delivery_timeout_ms = 120_000
# The back-off before reconnecting to a broker that refused or dropped a connection doubles up to this
# (kafka-python's default is 30 s): a restarted broker is used again within a second, not half a
# minute later, when it leads partitions again or coordinates a group.
reconnect_backoff_ms_max = 1000
# A call the broker cannot answer now (its group coordinator is on a killed node, say) is retried this
# long before it fails: longer than a failover (fencing after 4 s, then the new coordinator's load).
outage_wait_s_max = 60.0


if KafkaNetClient is not None:

    class _RetryingNetClient(KafkaNetClient):
        """kafka-python 3.0.12's network client for producers, with one fix: ``await_ready`` says
        "not ready" instead of raising. The sender sends each transactional request (AddPartitions,
        AddOffsets, TxnOffsetCommit, EndTxn) to the coordinator after ``await_ready``; when that raised
        (the coordinator's broker had died), the sender looked the coordinator up again but never
        queued the request again, so ``commit_transaction`` waited forever: a ledger whose
        transaction coordinator was killed stopped deciding for good. On "not ready" the sender looks
        the coordinator up and retries the request, as the Java client does. (Fixed upstream in
        kafka-python's unreleased sender rewrite, dpkp/kafka-python#3110.)"""

        def await_ready(self, node_id: Any, timeout_ms: int = 30000) -> bool:
            try:
                return bool(super().await_ready(node_id, timeout_ms=timeout_ms))
            except KafkaConnectionError:
                return False


class _CachedPartitioner(DefaultPartitioner):
    """Kafka's default partitioner, with the murmur2 of each key cached (``partition_for``): keys are
    organization ids, few and repeated, and kafka-python hashes every record's key again in pure
    Python (about 4% of a gateway's event loop at 64 clients)."""

    def partition(
        self, topic: str, key: Any, serialized_key: bytes | None, value: Any, serialized_value: Any, cluster: Any
    ) -> int:
        partitions = cluster.partitions_for_topic(topic)
        if serialized_key is None or not partitions:
            return int(super().partition(topic, key, serialized_key, value, serialized_value, cluster))
        ordered = sorted(partitions)
        return int(ordered[partition_for(serialized_key, len(ordered))])


class _LookupSelector(selectors.DefaultSelector):
    """The platform's selector, with a cheap "not registered". kafka-python 3.0's network loop
    registers a connection's socket for each wait and first asks ``get_key`` whether it is already;
    mostly it is not, and the standard selector builds that KeyError's message with ``repr(socket)``,
    a getsockname and a getpeername per wait: about a tenth of the ledger's CPU under load (py-spy,
    64 clients). The keys are kept by descriptor here as well, from what register, modify and
    unregister return, so a miss costs one dict lookup."""

    def __init__(self) -> None:
        super().__init__()
        self._keys_by_fd: dict[int, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = super().register(fileobj, events, data)
        self._keys_by_fd[key.fd] = key
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = super().modify(fileobj, events, data)
        self._keys_by_fd[key.fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        key = super().unregister(fileobj)
        self._keys_by_fd.pop(key.fd, None)
        return key

    def close(self) -> None:
        self._keys_by_fd.clear()
        super().close()

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        try:
            fd = fileobj if isinstance(fileobj, int) else int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError, OSError):
            fd = -1
        if fd < 0:  # a closed socket: the standard lookup finds it by object, or says why not
            return super().get_key(fileobj)
        key = self._keys_by_fd.get(fd)
        if key is None:
            raise KeyError(fd)
        return key


def producer_settings(client_id: str) -> dict[str, Any]:
    """What every producer shares (plain and transactional)."""
    settings: dict[str, Any] = {
        "client_id": client_id,
        # Acknowledged only once every in-sync replica has the record (at least min.insync.replicas,
        # 2 on a cluster): an acknowledged record survives its leader's death.
        "acks": "all",
        # Sequence numbers per partition: a batch retried after a leader change (the first attempt
        # may have been written) is neither duplicated nor reordered.
        "enable_idempotence": True,
        # Retriable errors (NOT_LEADER_OR_FOLLOWER, a dropped connection, NOT_ENOUGH_REPLICAS while
        # the ISR shrinks) are retried without limit within delivery_timeout_ms; each one that says
        # the metadata is stale refreshes it first, so the retry goes to the new leader.
        "retries": 2**31 - 1,
        "delivery_timeout_ms": delivery_timeout_ms,
        "reconnect_backoff_max_ms": reconnect_backoff_ms_max,
        "linger_ms": 0,  # a request waits on what this sends: never hold it back; load batches anyway
        "partitioner": _CachedPartitioner(),
        "max_request_size": record_bytes_max,
        "selector": _LookupSelector,
        # kafka-python's own metrics (sensors recorded on every request and batch) are read by
        # nothing here (Tollgate's are eventlog/metrics.py): off, they cost no CPU per record.
        "metrics_enabled": False,
    }
    if KafkaNetClient is not None:
        settings["kafka_client"] = _RetryingNetClient
    return settings


class KafkaLog(EventLog):
    def __init__(self, bootstrap: str, partitions: int = 4) -> None:
        self.bootstrap = bootstrap
        self.partitions = partitions
        # Clients made here and not closed yet: close() closes them, so that none keeps polling (and
        # logging connection errors from its threads) after the broker has gone.
        self._open: list[Any] = []

    def _opened(self, client: Any) -> Any:
        self._open.append(client)
        client.on_close = lambda: self._open.remove(client) if client in self._open else None
        return client

    def ensure_topics(self, topics: Sequence[str]) -> None:
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="tollgate-admin", selector=_LookupSelector)
        try:
            existing = set(admin.list_topics())
            missing = [t for t in topics if t not in existing]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):  # another role created it first
                    admin.create_topics([self._new_topic(t) for t in missing])
        finally:
            admin.close()

    def _new_topic(self, name: str) -> NewTopic:
        configs = {"max.message.bytes": str(record_bytes_max)}
        if name == "tollgate.jobs":
            configs["retention.ms"] = str(jobs_retention_ms)
        if name == "tollgate.commands":
            # The ledger decides each command as of the moment the broker took it (not a producer's
            # clock, not its own reading time): a worker's capture appended in time counts as in time.
            configs["message.timestamp.type"] = "LogAppendTime"
        # The broker's default replication factor and min.insync.replicas (compose/kafka.sh: 1 on a
        # single node; 3 and 2 on a cluster, where acks=all then means two replicas have each record).
        return NewTopic(name=name, num_partitions=self.partitions, replication_factor=-1, topic_configs=configs)

    def producer(self, client_id: str) -> Producer:
        return self._opened(
            _KafkaProducer(KafkaProducer(bootstrap_servers=self.bootstrap, **producer_settings(client_id)))
        )

    def _consumer_config(
        self, client_id: str, group: str | None, from_beginning: bool, fill_wait_ms: int = 0
    ) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.bootstrap,
            "client_id": client_id,
            "group_id": group,
            # Static membership (KIP-345): a role restarted under the same instance id takes its
            # partitions back without a rebalance. Rebalances in quick succession were seen to hang
            # kafka-python 3.0.12 members at full CPU (a restarted worker in the test suite).
            "group_instance_id": client_id if group is not None else None,
            "isolation_level": "read_committed",
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest" if from_beginning else "latest",
            # A reader no request waits on lets the broker hold its fetch until it is full or
            # fill_wait_ms has passed: under load that is one fetch (and one wake-up of this process
            # and the broker) per interval instead of one per record written.
            "fetch_min_bytes": fill_fetch_bytes_min if fill_wait_ms else 1,
            "fetch_max_wait_ms": fill_wait_ms or fetch_wait_ms_max,
            "max_partition_fetch_bytes": record_bytes_max,
            # A fetch from a dead leader fails its connection, which refreshes the metadata: the next
            # fetch goes to the new leader, from the same position. A group coordinator that moved
            # is found again (FindCoordinator); static members keep their partitions meanwhile.
            "reconnect_backoff_max_ms": reconnect_backoff_ms_max,
            "selector": _LookupSelector,
            "metrics_enabled": False,  # as producer_settings says
        }

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
        consumer = KafkaConsumer(**self._consumer_config(client_id, group, from_beginning, fill_wait_ms))
        if group is not None:
            _await_metadata(consumer, topics)
            if on_assigned is not None:
                consumer.subscribe(list(topics), listener=_Listener(on_assigned))
            else:
                consumer.subscribe(list(topics))
        else:
            consumer.assign(
                [
                    TopicPartition(topic, p)
                    for topic in topics
                    for p in (partitions if partitions is not None else range(self.partitions))
                ]
            )
            if start_ms is not None:
                assigned = list(consumer.assignment())
                found = consumer.offsets_for_times(dict.fromkeys(assigned, start_ms))
                ends = consumer.end_offsets(assigned)
                for tp in assigned:
                    at = found.get(tp)
                    consumer.seek(tp, at.offset if at is not None else ends[tp])
            elif from_beginning:
                consumer.seek_to_beginning()
            else:
                consumer.seek_to_end()
        return self._opened(_KafkaConsumer(consumer))

    def processor(
        self, topics: Sequence[str], *, group: str, transactional_id: str, on_assigned: AssignmentListener
    ) -> Processor:
        consumer = KafkaConsumer(**self._consumer_config(transactional_id, group, True))
        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap,
            # A coordinator that moved (NOT_COORDINATOR, or its broker died) is looked up again and
            # the transactional request retried (see _RetryingNetClient); a transaction that cannot
            # complete raises from commit_transaction, and the ledger aborts and rebuilds.
            transactional_id=transactional_id,
            retry_backoff_ms=retry_backoff_ms,
            **producer_settings(transactional_id),
        )
        producer.init_transactions()
        _await_metadata(consumer, topics)
        processor = _KafkaProcessor(consumer, producer)
        consumer.subscribe(list(topics), listener=_Listener(on_assigned, kept=processor.keep_uncommitted))
        return self._opened(processor)

    def close(self) -> None:
        """Close every client made here that is still open (each also closes on its own)."""
        for client in list(self._open):
            with contextlib.suppress(Exception):  # a fenced or broken client still lets go of its threads
                client.close()
        self._open.clear()


def _await_metadata(consumer: KafkaConsumer, topics: Sequence[str]) -> None:
    """Know every topic's partitions before joining a group. A member that joins first assigns
    itself nothing and must rebalance again at once; with kafka-python 3.0.12 that second
    rebalance was seen to hang (the restarted ledger in tests/test_kafka_e2e.py)."""
    deadline = time.monotonic() + metadata_wait_s_max
    for topic in topics:
        while not consumer.partitions_for_topic(topic):
            if time.monotonic() > deadline:
                raise LogError(f"no metadata for topic {topic!r} after {metadata_wait_s_max}s; is the broker up?")
            time.sleep(0.05)


class _Listener(ConsumerRebalanceListener):
    def __init__(
        self, on_assigned: AssignmentListener, kept: Callable[[set[tuple[str, int]]], None] | None = None
    ) -> None:
        self._on_assigned = on_assigned
        self._kept = kept

    def on_partitions_revoked(self, revoked: Any) -> None:
        """Nothing to do before the rebalance: what was polled is sorted out once the assignment is known."""

    def on_partitions_assigned(self, assigned: Any) -> None:
        # kafka-python keeps the position of a partition a member still owns after a rebalance; one
        # it lost is read by its new owner from the committed position. A processor that polled and
        # has not committed yet (a ledger gathering a batch: ledger/role.py) must not commit the
        # positions of partitions it lost.
        if self._kept is not None:
            self._kept({(tp.topic, tp.partition) for tp in assigned})
        self._on_assigned({tp.partition for tp in assigned})


def _records(batches: dict[Any, list[Any]]) -> list[Record]:
    return [
        Record(r.topic, r.partition, r.offset, r.key or b"", r.value or b"", r.timestamp)
        for records in batches.values()
        for r in records
    ]


class _KafkaProducer(Producer):
    def __init__(self, producer: KafkaProducer) -> None:
        self._producer = producer
        self.on_close: Any = None

    def send(self, records: Sequence[Outgoing]) -> None:
        # Checked first, so that a call appends all its records or none (kafka-python would raise
        # MessageSizeTooLargeError at the big one, after sending those before it).
        check_record_sizes(records)
        for topic, key, value in records:
            self._producer.send(topic, value=value, key=key.encode())

    def send_acknowledged(self, records: Sequence[Outgoing], on_done: Acknowledged) -> None:
        check_record_sizes(records)
        if not records:
            on_done(None)
            return
        waiting = [len(records)]
        lock = threading.Lock()
        failed: list[BaseException] = []

        def settle(error: BaseException | None) -> None:
            if isinstance(error, MessageSizeTooLargeError | RecordListTooLargeError):  # the broker's own check
                error = RecordTooLarge("a topic")
            with lock:
                if error is not None and not failed:
                    failed.append(error)
                waiting[0] -= 1
                last = waiting[0] == 0
            if last:
                on_done(failed[0] if failed else None)

        for topic, key, value in records:
            future = self._producer.send(topic, value=value, key=key.encode())
            future.add_callback(lambda _: settle(None))
            future.add_errback(settle)

    def send_in_turn(
        self, first: Sequence[Outgoing], then: Sequence[Outgoing], on_failed: Callable[[BaseException], None]
    ) -> None:
        # ``then`` goes out from kafka-python's sender thread (the acknowledgement's callback), where a
        # send must not wait: kafka-python's send waits only for the metadata of a topic it does not
        # know, which only that thread fetches. So that metadata is fetched here, first.
        for topic in {record.topic for record in then}:
            self._producer.partitions_for(topic)
        super().send_in_turn(first, then, on_failed)

    def _send_written_turn(self, then: Sequence[Outgoing], on_failed: Callable[[BaseException], None]) -> None:
        # Should the metadata be gone by then (a broker fault), from a thread of its own instead.
        cluster = self._producer._metadata
        if all(cluster.partitions_for_topic(record.topic) is not None for record in then):
            super()._send_written_turn(then, on_failed)
        else:
            threading.Thread(
                target=super()._send_written_turn, args=(then, on_failed), name="send-in-turn", daemon=True
            ).start()

    def flush(self, timeout_s: float) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self) -> None:
        self._producer.close(timeout=5)
        if self.on_close is not None:
            self.on_close()


def _log_failed_commit(offsets: Mapping[TopicPartition, OffsetAndMetadata], result: object) -> None:
    if isinstance(result, Exception):
        logger.warning("an offset commit failed (a later one covers it): %r", result)


class _KafkaConsumer(Consumer):
    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = consumer
        self.on_close: Any = None

    def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
        assert max_records > 0, "every read takes a limit"
        return _records(self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records))

    def commit(self, positions: Mapping[tuple[str, int], int] | None = None, wait: bool = True) -> None:
        # A waited commit goes to the group's coordinator, which a failover moves: waited out, not raised.
        if positions is None:
            _through_outage(self._consumer.commit, "offset commit")
            return
        assigned = self._consumer.assignment()
        offsets = {
            TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
            for (topic, partition), offset in positions.items()
            if TopicPartition(topic, partition) in assigned  # a revoked partition is another member's now
        }
        if offsets and wait:
            _through_outage(functools.partial(self._consumer.commit, offsets), "offset commit")
        elif offsets:
            self._consumer.commit_async(offsets, callback=_log_failed_commit)

    def caught_up(self) -> bool:
        assigned = self._consumer.assignment()
        if not assigned:
            return False
        try:
            ends = self._consumer.end_offsets(list(assigned))
        except Exception as error:
            if _retriable(error):  # the broker cannot say now: not known to be caught up
                return False
            raise
        return all(self._consumer.position(tp) >= ends[tp] for tp in assigned)

    def lag(self) -> int:
        return sum(self.lags().values())

    def lags(self) -> dict[tuple[str, int], int]:
        return _lags(self._consumer)

    def close(self) -> None:
        self._consumer.close(autocommit=False)
        if self.on_close is not None:
            self.on_close()


class _KafkaProcessor(Processor):
    def __init__(self, consumer: KafkaConsumer, producer: KafkaProducer) -> None:
        self._consumer = consumer
        self._producer = producer
        self.on_close: Any = None
        self._uncommitted: dict[TopicPartition, int] = {}

    def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
        assert max_records > 0, "every read takes a limit"
        records = _records(self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records))
        for record in records:
            self._uncommitted[TopicPartition(record.topic, record.partition)] = record.offset + 1
        return records

    def keep_uncommitted(self, owned: set[tuple[str, int]]) -> None:
        """Forget the positions polled in partitions this member no longer owns (a rebalance)."""
        for tp in list(self._uncommitted):
            if (tp.topic, tp.partition) not in owned:
                del self._uncommitted[tp]

    def commit_transaction(
        self, outputs: Sequence[Outgoing], positions: Mapping[tuple[str, int], int] | None = None
    ) -> None:
        offsets = (
            dict(self._uncommitted)
            if positions is None
            else {TopicPartition(topic, partition): offset for (topic, partition), offset in positions.items()}
        )
        if not outputs and not offsets:
            return
        check_record_sizes(outputs)  # before the transaction begins: nothing of it is sent
        started = time.perf_counter()
        self._producer.begin_transaction()
        for topic, key, value in outputs:
            self._producer.send(topic, value=value, key=key.encode())
        if offsets:
            self._producer.send_offsets_to_transaction(
                {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()},
                self._consumer.group_metadata(),
            )
        self._producer.commit_transaction()
        for tp, offset in offsets.items():
            if self._uncommitted.get(tp, -1) <= offset:
                self._uncommitted.pop(tp, None)
        logger.debug("transaction of %d records in %.1f ms", len(outputs), (time.perf_counter() - started) * 1000)

    def abort_transaction(self) -> None:
        try:
            self._producer.abort_transaction()
        except Exception:  # not in a transaction: nothing to abort
            logger.debug("abort with no open transaction", exc_info=True)
        for tp in list(self._uncommitted):
            # The group's coordinator may be the broker whose failure aborted the transaction: wait
            # for its successor rather than let the role die (and lose its partitions' progress).
            committed = _through_outage(functools.partial(self._consumer.committed, tp), f"committed offset of {tp}")
            if committed is None:
                self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)
        self._uncommitted.clear()

    def lags(self) -> dict[tuple[str, int], int]:
        return _lags(self._consumer)

    def close(self) -> None:
        try:
            self._consumer.close(autocommit=False)
            self._producer.close(timeout=5)
        finally:
            if self.on_close is not None:
                self.on_close()


def _retriable(error: BaseException) -> bool:
    # kafka-python does not mark UnknownBrokerIdError retriable, but during a failover it is: a request
    # addressed to a node the refreshed metadata no longer lists (killed a moment ago). A partition-end
    # lookup for the lag gauge raised it in tests/kafka/test_broker_faults.py and, not retried, ended a
    # gateway's history follower, so its balances and jobs stopped for good.
    if isinstance(error, UnknownBrokerIdError):
        return True
    return isinstance(error, KafkaError) and bool(getattr(error, "retriable", False))


def _through_outage(call: Callable[[], _T], what: str) -> _T:
    """``call()``, retried while the broker cannot answer it (a retriable error: a refused connection,
    no coordinator yet), for at most ``outage_wait_s_max``; then LogUnavailable."""
    deadline = time.monotonic() + outage_wait_s_max
    backoff_s = 0.1
    while True:
        try:
            return call()
        except Exception as error:
            if not _retriable(error):
                raise
            if time.monotonic() >= deadline:
                waited = f"the broker did not answer for {outage_wait_s_max:.0f}s"
                raise LogUnavailable(f"{what}: {waited} ({error!r})") from error
            logger.warning("%s: %r; retrying in %.1f s", what, error, backoff_s)
            time.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, 2.0)


def _lags(consumer: KafkaConsumer) -> dict[tuple[str, int], int]:
    """Offsets left per assigned partition: the broker's end (the last stable offset, for a
    read_committed consumer) less the position. LogUnavailable while the broker cannot say (a gauge
    is not worth waiting for)."""
    assigned = list(consumer.assignment())
    try:
        ends = consumer.end_offsets(assigned) if assigned else {}
    except Exception as error:
        if _retriable(error):
            raise LogUnavailable(f"partition ends: {error!r}") from error
        raise
    return {(tp.topic, tp.partition): max(ends[tp] - consumer.position(tp), 0) for tp in assigned}
