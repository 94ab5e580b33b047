"""The Grafana dashboard that compose/docker-compose.yml provisions (compose/grafana): its JSON has the
structure Grafana loads, every panel reads a provisioned data source, every Prometheus query names
series the roles export, and every ClickHouse query runs on a real ClickHouse server (the session's,
from tests/conftest.py) against Tollgate's schema, with totals equal to the rows written."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from eventlog.metrics import Metrics
from projections.usage import UsageStore, create_database, drop_database
from tests.support import capture_posting, charge, refusal

repo = Path(__file__).resolve().parents[2]
grafana = repo / "compose" / "grafana"
dashboard: dict[str, Any] = json.loads((grafana / "dashboards" / "tollgate.json").read_text())
panels: list[dict[str, Any]] = dashboard["panels"]
queried = [panel for panel in panels if panel["type"] != "row"]
datasources = {
    source["uid"]: source["type"]
    for source in yaml.safe_load((grafana / "provisioning" / "datasources" / "tollgate.yml").read_text())["datasources"]
}
prometheus_targets = [t for p in queried for t in p["targets"] if t["datasource"]["uid"] == "tollgate-prometheus"]
clickhouse_targets = [t for p in queried for t in p["targets"] if t["datasource"]["uid"] == "tollgate-clickhouse"]


def exported_series() -> set[str]:
    """Sample names the roles expose: every family of a process's registry, and the gateway's
    scrape-time families (gateway/observe.py), with the suffixes Prometheus gives each type."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
        names |= {family.name + suffix for suffix in suffixes}
    observe = (repo / "gateway" / "observe.py").read_text()
    for kind, name in re.findall(r'(Gauge|Counter)MetricFamily\(\s*"(tollgate_\w+)"', observe):
        names.add(name + ("_total" if kind == "Counter" else ""))
    return names


def test_the_dashboard_has_what_grafana_loads() -> None:
    assert dashboard["uid"] == "tollgate" and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        place = panel["gridPos"]
        assert place["x"] >= 0 and place["w"] > 0 and place["x"] + place["w"] <= 24, panel["title"]
        columns, lines = range(place["x"], place["x"] + place["w"]), range(place["y"], place["y"] + place["h"])
        covered = {(x, y) for x in columns for y in lines}
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
    for panel in queried:
        assert panel["title"] and panel["targets"], panel
        assert panel["datasource"]["uid"] in datasources
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            source = target["datasource"]
            assert datasources.get(source["uid"]) == source["type"], f"{panel['title']}: {source} is not provisioned"
    assert len(prometheus_targets) >= 15 and len(clickhouse_targets) >= 4


def test_the_provisioning_loads_the_dashboard_from_where_compose_mounts_it() -> None:
    compose = yaml.safe_load((repo / "compose" / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    providers = yaml.safe_load((grafana / "provisioning" / "dashboards" / "tollgate.yml").read_text())["providers"]
    assert [p["options"]["path"] for p in providers] == ["/var/lib/grafana/dashboards"]
    scraped = yaml.safe_load((repo / "compose" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for c in scraped["scrape_configs"] for s in c["static_configs"] for t in s["targets"]}
    port = compose["services"]["ledger"]["environment"]["TOLLGATE_METRICS_PORT"]
    assert targets == {"gateway:8000", f"ledger:{port}", f"worker:{port}", f"projector:{port}"}
    for role in ("ledger", "worker", "projector"):
        assert compose["services"][role]["environment"]["TOLLGATE_METRICS_HOST"] == "0.0.0.0"


@pytest.mark.parametrize("target", prometheus_targets, ids=lambda t: t["expr"][:60])
def test_every_prometheus_query_names_series_the_roles_export(target: dict[str, Any]) -> None:
    named = set(re.findall(r"\btollgate_\w+", target["expr"]))
    assert named and named <= exported_series(), named - exported_series()


@pytest.fixture(scope="module")
def store(clickhouse_url: str) -> Iterator[UsageStore]:
    url = f"{clickhouse_url}/tollgate_grafana_{uuid.uuid4().hex[:12]}"
    create_database(url)
    opened = UsageStore(url=url)
    yield opened
    opened.close()
    drop_database(url)


def run_in_range(store: UsageStore, sql: str, start: datetime, end: datetime) -> list[tuple[Any, ...]]:
    """The query as the ClickHouse data source sends it: its macros replaced by the dashboard's range."""
    low, high = f"toDateTime({int(start.timestamp())})", f"toDateTime({int(end.timestamp())})"
    expanded = re.sub(r"\$__timeFilter\((\w+)\)", rf"\1 >= {low} AND \1 <= {high}", sql)
    expanded = expanded.replace("$__fromTime", low).replace("$__toTime", high)
    assert "$__" not in expanded, f"a macro the test does not expand: {expanded}"
    return store.query(expanded)


@pytest.mark.heavy  # the real ClickHouse server
def test_every_clickhouse_query_runs_on_the_server_with_the_totals_written(store: UsageStore) -> None:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = [
        charge(f"g{n}", today + timedelta(minutes=7 * n), org_id=f"org_{n % 3}", model=model)
        for n, model in enumerate(["sim-chat-small"] * 5 + ["sim-chat-large"] * 4)
    ] + [refusal(f"r{n}", today + timedelta(minutes=5 * n)) for n in range(2)]
    store.insert(rows, [capture_posting(row) for row in rows if row.status == "success"])
    spent = sum(row.cost_micros for row in rows)
    answers = {
        target["rawSql"].split("FROM ")[1].split()[0] + ":" + str(n): run_in_range(
            store, target["rawSql"], today - timedelta(days=7), today + timedelta(days=1)
        )
        for n, target in enumerate(clickhouse_targets)
    }
    assert all(answers.values()), {sql: bool(found) for sql, found in answers.items()}
    by_day = next(found for key, found in answers.items() if key.startswith("usage_daily:") and len(found[0]) == 3)
    assert {model for _, model, _ in by_day} == {"sim-chat-small", "sim-chat-large"}
    assert round(sum(credits for _, _, credits in by_day) * 1_000_000) == spent
    top = next(found for key, found in answers.items() if key.startswith("usage_daily:") and len(found[0]) == 4)
    assert sum(requests for _, _, requests, _ in top) == len(rows) and len(top) == 3 + 1  # org_a's refusals
    errors = next(found for key, found in answers.items() if key.startswith("usage_events:"))
    assert sum(count for *_, count in errors) == 2
