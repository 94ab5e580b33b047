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

from eventlog import topics
from eventlog.embedded import EmbeddedLog
from eventlog.settings import Settings
from projections.role import ProjectorRole
from projections.usage import UsageStore
from schemas.codec import decode_event
from schemas.events import CreditsRefunded, HoldCaptured, HoldRejected
from tests.harness import Gateway
from tests.support import Dev, charge, refusal
from tollgate.wiring import usage_store

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
    summary = _get(dev.base_url, "/v1/account/usage", key, limit=1)["window_summary"]
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
        while (
            _get(dev.base_url, "/v1/account/usage", key, limit=1)["window_summary"]["requests"] < traffic.requests[org]
        ):
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
    dev = Dev(data_dir, data_dir)  # the stack (and its projector) restarted on the same data
    try:
        # SQL on dev's ClickHouse server while dev runs, by the URL it printed.
        store = UsageStore(url=dev.clickhouse_url, migrate=False)
        try:
            for org in traffic.orgs:
                assert sql_totals(store, org) == {"requests": {ledger[org][0]}, "charged": {ledger[org][1]}}
        finally:
            store.close()
        check_api(dev, traffic, ledger)
    finally:
        dev.role.stop()


def test_a_projector_redelivering_every_event_changes_no_total(stack: tuple[Path, Traffic]) -> None:
    data_dir, traffic = stack
    ledger = ledger_totals(data_dir / "log.sqlite3")
    # A projector in a new group reads tollgate.ledger from offset 0 into the same ClickHouse: every
    # event is delivered a second time, in small batches.
    log = EmbeddedLog(data_dir / "log.sqlite3", partitions=topics.partitions_per_topic)
    settings = replace(Settings(), data_dir=data_dir, sink_batch_rows_max=17, kafka_bootstrap="", clickhouse_url="")
    with usage_store(settings) as store:  # dev is stopped: a server of its own on dev's ClickHouse files
        redeliver_everything(log, settings, store, traffic, ledger)
    log.close()
    dev = Dev(data_dir, data_dir)
    try:
        check_api(dev, traffic, ledger)
    finally:
        dev.role.stop()


def redeliver_everything(
    log: EmbeddedLog, settings: Settings, store: UsageStore, traffic: Traffic, ledger: dict[str, tuple[int, int, int]]
) -> None:
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
    assert events > sum(traffic.requests.values())
    assert projector.rows_written == 0  # nothing was new
    for org in traffic.orgs:
        assert sql_totals(store, org) == {"requests": {ledger[org][0]}, "charged": {ledger[org][1]}}


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


# --- every filter of GET /v1/account/usage, through HTTP on an in-process gateway ---

_t0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


@dataclass
class Filtered:
    gw: Gateway
    key: str


@pytest.fixture(scope="module")
def filtered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Filtered]:
    """One organization's usage rows, written straight to ClickHouse so that every source, model and
    status is present, and two rows share a millisecond (a page boundary must split them exactly)."""
    gw = Gateway(tmp_path_factory.mktemp("usage-filters"), with_usage=True)
    try:
        org = gw.organization()
        key = gw.key(org, ["user:read"])[0]
        rows = [
            charge("evt_a", _t0, org_id=org),
            charge("evt_b", _t0 + timedelta(hours=1), org_id=org, model="sim-chat-large", source="playground"),
            charge("evt_c", _t0 + timedelta(hours=2), org_id=org, source="gpu_cloud"),
            refusal("evt_d", _t0 + timedelta(hours=3), org_id=org),
            charge("evt_e", _t0 + timedelta(days=1), org_id=org, source="hosted_agents"),
            charge("evt_f", _t0 + timedelta(days=1), org_id=org),
        ]
        assert gw.store.insert(rows, []) == len(rows)
        yield Filtered(gw, key)
    finally:
        gw.close()


def _usage(filtered: Filtered, **params: Any) -> Any:
    response = filtered.gw.call("GET", "/v1/account/usage", filtered.key, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def _ids(page: Any) -> list[str]:
    return [event["id"] for event in page["data"]]


_newest_first = ["evt_f", "evt_e", "evt_d", "evt_c", "evt_b", "evt_a"]


@pytest.mark.parametrize("limit", [1, 2, 4, 6, 200])
def test_usage_limit_and_next_cursor_page_through_every_row_once(filtered: Filtered, limit: int) -> None:
    seen: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    for _ in range(len(_newest_first) + 1):
        page = _usage(filtered, **params)
        assert len(page["data"]) <= limit
        seen.extend(_ids(page))
        assert page["has_more"] == (page["next_cursor"] is not None)
        if page["next_cursor"] is None:
            break
        params = {"limit": limit, "before": page["next_cursor"]}
    assert seen == _newest_first
    assert _usage(filtered, limit=limit)["window_summary"]["requests"] == len(_newest_first)  # a page never narrows it


def test_usage_before_a_moment_shows_older_rows_only(filtered: Filtered) -> None:
    assert _ids(_usage(filtered, before=(_t0 + timedelta(hours=2)).isoformat())) == ["evt_b", "evt_a"]


def test_usage_from_and_to_bound_the_window_inclusively(filtered: Filtered) -> None:
    page = _usage(filtered, **{"from": (_t0 + timedelta(hours=1)).isoformat(), "to": "2026-03-01T13:00:00Z"})
    assert _ids(page) == ["evt_d", "evt_c", "evt_b"]
    assert page["window_summary"]["requests"] == 3 and page["window_summary"]["errors"] == 1
    assert _ids(_usage(filtered, **{"from": "2026-03-02T10:00:00Z"})) == ["evt_f", "evt_e"]
    assert _ids(_usage(filtered, to="2026-03-01T10:00:00Z")) == ["evt_a"]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"source": "api"}, ["evt_f", "evt_d", "evt_a"]),
        ({"source": "playground"}, ["evt_b"]),
        ({"source": "gpu_cloud"}, ["evt_c"]),
        ({"source": "hosted_agents"}, ["evt_e"]),
        ({"model": "sim-chat-large"}, ["evt_d", "evt_b"]),
        ({"model": "no-such-model"}, []),
        ({"status": "error"}, ["evt_d"]),
        ({"status": "success"}, ["evt_f", "evt_e", "evt_c", "evt_b", "evt_a"]),
        ({"source": "api", "status": "success", "model": "sim-chat-small"}, ["evt_f", "evt_a"]),
    ],
)
def test_usage_source_model_and_status_filter_the_events(
    filtered: Filtered, params: dict[str, str], expected: list[str]
) -> None:
    page = _usage(filtered, **params)
    assert _ids(page) == expected
    assert page["window_summary"]["requests"] == len(_newest_first)  # labels filter the events, not the summary


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "²"}, "limit"),
        ({"source": "web"}, "source"),
        ({"status": "ok"}, "status"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-13-01T00:00:00Z"}, "to"),
        ({"from": "9999-12-31T23:30:00Z"}, "from"),
        ({"to": "1899-12-31T23:59:59Z"}, "to"),
        ({"before": "soon"}, "before"),
        ({"before": "cur_bm90LWEtY3Vyc29y"}, "before"),
        ({"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "from"),
    ],
)
def test_usage_bad_filter_values_are_a_400_naming_the_parameter(
    filtered: Filtered, params: dict[str, str], param: str
) -> None:
    response = filtered.gw.call("GET", "/v1/account/usage", filtered.key, params=params)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_parameter"
    assert error["param"] == param and error["message"]
