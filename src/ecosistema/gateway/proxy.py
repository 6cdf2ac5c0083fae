"""The gateway's hot path: an asyncio Protocol per client connection (httptools request parser),
one ``Exchange`` per request, streamed to a pooled upstream connection and back.

Bodies are never gathered whole: request chunks go to the upstream as they arrive and response
chunks to the client, with reading paused on one side while the other side's write buffer is
full. Only a small request body (``REPLAY_LIMIT``) is kept, so that an idempotent request can be
retried on another instance. A response of known length up to ``HOLD_LIMIT`` is held until it is
complete, so that an instance dying in the middle of it costs a retry, not a truncated answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from http import HTTPStatus
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import IO, TYPE_CHECKING, Any, Final, cast
from urllib.parse import unquote

import httptools
import structlog

from ecosistema.gateway.auth import (
    ApiKeyCheck,
    ApiKeysUnavailable,
    AuthenticationFailed,
    EdgeAuthenticator,
    KeysUnavailable,
    api_key_principal,
)
from ecosistema.gateway.balancer import Balancer, BreakerState, Instance
from ecosistema.gateway.cache import CachedResponse, CacheFill, ResponseCache, purge_tags
from ecosistema.gateway.config import GatewayConfig, RateLimitRule, RouteConfig
from ecosistema.gateway.metrics import GatewayMetrics
from ecosistema.gateway.own import (
    DOCS_PATH,
    DOCS_REDIRECT_PATH,
    DOCS_STATIC,
    HEALTH_PATH,
    OPENAPI_PATH,
    OWN_PATHS,
    READY_PATH,
    Asset,
    OpenAPIDocument,
    OpenAPIUnavailable,
    docs_page,
    docs_redirect_page,
    readiness,
    static_asset,
)
from ecosistema.gateway.principal import (
    PRINCIPAL_HEADER,
    Principal,
    request_binding,
    sign_principal,
)
from ecosistema.gateway.ratelimit import (
    Decision,
    MemoryRateLimiter,
    RateLimiter,
    create_rate_limiter,
)
from ecosistema.gateway.routing import Router
from ecosistema.gateway.upstream import (
    ConnectionPool,
    Headers,
    UpstreamConnection,
    discard,
    fetch,
)

if TYPE_CHECKING:
    from ecosistema.gateway.inprocess import LocalService
    from ecosistema.platform.events import EventBus, EventEnvelope
from ecosistema.platform.errors import PROBLEM_BASE
from ecosistema.platform.proxies import TrustedProxies

log = structlog.get_logger(__name__)
# Module-level aliases: compiled, a Final name is a static reference rather than two lookups.
_perf_counter: Final = time.perf_counter
_monotonic: Final = time.monotonic

# The ``logger`` of the gateway's access lines (app lines name theirs the same way).
ACCESS_LOGGER: Final = "ecosistema.gateway.access"
REPLAY_LIMIT: Final = 64 * 1024
# A response with a Content-Length up to this is sent to the client only once it is complete.
HOLD_LIMIT: Final = 64 * 1024
# How long a connection closed while its client is still sending a body keeps reading (and
# ignoring) it, so that the client gets to read the answer rather than a reset.
LINGER_SECONDS: Final = 2.0
# Request bytes held while no upstream connection is ready yet, before the client is paused.
BUFFER_HIGH_WATER: Final = 256 * 1024

HOP_BY_HOP: Final = frozenset(
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
_REQUEST_OWNED: Final = frozenset(
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
_FORWARDED: Final = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
_RESPONSE_OWNED: Final = frozenset(
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
_RESPONSE_DROP: Final = HOP_BY_HOP | _RESPONSE_OWNED
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

# Outcomes of an attempt on an upstream (Final: compiled, they are constants, not lookups).
# "Before head" and "after head" are from the client's side: whether any of the response had
# been written to it when the upstream connection was lost.
_OK: Final = 0
_LOST_BEFORE_HEAD: Final = 1
_LOST_AFTER_HEAD: Final = 2
_TIMEOUT: Final = 3
_TOO_LARGE: Final = 4
_CLIENT_GONE: Final = 5
_OUTCOME_NAMES: Final = (
    "ok",
    "connection_lost",
    "lost_mid_response",
    "timeout",
    "too_large",
    "gone",
)

_PAUSE_BUFFER: Final = 1
_PAUSE_UPSTREAM: Final = 2
_PAUSE_PIPELINE: Final = 4

# Where a request goes on from once it needs to wait for something; _PENDING: sent upstream
# without a task, the upstream connection's callbacks finish it.
_DONE: Final = 0
_STAGE_AUTH: Final = 1
_STAGE_LIMIT: Final = 2
_STAGE_FORWARD: Final = 3
_PENDING: Final = 4
_STAGE_METRICS: Final = 5
_STAGE_OWN: Final = 6
_RETRY: Final = -1
_BREAKER_CLOSED: Final = BreakerState.CLOSED
# The instance label of routes served by an app in the gateway's process.
_IN_PROCESS: Final = "in-process"
# Where an app served in process exposes its own metrics (platform.telemetry_http).
_APP_METRICS_PATH: Final = "/metrics"


def _backoff(attempt: int) -> float:
    """Exponential backoff with jitter, so retries from many requests do not arrive at once."""
    return min(0.5, 0.025 * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)  # noqa: S311


# Exchange.cache_state: not cacheable, answered from the cache, fetched to be stored.
_CACHE_STATE: Final = ("null", '"HIT"', '"MISS"')
_json_str: Final[Callable[[str], str]] = encode_basestring_ascii

# RFC 9110 renamed a few phrases that this Python's HTTPStatus still spells the old way.
_RFC9110_PHRASES: Final = {
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
}
_REASONS: Final[dict[int, bytes]] = {
    int(status): _RFC9110_PHRASES.get(int(status), status.phrase).encode("ascii")
    for status in HTTPStatus
}


class _IdSource:
    """Request, trace and span ids, drawn at random as W3C Trace Context asks of trace ids (all
    128 bits; a request id the gateway makes is its trace id) and span ids (all 64 bits). The
    random bytes come from the operating system in blocks and each id is a slice of one, so a
    request costs no system call."""

    __slots__ = ("_at", "_block")

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        """Forget the random bytes left (after a fork, so that workers never share ids)."""
        self._block = b""
        self._at = _BLOCK_HEX

    def _refill(self) -> None:
        block = os.urandom(_BLOCK_HEX // 2).hex().encode()
        # Every id is a slice at a multiple of 16 digits: one without 16 zeros in a row anywhere
        # never yields an all-zero span id or trace id half, which Trace Context forbids.
        while _ZERO_SPAN_ID in block:
            block = os.urandom(_BLOCK_HEX // 2).hex().encode()
        self._block = block
        self._at = 0

    def next(self) -> bytes:
        """32 lower-case hex digits, never zero in either half: a request or trace id."""
        at = self._at
        if at + 32 > _BLOCK_HEX:
            self._refill()
            at = 0
        self._at = at + 32
        return self._block[at : at + 32]

    def span(self) -> bytes:
        """16 lower-case hex digits, never zero: a span id."""
        at = self._at
        if at + 16 > _BLOCK_HEX:
            self._refill()
            at = 0
        self._at = at + 16
        return self._block[at : at + 16]


# 256 trace ids' worth of random digits per draw.
_BLOCK_HEX: Final = 32 * 256
_ZERO_SPAN_ID: Final = b"0" * 16
_ids: Final = _IdSource()
os.register_at_fork(after_in_child=_ids.reseed)

# Request timeouts fire within this many seconds after they are due: one timer per slot of that
# length instead of one timer set and cancelled per request.
DEADLINE_RESOLUTION: Final = 0.05


class _Deadlines:
    """The exchanges waiting on an upstream, grouped by the slot in which they time out."""

    __slots__ = ("_loop", "_slots")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, set[Exchange]] = {}

    def add(self, ex: Exchange, timeout: float) -> set[Exchange]:
        """Time ``ex`` out after ``timeout`` seconds (or a slot later); returns its slot, from
        which the exchange removes itself when answered."""
        key = int((self._loop.time() + timeout) / DEADLINE_RESOLUTION) + 1
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = set()
            self._loop.call_at(key * DEADLINE_RESOLUTION, self._expire, key)
        slot.add(ex)
        return slot

    def _expire(self, key: int) -> None:
        slot = self._slots.pop(key, None)
        if slot:
            for ex in list(slot):
                try:
                    ex.timed_out()
                except Exception:
                    # One exchange's failure must not keep the others of its slot waiting.
                    log.exception("gateway_timeout_error", path=ex.path)


def _is_dot_segment_path(path: str) -> bool:
    return any(seg in (".", "..") for seg in path.split("/"))


# The ids the services accept (platform.telemetry: sanitize_request_id, parse_traceparent): the
# gateway keeps no other, or its response and access line would name ids the service replaced.
_REQUEST_ID: Final = re.compile(rb"[A-Za-z0-9._-]{1,128}")
_TRACEPARENT: Final = re.compile(rb"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_ZERO_TRACE_ID: Final = b"0" * 32


def _valid_request_id(value: bytes) -> bool:
    return _REQUEST_ID.fullmatch(value) is not None


def _valid_traceparent(value: bytes) -> bool:
    """W3C Trace Context: lower-case hex, version ff invalid, version 00 exactly 55 characters
    and a later version possibly more fields after a dash, neither id all zeros."""
    length = len(value)
    if length < 55 or _TRACEPARENT.fullmatch(value, 0, 55) is None:
        return False
    version = value[:2]
    if version == b"ff" or (length > 55 and (version == b"00" or value[55:56] != b"-")):
        return False
    return value[3:35] != _ZERO_TRACE_ID and value[36:52] != _ZERO_SPAN_ID


# The request headers Exchange reads on its one pass over them.
_H_CONTENT_LENGTH: Final = 0
_H_TRANSFER_ENCODING: Final = 1
_H_REQUEST_ID: Final = 2
_H_TRACEPARENT: Final = 3
_H_EXPECT: Final = 4
_H_ORIGIN: Final = 5
_H_AUTHORIZATION: Final = 6
_H_API_KEY: Final = 7
_REQUEST_HEADER_KINDS: Final[dict[bytes, int]] = {
    b"content-length": _H_CONTENT_LENGTH,
    b"transfer-encoding": _H_TRANSFER_ENCODING,
    b"x-request-id": _H_REQUEST_ID,
    b"traceparent": _H_TRACEPARENT,
    b"expect": _H_EXPECT,
    b"origin": _H_ORIGIN,
    b"authorization": _H_AUTHORIZATION,
}


# What a request presents as credentials (``Gateway._credential``).
_C_NONE: Final = 0
_C_BEARER: Final = 1
_C_API_KEY: Final = 2
_C_TWO: Final = 3  # an Authorization and an API key header that differ


# What the gateway does with a response header, by its name as the upstream spelled it.
_R_KEEP: Final = 0
_R_LENGTH: Final = 1
_R_DROP: Final = 2
_R_CONNECTION: Final = 3
_RESPONSE_HEADER_KINDS: Final[dict[bytes, int]] = {}


def _response_header_kind(name: bytes) -> int:
    lname = name.lower()
    if lname == b"connection":
        kind = _R_CONNECTION
    elif lname in _RESPONSE_DROP:
        kind = _R_DROP
    elif lname == b"content-length":
        kind = _R_LENGTH
    else:
        kind = _R_KEEP
    if len(_RESPONSE_HEADER_KINDS) < 4096:  # names repeat; a hostile upstream cannot grow it
        _RESPONSE_HEADER_KINDS[name] = kind
    return kind


class Exchange:
    """One request and its response; reports from the upstream connection arrive here."""

    __slots__ = (
        "api_key",
        "attempts",
        "authorization",
        "body_done",
        "body_received",
        "buffered",
        "cache_key",
        "cache_state",
        "chunked",
        "client_ip",
        "close_after",
        "conn",
        "content_length",
        "expect_continue",
        "fill",
        "first_instance",
        "forwarded_for",
        "has_content_length",
        "headers",
        "holding",
        "http11",
        "instance",
        "keep_alive",
        "local",
        "max_body",
        "method",
        "on_done",
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
        "traceparent_kept",
        "upstream_keep_alive",
        "upstream_tail",
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
        kinds: Mapping[bytes, int] = _REQUEST_HEADER_KINDS,
    ) -> None:
        self.conn = conn
        self.method = method
        self.target = target
        self.headers = headers
        self.http11 = http11
        self.keep_alive = keep_alive
        self.max_body = max_body
        # The client: the peer, or the address a trusted proxy's X-Forwarded-For names.
        self.client_ip = conn.client_ip
        # From a trusted proxy: its X-Forwarded-For from the client on, to pass on.
        self.forwarded_for: bytes | None = None
        self.started = _perf_counter()
        self.path = ""
        self.route: RouteConfig | None = None
        self.chunked = False
        self.content_length = 0
        self.expect_continue = False
        self.origin: bytes | None = None
        self.has_content_length = False
        self.authorization: bytes | None = None
        self.api_key: bytes | None = None
        request_id = traceparent = generated = None
        for name, value in headers:
            kind = kinds.get(name)
            if kind is None:
                continue
            if kind == _H_CONTENT_LENGTH:
                self.has_content_length = True
                self.content_length = int(value) if value.isdigit() else -1
            elif kind == _H_TRANSFER_ENCODING:
                self.chunked = b"chunked" in value.lower()
            elif kind == _H_REQUEST_ID:
                request_id = value
            elif kind == _H_TRACEPARENT:
                traceparent = value
            elif kind == _H_EXPECT:
                self.expect_continue = value.lower() == b"100-continue"
            elif kind == _H_ORIGIN:
                self.origin = value
            elif kind == _H_AUTHORIZATION:
                if self.authorization is None:
                    self.authorization = value
            elif self.api_key is None:
                self.api_key = value
        if request_id and _valid_request_id(request_id):
            self.request_id = request_id
        else:
            self.request_id = generated = _ids.next()
        self.traceparent_kept = False
        if traceparent and _valid_traceparent(traceparent):
            self.traceparent = traceparent
            self.traceparent_kept = True
        else:
            if generated is None:
                generated = _ids.next()
            self.traceparent = b"00-" + generated + b"-" + _ids.span() + b"-01"
        self.trace_id = self.traceparent[3:35]
        # A request without a body is complete with its head, so it can be answered at once.
        self.body_done = not self.chunked and self.content_length == 0
        self.body_received = 0
        self.buffered: list[bytes] = []
        self.replayable = True
        self.sink: UpstreamConnection | None = None
        self.sink_paused = False
        self.instance: Instance | None = None
        self.waiter: asyncio.Future[int] | None = None
        self.timer: set[Exchange] | None = None
        self.response_started = False
        self.holding = False
        self.rechunk = False
        self.status = 0
        self.response_bytes = 0
        self.upstream_keep_alive = False
        self.close_after = False
        self.principal: Principal | None = None
        self.rate_headers = b""
        self.attempts = 0
        self.pending: list[bytes] = []
        self.cache_key: bytes | None = None
        self.cache_state = 0
        self.fill: CacheFill | None = None
        self.local: Any = None
        self.on_done: Callable[[Exchange, int], None] | None = None
        self.first_instance: Instance | None = None
        self.upstream_tail: bytes | None = None

    def header(self, name: bytes) -> bytes | None:
        """The first value of a request header (lower-case name)."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def own_traceparent(self) -> bytes:
        """The ``traceparent`` of an answer the gateway gives itself (a cache hit, a problem,
        its own pages): this request's trace and flags, and the gateway's span: the one it
        started when the request brought no trace, else a new one under the caller's."""
        if not self.traceparent_kept:
            return self.traceparent
        # [52:55]: the dash and the flags.
        return b"".join((b"00-", self.trace_id, b"-", _ids.span(), self.traceparent[52:55]))

    # Request body, from the client connection.

    def feed_body(self, chunk: bytes) -> None:
        """A piece of the request body arrived from the client."""
        self.body_received += len(chunk)
        if self.body_received > self.max_body:
            self._body_too_large()
            return
        if self.local is not None:
            self.local.feed(chunk)
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
        if self.local is not None:
            self.local.finish()
        elif self.sink is not None and self.chunked:
            self.sink.write(b"0\r\n\r\n")

    def _body_too_large(self) -> None:
        self.conn.pause(_PAUSE_BUFFER)
        self.close_after = True
        if self.response_started:
            self.conn.abort()
        elif self.local is not None:
            self.local.finish()
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
    ) -> asyncio.Future[int] | None:
        """Write the request to ``sink``; the attempt's outcome goes to ``on_done`` when set,
        else to the future returned."""
        conn = self.conn
        waiter: asyncio.Future[int] | None = None
        if self.on_done is None:
            waiter = conn.loop.create_future()
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
        self.timer = conn.deadlines.add(self, timeout)
        if conn._paused:
            conn.resume(_PAUSE_BUFFER)
        return waiter

    def detach(self) -> UpstreamConnection | None:
        """Forget the upstream connection of the last attempt, handing it to the caller."""
        sink, self.sink = self.sink, None
        if sink is not None and self.sink_paused:
            sink.resume_reading()
        self.sink_paused = False
        if self.timer is not None:
            self.timer.discard(self)
            self.timer = None
        if self.conn._paused:
            self.conn.resume(_PAUSE_UPSTREAM)
        return sink

    def _resolve(self, outcome: int) -> None:
        if self.timer is not None:
            self.timer.discard(self)
            self.timer = None
        waiter = self.waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(outcome)
            return
        on_done = self.on_done
        if on_done is not None:
            on_done(self, outcome)

    def timed_out(self) -> None:
        """The route's timeout passed while waiting on the upstream."""
        self.timer = None
        if self.holding:
            self._drop_held()
        elif self.response_started:
            return
        if self.sink is not None:
            self.sink.abort()
        self._resolve(_TIMEOUT)

    def _drop_held(self) -> None:
        """Forget a held, incomplete response: none of it reached the client."""
        self.holding = False
        self.response_started = False
        self.pending.clear()
        self.status = 0
        self.response_bytes = 0

    def client_gone(self) -> None:
        """The client connection closed; give up the upstream attempt."""
        if self.local is not None:
            self.local.disconnect()
        if self.sink is not None:
            self.sink.abort()
        self._resolve(_CLIENT_GONE)

    # Reports from the upstream connection (ResponseHandler).

    def on_response_head(self, status: int, reason: bytes, headers: Headers) -> None:
        self.status = status
        gw = self.conn.gateway
        out = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status) or reason)]
        add = out.extend
        has_length = False
        length = -1
        connection = None
        kinds = _RESPONSE_HEADER_KINDS
        for name, value in headers:
            kind = kinds.get(name)
            if kind is None:
                kind = _response_header_kind(name)
            if kind:
                if kind == _R_LENGTH:
                    has_length = True
                    length = int(value) if value.isdigit() else -1
                elif kind == _R_DROP:
                    continue
                elif kind == _R_CONNECTION:
                    connection = value
                    continue
            add((name, b": ", value, b"\r\n"))
        if connection is not None:
            # Headers the upstream named in Connection are hop-by-hop too.
            named = {t.strip().lower() for t in connection.split(b",")}
            out = [out[0]] + [
                b"".join(out[i : i + 4])
                for i in range(1, len(out), 4)
                if out[i].lower() not in named
            ]
        no_body = self.method == "HEAD" or status in (204, 304)
        if not has_length and not no_body:
            if self.http11:
                out.append(b"transfer-encoding: chunked\r\n")
                self.rechunk = True
            else:
                self.keep_alive = False
        out.append(gw.response_headers(self, limits=status != 429))
        if not self.keep_alive or not self.body_done:
            self.close_after = True
            out.append(b"connection: close\r\n")
        out.append(b"\r\n")
        self.response_started = True
        # A small response of known length is held until complete (the route's timeout still
        # running); anything else streams from here on.
        self.holding = 0 <= length <= HOLD_LIMIT and not no_body
        if not self.holding and self.timer is not None:
            self.timer.discard(self)
            self.timer = None
        self.pending.append(b"".join(out))
        if self.fill is not None:
            self.fill.head(status, headers)

    def on_response_body(self, data: bytes) -> None:
        self.response_bytes += len(data)
        if self.fill is not None:
            self.fill.body(data)
        if self.rechunk:
            self.pending.append(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.pending.append(data)

    def flush(self) -> None:
        """Send what the last read from the upstream produced, in one write."""
        pending = self.pending
        if pending and not self.holding:
            self.conn.write(pending[0] if len(pending) == 1 else b"".join(pending))
            pending.clear()

    def on_response_complete(self, keep_alive: bool) -> None:
        self.holding = False
        if self.rechunk:
            self.pending.append(b"0\r\n\r\n")
        if self.fill is not None:
            self.fill.complete()
            self.fill = None
        self.upstream_keep_alive = keep_alive and self.body_done
        self._resolve(_OK)

    def on_upstream_lost(self, exc: BaseException | None) -> None:
        if self.holding:
            self._drop_held()
        self.flush()
        self._resolve(_LOST_AFTER_HEAD if self.response_started else _LOST_BEFORE_HEAD)

    def on_upstream_paused(self) -> None:
        self.conn.pause(_PAUSE_UPSTREAM)

    def on_upstream_resumed(self) -> None:
        self.conn.resume(_PAUSE_UPSTREAM)


class ClientConnection(asyncio.Protocol):
    """One client connection: parses requests and serves them one after another."""

    loop: asyncio.AbstractEventLoop
    deadlines: _Deadlines

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        # Read per header and per request: kept here rather than looked up through the config.
        self._max_header_bytes = gateway.config.max_header_bytes
        self._max_body_bytes = gateway.config.max_body_bytes
        self._header_kinds = gateway.header_kinds
        self._proxies = gateway.proxies
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        self.client_port = 0
        # Whether the peer is a trusted proxy, whose X-Forwarded-For names the client.
        self.peer_trusted = False
        parser = self._parser = httptools.HttpRequestParser(self)
        # Bound once: compiled code would otherwise look each method up per call.
        self._feed = parser.feed_data
        self._get_method = parser.get_method
        self._get_http_version = parser.get_http_version
        self._should_keep_alive = parser.should_keep_alive
        self._send: Callable[[bytes], object] = discard
        self._url = b""
        self._headers: Headers = []
        self._header_bytes = 0
        self._current: Exchange | None = None
        self._active: Exchange | None = None
        self._queue: deque[Exchange] = deque()
        self._paused = 0
        self._closed = False
        self._lingering = False
        self._write_waiter: asyncio.Future[None] | None = None
        self._writing_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._send = self.transport.write
        # Kept, as asyncio.get_running_loop() costs a getpid() system call each time.
        self.loop = asyncio.get_running_loop()
        self.deadlines = self.gateway.deadlines(self.loop)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.client_ip = str(peer[0])
            self.client_port = int(peer[1]) if len(peer) > 1 else 0
            proxies = self._proxies
            if proxies is not None:
                self.peer_trusted = proxies.trusts(self.client_ip)
        else:
            self.client_ip = "unknown"
        self.gateway.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._wake_writer()
        self.gateway.connections.discard(self)
        if self._active is not None:
            self._active.client_gone()
        for ex in self._queue:
            ex.client_gone()
        self._queue.clear()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        try:
            self._feed(data)
        except httptools.HttpParserUpgrade:
            self._reject(
                501, "not-implemented", "Not implemented", "Protocol upgrades are not proxied."
            )
        except (httptools.HttpParserError, _HeadersTooLarge) as exc:
            # httptools wraps an exception raised in a callback in an HttpParserError.
            if isinstance(exc, _HeadersTooLarge) or isinstance(exc.__context__, _HeadersTooLarge):
                self._reject(
                    431,
                    "headers-too-large",
                    "Request headers too large",
                    "The request head is too large.",
                )
            else:
                self._reject(
                    400, "bad-request", "Bad request", "The request is not valid HTTP/1.1."
                )

    def _resolve_client(self, ex: Exchange) -> None:
        """The client of a request from a trusted proxy, as its X-Forwarded-For names it."""
        values = [value for name, value in ex.headers if name == b"x-forwarded-for"]
        if not values or self._proxies is None:
            return
        client, hops = self._proxies.client(self.client_ip, b",".join(values).decode("latin-1"))
        if hops:
            ex.client_ip = client
            ex.forwarded_for = ", ".join(hops).encode("latin-1")

    def _reject(self, status: int, type_: str, title: str, detail: str) -> None:
        ex = self._active
        if not self._closed and (ex is None or not ex.response_started):
            if ex is not None:
                # A request whose body broke off is answered in place of whatever was to come;
                # its upstream attempt or app ends when the connection does.
                ex.response_started = True
                ex.status = status
                ex.close_after = True
            if ex is not None:
                headers = b"traceparent: %s\r\n%s" % (
                    ex.own_traceparent(),
                    self.gateway.response_headers(ex, limits=False),
                )
            else:
                # Before a request head is whole there is no exchange: the answer gets an id of
                # its own, so that it can be quoted and found in the access log like any other.
                request_id = _ids.next()
                headers = self.gateway.id_headers(request_id)
                self.gateway.refused_unparsed(request_id, status, self.client_ip)
            self.write(
                problem_bytes(status, type_, title, detail, extra_headers=headers, close=True)
            )
        self.close()

    # httptools callbacks.

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self._max_header_bytes:
            raise _HeadersTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > self._max_header_bytes:
            raise _HeadersTooLarge
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        method = self._get_method()
        ex = Exchange(
            self,
            _METHODS.get(method) or method.decode("ascii", "replace"),
            self._url,
            self._headers,
            http11=self._get_http_version() == "1.1",
            keep_alive=self._should_keep_alive(),
            max_body=self._max_body_bytes,
            kinds=self._header_kinds,
        )
        # Ready for the next request's head (instead of an on_message_begin callback each).
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        if self.peer_trusted:
            self._resolve_client(ex)
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
        ex = self._current
        if ex is not None:
            if ex.local is None and not ex.chunked:
                ex.body_done = True  # all finish_body would do
            else:
                ex.finish_body()
            self._current = None

    # Flow control.

    def write(self, data: bytes) -> None:
        """Send bytes to the client."""
        if self.transport is not None and not self._closed:
            self._send(data)

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
        self._writing_paused = True
        ex = self._active
        if ex is not None and ex.sink is not None and not ex.sink_paused:
            ex.sink_paused = True
            ex.sink.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_writer()
        ex = self._active
        if ex is not None and ex.sink is not None and ex.sink_paused:
            ex.sink_paused = False
            ex.sink.resume_reading()

    def _wake_writer(self) -> None:
        waiter, self._write_waiter = self._write_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drained(self) -> None:
        """Wait while the client's socket buffer is full (backpressure for in-process apps)."""
        if not self._writing_paused or self._closed:
            return
        waiter = self._write_waiter
        if waiter is None:
            waiter = self._write_waiter = self.loop.create_future()
        await waiter

    def close(self) -> None:
        """Close once everything written has been sent. A client still sending a request body
        is first read (and ignored) for up to ``LINGER_SECONDS`` after the answer went out, as
        a reset would otherwise drop the answer before the client reads it."""
        if self._closed:
            return
        self._closed = True
        transport = self.transport
        if transport is None:
            return
        if self._current is not None and transport.can_write_eof():
            self._lingering = True
            transport.write_eof()
            self._paused = 0
            transport.resume_reading()
            self.loop.call_later(LINGER_SECONDS, transport.close)
            return
        transport.close()

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


# The usual request methods, already decoded.
_METHODS: Final = {m.encode(): m for m in IDEMPOTENT_METHODS | {"POST", "PATCH"}}


# The route label of answers to requests that could not be parsed.
UNPARSED_ROUTE: Final = "unparsed"


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
    head_only: bool = False,
) -> bytes:
    """A whole problem+json (RFC 9457) response, head and body (no body for a HEAD)."""
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
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"")),
            b"content-type: application/problem+json\r\ncache-control: no-store\r\n",
            b"content-length: %d\r\n" % len(payload),
            extra_headers,
            b"connection: close\r\n" if close else b"",
            b"\r\n",
            b"" if head_only else payload,
        )
    )


