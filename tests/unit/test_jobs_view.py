"""The job state projection: statuses from the ledger's money, results from the workers, in any
arrival order across the two topics."""

from __future__ import annotations

from datetime import timedelta
from itertools import permutations

import msgspec
import pytest

from projections.jobs import JobsView
from schemas.events import (
    Event,
    HoldPlaced,
    HoldReleased,
    JobCancelled,
    JobCancelRequested,
    JobFailed,
)
from schemas.units import Units
from tests.support import captured, completed, envelope, job, leased, now, placed, progressed


def released(reason: str) -> HoldReleased:
    return HoldReleased(
        event_id="e6",
        hold_id="req_1",
        request_id="req_1",
        token_id="t",
        model="m",
        endpoint="e",
        amount_micros=100,
        reason=reason,
        **envelope,
    )


def fold(events: list[Event]) -> JobsView:
    view = JobsView()
    for event in events:
        view.apply(event)
    return view


@pytest.mark.parametrize("order", list(permutations([completed, captured, progressed])))
def test_completed_needs_the_charge_and_the_result_in_any_order(order: tuple[Event, ...]) -> None:
    # Worker events may come before the hold that created the job: they wait for it.
    view = fold([*order[:1], placed, leased, *order[1:]])
    state = view.get("job_1")
    assert state is not None and state.status == "completed"
    assert state.cost_micros == 40 and state.result is not None and state.progress_milli == 1000


@pytest.mark.parametrize("order", list(permutations(["result", "charge", "cancel"])))
def test_a_job_ends_at_the_same_moment_in_every_arrival_order(order: tuple[str, ...]) -> None:
    """Two gateways fold the jobs and ledger topics on two threads each, so they see a job's result and
    its charge in either order; both must show the same job (found by the two-gateway broker fault test:
    completed_at was whichever of the two arrived last)."""
    ran = msgspec.structs.replace(completed, occurred_at=now + timedelta(seconds=1))
    charged = msgspec.structs.replace(captured, occurred_at=now + timedelta(seconds=2))
    cancel = JobCancelRequested(event_id="e7", hold_id="req_1", pool="default", reason="client", **job, **envelope)
    stopped = JobCancelled(event_id="e8", model="m", units=Units(output_tokens=1), **job, **envelope)
    for events in ({"result": ran, "charge": charged}, {"result": stopped, "charge": charged, "cancel": cancel}):
        view = fold([placed, leased, *(events[name] for name in order if name in events)])
        state = view.get("job_1")
        assert state is not None and state.finished_at == charged.occurred_at, (order, state)


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        ("cancelled", "cancelled"),
        ("dead_letter", "dead_letter"),
        ("dead_letter:gpu_oom", "dead_letter"),
        ("job_failed:bad_input", "failed"),
        ("hold_expired", "failed"),
    ],
)
def test_a_release_ends_the_job_by_its_reason(reason: str, status: str) -> None:
    view = fold([placed, leased, released(reason)])
    state = view.get("job_1")
    assert state is not None and state.status == status and state.cost_micros == 0


def test_a_cancelled_job_charged_for_its_work_is_cancelled_not_completed() -> None:
    cancel = JobCancelRequested(event_id="e7", hold_id="req_1", pool="default", reason="client", **job, **envelope)
    stopped = JobCancelled(event_id="e8", model="m", units=Units(output_tokens=1), **job, **envelope)
    view = fold([placed, leased, cancel, stopped, captured])
    state = view.get("job_1")
    assert state is not None and (state.status, state.cost_micros) == ("cancelled", 40)


def test_a_failure_message_comes_from_the_worker() -> None:
    failed = JobFailed(event_id="e9", model="m", code="bad_input", message="no", **job, **envelope)
    state = fold([placed, failed, released("job_failed:bad_input")]).get("job_1")
    assert state is not None and (state.status, state.error_code, state.error_message) == ("failed", "bad_input", "no")


def test_finished_jobs_are_kept_for_the_retention_window_then_pruned() -> None:
    view = fold([placed, leased, completed, captured])
    later = HoldPlaced(
        event_id="x",
        hold_id="req_2",
        request_id="req_2",
        job_id="job_2",
        token_id="t",
        model="m",
        endpoint="e",
        amount_micros=1,
        expires_at=now,
        occurred_at=now + timedelta(minutes=59),
        org_id="org_a",
    )
    view.apply(later)
    assert view.get("job_1") is not None
    view.apply(
        msgspec.structs.replace(
            later, event_id="y", job_id="job_3", request_id="req_3", occurred_at=now + timedelta(minutes=61)
        )
    )
    assert view.get("job_1") is None and view.get("job_2") is not None


def test_listing_is_per_organization_newest_first() -> None:
    other = msgspec.structs.replace(placed, event_id="o", org_id="org_b", job_id="job_b", request_id="req_b")
    second = msgspec.structs.replace(placed, event_id="s", job_id="job_2", request_id="req_2")
    view = fold([placed, other, second])
    assert [j.job_id for j in view.list("org_a", 10)] == ["job_2", "job_1"]
    assert [j.job_id for j in view.list("org_a", 10, after="job_2")] == ["job_1"]
    assert [j.job_id for j in view.list("org_b", 10)] == ["job_b"]


def test_a_rerun_of_a_finished_job_changes_nothing() -> None:
    """A redelivered dispatch record runs the job again: the same outcome event id, a later time,
    maybe another result. The first outcome stands, as the ledger's first capture does."""
    view = fold([placed, leased, completed, captured])
    first = view.get("job_1")
    assert first is not None
    before = (first.status, first.run_finished_at, first.finished_at, bytes(first.result or b""))
    rerun = msgspec.structs.replace(
        completed, occurred_at=now + timedelta(seconds=30), result=msgspec.Raw(b'{"ok": "again"}')
    )
    view.apply(rerun)
    view.apply(completed)
    after = view.get("job_1")
    assert after is not None
    assert (after.status, after.run_finished_at, after.finished_at, bytes(after.result or b"")) == before


def test_queue_position_counts_the_organizations_jobs_waiting_ahead_in_the_pool() -> None:
    """Fal's ``queue_position``: 0 is next; a job running, another organization's or another pool's
    job is not ahead; a job not folded yet is behind every one waiting."""

    def queued(name: str, org: str = "org_a", pool: str = "default") -> HoldPlaced:
        return msgspec.structs.replace(
            placed, event_id=name, job_id=f"job_{name}", request_id=f"req_{name}", org_id=org, pool=pool
        )

    running = msgspec.structs.replace(leased, job_id="job_a", request_id="req_a")
    view = fold([queued("a"), queued("b"), queued("x", org="org_b"), queued("c", pool="gpu"), queued("d"), running])
    positions = {name: view.queue_position("org_a", "default", f"job_{name}") for name in ("b", "d", "new")}
    assert positions == {"b": 0, "d": 1, "new": 2}
    assert view.queue_position("org_a", "gpu", "job_c") == 0 and view.queue_position("org_b", "default", "job_x") == 0
