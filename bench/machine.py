"""Machine facts every benchmark prints beside its figures, and the client loop the HTTP
benchmarks share."""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx


def describe() -> str:
    """One line: when, where, on what."""
    cpu = "unknown cpu"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kb = int(meminfo.read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB"
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{now}; {socket.gethostname()}; {cpu}; {os.cpu_count()} cores{mem}; "
        f"Python {platform.python_version()}; {platform.system()} {platform.release()}"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_wrk() -> str:
    """Path to wrk, installing Debian's package when it is missing."""
    for candidate in ("/usr/bin/wrk", "/usr/local/bin/wrk"):
        if Path(candidate).exists():
            return candidate
    print("wrk not found: installing it from Debian's packages")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env)
    return "/usr/bin/wrk"


def rss_mib(pid: int) -> float:
    """Resident memory of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for an access token."""
    return {"Authorization": f"Bearer {token}"}


Operation = Callable[[httpx.AsyncClient, str], Awaitable[None]]


async def run_clients(
    base: str,
    tokens: list[str],
    concurrency: int,
    seconds: float,
    operation: Operation,
    *,
    timeout: float = 60.0,
) -> dict[str, float]:
    """``concurrency`` clients doing ``operation`` (each with its own token) for ``seconds``:
    operations per second, latency percentiles, errors."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:
        stop_at = time.perf_counter() + seconds

        async def worker(index: int) -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                try:
                    await operation(client, tokens[index % len(tokens)])
                except (httpx.HTTPError, RuntimeError) as exc:
                    errors += 1
                    if errors <= 3:
                        body = exc.response.text if isinstance(exc, httpx.HTTPStatusError) else ""
                        print(f"  error: {exc!r} {body[:300]}", file=sys.stderr)
                    continue
                latencies.append(time.perf_counter() - start)

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {
        "per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(pct(0.50), 2),
        "p99_ms": round(pct(0.99), 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else float("nan"),
        "count": len(latencies),
        "errors": errors,
    }
