"""A hosted agent's messages and configuration (EmpirioLabs' ``/v1/hosted-agents/instances/{id}/...``
sub-routes; the agents themselves and their plans are in ``gateway/routes/resources.py``).

- ``POST .../message``: the agent answers with its model (its runtime's default, or the one ``/model``
  set), metered exactly as a chat completion by that model is: a hold on its worst case, a job on a
  worker, the charge captured. Its usage row says ``source: hosted_agents`` and names the agent.
  A stopped agent, or one whose plan ended, takes no messages (409); nor one pointed at a provider
  Tollgate does not run (Poe, a custom endpoint: nothing here could meter it).
- ``/integrations``, ``/model``, ``/access``, ``/skills``, ``/mcp``: the agent's configuration, each
  change an event on the tenants topic (``gateway/hosted_agent_config.py``); unmetered, as the plan
  covers them.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.params import FromPath

from gateway.auth import authorize
from gateway.core import Core, GatewayCore
from gateway.errors import ApiError
from gateway.hosted_agent_config import check_chat_model, public_https_host, record_configuration, secret_hint
from gateway.http import decode_body, json_response, request_id
from gateway.requests import CHAT, parse_chat
from gateway.results import charge_headers, shape_result
from gateway.routes.generation import run_answered
from gateway.routes.resources import agent_model, agent_provider, hosted_agent_card, owned_agent
from ledger.resources import Subscription
from projections.hosted_agents import AgentConfig, access_card, behavior_of, integration_card
from schemas.hosted_agents import (
    HostedAgentAccessRequest,
    HostedAgentBehaviorRequest,
    HostedAgentIntegrationRequest,
    HostedAgentMcpRequest,
    HostedAgentMessageRequest,
    HostedAgentModelRequest,
    HostedAgentSkillRequest,
    agent_mcp_connectors_max,
    agent_skills_max,
    channel_kinds,
    disconnect_kinds,
    openclaw_only_kinds,
)
from schemas.moments import iso_or_none, utc_now

_instance = "/v1/hosted-agents/instances/{instance_id:str}"
# Configuration routes are API requests, not job submissions (README, "Rate limits").
_read = {"scope": "user:read"}
_write = {"scope": "user:write", "rate": "requests"}
# A skill ref: the registry's prefix, then a slug or repository (a url: ref is checked as a URL).
_skill_ref = re.compile(r"^(clawhub|hermes|ocgit):[A-Za-z0-9][A-Za-z0-9._/@-]{0,199}$")


def _config(core: GatewayCore, instance_id: str) -> AgentConfig:
    return core.tenants.agent_configs.get(instance_id) or AgentConfig()


def _changeable(core: GatewayCore, org_id: str, instance_id: str) -> Subscription:
    """The organization's agent, while its plan runs (404 for another organization's)."""
    subscription = owned_agent(core, org_id, instance_id)
    if subscription.ended:
        raise ApiError(409, "The agent's plan has ended; create a new agent.", code="plan_ended", param="instance_id")
    return subscription


# --- messages ----------------------------------------------------------------------------------------


def _messageable(core: GatewayCore, org_id: str, instance_id: str) -> tuple[Subscription, str]:
    """The agent and the model it answers with, or why it cannot take a message now."""
    subscription = _changeable(core, org_id, instance_id)
    if core.tenants.agent_runtimes.get(instance_id) == "stopped":
        raise ApiError(
            409,
            f"The agent is stopped; POST /v1/hosted-agents/instances/{instance_id}/start first.",
            code="agent_stopped",
            param="instance_id",
        )
    config = _config(core, instance_id)
    provider = agent_provider(config, subscription)
    if provider != "empirio":
        raise ApiError(
            409,
            f"The agent answers through provider '{provider}', which this API cannot run or meter; "
            "POST .../model with provider empirio to message it here.",
            code="provider_not_served",
            param="instance_id",
        )
    return subscription, agent_model(config)


@post(
    f"{_instance}/message",
    operation_id="messageHostedAgentInstance",
    opt={"scope": "user:write", "tokens": True},
    status_code=200,
)
async def message_hosted_agent(
    request: Request[Any, Any, Any], core: Core, instance_id: FromPath[str]
) -> Response[bytes]:
    """The agent's answer: a chat completion by its model, held, run and charged as one."""
    token = authorize(request, "user:write")
    body = await decode_body(request, HostedAgentMessageRequest, core.settings.request_body_bytes_max)
    _, model = _messageable(core, token.org_id, instance_id)
    chat = msgspec.json.encode({"model": model, "messages": body.messages})
    metered = parse_chat(chat, core.prices.current, token.org_id, core.files)
    metered = dataclasses.replace(metered, source="hosted_agents", source_id=instance_id)
    done = await run_answered(request, core, token, metered)
    if isinstance(done, Response):
        return done  # never: a message is answered whole (no async)
    charge, result = done.charge, done.result
    rid = request_id(request)
    completion = shape_result(CHAT, rid, result, charge, metered.price_of(charge.model))
    message = completion["choices"][0]["message"]
    answer = {
        "request_id": rid,
        "status": "completed",
        "content": message.get("content") or "",
        "model": completion["model"],
        "usage": completion["usage"],  # with cost_usd: the exact charge, as x-credits-used
    }
    return json_response(answer, headers=charge_headers(charge))


