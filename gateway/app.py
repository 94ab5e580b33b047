"""The Litestar application: routes, auth, and the translation of events into HTTP answers."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal, DecimalException, Inexact, localcontext
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, Router, get, post
from litestar.datastructures import State
from litestar.middleware import ASGIMiddleware, DefineMiddleware
from litestar.openapi import OpenAPIConfig

from gateway import tenants
from gateway.auth import authorize, authorize_admin, scope_guard
from gateway.core import GatewayCore
from gateway.errors import ApiError, exception_handlers, from_validation_error
from gateway.idempotency import fingerprint, idempotency_key_chars_max, key_hash
from gateway.ratelimit import IpLimiter, RateLimitMiddleware
from ledger.money import MoneyFormatError, format_credits, micros_to_decimal, parse_credits
from ledger.pricing import ModelPrice, PriceBook
from ledger.wallet import Grant
from projections.usage import CursorError, posting_cursor
from schemas.api import (
    AdjustmentBody,
    AutoTopUpBody,
    ChatMessage,
    CreateOrganization,
    CreditLimitBody,
    GrantCreditsBody,
    RefundBody,
)
from schemas.commands import (
    AdjustCredits,
    AnyCommand,
    ConfigureAutoTopUp,
    GrantCredits,
    RefundCredits,
    SetCreditLimit,
)
from schemas.events import (
    CommandRejected,
    CreditsAdjusted,
    CreditsGranted,
    CreditsRefunded,
    Event,
)
from schemas.ids import new_id
from schemas.moments import in_moment_range, moment_max, moment_min, utc_now
from workers.backends import message_text

# Decimal amounts go out as JSON numbers with their exact digits, never through a float.
_encoder = msgspec.json.Encoder(decimal_format="number")
tokens_per_message_bound = 8
tokens_per_request_bound = 16
usage_page_size_max = 200
# One admin amount, in micros (1e9 credits): far above any real grant, and far enough below int64's
# 9.2e18 that balances summing many such amounts still fit the ledger's and ClickHouse's integers.
amount_micros_max = 10**15
# A query integer: ASCII digits only (str.isdigit also takes '²', which int() refuses), and short
# enough that int() stays cheap whatever is sent.
_query_int_pattern = re.compile(r"[0-9]{1,9}")


def _json(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(
        content=_encoder.encode(content), status_code=status_code, media_type="application/json", headers=headers
    )


def _core(request: Request) -> GatewayCore:
    core: GatewayCore = request.app.state.core
    return core


def _request_id(request: Request) -> str:
    return str(request.scope["state"]["request_id"])


async def _decode(request: Request, kind: type[Any]) -> Any:
    body = await request.body()
    if len(body) > _core(request).settings.request_body_bytes_max:
        raise ApiError(413, "Request body too large.", code="request_too_large")
    try:
        return msgspec.json.decode(body, type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        raise from_validation_error(error) from None


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- idempotency ---

Runner = Callable[[str | None], Awaitable[Response[bytes]]]
_replayed_headers = ("x-credits-used", "x-model-used", "content-type")


async def _idempotently(request: Request, scope: str, run: Runner) -> Response[bytes]:
    """Run ``run`` once per Idempotency-Key: replay its first 2xx answer, 409 on a different body.

    ``run`` gets an id suffix derived from the key (or None without one), for the ids it creates."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return await run(None)
    if not key.strip() or len(key) > idempotency_key_chars_max:
        raise ApiError(
            400,
            f"Idempotency-Key must be 1 to {idempotency_key_chars_max} characters.",
            code="invalid_idempotency_key",
            param="Idempotency-Key",
        )
    core = _core(request)
    hashed = key_hash(scope, key)
    derived = hashed[:32]
    request.scope["state"]["request_id"] = f"req_{derived}"  # a replay carries the first answer's id
    body_print = fingerprint(request.method, request.url.path, await request.body())
    reply = core.idempotency.get(hashed, utc_now())
    if reply is not None:
        if reply.fingerprint != body_print:
            raise ApiError(
                409,
                "This Idempotency-Key was used with a different request; use a new key.",
                code="idempotency_key_reused",
                param="Idempotency-Key",
            )
        return Response(
            content=reply.body,
            status_code=reply.status_code,
            media_type="application/json",
            headers={**reply.headers, "idempotent-replayed": "true"},
        )
    if hashed in core.idempotency.in_flight:
        raise ApiError(
            409,
            "A request with this Idempotency-Key is still running; retry when it has finished.",
            code="idempotency_key_in_use",
            param="Idempotency-Key",
            headers={"retry-after": "1"},
        )
    core.idempotency.in_flight.add(hashed)
    try:
        response = await run(derived)
        status = response.status_code or 200
        if 200 <= status < 300 and isinstance(response.content, bytes):
            kept = {k: v for k, v in response.headers.items() if k.lower() in _replayed_headers}
            core.record_reply(scope, hashed, body_print, status, response.content, kept)
        return response
    finally:
        core.idempotency.in_flight.discard(hashed)


