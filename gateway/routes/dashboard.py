"""The usage page (``/dashboard``): server-rendered HTML for an organization's key holders (``user:read``)
and the platform admin, with its charts drawn by Chart.js served from the project (no CDN).

Its routes are ``public`` to the guard: a page cannot send an Authorization header, so each handler
checks the session cookie itself (``gateway/sessions.py``), which a key typed once into the login
form (a POST body, never a URL) opens. What the page shows: balance and its history, spend per day and
per model, the usage log, jobs, statement downloads (CSV, PDF) and the audit status."""

from __future__ import annotations

import functools
import hmac
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import jinja2
import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.enums import RequestEncodingType
from litestar.params import Body

from gateway import sessions
from gateway.auth import service_token_principal
from gateway.core import Core, GatewayCore
from gateway.errors import ApiError
from gateway.statement_pdf import statement_pdf
from gateway.usage_page import money, page_data, window_days_choices, window_days_default
from ledger.money import micros_to_decimal
from projections.statements import load_statement, statement_csv, statement_days_max

package = Path(__file__).resolve().parent.parent
assets = {
    "chart.umd.min.js": (package / "static" / "vendor" / "chart.umd.min.js", "text/javascript"),
    "dashboard.js": (package / "static" / "dashboard.js", "text/javascript"),
    "dashboard.css": (package / "static" / "dashboard.css", "text/css"),
}
form_bytes_max = 4096
organizations_listed_max = 500  # the admin's organization picker
page = {"scope": "public", "rate": "none"}  # the handler checks the session cookie (module docstring)
form_not_idempotent = "a page form: it answers with a session cookie or a redirect, not an API answer to replay"
security_headers = {
    # The page's own scripts and styles only; the chart data is JSON in a non-executed script element.
    "content-security-policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


@functools.cache
def _templates() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(package / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["money"] = money
    environment.filters["credits"] = lambda micros: str(micros_to_decimal(micros))
    environment.filters["moment"] = lambda at: at.strftime("%Y-%m-%d %H:%M:%S") if at else "-"
    return environment


def _html(template: str, status: int = 200, cookies: list[Cookie] | None = None, **context: Any) -> Response[str]:
    body = _templates().get_template(template).render(**context)
    return Response(
        body, status_code=status, media_type="text/html; charset=utf-8", headers=security_headers, cookies=cookies
    )


def _redirect(location: str, cookies: list[Cookie] | None = None) -> Response[str]:
    return Response("", status_code=303, headers={**security_headers, "location": location}, cookies=cookies)


def _session_cookie(request: Request[Any, Any, Any], value: str, max_age: int) -> Cookie:
    return Cookie(
        key=sessions.cookie_name,
        value=value,
        path=sessions.cookie_path,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _session(request: Request[Any, Any, Any], core: GatewayCore) -> sessions.Session | None:
    """The page's session, if its cookie is genuine, current, and its key still valid."""
    value = request.cookies.get(sessions.cookie_name)
    if not value or not core.admin_token:
        return None
    session = sessions.read(sessions.signing_key(core.admin_token), value, time.time())
    if session is None or session.admin:
        return session
    if session.token_id.startswith("jwt:"):
        # A service token is valid until it expires (the session ends then too) or its signing key is
        # retired; its scopes were checked at sign-in. There is no stored key to look up.
        return session if session.org_id in core.tenants.organizations else None
    token = core.tenants.tokens_by_id.get(session.token_id)
    if token is None or session.token_id in core.tenants.revoked_at or "user:read" not in token.scopes:
        return None
    if token.expires_at is not None and token.expires_at <= datetime.now(UTC):
        return None
    return session


def _organization(request: Request[Any, Any, Any], core: GatewayCore, session: sessions.Session) -> str | None:
    """The organization the page shows: the key's own, or the one the admin picked (``?org=``)."""
    if not session.admin:
        return session.org_id
    chosen = request.query_params.get("org")
    return chosen if chosen in core.tenants.organizations else None


def _days(request: Request[Any, Any, Any]) -> int:
    raw = request.query_params.get("days", "")
    return int(raw) if raw.isdigit() and int(raw) in window_days_choices else window_days_default


def _admin_organizations(core: GatewayCore) -> list[tuple[str, str]]:
    organizations = sorted(core.tenants.organizations.values(), key=lambda o: (o.name.lower(), o.org_id))
    return [(o.org_id, o.name) for o in organizations[:organizations_listed_max]]


@get("/dashboard", operation_id="dashboard", opt=page, include_in_schema=False)
async def dashboard(request: Request[Any, Any, Any], core: Core) -> Response[str]:
    session = _session(request, core)
    if session is None:
        return _html("login.html.j2", error=None)
    org_id = _organization(request, core, session)
    organizations = _admin_organizations(core) if session.admin else []
    if org_id is None:
        return _html("dashboard.html.j2", session=session, data=None, organizations=organizations, chart_json="{}")
    days = _days(request)
    data = page_data(core, org_id, days, request.query_params.get("before"))
    today = datetime.now(UTC).date()
    org_query = {"org": org_id} if session.admin else {}
    return _html(
        "dashboard.html.j2",
        session=session,
        data=data,
        organizations=organizations,
        # JSON inside a script element: "<" escaped, so no text can close the element.
        chart_json=msgspec.json.encode(data.chart_data()).decode().replace("<", "\\u003c"),
        window_links=[(n, "?" + urlencode({**org_query, "days": n})) for n in window_days_choices],
        older_link="?" + urlencode({**org_query, "days": days, "before": data.next_cursor})
        if data.next_cursor
        else None,
        statement_from=today.replace(day=1).isoformat(),
        statement_to=today.isoformat(),
    )


class LoginForm(msgspec.Struct, kw_only=True):
    key: str = ""


@post(
    "/dashboard/login",
    operation_id="dashboardLogin",
    opt={**page, "idempotent": form_not_idempotent},
    include_in_schema=False,
    request_max_body_size=form_bytes_max,
)
async def login(
    request: Request[Any, Any, Any],
    core: Core,
    data: Annotated[dict[str, Any], Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Response[str]:
    """Open a session for an API key with ``user:read`` (or the platform admin token)."""
    secret = str(data.get("key", "")).strip() if isinstance(data, dict) else ""
    if not secret:
        return _html("login.html.j2", status=400, error="Paste an API key (it starts with tg_).")
    expires_at = int(time.time()) + sessions.session_s_max
    if core.admin_token and hmac.compare_digest(secret.encode(), core.admin_token.encode()):  # as the guard does
        session = sessions.Session(admin=True, expires_at=expires_at)
    else:
        token = core.authenticate(secret) or await service_token_principal(core, secret)
        if token is None or (token.expires_at is not None and token.expires_at <= datetime.now(UTC)):
            return _html("login.html.j2", status=401, error="This key is unknown, revoked or expired.")
        if "user:read" not in token.scopes:
            return _html("login.html.j2", status=403, error="This key lacks the user:read scope the page needs.")
        if token.expires_at is not None:
            expires_at = min(expires_at, int(token.expires_at.timestamp()))
        session = sessions.Session(org_id=token.org_id, token_id=token.token_id, expires_at=expires_at)
    value = sessions.issue(sessions.signing_key(core.admin_token), session)
    return _redirect("/dashboard", [_session_cookie(request, value, expires_at - int(time.time()))])


@post(
    "/dashboard/logout",
    operation_id="dashboardLogout",
    opt={**page, "idempotent": form_not_idempotent},
    include_in_schema=False,
    request_max_body_size=form_bytes_max,
)
async def logout(request: Request[Any, Any, Any]) -> Response[str]:
    return _redirect("/dashboard", [_session_cookie(request, "", 0)])


def _period(request: Request[Any, Any, Any]) -> tuple[datetime, datetime]:
    """``from`` and ``to`` as days (both included) from the statement form: [from 00:00, to + 1 day)."""
    try:
        first = date.fromisoformat(request.query_params.get("from", ""))
        last = date.fromisoformat(request.query_params.get("to", ""))
    except ValueError:
        message = "Give from and to as dates, e.g. from=2026-11-01&to=2026-11-30."
        raise ApiError(400, message, code="invalid_parameter") from None
    if last < first or (last - first).days >= statement_days_max:
        raise ApiError(
            400, f"to must not be before from, at most {statement_days_max} days apart.", code="invalid_parameter"
        )
    start = datetime.combine(first, datetime.min.time(), UTC)
    return start, datetime.combine(last + timedelta(days=1), datetime.min.time(), UTC)


@get("/dashboard/statement", operation_id="dashboardStatement", opt=page, include_in_schema=False)
async def statement_download(request: Request[Any, Any, Any], core: Core) -> Response[Any]:
    """The statement for the chosen days as a CSV or PDF download."""
    session = _session(request, core)
    if session is None:
        return _redirect("/dashboard")
    org_id = _organization(request, core, session)
    if org_id is None or core.usage_store is None:
        raise ApiError(404, "Pick an organization with usage first.", code="not_found")
    output = request.query_params.get("format", "csv")
    if output not in ("csv", "pdf"):
        raise ApiError(400, "format must be csv or pdf.", code="invalid_parameter", param="format")
    start, end = _period(request)
    built = load_statement(core.usage_store, org_id, start, end)
    name = f"statement-{org_id}-{start:%Y%m%d}-{end:%Y%m%d}.{output}"
    headers = {"content-disposition": f'attachment; filename="{name}"', "cache-control": "no-store"}
    if output == "pdf":
        organization = core.tenants.organizations.get(org_id)
        pdf = statement_pdf(built, organization.name if organization is not None else org_id)
        return Response(pdf, media_type="application/pdf", headers=headers)
    return Response(statement_csv(built).encode(), media_type="text/csv", headers=headers)


@get(
    ["/dashboard/assets/chart.umd.min.js", "/dashboard/assets/dashboard.js", "/dashboard/assets/dashboard.css"],
    operation_id="dashboardAsset",
    opt=page,
    include_in_schema=False,
)
async def asset(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The page's script, style and the vendored chart library, from the package (never a CDN)."""
    path, media_type = assets[request.url.path.rsplit("/", 1)[-1]]
    return Response(
        path.read_bytes(),
        media_type=media_type,
        headers={"cache-control": "public, max-age=3600", "x-content-type-options": "nosniff"},
    )


route_handlers = [dashboard, login, logout, statement_download, asset]
