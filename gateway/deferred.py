"""Records a request appends together with its next append to the log, not on their own.

A request's admission (the rate limiter's ``RequestAdmitted``) is decided before its handler runs and
its hold a moment later. Appended apart they are two produce requests to the broker (the producer
sends what it is given at once: ``linger_ms`` is 0 because requests wait on it), two wake-ups of the
producer's thread and two appends the broker serves. Deferred until the hold's append, both go in one.
Nobody waits on an admission: other gateway instances count it in their windows (this one counted it
when it decided), and an auditor reads it on the log.

``RequestIdMiddleware`` opens a request's deferral; ``Metering.place`` takes what is deferred and sends
it with the hold; whatever no append took goes out when the response starts, or when the request ends
without one, so every deferred record is appended exactly once. Outside a request (a background task
of the gateway's) nothing is deferred: ``defer`` says so and the caller appends at once.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

from eventlog import Outgoing

# The request's task, and the tasks it starts (they copy its context), share one list; all of them
# run on the gateway's event loop, so no lock is needed.
_deferred: ContextVar[list[Outgoing] | None] = ContextVar("tollgate_deferred_records", default=None)


def open_request() -> Token[list[Outgoing] | None]:
    """Start deferring this request's records; ``close_request`` with the token ends it."""
    return _deferred.set([])


def defer(records: list[Outgoing]) -> bool:
    """Keep ``records`` for the request's next append; False outside a request (append them now)."""
    pending = _deferred.get()
    if pending is None:
        return False
    pending.extend(records)
    return True


def take() -> list[Outgoing]:
    """What the request has deferred so far, now the caller's to append."""
    pending = _deferred.get()
    if not pending:
        return []
    taken = list(pending)
    pending.clear()
    return taken


def close_request(token: Token[list[Outgoing] | None]) -> list[Outgoing]:
    """End the request's deferral: what it still holds is the caller's to append."""
    left = take()
    _deferred.reset(token)
    return left