def _make_id(prefix: str, derived: str | None) -> str:
    return f"{prefix}_{derived}" if derived else new_id(prefix)


# --- admin ---


@post("/v1/organizations", operation_id="createOrganization", opt={"scope": "platform"}, status_code=201)
async def create_organization(request: Request) -> Response[bytes]:
    authorize_admin(request)
    return await _idempotently(request, "admin", lambda derived: _create_organization(request))


async def _create_organization(request: Request) -> Response[bytes]:
    body: CreateOrganization = await _decode(request, CreateOrganization)
    event = await _core(request).create_organization(body.name, body.plan)
    return _json(
        {
            "id": event.org_id,
            "object": "organization",
            "name": event.name,
            "plan": event.plan,
            "created_at": _iso(event.occurred_at),
        },
        status_code=201,
    )


# Ledger rejection codes as HTTP statuses; anything not listed is a 400.
_rejection_status = {
    "insufficient_credits": 402,
    "reference_not_found": 404,
    "hold_not_found": 404,
    "exists_with_different_amount": 409,
}


async def _ledger(request: Request, command: AnyCommand) -> Event:
    """Run an admin ledger command; a refusal becomes an error in the OpenAI envelope."""
    try:
        outcome = await _core(request).ledger_command(command)
    except TimeoutError:
        raise ApiError(504, "The ledger did not answer in time; the command may still apply.", code="timeout") from None
    if isinstance(outcome, CommandRejected):
        raise ApiError(
            _rejection_status.get(outcome.code, 400), f"The ledger refused this: {outcome.code}.", code=outcome.code
        )
    return outcome


def _known_org(request: Request, org_id: str) -> GatewayCore:
    authorize_admin(request)
    core = _core(request)
    if org_id not in core.tenants.organizations:
        raise ApiError(404, f"No organization '{org_id}'.", code="organization_not_found")
    return core


def _micros(amount: Decimal, name: str = "amount", allow_zero: bool = False, allow_negative: bool = False) -> int:
    """Credits from a request body as micros, or a 400 naming the field ``name``."""
    largest = format_credits(amount_micros_max)
    # Bounded before any arithmetic: 1e999999 would overflow Decimal's context, and NaN compares badly.
    if not amount.is_finite() or amount.copy_abs() > micros_to_decimal(amount_micros_max):
        raise ApiError(
            400,
            f"{name} must be a finite number of credits, at most {largest} in size.",
            code="invalid_amount",
            param=name,
        )
    try:
        with localcontext() as exact:
            # More than 28 digits, or a tiny exponent, would round silently: refuse rather than change money.
            exact.traps[Inexact] = True
            micros = parse_credits(amount)
    except MoneyFormatError as error:
        raise ApiError(400, f"{name}: {error}", code="invalid_amount", param=name) from None
    except DecimalException:
        raise ApiError(
            400,
            f"{name} has more than 6 decimal places (1 micro-credit is 0.000001).",
            code="invalid_amount",
            param=name,
        ) from None
    if (micros == 0 and not allow_zero) or (micros < 0 and not allow_negative):
        raise ApiError(400, f"{name} must be positive.", code="invalid_amount", param=name)
    return micros


