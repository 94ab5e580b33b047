"""`tollgate`: one entry point per role, each wiring its own dependencies.

tollgate dev        all roles in one process on the embedded backends, with a demo organization
tollgate gateway    the HTTP gateway on Kafka
tollgate ledger     the ledger role on Kafka
tollgate worker     a worker for the pools in TOLLGATE_WORKER_POOLS on Kafka
tollgate projector  the ClickHouse projector on Kafka
tollgate audit      verify the ledger from the log alone (chain, signatures, balances, charges)
tollgate replay     rebuild projections from the log and compare them with the live ones
tollgate statement  an organization's statement for a period, as JSON or CSV, from ClickHouse
tollgate migrate    apply the ClickHouse schema migrations (once, before the roles, on a server)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import secrets
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from eventlog import EventLog, topics
from eventlog.settings import Settings
from ledger.pricing import PriceBooks, default_price_book

logger = logging.getLogger("tollgate")


def _open_log(settings: Settings) -> EventLog:
    if settings.embedded:
        from eventlog.embedded import EmbeddedLog

        return EmbeddedLog(settings.data_dir / "log.sqlite3", partitions=topics.partitions_per_topic)
    from eventlog.kafka import KafkaLog

    log = KafkaLog(settings.kafka_bootstrap, partitions=topics.partitions_per_topic)
    pools = tuple(sorted({p.pool for p in default_price_book().models.values()} | set(settings.worker_pools)))
    log.ensure_topics(topics.all_topics(pools))
    return log


def _usage_store(settings: Settings) -> Any:
    from projections.usage_store import UsageStore

    return UsageStore(url=settings.clickhouse_url, path=settings.data_dir / "clickhouse")


def _projector_group(settings: Settings) -> str:
    """Projectors writing one ClickHouse server share a group; an embedded store is one process's own,
    so its projector needs every partition, in a group named after the store's path."""
    if settings.clickhouse_url:
        return "tollgate-projector"
    path = str((settings.data_dir / "clickhouse").resolve())
    return f"tollgate-projector-{hashlib.sha256(path.encode()).hexdigest()[:12]}"


def _signer(settings: Settings) -> Any:
    from ledger.chain import Signer, load_or_create_signing_key

    return Signer(load_or_create_signing_key(settings.signing_key_path))


def _backend(settings: Settings) -> Any:
    from workers.backends import SimulatedBackend, UpstreamChatBackend

    if settings.upstream_url:
        return UpstreamChatBackend(settings.upstream_url, settings.upstream_api_key)
    return SimulatedBackend(settings.sim_latency_ms, settings.sim_token_ms, settings.sim_video_second_ms)


def _start_thread(name: str, target: Any, stop: threading.Event) -> threading.Thread:
    def run() -> None:
        try:
            target(stop)
        except Exception:
            logger.exception("%s stopped with an error", name)
            stop.set()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def _install_signal_handlers(stop: threading.Event, on_stop: Any = None) -> None:
    def handle(signum: int, frame: Any) -> None:
        stop.set()
        if on_stop is not None:
            on_stop()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def run_role(role: str, settings: Settings) -> None:
    """A Kafka role in the foreground until SIGINT/SIGTERM."""
    if settings.embedded:
        sys.exit(f"tollgate {role} needs Kafka: set TOLLGATE_KAFKA_BOOTSTRAP (or use `tollgate dev`).")
    stop = threading.Event()
    _install_signal_handlers(stop)
    log = _open_log(settings)
    price_book = default_price_book()
    if role == "ledger":
        from ledger.role import LedgerRole

        LedgerRole(log, settings, price_book, signer=_signer(settings)).run(stop)
    elif role == "worker":
        from workers.role import worker_roles

        roles = worker_roles(log, settings, lambda: _backend(settings))
        workers = [_start_thread(f"worker-{role.pool}", role.run, stop) for role in roles[1:]]
        roles[0].run(stop)
        for thread in workers:
            thread.join()
    elif role == "projector":
        from projections.role import ProjectorRole

        store = _usage_store(settings)
        try:
            ProjectorRole(log, settings, store, _projector_group(settings)).run(stop)
        finally:
            store.close()


