"""Running roles in the foreground: one Kafka role per process, the gateway served by Granian, and
``tollgate dev`` (every role in one process on the embedded log, a ClickHouse server as its child,
and a demo organization)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import json
import logging
import os
import secrets
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import replace
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

from eventlog import loops
from eventlog.metrics import serve_metrics
from eventlog.settings import Settings
from gateway.app import create_app
from gateway.core import GatewayCore
from schemas.commands import GrantCredits
from schemas.ids import new_id
from schemas.moments import utc_now
from tollgate.clickhouse import ClickHouseServer, server_directory
from tollgate.remote import CommandError
from tollgate.wiring import Stack, embedded_store_path, open_log, open_store

logger = logging.getLogger("tollgate")

demo_credits_micros = 100_000_000  # 100 promotional credits for the demo organization
admin_token_file = "admin-token"
full_collection_spacing = 100  # full (oldest generation) collections a hundredth as often as Python's default


def install_signal_handlers(stop: threading.Event) -> None:
    def handle(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def require_kafka(settings: Settings, role: str) -> None:
    if settings.embedded:
        raise CommandError(
            f"tollgate {role} needs Kafka: set TOLLGATE_KAFKA_BOOTSTRAP (or run every role at once: `tollgate dev`)",
            exit_code=2,
        )


def serve_role_metrics(stack: Stack, role: str) -> ThreadingHTTPServer | None:
    """The role's /metrics, /livez and /readyz on ``TOLLGATE_METRICS_PORT`` (none when unset)."""
    settings = stack.settings
    if not settings.metrics_port.strip():
        return None
    try:
        port = int(settings.metrics_port)
        server = serve_metrics(stack.metrics, settings.metrics_host, port)
    except ValueError:
        raise CommandError(
            f"TOLLGATE_METRICS_PORT must be a port number (0: any free port), not {settings.metrics_port!r}", 2
        ) from None
    except OSError as error:
        raise CommandError(
            f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port} ({error.strerror}): another "
            "role on this host may use it; give each its own TOLLGATE_METRICS_PORT (0: any free port)"
        ) from None
    print(
        f"tollgate {role}: metrics on http://{settings.metrics_host}:{server.server_port}/metrics "
        "(and /livez, /readyz)",
        flush=True,
    )
    return server


def run_role(role: str, settings: Settings) -> None:
    """The ledger, the workers or the projector on Kafka, until SIGINT or SIGTERM."""
    require_kafka(settings, role)
    if role == "projector" and not settings.clickhouse_url:
        raise CommandError(
            "tollgate projector writes a ClickHouse server: set TOLLGATE_CLICKHOUSE_URL (compose/clickhouse.sh "
            "start runs one; then `tollgate migrate`). Without a server, `tollgate gateway` projects into an "
            "embedded store of its own.",
            exit_code=2,
        )
    stack = Stack(settings, open_log(settings))
    install_signal_handlers(stack.stop)
    listener = None
    try:
        listener = serve_role_metrics(stack, role)
        if role == "ledger":
            stack.start_ledger()
        elif role == "worker":
            stack.start_workers()
        else:
            stack.start_projector()
        settle_garbage_collector()
        stack.stop.wait()
    finally:
        if listener is not None:
            listener.shutdown()
        stack.close()


async def serve(
    core: GatewayCore, settings: Settings, stop: threading.Event, announce: Callable[[], Coroutine[Any, Any, None]]
) -> None:
    from granian.constants import Interfaces
    from granian.log import LogLevels
    from granian.server.embed import Server

    server = Server(
        create_app(core),
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        log_access=False,
        # Granian's logger at TOLLGATE_LOG_LEVEL, through the process's handler (tollgate/cli.py).
        log_level=LogLevels(settings.log_level.lower()),
        log_dictconfig={"loggers": {"_granian": {"level": settings.log_level, "handlers": [], "propagate": True}}},
    )
    logging.getLogger("_granian").addFilter(drop_embedded_notice)
    loop = asyncio.get_running_loop()

    def watch_stop() -> None:
        stop.wait()
        loop.call_soon_threadsafe(server.stop)

    threading.Thread(target=watch_stop, name="stop-watch", daemon=True).start()
    serving = asyncio.create_task(server.serve())
    # A stop while announcing (the demo organization is made through the log) must not wait for it.
    announcing = asyncio.create_task(announce())
    await asyncio.wait({serving, announcing}, return_when=asyncio.FIRST_COMPLETED)
    if not announcing.done():
        announcing.cancel()
    elif announcing.exception() is not None:
        stop.set()
        await serving
        raise CommandError(f"could not start: {announcing.exception()}")
    await serving


