"""Usage reporting agrees with the ledger, exactly: after mixed traffic through `tollgate dev` (the
openai SDK as client), after a restart of the stack (and so of its projector), and after a second
projector re-delivers every ledger event into the same ClickHouse.

Three sources are compared per organization: the HTTP API (account usage, its pages, admin rollup
views, statements), plain SQL on ClickHouse (raw rows and both rollups), and the ledger events
themselves, read from the log.
"""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from ledger.log.embedded import EmbeddedLog
from ledger.settings import Settings
from projections.role import ProjectorRole
from projections.usage_store import UsageStore
from schemas import topics
from schemas.codec import decode_event
from schemas.events import CreditsRefunded, HoldCaptured, HoldRejected
from tests.test_dev_e2e import Dev

_now = datetime.now(UTC)
# A statement period around the test run (statements cover at most a year).
period = {"from": (_now - timedelta(days=30)).isoformat(), "to": (_now + timedelta(days=30)).isoformat()}


@dataclass
class Traffic:
    orgs: dict[str, str]  # org id -> API key
    charged: dict[str, int]  # org id -> sum of x-credits-used (micros)
    requests: dict[str, int]  # org id -> requests answered 200 or 402
    refunded: dict[str, int]


def _chat(client: openai.OpenAI, model: str, content: str, max_tokens: int) -> tuple[int, str]:
    """Micros charged (0 for a 402) and the request id."""
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": content}], max_tokens=max_tokens
        )
    except openai.APIStatusError as error:
        assert error.status_code == 402, error
        return 0, ""
    return int(Decimal(raw.headers["x-credits-used"]) * 1_000_000), raw.headers["x-request-id"]


def run_traffic(dev: Dev) -> Traffic:
    traffic = Traffic(orgs={}, charged={}, requests={}, refunded={})
    for name, grant in (("rich", "3"), ("poor", "0.002"), ("third", "1")):
        org = dev.admin.organization(name)
        dev.admin.grant(org, grant)
        traffic.orgs[org] = dev.admin.token(org)
    jobs = [
        (org, model, f"{org} {i} " + "word " * (i * 7 % 40), 16 + i % 64)
        for i in range(30)
        for org, model in zip(traffic.orgs, ("sim-chat-small", "sim-chat-large", "sim-chat-large"), strict=True)
    ]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda job: (job[0], _chat(dev.client(traffic.orgs[job[0]]), *job[1:])), jobs))
    for org, (micros, _) in results:
        traffic.charged[org] = traffic.charged.get(org, 0) + micros
        traffic.requests[org] = traffic.requests.get(org, 0) + 1
    rich = next(iter(traffic.orgs))
    refund, reference = max((micros, request_id) for org, (micros, request_id) in results if org == rich)
    response = dev.admin.client.post(
        f"/v1/organizations/{rich}/refunds",
        json={"amount": str(Decimal(refund) / 1_000_000), "reason": "goodwill", "reference": reference},
    )
    assert response.status_code == 201, response.text
    traffic.refunded[rich] = refund
    assert 0 < traffic.charged[next(iter(list(traffic.orgs)[1:]))] < 2000  # the poor one ran dry: some 402s
    return traffic


