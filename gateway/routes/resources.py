"""GPU Cloud and hosted agents, as EmpirioLabs bills them (issue 18): time-metered resources and
monthly plans, decided by the ledger (``ledger/resources.py``).

- ``GET /v1/gpu/catalog`` and ``/v1/gpu/catalog/{slug}`` (public): the price book's GPU classes.
- ``/v1/gpu/instances``: a GPU instance starts a run when created (402 unless the balance covers its
  first interval), is charged by the second while it runs, interval by interval, and is stopped by the
  ledger when the balance cannot cover the next interval, or by its owner (``POST .../stop``, charged
  to the second; ``start`` runs it again; ``DELETE`` destroys it).
- ``/v1/hosted-agents``: a hosted agent is a monthly plan, charged when accepted (402 unless the
  balance covers it) and at each renewal; ``DELETE`` cancels the renewal.

The instances are simulated: nothing runs on a GPU, and there is no agent runtime; what is real is
what they cost. Every answer comes from the ledger's events, folded by this instance like balances.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, delete, get, patch, post
from litestar.params import FromPath

from gateway.auth import authorize
from gateway.core import Core, GatewayCore
from gateway.errors import ApiError
from gateway.hosted_agent_config import check_chat_model, record_configuration
from gateway.http import decode_body, derived_id, json_response
from ledger.money import format_credits, micros_to_decimal
from ledger.resources import Resource, Subscription, destroyed, ended_for_credits
from projections.hosted_agents import AgentConfig, configuration_card
from schemas.api import GpuDeployRequest, HostedAgentCreateRequest, RenameBody
from schemas.commands import AnyCommand, CancelPlan, StartResource, StopResource, SubscribePlan
from schemas.events import CommandRejected, Event, HostedAgentChanged, ResourceCharged
from schemas.ids import new_id
from schemas.moments import iso_or_none, utc_now
from schemas.resources import GpuClass, PlanPrice

# A hosted agent's account limit (EmpirioLabs' HostedAgentsConfig example): agents not destroyed.
hosted_agents_max = 3
hosted_agent_default_plan = "hosted-agent-basic"
hosted_agent_runtimes = (
    {"slug": "openclaw", "display_name": "OpenClaw"},
    {"slug": "hermes", "display_name": "Hermes Agent"},
)
hosted_agent_default_model = "qwen3-7-plus"

_rejection_status = {
    "insufficient_credits": 402,
    "resource_not_found": 404,
    "subscription_not_found": 404,
    "resource_running": 409,
    "resource_not_running": 409,
    "subscription_exists": 409,
    "subscription_ended": 409,
    "subscription_cancelled": 409,
}
_rejection_message = {
    "insufficient_credits": "The credit balance cannot cover this; add credits first. Nothing was charged.",
}


async def _ledger(core: GatewayCore, command: AnyCommand) -> Event:
    """Run a ledger command; a refusal becomes an error in the OpenAI envelope. What this instance's
    slice of the balance reserves goes back first (the same partition: the ledger reads it before the
    command), so that a start or a month is refused only for want of the organization's money."""
    if isinstance(command, (StartResource, SubscribePlan)):
        core.quota.return_for(command.org_id)
    try:
        outcome = await core.ledger_command(command)
    except TimeoutError:
        raise ApiError(504, "The ledger did not answer in time; the command may still apply.", code="timeout") from None
    if isinstance(outcome, CommandRejected):
        message = _rejection_message.get(outcome.code, f"The ledger refused this: {outcome.code}.")
        raise ApiError(_rejection_status.get(outcome.code, 400), message, code=outcome.code)
    return outcome


# --- GPU Cloud ---------------------------------------------------------------------------------------


def _gpu_type(gpu: GpuClass) -> dict[str, Any]:
    return {
        "slug": gpu.slug,
        "name": gpu.name,
        "vram_gb": gpu.vram_gb,
        "price_hourly": micros_to_decimal(gpu.hourly_micros),
        "price_hourly_micros": gpu.hourly_micros,
        "billing": "per_second",
        "available": gpu.available_count > 0,
        "available_count": gpu.available_count,
        "max_gpus": gpu.max_gpus,
        "regions": list(gpu.regions),
    }