def print_statement(settings: Settings, org_id: str, start: str, end: str, output: str) -> None:
    """A statement from ClickHouse (the server, or the embedded path, which no other process may hold)."""
    from datetime import UTC, datetime

    from projections.statements import load_statement, statement_csv, statement_json

    def moment(value: str) -> datetime:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

    try:
        period = moment(start), moment(end)
    except ValueError:
        sys.exit("--from and --to take ISO 8601 date-times, e.g. 2026-11-01T00:00:00Z.")
    if not period[0] < period[1]:
        sys.exit("--from must be before --to.")
    store = _usage_store(settings)
    try:
        built = load_statement(store, org_id, *period)
    finally:
        store.close()
    if output == "csv":
        sys.stdout.write(statement_csv(built))
    else:
        import msgspec

        encoder = msgspec.json.Encoder(decimal_format="number")
        sys.stdout.write(encoder.encode(statement_json(built)).decode() + "\n")


async def _serve(core: Any, settings: Settings, stop: threading.Event, before_serving: Any = None) -> None:
    from granian.constants import Interfaces
    from granian.server.embed import Server

    from gateway.app import create_app

    server = Server(
        create_app(core), address=settings.host, port=settings.port, interface=Interfaces.ASGI, log_access=False
    )
    loop = asyncio.get_running_loop()

    def watch_stop() -> None:
        stop.wait()
        loop.call_soon_threadsafe(server.stop)

    threading.Thread(target=watch_stop, name="stop-watch", daemon=True).start()
    serving = asyncio.create_task(server.serve())
    if before_serving is not None:
        await before_serving()
    await serving


def run_gateway(settings: Settings, with_projector: bool | None, with_roles: bool = False) -> None:
    """The gateway; ``with_roles`` also runs ledger, worker and projector in this process (dev)."""
    from gateway.core import GatewayCore

    stop = threading.Event()
    _install_signal_handlers(stop)
    log = _open_log(settings)
    price_book = default_price_book()
    admin_token = settings.admin_token or "tga_" + secrets.token_urlsafe(24)
    own_clickhouse = with_projector if with_projector is not None else not settings.clickhouse_url
    store = _usage_store(settings) if (own_clickhouse or settings.clickhouse_url) else None
    threads = []
    if with_roles:
        from ledger.role import LedgerRole
        from workers.role import worker_roles

        ledger_role = LedgerRole(log, settings, price_book, signer=_signer(settings))
        threads.append(_start_thread("ledger", ledger_role.run, stop))
        for worker in worker_roles(log, settings, lambda: _backend(settings)):
            threads.append(_start_thread(f"worker-{worker.pool}", worker.run, stop))
    if own_clickhouse and store is not None:
        from projections.role import ProjectorRole

        threads.append(
            _start_thread("projector", ProjectorRole(log, settings, store, _projector_group(settings)).run, stop)
        )
    core = GatewayCore(log, settings, PriceBooks(price_book), store, admin_token)
    core.start()

    async def announce() -> None:
        if with_roles:
            demo = await _ensure_demo(core, settings.data_dir)
            _print_banner(settings, admin_token, demo)
        else:
            print(f"tollgate gateway listening on http://{settings.host}:{settings.port}", flush=True)
            if not settings.admin_token:
                print(f"  admin token (generated): {admin_token}", flush=True)

    try:
        asyncio.run(_serve(core, settings, stop, announce))
    finally:
        stop.set()
        core.stop()
        for thread in threads:
            thread.join(timeout=10)
        if store is not None:
            store.close()
        log.close()


async def _ensure_demo(core: Any, data_dir: Path) -> dict[str, str]:
    """A demo organization with credits and a key, created once and kept in the data directory."""
    from schemas.commands import GrantCredits
    from schemas.ids import new_id
    from schemas.moments import utc_now

    demo_file = data_dir / "demo.json"
    if demo_file.exists():
        demo: dict[str, str] = json.loads(demo_file.read_text())
        if demo.get("org_id") in core.tenants.organizations:
            return demo
    org = await core.create_organization("Demo organization", "pro")
    await core.ledger_command(
        GrantCredits(
            command_id=new_id("grant"),
            org_id=org.org_id,
            issued_at=utc_now(),
            grant_id=new_id("grant"),
            amount_micros=100_000_000,
            kind="promo",
        )
    )
    _, secret = await core.create_token(org.org_id, "demo key", ["user:read", "user:write"])
    demo = {"org_id": org.org_id, "api_key": secret}
    demo_file.write_text(json.dumps(demo))
    os.chmod(demo_file, 0o600)
    return demo


