"""Waiters: several per key (a retry waits beside the attempt still running), seeded with the events a
key saw before its waiter came (a retry learning the first attempt's outcome), and the requests the
ledger ends by itself (a job cancelled before any run, a hold that expired) counted as answered."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec
import pytest
from msgspec.structs import replace

from gateway.waiters import Waiters, earlier_attempt_settled, request_finished
from projections.jobs import JobsView
from schemas.events import HoldCaptured, HoldPlaced, HoldReleased, JobCompleted, JobProgressed
from tests.support import captured, completed, now, placed, progressed


def _released(reason: str) -> HoldReleased:
    return HoldReleased(
        event_id=f"rel-{reason}",
        occurred_at=now,
        org_id="org_a",
        hold_id="req_1",
        request_id="req_1",
        token_id="t",
        model="m",
        endpoint="/v1/chat/completions",
        amount_micros=100,
        reason=reason,
    )


def test_two_waiters_on_one_key_both_get_its_events() -> None:
    async def scenario() -> None:
        waiters = Waiters()
        first = waiters.expect("req_1", request_finished)
        second = waiters.expect("req_1", request_finished)
        waiters.offer("req_1", placed)
        waiters.offer("req_1", completed)
        assert (await first)[JobCompleted] is completed
        assert (await second)[HoldPlaced] is placed
        assert len(waiters) == 0

    asyncio.run(scenario())


def test_forgetting_one_waiter_keeps_the_other() -> None:
    async def scenario() -> None:
        waiters = Waiters()
        first = waiters.expect("req_1", request_finished)
        second = waiters.expect("req_1", request_finished)
        waiters.forget("req_1", first)
        waiters.offer("req_1", completed)
        assert JobCompleted in await second
        assert not first.done()

    asyncio.run(scenario())


def test_a_seeded_waiter_answers_at_once_when_the_earlier_events_finish_it() -> None:
    async def scenario() -> None:
        waiters = Waiters()
        future = waiters.expect("req_1", request_finished)
        waiters.seed("req_1", future, {HoldPlaced: placed, JobCompleted: completed, HoldCaptured: captured})
        assert future.done() and future.result()[HoldCaptured] is captured
        assert len(waiters) == 0

    asyncio.run(scenario())


def test_a_seeded_waiter_keeps_what_it_saw_since_and_waits_for_the_rest() -> None:
    async def scenario() -> None:
        waiters = Waiters()
        future = waiters.expect("req_1", request_finished)
        later = replace(progressed, event_id="later")
        waiters.offer("req_1", later)
        waiters.seed("req_1", future, {HoldPlaced: placed, JobProgressed: progressed})
        assert not future.done()
        waiters.offer("req_1", completed)
        seen = await future
        assert seen[JobProgressed] is later and seen[HoldPlaced] is placed

    asyncio.run(scenario())


def test_a_release_the_ledger_decides_alone_ends_the_request() -> None:
    for reason in ("cancelled", "hold_expired", "dead_letter"):
        assert request_finished({HoldPlaced: placed, HoldReleased: _released(reason)}), reason
    # A worker's failure releases too, and its JobFailed (with the message) is on its way: wait for it.
    assert not request_finished({HoldPlaced: placed, HoldReleased: _released("job_failed:gpu_oom")})


def test_the_jobs_view_keeps_a_requests_outcome_events_and_early_ones() -> None:
    view = JobsView()
    assert view.outcome_of("req_1", "job_1") is None
    view.apply(progressed)  # before its hold: the ledger has not decided it yet
    assert view.outcome_of("req_1", "job_1") == {}
    view.apply(completed)
    assert view.outcome_of("req_1", "job_1") == {JobCompleted: completed}
    view.apply(placed)
    view.apply(replace(completed, event_id="again", result=msgspec.Raw(b"{}")))  # a second run's outcome
    view.apply(captured)
    outcome = view.outcome_of("req_1", "job_1")
    assert outcome == {HoldPlaced: placed, JobCompleted: completed, HoldCaptured: captured}


def test_a_retry_answers_an_earlier_completion_once_the_ledger_charged_it() -> None:
    """The first attempt answered at its completion; a retry states the ledger's capture instead (a
    price book published in between must not change what it says was charged)."""
    assert request_finished({HoldPlaced: placed, JobCompleted: completed})
    assert not earlier_attempt_settled({HoldPlaced: placed, JobCompleted: completed})
    assert earlier_attempt_settled({HoldPlaced: placed, JobCompleted: completed, HoldCaptured: captured})
    assert earlier_attempt_settled({HoldPlaced: placed, HoldReleased: _released("hold_expired")})


def test_a_seeded_waiter_can_be_given_another_end() -> None:
    async def scenario() -> None:
        waiters = Waiters()
        future = waiters.expect("req_1", request_finished)
        waiters.seed("req_1", future, {HoldPlaced: placed, JobCompleted: completed}, earlier_attempt_settled)
        assert not future.done()
        waiters.offer("req_1", captured)
        assert (await future)[HoldCaptured] is captured

    asyncio.run(scenario())


def test_a_plain_waiter_wakes_its_loop_once_when_its_wait_ends_and_a_stream_for_every_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The follower thread hands a plain waiter only its end: every earlier event (the hold placed,
    the lease) woke the event loop for nothing, a self-pipe write and a GIL hand-over each. A stream
    gets every event, in order."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        handed: list[object] = []
        handing = loop.call_soon_threadsafe

        def counting(callback: Callable[..., object], *args: object) -> asyncio.Handle:
            handed.append(args[1])
            return handing(callback, *args)

        monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
        waiters = Waiters()
        plain = waiters.expect("req_1", request_finished)
        subscription = waiters.subscribe("req_2", request_finished)
        for key in ("req_1", "req_2"):
            waiters.offer(key, placed)
            waiters.offer(key, progressed)
            waiters.offer(key, completed)
        assert handed == [completed, placed, progressed, completed]  # req_1's end; every event of req_2
        assert (await plain)[JobCompleted] is completed
        assert [event async for event in subscription.events(loop.time() + 5)] == [placed, progressed, completed]

    asyncio.run(scenario())
