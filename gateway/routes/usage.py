"""Usage and finance reporting over ClickHouse: the account-usage history, admin usage views by
organization and token (from the rollups), and statements (JSON or CSV)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import msgspec
from litestar import Request, Response, get
from litestar.params import FromPath

from gateway.auth import authorize, authorize_admin
from gateway.bodies import balance_card
from gateway.core import Core, GatewayCore
from gateway.errors import ApiError
from gateway.http import json_response, limit_param, moment_param, window_params
from gateway.results import Charge, usage_of
from ledger.money import micros_to_decimal
from ledger.pricing import unit_names, usd_per_unit
from projections.role import plan_model
from projections.statements import load_statement, statement_csv, statement_days_max, statement_json
from projections.usage import (
    CursorError,
    Granularity,
    GroupBy,
    RollupRow,
    UsageFilter,
    UsageRow,
    UsageStore,
    parse_usage_cursor,
    usage_cursor,
)
from schemas.moments import iso_or_none
from schemas.units import Units, tools

sources = ("api", "playground", "gpu_cloud", "hosted_agents")
rollup_rows_max = 1000  # buckets one admin usage answer returns; narrow the window for more


def _store(core: GatewayCore) -> UsageStore:
    store = core.usage_store
    if store is None:
        raise ApiError(
            503, "Usage history is not served by this gateway: set TOLLGATE_CLICKHOUSE_URL.", code="usage_unavailable"
        )
    return store


def _choice(request: Request[Any, Any, Any], name: str, allowed: tuple[str, ...] | None) -> str | None:
    value = request.query_params.get(name)
    if value is not None and allowed is not None and value not in allowed:
        raise ApiError(400, f"{name} must be one of {', '.join(allowed)}.", code="invalid_parameter", param=name)
    return value


def _before(request: Request[Any, Any, Any]) -> tuple[datetime | None, tuple[datetime, str] | None]:
    """``before`` is a date-time, or a ``next_cursor`` from a previous page (also accepted as ``cursor``)."""
    cursor = request.query_params.get("cursor")
    raw = request.query_params.get("before")
    if raw is not None and raw.startswith("cur_"):
        cursor, raw = raw, None
    if cursor is not None:
        try:
            return None, parse_usage_cursor(cursor)
        except CursorError as error:
            raise ApiError(400, f"{error}; pass next_cursor as is.", code="invalid_parameter", param="before") from None
    return (moment_param(request, "before") if raw is not None else None), None


def _units(row: UsageRow) -> Units:
    """The units a usage row recorded (the batch flag from the discount that applied)."""
    counts = {name: getattr(row, name) for name in unit_names}
    return Units(**counts, variant=row.variant, batch=row.discount_percent > 0)


def _time_metered(row: UsageRow) -> bool:
    """A GPU interval or a plan month, priced by the ledger at its rate (not by units). A hosted agent's
    message is a chat completion of its model, with source ``hosted_agents`` too."""
    return row.source == "gpu_cloud" or (row.source == "hosted_agents" and row.model.startswith(plan_model("")))


def _worker_usage(core: GatewayCore, row: UsageRow, units: Units) -> dict[str, Any] | None:
    """The usage object the request's answer carried (``gateway/results.usage_of``), rebuilt from
    its row: every unit with its count, the tier, the charge. None for a refusal (nothing ran)."""
    if row.status != "success" or _time_metered(row):
        return None  # nothing ran as a request: a time-metered charge (see metadata)
    book = core.prices.at_version(row.price_version)
    price = book.model(row.model) if book is not None else None
    charge = Charge(
        model=row.model,
        units=units,
        amount_micros=row.cost_micros,
        priced_micros=row.priced_micros,
        price_version=row.price_version,
        occurred_at=row.created_at,
    )
    return usage_of(row.endpoint, units, charge, price)


def _time_metered_metadata(core: GatewayCore, row: UsageRow) -> dict[str, Any]:
    """What a GPU interval or a plan month row adds to its metadata, as the reference shows GPU rows
    (``gpu_slug``, ``gpu_display``, ``num_gpus``, ``seconds``, ``price_hourly``)."""
    book = core.prices.at_version(row.price_version)
    if row.source == "gpu_cloud":
        slug = row.model.removeprefix("gpu-cloud:")
        gpu = book.gpu_classes.get(slug) if book is not None else None
        gpus, _, seconds = row.variant.removesuffix("s").partition("x")  # time_metered_row's "<GPUs>x<seconds>s"
        return {
            "category": "gpu_cloud",
            "gpu_slug": slug,
            "gpu_display": gpu.name if gpu is not None else slug,
            "num_gpus": int(gpus) if gpus.isdigit() else 1,
            "seconds": int(seconds) if seconds.isdigit() else 0,
            "price_hourly": micros_to_decimal(gpu.hourly_micros) if gpu is not None else None,
            "gpu_instance_id": row.request_id,
        }
    if row.source == "hosted_agents":
        # A plan month names its agent by request id (rows before migration 8 have no source_id); a
        # message by source_id.
        instance_id = row.source_id or row.request_id
        agent = core.balances.get(row.org_id).subscriptions.get(instance_id)
        metadata = {
            "category": "agents",  # the reference's category of hosted-agent events
            "agent_type": agent.agent_type if agent is not None else None,
            "agent_name": core.tenants.agent_names.get(instance_id, agent.name) if agent is not None else None,
            "agent_instance_id": instance_id,
        }
        if _time_metered(row):
            metadata["plan_slug"] = row.model.removeprefix(plan_model(""))
        return metadata
    if row.source == "playground" and row.source_id:
        return {"conversation_id": row.source_id}
    return {}


def _usage_event(core: GatewayCore, row: UsageRow) -> dict[str, Any]:
    """One event in the reference's ``UsageEvent`` shape (amounts in credits; micros beside them)."""
    units = _units(row)
    if _time_metered(row):
        units = Units()  # priced by the ledger at its rate; ``variant`` is what the charge covered
    return {
        "id": row.event_id,
        "object": "usage_event",
        "created_at": iso_or_none(row.created_at),
        "source": row.source,
        "model": row.model,
        "endpoint": row.endpoint,
        "status": row.status,
        "status_code": row.status_code,
        "error": row.error or None,
        "request_id": row.request_id,
        "job_id": row.job_id or None,
        "latency_ms": row.latency_ms,
        "tokens": _tokens(units),
        "cost": {"amount": micros_to_decimal(row.cost_micros), "amount_micros": row.cost_micros, "currency": "USD"},
        # Media links are made when a result is answered (or polled) and expire within the hour
        # (gateway/media_urls.py); a usage event outlives them, so it lists none.
        "output_urls": [],
        "metadata": {
            "source": row.source,
            "token_id": row.token_id,
            "price_version": row.price_version,
            "pricing_tier_label": row.pricing_tier or None,
            "worker_usage": _worker_usage(core, row, units),
            "tool_breakdown": [
                {
                    "tool": tool,
                    "invocations": units.tool_calls(tool),
                    "rate_usd": usd_per_unit(getattr(row, f"{tool}_calls_rate")),
                }
                for tool in tools
                if units.tool_calls(tool)
            ],
            **_time_metered_metadata(core, row),
        },
    }