@post("/v1/organizations/{org_id:str}/credits", operation_id="grantCredits", opt={"scope": "platform"}, status_code=201)
async def grant_credits(request: Request, org_id: str) -> Response[bytes]:
    _known_org(request, org_id)
    return await _idempotently(request, "admin", lambda derived: _grant_credits(request, org_id, derived))


async def _grant_credits(request: Request, org_id: str, derived: str | None) -> Response[bytes]:
    core = _core(request)
    body: GrantCreditsBody = await _decode(request, GrantCreditsBody)
    grant_id = _make_id("grant", derived)
    expires_at = body.expires_at
    if expires_at is not None and expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    command = GrantCredits(
        command_id=grant_id,
        org_id=org_id,
        issued_at=utc_now(),
        grant_id=grant_id,
        amount_micros=_micros(body.amount),
        kind=body.kind,
        expires_at=expires_at,
        priority=body.priority,
        reference=body.reference,
    )
    granted = await _ledger(request, command)
    assert isinstance(granted, CreditsGranted)
    return _json(
        {
            "id": granted.grant_id,
            "object": "credit_grant",
            "org_id": org_id,
            "kind": granted.kind,
            "amount": micros_to_decimal(granted.amount_micros),
            "amount_micros": granted.amount_micros,
            "expires_at": _iso(granted.expires_at),
            "priority": granted.priority,
            "created_at": _iso(granted.occurred_at),
            "balance": _balance(core, org_id),
        },
        status_code=201,
    )


@post(
    "/v1/organizations/{org_id:str}/credit-limit",
    operation_id="setCreditLimit",
    opt={"scope": "platform"},
    status_code=200,
)
async def set_credit_limit(request: Request, org_id: str) -> Response[bytes]:
    _known_org(request, org_id)
    return await _idempotently(request, "admin", lambda derived: _set_credit_limit(request, org_id, derived))


async def _set_credit_limit(request: Request, org_id: str, derived: str | None) -> Response[bytes]:
    core = _core(request)
    body: CreditLimitBody = await _decode(request, CreditLimitBody)
    command = SetCreditLimit(
        command_id=_make_id("cmd", derived),
        org_id=org_id,
        issued_at=utc_now(),
        limit_micros=_micros(body.amount, allow_zero=True),
    )
    if command.limit_micros != core.balances.get(org_id).credit_limit_micros:
        await _ledger(request, command)
    return _json({"object": "credit_limit", "org_id": org_id, "balance": _balance(core, org_id)})


@post(
    "/v1/organizations/{org_id:str}/auto-topup",
    operation_id="configureAutoTopUp",
    opt={"scope": "platform"},
    status_code=200,
)
async def configure_auto_topup(request: Request, org_id: str) -> Response[bytes]:
    _known_org(request, org_id)
    return await _idempotently(request, "admin", lambda derived: _configure_auto_topup(request, org_id, derived))


async def _configure_auto_topup(request: Request, org_id: str, derived: str | None) -> Response[bytes]:
    body: AutoTopUpBody = await _decode(request, AutoTopUpBody)
    command = ConfigureAutoTopUp(
        command_id=_make_id("cmd", derived),
        org_id=org_id,
        issued_at=utc_now(),
        enabled=body.enabled,
        threshold_micros=_micros(body.threshold, "threshold", allow_zero=True),
        amount_micros=_micros(body.amount) if body.amount is not None else 0,
        target_micros=_micros(body.target, "target") if body.target is not None else 0,
    )
    await _ledger(request, command)
    return _json({"object": "auto_topup", "org_id": org_id, "balance": _balance(_core(request), org_id)})


@post("/v1/organizations/{org_id:str}/refunds", operation_id="refundCharge", opt={"scope": "platform"}, status_code=201)
async def refund_charge(request: Request, org_id: str) -> Response[bytes]:
    _known_org(request, org_id)
    return await _idempotently(request, "admin", lambda derived: _refund_charge(request, org_id, derived))