def _print_banner(settings: Settings, admin_token: str, demo: dict[str, str]) -> None:
    url = f"http://{settings.host}:{settings.port}"
    print(
        f"""
Tollgate is running at {url}  (embedded log and ClickHouse in {settings.data_dir})
  admin token:       {admin_token}
  demo organization: {demo["org_id"]}
  demo API key:      {demo["api_key"]}

Try it:
  curl -s {url}/v1/chat/completions \\
    -H "Authorization: Bearer {demo["api_key"]}" -H "Content-Type: application/json" \\
    -d '{{"model": "sim-chat-small", "messages": [{{"role": "user", "content": "Hello!"}}]}}'
  curl -s {url}/v1/account/usage -H "Authorization: Bearer {demo["api_key"]}"
""",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tollgate", description="Event-sourced billing and metering ledger.")
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="all roles in one process on the embedded backends")
    dev.add_argument("--host", help="listen address (TOLLGATE_HOST, default 127.0.0.1)")
    dev.add_argument("--port", type=int, help="listen port (TOLLGATE_PORT, default 8000)")
    dev.add_argument("--data-dir", type=Path, help="where data lives (TOLLGATE_DATA_DIR, default .tollgate)")
    gateway = sub.add_parser("gateway", help="the HTTP gateway on Kafka")
    gateway.add_argument("--host")
    gateway.add_argument("--port", type=int)
    gateway.add_argument("--data-dir", type=Path)
    gateway.add_argument(
        "--projector",
        choices=("auto", "on", "off"),
        default="auto",
        help="run the ClickHouse projector in this process (auto: when TOLLGATE_CLICKHOUSE_URL is unset, "
        "since one process owns an embedded ClickHouse path)",
    )
    for role in ("ledger", "worker", "projector"):
        role_parser = sub.add_parser(role, help=f"the {role} role on Kafka")
        role_parser.add_argument("--data-dir", type=Path)
    statement = sub.add_parser("statement", help="an organization's statement for a period (JSON or CSV)")
    statement.add_argument("--org", required=True, help="organization id")
    statement.add_argument("--from", dest="start", required=True, help="period start, ISO 8601 (inclusive)")
    statement.add_argument("--to", dest="end", required=True, help="period end, ISO 8601 (exclusive)")
    statement.add_argument("--format", choices=("json", "csv"), default="json")
    statement.add_argument("--data-dir", type=Path)
    migrate = sub.add_parser("migrate", help="apply the ClickHouse schema migrations and exit")
    migrate.add_argument("--data-dir", type=Path)
    from ledger import audit_cli, replay_cli

    audit_cli.add_parsers(sub)
    replay_cli.add_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("TOLLGATE_LOG_LEVEL", "WARNING"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings()
    overrides = {
        k: v
        for k, v in (
            ("host", getattr(args, "host", None)),
            ("port", getattr(args, "port", None)),
            ("data_dir", getattr(args, "data_dir", None)),
        )
        if v is not None
    }
    settings = replace(settings, **overrides)
    if args.command in ("audit", "replay"):
        if args.kafka:
            settings = replace(settings, kafka_bootstrap=args.kafka)
        elif args.data_dir is not None:
            settings = replace(settings, kafka_bootstrap="")
        sys.exit(audit_cli.run(args, settings) if args.command == "audit" else replay_cli.replay(args, settings))
    if args.command == "dev":
        settings = replace(settings, kafka_bootstrap="", clickhouse_url="")
        run_gateway(settings, with_projector=True, with_roles=True)
    elif args.command == "gateway":
        if settings.embedded:
            sys.exit("tollgate gateway needs Kafka: set TOLLGATE_KAFKA_BOOTSTRAP (or use `tollgate dev`).")
        run_gateway(settings, with_projector={"auto": None, "on": True, "off": False}[args.projector])
    elif args.command == "migrate":
        store = _usage_store(settings)  # opening applies what is missing
        print(f"ClickHouse schema at version {store.schema_version()}")
        store.close()
    elif args.command == "statement":
        print_statement(settings, args.org, args.start, args.end, args.format)
    else:
        run_role(args.command, settings)


if __name__ == "__main__":
    main()
