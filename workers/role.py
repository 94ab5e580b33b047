"""The worker role: consumes queued jobs of its pools and reports each outcome in one transaction.

For every job the transaction holds JobStarted, then UsageRecorded + JobCompleted + a CaptureHold
command, or JobFailed + a ReleaseHold command, together with the dispatch offsets. A worker that
dies before committing leaves its jobs to be redelivered; one that commits cannot be redelivered.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import msgspec

from ledger.log import EventLog, Outgoing
from ledger.role import utc_now
from ledger.settings import Settings
from schemas import topics
from schemas.codec import decode_event, encode
from schemas.commands import CaptureHold, ReleaseHold
from schemas.events import JobCompleted, JobFailed, JobQueued, JobStarted, UsageRecorded
from workers.backends import BackendError, ChatBackend, JobOutput

logger = logging.getLogger(__name__)

_id_namespace = uuid.UUID("0f3b8a0e-7d53-4f7e-9a55-3f1de7a7c0b2")
jobs_in_parallel_max = 16


def _id(job_id: str, kind: str) -> str:
    return str(uuid.uuid5(_id_namespace, f"{job_id}/{kind}"))


def job_outcome(
    job: JobQueued, worker_id: str, started_at: datetime, finished_at: datetime, outcome: JobOutput | BackendError
) -> list[Outgoing]:
    """The records that report one job's outcome. Pure: ids derive from the job id."""
    envelope = {"org_id": job.org_id, "correlation_id": job.request_id, "causation_id": job.event_id}
    started = JobStarted(
        event_id=_id(job.job_id, "started"),
        occurred_at=started_at,
        job_id=job.job_id,
        request_id=job.request_id,
        worker_id=worker_id,
        attempt=1,
        **envelope,
    )
    records = [Outgoing(topics.JOBS, job.org_id, encode(started))]
    if isinstance(outcome, BackendError):
        failed = JobFailed(
            event_id=_id(job.job_id, "failed"),
            occurred_at=finished_at,
            job_id=job.job_id,
            request_id=job.request_id,
            model=job.model,
            code=outcome.code,
            message=str(outcome),
            **envelope,
        )
        release = ReleaseHold(
            command_id=_id(job.job_id, "release"),
            org_id=job.org_id,
            issued_at=finished_at,
            correlation_id=job.request_id,
            hold_id=job.hold_id,
            reason=f"job_failed:{outcome.code}",
        )
        return [
            *records,
            Outgoing(topics.JOBS, job.org_id, encode(failed)),
            Outgoing(topics.COMMANDS, job.org_id, encode(release)),
        ]
    latency_ms = int((finished_at - job.accepted_at).total_seconds() * 1000)
    usage = UsageRecorded(
        event_id=_id(job.job_id, "usage"),
        occurred_at=finished_at,
        job_id=job.job_id,
        request_id=job.request_id,
        model=job.model,
        units=outcome.units,
        **envelope,
    )
    completed = JobCompleted(
        event_id=_id(job.job_id, "completed"),
        occurred_at=finished_at,
        job_id=job.job_id,
        request_id=job.request_id,
        model=job.model,
        result=msgspec.Raw(msgspec.json.encode(outcome.result)),
        units=outcome.units,
        duration_ms=int((finished_at - started_at).total_seconds() * 1000),
        **envelope,
    )
    capture = CaptureHold(
        command_id=_id(job.job_id, "capture"),
        org_id=job.org_id,
        issued_at=finished_at,
        correlation_id=job.request_id,
        hold_id=job.hold_id,
        job_id=job.job_id,
        units=outcome.units,
        latency_ms=max(latency_ms, 0),
    )
    return [
        *records,
        Outgoing(topics.JOBS, job.org_id, encode(usage)),
        Outgoing(topics.JOBS, job.org_id, encode(completed)),
        Outgoing(topics.COMMANDS, job.org_id, encode(capture)),
    ]


class WorkerRole:
    def __init__(
        self, log: EventLog, settings: Settings, backend: ChatBackend, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._log = log
        self._settings = settings
        self._backend = backend
        self._clock = clock
        self.worker_id = f"worker-{'+'.join(settings.worker_pools)}-{settings.instance_id}"
        self.jobs_done = 0

    def _run_one(self, job: JobQueued) -> list[Outgoing]:
        started_at = self._clock()
        outcome: JobOutput | BackendError
        try:
            outcome = self._backend.run(job.job_id, job.model, msgspec.json.decode(job.payload))
        except BackendError as error:
            outcome = error
        except Exception as error:  # a backend bug must fail the job, not the worker, and release the hold
            logger.exception("backend crashed on job %s", job.job_id)
            outcome = BackendError("backend_crashed", f"{type(error).__name__}: {error}")
        return job_outcome(job, self.worker_id, started_at, self._clock(), outcome)

    def run(self, stop: threading.Event) -> None:
        pools = self._settings.worker_pools
        processor = self._log.processor(
            [topics.dispatch_topic(pool) for pool in pools],
            group=f"tollgate-worker-{'+'.join(pools)}",
            transactional_id=self.worker_id,
            on_assigned=lambda partitions: logger.info("worker owns dispatch partitions %s", sorted(partitions)),
        )
        executor = ThreadPoolExecutor(max_workers=jobs_in_parallel_max, thread_name_prefix="job")
        try:
            while not stop.is_set():
                records = processor.poll(self._settings.batch_records_max, self._settings.poll_wait_ms)
                if not records:
                    continue
                jobs = []
                for record in records:
                    event = decode_event(record.value)
                    if isinstance(event, JobQueued):
                        jobs.append(event)
                started = time.perf_counter()
                if len(jobs) == 1:
                    outputs = self._run_one(jobs[0])
                else:
                    outputs = [r for batch in executor.map(self._run_one, jobs) for r in batch]
                try:
                    processor.commit_transaction(outputs)
                    self.jobs_done += len(jobs)
                except Exception:
                    logger.exception("worker transaction failed; its jobs will be redelivered")
                    processor.abort_transaction()
                logger.debug("ran %d jobs in %.1f ms", len(jobs), (time.perf_counter() - started) * 1000)
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
            processor.close()