# --- integrations ------------------------------------------------------------------------------------


def _integration_key(kind: str) -> str:
    """The stored name of an integration: the Poe key is ``poe`` (as DELETE names it)."""
    return "poe" if kind == "poe_api_key" else kind


@get(f"{_instance}/integrations", operation_id="listHostedAgentIntegrations", opt=_read)
async def list_integrations(request: Request[Any, Any, Any], core: Core, instance_id: FromPath[str]) -> Response[bytes]:
    token = authorize(request, "user:read")
    owned_agent(core, token.org_id, instance_id)
    config = _config(core, instance_id)
    cards = [integration_card(config, kind) for kind in sorted(config.integrations)]
    return json_response({"object": "list", "integrations": cards})


@post(f"{_instance}/integrations", operation_id="saveHostedAgentIntegration", opt=_write, status_code=201)
async def save_integration(request: Request[Any, Any, Any], core: Core, instance_id: FromPath[str]) -> Response[bytes]:
    """A token-based integration; its secret is kept as a hint only (nothing connects to the channel)."""
    token = authorize(request, "user:write")
    body = await decode_body(request, HostedAgentIntegrationRequest, core.settings.request_body_bytes_max)
    subscription = _changeable(core, token.org_id, instance_id)
    if body.kind in openclaw_only_kinds and subscription.agent_type != "openclaw":
        raise ApiError(
            400, f"The {body.kind} integration works on OpenClaw agents only.", code="invalid_parameter", param="kind"
        )
    if body.secret is None:
        raise ApiError(
            400,
            f"secret is required: the {body.kind} token or key the agent connects with.",
            code="missing_required_parameter",
            param="secret",
        )
    if body.config is not None and len(msgspec.json.encode(body.config)) > 4096:
        raise ApiError(400, "config may be at most 4,096 bytes of JSON.", code="invalid_parameter", param="config")
    key = _integration_key(body.kind)
    settings = {"config": body.config or {}, "secret_hint": secret_hint(body.secret), "connected_at": _now()}
    await record_configuration(core, token.org_id, token.token_id, instance_id, "integration_saved", key, settings)
    return json_response({"ok": True, "integration": integration_card(_config(core, instance_id), key)}, 201)