def _get(base_url: str, path: str, key: str, **params: Any) -> Any:
    response = httpx.get(f"{base_url}{path}", params=params, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert response.status_code == 200, response.text
    return json.loads(response.text, parse_float=Decimal) if "json" in response.headers["content-type"] else response


def api_totals(dev: Dev, org: str, key: str) -> dict[str, Any]:
    """Every API view of one organization's totals."""
    summary = _get(dev.base_url, "/v1/account/usage", key, limit=1)["summary"]
    paged: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        params: dict[str, Any] = {"limit": 7, **({"before": cursor} if cursor else {})}
        page = _get(dev.base_url, "/v1/account/usage", key, **params)
        paged.extend(page["data"])
        cursor = page["next_cursor"]
        assert page["has_more"] == (cursor is not None)
        if cursor is None:
            break
    admin = dev.admin.client.headers["authorization"].removeprefix("Bearer ")
    hourly = _get(dev.base_url, f"/v1/organizations/{org}/usage", admin, granularity="hour", group_by="none")
    by_model = _get(dev.base_url, f"/v1/organizations/{org}/usage", admin, granularity="day")
    by_token = _get(dev.base_url, f"/v1/organizations/{org}/usage/by-token", admin)
    statement = _get(dev.base_url, f"/v1/organizations/{org}/statements", admin, **period)
    statement_csv = _get(dev.base_url, f"/v1/organizations/{org}/statements", admin, format="csv", **period).text
    csv_rows = list(csv.DictReader(io.StringIO(statement_csv)))
    assert len({event["id"] for event in paged}) == len(paged)
    return {
        "requests": {
            summary["requests"],
            len(paged),
            hourly["total_requests"],
            by_model["total_requests"],
            by_token["total_requests"],
        },
        "charged": {
            summary["total_cost_micros"],
            sum(event["cost"]["amount_micros"] for event in paged),
            hourly["total_cost_micros"],
            by_model["total_cost_micros"],
            by_token["total_cost_micros"],
            statement["charges_micros"],
            statement["ledger"]["charges_micros"],
            sum(line["amount_micros"] for line in statement["lines"] if line["unit"] != "refund"),
        },
        "refunded": {
            statement["refunds_micros"],
            -sum(int(r["amount_micros"]) for r in csv_rows if r["unit"] == "refund"),
        },
        "statement_total": {
            statement["total_micros"],
            sum(int(r["amount_micros"]) for r in csv_rows if r["unit"] not in ("total", "")),
            int(csv_rows[-1]["amount_micros"]),
        },
    }


def ledger_totals(log_path: Path) -> dict[str, tuple[int, int, int]]:
    """org -> (requests, charged, refunded) from the ledger events themselves."""
    log = EmbeddedLog(log_path, partitions=topics.partitions_per_topic)
    consumer = log.consumer([topics.LEDGER], client_id="test-reader")
    found: dict[str, tuple[int, int, int]] = {}
    try:
        while not consumer.caught_up():
            for record in consumer.poll(1000, 100):
                event = decode_event(record.value)
                requests, charged, refunded = found.get(event.org_id, (0, 0, 0))
                if isinstance(event, HoldCaptured):
                    found[event.org_id] = (requests + 1, charged + event.amount_micros, refunded)
                elif isinstance(event, HoldRejected):
                    found[event.org_id] = (requests + 1, charged, refunded)
                elif isinstance(event, CreditsRefunded):
                    found[event.org_id] = (requests, charged, refunded + event.amount_micros)
    finally:
        consumer.close()
        log.close()
    return found


def sql_totals(store: UsageStore, org: str) -> dict[str, set[int]]:
    raw = store.raw_totals_by_org()[org]
    hourly = store.rollup_totals_by_org("usage_hourly")[org]
    daily = store.rollup_totals_by_org("usage_daily")[org]
    revenue = store.totals_by_org()[org][1]
    return {"requests": {raw[0], hourly[0], daily[0]}, "charged": {raw[1], hourly[1], daily[1], revenue}}


def wait_for_rows(dev: Dev, traffic: Traffic) -> None:
    deadline = time.monotonic() + 30
    for org, key in traffic.orgs.items():
        while _get(dev.base_url, "/v1/account/usage", key, limit=1)["summary"]["requests"] < traffic.requests[org]:
            assert time.monotonic() < deadline, "the projector did not catch up"
            time.sleep(0.2)
    time.sleep(0.5)  # the refund's posting too


def check_api(dev: Dev, traffic: Traffic, ledger: dict[str, tuple[int, int, int]]) -> None:
    for org, key in traffic.orgs.items():
        requests, charged, refunded = ledger[org]
        assert (requests, charged) == (traffic.requests[org], traffic.charged[org])
        totals = api_totals(dev, org, key)
        assert totals["requests"] == {requests}, org
        assert totals["charged"] == {charged}, org
        assert totals["refunded"] == {refunded}, org
        assert totals["statement_total"] == {charged - refunded}, org


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Traffic]]:
    data_dir = tmp_path_factory.mktemp("usage-data")
    dev = Dev(data_dir, data_dir)
    try:
        traffic = run_traffic(dev)
        wait_for_rows(dev, traffic)
    finally:
        dev.role.stop()
    yield data_dir, traffic


