"""Every route of the app, every kind of credential: the declared scope holds, and another
organization's ids are 404. The routes come from the app itself, so a new route is covered (and a
route without a declared scope fails) without editing this file."""

from __future__ import annotations

import re
from typing import Any

from gateway.auth import route_rates, route_scopes
from schemas.api import all_scopes
from tests.harness import Gateway

Credential = tuple[str, str, frozenset[str]]  # (name, org "A"/"B"/"", scopes)


def routes(gw: Gateway) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path template, opt) of every handler the app serves."""
    found = []
    for route in gw.app.routes:
        for handler in getattr(route, "route_handlers", []):
            for method in sorted(handler.http_methods):
                if method in ("HEAD", "OPTIONS"):
                    continue
                found.append((method, route.path_format, dict(handler.opt)))
    return found


def test_every_route_declares_a_scope_and_a_rate(gw: Gateway) -> None:
    table = routes(gw)
    assert len(table) >= 20
    undeclared = [(m, p) for m, p, opt in table if opt.get("scope") not in route_scopes]
    assert undeclared == [], f"routes without a valid opt['scope']: {undeclared}"
    bad_rate = [(m, p) for m, p, opt in table if opt.get("rate", "requests") not in route_rates]
    assert bad_rate == []


def _expected(opt: dict[str, Any], has_org: bool, credential: Credential) -> str:
    """'pass' (the handler ran), or the status the guard must answer. A route open to anonymous
    callers (the catalog) serves one without a credential, and checks one who sends any."""
    scope = opt["scope"]
    name, org, scopes = credential
    if scope == "public" or (opt.get("anonymous") and name == "none"):
        return "pass"
    if name in ("none", "garbage"):
        return "401"
    if name == "admin":
        return "403" if scope.startswith("user:") else "pass"
    if scope == "platform":
        return "404" if (has_org and org == "B") else "403"
    if scope.startswith("user:"):
        return "pass" if scope in scopes else "403"
    if not has_org:
        return "403"  # admin scopes off an organization's path belong to the platform admin
    if org == "B":
        return "404"
    return "pass" if scope in scopes else "403"


def _outcome(response: Any, has_org: bool) -> str:
    """What the guard answered; a 404 is the guard's (another organization's ids) only on a route
    under an organization's path (elsewhere it is the handler's: Casola's unknown job is ``not_found``)."""
    if response.status_code in (401, 403, 429):
        return str(response.status_code)
    code = response.json()["error"]["code"] if response.status_code == 404 else ""
    if has_org and code in ("not_found", "organization_not_found"):
        return "404"
    return "pass"


def test_every_scope_on_every_route(gw: Gateway) -> None:
    lots = {"requests": 10_000_000, "jobs": 10_000_000, "tokens": 100_000_000}
    org_a = gw.organization("enterprise", limits=lots, credits="10")
    org_b = gw.organization("enterprise", limits=lots, credits="10")
    _, victim = gw.key(org_a, ["user:read"])
    secrets: dict[str, str] = {"none": "", "garbage": "tg_not_a_real_key", "admin": "tga_harness_admin"}
    credentials: list[Credential] = [
        ("none", "", frozenset()),
        ("garbage", "", frozenset()),
        ("admin", "", frozenset()),
    ]
    for scope in all_scopes:
        secrets[f"key A {scope}"] = gw.key(org_a, [scope])[0]
        credentials.append((f"key A {scope}", "A", frozenset([scope])))
        secrets[f"jwt A {scope}"] = gw.signer.token(org_a, scope)
        credentials.append((f"jwt A {scope}", "A", frozenset([scope])))
    secrets["key B all"] = gw.key(org_b, list(all_scopes))[0]
    credentials.append(("key B all", "B", frozenset(all_scopes)))
    secrets["jwt B all"] = gw.signer.token(org_b, " ".join(all_scopes))
    credentials.append(("jwt B all", "B", frozenset(all_scopes)))

    mismatches = []
    crashes = []
    checked = 0
    for method, template, opt in routes(gw):
        path = template.replace("{org_id}", org_a).replace("{token_id}", victim).replace("{model_id}", "sim-chat-small")
        path = path.replace("{path}", "openapi.json").replace("{job_id}", "job_unknown")
        gpu = template.startswith("/v1/gpu/")
        path = path.replace("{slug}", "rtx-4090" if gpu else "fal-ai/flux1-schnell-nunchaku")
        path = path.replace("templates/fal-ai/flux1-schnell-nunchaku", "templates/studio-product-shot")
        path = path.replace("{request_id}", "job_unknown")
        path = path.replace("{instance_id}", "gpu_unknown").replace("{action}", "refresh")
        path = path.replace("{conversation_id}", "conv_unknown")
        path = path.replace("{item_id}", "job_unknown").replace("{token}", "shr_unknown.signature")
        path = path.replace("{file_id}", "file-unknown").replace("{batch_id}", "batch_unknown")
        path = path.replace("{name}", "00000000000000000000000000000000-png")  # a media URL without its signature
        path = path.replace("{task_id}", "task_unknown")
        path = path.replace("{kind}", "telegram")  # a hosted agent's integration
        path = path.replace("{agent_id}", "agent_unknown").replace("{run_id}", "run_unknown")
        assert not re.search(r"\{\w+\}", path), f"fill the path parameter of {template} in this test"
        for credential in credentials:
            name = credential[0]
            kwargs: dict[str, Any] = {}
            if method in ("POST", "PUT", "PATCH"):
                kwargs["json"] = {"__invalid__": 1}  # the handler runs and refuses the body: no side effects
            response = gw.call(method, path, secrets[name] or None, **kwargs)
            want = _expected(opt, "{org_id}" in template, credential)
            got = _outcome(response, "{org_id}" in template)
            checked += 1
            if response.status_code >= 500:  # never a pass, whatever the credential: a crash hides a bug
                crashes.append((method, template, name, response.status_code, response.text[:160]))
            if want != got:
                mismatches.append((method, template, name, want, response.status_code, response.text[:160]))
    assert crashes == [], "\n".join(map(str, crashes))
    assert mismatches == [], "\n".join(map(str, mismatches))
    assert checked >= 20 * len(credentials)


def test_platform_admin_404s_an_unknown_organization(gw: Gateway) -> None:
    response = gw.admin("GET", "/v1/organizations/org_nope/balance")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
