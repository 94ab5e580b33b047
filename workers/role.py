"""The worker role: runs the jobs of its pool, with leases, progress, retries and cancellation.

Two threads:
- the polling thread owns the pool's dispatch consumer (one consumer group per pool): it takes jobs
  and stop signals, renews the leases of running jobs (a heartbeat every third of the lease) and
  commits each partition's position up to its oldest unfinished job (at most every
  ``positions_commit_interval_s``);
- the job loop (asyncio, in a thread of its own) runs up to ``worker_jobs_in_flight_max`` jobs at
  once as tasks, so a job waiting on a model (an upstream server, simulated GPU time) holds no thread;
  one organization runs at most ``worker_org_jobs_in_flight_max`` of them, and a freed slot goes to
  the organizations waiting in turn (workers/fair.py), so one tenant cannot take a pool.

Every run of a job first takes a lease from the ledger (``StartJob`` with a fresh run id; the ledger
counts runs and dead-letters a job past its attempts); a failure a retry can fix is retried after an
exponential backoff, as a new run; a stop signal (cancel, dead letter) cancels the backend's call.

Outcomes (``JobCompleted`` + ``CaptureHold``, ``JobFailed`` + ``ReleaseHold``, or on a cancel
during a run ``JobCancelled`` + a capture of the work done; a job stopped before its run began has no
outcome from the worker: the ledger settles its hold) and progress go straight to the log on the idempotent
producer, not in a transaction: the client's answer waits on them, and a transaction commit per job
was the largest cost of a request. A partition's position is committed only once the outcome of every
job before it is durable, so a crash never loses an outcome; it may repeat one (a worker killed after
sending an outcome and before committing its position runs the job again). Outcome ids derive from the
job, so the repeat carries the same ids: the ledger refuses a second capture and the jobs view keeps
the first outcome.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from eventlog import Consumer, EventLog, Outgoing, Producer, Record, RecordTooLarge, loops, topics
from eventlog.logs import about
from eventlog.metrics import Metrics
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
)
from schemas.ids import job_output_id
from schemas.moments import utc_now
from schemas.units import Units
from workers.backends import AUDIO, Backend, BackendError, JobContext, JobOutput, JobStopped
from workers.fair import FairSlots
from workers.metering import charged_units

logger = logging.getLogger(__name__)

stop_signals_max = 10_000  # cancelled or dead-lettered job ids remembered for jobs not seen yet
finished_jobs_max = 10_000  # job ids whose outcome is durable, remembered so a second copy does not run
progress_interval_s = 0.25  # progress events of a job nobody streams, at most one per this
retry_backoff_s_max = 10.0
delivery_retry_s = 0.5  # an outcome the log could not take is sent again after this
loop_start_wait_s = 10.0
# Positions are committed at most this often: under load nearly every poll moves a partition's oldest
# unfinished job, so a commit per poll was a request to the broker per poll (17-26 a second at 64
# clients; 6-8 with this). A crash redelivers the jobs run since the last commit, as it redelivers the
# unfinished ones anyway (their ids make the repeats harmless).
positions_commit_interval_s = 0.1


# Endpoints whose payload carries the gateway's ``answer_shape`` (how it answers the client: an image
# as a link or inline, a transcript's format): the worker hands it back with the result, so a job
# polled later (GET /v1/jobs/{id}) is answered as the request would have been, on any instance.
answer_shape_endpoints = frozenset({"/v1/images/generations", "/v1/audio/transcriptions", "/v1/audio/translations"})


def with_answer_shape(endpoint: str, result: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    shape = payload.get("answer_shape")
    if endpoint not in answer_shape_endpoints or not isinstance(shape, dict):
        return result
    return {**result, "answer_shape": shape}


def retry_backoff_s(base_ms: int, failed_attempt: int) -> float:
    """Exponential: base, 2 x base, 4 x base... capped."""
    return min(base_ms / 1000 * 2 ** (failed_attempt - 1), retry_backoff_s_max)


def _envelope(job: JobQueued) -> dict[str, str]:
    return {"org_id": job.org_id, "correlation_id": job.request_id, "causation_id": job.event_id}


def _served(job: JobQueued, served_model: str) -> str:
    """The served model as outcomes name it: "" when it is the job's own."""
    return served_model if served_model and served_model != job.model else ""


