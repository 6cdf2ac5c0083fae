"""The embedded shape over HTTP: start-up time, GET /healthz and GET /api/v1/users/me with wrk at
64 connections, resident memory at idle and under load.

Same-run baseline: a bare ASGI app answering /healthz on the same server stack (uvicorn, uvloop,
httptools, one worker), i.e. the ceiling any framework on it can reach on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from machine import BARE_APP, describe, ensure_wrk, free_port, rss_mib

ROOT = Path(__file__).resolve().parent.parent
ECOSISTEMA = str(Path(sys.executable).parent / "ecosistema")
DEMO_CUSTOMER = ("customer@demo.ecosistema.dev", "demo-customer-ecosistema")


def wait_ready(url: str, timeout: float = 120.0) -> float:
    """Seconds until ``url`` answers 200."""
    start = time.perf_counter()
    deadline = start + timeout
    while time.perf_counter() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def run_wrk(
    wrk: str, url: str, seconds: int, headers: dict[str, str] | None = None
) -> dict[str, float]:
    cmd = [wrk, "-t2", "-c64", f"-d{seconds}s", "--latency"]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        if not m:
            return float("nan")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": rps,
        "p50_ms": pct("50"),
        "p99_ms": pct("99"),
        "non_2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": 1.0 if errors else 0.0,
    }


def sample_peak_rss(pid: int, stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        try:
            out.append(rss_mib(pid))
        except (FileNotFoundError, ProcessLookupError):
            return
        stop.wait(0.2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    wrk = ensure_wrk()
    results: dict[str, object] = {"machine": describe()}

    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, ECOSISTEMA_DATA_DIR=tmp, ECOSISTEMA_LOG_LEVEL="WARNING")
        # Baseline: bare ASGI app on the same server stack.
        Path(tmp, "bare.py").write_text(BARE_APP)
        port = free_port()
        bare = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bare:app",
                "--port",
                str(port),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            cwd=tmp,
            env=env,
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}/healthz")
            results["baseline_bare_asgi_healthz"] = run_wrk(
                wrk, f"http://127.0.0.1:{port}/healthz", args.seconds
            )
        finally:
            bare.terminate()
            bare.wait()

        # Ecosistema, embedded shape, first start (migrations, keys, demo data).
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        start = time.perf_counter()
        proc = subprocess.Popen(
            [ECOSISTEMA, "up", "--demo", "--port", str(port)],
            cwd=tmp,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_ready(f"{base}/healthz")
            results["startup_first_run_s"] = round(time.perf_counter() - start, 2)
        finally:
            proc.terminate()
            proc.wait()

        start = time.perf_counter()
        proc = subprocess.Popen(
            [ECOSISTEMA, "up", "--port", str(port)], cwd=tmp, env=env, stdout=subprocess.DEVNULL
        )
        try:
            wait_ready(f"{base}/healthz")
            results["startup_warm_s"] = round(time.perf_counter() - start, 2)
            time.sleep(2)  # let start-up garbage settle before reading idle memory
            results["rss_idle_mib"] = round(rss_mib(proc.pid), 1)

            login = httpx.post(
                f"{base}/api/v1/auth/login",
                json={"email": DEMO_CUSTOMER[0], "password": DEMO_CUSTOMER[1]},
            )
            login.raise_for_status()
            token = login.json()["access_token"]

            peak: list[float] = []
            stop = threading.Event()
            sampler = threading.Thread(target=sample_peak_rss, args=(proc.pid, stop, peak))
            sampler.start()
            try:
                results["healthz"] = run_wrk(wrk, f"{base}/healthz", args.seconds)
                results["users_me"] = run_wrk(
                    wrk,
                    f"{base}/api/v1/users/me",
                    args.seconds,
                    {"Authorization": f"Bearer {token}"},
                )
            finally:
                stop.set()
                sampler.join()
            results["rss_under_load_peak_mib"] = round(max(peak), 1) if peak else None
        finally:
            proc.terminate()
            proc.wait()

    print(json.dumps(results, indent=2))
    base_rps = results["baseline_bare_asgi_healthz"]["rps"]  # type: ignore[index]
    for name in ("healthz", "users_me"):
        r = results[name]
        print(
            f"{name:<9} {r['rps']:>9,.0f} req/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms"  # type: ignore[index]
            f"  ({r['rps'] / base_rps:.2f}x the bare ASGI baseline)"  # type: ignore[index]
        )


if __name__ == "__main__":
    main()