@get("/v1/gpu/catalog", operation_id="listGpuTypes", opt={"scope": "public"})
async def list_gpu_types(core: Core) -> Response[bytes]:
    classes = core.prices.current.gpu_classes.values()
    return json_response({"object": "list", "data": [_gpu_type(gpu) for gpu in classes]})


@get("/v1/gpu/catalog/{slug:str}", operation_id="getGpuType", opt={"scope": "public"})
async def get_gpu_type(core: Core, slug: FromPath[str]) -> Response[bytes]:
    gpu = core.prices.current.gpu_classes.get(slug)
    if gpu is None:
        raise ApiError(404, f"No GPU type '{slug}'; see GET /v1/gpu/catalog.", code="gpu_not_found", param="slug")
    return json_response(_gpu_type(gpu))


def _instance_status(resource: Resource) -> str:
    if resource.running:
        return "running"
    return "destroyed" if resource.ended == destroyed else "stopped"


def _gpu_instance(core: GatewayCore, org_id: str, resource: Resource) -> dict[str, Any]:
    spendable = core.balances.get(org_id).spendable_micros
    book = core.prices.at_version(resource.price_version)
    gpu = book.gpu_classes.get(resource.resource_class) if book is not None else None
    hourly = resource.hourly_micros * resource.quantity
    error = "Stopped by the ledger: the credit balance could not cover the next interval."
    return {
        "id": resource.resource_id,
        "object": "gpu_instance",
        "status": _instance_status(resource),
        "gpu_slug": resource.resource_class,
        "gpu_display": gpu.name if gpu is not None else resource.resource_class,
        "num_gpus": resource.quantity,
        "image": resource.image or None,
        "label": resource.label or None,
        "disk_gb": resource.disk_gb or None,
        "price_hourly": micros_to_decimal(hourly),
        "price_hourly_micros": hourly,
        "connect_path": "/v1",
        "billed_amount": micros_to_decimal(resource.billed_micros),
        "billed_micros": resource.billed_micros,
        # What the interval being run holds (charged when it is over, or to the second at a stop).
        "reserved_micros": resource.reserved_micros,
        "billing_interval_s": resource.interval_s,
        "created_at": iso_or_none(resource.created_at),
        "started_at": iso_or_none(resource.run_started_at),
        "stopped_at": iso_or_none(resource.stopped_at),
        "stop_reason": resource.ended or None,
        # What the ledger warns of (ResourceBalanceLow): the balance covers the interval being run, not
        # the one after it; derived as the ledger derives it, so credits granted since clear it.
        "balance_low": resource.running and spendable < resource.interval_micros(resource.reserved_to_s),
        "error": error if resource.ended == ended_for_credits else None,
    }


def _resource(core: GatewayCore, org_id: str, instance_id: str) -> Resource:
    resource = core.balances.get(org_id).resources.get(instance_id)
    if resource is None or resource.kind != "gpu" or resource.ended == destroyed:
        raise ApiError(404, f"No GPU instance '{instance_id}'.", code="instance_not_found", param="instance_id")
    return resource


