"""Wiring: the one place that opens the log and the ClickHouse store and builds the roles.

The CLI uses it for each role's process and for ``tollgate dev`` (every role in one process); the
tests' stacks and the benchmarks use it too, so what they run is what production runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from eventlog import EventLog, topics
from eventlog.logs import bind_role
from eventlog.metrics import Metrics
from eventlog.settings import Settings
from gateway.core import GatewayCore
from ledger.chain import Signer, load_or_create_signing_key
from ledger.pricing import PriceBooks, default_price_book
from ledger.role import LedgerRole
from projections.role import ProjectorRole
from projections.usage import StoreUnavailable, UsageStore, create_database
from tollgate.clickhouse import server_directory, server_url_for
from tollgate.remote import CommandError
from workers.backends import Backend, SimulatedBackend
from workers.role import WorkerRole, worker_roles
from workers.upstream import UpstreamBackend, UpstreamConfigError, Upstreams

logger = logging.getLogger("tollgate")

role_join_s_max = 10.0  # how long closing a stack waits for each role thread


class WiringError(CommandError):
    """Something a role needs is missing or unreachable; the message says what to do."""


def open_log(settings: Settings, must_exist: bool = False) -> EventLog:
    """The Kafka log at ``TOLLGATE_KAFKA_BOOTSTRAP`` (topics created when missing), or the embedded
    log in the data directory (``must_exist``: a reader refuses to create an empty one)."""
    if settings.embedded:
        from eventlog.embedded import EmbeddedLog

        path = settings.data_dir / "log.sqlite3"
        if must_exist and not path.exists():
            raise WiringError(f"no embedded log at {path}: pass --data-dir (the one `tollgate dev` uses), or --kafka")
        return EmbeddedLog(path, partitions=topics.partitions_per_topic)
    from eventlog.kafka import KafkaLog

    log = KafkaLog(settings.kafka_bootstrap, partitions=topics.partitions_per_topic)
    if not must_exist:
        pools = tuple(sorted({p.pool for p in default_price_book().models.values()} | set(settings.worker_pools)))
        log.ensure_topics(topics.all_topics(pools))
    return log


def embedded_store_path(settings: Settings) -> Path:
    return settings.data_dir / "clickhouse"


def open_store(settings: Settings, migrate: bool = False) -> UsageStore:
    """The ClickHouse server at ``TOLLGATE_CLICKHOUSE_URL``, or the embedded engine in the data
    directory (which one process at a time may hold; migrated on open).

    A server's schema is applied by ``tollgate migrate`` (``migrate=True``: it creates the database
    too), once, before the roles start: several roles opening one server at once would race to apply
    a migration, so a role refuses a database that lacks one instead, saying so."""
    try:
        if not settings.clickhouse_url:
            return UsageStore(path=embedded_store_path(settings))
        if migrate:
            create_database(settings.clickhouse_url)
        store = UsageStore(url=settings.clickhouse_url, migrate=migrate)
        try:
            store.require_schema()
        except StoreUnavailable:
            store.close()
            raise
        return store
    except StoreUnavailable as error:
        raise WiringError(str(error)) from None


@contextlib.contextmanager
def usage_store(settings: Settings) -> Iterator[UsageStore]:
    """The usage store a command reads (``tollgate statement``): the server at
    ``TOLLGATE_CLICKHOUSE_URL``; else the data directory's: the server of the ``tollgate dev`` that runs
    on it, or, when none runs, one started on its files for the command's duration; else an embedded
    store there (``TOLLGATE_DEV_CLICKHOUSE=embedded``, or one an earlier version left)."""
    server_dir = server_directory(settings.data_dir)
    embedded = embedded_store_path(settings)
    if settings.clickhouse_url:
        found = open_store(settings)
    elif (server_dir / "db").is_dir() and not (settings.dev_clickhouse == "embedded" and embedded.is_dir()):
        with server_url_for(server_dir) as url:
            found = open_store(replace(settings, clickhouse_url=url))
            try:
                yield found
            finally:
                found.close()
        return
    elif embedded.is_dir():
        found = open_store(settings)
    else:
        raise WiringError(
            f"no usage store in {settings.data_dir}: pass --data-dir (the one `tollgate dev` uses), or set "
            "TOLLGATE_CLICKHOUSE_URL to the ClickHouse server the projector writes"
        )
    try:
        yield found
    finally:
        found.close()


def projector_group(settings: Settings, store: UsageStore) -> str:
    """Projectors writing one ClickHouse database share a group, the one made with the database (so a
    second database on the same log, or one made anew, is written from the log's beginning); an
    embedded store is one process's own, so its projector needs every partition, in a group named
    after the store's path."""
    if settings.clickhouse_url:
        return store.projector_group()
    path = str(embedded_store_path(settings).resolve())
    return f"tollgate-projector-{hashlib.sha256(path.encode()).hexdigest()[:12]}"


def signer(settings: Settings) -> Signer:
    return Signer(load_or_create_signing_key(settings.signing_key_path))


def upstreams(settings: Settings) -> Upstreams:
    """Each pool's upstream (``TOLLGATE_UPSTREAMS``) and the default (``TOLLGATE_UPSTREAM_URL``)."""
    try:
        return Upstreams.from_settings(
            settings.upstreams,
            url=settings.upstream_url,
            api_key=settings.upstream_api_key,
            timeout_s=settings.upstream_timeout_s,
            connect_timeout_s=settings.upstream_connect_timeout_s,
            calls_in_flight_max=settings.upstream_calls_in_flight_max,
            stream_logprobs=settings.upstream_stream_logprobs,
            tokenizers_json=settings.upstream_tokenizers,
        )
    except UpstreamConfigError as error:
        raise WiringError(str(error)) from None


def backend(settings: Settings) -> Backend:
    """The upstreams of the pools (``TOLLGATE_UPSTREAMS``, ``TOLLGATE_UPSTREAM_URL``), or the
    simulated backend when none is set."""
    configured = upstreams(settings)
    if configured:
        return UpstreamBackend(configured)
    return SimulatedBackend(
        settings.sim_latency_ms, settings.sim_token_ms, settings.sim_video_second_ms, knobs=settings.sim_knobs
    )


@dataclass
class Stack:
    """Roles of Tollgate running in this process, on one log: any of the ledger, the workers of
    every pool, the projector and a gateway core. ``tollgate dev`` runs all of them (and serves the
    core with Granian); each Kafka role's process runs one; the tests and benchmarks build theirs
    here too. Role threads stop together: one that fails sets ``stop`` for all."""

    settings: Settings
    log: EventLog
    stop: threading.Event = field(default_factory=threading.Event)
    store: UsageStore | None = None
    core: GatewayCore | None = None
    threads: list[threading.Thread] = field(default_factory=list)
    ledger: LedgerRole | None = None
    workers: list[WorkerRole] = field(default_factory=list)
    projector: ProjectorRole | None = None
    # Every role of the stack reports to one registry: `tollgate dev` serves them all on /metrics.
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        self.metrics.live_stall_s_max = self.settings.live_stall_s_max
        self.metrics.ready_lag_records_max = self.settings.ready_lag_records_max

    def run_in_thread(self, name: str, target: Callable[[threading.Event], None]) -> threading.Thread:
        def run() -> None:
            bind_role(name.split("-")[0])  # "worker-default" works for the worker role
            try:
                target(self.stop)
            except Exception:
                logger.exception("%s stopped with an error", name)
                self.stop.set()

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)
        return thread

    def start_ledger(self, prices: PriceBooks | None = None, signed: bool = True) -> LedgerRole:
        role = LedgerRole(
            self.log,
            self.settings,
            prices or PriceBooks(default_price_book()),
            signer=signer(self.settings) if signed else None,
            metrics=self.metrics,
        )
        self.ledger = role
        self.run_in_thread("ledger", role.run)
        return role

    def start_workers(self, make_backend: Callable[[], Backend] | None = None) -> list[WorkerRole]:
        roles = worker_roles(self.log, self.settings, make_backend or (lambda: backend(self.settings)), self.metrics)
        for role in roles:
            self.run_in_thread(f"worker-{role.pool}", role.run)
        self.workers += roles
        return roles

    def open_store(self) -> UsageStore:
        if self.store is None:
            self.store = open_store(self.settings)
        return self.store

    def start_projector(self, group: str | None = None) -> ProjectorRole:
        store = self.open_store()
        group = group or projector_group(self.settings, store)
        role = ProjectorRole(self.log, self.settings, store, group, self.metrics)
        self.projector = role
        self.run_in_thread("projector", role.run)
        return role

    def start_gateway(self, admin_token: str, prices: PriceBooks | None = None) -> GatewayCore:
        """The gateway's core (read models folded from the log, its producer and waiters), caught up
        with the log; serve it with ``gateway.app.create_app``."""
        core = GatewayCore(
            self.log, self.settings, prices or PriceBooks(default_price_book()), self.store, admin_token, self.metrics
        )
        bind_role("gateway")  # the followers it starts inherit this thread's context, and so the role
        core.start()
        self.core = core
        return core

    def close(self) -> None:
        """Stop every role, then close the store and the log (in that order: roles still write)."""
        self.stop.set()
        if self.core is not None:
            self.core.stop()
        for thread in self.threads:
            thread.join(timeout=role_join_s_max)
        if self.store is not None:
            self.store.close()
        self.log.close()
