"""A reader no request waits on (the projector) lets the broker hold its fetches back to fill them:
under load a few fetches a second, not one per record written, each of which woke the reader's
process and the broker (eventlog/kafka.py). Readers whose delay costs correctness stay prompt."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from eventlog import Consumer, topics
from eventlog import kafka as kafka_log
from eventlog.embedded import EmbeddedLog
from eventlog.settings import Settings
from gateway.ratelimit import RateLimiter
from projections.views import TenantsView


def test_a_reader_with_a_fill_wait_asks_the_broker_to_gather_before_it_answers() -> None:
    log = kafka_log.KafkaLog("127.0.0.1:9")  # no connection is made to build a configuration
    waiting = log._consumer_config("reader", None, True, fill_wait_ms=300)
    assert waiting["fetch_max_wait_ms"] == 300
    assert waiting["fetch_min_bytes"] == kafka_log.fill_fetch_bytes_min > 1
    prompt = log._consumer_config("reader", None, True)
    assert prompt["fetch_min_bytes"] == 1  # handed each record as soon as it is there
    assert prompt["fetch_max_wait_ms"] == kafka_log.fetch_wait_ms_max


class _RecordingLog(EmbeddedLog):
    def __init__(self, path: Path) -> None:
        super().__init__(path, partitions=topics.partitions_per_topic)
        self.asked: dict[str, dict[str, Any]] = {}

    def consumer(self, topics: Sequence[str], **options: Any) -> Consumer:
        self.asked[options["client_id"]] = options
        return super().consumer(topics, **options)


def test_the_gateway_reads_other_instances_admissions_at_once(tmp_path: Path) -> None:
    """Rate limits shared by instances overshoot by what the others admit within the propagation
    delay (docs/architecture.md, "Slack"): their reader must not wait to fill its fetches."""
    log = _RecordingLog(tmp_path / "log.sqlite3")
    settings = replace(Settings(), instance_id="gw-a", projector_fill_wait_ms=321)
    limiter = RateLimiter(settings, TenantsView())
    try:
        limiter.start(log, 10)
    finally:
        limiter.stop()
        log.close()
    assert log.asked["tollgate-gateway-limits-gw-a"].get("fill_wait_ms", 0) == 0
