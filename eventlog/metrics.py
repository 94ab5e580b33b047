"""What an operator sees of a running Tollgate: Prometheus series, and each role's liveness and readiness.

One ``Metrics`` per process (``tollgate dev``: every role in it; a Kafka role's process: that role),
with its own registry: the families are made here once, and each role binds the children it updates
(``labels(...)`` once, ``inc()`` or ``observe()`` per event: a lock prometheus-client takes, nothing
more on a request's path). Gauges of state a role already keeps (open holds, jobs running, lag) are
refreshed by the role's own loop at most once per ``gauges_refresh_s``, or read at scrape time.

Names follow Prometheus conventions (``tollgate_`` prefix, base units, ``_total`` counters,
``_seconds`` and ``_micros`` units) and labels are bounded sets: routes, commands, result codes,
pools, topics and partitions; never an organization, key, request or job id.

Liveness and readiness (``RoleHealth``): a role is live while each of its loops has turned within
``TOLLGATE_LIVE_STALL_S_MAX``, and ready while it is live and each of its consumers is within
``TOLLGATE_READY_LAG_RECORDS_MAX`` records of the end of the log. ``serve_metrics`` is the small
HTTP listener of the ledger, worker and projector processes (``/metrics``, ``/livez``, ``/readyz``);
the gateway serves the same paths on its own port.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from eventlog import LogUnavailable

logger = logging.getLogger(__name__)

gauges_refresh_s = 1.0  # how often a role's loop recomputes the gauges of its own state (and its lag)

# Seconds: the gateway adds about a millisecond to a request; the 99th percentile under load tens.
added_seconds_buckets = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
insert_seconds_buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
visible_seconds_buckets = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
batch_rows_buckets = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

TopicPartition = tuple[str, int]


class Every:
    """True once per ``interval_s`` (a loop's cheap question: is it time to refresh?)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._next = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.interval_s
        return True


@dataclass(slots=True)
class _Source:
    """One loop of a role (a consumer, or a loop with no log): when it last turned, how far behind."""

    beat_at: float = field(default_factory=time.monotonic)
    lag_records: int | None = None  # None: not measured yet (still starting, rebuilding)


class RoleHealth:
    """A role's loops report here; ``live`` and ``ready`` answer for the role."""

    def __init__(self, role: str) -> None:
        self.role = role
        self._sources: dict[str, _Source] = {}

    def beat(self, source: str, lag_records: int | None = None) -> None:
        """The loop ``source`` turned (and, when measured, is ``lag_records`` behind the log)."""
        entry = self._sources.get(source)
        if entry is None:
            entry = self._sources[source] = _Source()
        entry.beat_at = time.monotonic()
        if lag_records is not None:
            entry.lag_records = lag_records

    def stalled(self, source: str) -> None:
        """The loop is busy with something long and known (a rebuild): live, not ready."""
        self.beat(source)
        self._sources[source].lag_records = None

    def status(self, stall_s_max: float, lag_records_max: int) -> dict[str, Any]:
        now = time.monotonic()
        sources = {}
        live = ready = bool(self._sources)
        for name, entry in list(self._sources.items()):
            idle_s = now - entry.beat_at
            source_live = idle_s <= stall_s_max
            source_ready = source_live and entry.lag_records is not None and entry.lag_records <= lag_records_max
            live, ready = live and source_live, ready and source_ready
            sources[name] = {
                "live": source_live,
                "ready": source_ready,
                "lag_records": entry.lag_records,
                "idle_s": round(idle_s, 3),
            }
        return {"role": self.role, "live": live, "ready": ready, "sources": sources}


class LagReporter:
    """A consumer's lag per partition as ``tollgate_consumer_lag_records``, and its role's heartbeat.
    Call ``tick`` every turn of the loop that polls the consumer (the thread that owns it: Kafka
    consumers are not thread-safe); it measures at most once per ``gauges_refresh_s``."""

    def __init__(self, metrics: Metrics, role: str, source: str) -> None:
        self._gauge = metrics.consumer_lag
        self._role = role
        self._health = metrics.health(role)
        self._source = source
        self._every = Every(gauges_refresh_s)
        self._children: dict[TopicPartition, Any] = {}
        self.lag_records = 0
        self._health.stalled(source)  # live from the start, ready once measured within the bound

    def tick(self, lags: Callable[[], Mapping[TopicPartition, int]]) -> None:
        if not self._every.due():
            return
        try:
            measured = lags()
        except Exception as error:
            # A gauge must never end the reader it measures (the caller is a follower's, a worker's or
            # the ledger's loop): the role shows not ready until a later measurement works, and goes
            # on reading. LogUnavailable (the broker cannot say during a failover) is expected; anything
            # else is logged.
            if not isinstance(error, LogUnavailable):
                logger.warning("could not measure the lag of %s/%s", self._role, self._source, exc_info=True)
            self._health.stalled(self._source)
            return
        for tp, lag in measured.items():
            child = self._children.get(tp)
            if child is None:
                child = self._children[tp] = self._gauge.labels(self._role, tp[0], str(tp[1]))
            child.set(lag)
        self.lag_records = sum(measured.values())
        self._health.beat(self._source, self.lag_records)

    def stalled(self) -> None:
        self._health.stalled(self._source)


class _CheckpointAges:
    """``tollgate_ledger_checkpoint_age_seconds``: computed when scraped, so a ledger that stopped
    signing shows a growing age even if its loop is stuck."""

    def __init__(self) -> None:
        self.signed_at: dict[int, float] = {}  # partition -> wall-clock time of its last checkpoint

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "tollgate_ledger_checkpoint_age_seconds",
            "Seconds since the last signed checkpoint of each ledger partition this ledger owns.",
            labels=["partition"],
        )
        now = time.time()
        for partition, at in sorted(list(self.signed_at.items())):
            family.add_metric([str(partition)], max(now - at, 0.0))
        yield family


