"""Agents as the gateway shows them, folded from ``tollgate.jobs``.

- ``AgentStepsView``: the steps an agent task's turns emitted (``POST /v1/agents/run``): each step is a
  ``JobProgressed`` item of ``object`` "agent.step" (workers/agents.py), kept per job and attempt (a
  retried attempt starts its list again), bounded in jobs and in steps per job.
- ``CasolaAgentsView``: Casola's agents (``POST /api/agents``: a name and a DAG) and their runs, each
  run the last snapshot its runner appended (``AgentRunUpdated``), per organization.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from schemas.events import AgentCreated, AgentRunUpdated, Event, JobProgressed

agent_step_prefix = '{"object":"agent.step"'
step_jobs_max = 10_000  # jobs whose steps are kept (the oldest forgotten first)
steps_per_job_max = 256
agents_max = 100_000  # Casola agents and runs kept, each (the oldest forgotten first)


class AgentStepsView:
    def __init__(self) -> None:
        # job id -> (attempt, {sequence: step})
        self._steps: OrderedDict[str, tuple[int, dict[int, dict[str, Any]]]] = OrderedDict()
        self._lock = threading.Lock()

    def apply(self, event: Event) -> None:
        if (
            not isinstance(event, JobProgressed)
            or event.part != "item"
            or not event.delta.startswith(agent_step_prefix)
        ):
            return
        try:
            step = msgspec.json.decode(event.delta)
        except msgspec.DecodeError:
            return
        with self._lock:
            attempt, steps = self._steps.get(event.job_id, (0, {}))
            if event.attempt < attempt:
                return
            if event.attempt > attempt:
                attempt, steps = event.attempt, {}
            if len(steps) < steps_per_job_max:
                steps[event.sequence] = step
            self._steps[event.job_id] = (attempt, steps)
            self._steps.move_to_end(event.job_id)
            while len(self._steps) > step_jobs_max:
                self._steps.popitem(last=False)

    def steps(self, job_id: str) -> list[dict[str, Any]]:
        """The job's steps so far, in order (its latest attempt's)."""
        with self._lock:
            _, steps = self._steps.get(job_id, (0, {}))
            return [steps[sequence] for sequence in sorted(steps)]


@dataclass(slots=True)
class CasolaAgent:
    agent_id: str
    org_id: str
    token_id: str
    name: str
    dag: Any
    created_at: datetime


@dataclass(slots=True)
class CasolaRun:
    run_id: str
    agent_id: str
    org_id: str
    input_params: Any
    created_at: datetime
    status: str = "pending"
    nodes: Any = field(default_factory=dict)
    cost_micros: int = 0
    error: Any = None
    updated_at: datetime | None = None
    completed_at: datetime | None = None


class CasolaAgentsView:
    def __init__(self) -> None:
        self.agents: OrderedDict[tuple[str, str], CasolaAgent] = OrderedDict()
        self.runs: OrderedDict[tuple[str, str], CasolaRun] = OrderedDict()
        self._lock = threading.Lock()

    def apply(self, event: Event) -> None:
        with self._lock:
            if isinstance(event, AgentCreated):
                key = (event.org_id, event.agent_id)
                if key not in self.agents:
                    self.agents[key] = CasolaAgent(
                        event.agent_id,
                        event.org_id,
                        event.token_id,
                        event.name,
                        msgspec.json.decode(event.dag),
                        event.occurred_at,
                    )
                    while len(self.agents) > agents_max:
                        self.agents.popitem(last=False)
            elif isinstance(event, AgentRunUpdated):
                self._apply_run(event)

    def _apply_run(self, event: AgentRunUpdated) -> None:
        key = (event.org_id, event.run_id)
        run = self.runs.get(key)
        if run is None:
            run = self.runs[key] = CasolaRun(
                event.run_id, event.agent_id, event.org_id, msgspec.json.decode(event.input_params), event.occurred_at
            )
            while len(self.runs) > agents_max:
                self.runs.popitem(last=False)
        if run.completed_at is not None:
            return  # an ended run's snapshot is its last
        run.status = event.status
        run.nodes = msgspec.json.decode(event.nodes)
        run.cost_micros = event.cost_micros
        run.error = msgspec.json.decode(event.error)
        run.updated_at = event.occurred_at
        if event.status in ("completed", "failed", "cancelled"):
            run.completed_at = event.occurred_at

    def agent(self, org_id: str, agent_id: str) -> CasolaAgent | None:
        with self._lock:
            return self.agents.get((org_id, agent_id))

    def run(self, org_id: str, run_id: str) -> CasolaRun | None:
        with self._lock:
            return self.runs.get((org_id, run_id))
