"""A small upstream service for the gateway tests, run as a real uvicorn process on loopback,
plus helpers to start it and the gateway as subprocesses. It holds no tests itself.

Endpoints: /readyz (503 after POST /admin/unready), /echo/* (what arrived: method, path,
headers, body length and SHA-256, the client port), /stream?size=&chunk= (a chunked body),
/slow?seconds=, /status/{code}[?retry_after=] (with that Retry-After), /.well-known/jwks.json
(read from $JWKS_FILE on every call), /cacheable[/{id}]?cc=&etag=&vary=&cookie=&status=,
/admin/cacheable-count, and identity's API key check /api/v1/auth/whoami (200 for an X-API-Key
listed in $API_KEYS, comma-separated, else 401; /admin/revoke?key= removes one, and
/admin/whoami-count says how many checks were made).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
INSTANCE = os.environ.get("UPSTREAM_NAME", "upstream")
_state: dict[str, Any] = {"ready": True, "served": 0, "cacheable": 0, "whoami": 0}
_api_keys = {k for k in os.environ.get("API_KEYS", "").split(",") if k}


async def _json(
    send: Send, status: int, body: Any, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"x-upstream", INSTANCE.encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def _cacheable(send: Send, path: str, query: dict[str, str]) -> None:
    """A resource for the response-cache tests: ``/cacheable`` (a list page) or
    ``/cacheable/{id}``, with the Cache-Control, Vary, ETag and Set-Cookie the query asks for;
    the body says how many /cacheable requests this upstream has served."""
    count = _state["cacheable"] = _state.get("cacheable", 0) + 1
    item = path.removeprefix("/cacheable").strip("/")
    body: Any = (
        {"id": item, "slug": f"slug-{item}", "variants": [{"sku": f"SKU-{item}"}], "n": count}
        if item
        else {"items": [{"id": "p1"}, {"id": "p2"}], "n": count}
    )
    headers: list[tuple[bytes, bytes]] = [
        (b"cache-control", query.get("cc", "public, max-age=60").encode())
    ]
    if "etag" in query:
        headers.append((b"etag", query["etag"].encode()))
    if "vary" in query:
        headers.append((b"vary", query["vary"].encode()))
    if "cookie" in query:
        headers.append((b"set-cookie", b"session=abc; HttpOnly"))
    await _json(send, int(query.get("status", "200")), body, tuple(headers))


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    _state["served"] += 1
    path: str = scope["path"]
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    if path == "/readyz":
        await _json(send, 200 if _state["ready"] else 503, {"ready": _state["ready"]})
    elif path == "/admin/unready":
        _state["ready"] = False
        await _json(send, 200, {"ready": False})
    elif path == "/admin/cacheable-count":
        await _json(send, 200, {"count": _state.get("cacheable", 0)})
    elif path.startswith("/cacheable"):
        await _cacheable(send, path, query)
    elif path == "/api/v1/auth/whoami":
        _state["whoami"] += 1
        key = dict(scope["headers"]).get(b"x-api-key", b"").decode()
        if key in _api_keys:
            await _json(send, 200, {"kind": "api_key", "role": "staff", "api_key_id": key[4:9]})
        else:
            await _json(send, 401, {"detail": "The API key is unknown or revoked."})
    elif path == "/admin/revoke":
        _api_keys.discard(query.get("key", ""))
        await _json(send, 200, {"revoked": query.get("key")})
    elif path == "/admin/whoami-count":
        await _json(send, 200, {"count": _state["whoami"]})
    elif path.startswith("/echo") or path.startswith("/api/"):
        digest = hashlib.sha256()
        length = chunks = max_chunk = 0
        while True:
            message = await receive()
            body = message.get("body", b"")
            if body:
                digest.update(body)
                length += len(body)
                chunks += 1
                max_chunk = max(max_chunk, len(body))
            if not message.get("more_body"):
                break
        headers: dict[str, list[str]] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode().lower(), []).append(value.decode())
        await _json(
            send,
            200,
            {
                "instance": INSTANCE,
                "method": scope["method"],
                "path": path,
                "query": scope["query_string"].decode(),
                "headers": headers,
                "body_length": length,
                "body_sha256": digest.hexdigest(),
                "chunks": chunks,
                "max_chunk": max_chunk,
                "client_port": scope["client"][1] if scope.get("client") else None,
                "served": _state["served"],
            },
            headers=((b"connection", b"x-drop-me"), (b"x-drop-me", b"1"), (b"keep-alive", b"5")),
        )
    elif path == "/stream":
        size, chunk = int(query.get("size", "100000")), int(query.get("chunk", "16384"))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")],
            }
        )
        sent = 0
        while sent < size:
            part = min(chunk, size - sent)
            await send({"type": "http.response.body", "body": b"x" * part, "more_body": True})
            sent += part
        await send({"type": "http.response.body", "body": b""})
    elif path == "/slow":
        await asyncio.sleep(float(query.get("seconds", "1")))
        await _json(send, 200, {"instance": INSTANCE, "slept": True})
    elif path.startswith("/status/"):
        extra = ((b"retry-after", query["retry_after"].encode()),) if "retry_after" in query else ()
        await _json(send, int(path.rsplit("/", 1)[1]), {"instance": INSTANCE}, extra)
    elif path == "/.well-known/jwks.json":
        await _json(send, 200, json.loads(Path(os.environ["JWKS_FILE"]).read_text()))
    else:
        await _json(send, 404, {"instance": INSTANCE})


# Process helpers for the tests.


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port}")


def start_upstream(
    name: str, *, env: dict[str, str] | None = None, port: int | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start this module's app under uvicorn; returns the process and its URL."""
    port = port or free_port()
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "uvicorn",
            "tests.integration.test_gateway_upstream:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--no-proxy-headers",
        ],
        cwd=ROOT,
        env={**os.environ, "UPSTREAM_NAME": name, **(env or {})},
        stdout=subprocess.DEVNULL,
    )
    wait_for_port(port, proc)
    return proc, f"http://127.0.0.1:{port}"


def start_gateway(
    routes: dict[str, Any], tmp: Path, *, workers: int = 1, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``python -m ecosistema.gateway`` on a free port with the given route table."""
    port = free_port()
    table = tmp / f"routes-{port}.json"
    table.write_text(json.dumps(routes))
    proc = subprocess.Popen(
        [
            PYTHON,
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
        env={**os.environ, "ECOSISTEMA_CACHE_URL": "memory://", **(env or {})},
        stdout=subprocess.DEVNULL,
    )
    wait_for_port(port, proc)
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
