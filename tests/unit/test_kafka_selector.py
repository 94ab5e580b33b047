"""The selector every Kafka client of Tollgate runs on (eventlog/kafka.py ``_LookupSelector``): a
selector in every way, except that asking for a socket it does not hold costs a dict lookup, not the
socket's repr (two system calls), which kafka-python 3.0 asks before each wait."""

from __future__ import annotations

import selectors
import socket
from collections.abc import Iterator

import pytest

from eventlog import kafka as kafka_log


class _CountingSocket(socket.socket):
    reprs = 0

    def __repr__(self) -> str:
        type(self).reprs += 1
        return super().__repr__()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    counted = _CountingSocket(fileno=left.detach())
    yield counted, right
    counted.close()
    right.close()


def test_it_registers_modifies_and_unregisters_as_a_selector_does(pair: tuple[socket.socket, socket.socket]) -> None:
    sock, other = pair
    selector = kafka_log._LookupSelector()
    try:
        key = selector.register(sock, selectors.EVENT_READ, "reader")
        assert selector.get_key(sock) == key == selector.get_key(sock.fileno())
        other.send(b"x")
        assert [k.data for k, _ in selector.select(1)] == ["reader"]
        modified = selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, ("reader", "writer"))
        assert selector.get_key(sock) == modified and modified.data == ("reader", "writer")
        assert selector.unregister(sock).fd == key.fd
        with pytest.raises(KeyError):
            selector.get_key(sock)
        assert selector.select(0) == []
    finally:
        selector.close()


def test_a_socket_it_does_not_hold_is_a_key_error_without_its_repr(pair: tuple[socket.socket, socket.socket]) -> None:
    sock, _ = pair
    selector = kafka_log._LookupSelector()
    standard = selectors.DefaultSelector()
    try:
        _CountingSocket.reprs = 0
        for _ in range(3):
            with pytest.raises(KeyError):
                selector.get_key(sock)
        assert _CountingSocket.reprs == 0
        with pytest.raises(KeyError):
            standard.get_key(sock)
        assert _CountingSocket.reprs == 2  # what the standard selector spends on each such answer
    finally:
        selector.close()
        standard.close()


def test_a_closed_socket_is_looked_up_as_the_standard_selector_does(pair: tuple[socket.socket, socket.socket]) -> None:
    sock, _ = pair
    selector = kafka_log._LookupSelector()
    try:
        key = selector.register(sock, selectors.EVENT_READ)
        sock.close()  # fileno() is -1 now: the registration is found by the object itself
        assert selector.get_key(sock) == key
        selector.unregister(sock)
        with pytest.raises(ValueError, match="Invalid file descriptor"):  # as the standard selector says
            selector.get_key(sock)
    finally:
        selector.close()


def test_every_kafka_client_uses_it() -> None:
    assert kafka_log.producer_settings("p")["selector"] is kafka_log._LookupSelector
    config = kafka_log.KafkaLog("127.0.0.1:1")._consumer_config("c", None, from_beginning=True)
    assert config["selector"] is kafka_log._LookupSelector
