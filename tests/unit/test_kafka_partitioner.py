"""The partitioner of every Tollgate producer (eventlog/kafka.py ``_CachedPartitioner``): Kafka's
default placement of a key (murmur2), with each key's hash cached, so records land where any Kafka
client, and the embedded log (``partition_for``), would put them."""

from __future__ import annotations

from kafka.partitioner.default import DefaultPartitioner

from eventlog import kafka as kafka_log
from eventlog import partition_for


class _Cluster:
    def __init__(self, partitions: set[int], available: set[int] | None = None) -> None:
        self._partitions = partitions
        self._available = partitions if available is None else available

    def topics(self) -> set[str]:
        return {"t"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return self._partitions

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self._available


def test_a_key_lands_where_kafka_default_partitioner_puts_it() -> None:
    cached, default = kafka_log._CachedPartitioner(), DefaultPartitioner()
    for count in (1, 2, 3, 4, 7, 12):
        cluster = _Cluster(set(range(count)), available={0})  # placement by key ignores availability
        for key in [b"", b"org", b"org_0001", "организация".encode(), *(f"org-{n}".encode() for n in range(200))]:
            expected = default.partition("t", None, key, None, b"v", cluster)
            assert cached.partition("t", None, key, None, b"v", cluster) == expected == partition_for(key, count)


def test_a_record_without_a_key_goes_to_an_available_partition() -> None:
    cluster = _Cluster({0, 1, 2, 3}, available={2})
    assert {kafka_log._CachedPartitioner().partition("t", None, None, None, b"v", cluster) for _ in range(20)} == {2}


def test_every_producer_uses_it() -> None:
    assert isinstance(kafka_log.producer_settings("p")["partitioner"], kafka_log._CachedPartitioner)
