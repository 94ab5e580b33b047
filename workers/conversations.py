"""Chat-like requests in three dialects: OpenAI chat completions, OpenAI Responses (``/v1/responses``)
and Anthropic Messages (``/v1/messages``).

A Responses or Messages body is read into one neutral ``Dialogue``: chat-completions messages and
function tools, plus what the dialect adds (the hosted web search, thinking, the output limit). An
answer is one neutral ``Reply`` (thinking, web searches, text, tool calls), written back in the dialect
asked for. The gateway reads bodies here to validate and bound them, the simulated backend runs
Responses and Messages on the dialogue, and the upstream backend uses the same translations when a
pool's upstream speaks only chat completions.

Output items keep the dialect's shape (a Responses ``function_call`` item, a Messages ``tool_use``
block) but not their ``id`` where the gateway gives one by position (Responses items; the message ids
of both), so that a streamed item and the same item in the final answer carry the same id.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"

web_search_tool_types = frozenset({"web_search", "web_search_preview", "web_search_2025_08_26"})
web_search_calls_max_default = 3  # a request's hosted searches when it does not say (max_tool_calls)
# What the search results fed to the model may add to its prompt, per search: the hold covers it.
web_search_result_tokens_max = 8_192
thinking_effort_tokens = {"minimal": 0, "none": 0, "low": 256, "medium": 1_024, "high": 4_096, "xhigh": 8_192}


class DialogueError(ValueError):
    """A body the dialect does not allow, or that Tollgate cannot run; names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the client runs: the model may call it."""

    name: str
    description: str
    parameters: dict[str, Any]

    def as_chat(self) -> dict[str, Any]:
        function = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


@dataclass(frozen=True, slots=True)
class Dialogue:
    messages: list[dict[str, Any]]  # chat-completions messages (system, user, assistant with tool_calls, tool)
    tools: tuple[Tool, ...] = ()
    tool_choice: str = "auto"  # "auto", "none", "required" or the name of the one tool to call
    web_search: bool = False  # the hosted web search tool (Responses), run server-side
    web_search_calls_max: int = 0
    thinking_tokens_max: int = 0  # 0: no thinking
    output_tokens_max: int | None = None  # None: the dialect's body did not say


@dataclass(frozen=True, slots=True)
class Search:
    query: str
    sources: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str  # JSON text


@dataclass(slots=True)
class Reply:
    """An answer in no dialect; ``finish`` is chat's: stop, length or tool_calls."""

    text: str = ""
    thinking: str = ""
    thinking_signature: str = ""
    searches: list[Search] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish: str = "stop"
    reasoning_tokens: int = 0
    cache_creation_input_tokens: int = 0  # Anthropic's cache writes (cache_write_tokens, at their rate)


# --- reading bodies ---


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DialogueError(param, f"'{param}' must be an object.")
    return value


