"""Changing a hosted agent's configuration: the checks the document asks of each value (a public HTTPS
URL, a chat model of the price book) and the event that records the change on the tenants topic
(``HostedAgentConfigured``, folded by ``projections/hosted_agents.py`` on every gateway instance).

No agent runtime runs (docs/architecture.md, "GPU instances and hosted agents"), so nothing connects
to an integration, a skill's URL or an MCP server: a URL is checked by its form, never fetched or
resolved, and a credential is kept as its last four characters only (never on the log)."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

import msgspec

from gateway.core import GatewayCore
from gateway.errors import ApiError
from schemas.events import HostedAgentConfigured
from schemas.ids import new_id
from schemas.moments import utc_now

_private_suffixes = (".localhost", ".local", ".internal", ".lan", ".home.arpa")


def public_https_host(url: str, param: str) -> str:
    """The host of a public HTTPS URL, or a 400 naming ``param``: https only, a host name or a global
    IP address (not localhost, a private range or a link-local one)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError:
        host, parts = "", None
    if parts is None or parts.scheme != "https" or not host:
        raise ApiError(400, f"{param} must be a public https:// URL.", code="invalid_parameter", param=param)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    private_name = host == "localhost" or host.endswith(_private_suffixes) or "." not in host
    if (address is not None and not address.is_global) or (address is None and private_name):
        raise ApiError(
            400,
            f"{param} must reach a public host; {host} is a local or private address.",
            code="invalid_parameter",
            param=param,
        )
    return host


def secret_hint(secret: str | None) -> str | None:
    """What is kept of a credential: enough for its owner to tell which one it is."""
    if not secret:
        return None
    return "..." + secret[-4:] if len(secret) > 8 else "..."


def check_chat_model(core: GatewayCore, model: str, param: str) -> None:
    """A model an agent can answer with on EmpirioLabs: a chat model of the current price book."""
    price = core.prices.current.model(model)
    if price is None or price.category != "chat":
        raise ApiError(
            404,
            f"No chat model '{model}'; see GET /v1/models for the models an agent can answer with.",
            code="model_not_found",
            param=param,
        )


async def record_configuration(
    core: GatewayCore,
    org_id: str,
    token_id: str,
    instance_id: str,
    change: str,
    key: str = "",
    settings: dict[str, Any] | None = None,
) -> None:
    """Append the change and wait until this instance has folded it (its answer shows it)."""
    event = HostedAgentConfigured(
        event_id=new_id("evt"),
        occurred_at=utc_now(),
        org_id=org_id,
        correlation_id=instance_id,
        instance_id=instance_id,
        change=change,
        key=key,
        settings=msgspec.Raw(msgspec.json.encode(settings or {})),
        token_id=token_id,
    )
    await core.record_tenant_event(event)