@delete(
    f"{_instance}/integrations/{{kind:str}}",
    operation_id="disconnectHostedAgentIntegration",
    opt=_write,
    status_code=200,
)
async def disconnect_integration(
    request: Request[Any, Any, Any], core: Core, instance_id: FromPath[str], kind: FromPath[str]
) -> Response[bytes]:
    token = authorize(request, "user:write")
    _changeable(core, token.org_id, instance_id)
    if kind not in disconnect_kinds:
        raise ApiError(
            400, f"kind must be one of {', '.join(disconnect_kinds)}.", code="invalid_parameter", param="kind"
        )
    if kind not in _config(core, instance_id).integrations:
        raise ApiError(404, f"No {kind} integration is connected.", code="integration_not_found", param="kind")
    await record_configuration(core, token.org_id, token.token_id, instance_id, "integration_removed", kind)
    return json_response({"ok": True, "kind": kind, "connected": False})


@post(
    f"{_instance}/integrations/{{kind:str}}/behavior",
    operation_id="setHostedAgentIntegrationBehavior",
    opt=_write,
    status_code=200,
)
async def set_channel_behavior(
    request: Request[Any, Any, Any], core: Core, instance_id: FromPath[str], kind: FromPath[str]
) -> Response[bytes]:
    """A connected channel's chat signals; fields left out keep their value (the document's defaults)."""
    token = authorize(request, "user:write")
    body = await decode_body(request, HostedAgentBehaviorRequest, core.settings.request_body_bytes_max)
    _changeable(core, token.org_id, instance_id)
    if kind not in channel_kinds:
        raise ApiError(400, f"kind must be one of {', '.join(channel_kinds)}.", code="invalid_parameter", param="kind")
    if kind not in _config(core, instance_id).integrations:
        raise ApiError(
            404, f"No {kind} channel is connected; connect it first.", code="integration_not_found", param="kind"
        )
    changed = msgspec.to_builtins(body.behavior)
    await record_configuration(core, token.org_id, token.token_id, instance_id, "channel_behavior", kind, changed)
    return json_response({"ok": True, "channel_behavior": behavior_of(_config(core, instance_id), kind)})


# --- model and access --------------------------------------------------------------------------------


@post(f"{_instance}/model", operation_id="setHostedAgentModel", opt=_write, status_code=200)
async def set_model(request: Request[Any, Any, Any], core: Core, instance_id: FromPath[str]) -> Response[bytes]:
    """The agent's model in place: an EmpirioLabs chat model (its messages are metered by it), a Poe
    bot, or a custom endpoint (its API key kept as a hint only)."""
    token = authorize(request, "user:write")
    body = await decode_body(request, HostedAgentModelRequest, core.settings.request_body_bytes_max)
    subscription = _changeable(core, token.org_id, instance_id)
    custom: dict[str, Any] | None = None
    if body.provider == "empirio":
        check_chat_model(core, body.model, "model")
    if body.provider == "custom":
        given = body.custom_provider
        if given is None:
            raise ApiError(
                400,
                "custom_provider is required with provider custom: its base_url, model, api_key and protocol.",
                code="missing_required_parameter",
                param="custom_provider",
            )
        custom = {
            "base_url": given.base_url,
            "host": public_https_host(given.base_url, "custom_provider.base_url"),
            "model": given.model or body.model,
            "protocol": given.protocol,
            "api_key_hint": secret_hint(given.api_key),
        }
    elif body.custom_provider is not None:
        raise ApiError(
            400, "custom_provider goes with provider custom only.", code="invalid_parameter", param="custom_provider"
        )
    settings = {"provider": body.provider, "model": body.model, "custom_provider": custom}
    await record_configuration(core, token.org_id, token.token_id, instance_id, "model", "", settings)
    return json_response({"ok": True, "instance": hosted_agent_card(core, subscription)})


