"""Sessions of the usage page: a key is typed once into a form and never travels in a URL; the
browser then holds an HttpOnly, SameSite=Strict cookie that names the key (by id, never its secret)
and when the session ends, signed with HMAC-SHA256.

The signing key derives from the platform admin token, which every gateway instance shares, so any
instance honours any instance's session, and changing the admin token ends every session. A session
is checked on every page: a key revoked or expired since ends it at once."""

from __future__ import annotations

import base64
import hashlib
import hmac

import msgspec

cookie_name = "tollgate_session"
session_s_max = 8 * 3600  # a page session lasts at most a working day; the key can be typed again
cookie_path = "/dashboard"


class Session(msgspec.Struct, frozen=True, kw_only=True):
    """Who the page is for: an organization's key (its id), or the platform admin."""

    org_id: str = ""
    token_id: str = ""
    admin: bool = False
    expires_at: int  # Unix seconds


def signing_key(admin_token: str) -> bytes:
    return hashlib.sha256(b"tollgate-dashboard-session/v1/" + admin_token.encode()).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(key: bytes, session: Session) -> str:
    body = msgspec.json.encode(session)
    mac = hmac.new(key, body, hashlib.sha256).digest()
    return f"{_b64(body)}.{_b64(mac)}"


def read(key: bytes, value: str, now_s: float) -> Session | None:
    """The session a cookie names, or None when it is forged, malformed or over."""
    body_text, _, mac_text = value.partition(".")
    try:
        body, mac = _unb64(body_text), _unb64(mac_text)
    except (ValueError, TypeError):
        return None
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
        return None
    try:
        session = msgspec.json.decode(body, type=Session)
    except msgspec.DecodeError:
        return None
    return session if session.expires_at > now_s else None
