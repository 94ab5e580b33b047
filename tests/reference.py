"""The reference's OpenAPI document (``reference/empiriolabs-api-reference-openapi.txt``), loaded from
the file as it is: a response is validated against the schema the document gives it, never a copy.

OpenAPI 3.0's ``nullable: true``, which the document uses, becomes JSON Schema's ``null`` type."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

reference = Path(__file__).resolve().parents[2] / "shared" / "reference" / "empiriolabs-api-reference-openapi.txt"
_fallback = Path("/work/shared/reference/empiriolabs-api-reference-openapi.txt")


def _nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _nullable(value) for key, value in node.items()}
    if converted.pop("nullable", False) is True:
        if isinstance(converted.get("type"), str):
            converted["type"] = [converted["type"], "null"]
        else:
            return {"anyOf": [converted, {"type": "null"}]}
    return converted


@functools.cache
def document() -> dict[str, Any]:
    """The document's YAML (the fenced block after ``## openapi.yaml``), ``nullable`` converted."""
    text = (reference if reference.exists() else _fallback).read_text()
    start = text.index("```yaml", text.index("## openapi.yaml")) + len("```yaml")
    end = text.index("```", start)
    loaded: dict[str, Any] = yaml.safe_load(text[start:end])
    converted: dict[str, Any] = _nullable(loaded)
    return converted


def reference_validator(path: str, method: str = "get", status: str = "200") -> jsonschema.Draft202012Validator:
    """A validator for the JSON answer the document gives ``method path`` with ``status``; its
    ``$ref``s resolve inside the document."""
    schema = document()["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
    return jsonschema.Draft202012Validator({**schema, "components": document()["components"]})


def component(name: str) -> dict[str, Any]:
    """A component schema by name; ``Name.property`` for an object nested in one."""
    first, *nested = name.split(".")
    schema: dict[str, Any] = document()["components"]["schemas"][first]
    for part in nested:
        schema = schema["properties"][part]
    return schema


def declared_fields(name: str) -> set[str]:
    """The properties a component schema declares (through ``allOf`` and ``$ref`` too)."""

    def fields(schema: dict[str, Any]) -> set[str]:
        if "$ref" in schema:
            return fields(component(schema["$ref"].rsplit("/", 1)[1]))
        found = set(schema.get("properties", {}))
        for part in schema.get("allOf", []):
            found |= fields(part)
        return found

    return fields(component(name))


def assert_declared_fields_present(
    body: dict[str, Any], name: str, absent: frozenset[str] | set[str] = frozenset()
) -> None:
    """Every field the component ``name`` declares is in ``body``, except those named in ``absent``."""
    missing = declared_fields(name) - set(body) - absent
    assert not missing, f"{name} fields missing: {sorted(missing)}"
