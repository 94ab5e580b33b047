"""Organizations and their money: create an organization, grant credits, set the credit limit and
automatic top-up, refund and adjust, and read the balance and the double-entry postings.

Every POST here is idempotent by construction (``gateway/idempotency.py``); ids of grants, refunds
and adjustments derive from the Idempotency-Key when one is sent, so the ledger itself refuses a
second application even when two gateway instances race on one key.
"""

from __future__ import annotations

from datetime import UTC
from decimal import Decimal, DecimalException, Inexact, localcontext
from typing import Any

from litestar import Request, Response, get, post
from litestar.params import FromPath

from gateway.auth import authorize_admin
from gateway.bodies import balance_card
from gateway.core import Core, GatewayCore
from gateway.errors import ApiError
from gateway.http import decode_body, derived_id, json_response, limit_param
from ledger.money import MoneyFormatError, format_credits, micros_to_decimal, parse_credits
from projections.usage import CursorError, posting_cursor
from schemas.api import AdjustmentBody, AutoTopUpBody, CreateOrganization, CreditLimitBody, GrantCreditsBody, RefundBody
from schemas.commands import AdjustCredits, AnyCommand, ConfigureAutoTopUp, GrantCredits, RefundCredits, SetCreditLimit
from schemas.events import CommandRejected, CreditsAdjusted, CreditsGranted, CreditsRefunded, Event
from schemas.moments import iso_or_none, utc_now

# One admin amount, in micros (1e9 credits): far above any real grant, and far enough below int64's
# 9.2e18 that balances summing many such amounts still fit the ledger's and ClickHouse's integers.
amount_micros_max = 10**15

# Ledger rejection codes as HTTP statuses; anything not listed is a 400.
_rejection_status = {
    "insufficient_credits": 402,
    "reference_not_found": 404,
    "hold_not_found": 404,
    "exists_with_different_amount": 409,
}


async def _ledger(core: GatewayCore, command: AnyCommand) -> Event:
    """Run an admin ledger command; a refusal becomes an error in the OpenAI envelope."""
    try:
        outcome = await core.ledger_command(command)
    except TimeoutError:
        raise ApiError(504, "The ledger did not answer in time; the command may still apply.", code="timeout") from None
    if isinstance(outcome, CommandRejected):
        raise ApiError(
            _rejection_status.get(outcome.code, 400), f"The ledger refused this: {outcome.code}.", code=outcome.code
        )
    return outcome


def _known_org(request: Request[Any, Any, Any], core: GatewayCore, org_id: str) -> None:
    authorize_admin(request)
    if org_id not in core.tenants.organizations:
        raise ApiError(404, f"No organization '{org_id}'.", code="organization_not_found")


def micros(amount: Decimal, name: str = "amount", allow_zero: bool = False, allow_negative: bool = False) -> int:
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
            value = parse_credits(amount)
    except MoneyFormatError as error:
        raise ApiError(400, f"{name} {error}.", code="invalid_amount", param=name) from None
    except DecimalException:
        raise ApiError(
            400,
            f"{name} {amount} has more than 6 decimal places: credits are exact to 0.000001 (one micro-credit).",
            code="invalid_amount",
            param=name,
        ) from None
    if (value == 0 and not allow_zero) or (value < 0 and not allow_negative):
        raise ApiError(400, f"{name} must be positive.", code="invalid_amount", param=name)
    return value


def _body_bytes_max(core: GatewayCore) -> int:
    return core.settings.request_body_bytes_max


@post("/v1/organizations", operation_id="createOrganization", opt={"scope": "platform"}, status_code=201)
async def create_organization(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    authorize_admin(request)
    body = await decode_body(request, CreateOrganization, _body_bytes_max(core))
    event = await core.create_organization(body.name, body.plan)
    return json_response(
        {
            "id": event.org_id,
            "object": "organization",
            "name": event.name,
            "plan": event.plan,
            "created_at": iso_or_none(event.occurred_at),
        },
        status_code=201,
    )


@post("/v1/organizations/{org_id:str}/credits", operation_id="grantCredits", opt={"scope": "platform"}, status_code=201)
async def grant_credits(request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]) -> Response[bytes]:
    _known_org(request, core, org_id)
    body = await decode_body(request, GrantCreditsBody, _body_bytes_max(core))
    grant_id = derived_id(request, "grant")
    expires_at = body.expires_at
    if expires_at is not None and expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    command = GrantCredits(
        command_id=grant_id,
        org_id=org_id,
        issued_at=utc_now(),
        grant_id=grant_id,
        amount_micros=micros(body.amount),
        kind=body.kind,
        expires_at=expires_at,
        priority=body.priority,
        reference=body.reference,
    )
    granted = await _ledger(core, command)
    assert isinstance(granted, CreditsGranted)
    return json_response(
        {
            "id": granted.grant_id,
            "object": "credit_grant",
            "org_id": org_id,
            "kind": granted.kind,
            "amount": micros_to_decimal(granted.amount_micros),
            "amount_micros": granted.amount_micros,
            "expires_at": iso_or_none(granted.expires_at),
            "priority": granted.priority,
            "created_at": iso_or_none(granted.occurred_at),
            "balance": balance_card(core, org_id),
        },
        status_code=201,
    )


