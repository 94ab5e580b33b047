"""`tollgate statement`: an organization's statement for a period, from ClickHouse (the server at
TOLLGATE_CLICKHOUSE_URL, or the embedded store in the data directory, which no running process may
hold)."""

from __future__ import annotations

import sys

import msgspec

from eventlog.settings import Settings
from projections.statements import load_statement, statement_csv, statement_json
from tollgate.audit import period_arguments, require_organization
from tollgate.remote import CommandError
from tollgate.wiring import embedded_store_path, open_log, open_store


def print_statement(settings: Settings, org_id: str, start: str, end: str, output: str) -> int:
    period = period_arguments(start, end)
    log_here = not settings.embedded or (settings.data_dir / "log.sqlite3").exists()
    if log_here:
        log = open_log(settings, must_exist=True)
        try:
            require_organization(log, org_id)
        finally:
            log.close()
    if not settings.clickhouse_url and not embedded_store_path(settings).exists():
        raise CommandError(
            f"no usage store at {embedded_store_path(settings)}: pass --data-dir (the one `tollgate dev` "
            "uses), or set TOLLGATE_CLICKHOUSE_URL"
        )
    store = open_store(settings)
    try:
        if not log_here and not store.knows_organization(org_id):
            raise CommandError(f"no organization {org_id!r} has usage or ledger history in this store (check --org)")
        built = load_statement(store, org_id, *period)
    finally:
        store.close()
    if output == "csv":
        sys.stdout.write(statement_csv(built))
    else:
        encoder = msgspec.json.Encoder(decimal_format="number")
        sys.stdout.write(encoder.encode(statement_json(built)).decode() + "\n")
    return 0
