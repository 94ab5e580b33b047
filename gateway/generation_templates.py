"""Generation templates (EmpirioLabs' ``GenerationTemplate``): a built-in catalog of image and video
"creative effects", each a canonical prompt, a recommended model, the models it supports, default
parameters and the inputs it needs; and how a generation request's ``template: "<slug>"`` applies one.

An image template may need a reference image (the document's ``background-swap``): the request sends
it as ``image`` (a list of URLs), which ``/v1/images/generations`` fetches and runs as an edit.

Applying a template is a rewrite of the request body before it is parsed and priced, as the document
says it works: the canonical prompt blends with the caller's ``prompt`` (canonical first, the
caller's after it), the recommended model is chosen when the body names none, the default parameters
fill every key the body left out, and a model outside ``supported_models`` is a 400. The rewritten
body is then an ordinary image or video request: held, run and charged as one (a template's default
``quality: "hd"`` costs what hd costs). The catalog is code (the document's "new templates land within
a minute" is a product catalog Tollgate does not have); every model it names is in the built-in price
book, which a test checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from gateway.errors import ApiError
from gateway.http import decode

Modality = Literal["image", "video"]
categories = ("viral", "cinematic", "motion", "transform", "social", "extend", "product", "edit", "portrait")
catalog_updated_at = "2026-12-03T00:00:00Z"  # when this built-in catalog last changed


@dataclass(frozen=True, slots=True)
class RequiredInputs:
    image: bool = False
    video: bool = False
    min_images: int = 0
    max_images: int = 0
    text_allowed: bool = True


@dataclass(frozen=True, slots=True)
class Template:
    slug: str
    display_name: str
    category: str
    modality: Modality
    description: str
    canonical_prompt: str
    recommended_model: str
    supported_models: tuple[str, ...]
    default_params: dict[str, Any] = field(default_factory=dict)
    required_inputs: RequiredInputs = RequiredInputs()
    suggested_prompts: tuple[str, ...] = ()
    is_featured: bool = False
    display_order: int = 0


_image_models = ("sim-image", "flux", "black-forest-labs/FLUX.1-schnell")
# Models that edit reference images by URL (gateway/requests.py image_references_max): 3 for Qwen.
_edit_models = ("qwen-image-2-0", "wan2-7-image", "wan-2-7-image", "seedream-5-0-lite", "sim-image")
_video_models = ("seedance-2-0-pro", "Wan-AI/Wan2.2-TI2V-5B", "sim-video")

built_in: tuple[Template, ...] = (
    Template(
        slug="studio-product-shot",
        display_name="Studio Product Shot",
        category="product",
        modality="image",
        description="A clean studio packshot: soft key light, seamless backdrop, gentle reflection.",
        canonical_prompt="Studio product photograph, seamless light grey backdrop, soft key light, subtle reflection",
        recommended_model="sim-image",
        supported_models=_image_models,
        default_params={"size": "1024x1024", "quality": "hd"},
        suggested_prompts=("a red running shoe", "a glass perfume bottle"),
        is_featured=True,
        display_order=1,
    ),
    Template(
        slug="neon-poster",
        display_name="Neon Poster",
        category="social",
        modality="image",
        description="A bold retro poster of whatever you describe, lit by neon tubes.",
        canonical_prompt="Retro neon poster, glowing tubes on a dark brick wall, high contrast, bold shapes",
        recommended_model="sim-image",
        supported_models=_image_models,
        default_params={"size": "1024x1024"},
        suggested_prompts=("a late-night ramen bar", "a synthwave cassette"),
        display_order=2,
    ),
    Template(
        slug="cinematic-portrait",
        display_name="Cinematic Portrait",
        category="portrait",
        modality="image",
        description="A wide, film-lit portrait with shallow depth of field.",
        canonical_prompt="Cinematic portrait, anamorphic framing, shallow depth of field, warm rim light",
        recommended_model="flux",
        supported_models=_image_models,
        default_params={"size": "1792x1024"},
        display_order=3,
    ),
    Template(
        slug="background-swap",
        display_name="Background Swap",
        category="edit",
        modality="image",
        description="Your product or subject, kept as it is, placed in the scene you describe.",
        canonical_prompt="Keep the subject of the reference image unchanged and replace its background",
        recommended_model="qwen-image-2-0",
        supported_models=_edit_models,
        required_inputs=RequiredInputs(image=True, min_images=1, max_images=3),
        suggested_prompts=("on a brushed steel studio plinth", "on a sunlit beach"),
        display_order=4,
    ),
    Template(
        slug="baseball-stadium",
        display_name="Stadium",
        category="viral",
        modality="video",
        description="Your subject on the big screen of a packed baseball stadium as the crowd cheers.",
        canonical_prompt="The person from the image appears on a stadium jumbotron, the crowd cheers and waves",
        recommended_model="seedance-2-0-pro",
        supported_models=_video_models,
        default_params={"aspect_ratio": "16:9", "duration": 5},
        required_inputs=RequiredInputs(image=True, min_images=1, max_images=1),
        is_featured=True,
        display_order=1,
    ),
    Template(
        slug="action-hero",
        display_name="Action Hero",
        category="cinematic",
        modality="video",
        description="Your subject walks away from an explosion in slow motion.",
        canonical_prompt="The subject walks toward the camera in slow motion as an explosion blooms behind them",
        recommended_model="seedance-2-0-pro",
        supported_models=_video_models,
        default_params={"aspect_ratio": "16:9", "duration": 4},
        required_inputs=RequiredInputs(image=True, min_images=1, max_images=1),
        display_order=2,
    ),
    Template(
        slug="slow-orbit",
        display_name="Slow Orbit",
        category="motion",
        modality="video",
        description="A slow camera orbit around whatever you describe.",
        canonical_prompt="A slow, smooth 180 degree camera orbit around the subject, steady framing",
        recommended_model="Wan-AI/Wan2.2-TI2V-5B",
        supported_models=_video_models,
        default_params={"duration": 3},
        display_order=3,
    ),
    Template(
        slug="cinematic-walk",
        display_name="Cinematic Walk",
        category="extend",
        modality="video",
        description="Continues a video you made: the subject walks on as the camera tracks beside them.",
        canonical_prompt="Continue the shot: the subject keeps walking as the camera tracks alongside, cinematic light",
        recommended_model="seedance-2-0-pro",
        supported_models=_video_models,
        default_params={"duration": 5},
        required_inputs=RequiredInputs(video=True),
        display_order=4,
    ),
)
_by_slug = {template.slug: template for template in built_in}


def template_json(template: Template) -> dict[str, Any]:
    """The document's ``GenerationTemplate``; the canonical prompt rides in ``metadata`` (the schema
    has no field of its own for it, and calls metadata's hints "suggested prompts")."""
    inputs = template.required_inputs
    return {
        "slug": template.slug,
        "display_name": template.display_name,
        "category": template.category,
        "description": template.description,
        "recommended_model": template.recommended_model,
        "supported_models": list(template.supported_models),
        "default_params": dict(template.default_params),
        "required_inputs": {
            "image": inputs.image,
            "video": inputs.video,
            "min_images": inputs.min_images,
            "max_images": inputs.max_images,
            "text_allowed": inputs.text_allowed,
        },
        "metadata": {
            "canonical_prompt": template.canonical_prompt,
            "suggested_prompts": list(template.suggested_prompts),
            "picker_label": template.display_name,
        },
        "cover_image_url": None,  # no preview assets are made for the built-in catalog
        "preview_video_url": None,
        "modality": template.modality,
        "is_featured": template.is_featured,
        "display_order": template.display_order,
        "updated_at": catalog_updated_at,
    }


