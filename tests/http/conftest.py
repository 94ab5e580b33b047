"""The HTTP tier: the real app (guards, middleware, routes) behind Litestar's test client, on one
in-process stack for the whole tier (the embedded log, the ledger, a simulated worker and a projector
into the embedded ClickHouse engine in threads). Each test makes its own organizations, so they share
it without seeing each other."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Gateway


@pytest.fixture(scope="package")  # closed with the tier: one process holds one embedded ClickHouse at a time
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(Path(tmp_path_factory.mktemp("http")), with_usage=True)
    yield gateway
    gateway.close()