def _text_of(content: Any, param: str) -> str:
    """Text of a content that is a string or a list of text-bearing parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    raise DialogueError(param, f"'{param}' must be a string or a list of content parts.")


def _limit(value: Any, param: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DialogueError(param, f"'{param}' must be a positive integer.")
    return value


def _schema(value: Any, param: str) -> dict[str, Any]:
    if value is None:
        return {"type": "object", "properties": {}}
    return _object(value, param)


def _thinking(fields: dict[str, Any], effort_param: str | None) -> int:
    """The thinking budget asked for: EmpirioLabs' ``enable_thinking``/``thinking_budget`` on every
    dialect, Anthropic's ``thinking`` on Messages, OpenAI's ``reasoning.effort`` on Responses."""
    budget = _limit(fields.get("thinking_budget"), "thinking_budget")
    enabled = fields.get("enable_thinking")
    if enabled is not None and not isinstance(enabled, bool):
        raise DialogueError("enable_thinking", "'enable_thinking' must be true or false.")
    thinking = fields.get("thinking")
    if effort_param is None and thinking is not None:
        thinking = _object(thinking, "thinking")
        kind = thinking.get("type")
        if kind not in ("enabled", "disabled", "adaptive"):
            raise DialogueError("thinking.type", "'thinking.type' must be 'enabled', 'disabled' or 'adaptive'.")
        if kind == "enabled":
            given = _limit(thinking.get("budget_tokens"), "thinking.budget_tokens")
            if given is None:
                raise DialogueError("thinking.budget_tokens", "'thinking.budget_tokens' is required when enabled.")
            return given
        if kind == "adaptive":
            return budget or thinking_effort_tokens["medium"]
        return 0
    if effort_param is not None and fields.get("reasoning") is not None:
        effort = _object(fields["reasoning"], "reasoning").get("effort")
        if effort is not None:
            if effort not in thinking_effort_tokens:
                raise DialogueError(
                    "reasoning.effort", f"'reasoning.effort' must be one of {list(thinking_effort_tokens)}."
                )
            return budget or thinking_effort_tokens[str(effort)]
    if enabled or (budget and enabled is None):
        return budget or thinking_effort_tokens["medium"]
    return 0


def _chat_part(part: dict[str, Any], param: str) -> dict[str, Any] | None:
    """A Responses or Messages content part as a chat content part (None: nothing the model reads)."""
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
        return {"type": "text", "text": str(part.get("text", ""))}
    if kind == "input_image":
        url = part.get("image_url") or (f"file:{part['file_id']}" if part.get("file_id") else "")
        return {"type": "image_url", "image_url": {"url": str(url)}}
    if kind == "image":
        source = _object(part.get("source"), f"{param}.source")
        if source.get("type") == "base64":
            url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
        else:
            url = str(source.get("url") or source.get("file_id") or "")
        return {"type": "image_url", "image_url": {"url": url}}
    if kind in ("input_file", "document"):
        return {"type": "text", "text": str(part.get("text") or part.get("filename") or part.get("title") or "")}
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal", ""))}
    if kind in ("thinking", "redacted_thinking", "input_audio"):
        return None
    raise DialogueError(param, f"Unknown content part type {kind!r} in '{param}'.")


def _chat_content(content: Any, param: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise DialogueError(param, f"'{param}' must be a string or a list of content parts.")
    parts = [_chat_part(_object(part, f"{param}[{i}]"), f"{param}[{i}]") for i, part in enumerate(content)]
    kept = [part for part in parts if part is not None]
    if all(part["type"] == "text" for part in kept):
        return "".join(part["text"] for part in kept)
    return kept


def _function_tool(tool: dict[str, Any], param: str) -> Tool:
    # Casola's page shows the chat shape ({"type": "function", "function": {...}}); OpenAI's Responses
    # shape is flat. Both are taken.
    spec = _object(tool["function"], f"{param}.function") if "function" in tool else tool
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise DialogueError(f"{param}.name", f"'{param}.name' is required.")
    return Tool(name, str(spec.get("description") or ""), _schema(spec.get("parameters"), f"{param}.parameters"))


def _assistant_calls(messages: list[dict[str, Any]], call: dict[str, Any]) -> None:
    """Append a tool call to the last assistant message when it has calls already (parallel calls)."""
    last = messages[-1] if messages else None
    if last is not None and last.get("role") == "assistant" and last.get("tool_calls"):
        last["tool_calls"].append(call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def from_responses(fields: dict[str, Any]) -> Dialogue:
    """A ``/v1/responses`` body as a dialogue."""
    for unsupported in ("previous_response_id", "conversation", "prompt"):
        if fields.get(unsupported) is not None:
            raise DialogueError(
                unsupported,
                f"'{unsupported}' needs responses stored by the server, which Tollgate does not keep: "
                "send the whole conversation in 'input'.",
            )
    if fields.get("background"):
        raise DialogueError("background", "'background' is not supported; send \"async\": true for a job to poll.")
    messages: list[dict[str, Any]] = []
    instructions = fields.get("instructions")
    if instructions is not None:
        messages.append({"role": "system", "content": _text_of(instructions, "instructions")})
    given = fields.get("input")
    if given is None:
        raise DialogueError("input", "'input' is required: a string or a list of input items.")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif isinstance(given, list):
        for index, raw in enumerate(given):
            _responses_item(messages, _object(raw, f"input[{index}]"), f"input[{index}]")
    else:
        raise DialogueError("input", "'input' must be a string or a list of input items.")
    tools: list[Tool] = []
    web_search = False
    raw_tools = fields.get("tools") or []
    if not isinstance(raw_tools, list):
        raise DialogueError("tools", "'tools' must be a list.")
    for index, raw in enumerate(raw_tools):
        tool = _object(raw, f"tools[{index}]")
        kind = tool.get("type")
        if kind == "function":
            tools.append(_function_tool(tool, f"tools[{index}]"))
        elif kind in web_search_tool_types:
            web_search = True
        else:
            raise DialogueError(
                f"tools[{index}].type",
                f"Tool type {kind!r} is not supported here: use 'function' tools and the hosted 'web_search'.",
            )
    choice = _responses_tool_choice(fields.get("tool_choice"), tools, web_search)
    calls_max = _limit(fields.get("max_tool_calls"), "max_tool_calls")
    return Dialogue(
        messages=messages,
        tools=tuple(tools),
        tool_choice=choice,
        web_search=web_search and choice != "none",
        web_search_calls_max=(calls_max or web_search_calls_max_default) if web_search else 0,
        thinking_tokens_max=_thinking(fields, "reasoning"),
        output_tokens_max=_limit(fields.get("max_output_tokens"), "max_output_tokens"),
    )


def _responses_item(messages: list[dict[str, Any]], item: dict[str, Any], param: str) -> None:
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise DialogueError(f"{param}.role", f"'{param}.role' must be user, assistant, system or developer.")
        content = _chat_content(item.get("content", ""), f"{param}.content")
        messages.append({"role": "system" if role == "developer" else role, "content": content})
    elif kind == "function_call":
        call = {
            "id": str(item.get("call_id") or ""),
            "type": "function",
            "function": {"name": str(item.get("name") or ""), "arguments": str(item.get("arguments") or "")},
        }
        _assistant_calls(messages, call)
    elif kind == "function_call_output":
        output = item.get("output")
        text = output if isinstance(output, str) else _text_of(output, f"{param}.output")
        messages.append({"role": "tool", "tool_call_id": str(item.get("call_id") or ""), "content": text})
    elif kind in ("reasoning", "web_search_call", "item_reference"):
        return  # the model's own earlier work: nothing a chat model reads
    else:
        raise DialogueError(f"{param}.type", f"Input item type {kind!r} is not supported.")


def _responses_tool_choice(given: Any, tools: list[Tool], web_search: bool) -> str:
    if given is None:
        return "auto"
    if given in ("auto", "none", "required"):
        return str(given)
    choice = _object(given, "tool_choice")
    if choice.get("type") == "function":
        name = choice.get("name") or (choice.get("function") or {}).get("name")
        if name not in {tool.name for tool in tools}:
            raise DialogueError("tool_choice", f"tool_choice names {name!r}, which is not among the tools.")
        return str(name)
    if choice.get("type") in web_search_tool_types and web_search:
        return "auto"
    raise DialogueError("tool_choice", "tool_choice must be auto, none, required or a function of 'tools'.")


def from_messages(fields: dict[str, Any]) -> Dialogue:
    """A ``/v1/messages`` body (Anthropic's Messages API) as a dialogue."""
    messages: list[dict[str, Any]] = []
    system = fields.get("system")
    if system is not None:
        messages.append({"role": "system", "content": _text_of(system, "system")})
    given = fields.get("messages")
    if not isinstance(given, list) or not given:
        raise DialogueError("messages", "'messages' is required: a non-empty list of messages.")
    for index, raw in enumerate(given):
        _anthropic_message(messages, _object(raw, f"messages[{index}]"), f"messages[{index}]")
    tools: list[Tool] = []
    raw_tools = fields.get("tools") or []
    if not isinstance(raw_tools, list):
        raise DialogueError("tools", "'tools' must be a list.")
    for index, raw in enumerate(raw_tools):
        tool = _object(raw, f"tools[{index}]")
        if tool.get("type") not in (None, "custom"):
            raise DialogueError(
                f"tools[{index}].type",
                f"Server tool {tool.get('type')!r} is not supported on /v1/messages; "
                "define client tools (name, input_schema), or use /v1/responses with web_search.",
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise DialogueError(f"tools[{index}].name", f"'tools[{index}].name' is required.")
        schema = _schema(tool.get("input_schema"), f"tools[{index}].input_schema")
        tools.append(Tool(name, str(tool.get("description") or ""), schema))
    choice = "auto"
    if fields.get("tool_choice") is not None:
        given_choice = _object(fields["tool_choice"], "tool_choice")
        kind = given_choice.get("type")
        if kind == "tool":
            if given_choice.get("name") not in {tool.name for tool in tools}:
                raise DialogueError("tool_choice.name", "tool_choice names a tool that is not among the tools.")
            choice = str(given_choice["name"])
        elif kind in ("auto", "any", "none"):
            choice = "required" if kind == "any" else str(kind)
        else:
            raise DialogueError("tool_choice.type", "tool_choice.type must be auto, any, tool or none.")
    return Dialogue(
        messages=messages,
        tools=tuple(tools),
        tool_choice=choice,
        thinking_tokens_max=_thinking(fields, None),
        output_tokens_max=_limit(fields.get("max_tokens"), "max_tokens"),
    )


def _anthropic_message(messages: list[dict[str, Any]], message: dict[str, Any], param: str) -> None:
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise DialogueError(f"{param}.role", f"'{param}.role' must be 'user' or 'assistant'.")
    content = message.get("content")
    if isinstance(content, str):
        messages.append({"role": role, "content": content})
        return
    if not isinstance(content, list):
        raise DialogueError(f"{param}.content", f"'{param}.content' must be a string or a list of blocks.")
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for index, raw in enumerate(content):
        block = _object(raw, f"{param}.content[{index}]")
        kind = block.get("type")
        if kind == "tool_use":
            arguments = json.dumps(block.get("input") or {}, separators=(",", ":"))
            call = {"name": str(block.get("name") or ""), "arguments": arguments}
            calls.append({"id": str(block.get("id") or ""), "type": "function", "function": call})
        elif kind == "tool_result":
            result = block.get("content")
            text = result if isinstance(result, str) else _text_of(result, f"{param}.content[{index}].content")
            messages.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id") or ""), "content": text})
        else:
            part = _chat_part(block, f"{param}.content[{index}]")
            if part is not None:
                parts.append(part)
    results = sum(1 for raw in content if isinstance(raw, dict) and raw.get("type") == "tool_result")
    text_only = all(part["type"] == "text" for part in parts)
    chat_content: Any = "".join(part["text"] for part in parts) if text_only else parts
    if calls:
        messages.append({"role": "assistant", "content": chat_content or None, "tool_calls": calls})
    elif parts or not results:
        messages.append({"role": role, "content": chat_content})


def to_chat(dialogue: Dialogue, model: str, stream: bool) -> dict[str, Any]:
    """The chat-completions body an OpenAI-only upstream runs for a dialogue (hosted tools cannot be
    translated: the caller refuses those first)."""
    body: dict[str, Any] = {"model": model, "messages": dialogue.messages, "stream": stream}
    if dialogue.tools:
        body["tools"] = [tool.as_chat() for tool in dialogue.tools]
        if dialogue.tool_choice in ("auto", "none", "required"):
            body["tool_choice"] = dialogue.tool_choice
        else:
            body["tool_choice"] = {"type": "function", "function": {"name": dialogue.tool_choice}}
    if dialogue.output_tokens_max is not None:
        body["max_tokens"] = dialogue.output_tokens_max
    return body


def message_text(message: dict[str, Any]) -> str:
    """What a chat message gives the model to read: its text and its tool calls."""
    content = message.get("content")
    if isinstance(content, list):
        text = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    else:
        text = str(content or "")
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        text += f" {function.get('name', '')} {function.get('arguments', '')}"
    return text


def tools_text(dialogue: Dialogue) -> str:
    """The tool definitions as the model reads them."""
    return json.dumps([tool.as_chat() for tool in dialogue.tools], separators=(",", ":")) if dialogue.tools else ""


# --- answers: reading a chat completion, writing each dialect ---


def reply_from_chat(result: dict[str, Any]) -> Reply:
    """A chat completion (an OpenAI-only upstream's answer) as a reply."""
    choices = result.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    calls = [
        ToolCall(
            str(call.get("id") or f"call_{index}"),
            str((call.get("function") or {}).get("name") or ""),
            str((call.get("function") or {}).get("arguments") or "{}"),
        )
        for index, call in enumerate(message.get("tool_calls") or [])
        if isinstance(call, dict)
    ]
    thinking = str(message.get("reasoning_content") or message.get("reasoning") or "")
    finish = str(choice.get("finish_reason") or ("tool_calls" if calls else "stop"))
    return Reply(text=str(message.get("content") or ""), thinking=thinking, tool_calls=calls, finish=finish)


def thinking_signature(thinking: str) -> str:
    """An opaque signature of simulated thinking (Anthropic's signs it; clients pass it back unread)."""
    return base64.b64encode(hashlib.sha256(thinking.encode()).digest()).decode()


def search_item(search: Search) -> dict[str, Any]:
    """A Responses ``web_search_call`` output item (its id is given by the gateway)."""
    sources = [{"type": "url", "url": url} for url in search.sources]
    action = {"type": "search", "query": search.query, "sources": sources}
    return {"type": "web_search_call", "id": "", "status": "completed", "action": action}


def function_call_item(call: ToolCall) -> dict[str, Any]:
    """A Responses ``function_call`` output item."""
    return {
        "type": "function_call",
        "id": "",
        "call_id": call.call_id,
        "name": call.name,
        "arguments": call.arguments,
        "status": "completed",
    }


def tool_use_block(call: ToolCall) -> dict[str, Any]:
    """A Messages ``tool_use`` content block."""
    try:
        given = json.loads(call.arguments) if call.arguments else {}
    except ValueError:
        given = {"arguments": call.arguments}  # a model's broken JSON, kept rather than lost
    return {
        "type": "tool_use",
        "id": call.call_id,
        "name": call.name,
        "input": given if isinstance(given, dict) else {},
    }


# What a response object echoes of its request, and the value when the request left it out.
responses_echoes: dict[str, Any] = {
    "instructions": None,
    "tools": [],
    "tool_choice": "auto",
    "temperature": 1.0,
    "top_p": 1.0,
    "max_output_tokens": None,
    "max_tool_calls": None,
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "reasoning": {"effort": None, "summary": None},
    "text": {"format": {"type": "text"}},
    "truncation": "disabled",
    "metadata": {},
    "user": None,
}


def responses_result(reply: Reply, model: str, request: dict[str, Any]) -> dict[str, Any]:
    """A Responses answer as the worker reports it: ``output`` in order (reasoning, searches, the
    message, function calls) and the request's settings it echoes; the gateway completes the response
    object (ids, usage). Nothing is stored (``store`` is false)."""
    output: list[dict[str, Any]] = []
    if reply.thinking:
        content = [{"type": "reasoning_text", "text": reply.thinking}]
        output.append({"type": "reasoning", "id": "", "summary": [], "content": content, "status": "completed"})
    output += [search_item(search) for search in reply.searches]
    if reply.text or not (reply.tool_calls or reply.searches):
        text = {"type": "output_text", "text": reply.text, "annotations": [], "logprobs": []}
        output.append({"type": "message", "id": "", "status": "completed", "role": "assistant", "content": [text]})
    output += [function_call_item(call) for call in reply.tool_calls]
    incomplete = reply.finish == "length"
    echoed = {
        key: request.get(key, default) if request.get(key) is not None else default
        for key, default in responses_echoes.items()
    }
    return {
        **echoed,
        "store": False,
        "background": False,
        "object": "response",
        "model": model,
        "status": "incomplete" if incomplete else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "output": output,
        "reasoning_tokens": reply.reasoning_tokens,
    }


stop_reasons = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


def message_result(reply: Reply, model: str) -> dict[str, Any]:
    """A Messages answer as the worker reports it; the gateway adds its id and usage."""
    content: list[dict[str, Any]] = []
    if reply.thinking:
        content.append({"type": "thinking", "thinking": reply.thinking, "signature": reply.thinking_signature})
    if reply.text or not reply.tool_calls:
        content.append({"type": "text", "text": reply.text})
    content += [tool_use_block(call) for call in reply.tool_calls]
    return {
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reasons.get(reply.finish, "end_turn"),
        "stop_sequence": None,
        "cache_creation_input_tokens": reply.cache_creation_input_tokens,
    }