async def _refund_charge(request: Request, org_id: str, derived: str | None) -> Response[bytes]:
    core = _core(request)
    body: RefundBody = await _decode(request, RefundBody)
    refund_id = _make_id("refund", derived)
    command = RefundCredits(
        command_id=refund_id,
        org_id=org_id,
        issued_at=utc_now(),
        refund_id=refund_id,
        amount_micros=_micros(body.amount),
        reason=body.reason,
        reference=body.reference,
    )
    refunded = await _ledger(request, command)
    assert isinstance(refunded, CreditsRefunded)
    return _json(
        {
            "id": refund_id,
            "object": "refund",
            "org_id": org_id,
            "amount_micros": refunded.amount_micros,
            "reason": refunded.reason,
            "reference": refunded.reference,
            "created_at": _iso(refunded.occurred_at),
            "balance": _balance(core, org_id),
        },
        status_code=201,
    )


@post(
    "/v1/organizations/{org_id:str}/adjustments",
    operation_id="adjustCredits",
    opt={"scope": "platform"},
    status_code=201,
)
async def adjust_credits(request: Request, org_id: str) -> Response[bytes]:
    _known_org(request, org_id)
    return await _idempotently(request, "admin", lambda derived: _adjust_credits(request, org_id, derived))


async def _adjust_credits(request: Request, org_id: str, derived: str | None) -> Response[bytes]:
    core = _core(request)
    body: AdjustmentBody = await _decode(request, AdjustmentBody)
    adjustment_id = _make_id("adj", derived)
    command = AdjustCredits(
        command_id=adjustment_id,
        org_id=org_id,
        issued_at=utc_now(),
        adjustment_id=adjustment_id,
        amount_micros=_micros(body.amount, allow_negative=True),
        reason=body.reason,
        reference=body.reference,
    )
    adjusted = await _ledger(request, command)
    assert isinstance(adjusted, CreditsAdjusted)
    return _json(
        {
            "id": adjustment_id,
            "object": "adjustment",
            "org_id": org_id,
            "amount_micros": adjusted.amount_micros,
            "reason": adjusted.reason,
            "reference": adjusted.reference,
            "created_at": _iso(adjusted.occurred_at),
            "balance": _balance(core, org_id),
        },
        status_code=201,
    )


@get("/v1/organizations/{org_id:str}/balance", operation_id="getOrganizationBalance", opt={"scope": "admin:read"})
async def organization_balance(request: Request, org_id: str) -> Response[bytes]:
    authorize_admin(request, org_id, scope="admin:read")
    return _json({"object": "balance", "org_id": org_id, **_balance(_core(request), org_id)})


@get("/v1/organizations/{org_id:str}/ledger", operation_id="listLedgerEntries", opt={"scope": "admin:read"})
async def ledger_entries(request: Request, org_id: str) -> Response[bytes]:
    """The organization's double-entry postings, newest first; ``cursor`` pages back."""
    authorize_admin(request, org_id, scope="admin:read")
    core = _core(request)
    if core.usage_store is None:
        raise ApiError(
            503, "Ledger history is not served by this gateway: set TOLLGATE_CLICKHOUSE_URL.", code="usage_unavailable"
        )
    limit = _limit(request)
    cursor = request.query_params.get("cursor")
    try:
        rows = core.usage_store.postings(org_id, limit, cursor)
    except CursorError as error:
        raise ApiError(400, str(error), code="invalid_parameter", param="cursor") from None
    return _json(
        {
            "object": "list",
            "data": [
                {
                    "event_id": r.event_id,
                    "posting": r.posting,
                    "created_at": _iso(r.created_at),
                    "kind": r.kind,
                    "debit": r.debit,
                    "credit": r.credit,
                    "amount_micros": r.amount_micros,
                    "amount": micros_to_decimal(r.amount_micros),
                }
                for r in rows
            ],
            "next_cursor": posting_cursor(rows[-1]) if len(rows) == limit else None,
        }
    )


# --- models ---


