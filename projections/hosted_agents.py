"""Hosted agents' configuration (EmpirioLabs' ``/v1/hosted-agents/instances/{id}/...`` sub-routes),
folded from ``HostedAgentConfigured`` on the tenants topic: the model and provider the agent answers
with, who may message it, its messaging integrations and their channel behavior, its skills and its
MCP connectors. Each event is one change (not the whole configuration), so two gateways changing
different parts of one agent at once both stand. Pure: no IO, no clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from schemas.events import HostedAgentConfigured

# EmpirioLabs' HostedAgentChannelBehavior defaults: typing and minimal reactions on, the rest off.
channel_behavior_defaults: dict[str, Any] = {
    "reactions": True,
    "reaction_level": "minimal",
    "typing": True,
    "read_receipts": False,
    "streaming": False,
}


@dataclass(slots=True)
class AgentConfig:
    """One agent's configuration as its owner left it. ``provider`` and ``model`` "" mean the agent's
    defaults (its plan's model, the provider it was created with)."""

    provider: str = ""
    model: str = ""
    custom_provider: dict[str, Any] | None = None  # base_url, model, protocol, api_key_hint
    access: dict[str, Any] = field(default_factory=lambda: {"mode": "open", "allow": {}})
    channel_access: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> {mode, allow}
    integrations: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> {config, secret_hint, ...}
    channel_behavior: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> behavior
    skills: list[str] = field(default_factory=list)  # installed refs, in the order they were added
    custom_skills: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {name, body}
    mcp: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> connector (no credential)


def behavior_of(config: AgentConfig, kind: str) -> dict[str, Any]:
    """A channel's behavior: the defaults, with what its owner set over them."""
    return {**channel_behavior_defaults, **config.channel_behavior.get(kind, {})}


def fold_agent_change(configs: dict[str, AgentConfig], event: HostedAgentConfigured) -> None:
    """Apply one change to the agent's configuration (created on its first change)."""
    config = configs.setdefault(event.instance_id, AgentConfig())
    settings: dict[str, Any] = msgspec.json.decode(event.settings)
    change, key = event.change, event.key
    if change == "model":
        config.provider = settings.get("provider", "")
        config.model = settings.get("model", "")
        config.custom_provider = settings.get("custom_provider")
    elif change == "access":
        if key:
            config.channel_access[key] = settings
        else:
            config.access = settings
    elif change == "integration_saved":
        config.integrations[key] = settings
    elif change == "integration_removed":
        config.integrations.pop(key, None)
        config.channel_behavior.pop(key, None)
        config.channel_access.pop(key, None)
    elif change == "channel_behavior":
        config.channel_behavior[key] = {**config.channel_behavior.get(key, {}), **settings}
    elif change == "skill_added":
        if key not in config.skills:
            config.skills.append(key)
        if "custom" in settings:
            config.custom_skills[key.removeprefix("custom:")] = settings["custom"]
    elif change == "skill_removed":
        if key in config.skills:
            config.skills.remove(key)
        config.custom_skills.pop(key.removeprefix("custom:"), None)
    elif change == "mcp_added":
        config.mcp[key] = settings
    elif change == "mcp_removed":
        config.mcp.pop(key, None)


def access_card(config: AgentConfig) -> dict[str, Any]:
    """Who may message the agent: its own policy, and each connected channel's where one was set."""
    return {**config.access, "channels": dict(config.channel_access)}


def integration_card(config: AgentConfig, kind: str) -> dict[str, Any]:
    saved = config.integrations[kind]
    card: dict[str, Any] = {"kind": kind, "connected": True, **saved}
    if kind != "poe":
        card["channel_behavior"] = behavior_of(config, kind)
        card["access"] = config.channel_access.get(kind, config.access)
    return card


def configuration_card(config: AgentConfig) -> dict[str, Any]:
    """What an instance's GET adds to EmpirioLabs' ``HostedAgentInstance``: the agent's configuration."""
    return {
        "custom_provider": config.custom_provider,
        "access": access_card(config),
        "integrations": sorted(config.integrations),
        "skills": list(config.skills),
        "mcp_connectors": sorted(config.mcp),
    }
