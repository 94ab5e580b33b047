"""compose/docker-compose.yml is the production shape, and no Docker runs here: these tests check it as
far as reading it allows. Every service built from Tollgate's image runs a command the CLI has; the
ClickHouse migration runs `tollgate migrate` once and every role waits for it; every TOLLGATE_* variable
it sets is a setting the roles read, and those production needs (the broker, the ClickHouse server,
the admin token, an instance id, one persistent ledger key) are set; the image holds every package."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tollgate.cli import build_parser

repo = Path(__file__).resolve().parents[2]
compose = yaml.safe_load((repo / "compose" / "docker-compose.yml").read_text())
services: dict[str, dict[str, Any]] = compose["services"]
roles = ("gateway", "ledger", "worker", "projector")
# Settings a role needs in production; every other setting's default is the production value
# (eventlog/settings.py gives each its reason), but for the data directory, which the image sets.
needed = ("TOLLGATE_KAFKA_BOOTSTRAP", "TOLLGATE_CLICKHOUSE_URL", "TOLLGATE_ADMIN_TOKEN", "TOLLGATE_INSTANCE_ID")


def setting_names() -> set[str]:
    return set(re.findall(r'_env\("(TOLLGATE_[A-Z0-9_]+)"', (repo / "eventlog" / "settings.py").read_text()))


def cli_commands() -> set[str]:
    parser = build_parser()
    choices: set[str] = set()
    for action in parser._actions:
        if getattr(action, "choices", None) and isinstance(action.choices, dict):
            choices |= set(action.choices)
    return choices


def tollgate_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if str(s.get("image", "")).startswith("tollgate:")}


def test_the_file_has_the_broker_the_clickhouse_server_its_migration_and_every_role() -> None:
    assert {"kafka", "clickhouse", "clickhouse-migrate", *roles} <= set(services)
    assert set(tollgate_services()) == {"clickhouse-migrate", *roles}


@pytest.mark.parametrize("name", sorted({"clickhouse-migrate", *roles}))
def test_every_tollgate_service_runs_a_command_the_cli_has(name: str) -> None:
    command = services[name]["command"]
    assert command[0] in cli_commands(), f"{name} runs `tollgate {command[0]}`, which the CLI does not have"


def test_the_clickhouse_migration_runs_tollgate_migrate_once_against_the_roles_server() -> None:
    migrate = services["clickhouse-migrate"]
    assert migrate["command"] == ["migrate"] and migrate["restart"] == "no"
    assert migrate["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    urls = {services[role]["environment"]["TOLLGATE_CLICKHOUSE_URL"] for role in roles}
    assert urls == {migrate["environment"]["TOLLGATE_CLICKHOUSE_URL"]}


@pytest.mark.parametrize("role", roles)
def test_every_role_waits_for_the_broker_clickhouse_and_the_migration(role: str) -> None:
    depends = services[role]["depends_on"]
    assert depends["clickhouse-migrate"]["condition"] == "service_completed_successfully"
    assert depends["kafka"]["condition"] == depends["clickhouse"]["condition"] == "service_healthy"


@pytest.mark.parametrize("role", roles)
def test_every_setting_production_needs_is_set_and_every_one_set_exists(role: str) -> None:
    environment = services[role]["environment"]
    set_here = {name for name in environment if name.startswith("TOLLGATE_")}
    assert set_here - setting_names() == set(), "variables no role reads (a typo?)"
    assert [name for name in needed if not str(environment.get(name, "")).strip()] == []
    assert environment["TOLLGATE_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert environment["TOLLGATE_CLICKHOUSE_URL"].startswith("http://clickhouse:8123")


def test_the_gateway_listens_beyond_its_container_on_the_published_port() -> None:
    gateway = services["gateway"]
    assert gateway["environment"]["TOLLGATE_HOST"] == "0.0.0.0"
    assert f"{gateway['environment']['TOLLGATE_PORT']}:{gateway['environment']['TOLLGATE_PORT']}" in gateway["ports"]


def test_one_ledger_key_is_kept_on_a_volume_the_ledger_writes_and_the_gateway_reads() -> None:
    key = services["ledger"]["environment"]["TOLLGATE_LEDGER_SIGNING_KEY_FILE"]
    assert key == services["gateway"]["environment"]["TOLLGATE_LEDGER_SIGNING_KEY_FILE"]
    directory = str(Path(key).parent)
    mounts = {role: [m for m in services[role].get("volumes", []) if m.split(":")[1] == directory] for role in roles}
    assert len(mounts["ledger"]) == 1 and not mounts["ledger"][0].endswith(":ro")
    assert len(mounts["gateway"]) == 1 and mounts["gateway"][0].split(":")[0] == mounts["ledger"][0].split(":")[0]
    assert mounts["ledger"][0].split(":")[0] in compose["volumes"]


def test_the_image_holds_every_package_and_a_data_directory() -> None:
    dockerfile = (repo / "compose" / "Dockerfile").read_text()
    packaged = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    wanted = {name.rstrip("*") for name in packaged["include"]}
    copied = set(re.findall(r"^COPY (\w+) \./\1$", dockerfile, flags=re.MULTILINE))
    assert wanted - copied == set(), "packages the image would lack"
    assert re.search(r"TOLLGATE_DATA_DIR=/var/lib/tollgate", dockerfile)
    assert re.search(r'^ENTRYPOINT \["tollgate"\]$', dockerfile, flags=re.MULTILINE)
