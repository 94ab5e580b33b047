"""The catalog: models of the current price book with their prices, and price book versions (a
version is an event and never changes; it prices the holds placed after it)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath

from gateway.auth import authorize, authorize_admin
from gateway.core import Core
from gateway.errors import ApiError
from gateway.http import decode_body, json_response
from ledger.money import micros_to_decimal
from ledger.pricing import ModelPrice, PriceBook, price_problems


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
async def list_models(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    authorize(request, "user:read")
    book = core.prices.current
    return json_response({"object": "list", "data": [_model_card(p, book.version) for p in book.models.values()]})


@get("/v1/models/{model_id:path}", operation_id="retrieveModel", opt={"scope": "user:read"})
async def retrieve_model(request: Request[Any, Any, Any], core: Core, model_id: FromPath[str]) -> Response[bytes]:
    authorize(request, "user:read")
    book = core.prices.current
    price = book.model(model_id.lstrip("/"))
    if price is None:
        raise ApiError(
            404,
            f"The model '{model_id.lstrip('/')}' does not exist; see GET /v1/models.",
            code="model_not_found",
            param="model",
        )
    return json_response(_model_card(price, book.version))


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
    await core.publish_price_book(book)
    return json_response(
        {"object": "price_book", "version": book.version, "models": sorted(book.models)}, status_code=201
    )


route_handlers = [list_models, retrieve_model, list_price_books, publish_price_book]
