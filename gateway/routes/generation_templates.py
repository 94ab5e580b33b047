"""EmpirioLabs' generation templates: ``GET /v1/templates`` (every modality), ``/v1/images/templates``
and ``/v1/videos/templates`` (one modality by default), each with its ``/{slug}``; the list as
``{object: "list", template_count, data: [GenerationTemplate]}``. The catalog and how a generation's
``template`` field applies one are in ``gateway/generation_templates.py``."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.params import FromPath

from gateway import generation_templates as templates
from gateway.auth import authorize
from gateway.core import Core
from gateway.errors import ApiError
from gateway.http import json_response

modalities: tuple[templates.Modality, ...] = ("image", "video")


def _choice(request: Request[Any, Any, Any], name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query_params.get(name)
    if value is not None and value not in allowed:
        raise ApiError(400, f"{name} must be one of {', '.join(allowed)}.", code="invalid_parameter", param=name)
    return value


def _modality(request: Request[Any, Any, Any], default: templates.Modality | None) -> templates.Modality | None:
    given = _choice(request, "modality", modalities)
    alias = _choice(request, "type", modalities)
    if given is not None and alias is not None and given != alias:
        raise ApiError(400, "modality and type (its alias) disagree.", code="invalid_parameter", param="type")
    chosen = given or alias
    return default if chosen is None else ("image" if chosen == "image" else "video")


def _listing(request: Request[Any, Any, Any], modality: templates.Modality | None) -> Response[bytes]:
    authorize(request, "user:read")
    category = _choice(request, "category", templates.categories)
    featured = _choice(request, "featured", ("true", "false"))
    found = templates.listed(
        modality,
        category,
        request.query_params.get("model"),
        None if featured is None else featured == "true",
    )
    data = [templates.template_json(template) for template in found]
    return json_response({"object": "list", "template_count": len(data), "data": data})


def _one(request: Request[Any, Any, Any], slug: str, modality: templates.Modality | None) -> Response[bytes]:
    authorize(request, "user:read")
    template = templates.find(slug, modality)
    if template is None:
        kind = f"{modality} template" if modality else "template"
        raise ApiError(404, f"No {kind} '{slug}'.", code="template_not_found", param="slug")
    return json_response(templates.template_json(template))


@get("/v1/templates", operation_id="listGenerationTemplates", opt={"scope": "user:read"})
async def list_templates(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    return _listing(request, _modality(request, None))


@get("/v1/templates/{slug:str}", operation_id="getGenerationTemplate", opt={"scope": "user:read"})
async def get_template(request: Request[Any, Any, Any], core: Core, slug: FromPath[str]) -> Response[bytes]:
    return _one(request, slug, None)


@get("/v1/images/templates", operation_id="listImageTemplates", opt={"scope": "user:read"})
async def list_image_templates(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    return _listing(request, "image")


@get("/v1/images/templates/{slug:str}", operation_id="getImageTemplate", opt={"scope": "user:read"})
async def get_image_template(request: Request[Any, Any, Any], core: Core, slug: FromPath[str]) -> Response[bytes]:
    return _one(request, slug, "image")


@get("/v1/videos/templates", operation_id="listVideoTemplates", opt={"scope": "user:read"})
async def list_video_templates(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    return _listing(request, _modality(request, "video"))


@get("/v1/videos/templates/{slug:str}", operation_id="getVideoTemplate", opt={"scope": "user:read"})
async def get_video_template(request: Request[Any, Any, Any], core: Core, slug: FromPath[str]) -> Response[bytes]:
    return _one(request, slug, "video")


route_handlers = [list_templates, get_template, list_image_templates, get_image_template]
route_handlers += [list_video_templates, get_video_template]
