"""Runs of Casola's agents (``POST /api/agents/{id}/run``): each node of the DAG, in order, as metered
jobs through the same path as ``POST /api/jobs`` (``gateway/routes/casola.py`` ``metered_job``: the same
parser, hold, charge and usage row as the request sent directly), a map node's items at most
``max_concurrency`` at once. A node whose job is refused (402) or fails fails; a map node fails when
more of its items failed than its ``tolerance`` allows; a failed node fails the run, and the nodes
after it do not run (``skipped``). The run's cost is the sum of its sub-jobs' charges.

The run is a task of the event loop of the instance that accepted it; each change of its state is an
``AgentRunUpdated`` snapshot on ``tollgate.jobs``, so every instance shows it. Each sub-job's request id
derives from the run, the node and the item (``req_<run>_<node>_<item>``), keyed: a sub-job is placed
once, whatever happens to the run.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import logging
from typing import Any

import msgspec

from eventlog import Outgoing, topics
from gateway.agent_dag import (
    Dag,
    MapNode,
    TaskNode,
    TemplateError,
    map_items_max,
    outputs_of,
    resolve,
    within_tolerance,
)
from gateway.errors import ApiError
from gateway.metering import Attempt, AttemptForgotten, OrganizationBusy, Overloaded, job_id_for
from gateway.results import charge_of_job, shape_result
from gateway.routes.casola import casola_tasks, metered_job
from gateway.routes.fal import fal_output
from gateway.routes.generation import raise_refusal
from ledger.money import micros_to_decimal
from projections.views import ApiToken
from schemas.api import CasolaJobRequest
from schemas.codec import encode
from schemas.events import AgentRunUpdated, HoldPlaced
from schemas.ids import new_id
from schemas.moments import utc_now

logger = logging.getLogger(__name__)

busy_retry_s = 0.2  # a sub-job the gateway cannot take now (in-flight bounds) is tried again after this
runs_in_flight_max = 64  # runs one gateway instance runs at once; more are refused (503) until one ends


@dataclasses.dataclass(slots=True)
class SubJob:
    ok: bool
    job_id: str
    cost_micros: int = 0
    result: Any = None
    error: dict[str, str] | None = None


def sub_request_id(run_id: str, node_id: str, index: int) -> str:
    return f"req_{run_id.removeprefix('run_')}_{node_id}_{index:03d}"


class AgentRunner:
    """Runs this gateway's agent runs as tasks of its event loop."""

    def __init__(self, core: Any) -> None:
        self._core = core
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def full(self) -> bool:
        return len(self._tasks) >= runs_in_flight_max

    def start(
        self, token: ApiToken, run_id: str, agent_id: str, dag: Dag, params: dict[str, Any], base_url: str
    ) -> None:
        task = asyncio.get_running_loop().create_task(self._run(token, run_id, agent_id, dag, params, base_url))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _snapshot(
        self,
        token: ApiToken,
        run_id: str,
        agent_id: str,
        params: Any,
        status: str,
        nodes: dict[str, Any],
        error: Any = None,
    ) -> AgentRunUpdated:
        cost = sum(int(node.get("cost_micros", 0)) for node in nodes.values())
        return AgentRunUpdated(
            event_id=new_id("evt"),
            occurred_at=utc_now(),
            org_id=token.org_id,
            correlation_id=run_id,
            run_id=run_id,
            agent_id=agent_id,
            input_params=msgspec.Raw(msgspec.json.encode(params)),
            status=status,  # type: ignore[arg-type]
            nodes=msgspec.Raw(msgspec.json.encode(nodes)),
            cost_micros=cost,
            error=msgspec.Raw(msgspec.json.encode(error)),
            instance_id=self._core.settings.instance_id,
        )

    def _append(self, event: AgentRunUpdated) -> None:
        self._core.send([Outgoing(topics.JOBS, event.org_id, encode(event))])

    async def _run(
        self, token: ApiToken, run_id: str, agent_id: str, dag: Dag, params: dict[str, Any], base_url: str
    ) -> None:
        nodes: dict[str, dict[str, Any]] = {
            node_id: {
                "type": "map" if isinstance(node, MapNode) else "task",
                "status": "pending",
                "job_ids": [],
                "cost_usd": 0,
                "cost_micros": 0,
            }
            for node_id, node in dag.nodes.items()
        }
        results: dict[str, Any] = {}
        failed_node = ""
        try:
            self._append(self._snapshot(token, run_id, agent_id, params, "running", nodes))
            for node_id in dag.order:
                state = nodes[node_id]
                if failed_node:
                    state["status"] = "skipped"
                    continue
                state["status"] = "running"
                self._append(self._snapshot(token, run_id, agent_id, params, "running", nodes))
                scope = {"input": params, "nodes": results}
                node = dag.nodes[node_id]
                if isinstance(node, MapNode):
                    ok = await self._map(token, run_id, node_id, node, scope, state, base_url)
                else:
                    ok = await self._task(token, run_id, node_id, node, scope, state, base_url)
                if ok:
                    results[node_id] = {"result": state["result"]}
                else:
                    failed_node = node_id
                self._append(self._snapshot(token, run_id, agent_id, params, "running", nodes))
            error = None
            if failed_node:
                error = {"code": "node_failed", "message": f"Node {failed_node} failed.", "node": failed_node}
            self._append(
                self._snapshot(token, run_id, agent_id, params, "failed" if failed_node else "completed", nodes, error)
            )
        except Exception as crash:  # a bug: the run fails, never hangs
            logger.exception("agent run %s failed", run_id)
            error = {"code": "run_failed", "message": str(crash)[:200]}
            self._append(self._snapshot(token, run_id, agent_id, params, "failed", nodes, error))

    async def _task(
        self,
        token: ApiToken,
        run_id: str,
        node_id: str,
        node: TaskNode,
        scope: dict[str, Any],
        state: dict[str, Any],
        base_url: str,
    ) -> bool:
        done = await self._sub_job(token, run_id, node_id, 0, node, scope, base_url)
        state["job_ids"] = [done.job_id] if done.job_id else []
        state["cost_micros"] = done.cost_micros
        state["cost_usd"] = micros_to_decimal(done.cost_micros)
        if not done.ok:
            state.update(status="failed", error=done.error, result=None)
            return False
        try:
            state.update(status="completed", result=outputs_of(done.result, node.outputs), error=None)
        except TemplateError as error:
            state.update(status="failed", result=None, error={"code": "output_not_found", "message": str(error)})
            return False
        return True

    async def _map(
        self,
        token: ApiToken,
        run_id: str,
        node_id: str,
        node: MapNode,
        scope: dict[str, Any],
        state: dict[str, Any],
        base_url: str,
    ) -> bool:
        try:
            items = resolve(node.items, scope)
        except TemplateError as error:
            state.update(status="failed", error={"code": "template_error", "message": str(error)}, result=None)
            return False
        if not isinstance(items, list) or len(items) > map_items_max:
            message = f"items must resolve to an array of at most {map_items_max} elements."
            state.update(status="failed", error={"code": "invalid_items", "message": message}, result=None)
            return False
        slots = asyncio.Semaphore(node.max_concurrency)

        async def one(index: int, item: Any) -> SubJob:
            async with slots:
                return await self._sub_job(token, run_id, node_id, index, node.node, {**scope, "item": item}, base_url)

        done = await asyncio.gather(*(one(index, item) for index, item in enumerate(items)))
        failed = sum(1 for sub in done if not sub.ok)
        cost = sum(sub.cost_micros for sub in done)
        ok = within_tolerance(failed, len(done), node.tolerance)
        state.update(
            status="completed" if ok else "failed",
            job_ids=[sub.job_id for sub in done if sub.job_id],
            cost_micros=cost,
            cost_usd=micros_to_decimal(cost),
            total=len(done),
            succeeded=len(done) - failed,
            failed=failed,
            # The items that succeeded, in order (what the next nodes read); the failures are in errors.
            result={"items": [sub.result for sub in done if sub.ok]},
            errors=[{"index": index, **sub.error} for index, sub in enumerate(done) if sub.error],
            error=None if ok else {"code": "tolerance_exceeded", "message": f"{failed} of {len(done)} items failed."},
        )
        return ok

    async def _sub_job(
        self,
        token: ApiToken,
        run_id: str,
        node_id: str,
        index: int,
        node: TaskNode,
        scope: dict[str, Any],
        base_url: str,
    ) -> SubJob:
        """One sub-job, held, run and charged exactly as ``POST /api/jobs`` with the same body would be."""
        core = self._core
        try:
            payload = resolve(node.payload, scope)
            body = CasolaJobRequest(task=node.task, payload=payload, model_id=node.model_id)
            metered = dataclasses.replace(
                metered_job(body, core.prices.current, token.org_id, core.files), run_async=False
            )
        except TemplateError as error:
            return SubJob(False, "", error={"code": "template_error", "message": str(error)})
        except ApiError as invalid:  # the payload as resolved is not a valid request of its task
            return SubJob(False, "", error={"code": invalid.code or "invalid_request", "message": invalid.message})
        rid = sub_request_id(run_id, node_id, index)
        while True:
            try:
                placement, seen = await core.metering.run(token, rid, metered, attempt=Attempt(keyed=True))
                break
            except (Overloaded, OrganizationBusy):
                await asyncio.sleep(busy_retry_s)  # the gateway's bounds: wait for a slot, as a client would
            except AttemptForgotten:
                return SubJob(
                    False, "", error={"code": "result_expired", "message": "The sub-job's result is no longer kept."}
                )
            except TimeoutError:
                return SubJob(
                    False, job_id_for(rid), error={"code": "timeout", "message": "The sub-job did not finish in time."}
                )
        job_id = placement.job_id
        try:
            # As for a request sent directly: a 402 is recorded (its usage row), and a job dispatched
            # against a slice whose hold the ledger then refused is told to stop, uncharged.
            raise_refusal(core, token, rid, metered, placement, seen)
        except ApiError as refused:
            if HoldPlaced not in seen:
                job_id = ""  # refused before any job existed (402)
            return SubJob(False, job_id, error={"code": refused.code or "failed", "message": refused.message})
        charge, completed = charge_of_job(core.pending, token.org_id, metered, placement, seen)
        shaped = shape_result(
            metered.endpoint, rid, msgspec.json.decode(completed.result), charge, metered.price_of(charge.model)
        )
        if node.task.startswith("fal/"):
            shaped = fal_output(casola_tasks[node.task][0], shaped, charge.units.variant)
        return SubJob(True, job_id, charge.amount_micros, await self._linked(token.org_id, shaped, job_id, base_url))

    async def _linked(self, org_id: str, value: Any, seed: str, base_url: str) -> Any:
        """``value`` with its media (``data:`` URLs, ``b64_json``) as signed URLs the gateway serves, as
        ``GET /api/jobs/{id}`` shows them: a run's snapshot carries links, not the bytes. An image
        result also gets ``url`` (its first image's), which ``${item.url}`` reads."""
        counter = [0]

        async def put(data: bytes, content_type: str) -> str:
            counter[0] += 1
            path = await asyncio.to_thread(self._core.media.put, org_id, data, content_type, f"{seed}/{counter[0]}")
            return base_url.rstrip("/") + str(path)

        async def walk(node: Any) -> Any:
            if isinstance(node, str) and node.startswith("data:") and ";base64," in node:
                header, _, encoded = node.partition(",")
                try:
                    data = base64.b64decode(encoded, validate=True)
                except (binascii.Error, ValueError):
                    return node
                return await put(data, header.removeprefix("data:").removesuffix(";base64"))
            if isinstance(node, dict):
                shaped = {key: await walk(item) for key, item in node.items() if key != "b64_json"}
                if isinstance(node.get("b64_json"), str):
                    shaped["url"] = await put(
                        base64.b64decode(node["b64_json"]), str(node.get("content_type") or "image/png")
                    )
                return shaped
            if isinstance(node, list):
                return [await walk(item) for item in node]
            return node

        linked = await walk(value)
        if (
            isinstance(linked, dict)
            and isinstance(linked.get("images"), list)
            and linked["images"]
            and "url" not in linked
        ):
            first = linked["images"][0]
            if isinstance(first, dict):
                linked["url"] = first.get("url")
        return linked