def _model_card(price: ModelPrice, version: str) -> dict[str, Any]:
    def per_million(rate: int) -> Decimal:
        return micros_to_decimal(rate)  # a rate is micros per 1M units, so this is credits per 1M units

    return {
        "id": price.model,
        "object": "model",
        "created": 0,
        "owned_by": price.owned_by,
        "category": price.category,
        "context_length": price.context_length,
        "max_output_tokens": price.max_output_tokens,
        "pricing": {
            "currency": "USD",
            "price_version": version,
            "unit": "per_million_tokens",
            "input": per_million(price.input_token_rate),
            "cached_input": per_million(price.cached_input_token_rate),
            "output": per_million(price.output_token_rate),
            "minimum_charge": micros_to_decimal(price.minimum_charge_micros),
        },
    }


@get("/v1/models", operation_id="listModels", opt={"scope": "user:read"})
async def list_models(request: Request) -> Response[bytes]:
    authorize(request, "user:read")
    book = _core(request).prices.current
    return _json({"object": "list", "data": [_model_card(p, book.version) for p in book.models.values()]})


@get("/v1/models/{model_id:path}", operation_id="retrieveModel", opt={"scope": "user:read"})
async def retrieve_model(request: Request, model_id: str) -> Response[bytes]:
    authorize(request, "user:read")
    book = _core(request).prices.current
    price = book.model(model_id.lstrip("/"))
    if price is None:
        raise ApiError(
            404,
            f"The model '{model_id.lstrip('/')}' does not exist; see GET /v1/models.",
            code="model_not_found",
            param="model",
        )
    return _json(_model_card(price, book.version))


@get("/v1/price-books", operation_id="listPriceBooks", opt={"scope": "platform"})
async def list_price_books(request: Request) -> Response[bytes]:
    authorize_admin(request, scope="admin:read")
    prices = _core(request).prices
    return _json(
        {
            "object": "list",
            "current": prices.current.version,
            "versions": prices.versions(),
            "data": [msgspec.to_builtins(prices.current)],
        }
    )


@post("/v1/price-books", operation_id="publishPriceBook", opt={"scope": "platform"}, status_code=201)
async def publish_price_book(request: Request) -> Response[bytes]:
    """A new price book version. It prices holds placed from now on; in-flight ones keep theirs."""
    authorize_admin(request)
    book: PriceBook = await _decode(request, PriceBook)
    core = _core(request)
    if core.prices.at_version(book.version) is not None:
        raise ApiError(
            409,
            f"Price book version '{book.version}' exists; versions never change.",
            code="price_version_exists",
            param="version",
        )
    for model_id, price in book.models.items():
        rates = [v for k, v in msgspec.structs.asdict(price).items() if k.endswith("_rate") or k.endswith("_micros")]
        if model_id != price.model or any(isinstance(v, int) and v < 0 for v in rates):
            raise ApiError(
                400,
                f"Model '{model_id}': the key must equal its model id and rates must not be negative.",
                code="invalid_price_book",
                param="models",
            )
    await core.publish_price_book(book)
    return _json({"object": "price_book", "version": book.version, "models": sorted(book.models)}, status_code=201)


# --- chat ---


def chat_input_tokens_bound(messages: list[ChatMessage]) -> int:
    """An upper bound on prompt tokens for any byte-level tokenizer: a token is at least one byte."""
    return tokens_per_request_bound + sum(
        len(message_text({"content": m.content}).encode()) + tokens_per_message_bound for m in messages
    )


# --- account ---


def _balance(core: GatewayCore, org_id: str) -> dict[str, Any]:
    """The balance, split into available, held and by grant (burn order first)."""
    wallet = core.balances.get(org_id)
    grants = sorted(wallet.grants.values(), key=Grant.burn_key)
    return {
        "amount": micros_to_decimal(wallet.balance_micros),
        "amount_micros": wallet.balance_micros,
        "available": micros_to_decimal(wallet.available_micros),
        "available_micros": wallet.available_micros,
        "held": micros_to_decimal(wallet.held_micros),
        "held_micros": wallet.held_micros,
        "credit_limit_micros": wallet.credit_limit_micros,
        "spendable_micros": wallet.spendable_micros,
        "currency": "USD",
        "grants": [
            {
                "id": grant.grant_id,
                "kind": grant.kind,
                "amount_micros": grant.amount_micros,
                "remaining_micros": grant.remaining_micros,
                "expires_at": _iso(grant.expires_at),
                "priority": grant.priority,
                "expired": grant.expired,
            }
            for grant in grants
            if grant.remaining_micros > 0
        ],
        "auto_topup_enabled": wallet.auto_topup is not None,
        "auto_topup_threshold_micros": wallet.auto_topup.threshold_micros if wallet.auto_topup else None,
        "auto_topup_amount_micros": wallet.auto_topup.amount_micros or None if wallet.auto_topup else None,
        "auto_topup_target_micros": wallet.auto_topup.target_micros or None if wallet.auto_topup else None,
        "updated_at": _iso(core.balances.updated_at.get(org_id)),
    }