def _tokens(units: Units) -> dict[str, int]:
    """``tokens`` of an event: ``input`` is every prompt token but cache reads and writes (text,
    image and audio), ``output`` every generated one (reasoning included)."""
    return {
        "input": units.input_tokens + units.image_input_tokens + units.audio_input_tokens,
        "output": units.completion_tokens,
        "cache_read": units.cached_input_tokens,
        "cache_write": units.cache_write_tokens,
        "total": units.total_tokens,
    }


def _summary(
    requests: int,
    cost_micros: int,
    tokens: dict[str, int],
    errors: int,
    avg_latency_ms: int | None,
) -> dict[str, Any]:
    return {
        "requests": requests,
        "total_cost": micros_to_decimal(cost_micros),
        "total_cost_micros": cost_micros,
        "total_tokens": tokens["total"],
        "input_tokens": tokens["input"],
        "output_tokens": tokens["output"],
        "cache_read_tokens": tokens["cache_read"],
        "cache_write_tokens": tokens["cache_write"],
        "errors": errors,
        "avg_latency_ms": avg_latency_ms,
    }


def _page_summary(page: list[UsageRow]) -> dict[str, Any]:
    """The reference's ``summary``: the returned page of events only."""
    tokens = {"input": 0, "output": 0, "cache_read": 0, "cache_write": 0, "total": 0}
    for row in page:
        for name, count in _tokens(_units(row)).items():
            tokens[name] += count
    latency = round(sum(row.latency_ms for row in page) / len(page)) if page else None
    errors = sum(1 for row in page if row.status != "success")
    return _summary(len(page), sum(row.cost_micros for row in page), tokens, errors, latency)


