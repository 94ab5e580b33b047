"""A worker's slots shared between organizations (workers/fair.py): one organization runs at most its
bound, a freed slot goes to the organizations waiting in turn, and a waiter that goes away (a job
stopped while it waited) gives its turn up without leaking a slot."""

from __future__ import annotations

import asyncio

import pytest

from workers.fair import FairSlots


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_one_organization_runs_at_most_its_bound_and_another_starts_at_once() -> None:
    async def scenario() -> None:
        slots = FairSlots(total=4, per_org=2)
        flood = [asyncio.create_task(slots.acquire("org_flood")) for _ in range(10)]
        await _settle()
        assert sum(task.done() for task in flood) == 2 and slots.waiting("org_flood") == 8
        await asyncio.wait_for(slots.acquire("org_quiet"), 0.1)  # a free slot, though the flood waits
        assert slots.running == {"org_flood": 2, "org_quiet": 1}
        for task in flood:
            task.cancel()

    asyncio.run(scenario())


def test_freed_slots_go_to_the_waiting_organizations_in_turn() -> None:
    async def scenario() -> None:
        slots = FairSlots(total=2, per_org=2)
        started: list[str] = []

        async def job(org: str) -> None:
            await slots.acquire(org)
            started.append(org)

        for _ in range(2):
            await slots.acquire("org_a")  # the pool is full
        tasks = [asyncio.create_task(job("org_a")) for _ in range(4)]
        await _settle()
        tasks += [asyncio.create_task(job(org)) for org in ("org_b", "org_c")]
        await _settle()
        assert started == []
        for expected in (["org_a"], ["org_a", "org_b"], ["org_a", "org_b", "org_c"]):
            slots.release(started[-1] if started else "org_a")
            await _settle()
            assert started == expected
        for task in tasks:
            task.cancel()

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaves_its_turn_and_no_slot_leaks() -> None:
    async def scenario() -> None:
        slots = FairSlots(total=1, per_org=1)
        await slots.acquire("org_a")
        gone = asyncio.create_task(slots.acquire("org_b"))
        stays = asyncio.create_task(slots.acquire("org_c"))
        await _settle()
        gone.cancel()
        await _settle()
        slots.release("org_a")
        await _settle()
        assert stays.done() and slots.running == {"org_c": 1} and slots.waiting("org_b") == 0
        slots.release("org_c")
        assert slots.running == {}
        await asyncio.wait_for(slots.acquire("org_b"), 0.1)

    asyncio.run(scenario())


def test_a_waiter_cancelled_as_it_is_granted_passes_the_slot_on() -> None:
    async def scenario() -> None:
        slots = FairSlots(total=1, per_org=1)
        await slots.acquire("org_a")
        granted = asyncio.create_task(slots.acquire("org_b"))
        after = asyncio.create_task(slots.acquire("org_c"))
        await _settle()
        slots.release("org_a")  # grants org_b's future ...
        granted.cancel()  # ... whose task is cancelled before it resumes
        await _settle()
        assert granted.cancelled() and after.done() and slots.running == {"org_c": 1}

    asyncio.run(scenario())


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FairSlots(total=0, per_org=1)
    with pytest.raises(ValueError):
        FairSlots(total=4, per_org=0)
