"""Request bodies of the hosted agents' sub-routes (EmpirioLabs' OpenAPI document, ``/v1/hosted-agents/
instances/{instance_id}/...``): checked at decode, with the document's enums, and bounded."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

# Limits of one agent's configuration (each change is an event on the tenants topic).
agent_skills_max = 50
agent_mcp_connectors_max = 20
agent_messages_max = 1000  # messages in one POST .../message
custom_skill_body_chars_max = 32_000
allow_ids_per_channel_max = 200

IntegrationKind = Literal["poe_api_key", "telegram", "discord", "slack", "matrix", "mattermost", "msteams"]
ChannelKind = Literal["telegram", "discord", "slack", "matrix", "mattermost", "msteams", "whatsapp"]
channel_kinds: tuple[str, ...] = ("telegram", "discord", "slack", "matrix", "mattermost", "msteams", "whatsapp")
# What DELETE .../integrations/{kind} names (the Poe key as ``poe``; WhatsApp is paired from a dashboard).
disconnect_kinds: tuple[str, ...] = ("poe", *channel_kinds)
# Mattermost and Microsoft Teams work on OpenClaw agents only (the document's saveHostedAgentIntegration).
openclaw_only_kinds = ("mattermost", "msteams")

_name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")]
_short = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class HostedAgentMessageRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST .../message``: the conversation the agent answers (chat messages, as a chat completion's)."""

    messages: Annotated[list[dict[str, Any]], msgspec.Meta(min_length=1, max_length=agent_messages_max)]


class HostedAgentIntegrationRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: IntegrationKind
    secret: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)] | None = None
    config: dict[str, Any] | None = None


class HostedAgentChannelBehavior(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """EmpirioLabs' ``HostedAgentChannelBehavior``; a field left out keeps its value."""

    reactions: bool | None = None
    reaction_level: Literal["off", "ack", "minimal", "extensive"] | None = None
    typing: bool | None = None
    read_receipts: bool | None = None
    streaming: bool | None = None


class HostedAgentBehaviorRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    behavior: HostedAgentChannelBehavior = HostedAgentChannelBehavior()


class HostedAgentCustomProvider(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A custom OpenAI- or Anthropic-compatible endpoint: a public HTTPS base URL."""

    base_url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    model: _short | None = None
    api_key: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)] | None = None
    protocol: Literal["openai", "anthropic"] = "openai"


class HostedAgentModelRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    provider: Literal["empirio", "poe", "custom"]
    model: _short
    custom_provider: HostedAgentCustomProvider | None = None


class HostedAgentAccessRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    mode: Literal["open", "restricted"]
    kind: ChannelKind | None = None
    allow: dict[ChannelKind, Annotated[list[_short], msgspec.Meta(max_length=allow_ids_per_channel_max)]] | None = None


class HostedAgentCustomSkill(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A pasted skill: its name and its SKILL.md body."""

    name: _name
    body: Annotated[str, msgspec.Meta(min_length=1, max_length=custom_skill_body_chars_max)]


class HostedAgentSkillRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    slug: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)] | None = None
    custom: HostedAgentCustomSkill | None = None


class HostedAgentMcpRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: _name
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    transport: Literal["streamable-http", "sse"] = "streamable-http"
    header_name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9-]{1,100}$")] | None = None
    header_value: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)] | None = None
    tool_include: Annotated[list[_short], msgspec.Meta(max_length=200)] | None = None
