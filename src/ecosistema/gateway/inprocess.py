"""Serving a route from an ASGI app in the gateway's own process (the embedded shape).

The gateway parses the request, authenticates, rate-limits and looks in the response cache as for
any route; then, instead of writing the request to a socket, it calls the app with an HTTP scope
built from the request, streams the request body to the app's ``receive`` as it arrives, and
writes what the app ``send``s straight to the client (re-chunked when the app gives no length).
The app's lifespan runs once: startup before the gateway accepts, shutdown after it drained.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from ecosistema.gateway.upstream import Headers

if TYPE_CHECKING:
    from ecosistema.gateway.proxy import Exchange, Gateway

Message = MutableMapping[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Request bytes handed to the app but not yet read by it, before the client is paused.
_BODY_HIGH_WATER = 256 * 1024
# Response bytes waiting in the client's socket buffer before the app's ``send`` waits.
_SEND_HIGH_WATER = 1024 * 1024
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


class LifespanFailed(RuntimeError):
    """The app's lifespan startup or shutdown reported a failure."""


class _RequestBody:
    """The request body on its way from the client connection to the app's ``receive``."""

    __slots__ = ("_chunks", "_disconnected", "_ended", "_ex", "_finished", "_queued", "_ready")

    def __init__(self, ex: Exchange) -> None:
        self._ex = ex
        # What arrived before the app was called was held by the exchange.
        self._chunks: deque[bytes] = deque(ex.buffered)
        ex.buffered = []
        ex.replayable = False
        self._queued = 0
        self._finished = ex.body_done
        self._disconnected = False
        self._ready: asyncio.Event | None = None
        self._ended = False

    def _wake(self) -> None:
        if self._ready is not None:
            self._ready.set()

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._queued += len(chunk)
        if self._queued > _BODY_HIGH_WATER:
            self._ex.conn.pause(1)
        self._wake()

    def finish(self) -> None:
        self._finished = True
        self._wake()

    def disconnect(self) -> None:
        self._disconnected = True
        self._wake()

    async def receive(self) -> Message:
        while True:
            # Past the route's limit the app is told the client left: what it read so far is
            # not the whole body, and the gateway answers 413 in its place.
            if self._disconnected or self._ex.body_too_large:
                return {"type": "http.disconnect"}
            if self._chunks:
                chunk = self._chunks.popleft()
                if len(self._chunks) > 0:
                    chunk = b"".join([chunk, *self._chunks])
                    self._chunks.clear()
                self._queued = 0
                self._ex.conn.resume(1)
                self._ended = self._finished
                return {"type": "http.request", "body": chunk, "more_body": not self._finished}
            if self._finished and not self._ended:
                self._ended = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if self._ready is None:
                self._ready = asyncio.Event()
            self._ready.clear()
            await self._ready.wait()


class LocalService:
    """An ASGI app that serves the routes of one or more services inside the gateway."""

    def __init__(self, app: ASGIApp, *, server: tuple[str, int] = ("127.0.0.1", 8000)) -> None:
        self.app = app
        self.server = server
        self.state: dict[str, Any] = {}
        self._lifespan: asyncio.Task[None] | None = None
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._supported = True

    # Lifespan.

    async def startup(self) -> None:
        """Run the app's lifespan startup (once); raises ``LifespanFailed`` if it failed."""
        scope: Scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "state": self.state,
        }

        answered = False

        async def send(message: Message) -> None:
            nonlocal answered
            answered = True
            await self._from_app.put(message)

        async def run() -> None:
            try:
                await self.app(scope, self._to_app.get, send)
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError):
                    raise
                if answered:
                    return  # it reported its own failure first (Starlette raises after it)
                # An app without lifespan support raises on the scope type; that is allowed.
                self._supported = False
                await self._from_app.put({"type": "lifespan.startup.failed", "message": repr(exc)})

        self._lifespan = asyncio.create_task(run())
        await self._to_app.put({"type": "lifespan.startup"})
        message = await self._from_app.get()
        if message["type"] == "lifespan.startup.failed" and self._supported:
            raise LifespanFailed(message.get("message") or "lifespan startup failed")

    async def shutdown(self) -> None:
        """Run the app's lifespan shutdown."""
        task = self._lifespan
        if task is None:
            return
        self._lifespan = None
        if self._supported and not task.done():
            await self._to_app.put({"type": "lifespan.shutdown"})
            message = await self._from_app.get()
            if message["type"] == "lifespan.shutdown.failed":
                raise LifespanFailed(message.get("message") or "lifespan shutdown failed")
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, 5.0)

    # Requests.

    def _scope(self, ex: Exchange, headers: Headers, gateway: Gateway) -> Scope:
        target = ex.target
        raw_path, _, query = target.partition(b"?")
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1" if ex.http11 else "1.0",
            "method": ex.method,
            "scheme": "https" if gateway.tls else "http",
            "path": ex.path,
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": headers,
            # Behind a trusted proxy, the client it names (its port is not known).
            "client": (ex.client_ip, ex.conn.client_port if ex.forwarded_for is None else 0),
            "server": self.server,
            "state": dict(self.state),
        }

    async def dispatch(self, ex: Exchange, headers: Headers, gateway: Gateway) -> None:
        """Serve ``ex`` with the app, writing the response to the client as the app sends it."""
        body = _RequestBody(ex)
        ex.local = body
        response = _Response(ex, gateway)
        try:
            await self.app(self._scope(ex, headers, gateway), body.receive, response.send)
        except Exception:
            if not (response.refused or (ex.body_too_large and not ex.response_started)):
                raise
        finally:
            ex.local = None
            body.disconnect()
        if ex.body_too_large and not ex.response_started:
            # The body outgrew the route's limit before the app answered: whatever the app made
            # of a body cut short, the client gets the gateway's 413.
            gateway._too_large(ex)
            return
        if response.refused:
            return  # the gateway answered in the app's place
        if not response.complete:
            if ex.response_started:
                ex.conn.abort()
            else:
                raise RuntimeError("the app returned without a complete response")

    async def get(self, path: str) -> tuple[int, bytes]:
        """GET ``path`` from the app, whole; for the gateway's own needs (the JWKS)."""
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"%s:%d" % (self.server[0].encode(), self.server[1]))],
            "client": ("127.0.0.1", 0),
            "server": self.server,
            "state": dict(self.state),
        }
        status = 0
        parts: list[bytes] = []
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # a GET has nothing more to give
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                parts.append(bytes(message.get("body", b"")))

        await self.app(scope, receive, send)
        return status, b"".join(parts)