def settle_garbage_collector() -> None:
    """Once a process has started (its read models folded from the log), keep Python's cyclic
    collector from pausing its requests: what startup built is frozen out of every collection, and
    full collections come a hundredth as often. Each pause walks every tracked object; in ``tollgate dev``
    they held streams up to 100-170 ms (tests/e2e/test_upstream_streams.py), with the collector off
    never over 50. Memory is reference-counted either way; only cycles wait longer."""
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old * full_collection_spacing)


def drop_embedded_notice(record: logging.LogRecord) -> bool:
    """Granian warns "Embedded server is experimental!" at every start of its embedded server, which
    is how every Tollgate gateway serves: a line in every start's output that asks nothing of the user."""
    return not record.getMessage().startswith("Embedded server is experimental")


def run_gateway(settings: Settings, projector: bool | None) -> None:
    """The gateway on Kafka. ``projector`` None: host one when there is no ClickHouse server (one
    process owns an embedded ClickHouse path, so the gateway writes the store it reads)."""
    require_kafka(settings, "gateway")
    admin_token = settings.admin_token or "tga_" + secrets.token_urlsafe(24)
    stack = Stack(settings, open_log(settings))
    install_signal_handlers(stack.stop)
    own_store = projector if projector is not None else not settings.clickhouse_url
    try:
        if own_store or settings.clickhouse_url:
            stack.open_store()
        if own_store:
            stack.start_projector()
        core = stack.start_gateway(admin_token)

        async def announce() -> None:
            settle_garbage_collector()
            print(f"tollgate gateway listening on http://{settings.host}:{settings.port}", flush=True)
            if not settings.admin_token:
                print(f"  admin token (generated): {admin_token}", flush=True)

        loops.run(serve(core, settings, stack.stop, announce))
    finally:
        stack.close()


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """One ``tollgate dev`` per data directory: a second one would fight the first over the embedded
    log and ClickHouse files. An advisory lock, released when the process ends however it ends."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "dev.lock"
    handle: IO[str] = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise CommandError(
            f"the data directory {data_dir} is in use by another tollgate dev (pid {holder}); stop it, "
            "or pass --data-dir for a second one"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        handle.close()


def dev_admin_token(settings: Settings) -> str:
    """``TOLLGATE_ADMIN_TOKEN``, or the one kept in the data directory (made once), so the token
    stays the same across restarts like the demo organization and key do."""
    if settings.admin_token:
        return settings.admin_token
    path = settings.data_dir / admin_token_file
    if path.exists():
        return path.read_text().strip()
    token = "tga_" + secrets.token_urlsafe(24)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


def run_dev(settings: Settings) -> None:
    """Every role in this process on the embedded log, with a demo organization; ClickHouse is a server
    of its own (a child process, stopped with dev) unless TOLLGATE_DEV_CLICKHOUSE=embedded."""
    if settings.dev_clickhouse not in ("server", "embedded"):
        raise CommandError(f"TOLLGATE_DEV_CLICKHOUSE must be server or embedded, not {settings.dev_clickhouse!r}", 2)
    with data_dir_lock(settings.data_dir):
        admin_token = dev_admin_token(settings)
        stop = threading.Event()
        install_signal_handlers(stop)  # before the server starts: a stop while it starts stops it too
        server = start_dev_clickhouse(settings) if settings.dev_clickhouse == "server" else None
        try:
            if server is not None:
                settings = replace(settings, clickhouse_url=server.url)
            run_dev_stack(settings, admin_token, stop, server)
        finally:
            if server is not None:
                server.stop()  # after the stack: the projector has flushed into it


def start_dev_clickhouse(settings: Settings) -> ClickHouseServer:
    """dev's ClickHouse server, in data_dir/clickhouse-server, on TOLLGATE_DEV_CLICKHOUSE_HTTP_PORT."""
    port = settings.dev_clickhouse_http_port
    if port and port_in_use(port):
        raise CommandError(
            f"port {port} (for dev's ClickHouse server) is in use, by another ClickHouse or tollgate dev? "
            "Stop it, or set TOLLGATE_DEV_CLICKHOUSE_HTTP_PORT to another port (0: any free one)."
        )
    return ClickHouseServer(server_directory(settings.data_dir), port, settings.dev_clickhouse_tcp_port)