def _limit(request: Request, default: int = 100, maximum: int = usage_page_size_max) -> int:
    raw_limit = request.query_params.get("limit", str(default))
    if not _query_int_pattern.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= maximum:
        raise ApiError(400, f"limit must be an integer from 1 to {maximum}.", code="invalid_parameter", param="limit")
    return int(raw_limit)


def _moment(value: str, name: str) -> datetime:
    """An ISO 8601 moment (UTC when it names no offset) within what ClickHouse stores, or a 400."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            400,
            f"{name} must be an ISO 8601 date-time, e.g. 2026-11-01T00:00:00Z.",
            code="invalid_parameter",
            param=name,
        ) from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if not in_moment_range(moment):
        raise ApiError(
            400,
            f"{name} must lie from {_iso(moment_min)} to {_iso(moment_max.replace(microsecond=0))}.",
            code="invalid_parameter",
            param=name,
        )
    return moment


def _parse_time(request: Request, name: str) -> datetime | None:
    value = request.query_params.get(name)
    return None if value is None else _moment(value, name)


@get("/healthz", operation_id="health", opt={"scope": "public", "rate": "none"}, include_in_schema=False)
async def health(request: Request) -> Response[bytes]:
    core = _core(request)
    return _json(
        {"status": "ok", "inflight": core.inflight, "waiting": len(core.waiters), "ratelimit": core.limiter.stats()}
    )


# --- wiring ---


class RequestIdMiddleware(ASGIMiddleware):
    """Every response, errors included, carries the request's id in ``x-request-id``."""

    async def handle(self, scope: Any, receive: Any, send: Any, next_app: Any) -> None:
        request_id = f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                # Read at send time: an Idempotency-Key replaces the id with one derived from the key.
                current = str(scope["state"]["request_id"])
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                headers.append((b"x-request-id", current.encode()))
                message["headers"] = headers
            await send(message)

        await next_app(scope, receive, send_with_id)


def create_app(core: GatewayCore) -> Litestar:
    from gateway import audit, generation, jobs, usage  # they build on this module's helpers

    return Litestar(
        route_handlers=[
            create_organization,
            grant_credits,
            set_credit_limit,
            configure_auto_topup,
            refund_charge,
            adjust_credits,
            organization_balance,
            ledger_entries,
            list_models,
            retrieve_model,
            list_price_books,
            publish_price_book,
            *generation.route_handlers,
            *jobs.route_handlers,
            *audit.route_handlers,
            *usage.route_handlers,
            health,
            *tenants.route_handlers,
        ],
        guards=[scope_guard],
        # The OpenAPI document is public, and declared so like every other route.
        openapi_config=OpenAPIConfig(
            title="Tollgate",
            version="0.1.0",
            openapi_router=Router("/schema", route_handlers=[], opt={"scope": "public", "rate": "none"}),
        ),  # every route's declared scope and rate limit (gateway/auth.py)
        exception_handlers=exception_handlers,  # type: ignore[arg-type]
        middleware=[
            RequestIdMiddleware(),
            DefineMiddleware(
                RateLimitMiddleware,
                ip_limiter=IpLimiter(
                    core.settings.ip_requests_per_window_max, core.settings.ip_window_s, core.settings.ips_tracked_max
                ),
            ),
        ],
        state=State({"core": core}),
        request_max_body_size=core.settings.request_body_bytes_max,
        debug=False,
    )