class Metrics:
    """Every series of one process, in its own registry (see the module docstring)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._health: dict[str, RoleHealth] = {}
        self._lock = threading.Lock()
        r = self.registry
        # --- gateway ---
        self.http_requests = Counter(
            "tollgate_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.gateway_added_seconds = Histogram(
            "tollgate_gateway_added_seconds",
            "Time a metered request spent in the gateway and the log beyond its job's own run (sync answers).",
            ["endpoint"],
            buckets=added_seconds_buckets,
            registry=r,
        )
        self.payment_required = Counter(
            "tollgate_payment_required",
            "Requests refused with 402 (the balance could not cover them), by route template.",
            ["route"],
            registry=r,
        )
        self.idempotent_replays = Counter(
            "tollgate_idempotent_replays",
            "Answers replayed for a repeated Idempotency-Key, by route template.",
            ["route"],
            registry=r,
        )
        # --- ledger ---
        self.ledger_decisions = Counter(
            "tollgate_ledger_decisions",
            "Commands the ledger decided, by command type and result (accepted, or the rejection code).",
            ["command", "result"],
            registry=r,
        )
        self.ledger_open_holds = Gauge(
            "tollgate_ledger_open_holds", "Holds placed and not yet captured or released.", ["partition"], registry=r
        )
        self.ledger_held_micros = Gauge(
            "tollgate_ledger_held_micros",
            "Micro-credits reserved by open holds and gateways' open slices.",
            ["partition"],
            registry=r,
        )
        self.ledger_open_leases = Gauge(
            "tollgate_ledger_open_leases", "Jobs a worker run holds a lease on.", ["partition"], registry=r
        )
        self.ledger_lease_events = Counter(
            "tollgate_ledger_lease_events",
            "Job leases granted (first lease of a run), renewed (heartbeats) and lost (ran out).",
            ["event"],
            registry=r,
        )
        self.ledger_dead_letters = Counter(
            "tollgate_ledger_dead_letters",
            "Jobs dead-lettered after their last attempt, by pool.",
            ["pool"],
            registry=r,
        )
        self.ledger_unsigned_records = Gauge(
            "tollgate_ledger_unsigned_records",
            "Ledger records appended since the last signed checkpoint, per partition this ledger owns.",
            ["partition"],
            registry=r,
        )
        self.ledger_checkpoints = Counter(
            "tollgate_ledger_checkpoints", "Signed chain checkpoints appended.", registry=r
        )
        self.checkpoint_ages = _CheckpointAges()
        r.register(self.checkpoint_ages)
        # --- worker ---
        self.worker_jobs = Counter(
            "tollgate_worker_jobs",
            "Jobs a worker finished, by pool and outcome (completed, failed, cancelled, stopped).",
            ["pool", "outcome"],
            registry=r,
        )
        self.worker_retries = Counter(
            "tollgate_worker_retries", "Retries scheduled after a retryable failure, by pool.", ["pool"], registry=r
        )
        self.worker_jobs_running = Gauge(
            "tollgate_worker_jobs_running", "Jobs a worker has taken and not finished, by pool.", ["pool"], registry=r
        )
        # --- projector ---
        self.projector_batch_rows = Histogram(
            "tollgate_projector_batch_rows",
            "Ledger records per projector flush.",
            buckets=batch_rows_buckets,
            registry=r,
        )
        self.projector_insert_seconds = Histogram(
            "tollgate_projector_insert_seconds",
            "Time to write one batch to ClickHouse (usage rows and postings, deduplicated).",
            buckets=insert_seconds_buckets,
            registry=r,
        )
        self.projector_visible_seconds = Histogram(
            "tollgate_projector_visible_seconds",
            "From a charge, refusal or failure in the ledger to its usage row in ClickHouse.",
            buckets=visible_seconds_buckets,
            registry=r,
        )
        self.projector_rows_pending = Gauge(
            "tollgate_projector_rows_pending",
            "Ledger records the projector has read and not yet written to ClickHouse (rows behind).",
            registry=r,
        )
        self.projector_rows = Counter(
            "tollgate_projector_rows",
            "New rows written to ClickHouse, by table (a redelivered event writes none).",
            ["table"],
            registry=r,
        )
        # --- every role ---
        self.consumer_lag = Gauge(
            "tollgate_consumer_lag_records",
            "Records between a consumer's position and the end of the log, by role, topic and partition.",
            ["role", "topic", "partition"],
            registry=r,
        )
        self.role_ready = Gauge(
            "tollgate_role_ready", "1 while the role is live and caught up with the log.", ["role"], registry=r
        )
        # Set by the process (tollgate/serve.py): the bounds that readiness and liveness use.
        self.live_stall_s_max = 30.0
        self.ready_lag_records_max = 1000

    def health(self, role: str) -> RoleHealth:
        with self._lock:
            found = self._health.get(role)
            if found is None:
                found = self._health[role] = RoleHealth(role)
                self.role_ready.labels(role).set_function(lambda: 1.0 if self._role_ready(role) else 0.0)
            return found

    def _role_ready(self, role: str) -> bool:
        return bool(self._health[role].status(self.live_stall_s_max, self.ready_lag_records_max)["ready"])

    def lag_reporter(self, role: str, source: str) -> LagReporter:
        return LagReporter(self, role, source)

    def roles(self) -> dict[str, dict[str, Any]]:
        """Every role of this process with its liveness, readiness and sources."""
        with self._lock:
            roles = dict(self._health)
        return {name: h.status(self.live_stall_s_max, self.ready_lag_records_max) for name, h in sorted(roles.items())}

    def live(self) -> bool:
        return all(status["live"] for status in self.roles().values())

    def ready(self) -> bool:
        roles = self.roles()
        return bool(roles) and all(status["ready"] for status in roles.values())

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


exposition_content_type = CONTENT_TYPE_LATEST


def serve_metrics(metrics: Metrics, host: str, port: int) -> ThreadingHTTPServer:
    """``/metrics``, ``/livez`` and ``/readyz`` of a role's process on ``host:port`` (0: a free port,
    ``server.server_port`` says which), in a daemon thread; ``shutdown()`` stops it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, metrics.exposition(), exposition_content_type)
            elif path in ("/livez", "/healthz"):
                self._status(metrics.live())
            elif path == "/readyz":
                self._status(metrics.ready())
            else:
                self._answer(404, b'{"error": "try /metrics, /livez or /readyz"}', "application/json")

        def _status(self, ok: bool) -> None:
            body = json.dumps({"status": "ok" if ok else "unavailable", "roles": metrics.roles()}).encode()
            self._answer(200 if ok else 503, body, "application/json")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Scrapes every few seconds are not news."""

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-listener", daemon=True).start()
    return server
