"""Connections to upstream instances: an HTTP/1.1 response parser per connection (httptools) and a
keep-alive pool per instance."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import Final, Protocol, cast

import httptools

from ecosistema.gateway.balancer import Instance
from ecosistema.gateway.config import ServiceConfig

Headers = list[tuple[bytes, bytes]]
_monotonic: Final = time.monotonic  # compiled: a static reference, not two lookups


class ResponseHandler(Protocol):
    """What an upstream connection reports to the exchange it is serving."""

    def on_response_head(self, status: int, reason: bytes, headers: Headers) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_complete(self, keep_alive: bool) -> None: ...
    def on_upstream_lost(self, exc: BaseException | None) -> None: ...
    def on_upstream_paused(self) -> None: ...
    def on_upstream_resumed(self) -> None: ...
    def flush(self) -> None: ...


def _has_body_framing(headers: Headers) -> bool:
    for name, value in headers:
        if len(name) != 14 and len(name) != 17:  # neither of the two names below
            continue
        lname = name.lower()
        if lname == b"content-length":
            return True
        if lname == b"transfer-encoding" and b"chunked" in value.lower():
            return True
    return False


def discard(data: bytes) -> None:
    """Stands in for a connection's parser and transport before it has them: bytes go nowhere."""


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to an upstream instance, serving one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.handler: ResponseHandler | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser: httptools.HttpResponseParser | None = None
        self._feed: Callable[[bytes], None] = discard
        self._send: Callable[[bytes], object] = discard
        self._headers: Headers = []
        self._reason = b""
        self._head_only = False
        self._got_head = False
        self._until_close = False
        self._informational = False
        # The parser left ready for the next response by the last one's end (not after a HEAD,
        # whose body-less response the parser cannot know about).
        self._reusable = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._send = self.transport.write  # bound once, not looked up per write

    def begin(self, handler: ResponseHandler, *, head_only: bool) -> None:
        """Start waiting for the response to a request about to be written."""
        self.handler = handler
        if not self._reusable:
            parser = self._parser = httptools.HttpResponseParser(self)
            self._feed = parser.feed_data
        self._reusable = False
        self._headers = []
        self._reason = b""
        self._head_only = head_only
        self._got_head = False
        self._until_close = False
        self._informational = False

    def write(self, data: bytes) -> None:
        """Send request bytes."""
        if self.transport is not None and not self.closed:
            self._send(data)

    def pause_reading(self) -> None:
        """Stop reading the response while the client cannot take more."""
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read the response again."""
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        """Close without telling the handler (the caller already knows)."""
        self.handler = None
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once, e.g. when the exchange was given up mid-body."""
        self.handler = None
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        handler = self.handler
        if handler is None or self._parser is None:
            self.close()  # bytes nobody asked for: the connection cannot be trusted again
            return
        try:
            self._feed(data)
        except httptools.HttpParserError as exc:
            lost = self.handler
            self.abort()
            if lost is not None:
                lost.on_upstream_lost(exc)
            return
        # One write to the client per read from the upstream, however many callbacks it made.
        handler.flush()

    def on_message_begin(self) -> None:
        # Bytes after a complete response (a next message nobody asked for) spoil the parser.
        self._reusable = False

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if status < 200:
            self._informational = True
            return
        handler = self.handler
        if handler is None:
            return
        self._got_head = True
        no_body = self._head_only or status in (204, 304)
        self._until_close = not no_body and not _has_body_framing(self._headers)
        handler.on_response_head(status, self._reason, self._headers)
        if self._head_only and self.handler is handler:
            self._complete(keep_alive=self._parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        if self.handler is not None:
            self.handler.on_response_body(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            self._headers = []
            self._reason = b""
            return
        if self.handler is not None and self._parser is not None:
            self._reusable = True
            self._complete(keep_alive=self._parser.should_keep_alive() and not self._until_close)

    def _complete(self, *, keep_alive: bool) -> None:
        handler = self.handler
        self.handler = None
        if not keep_alive:
            self.close()
        if handler is not None:
            handler.on_response_complete(keep_alive)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        handler = self.handler
        self.handler = None
        if handler is None:
            return
        if self._got_head and self._until_close:
            handler.on_response_complete(False)
            handler.flush()
        else:
            handler.on_upstream_lost(exc)

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.on_upstream_paused()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.on_upstream_resumed()


_client_tls: ssl.SSLContext | None = None


def client_tls_context() -> ssl.SSLContext:
    """The TLS context for https:// instances: system trust store, TLS 1.2 at least."""
    global _client_tls
    if _client_tls is None:
        _client_tls = ssl.create_default_context()
        _client_tls.minimum_version = ssl.TLSVersion.TLSv1_2
    return _client_tls


class ConnectionPool:
    """Idle keep-alive connections to one instance, reused most-recent first."""

    def __init__(self, instance: Instance, config: ServiceConfig) -> None:
        self.instance = instance
        self._idle: list[UpstreamConnection] = []
        self._max_idle = config.max_idle_connections
        self._idle_timeout = config.idle_timeout_seconds
        self._connect_timeout = config.connect_timeout_seconds
        self.opened = 0

    def take_idle(self) -> UpstreamConnection | None:
        """A pooled connection ready for a request, or None when a new one is needed."""
        idle = self._idle
        if not idle:
            return None
        now = _monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self._idle_timeout:
                return conn
            conn.close()
        return None

    async def acquire(self) -> tuple[UpstreamConnection, bool]:
        """A connection ready for a request, and whether it was reused from the pool."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self._idle_timeout:
                return conn, True
            conn.close()
        instance = self.instance
        _, conn = await asyncio.wait_for(
            loop.create_connection(
                UpstreamConnection,
                instance.host,
                instance.port,
                ssl=client_tls_context() if instance.tls else None,
            ),
            self._connect_timeout,
        )
        self.opened += 1
        return conn, False

    def release(self, conn: UpstreamConnection) -> None:
        """Give back a connection whose last exchange completed cleanly."""
        if conn.closed or len(self._idle) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = _monotonic()
        self._idle.append(conn)

    def close_expired(self, now: float) -> None:
        """Close connections idle for longer than the idle timeout (``now``: time.monotonic())."""
        keep = [c for c in self._idle if not c.closed and now - c.idle_since < self._idle_timeout]
        for conn in self._idle:
            if conn not in keep:
                conn.close()
        self._idle = keep

    def close(self) -> None:
        """Close every idle connection."""
        for conn in self._idle:
            conn.close()
        self._idle.clear()


class _Collector:
    """A handler that gathers a whole (small) response, for health checks and the JWKS."""

    def __init__(self, limit: int) -> None:
        self.done: asyncio.Future[tuple[int, Headers, bytes]] = (
            asyncio.get_running_loop().create_future()
        )
        self._status = 0
        self._headers: Headers = []
        self._body = bytearray()
        self._limit = limit

    def on_response_head(self, status: int, reason: bytes, headers: Headers) -> None:
        self._status, self._headers = status, list(headers)

    def on_response_body(self, data: bytes) -> None:
        self._body += data
        if len(self._body) > self._limit and not self.done.done():
            self.done.set_exception(ValueError("response too large"))

    def on_response_complete(self, keep_alive: bool) -> None:
        if not self.done.done():
            self.done.set_result((self._status, self._headers, bytes(self._body)))

    def on_upstream_lost(self, exc: BaseException | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"upstream closed: {exc}"))

    def on_upstream_paused(self) -> None:
        return None

    def on_upstream_resumed(self) -> None:
        return None

    def flush(self) -> None:
        return None


async def fetch(
    instance: Instance,
    path: str,
    *,
    timeout: float,
    limit: int = 1024 * 1024,
    headers: bytes = b"",
) -> tuple[int, Headers, bytes]:
    """GET ``path`` from ``instance`` on a fresh connection; for checks outside the hot path.
    ``headers``: extra header lines, each ending in CRLF (the caller has validated them)."""

    async def run() -> tuple[int, Headers, bytes]:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            UpstreamConnection,
            instance.host,
            instance.port,
            ssl=client_tls_context() if instance.tls else None,
        )
        collector = _Collector(limit)
        try:
            conn.begin(collector, head_only=False)
            conn.write(
                b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n"
                b"User-Agent: ecosistema-gateway\r\nAccept: */*\r\n%s\r\n"
                % (path.encode("ascii"), instance.host_header, headers)
            )
            return await collector.done
        finally:
            conn.close()

    return await asyncio.wait_for(run(), timeout)
