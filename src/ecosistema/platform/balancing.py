"""Choosing the instance of another service a call goes to, when it runs as several replicas.

The strategy is least outstanding requests, ties broken round-robin: calls between services vary
in cost (a reservation locks stock rows, a quote reads prices), and a replica that slows down
keeps more calls in flight, so new calls go elsewhere; when nothing is in flight (one call at a
time) it is plain round-robin, so the load still spreads. An instance that could not be reached
or did not answer in time is ejected for a cool-down and skipped meanwhile; when every instance
is ejected, the one whose cool-down ends first is tried anyway, since passive ejection is a
guess and refusing outright would turn a blip into an outage.

This module keeps the state and makes the choice; ``platform.http`` sends the calls.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

# How long an instance that refused a connection or timed out is left out of the rotation. A
# replica the supervisor restarts is back in a few seconds; a longer outage costs one failed
# connection per cool-down.
EJECT_SECONDS = 5.0


def base_urls(value: str | Sequence[str]) -> list[str]:
    """The base URLs in a ``ECOSISTEMA_<SERVICE>_URL`` value: comma-separated, blanks ignored,
    without a trailing slash."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip().rstrip("/") for item in items if item.strip()]


@dataclass(eq=False, slots=True)
class ServiceInstance:
    """One base URL of a service and what the caller knows of it right now."""

    base_url: str
    outstanding: int = 0
    ejected_until: float = 0.0
    ejections: int = 0
    # Attempts by outcome: ok (an answer), connect_failed, timeout, reset.
    outcomes: Counter[str] = field(default_factory=Counter)
    scheme: str = field(init=False, default="")
    host: str = field(init=False, default="")
    port: int | None = field(init=False, default=None)
    path: bytes = field(init=False, default=b"")

    def __post_init__(self) -> None:
        url = httpx.URL(self.base_url)
        self.scheme, self.host, self.port = url.scheme, url.host, url.port
        self.path = url.raw_path.split(b"?", 1)[0].rstrip(b"/")

    def ejected(self, now: float) -> bool:
        """Whether the instance is still in its cool-down."""
        return now < self.ejected_until


class ServiceInstances:
    """The instances of one service a process calls, and the choice among them."""

    def __init__(
        self, service: str, urls: Sequence[str], *, eject_seconds: float = EJECT_SECONDS
    ) -> None:
        found = base_urls(urls)
        if not found:
            raise ValueError(f"no base URL for {service}")
        self.service = service
        self.instances = [ServiceInstance(url) for url in found]
        self.eject_seconds = eject_seconds
        # Calls sent again to another instance after a failure that left them unprocessed.
        self.retries = 0
        self._next = 0

    def pick(self, now: float, exclude: Sequence[ServiceInstance] = ()) -> ServiceInstance | None:
        """The instance for the next attempt: the least busy one not ejected and not in
        ``exclude``, round-robin among equals; an ejected one when only those are left; None
        when every instance is excluded."""
        instances = self.instances
        count = len(instances)
        start = self._next
        chosen = fallback = -1
        for step in range(count):
            index = (start + step) % count
            candidate = instances[index]
            if candidate in exclude:
                continue
            if candidate.ejected(now):
                if fallback < 0 or candidate.ejected_until < instances[fallback].ejected_until:
                    fallback = index
                continue
            # Looking from just after the last choice spreads ties over equally busy instances.
            if chosen < 0 or candidate.outstanding < instances[chosen].outstanding:
                chosen = index
        if chosen < 0:
            chosen = fallback
        if chosen < 0:
            return None
        self._next = (chosen + 1) % count
        return instances[chosen]

    def eject(self, instance: ServiceInstance, now: float) -> None:
        """Leave ``instance`` out of the rotation for the cool-down."""
        instance.ejected_until = now + self.eject_seconds
        instance.ejections += 1

    def url_for(self, url: httpx.URL, instance: ServiceInstance) -> httpx.URL | None:
        """``url``, written against the first instance (the client's base URL), moved to
        ``instance``; None for a URL of somewhere else, which is not balanced."""
        first = self.instances[0]
        if (url.scheme, url.host, url.port) != (first.scheme, first.host, first.port):
            return None
        path = url.raw_path
        prefix = first.path
        if not path.startswith(prefix):
            return None
        if instance is first:
            return url
        return url.copy_with(
            scheme=instance.scheme,
            host=instance.host,
            port=instance.port,
            raw_path=instance.path + path[len(prefix) :],
        )
