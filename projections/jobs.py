"""Job state: a fold of the ledger's job facts and the workers' job events.

The terminal status comes from the money, which the ledger decides in one order per organization,
so every gateway instance agrees on it: a capture is ``completed`` (``cancelled`` when the job was
stopped on request and charged for its work), a release is ``cancelled``, ``dead_letter`` or
``failed`` by its reason. The workers' events add what the ledger does not carry: progress, the
result and the error message. A job shows ``completed`` only once both its charge and its result are
in, so a client never sees a completed job without its result.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import msgspec

from ledger.storage import storage_hold_prefix
from schemas.events import (
    Event,
    HoldCaptured,
    HoldPlaced,
    HoldReleased,
    JobCancelled,
    JobCancelRequested,
    JobCompleted,
    JobDeadLettered,
    JobFailed,
    JobLeased,
    JobLeaseLost,
    JobProgressed,
    JobRetryScheduled,
)
from schemas.units import Units

terminal_statuses = frozenset({"completed", "failed", "cancelled", "dead_letter"})
_outcome_events = (HoldPlaced, JobCompleted, JobCancelled, JobFailed, JobDeadLettered, HoldCaptured, HoldReleased)
early_jobs_max = 10_000  # jobs whose worker events arrived before the ledger's HoldPlaced


@dataclass(slots=True)
class JobState:
    job_id: str
    org_id: str
    request_id: str
    token_id: str
    model: str
    endpoint: str
    created_at: datetime
    status: str = "pending"
    progress_milli: int = 0
    attempt: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    run_finished_at: datetime | None = None  # when the worker finished (finished_at adds the charge)
    result: msgspec.Raw | None = None
    error_code: str = ""
    error_message: str = ""
    cancel_requested: bool = False
    cost_micros: int = 0
    units: Units = field(default_factory=Units)
    price_version: str = ""
    charged: HoldCaptured | None = None
    released_reason: str = ""
    released_at: datetime | None = None
    outcome_event_id: str = ""  # the worker's first JobCompleted, JobCancelled or JobFailed
    # The events that decide the request's answer, by type (the hold, the worker's first outcome, the
    # ledger's settlement): a retry of the request with its Idempotency-Key answers from them.
    outcome: dict[type, Event] = field(default_factory=dict)
    pool: str = ""

    @property
    def terminal(self) -> bool:
        return self.status in terminal_statuses


def _release_status(reason: str) -> str:
    if reason == "cancelled":
        return "cancelled"
    if reason.startswith("dead_letter"):
        return "dead_letter"
    return "failed"


class JobsView:
    """Every job of the retention window, by id and by organization (newest last)."""

    def __init__(self, retention: timedelta = timedelta(hours=1)) -> None:
        self.jobs: dict[str, JobState] = {}
        self._by_org: dict[str, dict[str, None]] = {}  # insertion-ordered set of job ids
        self._by_request: dict[str, str] = {}
        self._finished: deque[tuple[datetime, str]] = deque()
        # The ledger and jobs topics are read by different threads, so a job's result can arrive
        # before the hold that created the job: keep such events until it does (bounded).
        self._early: OrderedDict[str, list[Event]] = OrderedDict()
        self._retention = retention
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()  # (status, pool) -> jobs, for the metrics

    def counts_by_status_and_pool(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return {key: count for key, count in self._counts.items() if count}

    def _set_status(self, job: JobState, status: str) -> None:
        self._counts[(job.status, job.pool)] -= 1
        self._counts[(status, job.pool)] += 1
        job.status = status

    def get(self, job_id: str) -> JobState | None:
        return self.jobs.get(job_id)

    def by_request(self, request_id: str) -> JobState | None:
        job_id = self._by_request.get(request_id)
        return self.jobs.get(job_id) if job_id else None

    def outcome_of(self, request_id: str, job_id: str) -> dict[type, Event] | None:
        """What is known of the request's job: the events that decide its answer (a copy), or the
        worker's events that came before the job's hold (the ledger has not decided it yet); None
        when nothing is."""
        with self._lock:
            job = self.by_request(request_id)
            if job is not None:
                return dict(job.outcome)
            early = self._early.get(job_id)
            if early:
                return {type(event): event for event in early if isinstance(event, _outcome_events)}
            return None

    def queue_position(self, org_id: str, pool: str, job_id: str) -> int:
        """How many of the organization's jobs in ``pool`` wait (pending) ahead of ``job_id``, in the
        order they were queued (Fal's ``queue_position``: 0 is next). A job not folded yet is last.
        A pool's worker takes one organization's jobs in that order (``workers/fair.py``)."""
        with self._lock:
            ahead = 0
            for queued_id in self._by_org.get(org_id, {}):
                if queued_id == job_id:
                    break
                queued = self.jobs.get(queued_id)
                if queued is not None and queued.status == "pending" and queued.pool == pool:
                    ahead += 1
            return ahead

    def list(self, org_id: str, limit: int, after: str | None = None) -> list[JobState]:
        """Newest first; ``after`` is the last job id of the previous page."""
        # All under the lock: pruning (another thread) deletes from both maps between a check and a read.
        with self._lock:
            ids = list(self._by_org.get(org_id, {}))
            ids.reverse()
            if after is not None and after in ids:
                ids = ids[ids.index(after) + 1 :]
            return [self.jobs[job_id] for job_id in ids[:limit] if job_id in self.jobs]

    def apply(self, event: Event) -> None:
        with self._lock:
            self._apply(event)
            self._prune(event.occurred_at)

    def _apply(self, event: Event) -> None:
        if isinstance(event, HoldPlaced):
            if event.hold_id.startswith(storage_hold_prefix):
                return  # a storage charge (ledger/storage.py): no job runs for it
            if event.job_id not in self.jobs:
                self.jobs[event.job_id] = JobState(
                    job_id=event.job_id,
                    org_id=event.org_id,
                    request_id=event.request_id,
                    token_id=event.token_id,
                    model=event.model,
                    endpoint=event.endpoint,
                    created_at=event.occurred_at,
                    pool=event.pool or "default",
                    outcome={HoldPlaced: event},
                )
                self._counts[("pending", self.jobs[event.job_id].pool)] += 1
                self._by_org.setdefault(event.org_id, {})[event.job_id] = None
                self._by_request[event.request_id] = event.job_id
                for early in self._early.pop(event.job_id, []):
                    self._apply(early)
            return
        job_id = getattr(event, "job_id", None)
        if job_id is None and isinstance(event, HoldReleased):
            job_id = self._by_request.get(event.request_id)  # a release names the hold (the request), not the job
        job = self.jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            if isinstance(job_id, str) and not isinstance(event, HoldReleased):
                self._early.setdefault(job_id, []).append(event)
                while len(self._early) > early_jobs_max:
                    self._early.popitem(last=False)
            return
        if isinstance(event, (JobCompleted, JobCancelled, JobFailed)):
            if job.outcome_event_id:
                # A redelivered job that ran again: its outcome carries the same event id and a later
                # time. The first outcome stands, as the ledger's first capture or release does.
                return
            job.outcome_event_id = event.event_id
        if isinstance(event, _outcome_events) and type(event) not in job.outcome:
            job.outcome[type(event)] = event
        if isinstance(event, JobLeased):
            job.attempt = max(job.attempt, event.attempt)
            job.started_at = job.started_at or event.occurred_at
            if not job.terminal:
                self._set_status(job, "running")
        elif isinstance(event, JobLeaseLost):
            if not job.terminal:
                self._set_status(job, "pending")
        elif isinstance(event, JobProgressed):
            job.progress_milli = max(job.progress_milli, event.progress_milli)
            if not job.terminal:
                self._set_status(job, "running")
        elif isinstance(event, JobRetryScheduled):
            job.error_code, job.error_message = event.code, event.message
        elif isinstance(event, JobCancelRequested):
            job.cancel_requested = True
        elif isinstance(event, JobCompleted):
            job.result = event.result
            job.run_finished_at = event.occurred_at
            job.progress_milli = 1000
            self._settle(job)
        elif isinstance(event, JobCancelled):
            job.cancel_requested = True
            job.result = event.partial_result
            self._settle(job)
        elif isinstance(event, JobFailed):
            job.error_code, job.error_message = event.code, event.message
        elif isinstance(event, JobDeadLettered):
            job.error_code = job.error_code or event.code
            job.error_message = job.error_message or f"gave up after {event.attempts} attempts"
        elif isinstance(event, HoldCaptured):
            job.charged = event
            job.cost_micros, job.units, job.price_version = event.amount_micros, event.units, event.price_version
            self._settle(job)
        elif isinstance(event, HoldReleased):
            job.released_reason, job.released_at = event.reason, event.occurred_at
            if event.reason == "hold_expired" and not job.error_code:
                job.error_code, job.error_message = "hold_expired", "no worker finished the job in time"
            self._settle(job)

    def _settle(self, job: JobState) -> None:
        """A job ends once the ledger resolved its hold and, if charged, its result is here. It ends at
        the ledger's resolution time, whichever of the two arrived last: the ledger and jobs topics are
        read by two threads, so every instance must reach the same answer in any order."""
        if job.terminal:
            return
        if job.charged is not None:
            if job.cancel_requested:
                self._set_status(job, "cancelled")
            elif job.result is not None:
                self._set_status(job, "completed")
            else:
                return  # charged; its result is on its way
        elif job.released_reason:
            self._set_status(job, _release_status(job.released_reason))
        else:
            return
        ended_at = job.charged.occurred_at if job.charged is not None else job.released_at
        assert ended_at is not None
        job.finished_at = ended_at
        self._finished.append((ended_at, job.job_id))

    def _prune(self, now: datetime) -> None:
        horizon = now - self._retention
        while self._finished and self._finished[0][0] < horizon:
            _, job_id = self._finished.popleft()
            job = self.jobs.pop(job_id, None)
            if job is not None:
                self._counts[(job.status, job.pool)] -= 1
                self._by_org.get(job.org_id, {}).pop(job_id, None)
                self._by_request.pop(job.request_id, None)