def completed_records(
    job: JobQueued,
    started_at: datetime,
    finished_at: datetime,
    output: JobOutput,
    served_model: str = "",
    fallback_depth: int = 0,
    counted_by: str = "",
) -> list[Outgoing]:
    """A finished job: its completion (with the usage it measured, the model that served it and how
    it counted) and the capture of its charge at that model's price. Pure: ids derive from the job."""
    latency_ms = int((finished_at - job.accepted_at).total_seconds() * 1000)
    served = _served(job, served_model)
    completed = JobCompleted(
        event_id=job_output_id(job.job_id, "completed"),
        occurred_at=finished_at,
        job_id=job.job_id,
        request_id=job.request_id,
        model=job.model,
        result=msgspec.Raw(msgspec.json.encode(output.result)),
        units=output.units,
        duration_ms=int((finished_at - started_at).total_seconds() * 1000),
        served_model=served,
        fallback_depth=fallback_depth if served else 0,
        counted_by=counted_by,
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
        model=served,
    )
    return [
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


def cancelled_records(
    job: JobQueued,
    finished_at: datetime,
    units: Units,
    partial: str,
    reason: str,
    served_model: str = "",
    fallback_depth: int = 0,
    counted_by: str = "",
) -> list[Outgoing]:
    """A job stopped on request: charged for the work done (released when there was none), at the
    price of the model that did it."""
    served = _served(job, served_model)
    cancelled = JobCancelled(
        event_id=job_output_id(job.job_id, "cancelled"),
        occurred_at=finished_at,
        job_id=job.job_id,
        request_id=job.request_id,
        model=job.model,
        units=units,
        partial_result=msgspec.Raw(msgspec.json.encode({"output": partial} if partial else None)),
        reason=reason,
        served_model=served,
        fallback_depth=fallback_depth if served else 0,
        counted_by=counted_by,
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
            model=served,
        )
    return [
        Outgoing(topics.JOBS, job.org_id, encode(cancelled)),
        Outgoing(topics.COMMANDS, job.org_id, encode(settle)),
    ]


@dataclass(slots=True)
class _Running:
    job: JobQueued
    record: Record
    stop_reason: str = ""  # "" runs on; else why it must stop (cancel, dead_letter, shutdown)
    run_id: str = ""
    lease_sent_at: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)
    backend_call: asyncio.Task[JobOutput] | None = None  # the backend's call, cancelled on a stop signal
    outcome: str = "stopped"  # how it ended, for the jobs counter: completed, failed, cancelled or stopped
    attempt: int = 0  # the run's attempt number (1, 2...), which its outcome names
    audio_pieces_attempt: int = 0  # the last attempt that reported audio pieces (a streamed speech)