@get("/v1/account/usage", operation_id="retrieveAccountUsage", opt={"scope": "user:read"})
async def account_usage(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """Balance, spend for the window, one page of events newest first and the page's summary (as
    the reference says), and ``window_summary``: the same counts over the whole window."""
    token = authorize(request, "user:read")
    start, end = window_params(request)
    before, cursor = _before(request)
    selection = UsageFilter(
        org_id=token.org_id,
        limit=limit_param(request) + 1,  # one more tells whether there is a next page
        before=before,
        after_cursor=cursor,
        start=start,
        end=end,
        source=_choice(request, "source", sources),
        model=_choice(request, "model", None),
        status=_choice(request, "status", ("success", "error")),
    )
    store = _store(core)
    rows = store.events(selection)
    page, has_more = rows[: selection.limit - 1], len(rows) >= selection.limit
    # The window's totals, whatever page and labels the events are filtered to.
    window = store.summary(
        msgspec.structs.replace(selection, before=None, after_cursor=None, source=None, model=None, status=None)
    )
    by_source = window.cost_micros_by_source
    window_tokens = _tokens(
        Units(
            input_tokens=window.input_tokens,
            cached_input_tokens=window.cached_input_tokens,
            cache_write_tokens=window.cache_write_tokens,
            image_input_tokens=window.image_input_tokens,
            audio_input_tokens=window.audio_input_tokens,
            output_tokens=window.output_tokens,
            reasoning_tokens=window.reasoning_tokens,
        )
    )
    return json_response(
        {
            "object": "account_usage",
            "balance": balance_card(core, token.org_id),
            "summary": _page_summary(page),
            "window_summary": _summary(
                window.requests, window.cost_micros, window_tokens, window.errors, window.avg_latency_ms
            ),
            "spend": {
                "currency": "USD",
                "total": micros_to_decimal(window.cost_micros),
                "total_micros": window.cost_micros,
                "model": micros_to_decimal(by_source.get("api", 0) + by_source.get("playground", 0)),
                "gpu_cloud": micros_to_decimal(by_source.get("gpu_cloud", 0)),
                "hosted_agents": micros_to_decimal(by_source.get("hosted_agents", 0)),
                "from": iso_or_none(start),
                "to": iso_or_none(end),
            },
            "data": [_usage_event(core, row) for row in page],
            "has_more": has_more,
            "next_cursor": usage_cursor(page[-1]) if has_more else None,
        }
    )


def _rollup_json(row: RollupRow, key_name: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "period_start": iso_or_none(row.period_start.replace(tzinfo=UTC)) if row.period_start else None
    }
    if key_name is not None:
        body[key_name] = row.key
    body.update(
        requests=row.requests,
        errors=row.errors,
        input_tokens=row.input_tokens,
        cached_input_tokens=row.cached_input_tokens,
        output_tokens=row.output_tokens,
        images=row.images,
        audio_seconds=row.audio_seconds,
        video_seconds=row.video_seconds,
        characters=row.characters,
        calls=row.calls,
        cost=micros_to_decimal(row.cost_micros),
        cost_micros=row.cost_micros,
        avg_latency_ms=round(row.latency_ms_sum / row.requests) if row.requests else 0,
    )
    return body


def rollup_answer(
    request: Request[Any, Any, Any],
    core: GatewayCore,
    org_id: str,
    group_by: GroupBy,
    by_period: bool,
    object_name: str,
) -> Response[bytes]:
    authorize_admin(request, org_id, scope="admin:read")
    granularity = cast(Granularity, _choice(request, "granularity", ("hour", "day")) or "day")
    start, end = window_params(request)
    rows = _store(core).rollup(org_id, granularity, group_by, start, end, rollup_rows_max + 1, by_period)
    key_name = {"model": "model", "token": "token_id", "none": None}[group_by]
    return json_response(
        {
            "object": object_name,
            "org_id": org_id,
            "granularity": granularity if by_period else None,
            "group_by": group_by,
            "from": iso_or_none(start),
            "to": iso_or_none(end),
            "data": [_rollup_json(row, key_name) for row in rows[:rollup_rows_max]],
            "has_more": len(rows) > rollup_rows_max,
            "total_cost_micros": sum(row.cost_micros for row in rows[:rollup_rows_max]),
            "total_requests": sum(row.requests for row in rows[:rollup_rows_max]),
        }
    )


@get("/v1/organizations/{org_id:str}/usage", operation_id="listOrganizationUsage", opt={"scope": "admin:read"})
async def organization_usage(request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]) -> Response[bytes]:
    """Usage per hour or day (``granularity``), per ``group_by`` model (default), token or none, newest
    bucket first, from the rollup tables. ``from``/``to`` select whole buckets."""
    return organization_usage_answer(request, core, org_id)


