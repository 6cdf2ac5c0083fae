"""Gateway throughput and latency with wrk, every figure measured in the same run.

    .venv/bin/python bench/gateway_bench.py [--seconds 30] [--overhead-seconds 10]
                                            [--read-connections 256] [--connections 64]
                                            [--only read|overhead|hotpath] [--rounds N]

(a) Read path: GET one product through the gateway (2 workers, response cache on, rate limit and
    access log on), cache hits, 256 connections; baseline: the same GET on the catalog service
    directly (uvicorn, one process). Target: >= 10,000 req/s with p99 < 100 ms.
(b) Overhead: a tiny keep-alive upstream (uvloop + httptools) directly, through the gateway and
    through nginx (proxy_pass with an upstream keep-alive pool), one worker each; the ratio
    gateway/nginx. Target: >= 0.7. Each case also gives the CPU time (user + system) per
    request of the process serving it. The gateway runs compiled when its build is current
    (``ecosistema native status``), and once more interpreted (ECOSISTEMA_NATIVE=0). For scale,
    a reference: the least a Python proxy does per request (uvloop + httptools, pooled, head
    rewriting only; no gateway features).
(c) Hot path (``--only hotpath``): the gateway's own CPU per proxied request, without sockets: a
    request is fed to a client connection and a canned response to its pooled upstream
    connection, in memory. Less noisy than (b) on a busy machine, as it leaves out the kernel.
    Compiled, then the same code interpreted in a second process. ``--trusted-proxies`` and
    ``--forwarded-for`` measure the client-address resolution: the client is 127.0.0.1, so
    ``--trusted-proxies 10.0.0.0/8`` is the common case of a peer that is not trusted, and
    ``--trusted-proxies 127.0.0.1 --forwarded-for "203.0.113.9, 10.0.0.2"`` a walk.

(a) and (b) need wrk and nginx; when missing and running as root they are installed with apt-get.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def serve_tiny_upstream(port: int) -> None:
    """A minimal keep-alive HTTP/1.1 server (uvloop + httptools) answering 'ok' to everything."""
    import httptools
    import uvloop

    response = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"

    class Tiny(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:  # e.g. bytes after a request with Connection: close
                self.transport.close()  # type: ignore[attr-defined]

        def on_message_complete(self) -> None:
            self.transport.write(response)  # type: ignore[attr-defined]

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            Tiny, "127.0.0.1", port, backlog=2048
        )
        await server.serve_forever()

    uvloop.run(main())


def serve_reference_proxy(port: int, upstream: int) -> None:
    """The least a Python proxy does per request, for scale: uvloop + httptools, a pool of
    keep-alive upstream connections, the request head rebuilt with X-Forwarded-*, a request id
    and a traceparent, the response head rebuilt with the request id and two security headers.
    No routing, authentication, limits, balancing, timeouts, metrics or error handling."""
    import itertools

    import httptools
    import uvloop

    security = b"x-content-type-options: nosniff\r\nx-frame-options: DENY\r\n"
    idle: list[Any] = []
    ids = itertools.count(1)

    class Upstream(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpResponseParser(self)
            self.headers: list[bytes] = []
            self.client: Any = None
            self.out: list[bytes] = []

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append(name + b": " + value + b"\r\n")

        def on_headers_complete(self) -> None:
            out = [b"HTTP/1.1 %d OK\r\n" % self.parser.get_status_code(), *self.headers]
            out.append(b"x-request-id: " + self.client.request_id + b"\r\n" + security + b"\r\n")
            self.headers = []
            self.out = out

        def on_body(self, body: bytes) -> None:
            self.out.append(body)

        def on_message_complete(self) -> None:
            client, self.client = self.client, None
            client.transport.write(b"".join(self.out))
            idle.append(self)

    class Client(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)
            self.headers: list[tuple[bytes, bytes]] = []
            self.url = b""
            self.ip = str(transport.get_extra_info("peername")[0]).encode()

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name.lower(), value))

        def on_headers_complete(self) -> None:
            rid = self.request_id = b"%032x" % next(ids)
            head = [self.parser.get_method(), b" ", self.url, b" HTTP/1.1\r\nhost: upstream\r\n"]
            host = b""
            for name, value in self.headers:
                if name == b"host":
                    host = value
                else:
                    head.append(name + b": " + value + b"\r\n")
            head.append(
                b"x-forwarded-for: %s\r\nx-forwarded-proto: http\r\nx-forwarded-host: %s\r\n"
                b"x-request-id: %s\r\ntraceparent: 00-%s-%s-01\r\n\r\n"
                % (self.ip, host, rid, rid, rid[16:])
            )
            self.headers = []
            self.url = b""
            conn = idle.pop()
            conn.client = self
            conn.transport.write(b"".join(head))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(256):
            _, conn = await loop.create_connection(Upstream, "127.0.0.1", upstream)
            idle.append(conn)
        server = await loop.create_server(Client, "127.0.0.1", port, backlog=2048)
        await server.serve_forever()

    uvloop.run(main())


def ensure_tools() -> None:
    """wrk and nginx, from Debian's packages when missing (as root)."""
    missing = [tool for tool in ("wrk", "nginx") if shutil.which(tool) is None]
    if os.path.exists("/usr/sbin/nginx") and "nginx" in missing:
        missing.remove("nginx")
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing {', '.join(missing)}: apt-get install -y wrk nginx-light")
    packages = ["wrk" if tool == "wrk" else "nginx-light" for tool in missing]
    subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-q", *packages], check=True, capture_output=True)


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status < 500:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants (nginx's worker is a child)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, IndexError, ValueError):
            continue
    return total


def wrk(url: str, seconds: int, connections: int, pid: int | None = None) -> dict[str, float]:
    """wrk's throughput and latency; with ``pid``, also that process tree's CPU per request."""
    cpu_before = cpu_seconds(pid) if pid is not None else 0.0
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def percentile(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    cpu = cpu_seconds(pid) - cpu_before if pid is not None else 0.0
    total = re.search(r"(\d+) requests in", out)
    requests = float(total.group(1)) if total else 0.0
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "p50_ms": percentile("50"),
        "p99_ms": percentile("99"),
        "non_2xx": float(errors.group(1)) if errors else 0.0,
        "socket_errors": 1.0 if socket_errors else 0.0,
        "cpu_us": cpu / requests * 1e6 if pid is not None and requests else float("nan"),
    }


def start_gateway(table: dict[str, Any], tmp: Path, workers: int, env: dict[str, str]) -> Any:
    port = free_port()
    path = tmp / f"routes-{port}.json"
    path.write_text(json.dumps(table))
    proc = subprocess.Popen(
        [
            *(PYTHON, "-m", "ecosistema.gateway", "--routes", str(path)),
            *("--port", str(port), "--workers", str(workers)),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  upstream tiny {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://tiny;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def overhead(args: argparse.Namespace, tmp: Path, env: dict[str, str]) -> dict[str, Any]:
    """(b): the tiny upstream directly, through the gateway and through nginx."""
    results: dict[str, Any] = {}
    up_port = free_port()
    upstream = subprocess.Popen([PYTHON, __file__, "--upstream", str(up_port)])
    procs = [upstream]
    try:
        wait_for(f"http://127.0.0.1:{up_port}/")
        seconds, conns = args.overhead_seconds, args.connections
        results["direct to the upstream (baseline)"] = wrk(
            f"http://127.0.0.1:{up_port}/", seconds, conns, upstream.pid
        )
        base = {
            "services": {"tiny": {"instances": [f"http://127.0.0.1:{up_port}"]}},
            "routes": [{"prefix": "/", "service": "tiny", "public": True}],
        }
        base["services"]["tiny"]["health_path"] = None
        lean = {**base, "rate_limits": {"enabled": False}, "access_log": False}
        full = {**base, "rate_limits": {"anonymous": {"rate": 1e9, "burst": 1_000_000_000}}}
        interpreted = {**env, "ECOSISTEMA_NATIVE": "0"}
        for label, table, case_env in (
            ("gateway, 1 worker", lean, env),
            ("gateway, 1 worker, access log + rate limit", full, env),
            ("gateway, 1 worker, interpreted", lean, interpreted),
        ):
            proc, port = start_gateway(table, tmp, 1, case_env)
            procs.append(proc)
            wait_for(f"http://127.0.0.1:{port}/")
            results[label] = wrk(f"http://127.0.0.1:{port}/", seconds, conns, proc.pid)
            stop(proc)
        ref_port = free_port()
        reference = subprocess.Popen(
            [PYTHON, __file__, "--reference-proxy", str(ref_port), "--upstream-port", str(up_port)]
        )
        procs.append(reference)
        wait_for(f"http://127.0.0.1:{ref_port}/")
        results["reference: least Python proxy, 1 process"] = wrk(
            f"http://127.0.0.1:{ref_port}/", seconds, conns, reference.pid
        )
        stop(reference)
        ng_port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, upstream=up_port, port=ng_port))
        nginx = subprocess.Popen([nginx_binary(), "-c", str(conf)], stderr=subprocess.DEVNULL)
        procs.append(nginx)
        wait_for(f"http://127.0.0.1:{ng_port}/")
        results["nginx, 1 worker"] = wrk(f"http://127.0.0.1:{ng_port}/", seconds, conns, nginx.pid)
        stop(nginx)
    finally:
        for proc in procs:
            stop(proc)
    return results


def read_path(args: argparse.Namespace, tmp: Path, env: dict[str, str]) -> dict[str, Any]:
    """(a): one product through the gateway's response cache, 2 workers, 256 connections."""
    results: dict[str, Any] = {}
    data = tmp / "data"
    env = {
        **env,
        "ECOSISTEMA_DATA_DIR": str(data),
        "ECOSISTEMA_LOG_LEVEL": "WARNING",
    }
    products = tmp / "products.jsonl"
    products.write_text(
        json.dumps(
            {
                "slug": "bench-lamp",
                "name": "Bench Lamp",
                "description": "A lamp to measure the read path with.",
                "status": "active",
                "variants": [{"sku": "BENCH-1", "prices": {"EUR": 4900}}],
            }
        )
        + "\n"
    )
    subprocess.run(
        [PYTHON, "-m", "ecosistema", "catalog", "import", str(products)],
        cwd=tmp,
        env=env,
        check=True,
        capture_output=True,
    )
    cat_port = free_port()
    catalog = subprocess.Popen(
        [PYTHON, "-m", "ecosistema", "serve", "catalog", "--port", str(cat_port)],
        cwd=tmp,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs = [catalog]
    try:
        wait_for(f"http://127.0.0.1:{cat_port}/readyz")
        with urllib.request.urlopen(
            f"http://127.0.0.1:{cat_port}/api/v1/products?limit=1", timeout=10
        ) as response:
            product_id = json.loads(response.read())["items"][0]["id"]
        path = f"/api/v1/products/{product_id}"
        results["catalog directly (uvicorn, 1 process; baseline)"] = wrk(
            f"http://127.0.0.1:{cat_port}{path}", args.overhead_seconds, args.read_connections
        )
        table = {
            "services": {"catalog": {"instances": [f"http://127.0.0.1:{cat_port}"]}},
            "routes": [
                {
                    "prefix": "/api/v1/products",
                    "service": "catalog",
                    "public": True,
                    "cache": {"ttl_seconds": 300, "revalidate_by_events": True},
                }
            ],
            "rate_limits": {"anonymous": {"rate": 1e9, "burst": 1_000_000_000}},
        }
        proc, port = start_gateway(table, tmp, 2, env)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}{path}"
        wait_for(url)
        for _ in range(8):  # every worker stores its copy before the measurement
            urllib.request.urlopen(url, timeout=10).read()
        results["gateway, 2 workers, cache hits"] = wrk(url, args.seconds, args.read_connections)
    finally:
        for proc in procs:
            stop(proc)
    return results


class _MemoryTransport:
    """Enough of an asyncio transport for the gateway's protocols: writes are recorded."""

    def __init__(self, on_write: Any = None) -> None:
        self.written: list[bytes] = []
        self.on_write = on_write

    def write(self, data: bytes) -> None:
        if self.on_write is not None:
            self.on_write(data)
        else:
            self.written.append(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def is_closing(self) -> bool:
        return False


def hot_path(
    requests: int, full: bool, trusted_proxies: list[str], forwarded_for: str | None
) -> dict[str, float]:
    """CPU per request of the gateway's hot path alone, over in-memory transports (the client
    connects from 127.0.0.1)."""
    import uvloop

    from ecosistema.gateway import gateway_config
    from ecosistema.gateway.proxy import ClientConnection, Gateway
    from ecosistema.gateway.server import settle_heap
    from ecosistema.gateway.upstream import UpstreamConnection

    table: dict[str, Any] = {
        "services": {"tiny": {"instances": ["http://127.0.0.1:9"], "health_path": None}},
        "routes": [{"prefix": "/", "service": "tiny", "public": True}],
        "rate_limits": {"enabled": False},
        "access_log": False,
    }
    if trusted_proxies:
        table["trusted_proxies"] = trusted_proxies
    if full:
        table["rate_limits"] = {"anonymous": {"rate": 1e9, "burst": 1_000_000_000}}
        table["access_log"] = True
    request = b"GET /items/1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
    if forwarded_for is not None:
        request = request[:-2] + b"X-Forwarded-For: %s\r\n\r\n" % forwarded_for.encode()
    response = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"

    devnull = open(os.devnull, "w")  # noqa: SIM115

    async def run() -> dict[str, float]:
        gateway = Gateway(gateway_config(table), access_log=devnull)
        [pool] = gateway.pools.values()
        upstream = UpstreamConnection()
        upstream.connection_made(_MemoryTransport(lambda data: None))  # type: ignore[arg-type]
        pool.release(upstream)
        client = ClientConnection(gateway)
        out = _MemoryTransport()
        client.connection_made(out)  # type: ignore[arg-type]
        settle_heap()  # as a gateway worker does once it listens

        def once() -> None:
            client.data_received(request)
            upstream.data_received(response)

        for _ in range(1000):
            once()
        assert out.written[-1].endswith(b"ok"), out.written[-1]
        best = float("inf")
        for _ in range(5):
            out.written.clear()
            started = time.process_time()
            for _ in range(requests):
                once()
            best = min(best, time.process_time() - started)
            await asyncio.sleep(0)  # the loop runs the batched metrics flush
        gateway.metrics.flush()
        return {"cpu_us": best / requests * 1e6}

    try:
        return uvloop.run(run())
    finally:
        devnull.close()


def _medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each case's figures as the median over the rounds."""
    return {
        label: {key: statistics.median(r[label][key] for r in rounds) for key in rounds[0][label]}
        for label in rounds[0]
    }


def show(title: str, results: dict[str, Any], cmd: str) -> None:
    print(f"\n{title}  ({cmd})")
    print(f"{'case':<52}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'CPU µs/req':>12}")
    for label, r in results.items():
        cpu = r.get("cpu_us", float("nan"))
        print(
            f"{label:<52}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{r['non_2xx']:>9.0f}{'' if cpu != cpu else f'{cpu:.1f}':>12}"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=30, help="read-path measurement")
    parser.add_argument("--overhead-seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64, help="overhead cases")
    parser.add_argument("--read-connections", type=int, default=256)
    parser.add_argument("--only", choices=["read", "overhead", "hotpath"])
    parser.add_argument("--hotpath-requests", type=int, default=20_000)
    parser.add_argument(
        "--trusted-proxies",
        default="",
        help="(c) the gateway's trusted_proxies, comma-separated (the client is 127.0.0.1)",
    )
    parser.add_argument("--forwarded-for", help="(c) the requests' X-Forwarded-For")
    parser.add_argument(
        "--rounds", type=int, default=1, help="(b) repeated; medians and each round's ratio"
    )
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--reference-proxy", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_proxy:
        serve_reference_proxy(args.reference_proxy, args.upstream_port)
        return
    if args.upstream:
        serve_tiny_upstream(args.upstream)
        return
    if args.only == "hotpath":
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, Python"
            f" {platform.python_version()}; load average {Path('/proc/loadavg').read_text()[:15]}"
        )
        from ecosistema.gateway import native

        kind = "compiled" if native.active() else "interpreted"
        trusted = [p for p in args.trusted_proxies.split(",") if p]
        if trusted or args.forwarded_for is not None:
            print(f"trusted proxies {trusted}, X-Forwarded-For {args.forwarded_for!r}")
        for full in (False, True):
            r = hot_path(args.hotpath_requests, full, trusted, args.forwarded_for)
            label = "access log + rate limit" if full else "access log and rate limit off"
            print(f"(c) hot path ({kind}), {label}: {r['cpu_us']:.2f} µs CPU per request")
        if kind == "compiled":  # the same code interpreted, for comparison
            command = [PYTHON, __file__, "--only", "hotpath"]
            command += ["--hotpath-requests", str(args.hotpath_requests)]
            command += ["--trusted-proxies", args.trusted_proxies]
            if args.forwarded_for is not None:
                command += ["--forwarded-for", args.forwarded_for]
            child = subprocess.run(
                command,
                env={**os.environ, "ECOSISTEMA_NATIVE": "0"},
                capture_output=True,
                text=True,
                check=True,
            )
            print("\n".join(line for line in child.stdout.splitlines() if line.startswith("(c)")))
        return
    ensure_tools()
    env = {**os.environ, "ECOSISTEMA_CACHE_URL": "memory://", "ECOSISTEMA_BUS_URL": "memory://"}
    from ecosistema.gateway import native

    state, why = native.status()
    kind = "compiled" if state == "current" else "interpreted"
    print(f"gateway hot path: {kind} ({state}: {why})")
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as name:
        tmp = Path(name)
        reads = read_path(args, tmp, env) if args.only != "overhead" else {}
        rounds = []
        if args.only != "read":
            rounds = [overhead(args, tmp, env) for _ in range(args.rounds)]
    over = _medians(rounds) if rounds else {}
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python"
        f" {platform.python_version()}; load average before {' '.join(load_before)},"
        f" after {' '.join(load_after)}; loopback, wrk -t2"
    )
    if reads:
        show(
            "(a) read path: GET /api/v1/products/{id}",
            reads,
            f"-c{args.read_connections}, {args.seconds}s through the gateway",
        )
        hit = reads["gateway, 2 workers, cache hits"]
        verdict = "met" if hit["rps"] >= 10_000 and hit["p99_ms"] < 100 else "NOT met"
        print(f"target >= 10,000 req/s with p99 < 100 ms: {verdict}")
    if over:
        show(
            "(b) overhead: tiny upstream",
            over,
            f"-c{args.connections}, {args.overhead_seconds}s each",
        )
        ratios = [r["gateway, 1 worker"]["rps"] / r["nginx, 1 worker"]["rps"] for r in rounds]
        ratio = statistics.median(ratios)
        if len(rounds) > 1:
            gw, ng = "gateway, 1 worker", "nginx, 1 worker"
            each = [
                f"{q:.2f} ({r[gw]['rps']:,.0f} / {r[ng]['rps']:,.0f} req/s)"
                for q, r in zip(ratios, rounds, strict=True)
            ]
            print(f"medians of {len(rounds)} rounds; gateway/nginx per round: {', '.join(each)}")
        print(f"ratio gateway/nginx (1 worker each): {ratio:.2f} (target >= 0.7)")
        reference = "reference: least Python proxy, 1 process"
        floor = statistics.median(r[reference]["rps"] / r["nginx, 1 worker"]["rps"] for r in rounds)
        print(f"ratio reference proxy/nginx: {floor:.2f}")


if __name__ == "__main__":
    main()