class Gateway:
    """One worker's gateway: route table, balancers, pools, authenticator, limiter, metrics."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        tls: bool = False,
        access_log: IO[str] | None = None,
        local_apps: Mapping[str, LocalService] | None = None,
        bus: EventBus | None = None,
        api_key_check: ApiKeyCheck | None = None,
    ) -> None:
        self.config = config
        self.tls = tls
        self.router = Router(config.routes)
        # Each route as it serves the methods it does not list (forward_unlisted_methods).
        self._unlisted: dict[int, RouteConfig] = (
            {
                id(route): route.model_copy(update={"public": True, "methods": None, "cache": None})
                for route in config.routes
            }
            if config.forward_unlisted_methods
            else {}
        )
        self.local_apps: Mapping[str, LocalService] = local_apps or {}
        for name, svc in config.services.items():
            if svc.in_process and name not in self.local_apps:
                raise ValueError(f"service {name!r} is in_process but no app serves it here")
        self.balancers = {
            name: Balancer(name, svc)
            for name, svc in config.services.items()
            if name not in self.local_apps
        }
        self.pools: dict[Instance, ConnectionPool] = {
            inst: ConnectionPool(inst, bal.config)
            for bal in self.balancers.values()
            for inst in bal.instances
        }
        jwks_local = self.local_apps.get(config.auth.jwks_service)
        self.auth = EdgeAuthenticator(
            config.auth,
            self.balancers.get(config.auth.jwks_service),
            loader=(
                (lambda: jwks_local.get(config.auth.jwks_path)) if jwks_local is not None else None
            ),
            api_key_check=api_key_check,
        )
        limits = config.rate_limits
        self.limiter: RateLimiter | None = (
            create_rate_limiter(limits.backend_url, limits.key_prefix) if limits.enabled else None
        )
        # The in-memory limiter answers without waiting, so requests it admits need no task.
        self._memory_limiter = self.limiter if isinstance(self.limiter, MemoryRateLimiter) else None
        cache_config = config.response_cache
        self.cache = (
            ResponseCache(cache_config)
            if cache_config.enabled and any(r.cache is not None for r in config.routes)
            else None
        )
        self._bus = bus
        self._own_bus: EventBus | None = None
        self._log_enabled = config.access_log
        self.metrics = GatewayMetrics(lambda: self.balancers.values())
        # The app served in process (``ecosistema up``): its own metrics (HTTP, outbox backlog,
        # consumer lag) are appended to the gateway's on the gateway's metrics path, which
        # would otherwise hide them. Several distinct apps would repeat the app's metric
        # families, so only a single one is scraped.
        apps = list({id(app): app for app in self.local_apps.values()}.values())
        self._metrics_app: LocalService | None = apps[0] if len(apps) == 1 else None
        secret = config.auth.principal_secret
        self._secret = secret.get_secret_value().encode() if secret is not None else None
        self._api_key_header = config.auth.api_key_header.lower().encode()
        # Read by each connection once, when it is made.
        self.proxies: TrustedProxies | None = (
            TrustedProxies(config.trusted_proxies) if config.trusted_proxies else None
        )
        # trust_forwarded without trusted proxies: any peer's chain is passed on, not believed.
        self._pass_forwarded = config.trust_forwarded and self.proxies is None
        # The request headers Exchange picks out in its one pass, with this gateway's API key
        # header among them (when it is not one of the others).
        self.header_kinds = dict(_REQUEST_HEADER_KINDS)
        self._api_key_in_pass = self._api_key_header not in self.header_kinds
        if self._api_key_in_pass:
            self.header_kinds[self._api_key_header] = _H_API_KEY
        self._principal_header = PRINCIPAL_HEADER.encode()
        # Request headers never passed on as they came (some are read on the way).
        self._request_drop = HOP_BY_HOP | _REQUEST_OWNED | {self._principal_header.lower()}
        self._access_log = access_log if access_log is not None else sys.stdout
        # Access lines are written in batches: one write per line costs more than the line.
        self._log_lines: list[str] = []
        # The second the access-log timestamp prefix was formatted for (see _log_timestamp).
        self._log_second = -1
        self._log_second_text = ""
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
        self._deadlines: _Deadlines | None = None
        self._rate_limit_errors = 0
        self._openapi = OpenAPIDocument(self.router, self.balancers)
        self._own_assets: dict[str, Asset] = {}

    def deadlines(self, loop: asyncio.AbstractEventLoop) -> _Deadlines:
        """The request timeouts of this gateway's event loop."""
        deadlines = self._deadlines
        if deadlines is None or deadlines._loop is not loop:
            deadlines = self._deadlines = _Deadlines(loop)
        return deadlines

    # Lifecycle.

    async def start_background(self) -> None:
        """Start the active health checks, the idle-connection sweeper and the cache purger."""
        if self.cache is not None:
            try:
                await self._subscribe_purges()
            except Exception as exc:
                # Without purges a cached product could stay stale for its whole TTL; serving
                # every read from the service is the safer degradation.
                log.error(
                    "response_cache_disabled", reason="purge subscription failed", error=str(exc)
                )
                self.cache = None
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
        if self._own_bus is not None:
            await self._own_bus.stop()
            self._own_bus = None
        self.metrics.flush()
        self._flush_log()

    async def _subscribe_purges(self) -> None:
        """Purge cached responses on the events that make them stale: on the bus given (the
        embedded runtime's), else on one of this worker's own from the configured URL."""
        bus = self._bus
        config = self.config.response_cache
        if bus is None:
            if config.bus_url is None or config.bus_url.startswith("memory://"):
                return  # nothing publishes to a private in-memory bus: TTL only
            from ecosistema.platform.events import create_bus

            bus = self._own_bus = create_bus(config.bus_url, stream=config.bus_stream)
            await bus.start()
        await self._purge_on_events(bus)

    async def drain(self, seconds: float) -> None:
        """Wait (up to ``seconds``) for requests in flight to finish, then close idle clients."""
        deadline = time.monotonic() + seconds
        while self._tasks and time.monotonic() < deadline:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - time.monotonic()))
        # Exchanges sent without a task finish from their upstream's callbacks; a short poll at
        # shutdown costs less than signalling every exchange's end on the hot path.
        while time.monotonic() < deadline and any(not c.idle for c in self.connections):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
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
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for pool in self.pools.values():
                pool.close_expired(now)
            self.metrics.flush()
            self._flush_log()

    def _flush_log(self) -> None:
        lines = self._log_lines
        with contextlib.suppress(OSError, ValueError):
            if lines:
                self._access_log.write("".join(lines))
                lines.clear()
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
        route = self.router.route_for(ex.method, path)
        if route is None and self._unlisted:
            owner = self.router.owner(path)
            if owner is not None:
                route = self._unlisted[id(owner)]
        if route is not None:
            ex.route = route
            if route.max_body_bytes is not None:
                ex.max_body = route.max_body_bytes

    def start(self, ex: Exchange) -> None:
        """Serve ``ex``: at once when nothing needs waiting for (a cache hit, an answer from the
        edge, a pooled connection), else in a task."""
        if not ex.body_done:
            # Let the body bytes that came with the head be read first: an answer from the edge
            # (401, 429, ...) then finds the request complete and keeps the connection open.
            ex.conn.loop.call_soon(self._start, ex)
            return
        self._start(ex)

    def _start(self, ex: Exchange) -> None:
        try:
            stage = self._serve_now(ex)
        except Exception:
            log.exception("gateway_error", path=ex.path, request_id=ex.request_id.decode())
            self._problem(ex, 500, "internal-error", "Internal server error", "The gateway failed.")
            stage = _DONE
        if stage == _DONE:
            self._finish(ex)
            return
        if stage == _PENDING:
            return
        task = ex.conn.loop.create_task(self._serve(ex, stage))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, ex: Exchange, stage: int) -> None:
        finish = True
        try:
            finish = await self._serve_later(ex, stage)
        except Exception:
            log.exception("gateway_error", path=ex.path, request_id=ex.request_id.decode())
            if not ex.response_started:
                self._problem(
                    ex, 500, "internal-error", "Internal server error", "The gateway failed."
                )
            else:
                ex.conn.abort()
        finally:
            if finish:
                self._finish(ex)

    def _finish(self, ex: Exchange) -> None:
        if ex.sink is not None:
            sink = ex.detach()
            if sink is not None:
                sink.abort()
        duration = _perf_counter() - ex.started
        route = ex.route
        route_label = route.label if route is not None else self._own_label(ex)
        self.metrics.observe_request(route_label, ex.method, ex.status, duration)
        if self._log_enabled:
            self._log_access(ex, route_label, duration)
        conn = ex.conn
        if conn.closed:
            return
        if ex.response_started:
            conn.finished(ex)
        else:
            conn.close()

    def _own_label(self, ex: Exchange) -> str:
        """The route label of a request no route took: the gateway's own path it answered
        (a fixed set, so the metric's series stay bounded), else ``unmatched``."""
        path = ex.path
        if ex.status < 400:
            if path in OWN_PATHS or path == self.config.metrics_path:
                return path
            if path.startswith(DOCS_STATIC):
                return DOCS_STATIC
        return "unmatched"

    def refused_unparsed(self, request_id: bytes, status: int, client: str) -> None:
        """Count and log an answer to bytes that never made a request (no method, no path)."""
        self.metrics.observe_request(UNPARSED_ROUTE, "", status, 0.0)
        if not self._log_enabled:
            return
        rid = request_id.decode("ascii")  # also the trace id (id_headers)
        self._log_lines.append(
            f'{{"timestamp":"{self._log_timestamp()}","level":"info",'
            f'"logger":"{ACCESS_LOGGER}","event":"access",'
            f'"request_id":"{rid}","trace_id":"{rid}",'
            f'"method":null,"path":null,"status":{status},"duration_ms":0.000,'
            f'"route":"{UNPARSED_ROUTE}","upstream":null,"attempts":0,"cache":null,'
            f'"bytes_in":0,"bytes_out":0,"client":{_json_str(client)},"sub":null}}\n'
        )
        if len(self._log_lines) >= 256:
            self._flush_log()

    def _log_timestamp(self) -> str:
        """Now as app log lines write it (ISO 8601, UTC, microseconds); the date and time of day
        are formatted once per second, the rest is one integer per line."""
        now = time.time()
        second = int(now)
        if second != self._log_second:
            self._log_second = second
            self._log_second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._log_second_text}.{int((now - second) * 1_000_000):06d}Z"

    def _log_access(self, ex: Exchange, route: str, duration: float) -> None:
        # Formatted by hand: json.dumps of a dict per request costs more than proxying it.
        principal = ex.principal
        instance = ex.instance
        if instance is not None:
            upstream = _json_str(instance.url)
        elif ex.attempts and ex.route is not None and ex.route.service in self.local_apps:
            upstream = '"in-process"'
        else:
            upstream = "null"
        line = (
            f'{{"timestamp":"{self._log_timestamp()}","level":"info",'
            f'"logger":"{ACCESS_LOGGER}","event":"access",'
            f'"request_id":{_json_str(ex.request_id.decode("ascii", "replace"))},'
            f'"trace_id":"{ex.trace_id.decode("ascii", "replace")}",'
            f'"method":{_json_str(ex.method)},"path":{_json_str(ex.path)},'
            f'"status":{ex.status},"duration_ms":{duration * 1000:.3f},'
            f'"route":{_json_str(route)},"upstream":{upstream},'
            f'"attempts":{ex.attempts},"cache":{_CACHE_STATE[ex.cache_state]},'
            f'"bytes_in":{ex.body_received},"bytes_out":{ex.response_bytes},'
            f'"client":{_json_str(ex.client_ip)},'
            f'"sub":{_json_str(principal.sub) if principal is not None else "null"}}}\n'
        )
        lines = self._log_lines
        lines.append(line)
        if len(lines) >= 256:
            self._flush_log()

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
                extra_headers=b"%straceparent: %s\r\n%s"
                % (extra_headers, ex.own_traceparent(), self.response_headers(ex)),
                instance=ex.path or None,
                close=close,
                fields=fields,
                head_only=ex.method == "HEAD",
            )
        )

    def id_headers(self, request_id: bytes) -> bytes:
        """The request id, a trace of its own (the id is the trace id, as for any request that
        brings none) and security headers, for answers given before a request is parsed."""
        return b"x-request-id: %s\r\ntraceparent: 00-%s-%s-01\r\n%s" % (
            request_id,
            request_id,
            _ids.span(),
            self._security,
        )

    def response_headers(self, ex: Exchange, *, limits: bool = True) -> bytes:
        """Headers the gateway adds to every response: request id, security, CORS, limits.
        ``limits=False`` leaves out the gateway's RateLimit-* headers: an upstream's own 429
        (with its own Retry-After) is a different limit, and the gateway's remaining quota
        next to it would contradict it."""
        out = b"x-request-id: %s\r\n%s%s" % (
            ex.request_id,
            self._security,
            ex.rate_headers if limits else b"",
        )
        if ex.cache_key is not None:
            out += b"x-cache: MISS\r\n"
        origin = ex.origin
        if origin is not None and (self._cors_any or origin in self._cors_origins):
            allow = b"*" if self._cors_any and not self.config.cors.allow_credentials else origin
            out += b"access-control-allow-origin: %s\r\nvary: origin\r\n" % allow
            if self.config.cors.allow_credentials:
                out += b"access-control-allow-credentials: true\r\n"
            if self._cors_expose:
                out += b"access-control-expose-headers: %s\r\n" % self._cors_expose
        return out

    def _serve_now(self, ex: Exchange) -> int:
        """Every step that needs no waiting; returns ``_DONE`` when answered, else the stage
        to go on from in a task."""
        config = self.config
        method = ex.method
        if (
            method == "OPTIONS"
            and ex.origin is not None
            and ex.header(b"access-control-request-method")
        ):
            self._preflight(ex)
            return _DONE
        if ex.path == config.metrics_path and method in ("GET", "HEAD"):
            if self._metrics_app is not None:
                return _STAGE_METRICS
            self._metrics(ex)
            return _DONE
        path = ex.path
        if not path.startswith("/") or ("/." in path and _is_dot_segment_path(path)):
            self._problem(ex, 400, "bad-request", "Bad request", "The request path is not valid.")
            return _DONE
        route = ex.route
        if route is None:
            if (method == "GET" or method == "HEAD") and (
                path in OWN_PATHS or path.startswith(DOCS_STATIC)
            ):
                return self._serve_own(ex)
            self._no_route(ex)
            return _DONE
        if ex.content_length < 0 or (ex.chunked and ex.content_length):
            self._problem(ex, 400, "bad-request", "Bad request", "The body framing is invalid.")
            return _DONE
        if ex.body_too_large:
            ex.close_after = True
            self._too_large(ex)
            return _DONE
        authenticated = self._authenticate_now(ex, route)
        if authenticated is None:
            return _STAGE_AUTH
        if not authenticated:
            return _DONE
        return self._after_auth_now(ex, route)

    def _after_auth_now(self, ex: Exchange, route: RouteConfig) -> int:
        if route.rate_limited:
            limiter = self._memory_limiter
            if limiter is not None:
                admitted = limiter.admit(self._limit_key(ex, route), self._rule_for(ex, route))
                if type(admitted) is bytes:
                    ex.rate_headers = admitted
                elif not self._apply_decision(ex, route, cast(Decision, admitted)):
                    return _DONE
            elif self.limiter is not None:
                return _STAGE_LIMIT
        if route.cache is not None and self.cache is not None and self._serve_cached(ex, route):
            return _DONE
        if route.service in self.local_apps:
            return _STAGE_FORWARD
        return self._forward_now(ex, route)

    async def _serve_later(self, ex: Exchange, stage: int) -> bool:
        """The steps that wait; returns False when the exchange was handed to upstream
        callbacks, which finish it."""
        if stage == _STAGE_METRICS:
            await self._metrics_with_app(ex)
            return True
        if stage == _STAGE_OWN:
            await self._serve_openapi(ex)
            return True
        route = ex.route
        assert route is not None
        if stage == _STAGE_AUTH:
            if not await self._authenticate(ex, route):
                return True
            stage = self._after_auth_now(ex, route)
            if stage == _DONE:
                return True
            if stage == _PENDING:
                return False
        if stage == _STAGE_LIMIT:
            if not await self._admit(ex, route):
                return True
            if route.cache is not None and self.cache is not None and self._serve_cached(ex, route):
                return True
        local = self.local_apps.get(route.service)
        if local is not None:
            ex.attempts = 1
            if ex.expect_continue and not ex.body_done:
                ex.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            try:
                await local.dispatch(ex, self._local_headers(ex), self)
            except Exception:
                self.metrics.observe_upstream(route.service, _IN_PROCESS, "error")
                raise
            self.metrics.observe_upstream(route.service, _IN_PROCESS, "ok")
            return True
        await self._forward(ex, route)
        return True

    def _no_route(self, ex: Exchange) -> None:
        match = self.router.match(ex.method, ex.path)
        allowed = match.allowed
        if not allowed and (ex.path in OWN_PATHS or ex.path.startswith(DOCS_STATIC)):
            allowed = frozenset({"GET", "HEAD"})
        if allowed:
            allow = ", ".join(sorted(allowed)).encode()
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

    # What the gateway answers itself (gateway.own), on paths no route claims.

    def _serve_own(self, ex: Exchange) -> int:
        path = ex.path
        if path == HEALTH_PATH:
            self._respond(ex, 200, Asset(b"application/json", b'{"status":"ok"}'))
        elif path == READY_PATH:
            self._ready(ex)
        elif path == OPENAPI_PATH:
            return _STAGE_OWN
        else:
            asset = self._own_assets.get(path)
            if asset is None:
                if path == DOCS_PATH:
                    asset = docs_page()
                elif path == DOCS_REDIRECT_PATH:
                    asset = docs_redirect_page()
                else:
                    asset = static_asset(path)
                if asset is None:
                    self._problem(ex, 404, "not-found", "Not found", f"No resource at {path}.")
                    return _DONE
                self._own_assets[path] = asset
            self._respond(ex, 200, asset)
        return _DONE

    def _ready(self, ex: Exchange) -> None:
        """Ready while every upstream service has an instance to send requests to."""
        checks = readiness(self.balancers.values(), time.monotonic())
        down = sorted(name for name, state in checks.items() if state != "ok")
        if not down:
            body = json.dumps({"status": "ready", "checks": checks}, separators=(",", ":"))
            self._respond(ex, 200, Asset(b"application/json", body.encode()))
            return
        self._problem(
            ex,
            503,
            "not-ready",
            "Not ready",
            f"No healthy instance of: {', '.join(down)}.",
            fields={"checks": checks},
        )

    async def _serve_openapi(self, ex: Exchange) -> None:
        try:
            asset = await self._openapi.asset()
        except OpenAPIUnavailable as exc:
            self._problem(
                ex,
                503,
                "openapi-unavailable",
                "API description unavailable",
                f"No OpenAPI document from: {', '.join(sorted(exc.services))}.",
                fields={"checks": exc.services},
            )
            return
        self._respond(ex, 200, asset)

    def _respond(self, ex: Exchange, status: int, asset: Asset) -> None:
        """A whole response from the gateway itself; HEAD gets the same head and no body."""
        if ex.response_started:
            ex.conn.abort()
            return
        body = asset.body
        close = not ex.keep_alive or not ex.body_done or ex.close_after
        ex.close_after = close
        ex.status = status
        ex.response_started = True
        head_only = ex.method == "HEAD"
        ex.response_bytes = 0 if head_only else len(body)
        ex.conn.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncache-control: %s\r\n"
            b"content-length: %d\r\ntraceparent: %s\r\n%s%s\r\n%s"
            % (
                status,
                _REASONS[status],
                asset.content_type,
                asset.cache_control,
                len(body),
                ex.own_traceparent(),
                self.response_headers(ex),
                b"connection: close\r\n" if close else b"",
                b"" if head_only else body,
            )
        )

    def _too_large(self, ex: Exchange) -> None:
        self._problem(
            ex,
            413,
            "payload-too-large",
            "Request body too large",
            f"The body may not exceed {ex.max_body} bytes.",
        )

    # The response cache.

    def _serve_cached(self, ex: Exchange, route: RouteConfig) -> bool:
        """Answer from the cache when it holds the response; otherwise arrange for a GET's
        response to be stored. Only anonymous GET/HEAD requests take part."""
        if ex.method not in ("GET", "HEAD") or ex.principal is not None:
            return False
        rule = route.cache
        cache = self.cache
        assert rule is not None and cache is not None
        key = ex.target
        authorization = False
        vary_values: list[bytes] = []
        vary = rule.vary
        for name, value in ex.headers:
            if name == b"authorization" or name == self._api_key_header:
                authorization = True
                break
            if vary and name.decode("latin-1") in vary:
                vary_values.append(b"%s=%s" % (name, value))
        if authorization:
            return False
        if vary_values:
            key = b"\x00".join([key, *sorted(vary_values)])
        now = time.monotonic()
        entry = cache.get(key, now)
        if entry is None:
            ex.cache_key = key
            ex.cache_state = 2
            if ex.method == "GET":
                ex.fill = CacheFill(cache, key, rule)
            return False
        self._write_hit(ex, entry, now)
        return True

    def _write_hit(self, ex: Exchange, entry: CachedResponse, now: float) -> None:
        ex.cache_state = 1
        close = not ex.keep_alive or not ex.body_done
        # The stored head holds nothing about the request that filled the entry: this
        # request's ids and trace follow it here.
        tail = b"age: %d\r\ntraceparent: %s\r\n%s%s\r\n" % (
            int(now - entry.stored_at),
            ex.own_traceparent(),
            self.response_headers(ex),
            b"connection: close\r\n" if close else b"",
        )
        if close:
            ex.close_after = True
        ex.response_started = True
        if_none_match = ex.header(b"if-none-match") if entry.etag is not None else None
        if if_none_match is not None and entry.matches(if_none_match):
            ex.status = 304
            ex.conn.write(entry.not_modified + tail)
            return
        ex.status = 200
        if ex.method == "HEAD":
            ex.conn.write(entry.head + tail)
            return
        ex.response_bytes = len(entry.body)
        ex.conn.write(b"".join((entry.head, tail, entry.body)))

    async def _purge_on_events(self, bus: EventBus) -> None:
        cache = self.cache
        assert cache is not None
        fields = self.config.response_cache.purge_fields

        async def purge(envelope: EventEnvelope) -> None:
            dropped = cache.purge(purge_tags(envelope.payload, fields))
            if dropped:
                log.debug("response_cache_purged", event_type=envelope.type, entries=dropped)

        # Every worker keeps its own cache, so every worker needs every event from now on (its
        # cache starts empty: older events name nothing it holds). A broadcast subscription
        # leaves no durable consumer behind when the worker goes, and replays nothing.
        await bus.subscribe_broadcast(self.config.response_cache.purge_events, purge)

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
        head.append(
            b"x-request-id: %s\r\ntraceparent: %s\r\n%s"
            % (ex.request_id, ex.own_traceparent(), self._security)
        )
        if not ex.keep_alive or not ex.body_done:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        ex.status = 204
        ex.response_started = True
        ex.conn.write(b"".join(head))

    async def _metrics_with_app(self, ex: Exchange) -> None:
        """The gateway's metrics followed by those of the app it serves in process: one text
        exposition, the two sets of metric families being disjoint."""
        app = self._metrics_app
        assert app is not None
        try:
            status, body = await app.get(_APP_METRICS_PATH)
        except Exception:
            log.exception("app_metrics_unavailable")
            status, body = 0, b""
        if status != 200:
            log.warning("app_metrics_unavailable", status=status)
            body = b""
        self._metrics(ex, body)

    def _metrics(self, ex: Exchange, app_metrics: bytes = b"") -> None:
        body = self.metrics.render() + app_metrics
        ex.status = 200
        ex.response_started = True
        ex.response_bytes = len(body)
        close = not ex.keep_alive or not ex.body_done
        ex.conn.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n"
            b"content-length: %d\r\nx-request-id: %s\r\ntraceparent: %s\r\n%s%s\r\n%s"
            % (
                len(body),
                ex.request_id,
                ex.own_traceparent(),
                self._security,
                b"connection: close\r\n" if close else b"",
                b"" if ex.method == "HEAD" else body,
            )
        )

    def _credential(self, ex: Exchange) -> tuple[int, str]:
        """What the request presents: an access token, an API key (``X-API-Key``,
        ``Authorization: ApiKey`` or ``Authorization: Bearer eco_…``), none, or two that differ.
        An Authorization of another scheme is not a credential of this platform."""
        kind = _C_NONE
        value = ""
        authorization = ex.authorization
        if authorization is not None:
            scheme = authorization[:7].lower()
            if scheme == b"bearer " or scheme == b"bearer":
                value = authorization[7:].strip().decode("latin-1")
                kind = _C_API_KEY if self.auth.is_api_key(value) else _C_BEARER
            elif scheme == b"apikey ":
                value = authorization[7:].strip().decode("latin-1")
                kind = _C_API_KEY
        api_key = ex.api_key if self._api_key_in_pass else ex.header(self._api_key_header)
        if api_key:
            key = api_key.strip().decode("latin-1")
            if kind == _C_NONE:
                return _C_API_KEY, key
            if key != value:
                return _C_TWO, ""
        return kind, value

    def _authenticate_now(self, ex: Exchange, route: RouteConfig) -> bool | None:
        """Authentication that needs no waiting: no credentials, or credentials verified before.
        None: they must be verified (``_authenticate``). Credentials that are presented are
        verified on every route, public or not: a bad one is a 401, never served as anonymous."""
        if ex.authorization is None and ex.api_key is None and self._api_key_in_pass:
            if route.public:
                return True  # an anonymous request on a public route
            self._credentials_required(ex)
            return False
        if not route.verify_credentials:
            return True  # the service reads what it needs (sign-in, refresh): passed as sent
        kind, value = self._credential(ex)
        if kind == _C_BEARER:
            principal = self.auth.known(value)
            if principal is None:
                return None
            ex.principal = principal
            return True
        if kind == _C_API_KEY:
            if not self.auth.known_api_key(value):
                return None
            ex.principal = api_key_principal(value)
            return True
        if kind == _C_TWO:
            self._invalid_credentials(
                ex,
                f"Send one credential: either Authorization or {self.config.auth.api_key_header}.",
            )
            return False
        if route.public:
            return True
        self._credentials_required(ex)
        return False

    async def _authenticate(self, ex: Exchange, route: RouteConfig) -> bool:
        kind, value = self._credential(ex)
        try:
            if kind == _C_BEARER:
                ex.principal = await self.auth.authenticate_bearer(value)
            elif kind == _C_API_KEY:
                ex.principal = await self.auth.authenticate_api_key(value)
        except AuthenticationFailed as exc:
            self._invalid_credentials(ex, str(exc))
            return False
        except (KeysUnavailable, ApiKeysUnavailable) as exc:
            what = "Access tokens" if isinstance(exc, KeysUnavailable) else "API keys"
            self._problem(
                ex,
                503,
                "service-unavailable",
                "Service unavailable",
                f"{what} cannot be verified right now; try again shortly.",
                extra_headers=b"retry-after: 5\r\n",
            )
            return False
        return True

    def _invalid_credentials(self, ex: Exchange, detail: str) -> None:
        self._problem(
            ex,
            401,
            "unauthorized",
            "Authentication required",
            detail,
            extra_headers=b'www-authenticate: Bearer error="invalid_token"\r\n',
        )

    def _credentials_required(self, ex: Exchange) -> None:
        self._problem(
            ex,
            401,
            "unauthorized",
            "Authentication required",
            "This route needs a bearer access token or an API key.",
            extra_headers=b"www-authenticate: Bearer\r\n",
        )

    def _rule_for(self, ex: Exchange, route: RouteConfig) -> RateLimitRule:
        limits = self.config.rate_limits
        if route.rate_limit is not None:
            return route.rate_limit
        principal = ex.principal
        if principal is None:
            return limits.anonymous
        return limits.roles.get(principal.role, limits.authenticated)

    def _limit_key(self, ex: Exchange, route: RouteConfig) -> str:
        principal = ex.principal
        who = principal.sub if principal is not None else "ip:" + ex.client_ip
        return route.label + "|" + who

    async def _admit(self, ex: Exchange, route: RouteConfig) -> bool:
        assert self.limiter is not None
        try:
            decision = await self.limiter.hit(self._limit_key(ex, route), self._rule_for(ex, route))
        except (OSError, ConnectionError, TimeoutError) as exc:
            # Failing open: a rate limiter outage must not take the whole API down with it.
            self._rate_limiter_failed(exc)
            return True
        except Exception as exc:
            if type(exc).__module__.startswith("redis"):
                self._rate_limiter_failed(exc)
                return True
            raise
        return self._apply_decision(ex, route, decision)

    def _rate_limiter_failed(self, exc: BaseException) -> None:
        self._rate_limit_errors += 1
        if self._rate_limit_errors % 1000 == 1:
            log.warning("rate_limiter_unavailable", error=str(exc))

    def _apply_decision(self, ex: Exchange, route: RouteConfig, decision: Decision) -> bool:
        headers = decision.header_bytes()
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

    def _local_headers(self, ex: Exchange) -> Headers:
        """The request headers an in-process app sees: as an upstream would, less the framing."""
        dropped: set[bytes] = set()
        for name, value in ex.headers:
            if name == b"connection":
                dropped.update(t.strip().lower() for t in value.split(b","))
        principal_header = self._principal_header.lower()
        out: Headers = []
        forwarded_for = ex.forwarded_for
        trust = self._pass_forwarded
        kept = ex.traceparent_kept
        for name, value in ex.headers:
            if name in HOP_BY_HOP or name in dropped or name == principal_header:
                continue
            if name == b"traceparent" and not kept:
                continue  # invalid: replaced below
            if name == b"host" or name == b"content-length":
                out.append((name, value))
                continue
            if name in _REQUEST_OWNED or name.startswith(b"x-ecosistema-"):
                if trust and name == b"x-forwarded-for":
                    forwarded_for = value
                continue
            out.append((name, value))
        peer = ex.conn.client_ip.encode()
        out.append((b"x-forwarded-for", forwarded_for + b", " + peer if forwarded_for else peer))
        out.append((b"x-forwarded-proto", self._forwarded_proto))
        host = ex.header(b"host")
        if host:
            out.append((b"x-forwarded-host", host))
        out.append((b"x-request-id", ex.request_id))
        if not kept:
            out.append((b"traceparent", ex.traceparent))
        if ex.chunked:
            out.append((b"transfer-encoding", b"chunked"))
        return out

    def _upstream_head(self, ex: Exchange, route: RouteConfig) -> bytes:
        """The request head without its Host line, which depends on the instance."""
        drop = self._request_drop
        parts: list[bytes] = []
        add = parts.extend
        host = connection = None
        forwarded_for = ex.forwarded_for
        kept = ex.traceparent_kept
        for name, value in ex.headers:
            if name == b"traceparent" and not kept:
                continue  # invalid: replaced below
            if name in drop:
                if name == b"host":
                    host = value
                elif name == b"connection":
                    connection = value
                elif name == b"x-forwarded-for" and self._pass_forwarded:
                    forwarded_for = value
                continue
            if name[:13] == b"x-ecosistema-":
                continue
            add((name, b": ", value, b"\r\n"))
        if connection is not None:
            # Headers the client named in Connection are hop-by-hop too (RFC 9110, 7.6.1).
            named = {t.strip().lower() for t in connection.split(b",")}
            parts = [
                b"".join(parts[i : i + 4]) for i in range(0, len(parts), 4) if parts[i] not in named
            ]
            add = parts.extend
        peer = ex.conn.client_ip.encode()
        add(
            (
                b"x-forwarded-for: ",
                forwarded_for + b", " + peer if forwarded_for else peer,
                b"\r\nx-forwarded-proto: ",
                self._forwarded_proto,
                b"\r\nx-request-id: ",
                ex.request_id,
                b"\r\n",
            )
        )
        if host:
            add((b"x-forwarded-host: ", host, b"\r\n"))
        if not kept:
            add((b"traceparent: ", ex.traceparent, b"\r\n"))
        principal = ex.principal
        if principal is not None and principal.kind == "user" and self._secret is not None:
            # Bound to this request (method, target, request id): a header copied from it
            # cannot vouch for any other request, even within its TTL.
            vouched = sign_principal(
                principal,
                self._secret,
                ttl_seconds=self.config.auth.principal_ttl_seconds,
                binding=request_binding(ex.method, ex.target, ex.request_id),
            )
            add((self._principal_header, b": ", vouched.encode(), b"\r\n"))
        if ex.chunked:
            parts.append(b"transfer-encoding: chunked\r\n\r\n")
        elif ex.content_length > 0 or ex.has_content_length:
            parts.append(b"content-length: %d\r\n\r\n" % ex.content_length)
        else:
            parts.append(b"\r\n")
        return b"".join(parts)

    def _request_head(self, ex: Exchange, route: RouteConfig, instance: Instance) -> bytes:
        tail = ex.upstream_tail
        if tail is None:
            tail = ex.upstream_tail = self._upstream_head(ex, route)
        return b"%s %s HTTP/1.1\r\nhost: %s\r\n%s" % (
            ex.method.encode(),
            ex.target,
            instance.host_header,
            tail,
        )

    def _forward_now(self, ex: Exchange, route: RouteConfig) -> int:
        """Send the request on an idle pooled connection without a task; the response then
        completes the exchange from the connection's callbacks (``_attempt_done``). Returns
        ``_DONE`` (answered), ``_PENDING`` (sent) or ``_STAGE_FORWARD`` (needs a task)."""
        if ex.expect_continue and not ex.body_done:
            return _STAGE_FORWARD
        balancer = self.balancers[route.service]
        instance = balancer.pick(_monotonic())
        if instance is None:
            self._no_instance(ex, balancer, -1)
            return _DONE
        sink = self.pools[instance].take_idle()
        if sink is None:
            ex.first_instance = instance
            return _STAGE_FORWARD
        ex.attempts += 1
        instance.outstanding += 1
        ex.on_done = self._attempt_done
        ex.attach(sink, instance, self._request_head(ex, route, instance), route.timeout_seconds)
        return _PENDING

    def _attempt_done(self, ex: Exchange, outcome: int) -> None:
        """An attempt sent by ``_forward_now`` ended (called from connection callbacks)."""
        ex.on_done = None
        ex.flush()  # this response's bytes go out before anything a next request writes
        route = ex.route
        instance = ex.instance
        assert route is not None and instance is not None
        instance.outstanding -= 1
        try:
            sink = ex.detach()
            if self._after_attempt(ex, route, instance, sink, outcome) == _RETRY:
                task = ex.conn.loop.create_task(self._retry(ex, route, (instance,), outcome))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return
        except Exception:
            log.exception("gateway_error", path=ex.path, request_id=ex.request_id.decode())
            if not ex.response_started:
                self._problem(
                    ex, 500, "internal-error", "Internal server error", "The gateway failed."
                )
            else:
                ex.conn.abort()
        self._finish(ex)

    async def _retry(
        self, ex: Exchange, route: RouteConfig, tried: tuple[Instance, ...], last: int
    ) -> None:
        try:
            self.metrics.retries.labels(route.label).inc()
            await asyncio.sleep(_backoff(len(tried)))
            await self._forward(ex, route, tried=tried, last_outcome=last)
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

    def _after_attempt(
        self,
        ex: Exchange,
        route: RouteConfig,
        instance: Instance,
        sink: UpstreamConnection | None,
        outcome: int,
    ) -> int:
        """Account for one attempt's outcome; ``_RETRY`` when another attempt should follow,
        else ``_DONE`` (the response, or an error, went to the client)."""
        balancer = self.balancers[route.service]
        failure_statuses = balancer.config.failure_statuses
        if outcome == _OK:
            failed = ex.status in failure_statuses
            self.metrics.observe_upstream(
                balancer.name, instance.url, "failure_status" if failed else "ok"
            )
            if failed:
                self._record_failure(balancer, instance)
            else:
                breaker = instance.breaker
                if breaker.failures or breaker.state is not _BREAKER_CLOSED:
                    breaker.record_success()
            assert sink is not None
            if ex.upstream_keep_alive:
                self.pools[instance].release(sink)
            else:
                sink.close()
            return _DONE
        self.metrics.observe_upstream(balancer.name, instance.url, _OUTCOME_NAMES[outcome])
        if outcome == _CLIENT_GONE:
            return _DONE
        if outcome == _TOO_LARGE:
            self._too_large(ex)
            return _DONE
        self._record_failure(balancer, instance)
        if outcome == _LOST_AFTER_HEAD:
            ex.conn.abort()
            return _DONE
        # A timed-out request is not retried: the instance may still be working on it, and
        # repeating slow requests multiplies the load that made them slow.
        if (
            outcome == _TIMEOUT
            or not (self._retriable(ex) and ex.replayable and ex.attempts <= route.retries)
            or ex.conn.closed
        ):
            self._upstream_failed(ex, outcome)
            return _DONE
        return _RETRY

    @staticmethod
    def _retriable(ex: Exchange) -> bool:
        return ex.method in IDEMPOTENT_METHODS or ex.header(b"idempotency-key") is not None

    async def _forward(
        self,
        ex: Exchange,
        route: RouteConfig,
        *,
        tried: tuple[Instance, ...] = (),
        last_outcome: int = -1,
    ) -> None:
        balancer = self.balancers[route.service]
        if ex.expect_continue and not ex.body_done and not tried:
            ex.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while True:
            if ex.body_too_large:
                self._too_large(ex)
                return
            instance = ex.first_instance
            ex.first_instance = None
            if instance is None:
                now = time.monotonic()
                instance = balancer.pick(now, exclude=tried) or (
                    balancer.pick(now) if tried else None
                )
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
                    head = self._request_head(ex, route, instance)
                    waiter = ex.attach(sink, instance, head, route.timeout_seconds)
                    assert waiter is not None
                    outcome = await waiter
            finally:
                instance.outstanding -= 1
            if sink is not None:
                sink = ex.detach()
            if self._after_attempt(ex, route, instance, sink, outcome) == _DONE:
                return
            last_outcome = outcome
            tried += (instance,)
            self.metrics.retries.labels(route.label).inc()
            await asyncio.sleep(_backoff(len(tried)))

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
