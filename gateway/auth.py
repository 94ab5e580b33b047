"""Who is calling, and may they: API keys, signed service tokens (JWTs), the platform admin token,
scopes declared per route, and the rate-limit admission that follows authentication.

Every route declares what it needs in its handler ``opt``:

    @get("/v1/models", opt={"scope": "user:read"})

``scope`` is one of ``user:read``, ``user:write``, ``admin:read``, ``admin:write`` (an organization's
key with that scope; on a path with ``{org_id}`` only for that organization, or the platform admin
token), ``platform`` (the platform admin token only) or ``public``. ``anonymous: True`` also serves a
caller who sends no credential at all (the public catalog); one who sends one is checked as usual.
``rate`` names the limit the route counts against: ``requests``, ``jobs`` (job submissions), or
``none``; by default (``route_rate``) a ``user:write`` POST or PUT is a job submission and anything
else an API request, as the reference's plan table counts them. ``tokens: True`` also requires room
in the tokens-per-minute window (the chat endpoint).
``scope_guard`` enforces this for every route before its handler runs; a route without a declared
scope is refused (and tests/test_auth_scopes.py fails). Handlers call ``authorize`` /
``authorize_admin`` to get the caller, which reuses what the guard established.

Another organization's resources do not exist for a caller: 404, never 403.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from datetime import UTC, datetime
from typing import Any

import jwt
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from eventlog import Outgoing, topics
from eventlog.logs import bind_org
from gateway.core import GatewayCore
from gateway.errors import ApiError
from gateway.jwks import JwksKeys, verified_tokens_max
from gateway.ratelimit import headers_for, record, throttled_error
from projections.views import ApiToken
from schemas.api import all_scopes
from schemas.codec import encode
from schemas.events import ApiTokenUsed
from schemas.ids import random_hex

logger = logging.getLogger(__name__)

route_scopes = (*all_scopes, "platform", "public")
route_rates = ("requests", "jobs", "none")
jwt_algorithms = ["EdDSA"]  # Ed25519 only: no algorithm confusion, no "none"
org_claim = "org_id"
scope_claim = "scope"  # space-separated, as in OAuth 2.0 (RFC 8693 / RFC 9068)
_admin = "platform-admin"  # the principal of the platform admin token
_state_key = "principal"


def _core(connection: ASGIConnection[Any, Any, Any, Any]) -> GatewayCore:
    core: GatewayCore = connection.app.state.core
    return core


def sends_credential(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """Whether the caller sent any credential (a route open to anonymous callers still checks one)."""
    return "authorization" in connection.headers or "x-api-key" in connection.headers


def _bearer(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The credential: ``Authorization: Bearer``, else ``x-api-key`` (what Anthropic's SDK sends)."""
    header = connection.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() == "bearer" and secret.strip():
        return secret.strip()
    api_key = connection.headers.get("x-api-key", "").strip()
    if api_key:
        return api_key
    if _route_scope(connection) == "platform":
        message = "Missing platform admin token: send 'Authorization: Bearer <TOLLGATE_ADMIN_TOKEN>'."
    else:
        message = "Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'."
    raise ApiError(401, message, code="missing_api_key")


def _unauthorized(message: str, code: str = "invalid_api_key") -> ApiError:
    return ApiError(401, message, code=code)


# --- JWKS ---


def verify_service_token(core: GatewayCore, token: str) -> ApiToken:
    """A JWT as a principal, or 401. Keys must already be fetched (``JwksKeys.fetch_if_needed``)."""
    keys: JwksKeys = core.jwks
    cached = keys.verified.get(token)
    if cached is not None:
        principal, expires_at, generation = cached
        if generation == keys.generation and time.time() < expires_at + core.settings.jwt_leeway_s:
            return principal
        keys.verified.pop(token, None)
    principal = _verify_service_token(core, keys, token)
    if len(keys.verified) >= verified_tokens_max:
        with contextlib.suppress(KeyError):  # a JWKS refresh may have just cleared it
            keys.verified.popitem(last=False)
    assert principal.expires_at is not None
    keys.verified[token] = (principal, principal.expires_at.timestamp(), keys.generation)
    return principal


