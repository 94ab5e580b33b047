"""``GET /v1/voices``: the voices of the speech models of the current price book (a model with a
character rate), in EmpirioLabs' shape; ``?model=`` keeps one model's. Listing them costs nothing."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get

from gateway.auth import authorize
from gateway.core import Core
from gateway.errors import ApiError
from gateway.http import json_response
from ledger.pricing import ModelPrice
from workers.voices import voices_of


def _speaks(price: ModelPrice) -> bool:
    return price.character_rate > 0  # what /v1/audio/speech serves (gateway/requests.py parse_speech)


@get("/v1/voices", operation_id="listVoices", opt={"scope": "user:read"})
async def list_voices(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    authorize(request, "user:read")
    book = core.prices.current
    models = [price for price in book.models.values() if _speaks(price)]
    asked = request.query_params.get("model")
    if asked is not None:
        price = book.model(asked)
        if price is None or not _speaks(price):
            raise ApiError(
                404,
                f"The model '{asked}' does not exist or is not a speech model; see GET /v1/models.",
                code="model_not_found",
                param="model",
            )
        models = [price]
    voices: dict[str, dict[str, Any]] = {}
    for price in models:
        for voice in voices_of(price.model):
            entry = voices.setdefault(
                voice.voice_id,
                {
                    "voice_id": voice.voice_id,
                    "name": voice.name,
                    "languages": list(voice.languages),
                    "gender": voice.gender,
                    "preview_url": "",  # no recorded previews: POST /v1/audio/speech speaks any text
                    "models": [],
                },
            )
            entry["models"].append(price.model)
    return json_response({"object": "list", "data": list(voices.values())})


route_handlers = [list_voices]
