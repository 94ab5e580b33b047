"""A request's body is read in one wait: the message that completes its ``content-length`` ends it
(gateway/app.py, ``ending_at_content_length``), through Granian as the gateway serves."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from granian.constants import Interfaces
from granian.server.embed import Server
from litestar import Litestar, Request, post

from gateway.app import ending_at_content_length
from tests.support import free_port


def _scripted(messages: list[dict[str, Any]]) -> tuple[Any, list[int]]:
    """A server's receive handing out ``messages`` in turn, and how many times it was awaited."""
    awaited = [0]

    async def receive() -> dict[str, Any]:
        awaited[0] += 1
        return messages.pop(0)

    return receive, awaited


def _http(headers: list[tuple[bytes, bytes]]) -> Any:
    return {"type": "http", "headers": headers}


def _read_whole(receive: Any) -> tuple[bytes, int]:
    async def read() -> tuple[bytes, int]:
        body, reads = b"", 0
        while True:
            message = await receive()
            reads += 1
            body += message.get("body", b"")
            if not message.get("more_body"):
                return body, reads

    return asyncio.run(read())


def test_the_message_that_completes_the_length_ends_the_body() -> None:
    receive, awaited = _scripted(
        [{"type": "http.request", "body": b"hello", "more_body": True}, {"type": "http.request", "body": b""}]
    )
    body, _ = _read_whole(ending_at_content_length(_http([(b"content-length", b"5")]), receive))
    assert body == b"hello"
    assert awaited == [1], "the server's empty end was not waited for"


def test_a_body_in_several_pieces_ends_at_its_last_byte() -> None:
    pieces = [{"type": "http.request", "body": b"ab", "more_body": True} for _ in range(3)]
    receive, awaited = _scripted([*pieces, {"type": "http.request", "body": b""}])
    body, reads = _read_whole(ending_at_content_length(_http([(b"content-length", b"6")]), receive))
    assert (body, reads, awaited) == (b"ababab", 3, [3])


def test_without_a_length_the_server_says_where_the_body_ends() -> None:
    receive, awaited = _scripted(
        [{"type": "http.request", "body": b"chunk", "more_body": True}, {"type": "http.request", "body": b""}]
    )
    body, _ = _read_whole(ending_at_content_length(_http([(b"transfer-encoding", b"chunked")]), receive))
    assert (body, awaited) == (b"chunk", [2])
    lifespan: Any = {"type": "lifespan"}
    assert ending_at_content_length(lifespan, receive) is receive


@post("/echo", request_max_body_size=None)
async def echo(request: Request[Any, Any, Any]) -> dict[str, Any]:
    body = await request.body()
    return {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}


class _EndingApp(Litestar):
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await super().__call__(scope, ending_at_content_length(scope, receive), send)


@pytest.fixture
def granian_port() -> Iterator[int]:
    port = free_port()
    server = Server(_EndingApp([echo]), address="127.0.0.1", port=port, interface=Interfaces.ASGI, log_access=False)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "Granian did not listen within 10 s"
            time.sleep(0.05)
    yield port
    loop.call_soon_threadsafe(server.stop)
    thread.join(10)
    loop.close()


def test_bodies_of_every_size_arrive_whole_on_one_kept_alive_connection(granian_port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", granian_port, timeout=10)
    bodies = [b'{"model":"x"}', b"", bytes(range(256)) * 8192, b"y" * 70_001, b"after the large ones"]
    for body in bodies:
        connection.request("POST", "/echo", body=body, headers={"content-type": "application/octet-stream"})
        response = connection.getresponse()
        assert response.status == 201, response.read()
        assert response.read() == (f'{{"bytes":{len(body)},"sha256":"{hashlib.sha256(body).hexdigest()}"}}'.encode())
    chunked = iter([b"first ", b"second"])
    connection.request("POST", "/echo", body=chunked, encode_chunked=True)
    response = connection.getresponse()
    assert response.read() == f'{{"bytes":12,"sha256":"{hashlib.sha256(b"first second").hexdigest()}"}}'.encode()
    connection.close()