def _verify_service_token(core: GatewayCore, keys: JwksKeys, token: str) -> ApiToken:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise _unauthorized("Malformed service token.", "invalid_token") from None
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _unauthorized("The service token has no key id (kid).", "invalid_token")
    key = keys.key(kid)
    if key is None:
        raise _unauthorized(f"Unknown signing key '{kid}': the JWKS does not list it.", "invalid_token")
    settings = core.settings
    try:
        claims = jwt.decode(
            token,
            key=key,
            algorithms=jwt_algorithms,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway=settings.jwt_leeway_s,
            options={"require": ["exp", "iss", "aud", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("The service token has expired.", "token_expired") from None
    except jwt.InvalidAudienceError:
        raise _unauthorized(
            f"The service token's audience must be '{settings.jwt_audience}'.", "invalid_token"
        ) from None
    except jwt.InvalidIssuerError:
        raise _unauthorized(f"The service token's issuer must be '{settings.jwt_issuer}'.", "invalid_token") from None
    except jwt.PyJWTError as error:
        raise _unauthorized(f"Invalid service token: {error}.", "invalid_token") from None
    org_id = claims.get(org_claim)
    if not isinstance(org_id, str) or org_id not in core.tenants.organizations:
        raise _unauthorized(f"The service token's '{org_claim}' claim names no organization.", "invalid_token")
    raw_scopes = claims.get(scope_claim, "")
    scopes = frozenset(s for s in raw_scopes.split() if s in all_scopes) if isinstance(raw_scopes, str) else frozenset()
    subject = str(claims["sub"])
    if "nbf" in claims:
        _claim_moment(claims, "nbf")  # unused, but a claim no datetime can hold marks a bad token all the same
    return ApiToken(
        token_id=f"jwt:{subject}",
        org_id=org_id,
        name=subject,
        scopes=scopes,
        secret_prefix="",
        created_at=_claim_moment(claims, "iat"),
        expires_at=_claim_moment(claims, "exp"),
        kind="jwt",
    )


def _claim_moment(claims: dict[str, Any], name: str) -> datetime:
    """A NumericDate claim as a moment. PyJWT checks it is an integer, not that a datetime can hold it:
    a signed token saying exp=1e20 is a bad token (401), not a crash. It also takes a numeric string
    ("1700000000"), which RFC 7519 does not: a NumericDate is a JSON number."""
    value = claims.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _unauthorized(
            f"The service token's '{name}' claim must be a JSON number (seconds since 1970).", "invalid_token"
        )
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (OverflowError, ValueError, OSError, TypeError):
        raise _unauthorized(f"The service token's '{name}' claim is not a moment in range.", "invalid_token") from None


def _looks_like_jwt(secret: str) -> bool:
    return secret.count(".") == 2 and secret.startswith("eyJ")


# --- API keys ---


def _unknown_secret(route_scope: str | None) -> ApiError:
    """A 401 for a secret that is neither the platform admin token nor a known key, saying which
    credential the route takes: an organization's key is no help on a platform route."""
    if route_scope == "platform":
        return _unauthorized(
            "Incorrect platform admin token: this endpoint takes the gateway's TOLLGATE_ADMIN_TOKEN "
            "(`tollgate dev` prints it, and keeps it in its data directory as admin-token)."
        )
    if route_scope is not None and route_scope.startswith("admin:"):
        return _unauthorized(
            "Unknown token: send the platform admin token (TOLLGATE_ADMIN_TOKEN), or an API key of this "
            f"organization with the '{route_scope}' scope (this one is unknown, revoked or mistyped)."
        )
    return _unauthorized(
        "Incorrect API key provided (unknown, revoked or mistyped): send an organization's API key (tg_...); "
        "the platform admin or the organization's admins create one with POST /v1/organizations/{org_id}/tokens."
    )


def _route_scope(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    handler = connection.scope.get("route_handler")
    scope = handler.opt.get("scope") if handler is not None else None
    return scope if isinstance(scope, str) else None


def _api_key(core: GatewayCore, secret: str, route_scope: str | None) -> ApiToken:
    token = core.authenticate(secret)
    if token is None:
        raise _unknown_secret(route_scope)
    now = datetime.now(UTC)
    if token.expires_at is not None and token.expires_at <= now:
        raise _unauthorized("This API key has expired; create a new one.", "api_key_expired")
    _mark_used(core, token, now)
    return token


def _mark_used(core: GatewayCore, token: ApiToken, now: datetime) -> None:
    """Last-used time: kept here at once, and put on the log at most once per interval per key."""
    last_sent: dict[str, float] = core.token_used_sent
    moment = now.timestamp()
    core.tenants.mark_used(token.token_id, now)
    if moment - last_sent.get(token.token_id, 0.0) < core.settings.token_last_used_interval_s:
        return
    last_sent[token.token_id] = moment
    event = ApiTokenUsed(
        event_id=f"evt_{random_hex()}",
        occurred_at=now,
        org_id=token.org_id,
        token_id=token.token_id,
    )
    core.send([Outgoing(topics.TENANTS, token.org_id, encode(event))])


# --- principals ---


def _is_admin(core: GatewayCore, secret: str) -> bool:
    return bool(core.admin_token) and hmac.compare_digest(secret.encode(), core.admin_token.encode())


async def principal_async(connection: ASGIConnection[Any, Any, Any, Any]) -> ApiToken | None:
    """The caller (None: the platform admin), authenticated once per request; 401 otherwise."""
    state = connection.scope.setdefault("state", {})
    if _state_key in state:
        cached: ApiToken | None = state[_state_key]
        return cached
    core = _core(connection)
    secret = _bearer(connection)
    if _looks_like_jwt(secret) and core.jwks.configured:
        kid = _unverified_kid(secret)
        if kid is not None and core.jwks.needs_fetch(kid):
            await asyncio.to_thread(core.jwks.fetch_if_needed, kid)
    return _authenticate(connection, core, secret)


async def service_token_principal(core: GatewayCore, secret: str) -> ApiToken | None:
    """A JWT as a principal, its signing keys fetched first when needed (the usage page's sign-in);
    None when it is no valid service token."""
    if not (_looks_like_jwt(secret) and core.jwks.configured):
        return None
    kid = _unverified_kid(secret)
    if kid is not None and core.jwks.needs_fetch(kid):
        await asyncio.to_thread(core.jwks.fetch_if_needed, kid)
    try:
        return verify_service_token(core, secret)
    except ApiError:
        return None


def principal(connection: ASGIConnection[Any, Any, Any, Any]) -> ApiToken | None:
    state = connection.scope.setdefault("state", {})
    if _state_key in state:
        cached: ApiToken | None = state[_state_key]
        return cached
    core = _core(connection)
    secret = _bearer(connection)
    if _looks_like_jwt(secret) and core.jwks.configured:
        kid = _unverified_kid(secret)
        if kid is not None:
            core.jwks.fetch_if_needed(kid)
    return _authenticate(connection, core, secret)


def _unverified_kid(secret: str) -> str | None:
    try:
        kid = jwt.get_unverified_header(secret).get("kid")
    except jwt.PyJWTError:
        return None
    return kid if isinstance(kid, str) else None


def _authenticate(connection: ASGIConnection[Any, Any, Any, Any], core: GatewayCore, secret: str) -> ApiToken | None:
    state = connection.scope["state"]
    if _is_admin(core, secret):
        state[_state_key] = None
        return None
    if _looks_like_jwt(secret):
        if not core.jwks.configured:
            raise _unauthorized("Service tokens are not accepted here: no JWKS is configured.", "invalid_token")
        token = verify_service_token(core, secret)
    else:
        token = _api_key(core, secret, _route_scope(connection))
    state[_state_key] = token
    return token


def _missing_scope(scope: str) -> ApiError:
    return ApiError(403, f"This API key lacks the '{scope}' scope needed here.", code="insufficient_scope")


def authorize(request: Request[Any, Any, Any], scope: str) -> ApiToken:
    """The organization's key (or service token) calling, with ``scope``; 401 or 403 otherwise."""
    token = principal(request)
    if token is None:
        raise ApiError(
            403,
            f"The platform admin token is not an organization's key; use an API key with the '{scope}' scope.",
            code="insufficient_scope",
        )
    if scope not in token.scopes:
        raise _missing_scope(scope)
    return token


def authorize_admin(request: Request[Any, Any, Any], org_id: str | None = None, scope: str = "admin:write") -> None:
    """The platform admin token, or (for its own organization) a key with an admin scope."""
    core = _core(request)
    token = principal(request)
    if token is None:
        if org_id is not None and org_id not in core.tenants.organizations:
            raise ApiError(404, f"No organization '{org_id}'.", code="organization_not_found")
        return
    if org_id is None:
        raise ApiError(403, "This endpoint needs the platform admin token.", code="insufficient_scope")
    if token.org_id != org_id:
        raise ApiError(404, "Not found.", code="not_found")  # another organization's ids do not exist
    if scope not in token.scopes:
        raise _missing_scope(scope)


# --- the guard every route passes ---


async def scope_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Enforce the route's declared scope, then its rate limit; see the module docstring."""
    scope = handler.opt.get("scope")
    if scope is None and connection.scope.get("method") == "OPTIONS":
        return  # the router's own OPTIONS answer (204 and the route's Allow header): nothing to guard
    if scope not in route_scopes:
        logger.error("route %s declares no valid scope (%r): refused", handler, scope)
        raise ApiError(403, "This route declares no scope, so nobody may call it.", code="insufficient_scope")
    if scope == "public" or (handler.opt.get("anonymous") and not sends_credential(connection)):
        return
    token = await principal_async(connection)
    org_id = connection.path_params.get("org_id")
    if scope == "platform":
        if token is not None:
            if org_id is not None and token.org_id != org_id:
                raise ApiError(404, "Not found.", code="not_found")
            raise ApiError(403, "This endpoint needs the platform admin token.", code="insufficient_scope")
    elif token is None:
        if scope.startswith("user:"):
            authorize(connection, scope)  # type: ignore[arg-type]  # raises: the admin token is no key
        if org_id is not None and org_id not in _core(connection).tenants.organizations:
            raise ApiError(404, f"No organization '{org_id}'.", code="organization_not_found")
    else:
        if org_id is not None and token.org_id != org_id:
            raise ApiError(404, "Not found.", code="not_found")
        if scope.startswith("admin:") and org_id is None:
            raise ApiError(403, "This endpoint needs the platform admin token.", code="insufficient_scope")
        if scope not in token.scopes:
            raise _missing_scope(scope)
    if token is not None:
        bind_org(token.org_id)  # the request's log lines carry its organization (eventlog/logs.py)
        method = connection.method if isinstance(connection, Request) else "GET"
        admit(
            connection,
            token,
            route_rate(method, scope, handler.opt),
            bool(handler.opt.get("tokens")),
        )


def route_rate(method: str, scope: str, opt: dict[str, Any]) -> str:
    """The limit a route counts against, as Casola's plan table counts: a POST (or PUT) that submits
    work (every ``user:write`` POST: the generation endpoints) is a job submission, everything else
    an API request; a route may say otherwise in ``opt["rate"]``."""
    declared = opt.get("rate")
    if declared is not None:
        return str(declared)
    return "jobs" if method in ("POST", "PUT") and scope == "user:write" else "requests"


def admit(connection: ASGIConnection[Any, Any, Any, Any], token: ApiToken, rate: str, tokens: bool) -> None:
    """Count the request against its organization's (and key's) limits, or answer 429."""
    if rate == "none":
        return
    assert rate in route_rates, rate
    amounts = {rate: 1}
    if tokens:
        amounts["tokens"] = 0
    core = _core(connection)
    request_id = str(connection.scope["state"].get("request_id", ""))
    admission = core.limiter.admit(token, amounts, request_id, connection.url.path)
    core.send_with_request([record(admission)])  # with the request's hold: one append for both
    if not admission.decision.admitted:
        raise throttled_error(admission.decision)
    connection.scope["state"]["ratelimit_headers"] = headers_for(admission.decision)
