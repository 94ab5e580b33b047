"""`tollgate statement`: an organization's statement for a period, from ClickHouse: the server at
TOLLGATE_CLICKHOUSE_URL, or the data directory's (the running `tollgate dev`'s server, a server
started on its files for the command when dev is not running, or an embedded store)."""

from __future__ import annotations

import sys

import msgspec

from eventlog.settings import Settings
from projections.statements import load_statement, statement_csv, statement_json
from schemas.moments import iso, utc_now
from tollgate.audit import period_arguments, require_organization
from tollgate.remote import CommandError
from tollgate.wiring import open_log, usage_store


def print_statement(settings: Settings, org_id: str, start: str, end: str | None, output: str) -> int:
    period = period_arguments(start, end or iso(utc_now()))
    # The log says whether the organization exists (a statement of zeros for a typo is a lie).
    log_here = not settings.embedded or (settings.data_dir / "log.sqlite3").exists()
    if log_here:
        log = open_log(settings, must_exist=True)
        try:
            require_organization(log, org_id)
        finally:
            log.close()
    with usage_store(settings) as store:
        if not log_here and not store.knows_organization(org_id):
            raise CommandError(f"no organization {org_id!r} has usage or ledger history in this store (check --org)")
        built = load_statement(store, org_id, *period)
    if output == "csv":
        sys.stdout.write(statement_csv(built))
    else:
        encoder = msgspec.json.Encoder(decimal_format="number")
        sys.stdout.write(encoder.encode(statement_json(built)).decode() + "\n")
    return 0
