"""Helpers for tests that run services as real processes (the distributed shape)."""

from __future__ import annotations

import os
import re
import socket
import urllib.request
from pathlib import Path

from ecosistema.platform.config import Settings

SECRET = "distributed-test-gateway-secret-0123456789"


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def consecutive_free_ports(count: int, start: int = 21000, stop: int = 40000) -> int:
    """The first of ``count`` consecutive ports free on 127.0.0.1, searching from ``start``."""
    port = start + (os.getpid() % 500) * 20
    while port + count < stop:
        try:
            held = []
            for p in range(port, port + count):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", p))
            return port
        except OSError:
            port += count
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no free port range")


def child_environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The ``ECOSISTEMA_*`` variables that make a child process use these test settings."""
    env = {
        "ECOSISTEMA_ENVIRONMENT": settings.environment,
        "ECOSISTEMA_DATA_DIR": str(settings.data_dir),
        "ECOSISTEMA_DATABASE_URL": settings.database_url,
        "ECOSISTEMA_DATABASE_SCHEMA_PREFIX": settings.database_schema_prefix,
        "ECOSISTEMA_BUS_URL": settings.bus_url,
        "ECOSISTEMA_BUS_STREAM": settings.bus_stream,
        "ECOSISTEMA_CACHE_URL": settings.cache_url,
        "ECOSISTEMA_CACHE_PREFIX": settings.cache_prefix,
        "ECOSISTEMA_LOG_LEVEL": "WARNING",
        "ECOSISTEMA_PASSWORD_HASH_MEMORY_KIB": str(settings.password_hash_memory_kib),
        "ECOSISTEMA_PASSWORD_HASH_TIME_COST": str(settings.password_hash_time_cost),
    }
    if settings.gateway_secret is not None:
        env["ECOSISTEMA_GATEWAY_SECRET"] = settings.gateway_secret.get_secret_value()
    env.update(extra)
    return env


_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} ([0-9.e+]+)$")


def metric_samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of one metric in a Prometheus text page, with their labels."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == name:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            found.append((labels, float(match.group(3))))
    return found


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
