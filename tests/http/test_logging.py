"""TOLLGATE_LOG_LEVEL is the level of every logger in a Tollgate process: ours and the libraries'
(httpx and kafka-python log each request and group change at INFO), and building the app keeps it
(Litestar's default logging config would set the root logger to INFO)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from gateway.app import create_app
from tests.harness import Gateway
from tollgate.cli import configure_logging
from tollgate.remote import CommandError
from tollgate.serve import drop_embedded_notice

libraries = ("httpx", "kafka", "kafka.conn", "litestar", "clickhouse_connect", "tollgate", "gateway")


@pytest.fixture
def restored() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_the_level_applies_to_every_logger_and_the_app_keeps_it(gw: Gateway, restored: logging.Logger) -> None:
    configure_logging("WARNING")
    create_app(gw.core)
    assert restored.level == logging.WARNING
    assert [name for name in libraries if logging.getLogger(name).isEnabledFor(logging.INFO)] == []
    configure_logging("INFO")
    create_app(gw.core)
    assert all(logging.getLogger(name).isEnabledFor(logging.INFO) for name in libraries)


def test_a_level_that_is_not_one_is_an_error_naming_the_setting(restored: logging.Logger) -> None:
    with pytest.raises(CommandError, match="TOLLGATE_LOG_LEVEL must be"):
        configure_logging("LOUD")


def test_granians_embedded_server_notice_is_dropped_and_nothing_else() -> None:
    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("_granian", logging.WARNING, __file__, 1, message, None, None)

    assert not drop_embedded_notice(record("Embedded server is experimental!"))
    assert drop_embedded_notice(record("Killing worker-1 after it refused to gracefully stop"))
