"""The simulated agent behind ``POST /v1/agents/run`` (EmpirioLabs' Manus): a deterministic task of a
few reasoning and tool steps, a few seconds long, so that polling, the messages list and a stop mean
something.

Each step is one progress point: its message as one JSON item (``part`` "item", ``object``
"agent.step"), and the tokens read and written so far. A stop lands on the next progress point, so
a stopped task is charged exactly for the steps it completed. Every step reads the task's prompt and
what the steps before it wrote (the context grows, as an agent's does) and writes its own message;
the run stops early, as a model stops at ``max_tokens``, where the next step would pass the bound the
gateway held for (``max_input_tokens``, ``max_output_tokens`` in the payload).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

import msgspec

from schemas.units import Units

AGENTS = "/v1/agents/run"
STEP = "agent.step"
step_ms_default = 500  # the modelled time of one step (reasoning or a tool call)
steps_min, steps_spread = 5, 4  # a turn takes 5 to 8 steps, the seed decides
step_overhead_tokens = 24  # what each step reads beyond the conversation: its instructions and tools
step_output_tokens_min, step_output_tokens_spread = 12, 36
_token_pattern = re.compile(r"\w+|[^\w\s]")
_vocabulary = (
    "search",
    "funding",
    "rounds",
    "startups",
    "compare",
    "sources",
    "robotics",
    "humanoid",
    "investors",
    "valuation",
    "report",
    "summary",
    "table",
    "verify",
    "filings",
    "press",
    "releases",
    "ranking",
    "notes",
    "draft",
)
# What each step of a turn does, in order; the last step of a turn is always its answer.
_plan = (
    ("plan", "assistant", ""),
    ("tool_call", "assistant", "browser.search"),
    ("observation", "tool", "browser.search"),
    ("tool_call", "assistant", "browser.open"),
    ("observation", "tool", "browser.open"),
    ("reasoning", "assistant", ""),
)


def count_tokens(text: str) -> int:
    return len(_token_pattern.findall(text))


def _words(seed: bytes, count: int, offset: int) -> str:
    return " ".join(_vocabulary[(seed[(offset + i) % len(seed)] + i) % len(_vocabulary)] for i in range(count))


def prompt_text(payload: dict[str, Any]) -> str:
    """What the agent reads of the conversation: the earlier turns' messages, then the new input."""
    history = payload.get("history") or []
    parts = [str(m.get("content", "")) for m in history if isinstance(m, dict)]
    return "\n".join([*parts, str(payload.get("input", ""))])


def step_message(index: int, kind: str, role: str, content: str, tool: str, units: Units) -> dict[str, Any]:
    message: dict[str, Any] = {
        "object": STEP,
        "index": index,
        "type": kind,
        "role": role,
        "content": content,
        "usage": {"prompt_tokens": units.input_tokens, "completion_tokens": units.output_tokens},
    }
    if tool:
        message["tool"] = tool
    return message


async def run_agent(job: Any, step_s: float) -> tuple[dict[str, Any], Units]:
    """Run one turn of the task (``job`` is the worker's ``JobContext``); (its result, the units used)."""
    payload = job.payload
    prompt = prompt_text(payload)
    read_max = int(payload.get("max_input_tokens") or 0)
    write_max = int(payload.get("max_output_tokens") or 0)
    seed = hashlib.sha256(msgspec.json.encode([job.model, prompt])).digest()
    steps = steps_min + seed[0] % steps_spread
    prompt_tokens = count_tokens(prompt)
    read = written = 0
    messages: list[dict[str, Any]] = []
    index = 0
    # The input (a task's instruction, or a follow-up) as the agent picks it up: nothing read or
    # written yet. A follow-up's conversation is rebuilt from these and the answers.
    messages.append(step_message(index, "user_message", "user", str(payload.get("input", "")), "", Units()))
    job.progress(0, Units(), msgspec.json.encode(messages[-1]).decode(), "item")
    index += 1
    finish = "completed"
    answer = ""
    for number in range(steps):
        last = number == steps - 1
        kind, role, tool = ("answer", "assistant", "") if last else _plan[number % len(_plan)]
        step_read = prompt_tokens + written + step_overhead_tokens
        step_written = step_output_tokens_min + seed[(number + 1) % len(seed)] % step_output_tokens_spread
        if (read_max and read + step_read > read_max) or (write_max and written + step_written > write_max):
            finish = "length"  # the next step would pass what the task was held for
            break
        if step_s:
            await asyncio.sleep(step_s)
        content = _words(seed, step_written, number * 7)
        if last:
            answer = content
        read += step_read
        written += step_written
        units = Units(input_tokens=read, output_tokens=written)
        messages.append(
            step_message(index, kind, role, content, tool, Units(input_tokens=step_read, output_tokens=step_written))
        )
        index += 1
        job.progress(1000 * (number + 1) // steps, units, msgspec.json.encode(messages[-1]).decode(), "item")
    if not answer:
        answer = next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), "")
    result = {
        "object": "agent.result",
        "output": answer,
        "artifacts": [],
        "messages": messages,
        "finish_reason": finish,
    }
    return result, Units(input_tokens=read, output_tokens=written)
