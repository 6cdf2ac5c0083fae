"""Choosing an upstream instance: round-robin or least outstanding requests, skipping instances
that failed their health checks or whose circuit breaker is open."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from ecosistema.gateway.config import ServiceConfig


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_CLOSED: Final = BreakerState.CLOSED


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; after ``open_seconds`` lets one probe
    through (half-open), which closes it on success and reopens it on failure."""

    __slots__ = ("_probe_in_flight", "failures", "open_seconds", "opened_at", "state", "threshold")

    def __init__(self, threshold: int, open_seconds: float) -> None:
        self.threshold = threshold
        self.open_seconds = open_seconds
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._probe_in_flight = False

    def available(self, now: float) -> bool:
        """Whether a request may be sent now (without committing to send it)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            return now - self.opened_at >= self.open_seconds
        return not self._probe_in_flight

    def on_send(self, now: float) -> None:
        """A request is being sent: an open breaker past its wait turns half-open for this probe."""
        if self.state is BreakerState.CLOSED:
            return
        if self.state is BreakerState.OPEN and now - self.opened_at >= self.open_seconds:
            self.state = BreakerState.HALF_OPEN
        self._probe_in_flight = True

    def record_success(self) -> None:
        """The upstream answered well: close."""
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._probe_in_flight = False

    def record_failure(self, now: float) -> bool:
        """The upstream failed; returns True when this failure opened the breaker."""
        self.failures += 1
        self._probe_in_flight = False
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED and self.failures >= self.threshold
        ):
            self.state = BreakerState.OPEN
            self.opened_at = now
            return True
        return False


@dataclass(eq=False)
class Instance:
    """One upstream instance (a URL) and what the gateway knows of it right now."""

    url: str
    breaker: CircuitBreaker
    host: str = ""
    port: int = 0
    tls: bool = False
    host_header: bytes = b""
    outstanding: int = 0
    healthy: bool = True
    health_failures: int = 0
    health_successes: int = 0
    served: int = field(default=0)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.tls else 80)
        self.host_header = parts.netloc.encode("ascii")

    def available(self, now: float) -> bool:
        """Healthy by the last checks and not refused by its breaker."""
        return self.healthy and self.breaker.available(now)

    def record_health(self, ok: bool, config: ServiceConfig) -> None:
        """Fold one active health check result into ``healthy``, with thresholds both ways."""
        if ok:
            self.health_failures = 0
            self.health_successes += 1
            if not self.healthy and self.health_successes >= config.healthy_threshold:
                self.healthy = True
        else:
            self.health_successes = 0
            self.health_failures += 1
            if self.healthy and self.health_failures >= config.unhealthy_threshold:
                self.healthy = False


class Balancer:
    """The instances of one service and the strategy that picks among them."""

    def __init__(self, name: str, config: ServiceConfig) -> None:
        self.name = name
        self.config = config
        self.instances = [
            Instance(url, CircuitBreaker(config.breaker_failures, config.breaker_open_seconds))
            for url in config.instances
        ]
        self._next = 0
        self._least = config.balancer == "least_outstanding"

    def pick(self, now: float, exclude: tuple[Instance, ...] = ()) -> Instance | None:
        """The instance for the next attempt, or None when none is available."""
        instances = self.instances
        count = len(instances)
        start = self._next
        self._next = (start + 1) % count
        chosen: Instance | None = None
        for step in range(count):
            candidate = instances[(start + step) % count]
            if exclude and candidate in exclude:
                continue
            if not candidate.healthy:
                continue
            breaker = candidate.breaker
            if breaker.state is not _CLOSED and not breaker.available(now):
                continue
            if not self._least:
                chosen = candidate
                break
            # Starting from the rotating index spreads ties evenly over equally loaded instances.
            if chosen is None or candidate.outstanding < chosen.outstanding:
                chosen = candidate
        if chosen is not None and chosen.breaker.state is not _CLOSED:
            chosen.breaker.on_send(now)
        return chosen