def test_api_sql_and_ledger_agree_after_mixed_traffic_and_a_restart(stack: tuple[Path, Traffic]) -> None:
    data_dir, traffic = stack
    ledger = ledger_totals(data_dir / "log.sqlite3")
    store = UsageStore(path=data_dir / "clickhouse")
    try:
        for org in traffic.orgs:
            assert sql_totals(store, org) == {"requests": {ledger[org][0]}, "charged": {ledger[org][1]}}
    finally:
        store.close()
    dev = Dev(data_dir, data_dir)  # the stack (and its projector) restarted on the same data
    try:
        check_api(dev, traffic, ledger)
    finally:
        dev.role.stop()


def test_a_projector_redelivering_every_event_changes_no_total(stack: tuple[Path, Traffic]) -> None:
    data_dir, traffic = stack
    ledger = ledger_totals(data_dir / "log.sqlite3")
    # A projector in a new group reads tollgate.ledger from offset 0 into the same ClickHouse: every
    # event is delivered a second time, in small batches.
    log = EmbeddedLog(data_dir / "log.sqlite3", partitions=topics.partitions_per_topic)
    store = UsageStore(path=data_dir / "clickhouse")
    settings = replace(Settings(), data_dir=data_dir, sink_batch_rows_max=17, kafka_bootstrap="", clickhouse_url="")
    projector = ProjectorRole(log, settings, store, group="redelivery")
    stop = threading.Event()
    thread = threading.Thread(target=projector.run, args=(stop,))
    thread.start()
    try:
        reader = log.consumer([topics.LEDGER], client_id="count")
        events = 0
        while not reader.caught_up():
            events += len(reader.poll(1000, 50))
        reader.close()
        time.sleep(2)  # several flush waits: the projector has seen them all
    finally:
        stop.set()
        thread.join(30)
    try:
        assert events > sum(traffic.requests.values())
        assert projector.rows_written == 0  # nothing was new
        for org in traffic.orgs:
            assert sql_totals(store, org) == {"requests": {ledger[org][0]}, "charged": {ledger[org][1]}}
    finally:
        store.close()
        log.close()
    dev = Dev(data_dir, data_dir)
    try:
        check_api(dev, traffic, ledger)
    finally:
        dev.role.stop()


def test_statement_period_bounds_and_errors(stack: tuple[Path, Traffic]) -> None:
    data_dir, traffic = stack
    dev = Dev(data_dir, data_dir)
    try:
        org = next(iter(traffic.orgs))
        admin = dev.admin.client
        empty = admin.get(f"/v1/organizations/{org}/statements", params={"from": "2020-01-01", "to": "2020-02-01"})
        assert empty.status_code == 200 and empty.json()["lines"] == [] and empty.json()["total_micros"] == 0
        for params in (
            {"from": "2026-01-01"},
            {"from": "x", "to": "2026-01-01"},
            {"from": "2026-02-01", "to": "2026-01-01"},
        ):
            bad = admin.get(f"/v1/organizations/{org}/statements", params=params)
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_parameter", bad.text
        other = list(traffic.orgs)[1]
        foreign = httpx.get(
            f"{dev.base_url}/v1/organizations/{other}/statements",
            params=period,
            headers={"Authorization": f"Bearer {traffic.orgs[org]}"},
        )
        assert foreign.status_code == 404  # another organization's statements do not exist for this key
        bad_cursor = httpx.get(
            f"{dev.base_url}/v1/account/usage",
            params={"before": "cur_bm90LWEtY3Vyc29y"},
            headers={"Authorization": f"Bearer {traffic.orgs[org]}"},
        )
        assert bad_cursor.status_code == 400 and bad_cursor.json()["error"]["param"] == "before"
        now = datetime.now(UTC)
        window = {"from": (now - timedelta(days=1)).isoformat(), "to": (now + timedelta(days=1)).isoformat()}
        assert admin.get(f"/v1/organizations/{org}/statements", params=window).json()["ledger"]["balanced"]
    finally:
        dev.role.stop()