def organization_usage_answer(request: Request[Any, Any, Any], core: GatewayCore, org_id: str) -> Response[bytes]:
    """The organization's usage by period (also Casola's ``/api/organizations/{id}/usage``)."""
    group_by = cast(GroupBy, _choice(request, "group_by", ("model", "token", "none")) or "model")
    return rollup_answer(request, core, org_id, group_by, by_period=True, object_name="organization_usage")


def usage_by_token_answer(request: Request[Any, Any, Any], core: GatewayCore, org_id: str) -> Response[bytes]:
    """The organization's usage per token (also Casola's ``/api/organizations/{id}/usage/by-token``)."""
    return rollup_answer(request, core, org_id, "token", by_period=False, object_name="organization_usage_by_token")


@get(
    "/v1/organizations/{org_id:str}/usage/by-token",
    operation_id="listOrganizationUsageByToken",
    opt={"scope": "admin:read"},
)
async def organization_usage_by_token(
    request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]
) -> Response[bytes]:
    """Totals per API token over the window, from the daily (default) or hourly rollup."""
    return usage_by_token_answer(request, core, org_id)


def _period(request: Request[Any, Any, Any]) -> tuple[datetime, datetime]:
    start, end = moment_param(request, "from"), moment_param(request, "to")
    if start is None or end is None:
        raise ApiError(
            400,
            "A statement needs from and to, e.g. from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z.",
            code="invalid_parameter",
            param="from" if start is None else "to",
        )
    if not start < end or (end - start).days > statement_days_max:
        raise ApiError(
            400,
            f"from must be before to, at most {statement_days_max} days apart.",
            code="invalid_parameter",
            param="to",
        )
    return start, end


@get("/v1/organizations/{org_id:str}/statements", operation_id="retrieveStatement", opt={"scope": "admin:read"})
async def statement(request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]) -> Response[bytes]:
    """Line items for [from, to) that add up exactly to what the ledger charged, as JSON or CSV."""
    authorize_admin(request, org_id, scope="admin:read")
    output = _choice(request, "format", ("json", "csv")) or "json"
    start, end = _period(request)
    built = load_statement(_store(core), org_id, start, end)
    if output == "csv":
        name = f"statement-{org_id}-{start:%Y%m%d}-{end:%Y%m%d}.csv"
        return Response(
            content=statement_csv(built).encode(),
            media_type="text/csv",
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )
    return json_response(statement_json(built))


route_handlers = [account_usage, organization_usage, organization_usage_by_token, statement]