def find(slug: str, modality: Modality | None = None) -> Template | None:
    """The template of ``slug`` (of ``modality`` only, when given)."""
    template = _by_slug.get(slug)
    if template is None or (modality is not None and template.modality != modality):
        return None
    return template


def listed(modality: Modality | None, category: str | None, model: str | None, featured: bool | None) -> list[Template]:
    """The catalog filtered as the list endpoints' query asks, by modality then display order."""
    found = [
        template
        for template in built_in
        if (modality is None or template.modality == modality)
        and (category is None or template.category == category)
        and (model is None or model in template.supported_models)
        and (featured is None or template.is_featured == featured)
    ]
    return sorted(found, key=lambda template: (template.modality, template.display_order, template.slug))


def _refuse(message: str, param: str, code: str = "invalid_parameter") -> ApiError:
    return ApiError(400, message, code=code, param=param)


def _images_given(fields: dict[str, Any], modality: Modality) -> int:
    """How many reference images the body sends: ``image`` (a list on images, a URL on videos) or
    ``image_url``."""
    given = fields.get("image")
    if isinstance(given, list):
        return len(given)
    return int(given is not None) + int(fields.get("image_url") is not None and modality == "video")


def _check_inputs(template: Template, fields: dict[str, Any], prompt_given: bool) -> None:
    inputs = template.required_inputs
    images = _images_given(fields, template.modality)
    if inputs.image and images < max(inputs.min_images, 1):
        names = "'image_url' (or 'image')" if template.modality == "video" else "'image' (a list of URLs)"
        raise _refuse(
            f"The template '{template.slug}' needs a reference image of your subject: send it as {names}.",
            "image",
            "missing_required_parameter",
        )
    if inputs.video and fields.get("extend_from") is None:
        raise _refuse(
            f"The template '{template.slug}' continues a video: send 'extend_from' ({{job_id}} or {{video_url}}).",
            "extend_from",
            "missing_required_parameter",
        )
    if inputs.max_images and images > inputs.max_images:
        raise _refuse(f"The template '{template.slug}' takes at most {inputs.max_images} images.", "image")
    if prompt_given and not inputs.text_allowed:
        raise _refuse(f"The template '{template.slug}' takes no prompt of its own.", "prompt")


def applied(body: bytes, modality: Modality) -> bytes:
    """``body`` with its ``template`` applied (and removed), or ``body`` itself when it names none."""
    if b"template" not in body and b"\\u" not in body:  # a key may be spelled with escapes
        return body
    fields = decode(body, dict[str, Any])
    if not isinstance(fields, dict) or "template" not in fields:
        return body
    slug = fields.pop("template")
    if not isinstance(slug, str):
        raise _refuse("'template' must be a template's slug (a string).", "template", "invalid_type")
    template = find(slug, modality)
    if template is None:
        where = "/v1/images/templates" if modality == "image" else "/v1/videos/templates"
        raise _refuse(f"No {modality} template '{slug}'; see GET {where}.", "template", "template_not_found")
    model = fields.get("model") or template.recommended_model
    if model not in template.supported_models:
        raise _refuse(
            f"The template '{slug}' supports {', '.join(template.supported_models)}; {model!r} is not one of them.",
            "model",
        )
    prompt = fields.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise _refuse("'prompt' must be a string.", "prompt", "invalid_type")
    _check_inputs(template, fields, bool(prompt))
    fields["model"] = model
    fields["prompt"] = f"{template.canonical_prompt}. {prompt}" if prompt else template.canonical_prompt
    for name, value in template.default_params.items():
        fields.setdefault(name, value)
    return msgspec.json.encode(fields)
