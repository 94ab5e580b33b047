"""`tollgate`: one entry point per role, and the commands above all roles (argparse only).

tollgate dev        every role in one process on the embedded log, a ClickHouse server as its child,
                    and a demo organization
tollgate gateway    the HTTP gateway on Kafka
tollgate ledger     the ledger role on Kafka
tollgate worker     a worker for the pools in TOLLGATE_WORKER_POOLS on Kafka
tollgate projector  the ClickHouse projector on Kafka
tollgate audit      verify the ledger from the log alone (chain, signatures, balances, charges)
tollgate replay     rebuild projections from the log and compare them with the live ones
tollgate statement  an organization's statement for a period, as JSON or CSV, from ClickHouse
tollgate migrate    apply the ClickHouse schema migrations (once, before the roles, on a server)

A command that cannot go on prints one line saying why and what to do, and exits non-zero (2 for
a usage mistake); it never shows a traceback for a mistake a user can make.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

from eventlog.settings import Settings
from tollgate import __version__
from tollgate.remote import CommandError

logger = logging.getLogger("tollgate")


def _data_dir_option(parser: argparse.ArgumentParser, what: str = "where data lives") -> None:
    parser.add_argument("--data-dir", type=Path, help=f"{what} (TOLLGATE_DATA_DIR, default .tollgate)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tollgate", description="Event-sourced billing and metering ledger.")
    parser.add_argument("--version", action="version", version=f"tollgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dev = sub.add_parser(
        "dev",
        help="every role in one process (embedded log, a ClickHouse server as its child), with a demo organization",
    )
    dev.add_argument("--host", help="listen address (TOLLGATE_HOST, default 127.0.0.1)")
    dev.add_argument("--port", type=int, help="listen port (TOLLGATE_PORT, default 8000)")
    _data_dir_option(dev)
    gateway = sub.add_parser("gateway", help="the HTTP gateway on Kafka")
    gateway.add_argument("--host", help="listen address (TOLLGATE_HOST, default 127.0.0.1)")
    gateway.add_argument("--port", type=int, help="listen port (TOLLGATE_PORT, default 8000)")
    _data_dir_option(gateway, "where an embedded ClickHouse store lives")
    gateway.add_argument(
        "--projector",
        choices=("auto", "on", "off"),
        default="auto",
        help="run the ClickHouse projector in this process (auto: when TOLLGATE_CLICKHOUSE_URL is unset, "
        "since one process owns an embedded ClickHouse path)",
    )
    for role in ("ledger", "worker", "projector"):
        role_parser = sub.add_parser(role, help=f"the {role} role on Kafka")
        _data_dir_option(role_parser, "where the signing key and an embedded ClickHouse store live")
    statement = sub.add_parser("statement", help="an organization's statement for a period (JSON or CSV)")
    statement.add_argument("--org", required=True, help="the organization id (org_...)")
    statement.add_argument("--from", dest="start", required=True, help="period start, ISO 8601 (inclusive)")
    statement.add_argument("--to", dest="end", help="period end, ISO 8601 (exclusive; default: now)")
    statement.add_argument("--format", choices=("json", "csv"), default="json", help="output format (default json)")
    _data_dir_option(statement, "the data directory of `tollgate dev` (its ClickHouse server, running or not)")
    migrate = sub.add_parser("migrate", help="apply the ClickHouse schema migrations and exit")
    _data_dir_option(migrate, "the data directory of the embedded ClickHouse store")
    from tollgate import audit, replay

    audit.add_parsers(sub)
    replay.add_parser(sub)
    return parser


def settings_for(args: argparse.Namespace) -> Settings:
    settings = Settings()
    overrides = {
        name: value
        for name, value in (
            ("host", getattr(args, "host", None)),
            ("port", getattr(args, "port", None)),
            ("data_dir", getattr(args, "data_dir", None)),
        )
        if value is not None
    }
    settings = replace(settings, **overrides)
    if args.command in ("audit", "replay"):
        if getattr(args, "kafka", None):
            settings = replace(settings, kafka_bootstrap=args.kafka)
        elif args.data_dir is not None:
            settings = replace(settings, kafka_bootstrap="")
    if args.command == "dev":
        settings = replace(settings, kafka_bootstrap="", clickhouse_url="")
        if "TOLLGATE_SIM_KNOBS" not in os.environ:
            settings = replace(settings, sim_knobs=True)  # dev is the platform's own demo
        if "TOLLGATE_FILE_URL_PRIVATE_ALLOWED" not in os.environ:
            # On one machine, a file to transcribe is served from it (127.0.0.1).
            settings = replace(settings, file_url_private_allowed=True)
    return settings


def run(args: argparse.Namespace, settings: Settings) -> int:
    from tollgate import audit, replay, serve

    if args.command == "audit":
        return audit.run(args, settings)
    if args.command == "replay":
        return replay.replay(args, settings)
    if args.command == "statement":
        from tollgate.statement import print_statement

        return print_statement(settings, args.org, args.start, args.end, args.format)
    if args.command == "migrate":
        return migrate(settings)
    if args.command == "dev":
        serve.run_dev(settings)
    elif args.command == "gateway":
        serve.run_gateway(settings, {"auto": None, "on": True, "off": False}[args.projector])
    else:
        serve.run_role(args.command, settings)
    return 0


def migrate(settings: Settings) -> int:
    """Create the database TOLLGATE_CLICKHOUSE_URL names (if missing) and apply the missing migrations."""
    from tollgate.wiring import open_store

    if not settings.clickhouse_url:
        raise CommandError(
            "set TOLLGATE_CLICKHOUSE_URL to the ClickHouse server to migrate (an embedded store and the "
            "server of `tollgate dev` apply their migrations themselves when they open)",
            exit_code=2,
        )
    store = open_store(settings, migrate=True)
    try:
        print(f"ClickHouse schema at version {store.schema_version()} on {settings.clickhouse_url}")
    finally:
        store.close()
    return 0


def configure_logging(level: str, log_format: str = "text", command: str = "") -> None:
    """``level`` (``TOLLGATE_LOG_LEVEL``) for every logger of the process, ours and the libraries' (httpx
    and kafka-python log each request and group change at INFO). The gateway's Litestar app keeps this
    configuration: ``gateway.app`` gives it no logging config of its own, which would set the root
    logger to INFO. ``TOLLGATE_LOG_FORMAT=json`` writes one JSON object per line; every line names its
    role, and the request and organization it concerns when it concerns one (eventlog/logs.py)."""
    from eventlog import logs

    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise CommandError(f"TOLLGATE_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {level!r}", 2)
    if log_format not in ("text", "json"):
        raise CommandError(f"TOLLGATE_LOG_FORMAT must be text or json, not {log_format!r}", 2)
    role = command if command in ("dev", "gateway", "ledger", "worker", "projector") else ""
    logs.configure(level, log_format, role)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_for(args)
        configure_logging(settings.log_level, settings.log_format, args.command)
        sys.exit(run(args, settings))
    except CommandError as error:
        print(f"tollgate {args.command}: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
