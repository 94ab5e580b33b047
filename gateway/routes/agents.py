"""EmpirioLabs' agents (``/v1/agents``): long-running agent tasks (model ``manus``), metered.

- ``POST /v1/agents/run`` without ``task_id`` starts a task: one metered request (endpoint
  ``/v1/agents/run``) whose hold is the model's bound for a run (``context_length`` tokens read and
  ``max_output_tokens`` written by all its steps together: the price book's), its job the agent's run
  on a worker (workers/agents.py), always async: 202 ``{task_id, status: "queued", poll_url}``. With
  ``task_id`` it sends a follow-up: the running turn stops at its next step (charged for the steps it
  completed) and a new turn starts with the conversation so far (a metered request of its own, held
  for the same bound). ``stream`` left out answers 202 (as the document's examples, which then poll);
  ``stream: true`` sends the steps as server-sent events up to the end; ``stream: false`` waits for
  the end (at most ``max_wait_seconds``) and answers the task.
- ``GET /v1/agents/{task_id}``: the status (queued, running, completed, failed, stopped), the output,
  and the usage of every turn so far with its exact charge (``cost_usd``).
- ``GET /v1/agents/{task_id}/messages``: every step the agent emitted (``result.messages``).
- ``POST /v1/agents/{task_id}/stop``: the running turn stops at its next step; the ledger captures the
  steps completed and releases the rest of the hold. The answer waits for that charge.

A task is its turns' jobs: turn 1's request id is the creating request's, turn n's that id with
``_t<n>``, and the task id is turn 1's request id as ``task_...``. So every instance finds a task from
the jobs it folds (another organization's task does not exist: 404), and a task is kept as long as
its jobs are (``TOLLGATE_JOB_RETENTION_S``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any, Literal

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Stream

from gateway.auth import authorize
from gateway.core import Core, GatewayCore
from gateway.errors import ApiError
from gateway.http import decode, json_response, request_id
from gateway.metering import Attempt, AttemptForgotten, MeteredRequest, OrganizationBusy, Overloaded
from gateway.requests import model_price
from gateway.routes.generation import generation_body, overloaded, raise_refusal, run_metered
from gateway.routes.jobs import request_cancel
from gateway.waiters import request_admitted
from ledger.money import micros_to_decimal
from ledger.pricing import price_micros
from projections.jobs import JobState
from projections.views import ApiToken
from schemas.events import HoldPlaced
from schemas.moments import iso_or_none
from schemas.units import Units
from workers.agents import AGENTS

turns_max = 32  # follow-ups one task takes
wait_check_s = 0.1  # how often a blocking or streamed call looks at the task again
stop_wait_s_max = 30.0  # a stop waits this long for the ledger's charge of the stopped turn
task_statuses = {
    "pending": "queued",
    "running": "running",
    "completed": "completed",
    "cancelled": "stopped",
    "failed": "failed",
    "dead_letter": "failed",
}
agent_profiles = {"manus": ("manus-1.6",)}
stop_is_idempotent = "a stop changes a task once: a repeat finds it ended and answers its final state"


class AgentRunBody(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    input: str
    task_id: str | None = None
    stream: bool | None = None
    agent_profile: str | None = None
    poll_interval_seconds: float = msgspec.field(default=3)
    max_wait_seconds: float = msgspec.field(default=900)
    share_visibility: Literal["public", "private"] = "public"
    disable_formatting: bool = False
    sim: dict[str, Any] | None = None  # the simulated backend's knobs (only with TOLLGATE_SIM_KNOBS)


def task_id_of(first_request_id: str) -> str:
    return "task_" + first_request_id.removeprefix("req_")


def turn_request_id(task_id: str, turn: int) -> str:
    first = "req_" + task_id.removeprefix("task_")
    return first if turn == 1 else f"{first}_t{turn}"


def _turns(core: GatewayCore, task_id: str) -> list[JobState]:
    turns: list[JobState] = []
    for turn in range(1, turns_max + 1):
        job = core.jobs.by_request(turn_request_id(task_id, turn))
        if job is None:
            break
        turns.append(job)
    return turns


def _own_task(
    request: Request[Any, Any, Any], core: GatewayCore, task_id: str, scope: str
) -> tuple[ApiToken, list[JobState]]:
    token = authorize(request, scope)
    turns = _turns(core, task_id) if task_id.startswith("task_") else []
    if not turns or turns[0].org_id != token.org_id or turns[0].endpoint != AGENTS:
        raise ApiError(404, f"No agent task '{task_id}'.", code="task_not_found", param="task_id")
    return token, turns


def _check(body: AgentRunBody, model: str) -> None:
    if not body.input.strip():
        raise ApiError(400, "input must not be empty.", code="invalid_parameter", param="input")
    profiles = agent_profiles.get(model, ())
    if body.agent_profile is not None and body.agent_profile not in profiles:
        raise ApiError(
            400,
            f"agent_profile must be one of {', '.join(profiles) or 'none'} for {model}.",
            code="invalid_parameter",
            param="agent_profile",
        )
    if not 1 <= body.poll_interval_seconds <= 30:
        raise ApiError(
            400, "poll_interval_seconds must be from 1 to 30.", code="invalid_parameter", param="poll_interval_seconds"
        )
    if not 5 <= body.max_wait_seconds <= 1800:
        raise ApiError(
            400, "max_wait_seconds must be from 5 to 1800.", code="invalid_parameter", param="max_wait_seconds"
        )


def _metered(
    core: GatewayCore, body: AgentRunBody, history: list[dict[str, str]], task_id: str, turn: int
) -> MeteredRequest:
    book = core.prices.current
    price = model_price(book, body.model, lambda p: p.category == "agent", "an agent")
    _check(body, price.model)
    # Every step reads the conversation, which is bounded at one token per byte (as the gateway bounds
    # any text): it must leave room for the steps of a whole turn within what the turn is held for.
    conversation_bytes = len(body.input.encode()) + sum(len(m["content"].encode()) for m in history)
    conversation_bytes_max = price.context_length // 8
    if conversation_bytes > conversation_bytes_max:
        raise ApiError(
            400,
            f"The task's conversation would be {conversation_bytes} bytes; {price.model} takes at most "
            f"{conversation_bytes_max} (shorten the input, or start a new task).",
            code="context_length_exceeded",
            param="input",
        )
    payload: dict[str, Any] = {
        "model": price.model,
        "input": body.input,
        "task_id": task_id,
        "turn": turn,
        "follow_up": turn > 1,
        "history": history,
        "agent_profile": body.agent_profile or agent_profiles.get(price.model, ("",))[0],
        "max_input_tokens": price.context_length,
        "max_output_tokens": price.max_output_tokens,
    }
    if body.sim is not None:
        payload["sim"] = body.sim
    bound = Units(input_tokens=price.context_length, output_tokens=price.max_output_tokens)
    # stream: every step is a progress event (the messages list shows each one), not one per interval.
    return MeteredRequest(AGENTS, price, book.version, bound, msgspec.json.encode(payload), run_async=True, stream=True)


def _accepted(task_id: str, model: str, rid: str) -> Response[bytes]:
    body = {
        "task_id": task_id,
        "object": "agent.task",
        "status": "queued",
        "model": model,
        "request_id": rid,
        "poll_url": f"/v1/agents/{task_id}",
    }
    return json_response(body, status_code=202, headers={"location": f"/v1/agents/{task_id}"})


def _answer_of(job: JobState, steps: list[dict[str, Any]]) -> str:
    if job.status == "completed" and job.result is not None:
        result = msgspec.json.decode(job.result)
        if isinstance(result, dict):
            return str(result.get("output", ""))
    # Not finished: what the agent has written so far.
    return "\n".join(str(s.get("content", "")) for s in steps if s.get("role") == "assistant")


def _charge_so_far(core: GatewayCore, job: JobState) -> tuple[Units, int]:
    """A turn's units and charge: what the ledger captured once it is settled; while it runs, the steps
    completed so far at the hold's prices (what a stop now would charge, at most the hold)."""
    if job.terminal or job.charged is not None:
        return job.units, job.cost_micros
    steps = core.agent_steps.steps(job.job_id)
    read = sum(int(s.get("usage", {}).get("prompt_tokens", 0)) for s in steps)
    written = sum(int(s.get("usage", {}).get("completion_tokens", 0)) for s in steps)
    units = Units(input_tokens=read, output_tokens=written)
    placed = job.outcome.get(HoldPlaced)
    if not isinstance(placed, HoldPlaced) or not (read or written):
        return units, 0
    book = core.prices.at_version(placed.price_version)
    price = book.model(job.model) if book is not None else None
    if price is None:
        return units, 0
    return units, min(price_micros(price, units), placed.amount_micros)