@post(f"{_instance}/access", operation_id="setHostedAgentAccess", opt=_write, status_code=200)
async def set_access(request: Request[Any, Any, Any], core: Core, instance_id: FromPath[str]) -> Response[bytes]:
    """``open`` or ``restricted`` (with an allowlist of messaging ids per channel), for the agent or,
    with ``kind``, for one connected channel."""
    token = authorize(request, "user:write")
    body = await decode_body(request, HostedAgentAccessRequest, core.settings.request_body_bytes_max)
    _changeable(core, token.org_id, instance_id)
    allow = {kind: list(ids) for kind, ids in (body.allow or {}).items()}
    if body.kind is not None:
        if body.kind not in _config(core, instance_id).integrations:
            raise ApiError(
                404,
                f"No {body.kind} channel is connected; connect it first.",
                code="integration_not_found",
                param="kind",
            )
        allow = {body.kind: allow.get(body.kind, [])}
    settings = {"mode": body.mode, "allow": allow}
    await record_configuration(core, token.org_id, token.token_id, instance_id, "access", body.kind or "", settings)
    return json_response({"ok": True, "access": access_card(_config(core, instance_id))})


# --- skills ------------------------------------------------------------------------------------------


def _skills(config: AgentConfig) -> dict[str, Any]:
    return {"installed": list(config.skills), "customSkills": dict(config.custom_skills)}


def _skill_ref_of(subscription: Subscription, body: HostedAgentSkillRequest) -> str:
    """The ref a skill is installed as; a 400 for a ref this agent's registry does not serve."""
    if (body.slug is None) == (body.custom is None):
        raise ApiError(400, "Send one of slug (a skill ref) and custom.", code="invalid_parameter", param="slug")
    if body.custom is not None:
        return f"custom:{body.custom.name}"
    slug = body.slug or ""
    if slug.startswith("url:"):
        public_https_host(slug.removeprefix("url:"), "slug")
        return slug
    if not _skill_ref.fullmatch(slug):
        raise ApiError(
            400,
            "slug must be a skill ref: clawhub:<slug>, hermes:<id>, ocgit:<repo> or url:<https-url>.",
            code="invalid_parameter",
            param="slug",
        )
    registry = slug.partition(":")[0]
    if (registry, subscription.agent_type) in (("clawhub", "hermes"), ("hermes", "openclaw")):
        runtime = "OpenClaw" if registry == "clawhub" else "Hermes"
        raise ApiError(400, f"{registry}: skills are for {runtime} agents.", code="invalid_parameter", param="slug")
    return slug


@get(f"{_instance}/skills", operation_id="listHostedAgentSkills", opt=_read)
async def list_skills(request: Request[Any, Any, Any], core: Core, instance_id: FromPath[str]) -> Response[bytes]:
    token = authorize(request, "user:read")
    owned_agent(core, token.org_id, instance_id)
    return json_response(_skills(_config(core, instance_id)))


@post(f"{_instance}/skills", operation_id="addHostedAgentSkill", opt=_write, status_code=200)
async def add_skill(request: Request[Any, Any, Any], core: Core, instance_id: FromPath[str]) -> Response[bytes]:
    token = authorize(request, "user:write")
    body = await decode_body(request, HostedAgentSkillRequest, core.settings.request_body_bytes_max)
    subscription = _changeable(core, token.org_id, instance_id)
    ref = _skill_ref_of(subscription, body)
    installed = _config(core, instance_id).skills
    if ref not in installed and len(installed) >= agent_skills_max:
        raise ApiError(
            409, f"An agent has at most {agent_skills_max} skills; remove one first.", code="skill_limit_reached"
        )
    custom = msgspec.to_builtins(body.custom) if body.custom is not None else None
    settings = {"custom": custom} if custom is not None else {}
    await record_configuration(core, token.org_id, token.token_id, instance_id, "skill_added", ref, settings)
    return json_response({"ok": True, **_skills(_config(core, instance_id))})


