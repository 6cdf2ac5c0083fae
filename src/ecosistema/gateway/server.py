"""Running the gateway: one worker in an event loop, or several forked workers sharing a port."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import structlog

from ecosistema.gateway import native
from ecosistema.gateway.auth import ApiKeyCheck
from ecosistema.gateway.config import GatewayConfig
from ecosistema.gateway.metrics import enable_multiprocess, forget_worker
from ecosistema.gateway.proxy import ClientConnection, Gateway

if TYPE_CHECKING:
    from ecosistema.gateway.inprocess import LocalService
    from ecosistema.platform.events import EventBus

log = structlog.get_logger(__name__)

DRAIN_SECONDS = 10.0


def create_ssl_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A server TLS context: TLS 1.2 at least, HTTP/1.1 by ALPN."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    context.set_alpn_protocols(["http/1.1"])
    return context


def listening_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A bound, listening TCP socket, created once and shared by every worker."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


@dataclass
class GatewayServer:
    """A gateway serving in the current event loop."""

    gateway: Gateway
    server: asyncio.Server
    port: int

    async def close(self, drain_seconds: float = DRAIN_SECONDS) -> None:
        """Stop accepting, let requests in flight finish, then release everything."""
        self.server.close()
        await self.gateway.drain(drain_seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.server.wait_closed(), 1.0)
        await self.gateway.close()


async def serve(
    config: GatewayConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    sock: socket.socket | None = None,
    ssl_context: ssl.SSLContext | None = None,
    access_log: IO[str] | None = None,
    local_apps: Mapping[str, LocalService] | None = None,
    bus: EventBus | None = None,
    api_key_check: ApiKeyCheck | None = None,
) -> GatewayServer:
    """Start a gateway in the running loop, on ``sock`` or on ``host:port`` (0: a free port);
    access-log lines go to ``access_log`` (default: standard output). ``local_apps`` serve the
    in-process services; ``bus`` is where cache purges come from when it is not the configured
    one (the embedded runtime's); ``api_key_check`` checks API keys where identity runs in this
    process (otherwise the gateway asks identity over HTTP)."""
    loop = asyncio.get_running_loop()
    gateway = Gateway(
        config,
        tls=ssl_context is not None,
        access_log=access_log,
        local_apps=local_apps,
        bus=bus,
        api_key_check=api_key_check,
    )
    await gateway.start_background()
    if sock is None:
        sock = listening_socket(host, port)
    server = await loop.create_server(
        lambda: ClientConnection(gateway), sock=sock, ssl=ssl_context, backlog=2048
    )
    return GatewayServer(gateway, server, sock.getsockname()[1])


def settle_heap() -> None:
    """Move everything allocated while starting (configuration, modules, pydantic models) out of
    the cyclic garbage collector's sight, and let the young generation grow larger: the hot path
    allocates short-lived objects that reference counting frees, and each collection of the
    young generation otherwise rescans what is still in flight. For a worker process only."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def _run_worker(
    config: GatewayConfig, sock: socket.socket, ssl_context: ssl.SSLContext | None
) -> None:
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)

    async def main() -> None:
        running = await serve(config, sock=sock, ssl_context=ssl_context)
        settle_heap()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        log.info("gateway_worker_started", pid=os.getpid(), port=running.port)
        await stop.wait()
        await running.close()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
        sys.stdout.flush()


def run_gateway(
    config: GatewayConfig,
    host: str = "127.0.0.1",
    port: int = 8080,
    workers: int = 1,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> None:
    """Serve the gateway until SIGTERM/SIGINT: ``workers`` forked processes share one listening
    socket, and a worker that dies is replaced."""
    ssl_context = create_ssl_context(certfile, keyfile) if certfile else None
    sock = listening_socket(host, port)
    if workers <= 1:
        _run_worker(config, sock, ssl_context)
        return
    metrics_dir = tempfile.mkdtemp(prefix="ecosistema-gateway-metrics-")
    enable_multiprocess(metrics_dir)
    children: dict[int, float] = {}
    stopping = False

    def spawn() -> None:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _run_worker(config, sock, ssl_context)
            except BaseException:  # a worker must never return into the supervisor's loop
                code = 1
            finally:
                os._exit(code)
        children[pid] = time.monotonic()

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(workers):
        spawn()
    native_state, native_why = native.status()
    log.info(
        "gateway_started",
        host=host,
        port=sock.getsockname()[1],
        workers=workers,
        compiled=native.active(),
        native=native_state,
        native_detail=native_why,
    )
    try:
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            started = children.pop(pid, None)
            forget_worker(pid)
            if stopping or started is None:
                continue
            log.warning("gateway_worker_died", pid=pid, status=status)
            if time.monotonic() - started < 1.0:
                time.sleep(1.0)  # a worker that dies at once would otherwise be re-forked hot
            if not stopping:
                spawn()
    finally:
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
