"""Machine facts every benchmark prints beside its figures, and the client loop the HTTP
benchmarks share."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httptools
import httpx

# The ceiling any framework reaches on the server stack: an ASGI app answering a fixed body.
BARE_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"status":"ok"}'})
"""


def in_process_settings(directory: str, **overrides: Any) -> Any:
    """Settings of a platform run in this process on SQLite files under ``directory``, with the
    in-memory bus and cache and no lead-scoring model trained at start."""
    from ecosistema.platform.config import Settings

    values: dict[str, Any] = {
        "environment": "development",
        "data_dir": Path(directory),
        "log_level": "WARNING",
        "database_url": f"sqlite+aiosqlite:///{directory}/{{service}}.db",
        "bus_url": "memory://",
        "cache_url": "memory://",
        "sales_train_default_model": False,
        **overrides,
    }
    return Settings(**values)


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


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process (and its reaped children) has used, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime are fields 14-17 of proc(5); fields[0] here is field 3.
    ticks = sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """User plus system CPU time of this process so far, in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class HttpError(Exception):
    """An answer with an unexpected status."""

    def __init__(self, method: str, path: str, status: int, body: bytes) -> None:
        super().__init__(f"{method} {path} -> {status}: {body[:300]!r}")
        self.status = status
        self.body = body


class LeanClient:
    """One HTTP/1.1 keep-alive connection on asyncio streams, parsed by httptools.

    A request costs the client tens of microseconds of CPU (httpx: several hundred), so one
    client process can drive a server at thousands of requests per second and the figures
    measure the server. One request at a time per connection, as a browser tab does.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self._done = False
        self._prefix = f"\r\nHost: {host}:{port}\r\n".encode()

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._done = True

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._parser = httptools.HttpResponseParser(self)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._reader = self._writer = None

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: bytes = b""
    ) -> tuple[int, bytes]:
        """Send one request (``headers``: raw ``Name: value\\r\\n`` lines) and read its
        answer: status and body."""
        if self._writer is None:
            await self._connect()
        assert self._reader is not None and self._writer is not None
        head = method.encode() + b" " + path.encode() + b" HTTP/1.1" + self._prefix + headers
        if body:
            head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        self._writer.write(head + b"\r\n" + body)
        self._body = []
        self._done = False
        while not self._done:
            data = await self._reader.read(65536)
            if not data:
                await self.close()
                raise ConnectionError(f"{method} {path}: connection closed by the server")
            self._parser.feed_data(data)
        status = int(self._parser.get_status_code())
        if not self._parser.should_keep_alive():
            await self.close()
        return status, b"".join(self._body)

    async def json(
        self,
        method: str,
        path: str,
        payload: Any = None,
        *,
        headers: bytes = b"",
        expect: tuple[int, ...] = (200, 201),
    ) -> Any:
        """Send JSON, expect one of ``expect``, return the decoded answer."""
        body = json.dumps(payload).encode() if payload is not None else b""
        status, answer = await self.request(method, path, body, headers)
        if status not in expect:
            raise HttpError(method, path, status, answer)
        return json.loads(answer) if answer else None


LeanOperation = Callable[[LeanClient, str], Awaitable[None]]


async def run_lean_clients(
    host: str,
    port: int,
    tokens: list[str],
    concurrency: int,
    seconds: float,
    operation: LeanOperation,
) -> dict[str, float]:
    """``concurrency`` clients, each on its own keep-alive connection with its own token, doing
    ``operation`` for ``seconds``: operations per second, latency percentiles, errors, and this
    process's CPU time per operation."""
    latencies: list[float] = []
    errors = 0
    clients = [LeanClient(host, port) for _ in range(concurrency)]
    stop_at = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        nonlocal errors
        client = clients[index]
        token = tokens[index % len(tokens)]
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            try:
                await operation(client, token)
            except (HttpError, OSError, RuntimeError) as exc:
                errors += 1
                if errors <= 3:
                    print(f"  error: {exc}", file=sys.stderr)
                await client.close()
                continue
            latencies.append(time.perf_counter() - start)

    cpu_before = own_cpu_seconds()
    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = own_cpu_seconds() - cpu_before
    for client in clients:
        await client.close()
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    count = len(latencies)
    return {
        "per_s": round(count / elapsed, 1),
        "p50_ms": round(pct(0.50), 2),
        "p99_ms": round(pct(0.99), 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else float("nan"),
        "count": count,
        "errors": errors,
        "elapsed_s": round(elapsed, 2),
        "client_cpu_ms_per_op": round(cpu * 1000 / count, 3) if count else float("nan"),
    }
