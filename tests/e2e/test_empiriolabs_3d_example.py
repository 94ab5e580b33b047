"""EmpirioLabs' 3D generation example ("Submit a 3D job", ``POST /v1/3d/generations`` with
``trellis-2-4b``), read from the document and run with curl against `tollgate dev` with only the host
and the key changed; its job polled at the ``poll_url`` it answers until the GLB's signed URL is there,
and the charge reconciled: the job's ``cost_usd`` is its usage's, the balance drop and the usage
event's cost."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.pricing import default_price_book, price_micros
from schemas.units import Units
from tests.reference import reference
from tests.support import Dev, balance_micros, markdown_curl, run_curl, served_media, settled_balance, usage_rows_of
from workers import meshes

pytestmark = [pytest.mark.slow]

document = reference if reference.exists() else Path("/work/shared/reference/empiriolabs-api-reference-openapi.txt")
empiriolabs_host = "https://api.empiriolabs.ai"


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    data_dir = tmp_path_factory.mktemp("empiriolabs-3d")
    server = Dev(data_dir, data_dir)
    yield server
    server.stop()


def _polled(dev: Dev, key: str, poll_url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        answer = httpx.get(dev.base_url + poll_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert answer.status_code == 200, answer.text
        job: dict[str, Any] = json.loads(answer.text, parse_float=Decimal)
        if job["status"] != "processing" or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


def test_the_3d_example_runs_as_written_and_its_charge_reconciles(dev: Dev) -> None:
    _, key = dev.organization(credits=10)
    before = balance_micros(dev.base_url, key)
    command = markdown_curl(document, "Submit a 3D job")
    assert '"model": "trellis-2-4b"' in command
    accepted = run_curl(command.replace(empiriolabs_host, dev.base_url), "EMPIRIOLABS_API_KEY", key)
    assert accepted["status"] == "processing" and accepted["poll_url"] == f"/v1/jobs/{accepted['job_id']}"
    job = _polled(dev, key, accepted["poll_url"])
    assert (job["status"], job["progress"], job["error"]) == ("completed", 1, None), job
    item = job["result"]["data"][0]
    assert item["content_type"] == "model/gltf-binary"
    asset, _ = meshes.read_glb(served_media(item["url"], "model/gltf-binary"))
    assert asset["accessors"][3]["count"] == 1280 * 3  # the example's resolution 1024: 1,280 triangles
    price = default_price_book().model("trellis-2-4b")
    assert price is not None
    micros = price_micros(price, Units(calls=1))
    assert job["result"]["usage"]["cost_usd"] == job["cost_usd"] == Decimal(micros) / 1_000_000
    assert settled_balance(dev.base_url, key, before - micros) == before - micros
    charged = usage_rows_of(dev.base_url, key, job["request_id"])
    assert [event["cost"]["amount_micros"] for event in charged] == [micros]
    assert charged[0]["endpoint"] == "/v1/3d/generations"