@get("/v1/gpu/instances", operation_id="listGpuInstances", opt={"scope": "user:read"})
async def list_gpu_instances(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    token = authorize(request, "user:read")
    resources = core.balances.get(token.org_id).resources.values()
    live = sorted((r for r in resources if r.kind == "gpu" and r.ended != destroyed), key=lambda r: r.created_at)
    return json_response({"object": "list", "instances": [_gpu_instance(core, token.org_id, r) for r in live]})


@post("/v1/gpu/instances", operation_id="deployGpuInstance", opt={"scope": "user:write"}, status_code=200)
async def deploy_gpu_instance(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    token = authorize(request, "user:write")
    body = await decode_body(request, GpuDeployRequest, core.settings.request_body_bytes_max)
    book = core.prices.current
    gpu = book.gpu_classes.get(body.gpu_slug)
    if gpu is None:
        raise ApiError(
            404, f"No GPU type '{body.gpu_slug}'; see GET /v1/gpu/catalog.", code="gpu_not_found", param="gpu_slug"
        )
    if body.num_gpus > gpu.max_gpus:
        raise ApiError(
            409,
            f"A {gpu.name} instance has at most {gpu.max_gpus} GPUs.",
            code="gpu_limit_exceeded",
            param="num_gpus",
        )
    if body.mode == "custom" and not body.image:
        raise ApiError(422, "mode custom needs an image.", code="invalid_parameter", param="image")
    instance_id = derived_id(request, "gpu")
    command = _start_gpu(
        core,
        token.org_id,
        token.token_id,
        instance_id,
        1,
        gpu.slug,
        body.num_gpus,
        book.version,
        body.name or "",
        body.image or body.hf_id or body.template_slug or "",
        body.disk_gb,
    )
    await _ledger(core, command)
    return json_response({"instance": _gpu_instance(core, token.org_id, _resource(core, token.org_id, instance_id))})


@get("/v1/gpu/instances/{instance_id:str}", operation_id="getGpuInstance", opt={"scope": "user:read"})
async def get_gpu_instance(request: Request[Any, Any, Any], core: Core, instance_id: FromPath[str]) -> Response[bytes]:
    token = authorize(request, "user:read")
    return json_response({"instance": _gpu_instance(core, token.org_id, _resource(core, token.org_id, instance_id))})


def _start_gpu(
    core: GatewayCore,
    org_id: str,
    token_id: str,
    instance_id: str,
    run: int,
    gpu_class: str,
    num_gpus: int,
    price_version: str,
    label: str,
    image: str,
    disk_gb: int,
) -> StartResource:
    """The ledger command that starts run ``run`` of a GPU instance (its first at deploy, a next at start)."""
    return StartResource(
        command_id=f"start:{instance_id}:{run}",
        org_id=org_id,
        issued_at=utc_now(),
        correlation_id=instance_id,
        resource_id=instance_id,
        token_id=token_id,
        kind="gpu",
        resource_class=gpu_class,
        quantity=num_gpus,
        interval_s=core.settings.resource_interval_s,
        price_version=price_version,
        label=label,
        image=image,
        disk_gb=disk_gb,
    )


async def _stop(core: GatewayCore, org_id: str, resource: Resource, reason: str) -> dict[str, str]:
    """Stop (or destroy) through the ledger; the header of what this stop charged (the seconds of the
    interval being run)."""
    command = StopResource(
        command_id=f"{reason}:{resource.resource_id}:{resource.run}",
        org_id=org_id,
        issued_at=utc_now(),
        correlation_id=resource.resource_id,
        resource_id=resource.resource_id,
        reason=reason,
    )
    outcome = await _ledger(core, command)
    if isinstance(outcome, ResourceCharged):
        return {"x-credits-used": format_credits(outcome.amount_micros)}
    return {}


@delete(
    "/v1/gpu/instances/{instance_id:str}",
    operation_id="destroyGpuInstance",
    opt={"scope": "user:write"},
    status_code=200,
)
async def destroy_gpu_instance(
    request: Request[Any, Any, Any], core: Core, instance_id: FromPath[str]
) -> Response[bytes]:
    """Destroy: a running instance is charged to the second and stops for good."""
    token = authorize(request, "user:write")
    resource = _resource(core, token.org_id, instance_id)
    charged = await _stop(core, token.org_id, resource, destroyed)
    return json_response({"instance": _gpu_instance(core, token.org_id, resource)}, headers=charged)


@post(
    "/v1/gpu/instances/{instance_id:str}/{action:str}",
    operation_id="actionGpuInstance",
    opt={"scope": "user:write"},
    status_code=200,
)
async def gpu_instance_action(
    request: Request[Any, Any, Any], core: Core, instance_id: FromPath[str], action: FromPath[str]
) -> Response[bytes]:
    """``stop`` (charged to the second; a stopped instance answers as it is), ``start`` (a new run,
    402 unless the balance covers its first interval) or ``refresh`` (the instance as it is)."""
    token = authorize(request, "user:write")
    if action not in ("stop", "start", "refresh"):
        raise ApiError(400, "action must be stop, start or refresh.", code="invalid_parameter", param="action")
    resource = _resource(core, token.org_id, instance_id)
    charged: dict[str, str] = {}
    if action == "stop" and resource.running:
        try:
            charged = await _stop(core, token.org_id, resource, "stopped")
        except ApiError as error:
            if error.code != "resource_not_running":
                raise  # else the ledger stopped it first (its balance ran out): answered as it is
    elif action == "start" and not resource.running:
        book = core.prices.current
        if resource.resource_class not in book.gpu_classes:
            raise ApiError(409, "This GPU type is no longer offered.", code="gpu_not_found", param="instance_id")
        command = _start_gpu(
            core,
            token.org_id,
            token.token_id,
            instance_id,
            resource.run + 1,
            resource.resource_class,
            resource.quantity,
            book.version,
            resource.label,
            resource.image,
            resource.disk_gb,
        )
        await _ledger(core, command)
    card = _gpu_instance(core, token.org_id, _resource(core, token.org_id, instance_id))
    return json_response({"instance": card}, headers=charged)


# --- hosted agents -----------------------------------------------------------------------------------


def _plan(plan: PlanPrice) -> dict[str, Any]:
    return {
        "slug": plan.slug,
        "display_name": plan.display_name,
        "description": plan.description,
        "monthly_price_usd": micros_to_decimal(plan.monthly_micros),
        "monthly_price_micros": plan.monthly_micros,
        "included_messages_monthly": plan.included_messages_monthly,
        "default_replica_min": plan.replica_min,
        "default_replica_max": plan.replica_max,
    }


def _agent_status(core: GatewayCore, subscription: Subscription) -> str:
    if subscription.cancel_reason == destroyed:
        return "destroyed"
    if subscription.ended:
        return "stopped"
    return core.tenants.agent_runtimes.get(subscription.subscription_id, "running")


def _billing_status(subscription: Subscription) -> str:
    if subscription.ended == ended_for_credits:
        return "past_due"
    if subscription.ended:
        return "ended"
    return "cancelled" if subscription.cancelled else "active"


def hosted_agent_card(core: GatewayCore, subscription: Subscription) -> dict[str, Any]:
    book = core.prices.at_version(subscription.price_version)
    plan = book.plans.get(subscription.plan_slug) if book is not None else None
    renews = not subscription.cancelled and not subscription.ended
    config = core.tenants.agent_configs.get(subscription.subscription_id) or AgentConfig()
    return {
        "id": subscription.subscription_id,
        "object": "hosted_agent",
        "agent_type": subscription.agent_type,
        "name": core.tenants.agent_names.get(subscription.subscription_id, subscription.name),
        "plan_slug": subscription.plan_slug,
        "status": _agent_status(core, subscription),
        "default_provider": agent_provider(config, subscription),
        "model": agent_model(config),
        "billing_status": _billing_status(subscription),
        "connect_path": f"/agents/{subscription.subscription_id}",
        "api_base_path": f"/agents/{subscription.subscription_id}/v1",
        "replica_min": plan.replica_min if plan is not None else 1,
        "replica_max": plan.replica_max if plan is not None else 1,
        "replica_current": 1 if _agent_status(core, subscription) == "running" else 0,
        "current_period_start": iso_or_none(subscription.period_start),
        "current_period_end": iso_or_none(subscription.period_end),
        "next_billing_at": iso_or_none(subscription.period_end) if renews else None,
        "billed_amount": micros_to_decimal(subscription.billed_micros),
        "billed_micros": subscription.billed_micros,
        "messages_used_current_period": core.balances.agent_messages_in_period(
            subscription.subscription_id, subscription.period_start
        ),
        "created_at": iso_or_none(subscription.anchor),
        **configuration_card(config),  # set through the sub-routes of gateway/routes/hosted_agents.py
    }


def agent_provider(config: AgentConfig, subscription: Subscription) -> str:
    """The provider the agent answers with: as set by ``/model``, else as it was created."""
    return config.provider or subscription.default_provider or "empirio"


def agent_model(config: AgentConfig) -> str:
    """The model the agent answers with: as set by ``/model`` (or at creation), else its runtime's default."""
    return config.model or hosted_agent_default_model


def _agents(core: GatewayCore, org_id: str) -> list[Subscription]:
    subscriptions = core.balances.get(org_id).subscriptions.values()
    live = (s for s in subscriptions if s.kind == "hosted_agent" and s.cancel_reason != destroyed)
    return sorted(live, key=lambda s: s.anchor)


def owned_agent(core: GatewayCore, org_id: str, instance_id: str) -> Subscription:
    found = core.balances.get(org_id).subscriptions.get(instance_id)
    if found is None or found.kind != "hosted_agent" or found.cancel_reason == destroyed:
        raise ApiError(404, f"No hosted agent '{instance_id}'.", code="instance_not_found", param="instance_id")
    return found


@get("/v1/hosted-agents/health", operation_id="hostedAgentsHealth", opt={"scope": "public"})
async def hosted_agents_health(core: Core) -> Response[bytes]:
    return json_response({"ok": True, "status": "ok", "plans": len(core.prices.current.plans)})


@get("/v1/hosted-agents/config", operation_id="getHostedAgentsConfig", opt={"scope": "user:read"})
async def hosted_agents_config(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    token = authorize(request, "user:read")
    wallet = core.balances.get(token.org_id)
    agents = [s for s in wallet.subscriptions.values() if s.kind == "hosted_agent"]
    runtimes = [
        {
            **runtime,
            "default_plan_slug": hosted_agent_default_plan,
            "default_model": hosted_agent_default_model,
            "default_provider": "empirio",
        }
        for runtime in hosted_agent_runtimes
    ]
    return json_response(
        {
            "plans": [_plan(plan) for plan in core.prices.current.plans.values()],
            "runtimes": runtimes,
            "limit": hosted_agents_max,
            "deployed": sum(1 for s in agents if not s.ended and s.cancel_reason != destroyed),
            "balance": micros_to_decimal(wallet.balance_micros - wallet.holds_micros),
            "agentSpend": micros_to_decimal(sum(s.billed_micros for s in agents)),
        }
    )


@get("/v1/hosted-agents/instances", operation_id="listHostedAgentInstances", opt={"scope": "user:read"})
async def list_hosted_agents(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    token = authorize(request, "user:read")
    return json_response({"instances": [hosted_agent_card(core, s) for s in _agents(core, token.org_id)]})


@post(
    "/v1/hosted-agents/instances",
    operation_id="createHostedAgentInstance",
    opt={"scope": "user:write"},
    status_code=201,
)
async def create_hosted_agent(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """The plan is charged from the credit balance when the agent is accepted (402 otherwise)."""
    token = authorize(request, "user:write")
    body = await decode_body(request, HostedAgentCreateRequest, core.settings.request_body_bytes_max)
    book = core.prices.current
    slug = body.plan_slug or hosted_agent_default_plan
    if slug not in book.plans:
        raise ApiError(
            404,
            f"No hosted-agent plan '{slug}'; see GET /v1/hosted-agents/config.",
            code="plan_not_found",
            param="plan_slug",
        )
    deployed = [s for s in _agents(core, token.org_id) if not s.ended]
    if len(deployed) >= hosted_agents_max:
        raise ApiError(
            403,
            f"The hosted-agent limit of this account is {hosted_agents_max}; destroy one first.",
            code="hosted_agent_limit_reached",
        )
    if body.default_model and body.default_provider == "empirio":
        check_chat_model(core, body.default_model, "default_model")  # the model its messages are metered by
    instance_id = derived_id(request, "agent")
    runtime = next(r["display_name"] for r in hosted_agent_runtimes if r["slug"] == body.agent_type)
    command = SubscribePlan(
        command_id=f"subscribe:{instance_id}",
        org_id=token.org_id,
        issued_at=utc_now(),
        correlation_id=instance_id,
        subscription_id=instance_id,
        token_id=token.token_id,
        kind="hosted_agent",
        plan_slug=slug,
        price_version=book.version,
        name=body.name or runtime,
        agent_type=body.agent_type,
        default_provider=body.default_provider,
    )
    await _ledger(core, command)
    if body.default_model:
        model = {"provider": body.default_provider, "model": body.default_model, "custom_provider": None}
        await record_configuration(core, token.org_id, token.token_id, instance_id, "model", "", model)
    subscription = owned_agent(core, token.org_id, instance_id)
    charged = {"x-credits-used": format_credits(subscription.billed_micros)}  # the first month, charged now
    return json_response({"ok": True, "instance": hosted_agent_card(core, subscription)}, 201, headers=charged)


@get("/v1/hosted-agents/instances/{instance_id:str}", operation_id="getHostedAgentInstance", opt={"scope": "user:read"})
async def get_hosted_agent(request: Request[Any, Any, Any], core: Core, instance_id: FromPath[str]) -> Response[bytes]:
    token = authorize(request, "user:read")
    return json_response({"instance": hosted_agent_card(core, owned_agent(core, token.org_id, instance_id))})


@delete(
    "/v1/hosted-agents/instances/{instance_id:str}",
    operation_id="destroyHostedAgentInstance",
    opt={"scope": "user:write"},
    status_code=200,
)
async def destroy_hosted_agent(
    request: Request[Any, Any, Any], core: Core, instance_id: FromPath[str]
) -> Response[bytes]:
    """Destroy: the plan is not renewed (the month paid for is not refunded)."""
    token = authorize(request, "user:write")
    subscription = owned_agent(core, token.org_id, instance_id)
    if not subscription.ended:
        command = CancelPlan(
            command_id=f"cancel:{instance_id}",
            org_id=token.org_id,
            issued_at=utc_now(),
            correlation_id=instance_id,
            subscription_id=instance_id,
            reason=destroyed,
        )
        await _ledger(core, command)
    return json_response({"ok": True, "instance": hosted_agent_card(core, subscription)})


@patch(
    "/v1/hosted-agents/instances/{instance_id:str}",
    operation_id="renameHostedAgentInstance",
    opt={"scope": "user:write"},
    status_code=200,
)
async def rename_hosted_agent(
    request: Request[Any, Any, Any], core: Core, instance_id: FromPath[str]
) -> Response[bytes]:
    token = authorize(request, "user:write")
    body = await decode_body(request, RenameBody, core.settings.request_body_bytes_max)
    subscription = owned_agent(core, token.org_id, instance_id)
    await _record_change(core, token.org_id, instance_id, name=body.name)
    return json_response({"ok": True, "instance": hosted_agent_card(core, subscription)})


async def _record_change(core: GatewayCore, org_id: str, instance_id: str, name: str = "", runtime: str = "") -> None:
    event = HostedAgentChanged(
        event_id=new_id("evt"),
        occurred_at=utc_now(),
        org_id=org_id,
        correlation_id=instance_id,
        instance_id=instance_id,
        name=name,
        runtime=runtime,
    )
    await core.record_tenant_event(event)


@post(
    "/v1/hosted-agents/instances/{instance_id:str}/{action:str}",
    operation_id="actionHostedAgentInstance",
    opt={"scope": "user:write"},
    status_code=200,
)
async def hosted_agent_action(
    request: Request[Any, Any, Any], core: Core, instance_id: FromPath[str], action: FromPath[str]
) -> Response[bytes]:
    """``start``, ``stop``, ``restart`` the agent's (simulated) runtime, or ``refresh``: its plan bills
    monthly whatever the runtime does (a stopped agent is still paid for until its plan is cancelled)."""
    token = authorize(request, "user:write")
    runtimes = {"start": "running", "restart": "running", "stop": "stopped", "refresh": ""}
    if action not in runtimes:
        raise ApiError(400, "action must be start, stop, restart or refresh.", code="invalid_parameter", param="action")
    subscription = owned_agent(core, token.org_id, instance_id)
    if runtimes[action] and subscription.ended:
        raise ApiError(409, "The agent's plan has ended; create a new agent.", code="plan_ended", param="instance_id")
    if runtimes[action]:
        await _record_change(core, token.org_id, instance_id, runtime=runtimes[action])
    return json_response({"ok": True, "instance": hosted_agent_card(core, subscription)})


route_handlers = [
    list_gpu_types,
    get_gpu_type,
    list_gpu_instances,
    deploy_gpu_instance,
    get_gpu_instance,
    destroy_gpu_instance,
    gpu_instance_action,
    hosted_agents_health,
    hosted_agents_config,
    list_hosted_agents,
    create_hosted_agent,
    get_hosted_agent,
    destroy_hosted_agent,
    rename_hosted_agent,
    hosted_agent_action,
]
