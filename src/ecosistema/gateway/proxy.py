"""The gateway's hot path: an asyncio Protocol per client connection (httptools request parser),
one ``Exchange`` per request, streamed to a pooled upstream connection and back.

Bodies are never gathered whole: request chunks go to the upstream as they arrive and response
chunks to the client, with reading paused on one side while the other side's write buffer is
full. Only a small request body (``REPLAY_LIMIT``) is kept, so that an idempotent request can be
retried on another instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import sys
import time
from collections import deque
from typing import IO, Any, cast
from urllib.parse import unquote

import httptools
import structlog

from ecosistema.gateway.auth import AuthenticationFailed, EdgeAuthenticator, KeysUnavailable
from ecosistema.gateway.balancer import Balancer, Instance
from ecosistema.gateway.config import GatewayConfig, RateLimitRule, RouteConfig
from ecosistema.gateway.metrics import GatewayMetrics
from ecosistema.gateway.principal import PRINCIPAL_HEADER, Principal, sign_principal
from ecosistema.gateway.ratelimit import RateLimiter, create_rate_limiter
from ecosistema.gateway.routing import Router
from ecosistema.gateway.upstream import ConnectionPool, Headers, UpstreamConnection, fetch
from ecosistema.platform.errors import PROBLEM_BASE

log = structlog.get_logger(__name__)

REPLAY_LIMIT = 64 * 1024
# Request bytes held while no upstream connection is ready yet, before the client is paused.
BUFFER_HIGH_WATER = 256 * 1024

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Request headers the gateway sets itself, so a client's copies never reach a service.
_REQUEST_OWNED = frozenset(
    {
        b"host",
        b"content-length",
        b"expect",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-real-ip",
        b"forwarded",
        b"x-request-id",
        b"x-principal",
        b"x-user",
        b"x-user-id",
        b"x-user-role",
        b"x-forwarded-user",
        b"x-auth-user",
        b"x-remote-user",
        b"remote-user",
    }
)
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
_RESPONSE_OWNED = frozenset(
    {
        b"x-request-id",
        b"x-content-type-options",
        b"x-frame-options",
        b"strict-transport-security",
        b"access-control-allow-origin",
        b"access-control-allow-credentials",
        b"access-control-expose-headers",
        b"ratelimit-limit",
        b"ratelimit-remaining",
        b"ratelimit-reset",
    }
)
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

_OK, _LOST_BEFORE_HEAD, _LOST_AFTER_HEAD, _TIMEOUT, _TOO_LARGE, _CLIENT_GONE = range(6)
_OUTCOME_NAMES = ("ok", "connection_lost", "lost_mid_response", "timeout", "too_large", "gone")

_PAUSE_BUFFER, _PAUSE_UPSTREAM, _PAUSE_PIPELINE = 1, 2, 4

_REASONS = {
    200: b"OK",
    204: b"No Content",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Content Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


# Request and trace ids must be unique, not unguessable; a seeded PRNG avoids a syscall each.
_ids = random.Random(os.urandom(16))  # noqa: S311
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(16)))


def _is_dot_segment_path(path: str) -> bool:
    return any(seg in (".", "..") for seg in path.split("/"))


def _valid_request_id(value: bytes) -> bool:
    return 0 < len(value) <= 128 and all(33 <= c <= 126 for c in value)


def _valid_traceparent(value: bytes) -> bool:
    parts = value.split(b"-")
    return (
        len(parts) == 4
        and len(parts[0]) == 2
        and len(parts[1]) == 32
        and len(parts[2]) == 16
        and len(parts[3]) == 2
    )


class Exchange:
    """One request and its response; reports from the upstream connection arrive here."""

    __slots__ = (
        "attempts",
        "body_done",
        "body_received",
        "buffered",
        "chunked",
        "client_ip",
        "close_after",
        "conn",
        "content_length",
        "expect_continue",
        "headers",
        "http11",
        "instance",
        "keep_alive",
        "max_body",
        "method",
        "origin",
        "path",
        "pending",
        "principal",
        "rate_headers",
        "rechunk",
        "replayable",
        "request_id",
        "response_bytes",
        "response_started",
        "route",
        "sink",
        "sink_paused",
        "started",
        "status",
        "target",
        "timer",
        "trace_id",
        "traceparent",
        "upstream_keep_alive",
        "waiter",
    )

    def __init__(
        self,
        conn: ClientConnection,
        method: str,
        target: bytes,
        headers: Headers,
        *,
        http11: bool,
        keep_alive: bool,
        max_body: int,
    ) -> None:
        self.conn = conn
        self.method = method
        self.target = target
        self.headers = headers
        self.http11 = http11
        self.keep_alive = keep_alive
        self.max_body = max_body
        self.client_ip = conn.client_ip
        self.started = time.perf_counter()
        self.path = ""
        self.route: RouteConfig | None = None
        self.chunked = False
        self.content_length = 0
        self.expect_continue = False
        self.origin: bytes | None = None
        request_id = traceparent = None
        for name, value in headers:
            if name == b"content-length":
                self.content_length = int(value) if value.isdigit() else -1
            elif name == b"transfer-encoding":
                self.chunked = b"chunked" in value.lower()
            elif name == b"x-request-id":
                request_id = value
            elif name == b"traceparent":
                traceparent = value
            elif name == b"expect":
                self.expect_continue = value.lower() == b"100-continue"
            elif name == b"origin":
                self.origin = value
        if request_id and _valid_request_id(request_id):
            self.request_id = request_id
        else:
            self.request_id = b"%032x" % _ids.getrandbits(128)
        if traceparent and _valid_traceparent(traceparent):
            self.traceparent = traceparent
        else:
            self.traceparent = b"00-%032x-%016x-01" % (_ids.getrandbits(128), _ids.getrandbits(64))
        self.trace_id = self.traceparent[3:35]
        self.body_done = False
        self.body_received = 0
        self.buffered: list[bytes] = []
        self.replayable = True
        self.sink: UpstreamConnection | None = None
        self.sink_paused = False
        self.instance: Instance | None = None
        self.waiter: asyncio.Future[int] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.response_started = False
        self.rechunk = False
        self.status = 0
        self.response_bytes = 0
        self.upstream_keep_alive = False
        self.close_after = False
        self.principal: Principal | None = None
        self.rate_headers = b""
        self.attempts = 0
        self.pending: list[bytes] = []

    def header(self, name: bytes) -> bytes | None:
        """The first value of a request header (lower-case name)."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    # Request body, from the client connection.

    def feed_body(self, chunk: bytes) -> None:
        """A piece of the request body arrived from the client."""
        self.body_received += len(chunk)
        if self.body_received > self.max_body:
            self._body_too_large()
            return
        sink = self.sink
        if sink is None:
            self.buffered.append(chunk)
            if self.body_received > BUFFER_HIGH_WATER:
                self.conn.pause(_PAUSE_BUFFER)
            return
        sink.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if self.chunked else chunk)
        if self.replayable:
            if self.body_received <= REPLAY_LIMIT:
                self.buffered.append(chunk)
            else:
                self.replayable = False
                self.buffered = []

    def finish_body(self) -> None:
        """The request body (if any) is complete."""
        self.body_done = True
        if self.sink is not None and self.chunked:
            self.sink.write(b"0\r\n\r\n")

    def _body_too_large(self) -> None:
        self.conn.pause(_PAUSE_BUFFER)
        self.close_after = True
        if self.response_started:
            self.conn.abort()
        elif self.sink is not None:
            self.sink.abort()
            self._resolve(_TOO_LARGE)
        else:
            self.buffered = []
            self.replayable = False

    @property
    def body_too_large(self) -> bool:
        """The client sent, or announced, more than the route accepts."""
        return self.body_received > self.max_body or self.content_length > self.max_body

    # Sending to an upstream.

    def attach(
        self, sink: UpstreamConnection, instance: Instance, head: bytes, timeout: float
    ) -> asyncio.Future[int]:
        """Write the request to ``sink`` and return a future resolved with the attempt's outcome."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[int] = loop.create_future()
        self.waiter = waiter
        self.sink = sink
        self.instance = instance
        sink.begin(self, head_only=self.method == "HEAD")
        if self.buffered:
            if self.chunked:
                parts = [head]
                parts.extend(b"%x\r\n%s\r\n" % (len(c), c) for c in self.buffered)
                sink.write(b"".join(parts))
            else:
                sink.write(head + b"".join(self.buffered))
            if self.body_received > REPLAY_LIMIT:
                self.replayable = False
                self.buffered = []
        else:
            sink.write(head)
        if self.body_done and self.chunked:
            sink.write(b"0\r\n\r\n")
        self.timer = loop.call_later(timeout, self._on_timeout)
        self.conn.resume(_PAUSE_BUFFER)
        return waiter

    def detach(self) -> UpstreamConnection | None:
        """Forget the upstream connection of the last attempt, handing it to the caller."""
        sink, self.sink = self.sink, None
        if sink is not None and self.sink_paused:
            sink.resume_reading()
        self.sink_paused = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.conn.resume(_PAUSE_UPSTREAM)
        return sink

    def _resolve(self, outcome: int) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(outcome)

    def _on_timeout(self) -> None:
        self.timer = None
        if self.response_started:
            return
        if self.sink is not None:
            self.sink.abort()
        self._resolve(_TIMEOUT)

    def client_gone(self) -> None:
        """The client connection closed; give up the upstream attempt."""
        if self.sink is not None:
            self.sink.abort()
        self._resolve(_CLIENT_GONE)

    # Reports from the upstream connection (ResponseHandler).

    def on_response_head(self, status: int, reason: bytes, headers: Headers) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.status = status
        gw = self.conn.gateway
        dropped: set[bytes] = set()
        for name, value in headers:
            if name.lower() == b"connection":
                dropped.update(t.strip().lower() for t in value.split(b","))
        out = [b"HTTP/1.1 %d %s\r\n" % (status, reason or b"Unknown")]
        has_length = False
        for name, value in headers:
            lname = name.lower()
            if lname in HOP_BY_HOP or lname in _RESPONSE_OWNED or lname in dropped:
                continue
            if lname == b"content-length":
                has_length = True
            out.append(b"%s: %s\r\n" % (name, value))
        no_body = self.method == "HEAD" or status in (204, 304)
        if not has_length and not no_body:
            if self.http11:
                out.append(b"transfer-encoding: chunked\r\n")
                self.rechunk = True
            else:
                self.keep_alive = False
        out.append(gw.response_headers(self))
        if not self.keep_alive or not self.body_done:
            self.close_after = True
            out.append(b"connection: close\r\n")
        out.append(b"\r\n")
        self.response_started = True
        self.pending.append(b"".join(out))

    def on_response_body(self, data: bytes) -> None:
        self.response_bytes += len(data)
        if self.rechunk:
            self.pending.append(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.pending.append(data)

    def flush(self) -> None:
        """Send what the last read from the upstream produced, in one write."""
        pending = self.pending
        if pending:
            self.conn.write(pending[0] if len(pending) == 1 else b"".join(pending))
            pending.clear()

    def on_response_complete(self, keep_alive: bool) -> None:
        if self.rechunk:
            self.pending.append(b"0\r\n\r\n")
        self.upstream_keep_alive = keep_alive and self.body_done
        self._resolve(_OK)

    def on_upstream_lost(self, exc: BaseException | None) -> None:
        self.flush()
        self._resolve(_LOST_AFTER_HEAD if self.response_started else _LOST_BEFORE_HEAD)

    def on_upstream_paused(self) -> None:
        self.conn.pause(_PAUSE_UPSTREAM)

    def on_upstream_resumed(self) -> None:
        self.conn.resume(_PAUSE_UPSTREAM)


class ClientConnection(asyncio.Protocol):
    """One client connection: parses requests and serves them one after another."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: Headers = []
        self._header_bytes = 0
        self._current: Exchange | None = None
        self._active: Exchange | None = None
        self._queue: deque[Exchange] = deque()
        self._paused = 0
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client_ip = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        self.gateway.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.gateway.connections.discard(self)
        if self._active is not None:
            self._active.client_gone()
        for ex in self._queue:
            ex.client_gone()
        self._queue.clear()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(
                501, "not-implemented", "Not implemented", "Protocol upgrades are not proxied."
            )
        except httptools.HttpParserError:
            self._reject(400, "bad-request", "Bad request", "The request is not valid HTTP/1.1.")
        except _HeadersTooLarge:
            self._reject(
                431,
                "headers-too-large",
                "Request headers too large",
                "The request head is too large.",
            )

    def _reject(self, status: int, type_: str, title: str, detail: str) -> None:
        if self._active is None and not self._closed:
            self.write(problem_bytes(status, type_, title, detail, close=True))
        self.close()

    # httptools callbacks.

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self.gateway.config.max_header_bytes:
            raise _HeadersTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > self.gateway.config.max_header_bytes:
            raise _HeadersTooLarge
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        ex = Exchange(
            self,
            parser.get_method().decode("ascii", "replace"),
            self._url,
            self._headers,
            http11=parser.get_http_version() == "1.1",
            keep_alive=parser.should_keep_alive(),
            max_body=self.gateway.config.max_body_bytes,
        )
        self.gateway.prepare(ex)
        self._current = ex
        if self._active is None:
            self._active = ex
            self.gateway.start(ex)
        else:
            self._queue.append(ex)
            self.pause(_PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        if self._current is not None:
            self._current.feed_body(body)

    def on_message_complete(self) -> None:
        if self._current is not None:
            self._current.finish_body()
            self._current = None

    # Flow control.

    def write(self, data: bytes) -> None:
        """Send bytes to the client."""
        if self.transport is not None and not self._closed:
            self.transport.write(data)

    def pause(self, reason: int) -> None:
        """Stop reading from the client for ``reason`` until it is resumed."""
        if not self._paused and self.transport is not None and not self._closed:
            self.transport.pause_reading()
        self._paused |= reason

    def resume(self, reason: int) -> None:
        """Lift ``reason``; reading restarts once no reason remains."""
        if not self._paused & reason:
            return
        self._paused &= ~reason
        if not self._paused and self.transport is not None and not self._closed:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        ex = self._active
        if ex is not None and ex.sink is not None and not ex.sink_paused:
            ex.sink_paused = True
            ex.sink.pause_reading()

    def resume_writing(self) -> None:
        ex = self._active
        if ex is not None and ex.sink is not None and ex.sink_paused:
            ex.sink_paused = False
            ex.sink.resume_reading()

    def close(self) -> None:
        """Close once everything written has been sent."""
        self._closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection: a response already begun cannot be finished."""
        self._closed = True
        if self.transport is not None:
            self.transport.abort()

    @property
    def closed(self) -> bool:
        """Whether the connection is closing or closed."""
        return self._closed

    def finished(self, ex: Exchange) -> None:
        """The exchange's response is complete: close, or serve the next pipelined request."""
        if ex.close_after or not ex.keep_alive or not ex.body_done:
            self.close()
            return
        self._active = None
        if self._queue:
            nxt = self._queue.popleft()
            self._active = nxt
            self.gateway.start(nxt)
        if not self._queue:
            self.resume(_PAUSE_PIPELINE)

    @property
    def idle(self) -> bool:
        """No request is being served on this connection."""
        return self._active is None and self._current is None


class _HeadersTooLarge(Exception):
    pass


def problem_bytes(
    status: int,
    type_: str,
    title: str,
    detail: str,
    *,
    extra_headers: bytes = b"",
    instance: str | None = None,
    close: bool = False,
    fields: dict[str, Any] | None = None,
) -> bytes:
    """A whole problem+json (RFC 9457) response, head and body."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + type_,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if fields:
        body.update(fields)
    payload = json.dumps(body, separators=(",", ":")).encode()
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error")),
            b"content-type: application/problem+json\r\ncache-control: no-store\r\n",
            b"content-length: %d\r\n" % len(payload),
            extra_headers,
            b"connection: close\r\n" if close else b"",
            b"\r\n",
            payload,
        )
    )


class Gateway:
    """One worker's gateway: route table, balancers, pools, authenticator, limiter, metrics."""

    def __init__(
        self, config: GatewayConfig, *, tls: bool = False, access_log: IO[str] | None = None
    ) -> None:
        self.config = config
        self.tls = tls
        self.router = Router(config.routes)
        self.balancers = {name: Balancer(name, svc) for name, svc in config.services.items()}
        self.pools: dict[Instance, ConnectionPool] = {
            inst: ConnectionPool(inst, bal.config)
            for bal in self.balancers.values()
            for inst in bal.instances
        }
        self.auth = EdgeAuthenticator(config.auth, self.balancers.get(config.auth.jwks_service))
        limits = config.rate_limits
        self.limiter: RateLimiter | None = (
            create_rate_limiter(limits.backend_url, limits.key_prefix) if limits.enabled else None
        )
        self.metrics = GatewayMetrics(lambda: self.balancers.values())
        secret = config.auth.principal_secret
        self._secret = secret.get_secret_value().encode() if secret is not None else None
        self._api_key_header = config.auth.api_key_header.lower().encode()
        self._principal_header = PRINCIPAL_HEADER.encode()
        self._access_log = access_log if access_log is not None else sys.stdout
        security = b"x-content-type-options: nosniff\r\nx-frame-options: DENY\r\n"
        if tls:
            security += b"strict-transport-security: max-age=31536000; includeSubDomains\r\n"
        self._security = security
        self._forwarded_proto = b"https" if tls else b"http"
        cors = config.cors
        self._cors_any = "*" in cors.allow_origins
        self._cors_origins = frozenset(o.encode() for o in cors.allow_origins)
        self._cors_expose = ", ".join(cors.expose_headers).encode()
        self._tasks: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []
        self.connections: set[ClientConnection] = set()
        self._rate_limit_errors = 0

    # Lifecycle.

    async def start_background(self) -> None:
        """Start the active health checks and the idle-connection sweeper."""
        for balancer in self.balancers.values():
            if balancer.config.health_path:
                self._background.append(asyncio.create_task(self._check_health(balancer)))
        self._background.append(asyncio.create_task(self._housekeeping()))

    async def close(self) -> None:
        """Stop background work and close upstream connections."""
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._background.clear()
        for pool in self.pools.values():
            pool.close()
        if self.limiter is not None:
            await self.limiter.close()
        self._flush_log()

    async def drain(self, seconds: float) -> None:
        """Wait (up to ``seconds``) for requests in flight to finish, then close idle clients."""
        deadline = time.monotonic() + seconds
        while self._tasks and time.monotonic() < deadline:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - time.monotonic()))
        for conn in list(self.connections):
            conn.close()

    async def _check_health(self, balancer: Balancer) -> None:
        config = balancer.config
        path = config.health_path or "/readyz"

        async def probe(inst: Instance) -> None:
            try:
                status, _, _ = await fetch(inst, path, timeout=config.health_timeout_seconds)
                ok = 200 <= status < 400
            except (OSError, TimeoutError, ConnectionError, ValueError):
                ok = False
            was = inst.healthy
            inst.record_health(ok, config)
            if was != inst.healthy:
                log.warning(
                    "upstream_health_changed",
                    service=balancer.name,
                    instance=inst.url,
                    healthy=inst.healthy,
                )

        while True:
            await asyncio.gather(*(probe(inst) for inst in balancer.instances))
            await asyncio.sleep(config.health_interval_seconds)

    async def _housekeeping(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            now = loop.time()
            for pool in self.pools.values():
                pool.close_expired(now)
            self._flush_log()

    def _flush_log(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._access_log.flush()

    # Per request.

    def prepare(self, ex: Exchange) -> None:
        """Decide, before any body arrives, which route serves the request and its body limit."""
        target = ex.target
        raw_path = target.split(b"?", 1)[0].decode("latin-1")
        path = unquote(raw_path) if "%" in raw_path else raw_path
        ex.path = path
        if not path.startswith("/"):
            return
        route = self.router.match(ex.method, path).route
        if route is not None:
            ex.route = route
            if route.max_body_bytes is not None:
                ex.max_body = route.max_body_bytes

    def start(self, ex: Exchange) -> None:
        """Serve ``ex`` in its own task."""
        task = asyncio.get_running_loop().create_task(self._serve(ex))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, ex: Exchange) -> None:
        try:
            await self._proxy(ex)
        except Exception:
            log.exception("gateway_error", path=ex.path, request_id=ex.request_id.decode())
            if not ex.response_started:
                self._problem(
                    ex, 500, "internal-error", "Internal server error", "The gateway failed."
                )
            else:
                ex.conn.abort()
        finally:
            self._finish(ex)

    def _finish(self, ex: Exchange) -> None:
        if ex.sink is not None:
            sink = ex.detach()
            if sink is not None:
                sink.abort()
        duration = time.perf_counter() - ex.started
        route_label = ex.route.label if ex.route is not None else "unmatched"
        self.metrics.observe_request(route_label, ex.method, ex.status, duration)
        if self.config.access_log:
            self._log_access(ex, route_label, duration)
        if ex.response_started and not ex.conn.closed:
            ex.conn.finished(ex)
        elif not ex.conn.closed:
            ex.conn.close()

    def _log_access(self, ex: Exchange, route: str, duration: float) -> None:
        entry = {
            "ts": time.time(),
            "level": "info",
            "event": "access",
            "request_id": ex.request_id.decode("ascii", "replace"),
            "trace_id": ex.trace_id.decode("ascii", "replace"),
            "method": ex.method,
            "path": ex.path,
            "status": ex.status,
            "duration_ms": round(duration * 1000, 3),
            "route": route,
            "upstream": ex.instance.url if ex.instance is not None else None,
            "attempts": ex.attempts,
            "bytes_in": ex.body_received,
            "bytes_out": ex.response_bytes,
            "client": ex.client_ip,
            "sub": ex.principal.sub if ex.principal is not None else None,
        }
        with contextlib.suppress(OSError, ValueError):
            self._access_log.write(json.dumps(entry, separators=(",", ":")) + "\n")

    def _problem(
        self,
        ex: Exchange,
        status: int,
        type_: str,
        title: str,
        detail: str,
        extra_headers: bytes = b"",
        fields: dict[str, Any] | None = None,
    ) -> None:
        if ex.response_started:
            ex.conn.abort()
            return
        close = not ex.keep_alive or not ex.body_done or ex.close_after
        ex.close_after = close
        ex.status = status
        ex.response_started = True
        ex.conn.write(
            problem_bytes(
                status,
                type_,
                title,
                detail,
                extra_headers=extra_headers + self.response_headers(ex),
                instance=ex.path or None,
                close=close,
                fields=fields,
            )
        )

    def response_headers(self, ex: Exchange) -> bytes:
        """Headers the gateway adds to every response: request id, security, CORS, limits."""
        out = b"x-request-id: %s\r\n%s%s" % (ex.request_id, self._security, ex.rate_headers)
        origin = ex.origin
        if origin is not None and (self._cors_any or origin in self._cors_origins):
            allow = b"*" if self._cors_any and not self.config.cors.allow_credentials else origin
            out += b"access-control-allow-origin: %s\r\nvary: origin\r\n" % allow
            if self.config.cors.allow_credentials:
                out += b"access-control-allow-credentials: true\r\n"
            if self._cors_expose:
                out += b"access-control-expose-headers: %s\r\n" % self._cors_expose
        return out

    async def _proxy(self, ex: Exchange) -> None:
        config = self.config
        if (
            ex.method == "OPTIONS"
            and ex.origin is not None
            and ex.header(b"access-control-request-method")
        ):
            self._preflight(ex)
            return
        if (
            config.metrics_path is not None
            and ex.path == config.metrics_path
            and ex.method
            in (
                "GET",
                "HEAD",
            )
        ):
            self._metrics(ex)
            return
        if not ex.path.startswith("/") or _is_dot_segment_path(ex.path):
            self._problem(ex, 400, "bad-request", "Bad request", "The request path is not valid.")
            return
        route = ex.route
        if route is None:
            match = self.router.match(ex.method, ex.path)
            if match.allowed:
                allow = ", ".join(sorted(match.allowed)).encode()
                self._problem(
                    ex,
                    405,
                    "method-not-allowed",
                    "Method not allowed",
                    f"{ex.method} is not allowed on {ex.path}.",
                    extra_headers=b"allow: %s\r\n" % allow,
                )
            else:
                self._problem(ex, 404, "not-found", "Not found", f"No resource at {ex.path}.")
            return
        if ex.content_length < 0 or (ex.chunked and ex.content_length):
            self._problem(ex, 400, "bad-request", "Bad request", "The body framing is invalid.")
            return
        if ex.body_too_large:
            ex.close_after = True
            self._problem(
                ex,
                413,
                "payload-too-large",
                "Request body too large",
                f"The body may not exceed {ex.max_body} bytes.",
            )
            return
        if not await self._authenticate(ex, route):
            return
        if self.limiter is not None and not await self._admit(ex, route):
            return
        await self._forward(ex, route)

    def _preflight(self, ex: Exchange) -> None:
        cors = self.config.cors
        origin = ex.origin or b""
        if not (self._cors_any or origin in self._cors_origins):
            self._problem(ex, 403, "cors-origin-denied", "Origin not allowed", "CORS is denied.")
            return
        allow = b"*" if self._cors_any and not cors.allow_credentials else origin
        head = [
            b"HTTP/1.1 204 No Content\r\n",
            b"access-control-allow-origin: %s\r\nvary: origin\r\n" % allow,
            b"access-control-allow-methods: %s\r\n" % ", ".join(cors.allow_methods).encode(),
            b"access-control-allow-headers: %s\r\n" % ", ".join(cors.allow_headers).encode(),
            b"access-control-max-age: %d\r\n" % cors.max_age_seconds,
        ]
        if cors.allow_credentials:
            head.append(b"access-control-allow-credentials: true\r\n")
        head.append(b"x-request-id: %s\r\n%s" % (ex.request_id, self._security))
        if not ex.keep_alive or not ex.body_done:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        ex.status = 204
        ex.response_started = True
        ex.conn.write(b"".join(head))

    def _metrics(self, ex: Exchange) -> None:
        body = self.metrics.render()
        ex.status = 200
        ex.response_started = True
        ex.response_bytes = len(body)
        close = not ex.keep_alive or not ex.body_done
        ex.conn.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n"
            b"content-length: %d\r\nx-request-id: %s\r\n%s%s\r\n%s"
            % (
                len(body),
                ex.request_id,
                self._security,
                b"connection: close\r\n" if close else b"",
                b"" if ex.method == "HEAD" else body,
            )
        )

    async def _authenticate(self, ex: Exchange, route: RouteConfig) -> bool:
        authorization = ex.header(b"authorization")
        if authorization is not None and authorization[:7].lower() == b"bearer ":
            token = authorization[7:].strip().decode("latin-1")
            try:
                ex.principal = await self.auth.authenticate_bearer(token)
                return True
            except AuthenticationFailed as exc:
                if route.public:
                    return True
                self._problem(
                    ex,
                    401,
                    "unauthorized",
                    "Authentication required",
                    str(exc),
                    extra_headers=b'www-authenticate: Bearer error="invalid_token"\r\n',
                )
                return False
            except KeysUnavailable:
                if route.public:
                    return True
                self._problem(
                    ex,
                    503,
                    "service-unavailable",
                    "Service unavailable",
                    "Access tokens cannot be verified right now.",
                    extra_headers=b"retry-after: 5\r\n",
                )
                return False
        api_key = ex.header(self._api_key_header)
        if api_key is None and authorization and authorization[:7].lower() == b"apikey ":
            api_key = authorization[7:].strip()
        if api_key:
            # The owning service verifies the key; the gateway only needs a stable identity for
            # rate limiting, which must not reveal the key itself.
            digest = hashlib.sha256(api_key).hexdigest()[:24]
            ex.principal = Principal(sub=f"key:{digest}", role="api_key", kind="api_key")
            return True
        if route.public:
            return True
        self._problem(
            ex,
            401,
            "unauthorized",
            "Authentication required",
            "This route needs a bearer access token or an API key.",
            extra_headers=b"www-authenticate: Bearer\r\n",
        )
        return False

    def _rule_for(self, ex: Exchange, route: RouteConfig) -> RateLimitRule:
        limits = self.config.rate_limits
        if route.rate_limit is not None:
            return route.rate_limit
        principal = ex.principal
        if principal is None:
            return limits.anonymous
        return limits.roles.get(principal.role, limits.authenticated)

    async def _admit(self, ex: Exchange, route: RouteConfig) -> bool:
        assert self.limiter is not None
        principal = ex.principal
        who = principal.sub if principal is not None else f"ip:{ex.client_ip}"
        rule = self._rule_for(ex, route)
        try:
            decision = await self.limiter.hit(f"{route.label}|{who}", rule)
        except (OSError, ConnectionError, TimeoutError) as exc:
            # Failing open: a rate limiter outage must not take the whole API down with it.
            self._rate_limit_errors += 1
            if self._rate_limit_errors % 1000 == 1:
                log.warning("rate_limiter_unavailable", error=str(exc))
            return True
        except Exception as exc:
            if type(exc).__module__.startswith("redis"):
                self._rate_limit_errors += 1
                if self._rate_limit_errors % 1000 == 1:
                    log.warning("rate_limiter_unavailable", error=str(exc))
                return True
            raise
        headers = b"".join(b"%s: %s\r\n" % pair for pair in decision.headers())
        if decision.allowed:
            ex.rate_headers = headers
            return True
        self.metrics.rate_limited.labels(route.label).inc()
        self._problem(
            ex,
            429,
            "too-many-requests",
            "Too many requests",
            "The rate limit for this route has been reached; retry later.",
            extra_headers=headers,
            fields={"retry_after": max(1, int(-(-decision.retry_after // 1)))},
        )
        return False

    def _upstream_head(self, ex: Exchange, route: RouteConfig) -> bytes:
        """The request head without its Host line, which depends on the instance."""
        dropped: set[bytes] = set()
        for name, value in ex.headers:
            if name == b"connection":
                dropped.update(t.strip().lower() for t in value.split(b","))
        trust = self.config.trust_forwarded
        forwarded_for = None
        lines = []
        for name, value in ex.headers:
            if name in HOP_BY_HOP or name in dropped or name == self._principal_header.lower():
                continue
            if name in _REQUEST_OWNED or name.startswith(b"x-ecosistema-"):
                if trust and name == b"x-forwarded-for":
                    forwarded_for = value
                continue
            lines.append(b"%s: %s\r\n" % (name, value))
        client = ex.client_ip.encode()
        chain = forwarded_for + b", " + client if forwarded_for else client
        lines.append(b"x-forwarded-for: %s\r\n" % chain)
        lines.append(b"x-forwarded-proto: %s\r\n" % self._forwarded_proto)
        host = ex.header(b"host")
        if host:
            lines.append(b"x-forwarded-host: %s\r\n" % host)
        lines.append(b"x-request-id: %s\r\n" % ex.request_id)
        if ex.header(b"traceparent") != ex.traceparent:
            lines.append(b"traceparent: %s\r\n" % ex.traceparent)
        principal = ex.principal
        if principal is not None and principal.kind == "user" and self._secret is not None:
            vouched = sign_principal(
                principal, self._secret, ttl_seconds=self.config.auth.principal_ttl_seconds
            )
            lines.append(b"%s: %s\r\n" % (self._principal_header, vouched.encode()))
        if ex.chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
        elif ex.content_length > 0 or ex.header(b"content-length") is not None:
            lines.append(b"content-length: %d\r\n" % ex.content_length)
        lines.append(b"\r\n")
        return b"".join(lines)

    async def _forward(self, ex: Exchange, route: RouteConfig) -> None:
        balancer = self.balancers[route.service]
        service_config = balancer.config
        tail = self._upstream_head(ex, route)
        request_line = b"%s %s HTTP/1.1\r\nhost: " % (ex.method.encode(), ex.target)
        if ex.expect_continue and not ex.body_done:
            ex.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        retriable = ex.method in IDEMPOTENT_METHODS or ex.header(b"idempotency-key") is not None
        tried: tuple[Instance, ...] = ()
        last_outcome = -1
        while True:
            if ex.body_too_large:
                self._problem(
                    ex,
                    413,
                    "payload-too-large",
                    "Request body too large",
                    f"The body may not exceed {ex.max_body} bytes.",
                )
                return
            now = time.monotonic()
            instance = balancer.pick(now, exclude=tried) or (balancer.pick(now) if tried else None)
            if instance is None:
                self._no_instance(ex, balancer, last_outcome)
                return
            pool = self.pools[instance]
            ex.attempts += 1
            sink: UpstreamConnection | None = None
            instance.outstanding += 1
            try:
                try:
                    sink, _ = await pool.acquire()
                except (OSError, TimeoutError):
                    outcome = _LOST_BEFORE_HEAD
                else:
                    if ex.conn.closed:
                        pool.release(sink)
                        return
                    head = request_line + instance.host_header + b"\r\n" + tail
                    outcome = await ex.attach(sink, instance, head, route.timeout_seconds)
            finally:
                instance.outstanding -= 1
            if sink is not None:
                ex.detach()
            self.metrics.observe_upstream(
                balancer.name,
                instance.url,
                _OUTCOME_NAMES[outcome]
                if outcome != _OK or ex.status not in service_config.failure_statuses
                else "failure_status",
            )
            if outcome == _OK:
                if ex.status in service_config.failure_statuses:
                    self._record_failure(balancer, instance)
                else:
                    instance.breaker.record_success()
                assert sink is not None
                if ex.upstream_keep_alive:
                    pool.release(sink)
                else:
                    sink.close()
                return
            if outcome == _CLIENT_GONE:
                return
            if outcome == _TOO_LARGE:
                self._problem(
                    ex,
                    413,
                    "payload-too-large",
                    "Request body too large",
                    f"The body may not exceed {ex.max_body} bytes.",
                )
                return
            self._record_failure(balancer, instance)
            if outcome == _LOST_AFTER_HEAD:
                ex.conn.abort()
                return
            last_outcome = outcome
            # A timed-out request is not retried: the instance may still be working on it, and
            # repeating slow requests multiplies the load that made them slow.
            if (
                outcome == _TIMEOUT
                or not (retriable and ex.replayable and ex.attempts <= route.retries)
                or ex.conn.closed
            ):
                self._upstream_failed(ex, outcome)
                return
            tried += (instance,)
            self.metrics.retries.labels(route.label).inc()
            # Exponential backoff with jitter, so retries from many requests do not arrive at once.
            await asyncio.sleep(min(0.5, 0.025 * 2 ** (len(tried) - 1)) * random.uniform(0.5, 1.0))  # noqa: S311

    def _record_failure(self, balancer: Balancer, instance: Instance) -> None:
        if instance.breaker.record_failure(time.monotonic()):
            self.metrics.breaker_opened.labels(balancer.name, instance.url).inc()
            log.warning("upstream_breaker_opened", service=balancer.name, instance=instance.url)

    def _upstream_failed(self, ex: Exchange, outcome: int) -> None:
        if outcome == _TIMEOUT:
            self._problem(
                ex,
                504,
                "gateway-timeout",
                "Gateway timeout",
                "The service did not answer in time.",
            )
        else:
            self._problem(
                ex,
                502,
                "bad-gateway",
                "Bad gateway",
                "The service could not be reached or closed the connection.",
            )

    def _no_instance(self, ex: Exchange, balancer: Balancer, last_outcome: int) -> None:
        if last_outcome >= 0:
            self._upstream_failed(ex, last_outcome)
            return
        self._problem(
            ex,
            503,
            "service-unavailable",
            "Service unavailable",
            f"No healthy instance of {balancer.name} is available.",
            extra_headers=b"retry-after: %d\r\n"
            % max(1, int(balancer.config.breaker_open_seconds)),
        )
