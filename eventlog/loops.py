"""The event loop of every role that runs one (the gateway's HTTP server, a worker's jobs): uvloop.

Each request crosses a loop several times from other threads (a log follower hands it its outcome,
the producer's callback its hold's acknowledgement, a worker's reader its job), and each crossing is a
``call_soon_threadsafe``, a self-pipe write and a turn of the loop; asyncio runs all of that in Python,
under the interpreter lock the log's threads want too. uvloop (libuv, in C) runs the same loop with
the same asyncio interface, as do its sockets: the upstream calls of a worker (aiohttp) and Granian's
futures. Measured side by side in the commit that made it the loop (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A fresh loop for a thread of its own (the worker's jobs)."""
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on a fresh uvloop loop (the gateway's server)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
