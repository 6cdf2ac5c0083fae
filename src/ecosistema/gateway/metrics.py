"""Prometheus metrics of the gateway, per route and per upstream instance.

With several workers, ``enable_multiprocess`` (called before forking) makes every worker write its
counters to memory-mapped files in one directory, so any worker's ``/metrics`` shows the sum.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from ecosistema.gateway.balancer import Balancer, BreakerState

_multiprocess_dir: str | None = None

# Tallies reach prometheus_client at most this often (and before every scrape of this worker).
FLUSH_INTERVAL_SECONDS: Final = 0.1
_bisect_left: Final = bisect_left  # compiled: a static reference, not a lookup

# Seconds: 1 ms to 30 s.
_LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)


def enable_multiprocess(directory: str) -> None:
    """Share counters between worker processes through files in ``directory``."""
    global _multiprocess_dir
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    _multiprocess_dir = directory


def forget_worker(pid: int) -> None:
    """Drop the live gauges of a worker that exited; its counters are kept."""
    if _multiprocess_dir is not None:
        mark_process_dead(pid, _multiprocess_dir)  # type: ignore[no-untyped-call]


class _UpstreamState(Collector):
    """Gauges read from the balancers at scrape time, so the hot path pays nothing for them."""

    def __init__(self, balancers: Callable[[], Iterable[Balancer]]) -> None:
        self._balancers = balancers

    def collect(self) -> Iterable[Metric]:
        worker = str(os.getpid())
        labels = ["service", "instance", "worker"]
        outstanding = GaugeMetricFamily(
            "ecosistema_gateway_upstream_outstanding", "Requests in flight", labels=labels
        )
        healthy = GaugeMetricFamily(
            "ecosistema_gateway_upstream_healthy", "1 if active checks pass", labels=labels
        )
        broken = GaugeMetricFamily(
            "ecosistema_gateway_upstream_breaker_open",
            "1 if the circuit breaker is open or half-open",
            labels=labels,
        )
        for balancer in self._balancers():
            for inst in balancer.instances:
                key = [balancer.name, inst.url, worker]
                outstanding.add_metric(key, inst.outstanding)
                healthy.add_metric(key, 1 if inst.healthy else 0)
                broken.add_metric(key, 0 if inst.breaker.state is BreakerState.CLOSED else 1)
        return [outstanding, healthy, broken]


class GatewayMetrics:
    """The gateway's counters and histograms; label children are cached for the hot path."""

    def __init__(self, balancers: Callable[[], Iterable[Balancer]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._state = _UpstreamState(balancers)
        if _multiprocess_dir is None:
            self.registry.register(self._state)
        self.requests = Counter(
            "ecosistema_gateway_requests",
            "Requests answered by the gateway",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ecosistema_gateway_request_duration_seconds",
            "Time from request head to the end of the response",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream = Counter(
            "ecosistema_gateway_upstream_requests",
            "Attempts sent to upstream instances, by outcome",
            ["service", "instance", "outcome"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "ecosistema_gateway_rate_limited",
            "Requests refused by a rate limit",
            ["route"],
            registry=self.registry,
        )
        self.breaker_opened = Counter(
            "ecosistema_gateway_breaker_opened",
            "Times an instance's circuit breaker opened",
            ["service", "instance"],
            registry=self.registry,
        )
        self.retries = Counter(
            "ecosistema_gateway_retries", "Attempts retried", ["route"], registry=self.registry
        )
        # Per-request observations are tallied in plain dicts and lists and handed to
        # prometheus_client (whose every update takes a lock, and in multiprocess mode writes a
        # memory-mapped file) by ``flush``, at most every FLUSH_INTERVAL_SECONDS (one flush costs
        # as much as several proxied requests) and before this worker renders a scrape, so a
        # scrape never misses one of its requests; another worker's scrape may see them up to
        # that interval later.
        self._flush_scheduled = False
        self._requests: dict[tuple[str, str, int], int] = {}
        self._latency: dict[str, list[float]] = {}
        self._upstream: dict[tuple[str, str, str], int] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration."""
        key = (route, method, status)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        tally = self._latency.get(route)
        if tally is None:
            # One count per bucket, then the +Inf bucket, then the sum of the durations.
            tally = self._latency[route] = [0.0] * (len(_LATENCY_BUCKETS) + 2)
        tally[_bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        tally[-1] += seconds
        if not self._flush_scheduled:
            self._schedule_flush()

    def observe_upstream(self, service: str, instance: str, outcome: str) -> None:
        """Count one attempt on an upstream instance."""
        key = (service, instance, outcome)
        upstream = self._upstream
        upstream[key] = upstream.get(key, 0) + 1
        if not self._flush_scheduled:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        self._flush_scheduled = True
        try:
            asyncio.get_running_loop().call_later(FLUSH_INTERVAL_SECONDS, self.flush)
        except RuntimeError:
            self._flush_scheduled = False  # no loop running: ``render`` flushes

    def flush(self) -> None:
        """Hand the tallies gathered since the last flush to the Prometheus metrics."""
        self._flush_scheduled = False
        requests, self._requests = self._requests, {}
        for (route, method, status), count in requests.items():
            self.requests.labels(route, method, str(status)).inc(count)
        upstream, self._upstream = self._upstream, {}
        for (service, instance, outcome), count in upstream.items():
            self.upstream.labels(service, instance, outcome).inc(count)
        latency, self._latency = self._latency, {}
        for route, tally in latency.items():
            child = self.latency.labels(route)
            # Histogram has no public way to add many observations at once; its buckets and sum
            # are value objects with ``inc``, in memory or in the multiprocess files alike.
            buckets = child._buckets
            for index, observed in enumerate(tally[:-1]):
                if observed:
                    buckets[index].inc(observed)
            child._sum.inc(tally[-1])

    def render(self) -> bytes:
        """The Prometheus text exposition of every worker's metrics."""
        self.flush()
        if _multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, _multiprocess_dir)  # type: ignore[no-untyped-call]
        registry.register(self._state)
        return generate_latest(registry)
