"""Casola's agents (``/api/agents``): an agent is a DAG of task and map nodes (gateway/agent_dag.py),
per organization; a run executes it with input parameters, each node's work as metered jobs
(gateway/agent_runs.py).

- ``POST /api/agents`` ``{name, dag}``: 201 ``{"agent": {id, name, dag, created_at}}``; a DAG that
  cannot run (a node without a model or a known task, an edge or ``${nodes...}`` to no node, a cycle)
  is a 400 naming the field.
- ``GET /api/agents/{id}``: the agent.
- ``POST /api/agents/{id}/run`` ``{input_params}``: 202 ``{"run": {id, agent_id, status: "pending",
  input_params, created_at}}`` (Unix seconds, as the document's example).
- ``GET /api/agents/{id}/runs/{run_id}``: the run: ``status`` (pending, running, completed, failed),
  every node's status, sub-job ids, result (its ``outputs`` when it names them) and cost, and the
  run's ``cost_usd``: the sum of its sub-jobs' charges.

Another organization's agent or run does not exist (404). Errors are Casola's envelope.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath

from gateway.agent_dag import Dag, DagError, MapNode, parse_dag
from gateway.agent_runs import AgentRunner
from gateway.auth import authorize
from gateway.core import Core, GatewayCore
from gateway.errors import ApiError
from gateway.http import decode_body, derived_id, json_response, request_id
from gateway.routes.casola import casola_tasks
from ledger.money import micros_to_decimal
from projections.agents import CasolaAgent, CasolaRun
from schemas.events import AgentCreated, AgentRunUpdated
from schemas.ids import new_id
from schemas.moments import utc_now

name_chars_max = 200


class CreateAgentBody(msgspec.Struct, frozen=True, kw_only=True):
    dag: dict[str, Any]
    name: str = ""


class RunAgentBody(msgspec.Struct, frozen=True, kw_only=True):
    input_params: dict[str, Any] = msgspec.field(default_factory=dict)


def _unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def _checked_dag(core: GatewayCore, raw: Any) -> Dag:
    try:
        dag = parse_dag(raw, tuple(casola_tasks))
    except DagError as error:
        raise ApiError(400, error.message, code="invalid_dag", param=error.param) from None
    book = core.prices.current
    for node_id, node in dag.nodes.items():
        task = node.node if isinstance(node, MapNode) else node
        if book.model(task.model_id) is None and book.fal_model(task.model_id) is None:
            param = f"dag.nodes.{node_id}{'.node' if isinstance(node, MapNode) else ''}.model_id"
            raise ApiError(
                400, f"No model '{task.model_id}'; see GET /api/model-status.", code="model_not_found", param=param
            )
    return dag


def _agent_body(agent: CasolaAgent) -> dict[str, Any]:
    return {
        "id": agent.agent_id,
        "object": "agent",
        "name": agent.name,
        "dag": agent.dag,
        "created_at": _unix(agent.created_at),
    }


def run_body(run: CasolaRun) -> dict[str, Any]:
    return {
        "id": run.run_id,
        "object": "agent.run",
        "agent_id": run.agent_id,
        "status": run.status,
        "input_params": run.input_params,
        "created_at": _unix(run.created_at),
        "updated_at": _unix(run.updated_at),
        "completed_at": _unix(run.completed_at),
        "nodes": run.nodes,
        "cost_usd": micros_to_decimal(run.cost_micros),
        "cost_micros": run.cost_micros,
        "error": run.error,
    }


def _own_agent(
    request: Request[Any, Any, Any], core: GatewayCore, agent_id: str, scope: str
) -> tuple[Any, CasolaAgent]:
    token = authorize(request, scope)
    agent = core.casola_agents.agent(token.org_id, agent_id)
    if agent is None:
        raise ApiError(404, "Agent not found.", code="not_found", param="id")
    return token, agent


@post("/api/agents", operation_id="createAgent", opt={"scope": "user:write", "rate": "requests"}, status_code=201)
async def create_agent(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    token = authorize(request, "user:write")
    body = await decode_body(request, CreateAgentBody, core.settings.request_body_bytes_max)
    if len(body.name) > name_chars_max:
        raise ApiError(400, f"name is at most {name_chars_max} characters.", code="invalid_parameter", param="name")
    _checked_dag(core, body.dag)
    event = AgentCreated(
        event_id=new_id("evt"),
        occurred_at=utc_now(),
        org_id=token.org_id,
        correlation_id=request_id(request),
        agent_id=derived_id(request, "agent"),
        token_id=token.token_id,
        name=body.name,
        dag=msgspec.Raw(msgspec.json.encode(body.dag)),
    )
    await core.record_job_event(event)
    agent = core.casola_agents.agent(token.org_id, event.agent_id)
    assert agent is not None, "an agent is folded before its creation is answered"
    return json_response({"agent": _agent_body(agent)}, status_code=201)


@get("/api/agents/{agent_id:str}", operation_id="getAgent", opt={"scope": "user:read"})
async def get_agent(request: Request[Any, Any, Any], core: Core, agent_id: FromPath[str]) -> Response[bytes]:
    _, agent = _own_agent(request, core, agent_id, "user:read")
    return json_response({"agent": _agent_body(agent)})


@post("/api/agents/{agent_id:str}/run", operation_id="runCasolaAgent", opt={"scope": "user:write"}, status_code=202)
async def run_agent(request: Request[Any, Any, Any], core: Core, agent_id: FromPath[str]) -> Response[bytes]:
    """Start a run; its nodes run as metered jobs in the background. Poll ``GET .../runs/{run_id}``."""
    token, agent = _own_agent(request, core, agent_id, "user:write")
    body = await decode_body(request, RunAgentBody, core.settings.request_body_bytes_max)
    dag = _checked_dag(core, agent.dag)
    if core.agent_runner is None:
        core.agent_runner = AgentRunner(core)
    runner: AgentRunner = core.agent_runner
    if runner.full:
        raise ApiError(
            503,
            "This gateway runs its most agent runs at once; retry shortly.",
            code="overloaded",
            headers={"retry-after": "1"},
        )
    run_id = "run_" + request_id(request).removeprefix("req_")
    event = AgentRunUpdated(
        event_id=new_id("evt"),
        occurred_at=utc_now(),
        org_id=token.org_id,
        correlation_id=run_id,
        run_id=run_id,
        agent_id=agent.agent_id,
        input_params=msgspec.Raw(msgspec.json.encode(body.input_params)),
        status="pending",
        instance_id=core.settings.instance_id,
    )
    await core.record_job_event(event)  # folded here before the answer: a poll at once finds the run
    runner.start(token, run_id, agent.agent_id, dag, body.input_params, str(request.base_url))
    answer = {
        "id": run_id,
        "agent_id": agent.agent_id,
        "status": "pending",
        "input_params": body.input_params,
        "created_at": _unix(event.occurred_at),
        "poll_url": f"/api/agents/{agent.agent_id}/runs/{run_id}",
    }
    return json_response({"run": answer}, status_code=202)


@get("/api/agents/{agent_id:str}/runs/{run_id:str}", operation_id="getAgentRun", opt={"scope": "user:read"})
async def get_run(
    request: Request[Any, Any, Any], core: Core, agent_id: FromPath[str], run_id: FromPath[str]
) -> Response[bytes]:
    token, agent = _own_agent(request, core, agent_id, "user:read")
    run = core.casola_agents.run(token.org_id, run_id)
    if run is None or run.agent_id != agent.agent_id:
        raise ApiError(404, "Run not found.", code="not_found", param="run_id")
    return json_response({"run": run_body(run)})


route_handlers = [create_agent, get_agent, run_agent, get_run]