@delete(f"{_instance}/skills", operation_id="removeHostedAgentSkill", opt=_write, status_code=200)
async def remove_skill(request: Request[Any, Any, Any], core: Core, instance_id: FromPath[str]) -> Response[bytes]:
    token = authorize(request, "user:write")
    slug = request.query_params.get("slug")
    if not slug:
        raise ApiError(
            400, "slug is required: the skill ref to remove.", code="missing_required_parameter", param="slug"
        )
    _changeable(core, token.org_id, instance_id)
    if slug not in _config(core, instance_id).skills:
        raise ApiError(404, f"No skill '{slug}' is installed.", code="skill_not_found", param="slug")
    await record_configuration(core, token.org_id, token.token_id, instance_id, "skill_removed", slug)
    return json_response({"ok": True, **_skills(_config(core, instance_id))})


# --- MCP connectors ----------------------------------------------------------------------------------


def _connectors(config: AgentConfig) -> list[dict[str, Any]]:
    return [config.mcp[name] for name in sorted(config.mcp)]


@get(f"{_instance}/mcp", operation_id="listHostedAgentMcp", opt=_read)
async def list_mcp(request: Request[Any, Any, Any], core: Core, instance_id: FromPath[str]) -> Response[bytes]:
    """Connected MCP servers by host only; a credential is never kept, nor returned."""
    token = authorize(request, "user:read")
    owned_agent(core, token.org_id, instance_id)
    return json_response({"object": "list", "connectors": _connectors(_config(core, instance_id))})


@post(f"{_instance}/mcp", operation_id="addHostedAgentMcp", opt=_write, status_code=200)
async def add_mcp(request: Request[Any, Any, Any], core: Core, instance_id: FromPath[str]) -> Response[bytes]:
    """A remote MCP server (public HTTPS); the same name again replaces its connector."""
    token = authorize(request, "user:write")
    body = await decode_body(request, HostedAgentMcpRequest, core.settings.request_body_bytes_max)
    _changeable(core, token.org_id, instance_id)
    host = public_https_host(body.url, "url")
    if (body.header_name is None) != (body.header_value is None):
        param = "header_value" if body.header_value is None else "header_name"
        raise ApiError(400, "header_name and header_value go together.", code="invalid_parameter", param=param)
    connectors = _config(core, instance_id).mcp
    if body.name not in connectors and len(connectors) >= agent_mcp_connectors_max:
        raise ApiError(
            409,
            f"An agent has at most {agent_mcp_connectors_max} MCP connectors; remove one first.",
            code="mcp_limit_reached",
        )
    connector = {
        "name": body.name,
        "host": host,
        "transport": body.transport,
        "header_name": body.header_name,
        "has_credential": body.header_value is not None,
        "tool_include": list(body.tool_include) if body.tool_include is not None else None,
        "connected_at": _now(),
    }
    await record_configuration(core, token.org_id, token.token_id, instance_id, "mcp_added", body.name, connector)
    return json_response({"ok": True, "connector": connector})


@delete(f"{_instance}/mcp", operation_id="removeHostedAgentMcp", opt=_write, status_code=200)
async def remove_mcp(request: Request[Any, Any, Any], core: Core, instance_id: FromPath[str]) -> Response[bytes]:
    token = authorize(request, "user:write")
    name = request.query_params.get("name")
    if not name:
        raise ApiError(
            400, "name is required: the connector to remove.", code="missing_required_parameter", param="name"
        )
    _changeable(core, token.org_id, instance_id)
    if name not in _config(core, instance_id).mcp:
        raise ApiError(404, f"No MCP connector '{name}'.", code="mcp_connector_not_found", param="name")
    await record_configuration(core, token.org_id, token.token_id, instance_id, "mcp_removed", name)
    return json_response({"ok": True, "connectors": _connectors(_config(core, instance_id))})


def _now() -> str | None:
    return iso_or_none(utc_now())


route_handlers = [
    message_hosted_agent,
    list_integrations,
    save_integration,
    disconnect_integration,
    set_channel_behavior,
    set_model,
    set_access,
    list_skills,
    add_skill,
    remove_skill,
    list_mcp,
    add_mcp,
    remove_mcp,
]