@post(
    "/v1/organizations/{org_id:str}/credit-limit",
    operation_id="setCreditLimit",
    opt={"scope": "platform"},
    status_code=200,
)
async def set_credit_limit(request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]) -> Response[bytes]:
    _known_org(request, core, org_id)
    body = await decode_body(request, CreditLimitBody, _body_bytes_max(core))
    command = SetCreditLimit(
        command_id=derived_id(request, "cmd"),
        org_id=org_id,
        issued_at=utc_now(),
        limit_micros=micros(body.amount, allow_zero=True),
    )
    if command.limit_micros != core.balances.get(org_id).credit_limit_micros:
        await _ledger(core, command)
    return json_response({"object": "credit_limit", "org_id": org_id, "balance": balance_card(core, org_id)})


@post(
    "/v1/organizations/{org_id:str}/auto-topup",
    operation_id="configureAutoTopUp",
    opt={"scope": "platform"},
    status_code=200,
)
async def configure_auto_topup(request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]) -> Response[bytes]:
    _known_org(request, core, org_id)
    body = await decode_body(request, AutoTopUpBody, _body_bytes_max(core))
    command = ConfigureAutoTopUp(
        command_id=derived_id(request, "cmd"),
        org_id=org_id,
        issued_at=utc_now(),
        enabled=body.enabled,
        threshold_micros=micros(body.threshold, "threshold", allow_zero=True),
        amount_micros=micros(body.amount) if body.amount is not None else 0,
        target_micros=micros(body.target, "target") if body.target is not None else 0,
    )
    await _ledger(core, command)
    return json_response({"object": "auto_topup", "org_id": org_id, "balance": balance_card(core, org_id)})


@post("/v1/organizations/{org_id:str}/refunds", operation_id="refundCharge", opt={"scope": "platform"}, status_code=201)
async def refund_charge(request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]) -> Response[bytes]:
    _known_org(request, core, org_id)
    body = await decode_body(request, RefundBody, _body_bytes_max(core))
    refund_id = derived_id(request, "refund")
    command = RefundCredits(
        command_id=refund_id,
        org_id=org_id,
        issued_at=utc_now(),
        refund_id=refund_id,
        amount_micros=micros(body.amount),
        reason=body.reason,
        reference=body.reference,
    )
    refunded = await _ledger(core, command)
    assert isinstance(refunded, CreditsRefunded)
    return json_response(
        {
            "id": refund_id,
            "object": "refund",
            "org_id": org_id,
            "amount_micros": refunded.amount_micros,
            "reason": refunded.reason,
            "reference": refunded.reference,
            "created_at": iso_or_none(refunded.occurred_at),
            "balance": balance_card(core, org_id),
        },
        status_code=201,
    )


@post(
    "/v1/organizations/{org_id:str}/adjustments",
    operation_id="adjustCredits",
    opt={"scope": "platform"},
    status_code=201,
)
async def adjust_credits(request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]) -> Response[bytes]:
    _known_org(request, core, org_id)
    body = await decode_body(request, AdjustmentBody, _body_bytes_max(core))
    adjustment_id = derived_id(request, "adj")
    command = AdjustCredits(
        command_id=adjustment_id,
        org_id=org_id,
        issued_at=utc_now(),
        adjustment_id=adjustment_id,
        amount_micros=micros(body.amount, allow_negative=True),
        reason=body.reason,
        reference=body.reference,
    )
    adjusted = await _ledger(core, command)
    assert isinstance(adjusted, CreditsAdjusted)
    return json_response(
        {
            "id": adjustment_id,
            "object": "adjustment",
            "org_id": org_id,
            "amount_micros": adjusted.amount_micros,
            "reason": adjusted.reason,
            "reference": adjusted.reference,
            "created_at": iso_or_none(adjusted.occurred_at),
            "balance": balance_card(core, org_id),
        },
        status_code=201,
    )


@get("/v1/organizations/{org_id:str}/balance", operation_id="getOrganizationBalance", opt={"scope": "admin:read"})
async def organization_balance(request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]) -> Response[bytes]:
    authorize_admin(request, org_id, scope="admin:read")
    return json_response({"object": "balance", "org_id": org_id, **balance_card(core, org_id)})


@get("/v1/organizations/{org_id:str}/ledger", operation_id="listLedgerEntries", opt={"scope": "admin:read"})
async def ledger_entries(request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]) -> Response[bytes]:
    """The organization's double-entry postings, newest first; ``cursor`` pages back."""
    authorize_admin(request, org_id, scope="admin:read")
    if core.usage_store is None:
        raise ApiError(
            503, "Ledger history is not served by this gateway: set TOLLGATE_CLICKHOUSE_URL.", code="usage_unavailable"
        )
    limit = limit_param(request)
    cursor = request.query_params.get("cursor")
    try:
        rows = core.usage_store.postings(org_id, limit, cursor)
    except CursorError as error:
        raise ApiError(400, str(error), code="invalid_parameter", param="cursor") from None
    return json_response(
        {
            "object": "list",
            "data": [
                {
                    "event_id": r.event_id,
                    "posting": r.posting,
                    "created_at": iso_or_none(r.created_at),
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


route_handlers = [
    create_organization,
    grant_credits,
    set_credit_limit,
    configure_auto_topup,
    refund_charge,
    adjust_credits,
    organization_balance,
    ledger_entries,
]
