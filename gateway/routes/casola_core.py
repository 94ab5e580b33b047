"""The rest of Casola's core API table (``/api/...``) that Tollgate serves, beside ``casola.py``:

- ``GET /api/voice/models``: every speech model of the price book with its voices.
- ``GET /api/search?q``: the catalog searched: models (id, owner, description, kind, tasks, Fal
  slugs) and generation templates, best match first.
- ``POST /api/prompt-rewrite``: a prompt rewritten for an image, video or text model by a chat model:
  a metered chat completion (held, charged, a usage row), answered with its ``usage`` and charge.
- ``/api/organizations/{id}/content-filter-policy``: GET (``admin:read``), POST, PATCH, DELETE
  (``admin:write``): the organization's policy action (``block``, ``flag``, ``log``, ``off``), stored
  as ``ContentFilterPolicySet`` events. Creating and changing one is for enterprise organizations
  (Casola: "enterprise only"); ``off`` applies only while the organization is enterprise. Tollgate
  runs no content classifier: the policy is recorded and answered (``enforced: false``), and decides
  nothing about requests.

Errors in the OpenAI-style envelope Casola documents (``{"error": {"code", "message", "type"}}``).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, patch, post
from litestar.params import FromPath

from gateway import generation_templates
from gateway.auth import authorize, authorize_admin, principal
from gateway.catalog import model_card
from gateway.core import Core, GatewayCore
from gateway.errors import ApiError
from gateway.http import decode_body, json_response, limit_param, request_id
from gateway.requests import CHAT, parse_chat
from gateway.results import charge_headers, usage_of
from gateway.routes.generation import run_answered
from ledger.pricing import kind_of
from projections.content_filters import ContentFilterPolicy, actions
from schemas.api import PolicyBody, PromptRewriteRequest
from schemas.events import ContentFilterPolicySet
from schemas.ids import new_id
from schemas.moments import iso_or_none, utc_now
from workers.voices import voices_of

# --- voice models ---


@get("/api/voice/models", operation_id="listCasolaVoiceModels", opt={"scope": "user:read"})
async def voice_models(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """``{"models": [{model_id, owned_by, voices: [{voice_id, name, languages, gender}]}]}``: the speech
    models of the current price book (priced per character) and the voices each speaks."""
    authorize(request, "user:read")
    models = [
        {
            "model_id": price.model,
            "owned_by": price.owned_by,
            "voices": [
                {"voice_id": v.voice_id, "name": v.name, "languages": list(v.languages), "gender": v.gender}
                for v in voices_of(price.model)
            ],
        }
        for price in core.prices.current.models.values()
        if price.character_rate > 0
    ]
    return json_response({"models": models})


# --- search ---

query_chars_max = 200
search_results_max = 50
_term = re.compile(r"[a-z0-9]+")


def _score(terms: list[str], title: str, tags: str, text: str) -> int:
    """Three for each query term in the title (the id), two in the tags, one in the description, ten
    more when the title is the query itself; a term found nowhere drops the result (every term must
    match)."""
    total = 10 if title == " ".join(terms) else 0
    for term in terms:
        found = 3 * (term in title) + 2 * (term in tags) + (term in text)
        if not found:
            return 0
        total += found
    return total


def _search_results(core: GatewayCore, terms: list[str], kind: str | None) -> list[tuple[int, dict[str, Any]]]:
    book = core.prices.current
    found: list[tuple[int, dict[str, Any]]] = []
    if kind in (None, "model"):
        for price in book.models.values():
            if price.category == "storage":
                continue
            card = model_card(price, book.version)
            tags = " ".join([price.owned_by, kind_of(price), str(card.get("type")), *price.fal_slugs]).lower()
            score = _score(terms, price.model.lower(), tags, price.description.lower())
            if score:
                result = {"type": "model", "id": price.model, "title": price.model, "description": price.description}
                found.append((score, {**result, "category": kind_of(price), "url": f"/v1/models/{price.model}"}))
    if kind in (None, "template"):
        for template in generation_templates.built_in:
            tags = " ".join([template.category, template.modality, *template.supported_models]).lower()
            title = f"{template.slug} {template.display_name}".lower()
            score = _score(terms, title, tags, template.description.lower())
            if score:
                result = {"type": "template", "id": template.slug, "title": template.display_name}
                found.append(
                    (
                        score,
                        {
                            **result,
                            "description": template.description,
                            "category": template.modality,
                            "url": f"/v1/templates/{template.slug}",
                        },
                    )
                )
    return found


@get("/api/search", operation_id="searchCasolaCatalog", opt={"scope": "user:read"})
async def search(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """``?q=`` (required; every word must match) ``&type=model|template&limit=`` (1 to 50, default 20):
    ``{query, total, results: [{type, id, title, description, category, url, score}]}``."""
    authorize(request, "user:read")
    query = (request.query_params.get("q") or "").strip()
    if not query or len(query) > query_chars_max:
        raise ApiError(400, f"q must be 1 to {query_chars_max} characters.", code="invalid_parameter", param="q")
    kind = request.query_params.get("type")
    if kind is not None and kind not in ("model", "template"):
        raise ApiError(400, "type must be model or template.", code="invalid_parameter", param="type")
    limit = limit_param(request, default=20, maximum=search_results_max)
    terms = _term.findall(query.lower())
    found = _search_results(core, terms, kind) if terms else []
    found.sort(key=lambda scored: (-scored[0], scored[1]["type"], scored[1]["id"]))
    results = [{**result, "score": score} for score, result in found[:limit]]
    return json_response({"query": query, "total": len(found), "results": results})


# --- prompt rewrite ---

rewrite_output_tokens_max = 256
_rewrite_instructions = {
    "image": "Rewrite the user's prompt for a text-to-image model: name the subject, style, lighting, "
    "composition and camera. Answer with the rewritten prompt only.",
    "video": "Rewrite the user's prompt for a text-to-video model: name the subject, the motion, the "
    "camera movement and the mood. Answer with the rewritten prompt only.",
    "text": "Rewrite the user's prompt for a chat model: make the task, the context and the expected "
    "answer explicit. Answer with the rewritten prompt only.",
}


@post("/api/prompt-rewrite", operation_id="rewriteCasolaPrompt", opt={"scope": "user:write"}, status_code=200)
async def prompt_rewrite(request: Request[Any, Any, Any], core: Core) -> Response[bytes]:
    """``{prompt, target?: image|video|text, model?: a chat model}`` → ``{original, rewritten, target,
    model, usage, request_id}``: one chat completion (at most 256 output tokens), metered as one."""
    token = authorize(request, "user:write")
    asked = await decode_body(request, PromptRewriteRequest, core.settings.request_body_bytes_max)
    chat = {
        "model": asked.model,
        "messages": [
            {"role": "system", "content": _rewrite_instructions[asked.target]},
            {"role": "user", "content": asked.prompt},
        ],
        "max_tokens": rewrite_output_tokens_max,
    }
    metered = parse_chat(msgspec.json.encode(chat), core.prices.current, token.org_id, core.files)
    done = await run_answered(request, core, token, metered)
    assert not isinstance(done, Response), "a prompt rewrite is never async"
    charge, result = done.charge, done.result
    choices = result.get("choices") if isinstance(result, dict) else None
    message = choices[0].get("message") if isinstance(choices, list) and choices else None
    rewritten = str(message.get("content") or "").strip() if isinstance(message, dict) else ""
    body = {
        "original": asked.prompt,
        "rewritten": rewritten,
        "target": asked.target,
        "model": charge.model,
        "usage": usage_of(CHAT, charge.units, charge, metered.price_of(charge.model)),
        "request_id": request_id(request),
    }
    return json_response(body, headers=charge_headers(charge))


# --- content-filter policy ---

POLICY = "/api/organizations/{org_id:str}/content-filter-policy"
default_action = "block"  # what an organization without a policy of its own gets


def _enterprise(core: GatewayCore, org_id: str) -> bool:
    organization = core.tenants.organizations.get(org_id)
    return organization is not None and organization.plan == "enterprise"


def _policy_body(core: GatewayCore, org_id: str, policy: ContentFilterPolicy | None) -> dict[str, Any]:
    action = policy.action if policy is not None else default_action
    effective = default_action if action == "off" and not _enterprise(core, org_id) else action
    return {
        "org_id": org_id,
        "action": action,
        "effective_action": effective,
        "actions": list(actions),
        "source": "organization" if policy is not None else "default",
        "enforced": False,  # Tollgate runs no content classifier: the policy decides nothing yet
        "created_at": iso_or_none(policy.created_at) if policy is not None else None,
        "updated_at": iso_or_none(policy.updated_at) if policy is not None else None,
    }


def _enterprise_only(core: GatewayCore, org_id: str) -> None:
    if not _enterprise(core, org_id):
        raise ApiError(
            403,
            "Content filter policies are for enterprise organizations; change the plan to enterprise first.",
            code="enterprise_only",
        )


async def _set_policy(
    request: Request[Any, Any, Any], core: GatewayCore, org_id: str, action: str, deleted: bool
) -> None:
    token = principal(request)
    event = ContentFilterPolicySet(
        event_id=new_id("evt"),
        occurred_at=utc_now(),
        org_id=org_id,
        action=action,
        deleted=deleted,
        token_id=token.token_id if token is not None else "",
    )
    await core.record_tenant_event(event)


@get(POLICY, operation_id="getContentFilterPolicy", opt={"scope": "admin:read"})
async def get_policy(request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]) -> Response[bytes]:
    authorize_admin(request, org_id, scope="admin:read")
    return json_response(_policy_body(core, org_id, core.content_filters.get(org_id)))


@post(POLICY, operation_id="createContentFilterPolicy", opt={"scope": "admin:write"}, status_code=201)
async def create_policy(request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]) -> Response[bytes]:
    """Create (enterprise only); 409 when the organization has one (PATCH changes it)."""
    authorize_admin(request, org_id, scope="admin:write")
    body = await decode_body(request, PolicyBody, core.settings.request_body_bytes_max)
    _enterprise_only(core, org_id)
    if core.content_filters.get(org_id) is not None:
        raise ApiError(409, "The organization has a content filter policy; change it with PATCH.", code="policy_exists")
    await _set_policy(request, core, org_id, body.action, deleted=False)
    return json_response(_policy_body(core, org_id, core.content_filters.get(org_id)), status_code=201)


@patch(POLICY, operation_id="updateContentFilterPolicy", opt={"scope": "admin:write"}, status_code=200)
async def update_policy(request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]) -> Response[bytes]:
    authorize_admin(request, org_id, scope="admin:write")
    body = await decode_body(request, PolicyBody, core.settings.request_body_bytes_max)
    _enterprise_only(core, org_id)
    if core.content_filters.get(org_id) is None:
        raise ApiError(
            404, "The organization has no content filter policy; create it with POST.", code="policy_not_found"
        )
    await _set_policy(request, core, org_id, body.action, deleted=False)
    return json_response(_policy_body(core, org_id, core.content_filters.get(org_id)))


@delete(POLICY, operation_id="deleteContentFilterPolicy", opt={"scope": "admin:write"}, status_code=200)
async def delete_policy(request: Request[Any, Any, Any], core: Core, org_id: FromPath[str]) -> Response[bytes]:
    """Back to the platform's default; 404 when there is none to delete."""
    authorize_admin(request, org_id, scope="admin:write")
    if core.content_filters.get(org_id) is None:
        raise ApiError(404, "The organization has no content filter policy.", code="policy_not_found")
    await _set_policy(request, core, org_id, "", deleted=True)
    return json_response(_policy_body(core, org_id, None))


route_handlers = [voice_models, search, prompt_rewrite, get_policy, create_policy, update_policy, delete_policy]
