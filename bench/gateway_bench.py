"""Gateway throughput and latency with wrk: a tiny upstream hit directly (the baseline) and
through the gateway with 1 and 2 workers, all measured in the same run.

    .venv/bin/python bench/gateway_bench.py [--seconds 5] [--connections 64]

Prints req/s and p50/p99 latency for each case. Needs ``wrk`` (apt-get install -y wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
            self.parser.feed_data(data)

        def on_message_complete(self) -> None:
            self.transport.write(response)  # type: ignore[attr-defined]

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Tiny, "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(main())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


def wrk(url: str, seconds: int, connections: int) -> dict[str, float]:
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

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": percentile("50"),
        "p99_ms": percentile("99"),
        "non_2xx": float(errors.group(1)) if errors else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        serve_tiny_upstream(args.upstream)
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")

    up_port = free_port()
    upstream = subprocess.Popen([sys.executable, __file__, "--upstream", str(up_port)])
    procs = [upstream]
    results: dict[str, dict[str, float]] = {}
    try:
        wait_for_port(up_port)
        results["direct (baseline)"] = wrk(
            f"http://127.0.0.1:{up_port}/", args.seconds, args.connections
        )
        with tempfile.TemporaryDirectory() as tmp:
            cases = [
                ("gateway, 1 worker", 1, {"access_log": False}),
                ("gateway, 2 workers", 2, {"access_log": False}),
                ("gateway, 1 worker, access log + rate limit", 1, {"access_log": True}),
            ]
            for label, workers, extra in cases:
                table = Path(tmp) / f"routes-{workers}-{len(results)}.json"
                limits = (
                    {"anonymous": {"rate": 1e9, "burst": 1_000_000_000}}
                    if extra["access_log"]
                    else {"enabled": False}
                )
                table.write_text(
                    json.dumps(
                        {
                            "services": {
                                "tiny": {
                                    "instances": [f"http://127.0.0.1:{up_port}"],
                                    "health_path": None,
                                }
                            },
                            "routes": [{"prefix": "/", "service": "tiny", "public": True}],
                            "rate_limits": limits,
                            **extra,
                        }
                    )
                )
                port = free_port()
                gateway = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "ecosistema.gateway",
                        "--routes",
                        str(table),
                        "--port",
                        str(port),
                        "--workers",
                        str(workers),
                    ],
                    cwd=ROOT,
                    env={**os.environ, "ECOSISTEMA_CACHE_URL": "memory://"},
                    stdout=subprocess.DEVNULL,
                )
                procs.append(gateway)
                wait_for_port(port)
                results[label] = wrk(f"http://127.0.0.1:{port}/", args.seconds, args.connections)
                gateway.terminate()
                gateway.wait(timeout=20)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}; load {os.getloadavg()[0]:.1f};"
        f" wrk -t2 -c{args.connections} -d{args.seconds}s, loopback, tiny 'ok' upstream"
    )
    print(f"{'case':<46}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}")
    for label, r in results.items():
        print(
            f"{label:<46}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
            f"{r['non_2xx']:>10.0f}"
        )


if __name__ == "__main__":
    main()