class _Response:
    """The ``send`` side of one in-process exchange."""

    __slots__ = (
        "_ex",
        "_gateway",
        "_head",
        "_head_only",
        "_rechunk",
        "_started",
        "complete",
        "refused",
    )

    def __init__(self, ex: Exchange, gateway: Gateway) -> None:
        self._ex = ex
        self._gateway = gateway
        self._head: bytes | None = None
        self._rechunk = False
        self._head_only = ex.method == "HEAD"
        self._started = False
        self.complete = False
        # Set when the gateway answers in the app's place (a body past the route's limit, or
        # one that broke off): the app's own answer is then dropped.
        self.refused = False

    async def send(self, message: Message) -> None:
        kind = message["type"]
        ex = self._ex
        if self.refused:
            return
        if kind == "http.response.start":
            if self._started:
                raise RuntimeError("http.response.start sent twice")
            if ex.response_started or ex.body_too_large:
                self.refused = True
                return
            self._started = True
            self._start(int(message["status"]), list(message.get("headers") or ()))
        elif kind == "http.response.body":
            if not self._started:
                raise RuntimeError("http.response.body before http.response.start")
            await self._body(bytes(message.get("body", b"")), bool(message.get("more_body")))

    def _start(self, status: int, raw_headers: list[tuple[bytes, bytes]]) -> None:
        from ecosistema.gateway.proxy import _REASONS, _RESPONSE_OWNED

        ex = self._ex
        ex.status = status
        headers: Headers = [(bytes(n).lower(), bytes(v)) for n, v in raw_headers]
        out = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))]
        has_length = False
        for name, value in headers:
            if name in _HOP_BY_HOP or name in _RESPONSE_OWNED:
                continue
            if name == b"content-length":
                has_length = True
            out.append(b"%s: %s\r\n" % (name, value))
        no_body = self._head_only or status in (204, 304) or status < 200
        if not has_length and not no_body:
            if ex.http11:
                out.append(b"transfer-encoding: chunked\r\n")
                self._rechunk = True
            else:
                ex.keep_alive = False
        out.append(self._gateway.response_headers(ex, limits=status != 429))
        if not ex.keep_alive or not ex.body_done:
            ex.close_after = True
            out.append(b"connection: close\r\n")
        out.append(b"\r\n")
        self._head = b"".join(out)
        ex.response_started = True
        if ex.fill is not None:
            ex.fill.head(status, headers)

    async def _body(self, data: bytes, more: bool) -> None:
        ex = self._ex
        if self.complete:
            return
        parts: list[bytes] = []
        if self._head is not None:
            parts.append(self._head)
            self._head = None
        if data and not self._head_only:
            ex.response_bytes += len(data)
            if ex.fill is not None:
                ex.fill.body(data)
            parts.append(b"%x\r\n%s\r\n" % (len(data), data) if self._rechunk else data)
        if not more:
            self.complete = True
            if self._rechunk and not self._head_only:
                parts.append(b"0\r\n\r\n")
            if ex.fill is not None:
                ex.fill.complete()
                ex.fill = None
        if parts:
            ex.conn.write(parts[0] if len(parts) == 1 else b"".join(parts))
        if more:
            await ex.conn.drained()
