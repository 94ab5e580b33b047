"""Worker role wiring and failure handling that the end-to-end tests cannot reach."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
import uvloop

from eventlog import AssignmentListener, Consumer, Outgoing, Record, loops, record_value_bytes_max, topics
from eventlog.embedded import EmbeddedLog
from eventlog.settings import Settings
from schemas.events import JobQueued
from schemas.units import Units
from workers.backends import AUDIO, Backend, JobContext, JobOutput, SimulatedChatBackend
from workers.fair import FairSlots
from workers.role import WorkerRole, _Running, worker_roles


def _job(payload: msgspec.Raw) -> JobQueued:
    return JobQueued(
        event_id="e1",
        occurred_at=datetime(2026, 11, 1, tzinfo=UTC),
        org_id="org_a",
        job_id="job_1",
        request_id="req_1",
        hold_id="hold_1",
        token_id="tok",
        model="sim-chat-small",
        endpoint="/v1/chat/completions",
        pool="default",
        payload=payload,
        accepted_at=datetime(2026, 11, 1, tzinfo=UTC),
    )


def test_a_job_thread_that_crashes_stops_heartbeating_its_lease(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log.sqlite3", partitions=topics.partitions_per_topic)
    worker = WorkerRole(log, Settings(), SimulatedChatBackend(0))
    job = _job(payload=msgspec.Raw(b"{not json"))  # decoding it raises inside the job thread
    running = _Running(job, Record(topic="t", partition=0, offset=0, key=b"org_a", value=b"", timestamp_ms=0))
    running.run_id = "job_1/run"
    worker._running[job.job_id] = running

    async def execute() -> None:
        worker._slots = FairSlots(1, 1)
        await worker._execute(running)

    asyncio.run(execute())

    assert running.stop.is_set(), "the crashed run is marked stopped"
    assert worker._heartbeats() == [], "so no heartbeat renews its lease: the ledger's expiry settles the hold"
    assert job.job_id in worker._running, "and its record stays unfinished, so a restart redelivers it"
    log.close()


def test_a_job_cancelled_before_its_run_began_gets_no_outcome_from_the_worker(tmp_path: Path) -> None:
    """A redelivered job whose cancel is in the same batch: its earlier run (on a worker killed before
    committing its position) may have completed and been charged, so a cancellation from here would
    give the job a second outcome. The ledger settles the hold (released at the cancel when no run held
    it, else by the run that held it or when its lease runs out)."""
    log = EmbeddedLog(tmp_path / "log.sqlite3", partitions=topics.partitions_per_topic)
    worker = WorkerRole(log, Settings(), SimulatedChatBackend(0))
    sent: list[list[Outgoing]] = []
    worker._send = sent.append  # type: ignore[method-assign,assignment]
    job = _job(payload=msgspec.Raw(b'{"messages": [{"role": "user", "content": "hi"}]}'))
    running = _Running(job, Record(topic="t", partition=0, offset=0, key=b"org_a", value=b"", timestamp_ms=0))
    running.stop_reason = "cancel"
    running.stop.set()
    assert asyncio.run(worker._attempts(running)) is None
    assert sent == [], "no lease, no JobCancelled, no release"
    log.close()


def test_each_pool_is_its_own_consumer_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = EmbeddedLog(tmp_path / "log.sqlite3", partitions=topics.partitions_per_topic)
    settings = dataclasses.replace(Settings(), worker_pools=("default", "video", "default"), instance_id="7")
    roles = worker_roles(log, settings, lambda: SimulatedChatBackend(0))
    assert [(r.pool, r.group, r.worker_id) for r in roles] == [
        ("default", "tollgate-worker-default", "worker-default-7"),
        ("video", "tollgate-worker-video", "worker-video-7"),
    ]
    subscriptions: list[tuple[tuple[str, ...], str | None, str]] = []
    consumer = log.consumer

    def recording_consumer(
        topic_names: Sequence[str],
        *,
        client_id: str,
        group: str | None = None,
        from_beginning: bool = True,
        partitions: Sequence[int] | None = None,
        start_ms: int | None = None,
        on_assigned: AssignmentListener | None = None,
    ) -> Consumer:
        subscriptions.append((tuple(topic_names), group, client_id))
        return consumer(
            topic_names,
            client_id=client_id,
            group=group,
            from_beginning=from_beginning,
            partitions=partitions,
            start_ms=start_ms,
            on_assigned=on_assigned,
        )

    monkeypatch.setattr(log, "consumer", recording_consumer)
    stopped = threading.Event()
    stopped.set()  # each role opens its consumer, sees the stop and closes it
    for role in roles:
        role.run(stopped)
    assert subscriptions == [
        ((topics.dispatch_topic("default"),), "tollgate-worker-default", "worker-default-7"),
        ((topics.dispatch_topic("video"),), "tollgate-worker-video", "worker-video-7"),
    ]
    log.close()


class _Oversized(Backend):
    """Answers more than one record holds (an upstream's surprise); with ``pieces``, as a streamed
    speech that reported its audio as a piece first."""

    def __init__(self, pieces: bool) -> None:
        self._pieces = pieces

    async def run(self, job: JobContext) -> JobOutput:
        audio_b64 = "A" * (record_value_bytes_max + 4)
        if self._pieces:
            job.progress(1000, Units(characters=3), json.dumps({"audio_b64": audio_b64[:64]}), AUDIO)
        return JobOutput(result={"audio_b64": audio_b64, "format": "wav"}, units=Units(characters=3))


def _outcome_of(job: JobQueued, backend: Backend, tmp_path: Path) -> tuple[list[Any], _Running]:
    """Run ``job`` on a worker over the embedded log: (the events and commands it appended, its run)."""
    log = EmbeddedLog(tmp_path / "log.sqlite3", partitions=topics.partitions_per_topic)
    worker = WorkerRole(log, Settings(), backend)
    worker._producer = log.producer("test")
    running = _Running(job, Record(topic="t", partition=0, offset=0, key=b"org_a", value=b"", timestamp_ms=0))
    worker._running[job.job_id] = running

    async def execute() -> None:
        worker._slots = FairSlots(1, 1)
        await asyncio.wait_for(worker._execute(running), timeout=10)

    asyncio.run(execute())
    log.flush_pending()
    consumer = log.consumer([topics.JOBS, topics.COMMANDS], client_id="test")
    appended = [msgspec.json.decode(record.value) for record in consumer.poll(1000, 100)]
    assert worker._finished.get_nowait() is running, "the job finished: no lease is renewed for it"
    log.close()
    return appended, running


def test_an_outcome_too_large_for_the_log_fails_the_job_and_releases_its_hold(tmp_path: Path) -> None:
    """Before, the send raised inside the job's task: the job hung, its lease renewed until its hold's
    time-to-live, and the client waited out its timeout (a 504 after two minutes)."""
    job = msgspec.structs.replace(_job(msgspec.Raw(b"{}")), endpoint="/v1/audio/speech", model="sim-tts")
    appended, running = _outcome_of(job, _Oversized(pieces=False), tmp_path)
    kinds = [event["type"] for event in appended]
    assert "job.completed.v1" not in kinds and "capture_hold.v1" not in kinds, kinds
    failed = next(event for event in appended if event["type"] == "job.failed.v1")
    assert failed["code"] == "result_too_large" and not failed["retryable"] and "too large" in failed["message"]
    release = next(event for event in appended if event["type"] == "release_hold.v1")
    assert release["reason"] == "job_failed:result_too_large" and running.outcome == "failed"


def test_a_streamed_speech_too_large_for_one_record_completes_without_its_audio(tmp_path: Path) -> None:
    job = msgspec.structs.replace(_job(msgspec.Raw(b"{}")), endpoint="/v1/audio/speech", model="sim-tts", stream=True)
    appended, running = _outcome_of(job, _Oversized(pieces=True), tmp_path)
    completed = next(event for event in appended if event["type"] == "job.completed.v1")
    audio_bytes = 3 * (record_value_bytes_max + 4) // 4
    assert completed["result"] == {"format": "wav", "audio_in_pieces": True, "audio_bytes": audio_bytes}
    assert any(event["type"] == "capture_hold.v1" for event in appended) and running.outcome == "completed"


def test_positions_are_committed_at_most_once_an_interval_and_once_more_on_stopping(tmp_path: Path) -> None:
    """Under load nearly every poll moves a partition's oldest unfinished job; a commit per poll cost
    the worker and the broker a request each (17-26 a second at 64 clients)."""
    log = EmbeddedLog(tmp_path / "log.sqlite3", partitions=topics.partitions_per_topic)
    worker = WorkerRole(log, Settings(), SimulatedChatBackend(0))
    stop = threading.Event()
    commits: list[tuple[dict[tuple[str, int], int] | None, bool]] = []

    class MovingConsumer:
        """Each poll finds the partition one record further on; the fiftieth stops the worker."""

        polls = 0

        def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
            self.polls += 1
            worker._polled_to[("dispatch", 0)] = self.polls
            if self.polls == 50:
                stop.set()
            return []

        def commit(self, positions: dict[tuple[str, int], int] | None = None, wait: bool = True) -> None:
            commits.append((positions, wait))

        def lags(self) -> dict[tuple[str, int], int]:
            return {}

    worker._loop = asyncio.new_event_loop()  # no job comes: nothing runs on it
    worker._poll(MovingConsumer(), stop)  # type: ignore[arg-type]
    worker._loop.close()

    assert commits[0] == ({("dispatch", 0): 1}, False), "the first poll's position at once, not waited for"
    assert len(commits) <= 3, f"50 polls within an interval or two, not a commit each: {commits}"
    assert commits[-1] == ({("dispatch", 0): 50}, True), "and on stopping, the last position, waited for"
    log.close()


def test_the_roles_event_loops_are_uvloop(tmp_path: Path) -> None:
    """eventlog/loops.py: a worker's jobs and the gateway's server run on uvloop, whose cross-thread
    wake-ups and sockets are C (a request crosses a loop from other threads several times)."""
    log = EmbeddedLog(tmp_path / "log.sqlite3", partitions=topics.partitions_per_topic)
    worker = WorkerRole(log, Settings(poll_wait_ms=10), SimulatedChatBackend(0))
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while worker._loop is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert isinstance(worker._loop, uvloop.Loop)
    finally:
        stop.set()
        thread.join(10)
        log.close()

    async def running() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    assert isinstance(loops.run(running()), uvloop.Loop)  # the gateway's (tollgate/serve.py)
