"""The catalog: models of the current price book with every rate (public, as the reference marks it;
``gateway/catalog.py`` shapes them), Casola's pricing and billing-rate pages, and price book versions
(a version is an event and never changes; it prices the holds placed after it)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath

from gateway.auth import authorize, authorize_admin, sends_credential
from gateway.catalog import model_card, openrouter_model, pricing_page
from gateway.core import Core
from gateway.errors import ApiError
from gateway.http import decode_body, json_response
from ledger.limits import kinds, organization_limits
from ledger.price_checks import price_book_problems
from ledger.pricing import PriceBook, price_problems
from ledger.resources import resource_price_problems


def _caller(request: Request[Any, Any, Any]) -> None:
    """The catalog is public; a caller who sends a credential is still checked (and counted)."""
    if sends_credential(request):
        authorize(request, "user:read")


@get("/v1/models", operation_id="listModels", opt={"scope": "user:read", "anonymous": True})
async def list_models(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """Every model of the current price book with every rate. ``?format=openrouter``: the OpenRouter
    provider listing of the text models."""
    _caller(request)
    book = core.prices.current
    shape = request.query_params.get("format")
    if shape not in (None, "openrouter"):
        raise ApiError(400, "format may only be 'openrouter'.", code="invalid_parameter", param="format")
    if shape == "openrouter":
        return json_response({"data": [openrouter_model(p) for p in book.models.values() if p.category == "chat"]})
    # Storage (file-storage) is priced in the book but is no model a request names: the files API bills it.
    cards = [model_card(p, book.version) for p in book.models.values() if p.category != "storage"]
    return json_response({"object": "list", "data": cards})


@get("/v1/models/{model_id:path}", operation_id="retrieveModel", opt={"scope": "user:read", "anonymous": True})
async def retrieve_model(request: Request[Any, Any, Any], core: Core, model_id: FromPath[str]) -> Response[bytes]:
    """One model with its parameters (EmpirioLabs' ModelDetail)."""
    _caller(request)
    book = core.prices.current
    price = book.model(model_id.lstrip("/"))
    if price is None or price.category == "storage":
        raise ApiError(
            404,
            f"The model '{model_id.lstrip('/')}' does not exist; see GET /v1/models.",
            code="model_not_found",
            param="model",
        )
    return json_response(model_card(price, book.version, detail=True))


@get("/api/pricing", operation_id="getPricing", opt={"scope": "public"})
async def public_pricing(core: Core) -> Response[bytes]:
    """Casola's public pricing: every model's rates and the rounding rule, without a key."""
    return json_response(pricing_page(core.prices.current))


@get(
    "/api/organizations/{org_id:str}/billing/rates",
    operation_id="getBillingRates",
    opt={"scope": "admin:read"},
)
async def billing_rates(request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]) -> Response[bytes]:
    """The rates the organization is billed at (the current book; a hold keeps the version it was
    placed under) and its plan's per-minute limits."""
    authorize_admin(request, org_id, scope="admin:read")
    org = core.tenants.organizations[org_id]
    limits = organization_limits(org.plan, core.tenants.limit_overrides.get(org_id, {}))
    return json_response(
        {
            **pricing_page(core.prices.current),
            "object": "billing_rates",
            "org_id": org_id,
            "plan": org.plan,
            "rate_limits": {"per_minute": {kind: limits[kind] for kind in kinds}},
        }
    )


@get("/v1/price-books", operation_id="listPriceBooks", opt={"scope": "platform"})
async def list_price_books(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    authorize_admin(request, scope="admin:read")
    prices = core.prices
    return json_response(
        {
            "object": "list",
            "current": prices.current.version,
            "versions": prices.versions(),
            "data": [msgspec.to_builtins(prices.current)],
        }
    )


@post("/v1/price-books", operation_id="publishPriceBook", opt={"scope": "platform"}, status_code=201)
async def publish_price_book(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """A new price book version. It prices holds placed from now on; in-flight ones keep theirs."""
    authorize_admin(request)
    book = await decode_body(request, PriceBook, core.settings.request_body_bytes_max)
    if core.prices.at_version(book.version) is not None:
        raise ApiError(
            409,
            f"Price book version '{book.version}' exists; versions never change.",
            code="price_version_exists",
            param="version",
        )
    for model_id, price in book.models.items():
        problems = ([] if model_id == price.model else ["the key must equal its model id"]) + price_problems(price)
        if problems:
            raise ApiError(
                400, f"Model '{model_id}': {'; '.join(problems)}.", code="invalid_price_book", param="models"
            )
    problems = resource_price_problems(book)
    if problems:
        raise ApiError(400, f"{'; '.join(problems[:5])}.", code="invalid_price_book", param="gpu_classes")
    problems = price_book_problems(book)
    if problems:
        # A book that is not monotonic in every unit would break "the hold bounds the capture".
        raise ApiError(
            400,
            f"The price book cannot price requests: {'; '.join(problems[:5])}.",
            code="invalid_price_book",
            param="models",
        )
    await core.publish_price_book(book)
    return json_response(
        {"object": "price_book", "version": book.version, "models": sorted(book.models)}, status_code=201
    )


route_handlers = [list_models, retrieve_model, public_pricing, billing_rates, list_price_books, publish_price_book]