def task_status(turns: list[JobState]) -> str:
    return task_statuses.get(turns[-1].status, "running")


def task_body(core: GatewayCore, task_id: str, turns: list[JobState]) -> dict[str, Any]:
    """The task in EmpirioLabs' shape (``task_id``, ``status``, ``output``, ``artifacts``, ``usage``),
    its usage summed over its turns' charges: ``cost_usd`` is what the ledger captured."""
    latest = turns[-1]
    charges = [_charge_so_far(core, job) for job in turns]
    prompt = sum(units.prompt_tokens for units, _ in charges)
    completion = sum(units.completion_tokens for units, _ in charges)
    cost = sum(micros for _, micros in charges)
    error = None
    if latest.status in ("failed", "dead_letter"):
        error = {"code": latest.error_code or latest.status, "message": latest.error_message or latest.status}
    return {
        "task_id": task_id,
        "object": "agent.task",
        "model": latest.model,
        "status": task_status(turns),
        "output": _answer_of(latest, core.agent_steps.steps(latest.job_id)),
        "artifacts": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "cost_usd": micros_to_decimal(cost),
            "cost_micros": cost,
        },
        "turns": len(turns),
        "created_at": iso_or_none(turns[0].created_at),
        "completed_at": iso_or_none(latest.finished_at),
        "error": error,
    }


