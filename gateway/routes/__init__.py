"""The gateway's routes, one module per context. Each handler declares its scope (and rate limit,
and whether it is idempotent) in its ``opt``; ``gateway/auth.py`` and ``gateway/idempotency.py``
enforce those for every route, so no handler can forget them."""

from litestar.handlers import HTTPRouteHandler

from gateway.routes import (
    agents,
    audit,
    batches,
    casola,
    casola_agents,
    credits,
    dashboard,
    fal,
    files,
    generation,
    health,
    jobs,
    media,
    messages,
    models,
    resources,
    responses,
    tenants,
    texttools,
    usage,
    voices,
)

route_handlers: list[HTTPRouteHandler] = [
    *credits.route_handlers,
    *models.route_handlers,
    *generation.route_handlers,
    *responses.route_handlers,
    *messages.route_handlers,
    *jobs.route_handlers,
    *usage.route_handlers,
    *tenants.route_handlers,
    *audit.route_handlers,
    *health.route_handlers,
    *dashboard.route_handlers,
    *voices.route_handlers,
    *resources.route_handlers,
    *fal.route_handlers,
    *casola.route_handlers,
    *files.route_handlers,
    *batches.route_handlers,
    *media.route_handlers,
    *texttools.route_handlers,
    *agents.route_handlers,
    *casola_agents.route_handlers,
]
