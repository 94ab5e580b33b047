"""The gateway's series: every answer counted by route, method and status as it is sent (one counter
increment), and a collector that reads, when scraped, the figures the gateway already keeps
(requests in flight, waiters, rate-limit refusals by kind, JWKS refreshes, jobs by status and pool)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from litestar.types import Message, Scope
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from eventlog.metrics import Metrics
from gateway.core import GatewayCore
from gateway.ratelimit import IpLimiter

access_logger = logging.getLogger("tollgate.access")
unmatched_route = "unmatched"  # a path no route serves (its 404 is counted under this label)


class HttpMetrics:
    """A ``before_send`` hook: on each response's start, count it; on a 402 or a replayed
    Idempotency-Key answer, count that too; at INFO, one access line with the request's id."""

    def __init__(self, metrics: Metrics) -> None:
        self._requests = metrics.http_requests
        self._payment_required = metrics.payment_required
        self._replays = metrics.idempotent_replays
        self._children: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start":
            return
        route = scope.get("path_template") or unmatched_route
        method = str(scope.get("method", ""))
        status = int(message["status"])
        key = (route, method, status)
        counter = self._children.get(key)
        if counter is None:
            counter = self._children[key] = self._requests.labels(route, method, str(status))
        counter.inc()
        if status == 402:
            self._payment_required.labels(route).inc()
        elif method == "POST" and status < 300 and (b"idempotent-replayed", b"true") in message.get("headers", ()):
            self._replays.labels(route).inc()
        if access_logger.isEnabledFor(logging.INFO):
            state = scope.get("state", {})
            access_logger.info(
                "%s %s %d", method, scope.get("path", ""), status, extra={"request_id": state.get("request_id", "")}
            )


class GatewayCollector:
    """Figures the gateway keeps anyway, read when Prometheus scrapes (nothing on a request's path)."""

    def __init__(self, core: GatewayCore, ip_limiter: IpLimiter) -> None:
        self.core = core
        self.ip_limiter = ip_limiter

    def collect(self) -> Iterable[Metric]:
        core = self.core
        inflight = GaugeMetricFamily(
            "tollgate_gateway_requests_in_flight", "Metered requests this gateway waits on (bounded)."
        )
        inflight.add_metric([], core.metering.inflight)
        yield inflight
        waiters = GaugeMetricFamily("tollgate_gateway_waiters", "Requests and commands waiting for an event.")
        waiters.add_metric([], len(core.waiters))
        yield waiters
        throttled = CounterMetricFamily(
            "tollgate_ratelimit_throttled",
            "Requests refused with 429, by the limit that refused them (requests, jobs, tokens; ip: the "
            "per-address net before authentication).",
            labels=["kind"],
        )
        by_kind = dict(core.limiter.throttled_by_kind)
        for kind in ("requests", "jobs", "tokens"):
            throttled.add_metric([kind], by_kind.pop(kind, 0))
        for kind, count in sorted(by_kind.items()):
            throttled.add_metric([kind], count)
        throttled.add_metric(["ip"], self.ip_limiter.refused)
        yield throttled
        refreshes = CounterMetricFamily(
            "tollgate_jwks_refreshes", "Fetches of the service-token JWKS, by result.", labels=["result"]
        )
        refreshes.add_metric(["ok"], core.jwks.fetches - core.jwks.fetch_failures)
        refreshes.add_metric(["failed"], core.jwks.fetch_failures)
        yield refreshes
        jobs = GaugeMetricFamily(
            "tollgate_jobs",
            "Jobs in the gateway's jobs view (the retention window), by status and pool.",
            labels=["status", "pool"],
        )
        for (status, pool), count in sorted(core.jobs.counts_by_status_and_pool().items()):
            jobs.add_metric([status, pool], count)
        yield jobs


def register(core: GatewayCore, ip_limiter: IpLimiter) -> None:
    """The gateway collector, once per core (an app built again for the same core reuses it)."""
    collector = core.metrics_collector
    if isinstance(collector, GatewayCollector):
        collector.ip_limiter = ip_limiter
        return
    collector = GatewayCollector(core, ip_limiter)
    core.metrics.registry.register(collector)
    core.metrics_collector = collector