class WorkerRole:
    def __init__(
        self,
        log: EventLog,
        settings: Settings,
        backend: Backend,
        clock: Callable[[], datetime] = utc_now,
        pool: str | None = None,
        metrics: Metrics | None = None,
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
        # Jobs taken from the log and not finished (running, or waiting for a slot): a bound on memory.
        # Four times the slots, so that while one organization's flood waits behind its own bound the
        # worker reads on and finds other organizations' jobs (a flood deeper than this still holds
        # the partitions it shares at the log).
        self.jobs_taken_max = 4 * settings.worker_jobs_in_flight_max
        slots = settings.worker_jobs_in_flight_max
        self.org_jobs_in_flight_max = settings.worker_org_jobs_in_flight_max or max(1, slots // 2)
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._finished: queue.SimpleQueue[_Running] = queue.SimpleQueue()
        self._room = threading.Event()  # a job finished: the polling thread may take more
        self._in_flight: dict[tuple[str, int], set[int]] = {}  # offsets taken but not finished
        self._polled_to: dict[tuple[str, int], int] = {}  # the next offset to read, per partition
        self._stopped_jobs: OrderedDict[str, str] = OrderedDict()
        # A job can be dispatched twice (a retry of a request against a gateway's slice while its first
        # attempt's hold was still on its way): its outcome is durable once, so it runs once here.
        self._finished_jobs: OrderedDict[str, None] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: FairSlots | None = None
        self._producer: Producer | None = None
        self._stopping = False
        self.metrics = metrics or Metrics()
        self._outcomes = {
            outcome: self.metrics.worker_jobs.labels(self.pool, outcome)
            for outcome in ("completed", "failed", "cancelled", "stopped")
        }
        self._retries = self.metrics.worker_retries.labels(self.pool)
        self.metrics.worker_jobs_running.labels(self.pool).set_function(lambda: len(self._running))
        self._lag = self.metrics.lag_reporter("worker", self.pool)

    # --- the job loop ---

    def _send(self, records: list[Outgoing]) -> None:
        assert self._producer is not None
        self._producer.send(records)

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

    async def _execute(self, running: _Running) -> None:
        """Run a job in a slot and deliver its outcome; a bug here leaves the job unfinished."""
        assert self._slots is not None
        async with self._slots.slot(running.job.org_id):
            try:
                records = await self._attempts(running)
            except Exception:  # a bug must not lose the job: leave it unfinished for redelivery
                logger.exception(
                    "worker crashed running job %s",
                    running.job.job_id,
                    extra=about(running.job.request_id, running.job.org_id),
                )
                # No more heartbeats for it: its lease runs out and the ledger's expiry settles the hold.
                running.stop.set()
                return
            if records and not await self._deliver(running, records):
                return  # stopping before the log took the outcome: leave it for redelivery
        self._outcomes[running.outcome if records else "stopped"].inc()
        if logger.isEnabledFor(logging.DEBUG):
            job = running.job
            logger.debug("job %s %s", job.job_id, running.outcome, extra=about(job.request_id, job.org_id))
        self._finished.put(running)
        self._room.set()

    async def _deliver(self, running: _Running, records: list[Outgoing]) -> bool:
        """Send the outcome and wait until the log has it; retry until it does (or the worker stops).

        An outcome no log can take (a result over the record limit: the gateway refuses what it can
        bound, so this is an upstream that answered more) is never retried: it becomes the job's
        failure, ``result_too_large``, whose release frees the hold. The client gets a 502 at once,
        not a timeout, and nothing is charged: the log refuses the record before anything of the
        outcome (the capture with it) is appended."""
        assert self._producer is not None
        loop = asyncio.get_running_loop()
        replaced = failed_instead = False
        while True:
            done: asyncio.Future[BaseException | None] = loop.create_future()

            def acknowledged(error: BaseException | None, done: asyncio.Future[BaseException | None] = done) -> None:
                loop.call_soon_threadsafe(_settle, done, error)

            try:
                self._producer.send_acknowledged(records, acknowledged)
                error = await done
            except Exception as refused:  # raised by the send itself: nothing of the outcome went out
                error = refused
            if error is None:
                return True
            if isinstance(error, RecordTooLarge):
                assert not failed_instead, "a failure's records are small"
                lighter = None if replaced else self._without_streamed_audio(running, records)
                replaced, failed_instead = True, lighter is None
                records = lighter or self._too_large(running, error)
                continue
            if self._stopping:
                return False
            logger.warning("the log did not take an outcome (%s); sending it again", error)
            await asyncio.sleep(delivery_retry_s)

    def _without_streamed_audio(self, running: _Running, records: list[Outgoing]) -> list[Outgoing] | None:
        """A streamed speech's completion without its audio, when this run reported all of it as
        pieces (``JobProgressed`` of part ``audio``, each small, on the same partition before the
        outcome): the result keeps its metadata and says ``audio_in_pieces`` with ``audio_bytes``, and
        the gateway relays (or, for a replay, reads back from the log) the pieces. The capture stays:
        the client has, or can get, the whole audio. None for any other outcome."""
        job = running.job
        if not job.stream or running.audio_pieces_attempt != running.attempt or not records:
            return None
        completed = decode_event(records[0].value)
        if not isinstance(completed, JobCompleted):
            return None
        result = msgspec.json.decode(completed.result)
        audio_b64 = result.pop("audio_b64", None) if isinstance(result, dict) else None
        if not isinstance(audio_b64, str):
            return None
        result["audio_in_pieces"] = True
        result["audio_bytes"] = len(audio_b64) * 3 // 4 - audio_b64[-2:].count("=")
        logger.info(
            "job %s: its audio is too large for one record; the completion refers to its pieces",
            job.job_id,
            extra=about(job.request_id, job.org_id),
        )
        lighter = msgspec.structs.replace(completed, result=msgspec.Raw(msgspec.json.encode(result)))
        return [records[0]._replace(value=encode(lighter)), *records[1:]]

    def _too_large(self, running: _Running, error: RecordTooLarge) -> list[Outgoing]:
        job = running.job
        logger.warning(
            "job %s: its outcome is too large for the log (%s); failing it instead",
            job.job_id,
            error,
            extra=about(job.request_id, job.org_id),
        )
        running.outcome = "failed"
        failure = BackendError(
            "result_too_large",
            f"the result is too large to deliver ({error}); ask for less in one request "
            "(a shorter input, a lower sample_rate or MP3, fewer images or inputs)",
        )
        return failed_records(job, self._clock(), failure, max(running.attempt, 1))

    async def _attempts(self, running: _Running) -> list[Outgoing] | None:
        job = running.job
        payload = msgspec.json.decode(job.payload)
        started_at = self._clock()
        for attempt in range(1, job.attempts_max + 1):
            if running.stop.is_set():
                # Stopped before this run began: no lease, no work, and no outcome either. The ledger
                # settles the hold: it released it at the cancel if no run held it, else the run that
                # held it captures its work or its lease runs out. This worker cannot tell which: the
                # job may be a redelivery whose earlier run completed (killed before committing its
                # position), and a cancellation from here would give the job a second outcome.
                return None
            running.attempt = attempt
            with self._lock:
                running.run_id = f"{job.job_id}/{uuid.uuid4().hex}"
                lease = self._lease(running)
            self._send(lease)
            context = JobContext(
                job.job_id,
                job.model,
                job.endpoint,
                payload,
                attempt,
                running.stop.is_set,
                pool=job.pool,
                fallbacks=job.fallbacks,
                context_length=job.context_length,
            )
            context.on_progress = self._reporter(running, attempt, context)
            try:
                if running.stop.is_set():
                    raise JobStopped(job.job_id)
                running.backend_call = asyncio.ensure_future(self._backend.run(context))
                output = await running.backend_call
            except (JobStopped, asyncio.CancelledError):
                if not running.stop.is_set():
                    raise  # not our stop signal: the task itself is being cancelled
                if running.stop_reason != "cancel":
                    return None  # dead-lettered by the ledger (it released the hold already), or shutting down
                running.outcome = "cancelled"
                done = context.units
                if done != Units(variant=done.variant):  # work was done: charged as a request
                    done = charged_units(done, context.payload)
                return cancelled_records(
                    job,
                    self._clock(),
                    done,
                    context.output,
                    "cancel",
                    context.served_model,
                    context.fallback_depth,
                    context.counted_by,
                )
            except BackendError as error:
                if error.retryable and attempt < job.attempts_max and not running.stop.is_set():
                    backoff_s = retry_backoff_s(self._settings.job_retry_backoff_ms, attempt)
                    self._retries.inc()
                    self._send(self._retry_records(job, attempt, error, backoff_s))
                    await asyncio.sleep(backoff_s)
                    continue
                running.outcome = "failed"
                return failed_records(job, self._clock(), error, attempt)
            except RecordTooLarge as error:  # a progress point the log refused (one piece over its limit)
                running.outcome = "failed"
                return failed_records(job, self._clock(), BackendError("result_too_large", str(error)), attempt)
            except Exception as error:  # a backend bug fails the job (and releases the hold), not the worker
                logger.exception("backend crashed on job %s", job.job_id, extra=about(job.request_id, job.org_id))
                crash = BackendError("backend_crashed", f"{type(error).__name__}: {error}")
                running.outcome = "failed"
                return failed_records(job, self._clock(), crash, attempt)
            finally:
                running.backend_call = None
            running.outcome = "completed"
            output = msgspec.structs.replace(
                output,
                units=charged_units(output.units, context.payload),
                result=with_answer_shape(job.endpoint, output.result, context.payload),
            )
            return completed_records(
                job,
                started_at,
                self._clock(),
                output,
                context.served_model,
                context.fallback_depth,
                context.counted_by,
            )
        raise AssertionError("the last attempt returns")

    def _reporter(self, running: _Running, attempt: int, context: JobContext) -> Callable[[int, Units, str, str], None]:
        """The progress points of one attempt as ``JobProgressed`` events: every point of a streamed
        job (the client reads them as they come), at most one per ``progress_interval_s`` otherwise."""
        job = running.job
        sequence = 0
        last_report = 0.0

        def report(progress_milli: int, units: Units, delta: str, part: str) -> None:
            nonlocal sequence, last_report
            if running.stop.is_set():
                return  # stopped: nothing more of this run goes out
            now = time.monotonic()
            if not job.stream and (progress_milli >= 1000 or now - last_report < progress_interval_s):
                return  # the completion says the rest
            sequence += 1
            last_report = now
            if part == AUDIO:
                running.audio_pieces_attempt = attempt
            event = JobProgressed(
                event_id=job_output_id(job.job_id, f"progress/{attempt}/{sequence}"),
                occurred_at=self._clock(),
                job_id=job.job_id,
                request_id=job.request_id,
                attempt=attempt,
                sequence=sequence,
                progress_milli=progress_milli,
                delta=delta,
                part=part,
                units=units,
                served_model=_served(job, context.served_model),
                fallback_depth=context.fallback_depth if _served(job, context.served_model) else 0,
                **_envelope(job),
            )
            self._send([Outgoing(topics.JOBS, job.org_id, encode(event))])

        return report

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

    def _cancel_backend_call(self, running: _Running) -> None:
        """On the job loop: stop a backend that is waiting (an upstream stream is closed at once)."""
        if running.backend_call is not None:
            running.backend_call.cancel()

    # --- the polling thread ---

    def _take(self, records: list[Record]) -> None:
        """Take a batch: its stop signals first, then its jobs. A job whose cancel (or dead letter)
        is in the same batch (a redelivered job after a crash, cancelled meanwhile) never starts."""
        fresh: list[_Running] = []
        for record in records:
            tp = (record.topic, record.partition)
            self._polled_to[tp] = record.offset + 1
            event = decode_event(record.value)
            if isinstance(event, JobQueued):
                if (
                    event.job_id in self._stopped_jobs
                    or event.job_id in self._running
                    or event.job_id in self._finished_jobs
                ):
                    continue  # stopped before it started, or a second copy of a job running or run here
                self._in_flight.setdefault(tp, set()).add(record.offset)
                running = _Running(event, record)
                with self._lock:
                    self._running[event.job_id] = running
                fresh.append(running)
            elif isinstance(event, (JobCancelRequested, JobDeadLettered)):
                reason = "cancel" if isinstance(event, JobCancelRequested) else "dead_letter"
                self._signal_stop(event.job_id, reason)
        assert self._loop is not None
        for running in fresh:
            # A stopped one runs no backend: it reports its (empty) cancellation, or nothing.
            asyncio.run_coroutine_threadsafe(self._execute(running), self._loop)

    def _signal_stop(self, job_id: str, reason: str) -> None:
        self._stopped_jobs[job_id] = reason
        while len(self._stopped_jobs) > stop_signals_max:
            self._stopped_jobs.popitem(last=False)
        running = self._running.get(job_id)
        if running is not None and not running.stop.is_set():
            running.stop_reason = reason
            running.stop.set()
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._cancel_backend_call, running)

    def _drain_finished(self) -> int:
        finished = 0
        while True:
            try:
                running = self._finished.get_nowait()
            except queue.Empty:
                return finished
            tp = (running.record.topic, running.record.partition)
            self._in_flight.get(tp, set()).discard(running.record.offset)
            with self._lock:
                self._running.pop(running.job.job_id, None)
            self._finished_jobs[running.job.job_id] = None
            while len(self._finished_jobs) > finished_jobs_max:
                self._finished_jobs.popitem(last=False)
            finished += 1

    def _positions(self) -> dict[tuple[str, int], int]:
        """Each partition up to its oldest unfinished job, so a crash redelivers only those."""
        return {tp: min(self._in_flight.get(tp) or {end}) for tp, end in self._polled_to.items()}

    def _heartbeats(self) -> list[Outgoing]:
        outputs: list[Outgoing] = []
        due = time.monotonic() - self._settings.job_lease_s / 3
        with self._lock:
            for running in self._running.values():
                if running.run_id and running.lease_sent_at < due and not running.stop.is_set():
                    outputs += self._lease(running)
        return outputs

    def _on_assigned(self, partitions: set[int]) -> None:
        logger.info("worker owns dispatch partitions %s", sorted(partitions))

    def run(self, stop: threading.Event) -> None:
        consumer = self._log.consumer(
            [topics.dispatch_topic(self.pool)],
            client_id=self.worker_id,
            group=self.group,
            on_assigned=self._on_assigned,
        )
        self._producer = self._log.producer(self.worker_id)
        loop = loops.new_event_loop()
        self._loop = loop
        started = threading.Event()

        def run_loop() -> None:
            asyncio.set_event_loop(loop)
            self._slots = FairSlots(self._settings.worker_jobs_in_flight_max, self.org_jobs_in_flight_max)
            loop.call_soon(started.set)
            loop.run_forever()

        loop_thread = threading.Thread(target=run_loop, name=f"jobs-{self.pool}", daemon=True)
        loop_thread.start()
        started.wait(loop_start_wait_s)
        try:
            self._poll(consumer, stop)
        finally:
            self._shutdown(loop, loop_thread)
            consumer.close()

    def _poll(self, consumer: Consumer, stop: threading.Event) -> None:
        committed: dict[tuple[str, int], int] = {}
        commit_due = 0.0
        wait_ms = self._settings.poll_wait_ms
        while not stop.is_set():
            if len(self._running) < self.jobs_taken_max:
                self._take(consumer.poll(self._settings.batch_records_max, wait_ms))
            else:
                self._room.wait(wait_ms / 1000)  # full: wait for a job to finish, not on the log
            self._lag.tick(consumer.lags)
            self._room.clear()
            self.jobs_done += self._drain_finished()
            heartbeats = self._heartbeats()
            if heartbeats:
                self._send(heartbeats)
            if time.monotonic() < commit_due:
                continue
            positions = self._positions()
            if positions != committed:
                try:
                    # Not waited for: taking the next jobs matters more, and a lost commit only
                    # means a redelivery (outcome ids derive from the job; the ledger refuses repeats).
                    consumer.commit(positions, wait=False)
                    committed = positions
                    commit_due = time.monotonic() + positions_commit_interval_s
                except Exception:
                    logger.exception("worker could not commit its positions; they are committed later")
        self.jobs_done += self._drain_finished()
        positions = self._positions()
        if positions != committed:
            try:
                consumer.commit(positions)  # on the way out, waited for: fewer redeliveries after a restart
            except Exception:
                logger.exception("worker could not commit its positions on stopping")

    def _shutdown(self, loop: asyncio.AbstractEventLoop, loop_thread: threading.Thread) -> None:
        self._stopping = True
        with self._lock:
            running = list(self._running.values())
        for job in running:
            job.stop_reason = "shutdown"
            job.stop.set()
            loop.call_soon_threadsafe(self._cancel_backend_call, job)

        async def close_backend() -> None:
            await self._backend.close()

        try:
            asyncio.run_coroutine_threadsafe(close_backend(), loop).result(timeout=5)
        except Exception:
            logger.warning("the backend did not close cleanly", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join(timeout=5)
        if self._producer is not None:
            self._producer.flush(5)
            self._producer.close()


def _settle(done: asyncio.Future[BaseException | None], error: BaseException | None) -> None:
    if not done.done():
        done.set_result(error)


def worker_roles(
    log: EventLog, settings: Settings, backend: Callable[[], Backend], metrics: Metrics | None = None
) -> list[WorkerRole]:
    """The roles of a worker process: one per pool it serves (``TOLLGATE_WORKER_POOLS``)."""
    pools = dict.fromkeys(settings.worker_pools)
    return [WorkerRole(log, settings, backend(), pool=pool, metrics=metrics) for pool in pools]
