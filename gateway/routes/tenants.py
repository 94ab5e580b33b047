"""Tenant administration: API keys (create, list, revoke), plans and rate-limit overrides.

Keys are managed by the organization's admins (``admin:write`` keys) or the platform admin; plans
and organization-wide limits by the platform admin only (an organization must not raise its own).
A key can only hand out scopes it holds itself.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from litestar import Request, Response, delete, get, post
from litestar.params import FromPath

from gateway.auth import authorize_admin, principal
from gateway.core import Core, GatewayCore
from gateway.errors import ApiError
from gateway.http import decode_body, json_response
from ledger.limits import kinds, organization_limits
from projections.views import ApiToken
from schemas.api import CreateToken, RateLimits, SetPlanBody
from schemas.events import ApiTokenLimitsSet, ApiTokenRevoked, OrganizationLimitsSet, OrganizationPlanChanged
from schemas.ids import new_id
from schemas.moments import iso_or_none, utc_now

# Why POST .../tokens takes no Idempotency-Key: its answer holds the key's secret, which is shown once
# and never stored (only its sha256 is); replaying the answer would mean keeping the secret in the log.
token_creation_not_idempotent = "the answer holds a secret that is shown once and never stored"


def token_status(core: GatewayCore, token: ApiToken, now: datetime) -> str:
    if token.token_id in core.tenants.revoked_at:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    return "active"


def token_card(core: GatewayCore, token: ApiToken) -> dict[str, Any]:
    tenants = core.tenants
    return {
        "id": token.token_id,
        "object": "api_token",
        "name": token.name,
        "scopes": sorted(token.scopes),
        "status": token_status(core, token, utc_now()),
        "secret_prefix": token.secret_prefix,
        "created_at": iso_or_none(token.created_at),
        "expires_at": iso_or_none(token.expires_at),
        "last_used_at": iso_or_none(tenants.last_used_at.get(token.token_id)),
        "revoked_at": iso_or_none(tenants.revoked_at.get(token.token_id)),
        "rate_limits": dict(token.rate_limits),
    }


@post(
    "/v1/organizations/{org_id:str}/tokens",
    operation_id="createToken",
    status_code=201,
    opt={"scope": "admin:write", "idempotent": token_creation_not_idempotent},
)
async def create_token(request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]) -> Response[bytes]:
    return await new_token(request, core, org_id)


async def new_token(request: Request[Any, Any, Any], core: GatewayCore, org_id: str) -> Response[bytes]:
    """A new key of the organization and its secret (shown once); also Casola's
    ``POST /api/organizations/{id}/tokens``."""
    authorize_admin(request, org_id)
    body: CreateToken = await decode_body(request, CreateToken, core.settings.request_body_bytes_max)
    scopes: list[str] = list(dict.fromkeys(body.scopes))
    caller = principal(request)
    if caller is not None and not set(scopes) <= caller.scopes:
        missing = sorted(set(scopes) - caller.scopes)
        raise ApiError(
            403,
            f"A key can only grant scopes it holds; this one lacks {', '.join(missing)}.",
            code="insufficient_scope",
        )
    now = utc_now()
    expires_at = body.expires_at
    if body.expires_in is not None:
        if expires_at is not None:
            raise ApiError(
                400, "Send expires_at or expires_in, not both.", code="invalid_parameter", param="expires_in"
            )
        expires_at = now + timedelta(seconds=body.expires_in)
    if expires_at is not None:
        expires_at = expires_at if expires_at.tzinfo else expires_at.replace(tzinfo=UTC)
        if expires_at <= now:
            raise ApiError(400, "expires_at must be in the future.", code="invalid_parameter", param="expires_at")
    limits = body.rate_limits.as_dict() if body.rate_limits else {}
    if caller is not None:
        expires_at, limits = _within_creator(caller, expires_at, limits)
    event, secret = await core.create_token(org_id, body.name, scopes, expires_at, limits)
    token = core.tenants.tokens_by_id[event.token_id]
    return json_response({"token": token_card(core, token), "secret": secret}, status_code=201)


def _within_creator(
    creator: ApiToken, expires_at: datetime | None, limits: dict[str, int]
) -> tuple[datetime | None, dict[str, int]]:
    """A key may not outlive nor out-limit the key (or service token) that creates it: no expiry asked
    for means the creator's, a later one is a 400; the creator's own per-key limits bound the new key's
    (a kind it leaves out takes the creator's). Otherwise a short-lived or unrevocable credential could
    mint a permanent one."""
    if creator.expires_at is not None:
        if expires_at is None:
            expires_at = creator.expires_at
        elif expires_at > creator.expires_at:
            raise ApiError(
                400,
                f"A key may not outlive the credential that creates it; this one expires at "
                f"{iso_or_none(creator.expires_at)}.",
                code="invalid_parameter",
                param="expires_at",
            )
    bounded = dict(limits)
    for kind, most in creator.rate_limits.items():
        asked = bounded.get(kind)
        if asked is None:
            bounded[kind] = most
        elif asked > most:
            raise ApiError(
                400,
                f"A key may not have a higher {kind} limit than the credential that creates it ({most} per minute).",
                code="invalid_parameter",
                param="rate_limits",
            )
    return expires_at, bounded


@get("/v1/organizations/{org_id:str}/tokens", operation_id="listTokens", opt={"scope": "admin:read"})
async def list_tokens(request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]) -> Response[bytes]:
    """The organization's keys, oldest first, revoked and expired ones included; never a secret."""
    return tokens_answer(request, core, org_id)


def tokens_answer(request: Request[Any, Any, Any], core: GatewayCore, org_id: str) -> Response[bytes]:
    authorize_admin(request, org_id, scope="admin:read")
    return json_response({"object": "list", "data": [token_card(core, t) for t in core.tenants.tokens_of(org_id)]})


def _own_token(core: GatewayCore, org_id: str, token_id: str) -> ApiToken:
    token = core.tenants.tokens_by_id.get(token_id)
    if token is None or token.org_id != org_id:
        raise ApiError(404, f"No API token '{token_id}' in this organization.", code="token_not_found")
    return token


@get("/v1/organizations/{org_id:str}/tokens/{token_id:str}", operation_id="getToken", opt={"scope": "admin:read"})
async def get_token(
    request: Request[Any, Any, Any], core: Core, org_id: FromPath[str], token_id: FromPath[str]
) -> Response[bytes]:
    authorize_admin(request, org_id, scope="admin:read")
    return json_response(token_card(core, _own_token(core, org_id, token_id)))


@delete(
    "/v1/organizations/{org_id:str}/tokens/{token_id:str}",
    operation_id="revokeToken",
    status_code=200,
    opt={"scope": "admin:write"},
)
async def revoke_token(
    request: Request[Any, Any, Any], core: Core, org_id: FromPath[str], token_id: FromPath[str]
) -> Response[bytes]:
    """Revoke a key: every instance refuses it once it has read the event (this one before answering)."""
    authorize_admin(request, org_id)
    token = _own_token(core, org_id, token_id)
    if token_id not in core.tenants.revoked_at:
        caller = principal(request)
        event = ApiTokenRevoked(
            event_id=new_id("evt"),
            occurred_at=utc_now(),
            org_id=org_id,
            token_id=token_id,
            revoked_by=caller.token_id if caller is not None else "platform-admin",
        )
        await core.record_tenant_event(event)
    return json_response(token_card(core, token))


@post(
    "/v1/organizations/{org_id:str}/tokens/{token_id:str}/limits",
    operation_id="setTokenLimits",
    opt={"scope": "admin:write"},
    status_code=200,
)
async def set_token_limits(
    request: Request[Any, Any, Any], core: Core, org_id: FromPath[str], token_id: FromPath[str]
) -> Response[bytes]:
    """Replace a key's own limits (on top of the organization's); an empty body removes them."""
    authorize_admin(request, org_id)
    _own_token(core, org_id, token_id)
    body: RateLimits = await decode_body(request, RateLimits, core.settings.request_body_bytes_max)
    event = ApiTokenLimitsSet(
        event_id=new_id("evt"), occurred_at=utc_now(), org_id=org_id, token_id=token_id, rate_limits=body.as_dict()
    )
    await core.record_tenant_event(event)
    return json_response(token_card(core, core.tenants.tokens_by_id[token_id]))


def _limits_card(core: GatewayCore, org_id: str) -> dict[str, Any]:
    org = core.tenants.organizations[org_id]
    overrides = core.tenants.limit_overrides.get(org_id, {})
    limits = organization_limits(org.plan, overrides)
    return {
        "object": "rate_limits",
        "org_id": org_id,
        "plan": org.plan,
        "per_minute": {kind: limits[kind] for kind in kinds},
        "overrides": dict(overrides),
        "used_in_window": core.limiter.window_totals("organization", org_id, tuple(kinds)),
    }


@get("/v1/organizations/{org_id:str}/limits", operation_id="getRateLimits", opt={"scope": "admin:read"})
async def get_limits(request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]) -> Response[bytes]:
    authorize_admin(request, org_id, scope="admin:read")
    return json_response(_limits_card(core, org_id))