def port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def dev_projector_group(settings: Settings) -> str:
    """dev's projector group, one per ClickHouse server directory (the name is kept in it): a server
    directory made anew (deleted, or the first after the embedded store of an earlier version) gets a
    group without positions, so its projector rebuilds every usage row from the log."""
    path = server_directory(settings.data_dir) / "projector-group"
    if not path.exists():
        path.write_text(f"tollgate-projector-dev-{uuid.uuid4().hex[:12]}\n")
    return path.read_text().strip()


def watch_server(server: ClickHouseServer, stop: threading.Event) -> None:
    """Stop dev (with the reason) if its ClickHouse server ends while dev runs."""
    while not stop.wait(1.0):
        if not server.alive():
            logger.error(
                "the ClickHouse server stopped (%s); dev stops too:\n%s", server.process.returncode, server.log_tail()
            )
            stop.set()


def run_dev_stack(settings: Settings, admin_token: str, stop: threading.Event, server: ClickHouseServer | None) -> None:
    stack = Stack(settings, open_log(settings), stop=stop)
    try:
        stack.store = open_store(settings, migrate=True)  # dev is the only process on its server
        stack.start_ledger()
        stack.start_workers()
        stack.start_projector(dev_projector_group(settings) if server is not None else None)
        if server is not None:
            threading.Thread(target=watch_server, args=(server, stop), name="clickhouse-watch", daemon=True).start()
        core = stack.start_gateway(admin_token)

        async def announce() -> None:
            demo = await ensure_demo(core, settings.data_dir)
            settle_garbage_collector()
            print_banner(settings, admin_token, demo, server)

        loops.run(serve(core, settings, stack.stop, announce))
    finally:
        stack.close()


async def ensure_demo(core: GatewayCore, data_dir: Path) -> dict[str, str]:
    """A demo organization with credits and a key, created once and kept in the data directory."""
    demo_file = data_dir / "demo.json"
    if demo_file.exists():
        demo: dict[str, str] = json.loads(demo_file.read_text())
        if demo.get("org_id") in core.tenants.organizations:
            return demo
    org = await core.create_organization("Demo organization", "pro")
    grant_id = new_id("grant")
    await core.ledger_command(
        GrantCredits(
            command_id=grant_id,
            org_id=org.org_id,
            issued_at=utc_now(),
            grant_id=grant_id,
            amount_micros=demo_credits_micros,
            kind="promo",
        )
    )
    _, secret = await core.create_token(org.org_id, "demo key", ["user:read", "user:write"])
    demo = {"org_id": org.org_id, "api_key": secret}
    demo_file.write_text(json.dumps(demo))
    demo_file.chmod(0o600)
    return demo


def print_banner(settings: Settings, admin_token: str, demo: dict[str, str], server: ClickHouseServer | None) -> None:
    url = f"http://{settings.host}:{settings.port}"
    if server is not None:
        clickhouse = (
            f"  ClickHouse:        {server.url}  (native protocol 127.0.0.1:{server.tcp_port}; a server run by"
            f" this process, data in {server.directory})"
        )
    else:
        clickhouse = f"  ClickHouse:        embedded in this process, in {embedded_store_path(settings)}"
    old_store = embedded_store_path(settings)
    note = ""
    if server is not None and old_store.is_dir():
        note = (
            f"\n  note: {old_store} (the embedded ClickHouse of an earlier version) is no longer used: usage was"
            " rebuilt from the log\n  into the server above. Delete it, or set TOLLGATE_DEV_CLICKHOUSE=embedded"
            " to keep using it.\n"
        )
    print(
        f"""
Tollgate is running at {url}  (embedded log in {settings.data_dir})
{clickhouse}
  admin token:       {admin_token}
  demo organization: {demo["org_id"]}
  demo API key:      {demo["api_key"]}
{note}
For the README's commands:
  export TOLLGATE_ADMIN_TOKEN={admin_token} ORG={demo["org_id"]}

Try it:
  curl -s {url}/v1/chat/completions \\
    -H "Authorization: Bearer {demo["api_key"]}" -H "Content-Type: application/json" \\
    -d '{{"model": "sim-chat-small", "messages": [{{"role": "user", "content": "Hello!"}}]}}'
  curl -s {url}/v1/account/usage -H "Authorization: Bearer {demo["api_key"]}"
""",
        flush=True,
    )
