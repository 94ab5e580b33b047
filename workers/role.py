"""The worker role: runs the jobs of its pools, with leases, progress, retries and cancellation.

One thread polls the pool's dispatch topic and owns the transactional producer; each job runs in a
thread of a bounded pool and hands what it reports to that thread through a bounded queue:

- every run of a job first takes a lease from the ledger (``StartJob`` with a fresh run id; the
  ledger counts runs and dead-letters a job past its attempts), and the polling thread renews the
  leases of running jobs (a heartbeat) every third of the lease;
- progress points become ``JobProgressed`` events (every point for a streamed job, at most one per
  ``progress_interval_s`` otherwise), committed at once so that clients see them;
- a failure a retry can fix is retried after an exponential backoff, as a new run; the last one
  releases the hold as dead-lettered;
- the outcome (``JobCompleted`` + ``CaptureHold``, ``JobFailed`` + ``ReleaseHold``, or on cancel
  ``JobCancelled`` + a capture of the work done) is committed together with the dispatch offsets up
  to the oldest job still unfinished in that partition.

A worker killed mid-job never committed that job's offset, so the log redelivers the job to the
next member (or to this one, restarted); the new run is a new attempt. Ids of the outcome derive
from the job id, so a job that ran twice is charged once: the ledger ignores the second capture.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from eventlog import EventLog, Outgoing, Record, topics
from eventlog.settings import Settings
from schemas.codec import decode_event, encode
from schemas.commands import CaptureHold, ReleaseHold, StartJob
from schemas.events import (
    JobCancelled,
    JobCancelRequested,
    JobCompleted,
    JobDeadLettered,
    JobFailed,
    JobProgressed,
    JobQueued,
    JobRetryScheduled,
    UsageRecorded,
)
from schemas.ids import job_output_id
from schemas.moments import utc_now
from schemas.units import Units
from workers.backends import Backend, BackendError, JobContext, JobOutput, JobStopped

logger = logging.getLogger(__name__)

jobs_in_parallel_max = 16
backlog_jobs_max = 4 * jobs_in_parallel_max  # jobs taken from the log but not started yet
outbox_items_max = 10_000  # what job threads may report before they wait for the polling thread
stop_signals_max = 10_000  # cancelled or dead-lettered job ids remembered for jobs not seen yet
progress_interval_s = 0.25  # progress events of a job nobody streams, at most one per this
busy_poll_wait_ms = 2  # the poll wait while jobs run: how soon their progress is committed
retry_backoff_s_max = 10.0


def retry_backoff_s(base_ms: int, failed_attempt: int) -> float:
    """Exponential: base, 2 x base, 4 x base... capped."""
    return min(base_ms / 1000 * 2 ** (failed_attempt - 1), retry_backoff_s_max)


def _envelope(job: JobQueued) -> dict[str, str]:
    return {"org_id": job.org_id, "correlation_id": job.request_id, "causation_id": job.event_id}


def completed_records(job: JobQueued, started_at: datetime, finished_at: datetime, output: JobOutput) -> list[Outgoing]:
    """A finished job: its usage, its completion and the capture of its charge. Pure: ids derive from the job."""
    latency_ms = int((finished_at - job.accepted_at).total_seconds() * 1000)
    usage = UsageRecorded(
        event_id=job_output_id(job.job_id, "usage"),
        occurred_at=finished_at,
        job_id=job.job_id,
        request_id=job.request_id,
        model=job.model,
        units=output.units,
        **_envelope(job),
    )
    completed = JobCompleted(
        event_id=job_output_id(job.job_id, "completed"),
        occurred_at=finished_at,
        job_id=job.job_id,
        request_id=job.request_id,
        model=job.model,
        result=msgspec.Raw(msgspec.json.encode(output.result)),
        units=output.units,
        duration_ms=int((finished_at - started_at).total_seconds() * 1000),
        **_envelope(job),
    )
    capture = CaptureHold(
        command_id=job_output_id(job.job_id, "capture"),
        org_id=job.org_id,
        issued_at=finished_at,
        correlation_id=job.request_id,
        hold_id=job.hold_id,
        job_id=job.job_id,
        units=output.units,
        latency_ms=max(latency_ms, 0),
    )
    return [
        Outgoing(topics.JOBS, job.org_id, encode(usage)),
        Outgoing(topics.JOBS, job.org_id, encode(completed)),
        Outgoing(topics.COMMANDS, job.org_id, encode(capture)),
    ]


def failed_records(job: JobQueued, finished_at: datetime, error: BackendError, attempt: int) -> list[Outgoing]:
    """A job that cannot complete: the failure, and the hold released (as dead-lettered when it was
    retryable but out of attempts)."""
    failed = JobFailed(
        event_id=job_output_id(job.job_id, "failed"),
        occurred_at=finished_at,
        job_id=job.job_id,
        request_id=job.request_id,
        model=job.model,
        code=error.code,
        message=str(error),
        attempt=attempt,
        retryable=error.retryable,
        **_envelope(job),
    )
    release = ReleaseHold(
        command_id=job_output_id(job.job_id, "release"),
        org_id=job.org_id,
        issued_at=finished_at,
        correlation_id=job.request_id,
        hold_id=job.hold_id,
        reason=f"dead_letter:{error.code}" if error.retryable else f"job_failed:{error.code}",
    )
    return [
        Outgoing(topics.JOBS, job.org_id, encode(failed)),
        Outgoing(topics.COMMANDS, job.org_id, encode(release)),
    ]


def cancelled_records(job: JobQueued, finished_at: datetime, units: Units, partial: str, reason: str) -> list[Outgoing]:
    """A job stopped on request: charged for the work done (released when there was none)."""
    cancelled = JobCancelled(
        event_id=job_output_id(job.job_id, "cancelled"),
        occurred_at=finished_at,
        job_id=job.job_id,
        request_id=job.request_id,
        model=job.model,
        units=units,
        partial_result=msgspec.Raw(msgspec.json.encode({"output": partial} if partial else None)),
        reason=reason,
        **_envelope(job),
    )
    settle: CaptureHold | ReleaseHold
    if units == Units(variant=units.variant):
        settle = ReleaseHold(
            command_id=job_output_id(job.job_id, "release-cancelled"),
            org_id=job.org_id,
            issued_at=finished_at,
            correlation_id=job.request_id,
            hold_id=job.hold_id,
            reason="cancelled",
        )
    else:
        settle = CaptureHold(
            command_id=job_output_id(job.job_id, "capture-cancelled"),
            org_id=job.org_id,
            issued_at=finished_at,
            correlation_id=job.request_id,
            hold_id=job.hold_id,
            job_id=job.job_id,
            units=units,
            latency_ms=max(int((finished_at - job.accepted_at).total_seconds() * 1000), 0),
        )
    return [
        Outgoing(topics.JOBS, job.org_id, encode(cancelled)),
        Outgoing(topics.COMMANDS, job.org_id, encode(settle)),
    ]


@dataclass(slots=True)
class _Running:
    job: JobQueued
    record: Record
    stop_reason: str = ""  # "" runs on; else why it must stop at its next progress point
    run_id: str = ""
    lease_sent_at: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)


@dataclass(slots=True)
class _Done:
    job_id: str


class WorkerRole:
    def __init__(
        self,
        log: EventLog,
        settings: Settings,
        backend: Backend,
        clock: Callable[[], datetime] = utc_now,
        pool: str | None = None,
    ) -> None:
        self._log = log
        self._settings = settings
        self._backend = backend
        self._clock = clock
        # One pool per role, so each pool is one consumer group: workers of a pool share its jobs, and a
        # worker serving several pools never makes another pool's workers run a job twice.
        self.pool = pool or settings.worker_pools[0]
        self.group = f"tollgate-worker-{self.pool}"
        self.worker_id = f"worker-{self.pool}-{settings.instance_id}"
        self.jobs_done = 0
        self._outbox: queue.Queue[list[Outgoing] | _Done] = queue.Queue(outbox_items_max)
        self._running: dict[str, _Running] = {}
        self._backlog: list[_Running] = []
        self._in_flight: dict[tuple[str, int], set[int]] = {}  # offsets taken but not finished
        self._polled_to: dict[tuple[str, int], int] = {}  # the next offset to read, per partition
        self._stopped_jobs: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    # --- the job threads ---

    def _lease(self, running: _Running) -> list[Outgoing]:
        job = running.job
        command = StartJob(
            command_id=f"{running.run_id}/{time.monotonic_ns()}",
            org_id=job.org_id,
            issued_at=self._clock(),
            correlation_id=job.request_id,
            hold_id=job.hold_id,
            job_id=job.job_id,
            run_id=running.run_id,
            worker_id=self.worker_id,
            lease_s=self._settings.job_lease_s,
        )
        running.lease_sent_at = time.monotonic()
        return [Outgoing(topics.COMMANDS, job.org_id, encode(command))]

    def _execute(self, running: _Running) -> None:
        try:
            records = self._attempts(running)
        except Exception:  # a bug here must not lose the job: leave it unfinished for redelivery
            logger.exception("worker crashed running job %s", running.job.job_id)
            # No more heartbeats for it: its lease runs out and the ledger's expiry settles the hold.
            running.stop.set()
            return
        if records is not None:
            self._outbox.put(records)
        self._outbox.put(_Done(running.job.job_id))

    def _attempts(self, running: _Running) -> list[Outgoing] | None:
        job = running.job
        payload = msgspec.json.decode(job.payload)
        started_at = self._clock()
        for attempt in range(1, job.attempts_max + 1):
            with self._lock:
                running.run_id = f"{job.job_id}/{uuid.uuid4().hex}"
                self._outbox.put(self._lease(running))
            sequence = 0
            last_report = 0.0

            def report(progress_milli: int, units: Units, delta: str, attempt: int = attempt) -> None:
                nonlocal sequence, last_report
                now = time.monotonic()
                if not job.stream and now - last_report < progress_interval_s and progress_milli < 1000:
                    return
                if not job.stream and progress_milli >= 1000:
                    return  # the completion says it
                sequence += 1
                last_report = now
                event = JobProgressed(
                    event_id=job_output_id(job.job_id, f"progress/{attempt}/{sequence}"),
                    occurred_at=self._clock(),
                    job_id=job.job_id,
                    request_id=job.request_id,
                    attempt=attempt,
                    sequence=sequence,
                    progress_milli=progress_milli,
                    delta=delta,
                    units=units,
                    **_envelope(job),
                )
                self._outbox.put([Outgoing(topics.JOBS, job.org_id, encode(event))])

            context = JobContext(
                job.job_id, job.model, job.endpoint, payload, attempt, running.stop.is_set, on_progress=report
            )
            try:
                if running.stop.is_set():
                    raise JobStopped(job.job_id)
                output = self._backend.run(context)
            except JobStopped:
                if running.stop_reason != "cancel":
                    return None  # dead-lettered by the ledger: it released the hold already
                return cancelled_records(job, self._clock(), context.units, context.output, "cancel")
            except BackendError as error:
                if error.retryable and attempt < job.attempts_max and not running.stop.is_set():
                    backoff_s = retry_backoff_s(self._settings.job_retry_backoff_ms, attempt)
                    self._outbox.put(self._retry_records(job, attempt, error, backoff_s))
                    running.stop.wait(backoff_s)
                    continue
                return failed_records(job, self._clock(), error, attempt)
            except Exception as error:  # a backend bug fails the job (and releases the hold), not the worker
                logger.exception("backend crashed on job %s", job.job_id)
                crash = BackendError("backend_crashed", f"{type(error).__name__}: {error}")
                return failed_records(job, self._clock(), crash, attempt)
            return completed_records(job, started_at, self._clock(), output)
        raise AssertionError("the last attempt returns")

    def _retry_records(self, job: JobQueued, attempt: int, error: BackendError, backoff_s: float) -> list[Outgoing]:
        event = JobRetryScheduled(
            event_id=job_output_id(job.job_id, f"retry/{attempt}"),
            occurred_at=self._clock(),
            job_id=job.job_id,
            request_id=job.request_id,
            attempt=attempt,
            code=error.code,
            message=str(error),
            backoff_ms=int(backoff_s * 1000),
            **_envelope(job),
        )
        return [Outgoing(topics.JOBS, job.org_id, encode(event))]

    # --- the polling thread ---

    def _take(self, records: list[Record]) -> None:
        for record in records:
            tp = (record.topic, record.partition)
            self._polled_to[tp] = record.offset + 1
            event = decode_event(record.value)
            if isinstance(event, JobQueued):
                if event.job_id in self._stopped_jobs or event.job_id in self._running:
                    continue  # stopped before it started, or a redelivery of a job running here
                self._in_flight.setdefault(tp, set()).add(record.offset)
                self._backlog.append(_Running(event, record))
            elif isinstance(event, (JobCancelRequested, JobDeadLettered)):
                reason = "cancel" if isinstance(event, JobCancelRequested) else "dead_letter"
                self._signal_stop(event.job_id, reason)

    def _signal_stop(self, job_id: str, reason: str) -> None:
        self._stopped_jobs[job_id] = reason
        while len(self._stopped_jobs) > stop_signals_max:
            self._stopped_jobs.popitem(last=False)
        running = self._running.get(job_id)
        if running is not None:
            running.stop_reason = reason
            running.stop.set()
            return
        for waiting in self._backlog:
            if waiting.job.job_id == job_id:
                self._backlog.remove(waiting)
                self._finish(waiting)
                return

    def _finish(self, running: _Running) -> None:
        tp = (running.record.topic, running.record.partition)
        self._in_flight.get(tp, set()).discard(running.record.offset)
        self._running.pop(running.job.job_id, None)

    def _positions(self) -> dict[tuple[str, int], int]:
        """Commit each partition up to its oldest unfinished job, so a crash redelivers only those."""
        return {tp: min(self._in_flight.get(tp) or {end}) for tp, end in self._polled_to.items()}

    def _heartbeats(self) -> list[Outgoing]:
        outputs: list[Outgoing] = []
        due = time.monotonic() - self._settings.job_lease_s / 3
        with self._lock:
            for running in self._running.values():
                if running.run_id and running.lease_sent_at < due and not running.stop.is_set():
                    outputs += self._lease(running)
        return outputs

    def run(self, stop: threading.Event) -> None:
        processor = self._log.processor(
            [topics.dispatch_topic(self.pool)],
            group=self.group,
            transactional_id=self.worker_id,
            on_assigned=lambda partitions: logger.info("worker owns dispatch partitions %s", sorted(partitions)),
        )
        executor = ThreadPoolExecutor(max_workers=jobs_in_parallel_max, thread_name_prefix="job")
        committed: dict[tuple[str, int], int] = {}
        try:
            while not stop.is_set():
                busy = bool(self._running or self._backlog)
                if len(self._backlog) < backlog_jobs_max:
                    wait_ms = busy_poll_wait_ms if busy else self._settings.poll_wait_ms
                    self._take(processor.poll(self._settings.batch_records_max, wait_ms))
                elif not self._outbox.qsize():
                    time.sleep(busy_poll_wait_ms / 1000)
                while self._backlog and len(self._running) < jobs_in_parallel_max:
                    running = self._backlog.pop(0)
                    self._running[running.job.job_id] = running
                    executor.submit(self._execute, running)
                outputs = self._heartbeats()
                finished = 0
                for _ in range(outbox_items_max):
                    try:
                        item = self._outbox.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(item, _Done):
                        done = self._running.get(item.job_id)
                        if done is not None:
                            self._finish(done)
                            finished += 1
                    else:
                        outputs += item
                positions = self._positions()
                if not outputs and positions == committed:
                    continue  # nothing new: an idle or busy loop must not commit empty transactions
                try:
                    processor.commit_transaction(outputs, positions)
                    committed = positions
                    self.jobs_done += finished
                except Exception:
                    logger.exception("worker transaction failed; its unfinished jobs will be redelivered")
                    processor.abort_transaction()
                    self._abandon_all()
                    committed = {}
        finally:
            for running in self._running.values():
                running.stop_reason = "shutdown"
                running.stop.set()
            executor.shutdown(wait=False, cancel_futures=True)
            processor.close()

    def _abandon_all(self) -> None:
        """After a failed transaction the log rewinds to the committed positions: forget what was taken."""
        for running in self._running.values():
            running.stop_reason = "abandoned"
            running.stop.set()
        self._running.clear()
        self._backlog.clear()
        self._in_flight.clear()
        self._polled_to.clear()


def worker_roles(log: EventLog, settings: Settings, backend: Callable[[], Backend]) -> list[WorkerRole]:
    """The roles of a worker process: one per pool it serves (``TOLLGATE_WORKER_POOLS``)."""
    return [WorkerRole(log, settings, backend(), pool=pool) for pool in dict.fromkeys(settings.worker_pools)]