def _charge_headers(body: dict[str, Any], turns: list[JobState]) -> dict[str, str]:
    """The task's charge, once every turn is settled (the ledger captured or released each)."""
    if not all(job.terminal for job in turns):
        return {}
    return {"x-credits-used": str(body["usage"]["cost_usd"])}


def _messages(core: GatewayCore, turns: list[JobState]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for turn, job in enumerate(turns, start=1):
        for step in core.agent_steps.steps(job.job_id):
            messages.append({**step, "turn": turn})
    return messages


def _history(core: GatewayCore, turns: list[JobState]) -> list[dict[str, str]]:
    """The conversation a follow-up continues: each turn's input and what the agent answered."""
    history: list[dict[str, str]] = []
    for job in turns:
        steps = core.agent_steps.steps(job.job_id)
        history += [{"role": "user", "content": str(s["content"])} for s in steps if s.get("role") == "user"]
        answer = _answer_of(job, steps) if job.status == "completed" else ""
        if answer:
            history.append({"role": "assistant", "content": answer})
    return history


async def _place_turn(core: GatewayCore, token: ApiToken, rid: str, metered: MeteredRequest) -> None:
    """Hold and queue a follow-up's turn under its own request id (keyed: a repeat of the same turn is
    the same hold and job, never a second)."""
    try:
        placement, seen = await core.metering.run(token, rid, metered, request_admitted, Attempt(keyed=True))
    except Overloaded:
        raise overloaded() from None
    except OrganizationBusy as busy:
        raise ApiError(
            429,
            f"Your organization already has {busy.args[0]} requests in flight on this gateway; retry shortly.",
            code="too_many_requests_in_flight",
            headers={"retry-after": "1"},
        ) from None
    except AttemptForgotten:
        raise ApiError(409, "This turn ended longer ago than its outcome is kept.", code="turn_expired") from None
    except TimeoutError:
        raise ApiError(504, "The ledger did not answer in time; check the task.", code="timeout") from None
    if placement.resumed or HoldPlaced in seen:
        return  # accepted: its job is queued
    raise_refusal(core, token, rid, metered, placement, seen)


async def _follow_up(
    request: Request[Any, Any, Any], core: GatewayCore, token: ApiToken, body: AgentRunBody, task_id: str
) -> str:
    """Start the task's next turn; its request id."""
    _, turns = _own_task(request, core, task_id, "user:write")
    latest = turns[-1]
    if body.model != latest.model:
        raise ApiError(
            400, f"Task {task_id} runs {latest.model}; send that model.", code="invalid_parameter", param="model"
        )
    if len(turns) >= turns_max:
        raise ApiError(
            409,
            f"A task takes at most {turns_max} turns; start a new task.",
            code="task_turns_exhausted",
            param="task_id",
        )
    if not latest.terminal and not core.agent_steps.steps(latest.job_id):
        raise ApiError(
            409,
            "The task has not started yet; send the follow-up once GET /v1/agents/{task_id} shows it running.",
            code="task_not_started",
            param="task_id",
        )
    metered = _metered(core, body, _history(core, turns), task_id, len(turns) + 1)
    if not latest.terminal:
        try:
            await request_cancel(core, latest)  # it stops at its next step, charged for those it completed
        except ApiError as error:
            if error.status_code != 409:  # 409: it ended meanwhile, which is as good
                raise
    rid = turn_request_id(task_id, len(turns) + 1)
    await _place_turn(core, token, rid, metered)
    return rid


async def _wait_for_end(core: GatewayCore, task_id: str, wait_s: float) -> list[JobState]:
    deadline = asyncio.get_running_loop().time() + wait_s
    turns = _turns(core, task_id)
    while not (turns and all(job.terminal for job in turns)) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(wait_check_s)
        turns = _turns(core, task_id)
    return turns


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: ".encode() + msgspec.json.encode(data) + b"\n\n"


async def _stream(core: GatewayCore, task_id: str, wait_s: float) -> AsyncGenerator[bytes, None]:
    """Each step as it is emitted (``agent.step``), then the task (``agent.task``) and ``[DONE]``."""
    yield _sse("agent.task", {"task_id": task_id, "status": "queued", "poll_url": f"/v1/agents/{task_id}"})
    deadline = asyncio.get_running_loop().time() + wait_s
    sent = 0
    while True:
        turns = _turns(core, task_id)
        messages = _messages(core, turns)
        for message in messages[sent:]:
            yield _sse("agent.step", message)
        sent = len(messages)
        ended = bool(turns) and all(job.terminal for job in turns)
        if ended or asyncio.get_running_loop().time() >= deadline:
            if turns:
                yield _sse("agent.task", task_body(core, task_id, turns))
            yield b"data: [DONE]\n\n"
            return
        await asyncio.sleep(wait_check_s)


@post("/v1/agents/run", operation_id="runAgent", opt={"scope": "user:write"}, status_code=202)
async def run_agent(request: Request[Any, Any, Any], core: Core) -> Response[bytes] | Stream:
    """Start a task (202 with its ``task_id``), or follow one up (``task_id``)."""
    token = authorize(request, "user:write")
    body = decode(await generation_body(request, core), AgentRunBody)
    if body.task_id is not None:
        rid = await _follow_up(request, core, token, body, body.task_id)
        task_id = body.task_id
    else:
        rid = request_id(request)
        task_id = task_id_of(rid)
        metered = _metered(core, body, [], task_id, 1)
        await run_metered(request, core, token, metered, lambda rid, placement: _accepted(task_id, metered.model, rid))
    if body.stream is True:
        return Stream(
            _stream(core, task_id, body.max_wait_seconds),
            status_code=200,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )
    if body.stream is False:
        turns = await _wait_for_end(core, task_id, body.max_wait_seconds)
        answer = task_body(core, task_id, turns)
        return json_response(answer, headers=_charge_headers(answer, turns))
    return _accepted(task_id, body.model, rid)


@get("/v1/agents/{task_id:str}", operation_id="getAgentTask", opt={"scope": "user:read"})
async def get_task(request: Request[Any, Any, Any], core: Core, task_id: FromPath[str]) -> Response[bytes]:
    _, turns = _own_task(request, core, task_id, "user:read")
    body = task_body(core, task_id, turns)
    return json_response(body, headers=_charge_headers(body, turns))


@get("/v1/agents/{task_id:str}/messages", operation_id="listAgentMessages", opt={"scope": "user:read"})
async def list_messages(request: Request[Any, Any, Any], core: Core, task_id: FromPath[str]) -> Response[bytes]:
    """Every step so far: ``result.messages`` (each with its turn, type, role, content and tokens) and
    ``result.output``, the text the agent has written."""
    _, turns = _own_task(request, core, task_id, "user:read")
    messages = _messages(core, turns)
    return json_response(
        {
            "object": "agent.messages",
            "model": turns[-1].model,
            "task_id": task_id,
            "status": task_status(turns),
            "result": {
                "messages": messages,
                "output": _answer_of(turns[-1], core.agent_steps.steps(turns[-1].job_id)),
            },
        }
    )


@post(
    "/v1/agents/{task_id:str}/stop",
    operation_id="stopAgentTask",
    opt={"scope": "user:write", "rate": "requests", "idempotent": stop_is_idempotent},
    status_code=200,
)
async def stop_task(request: Request[Any, Any, Any], core: Core, task_id: FromPath[str]) -> Response[bytes]:
    """Stop the running turn; the answer is the task once the ledger charged the completed steps."""
    _, turns = _own_task(request, core, task_id, "user:write")
    latest = turns[-1]
    if not latest.terminal:
        try:
            await request_cancel(core, latest)
        except ApiError as error:
            if error.status_code != 409:  # 409: it ended meanwhile; answer how it ended
                raise
        turns = await _wait_for_end(core, task_id, stop_wait_s_max)
    body = task_body(core, task_id, turns)
    return json_response(body, headers=_charge_headers(body, turns))


route_handlers = [run_agent, get_task, list_messages, stop_task]
