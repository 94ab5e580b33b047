"""Log lines that can be followed across roles: each carries the role, and the request and
organization it concerns, as text or (``TOLLGATE_LOG_FORMAT=json``) one JSON object per line.

The request id is the correlation id every event and command of a request carries, so grepping the
logs of the gateway, the ledger and a worker for one ``request_id`` follows that request. Where a
line is about a request, the caller passes ``extra=about(request_id, org_id)``; the gateway also
binds both to the context of the HTTP request (``bind_request``), and each role's thread binds its
role (``bind_role``), so lines that pass nothing still say where they come from.
"""

from __future__ import annotations

import contextvars
import logging
from datetime import UTC, datetime
from typing import Any

import msgspec

role_var: contextvars.ContextVar[str] = contextvars.ContextVar("tollgate_role", default="")
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("tollgate_request_id", default="")
org_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("tollgate_org_id", default="")

text_format = "%(asctime)s %(levelname)s %(name)s [%(role)s%(request_part)s]: %(message)s"
_process_role = ""  # the role of a process that runs one (tollgate ledger, ...); threads may differ


def about(request_id: str, org_id: str = "") -> dict[str, str]:
    """``extra`` for a log line about one request."""
    return {"request_id": request_id, "org_id": org_id}


def bind_role(role: str) -> None:
    """This thread (or task) works for ``role``: its log lines say so."""
    role_var.set(role)


def bind_request(request_id: str, org_id: str = "") -> None:
    request_id_var.set(request_id)
    if org_id:
        org_id_var.set(org_id)


def bind_org(org_id: str) -> None:
    org_id_var.set(org_id)


class ContextFilter(logging.Filter):
    """Fills ``role``, ``request_id`` and ``org_id`` from ``extra``, else from the context."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        if not fields.get("role"):
            record.role = role_var.get() or _process_role or record.threadName or ""
        if "request_id" not in fields:
            fields["request_id"] = request_id_var.get()
        if "org_id" not in fields:
            fields["org_id"] = org_id_var.get()
        request_id, org_id = fields["request_id"], fields["org_id"]
        parts = [f" request_id={request_id}" if request_id else "", f" org_id={org_id}" if org_id else ""]
        fields["request_part"] = "".join(parts)
        return True


_encoder = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, role, request_id, org_id,
    message, and the exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "role": getattr(record, "role", ""),
            "message": record.getMessage(),
        }
        for name in ("request_id", "org_id"):
            value = getattr(record, name, "")
            if value:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(line).decode()


def configure(level: str, log_format: str, role: str = "") -> None:
    """Every logger (Tollgate's and the libraries', which inherit the root's level) at ``level``, in
    ``log_format`` (``text`` or ``json``); ``role``: the role of this process, when it runs one."""
    global _process_role
    _process_role = role
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(text_format))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger().setLevel(level.upper())