@post("/v1/organizations/{org_id:str}/limits", operation_id="setRateLimits", opt={"scope": "platform"}, status_code=200)
async def set_limits(request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]) -> Response[bytes]:
    """Replace the organization's overrides; a kind left out follows the plan again."""
    authorize_admin(request, org_id)
    body: RateLimits = await decode_body(request, RateLimits, core.settings.request_body_bytes_max)
    event = OrganizationLimitsSet(
        event_id=new_id("evt"), occurred_at=utc_now(), org_id=org_id, rate_limits=body.as_dict()
    )
    await core.record_tenant_event(event)
    return json_response(_limits_card(core, org_id))


@post("/v1/organizations/{org_id:str}/plan", operation_id="setPlan", opt={"scope": "platform"}, status_code=200)
async def set_plan(request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]) -> Response[bytes]:
    authorize_admin(request, org_id)
    body: SetPlanBody = await decode_body(request, SetPlanBody, core.settings.request_body_bytes_max)
    event = OrganizationPlanChanged(event_id=new_id("evt"), occurred_at=utc_now(), org_id=org_id, plan=body.plan)
    await core.record_tenant_event(event)
    return json_response(_limits_card(core, org_id))


route_handlers = [
    create_token,
    list_tokens,
    get_token,
    revoke_token,
    set_token_limits,
    get_limits,
    set_limits,
    set_plan,
]
