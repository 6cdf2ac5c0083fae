"""The gateway's per-request machinery without sockets: ids, request timeouts, the reuse of an
upstream connection's parser, and whole exchanges over in-memory transports."""

from __future__ import annotations

import asyncio
import copy
import gc
import io
import itertools
import json
import re
from typing import Any

import pytest

from ecosistema.gateway.auth import ApiKeyCheck
from ecosistema.gateway.config import gateway_config
from ecosistema.gateway.proxy import ClientConnection, Exchange, Gateway, _Deadlines, _IdSource
from ecosistema.gateway.server import settle_heap
from ecosistema.gateway.upstream import Headers, UpstreamConnection

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


class MemoryTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("10.0.0.7", 50000) if name == "peername" else default

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class Recorder:
    """A response handler that keeps what the upstream connection reports."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: Headers = []
        self.body = b""
        self.complete: bool | None = None
        self.lost = False

    def on_response_head(self, status: int, reason: bytes, headers: Headers) -> None:
        self.status, self.headers = status, list(headers)

    def on_response_body(self, data: bytes) -> None:
        self.body += data

    def on_response_complete(self, keep_alive: bool) -> None:
        self.complete = keep_alive

    def on_upstream_lost(self, exc: BaseException | None) -> None:
        self.lost = True

    def on_upstream_paused(self) -> None: ...
    def on_upstream_resumed(self) -> None: ...
    def flush(self) -> None: ...


def test_generated_ids_are_random_unique_valid_hex_and_never_zero() -> None:
    source = _IdSource()
    ids = [source.next() for _ in range(20_000)]
    spans = [source.span() for _ in range(20_000)]
    assert len(set(ids)) == len(ids) and len(set(spans)) == len(spans)
    assert all(re.fullmatch(rb"[0-9a-f]{32}", i) for i in ids)
    assert all(re.fullmatch(rb"[0-9a-f]{16}", s) for s in spans)
    assert all(i[:16] != b"0" * 16 and i[16:] != b"0" * 16 for i in ids)
    assert b"0" * 16 not in spans
    # Random throughout: the upper halves vary, and neither half follows a sequence.
    assert len({i[:16] for i in ids}) == len(ids)
    for half in (slice(0, 16), slice(16, 32)):
        values = [int(i[half], 16) for i in ids]
        steps = {(b - a) % 2**64 for a, b in itertools.pairwise(values)}
        assert len(steps) > len(values) // 2
    # Span ids are not the lower halves of trace ids.
    assert not set(spans) & {i[16:] for i in ids}


def test_a_forked_worker_draws_ids_of_its_own_after_a_reseed() -> None:
    parent = _IdSource()
    parent.next()
    child = copy.copy(parent)  # what a fork leaves the child with
    child.reseed()
    assert not {parent.next() for _ in range(300)} & {child.next() for _ in range(300)}


def test_an_upstream_connection_reuses_its_parser_for_responses_in_a_row() -> None:
    conn = UpstreamConnection()
    conn.connection_made(MemoryTransport())  # type: ignore[arg-type]
    first, second = Recorder(), Recorder()
    conn.begin(first, head_only=False)
    conn.data_received(RESPONSE)
    parser = conn._parser
    conn.begin(second, head_only=False)
    conn.data_received(RESPONSE[:20])
    conn.data_received(RESPONSE[20:])
    assert (first.status, first.body, first.complete) == (200, b"ok", True)
    assert (second.status, second.body, second.complete) == (200, b"ok", True)
    assert conn._parser is parser


def test_after_a_head_response_the_next_response_gets_a_fresh_parser() -> None:
    conn = UpstreamConnection()
    conn.connection_made(MemoryTransport())  # type: ignore[arg-type]
    head, get = Recorder(), Recorder()
    conn.begin(head, head_only=True)
    conn.data_received(RESPONSE[: -len(b"ok")])  # a HEAD response: the length, no body
    parser = conn._parser
    conn.begin(get, head_only=False)
    conn.data_received(RESPONSE)
    assert head.complete is True and head.body == b""
    assert (get.status, get.body, get.complete) == (200, b"ok", True)
    assert conn._parser is not parser


def test_bytes_after_a_complete_response_spoil_the_parser_for_reuse() -> None:
    conn = UpstreamConnection()
    conn.connection_made(MemoryTransport())  # type: ignore[arg-type]
    first = Recorder()
    conn.begin(first, head_only=False)
    conn.data_received(RESPONSE + b"HTTP/1.1 200 OK\r\n")
    parser = conn._parser
    second = Recorder()
    conn.begin(second, head_only=False)
    conn.data_received(RESPONSE)
    assert first.body == b"ok" and second.body == b"ok"
    assert conn._parser is not parser


async def test_deadlines_time_out_what_is_still_waiting_and_nothing_else() -> None:
    conn, _, _ = _connect(_gateway())
    fired: dict[str, asyncio.Event] = {}

    def waiting(name: str) -> Exchange:
        ex = Exchange(
            conn, "GET", b"/" + name.encode(), [], http11=True, keep_alive=True, max_body=0
        )
        fired[name] = asyncio.Event()
        ex.on_done = lambda _ex, _outcome: fired[name].set()
        return ex

    deadlines = _Deadlines(asyncio.get_running_loop())
    late, answered, other = waiting("late"), waiting("answered"), waiting("other")
    deadlines.add(late, 0.01)
    slot = deadlines.add(answered, 0.01)
    deadlines.add(other, 0.2)
    slot.discard(answered)  # answered: off its slot
    await asyncio.wait_for(fired["late"].wait(), 5)
    assert not fired["answered"].is_set()
    await asyncio.wait_for(fired["other"].wait(), 5)
    assert not fired["answered"].is_set()


def _gateway(api_key_check: ApiKeyCheck | None = None, **extra: Any) -> Gateway:
    table = {
        "services": {"tiny": {"instances": ["http://127.0.0.1:9"], "health_path": None}},
        "routes": [
            {"prefix": "/open", "service": "tiny", "public": True},
            {"prefix": "/closed", "service": "tiny"},
        ],
        "rate_limits": {"enabled": False},
        **extra,
    }
    return Gateway(gateway_config(table), access_log=io.StringIO(), api_key_check=api_key_check)


def _connect(gateway: Gateway) -> tuple[ClientConnection, MemoryTransport, UpstreamConnection]:
    [pool] = gateway.pools.values()
    upstream = UpstreamConnection()
    sent = MemoryTransport()
    upstream.connection_made(sent)  # type: ignore[arg-type]
    pool.release(upstream)
    client = ClientConnection(gateway)
    out = MemoryTransport()
    client.connection_made(out)  # type: ignore[arg-type]
    return client, out, upstream


async def test_requests_in_a_row_are_proxied_over_one_pooled_connection() -> None:
    gateway = _gateway(rate_limits={"anonymous": {"rate": 100, "burst": 100}})
    client, out, upstream = _connect(gateway)
    sent: list[bytes] = upstream.transport.written  # type: ignore[union-attr]
    for n in range(3):
        client.data_received(b"GET /open/%d HTTP/1.1\r\nHost: shop.example\r\n\r\n" % n)
        upstream.data_received(RESPONSE)
    assert len(sent) == 3 and len(out.written) == 3
    request = sent[2].decode()
    assert request.startswith("GET /open/2 HTTP/1.1\r\nhost: 127.0.0.1:9\r\n")
    assert "x-forwarded-for: 10.0.0.7\r\n" in request
    assert "x-forwarded-host: shop.example\r\n" in request
    request_id = re.search(r"x-request-id: ([0-9a-f]{32})\r\n", request)
    assert request_id is not None and f"traceparent: 00-{request_id[1]}-" in request
    response = out.written[2].decode()
    assert response.startswith("HTTP/1.1 200 OK\r\n") and response.endswith("\r\n\r\nok")
    assert f"x-request-id: {request_id[1]}\r\n" in response
    assert "ratelimit-remaining: 97\r\n" in response
    assert gateway.deadlines(asyncio.get_running_loop())._slots != {}  # emptied, not removed
    assert all(not slot for slot in gateway.deadlines(asyncio.get_running_loop())._slots.values())
    await gateway.close()


async def test_proxied_requests_get_random_ids_and_a_span_of_the_gateways_own() -> None:
    gateway = _gateway()
    client, _, upstream = _connect(gateway)
    sent: list[bytes] = upstream.transport.written  # type: ignore[union-attr]
    for n in range(200):
        client.data_received(b"GET /open/%d HTTP/1.1\r\nHost: shop.example\r\n\r\n" % n)
        upstream.data_received(RESPONSE)
    traces = [
        re.search(rb"traceparent: 00-([0-9a-f]{32})-([0-9a-f]{16})-01\r\n", request)
        for request in sent
    ]
    assert len(traces) == 200 and all(traces)
    trace_ids = [t[1] for t in traces if t]
    span_ids = [t[2] for t in traces if t]
    assert len(set(trace_ids)) == 200 and len({t[:16] for t in trace_ids}) == 200
    assert len(set(span_ids)) == 200 and not set(span_ids) & {t[16:] for t in trace_ids}
    lower = [int(t[16:], 16) for t in trace_ids]
    assert len({(b - a) % 2**64 for a, b in itertools.pairwise(lower)}) > 100
    await gateway.close()


KEY = b"eco_k1_s3cret"


async def _valid_key_k1(key: str) -> bool:
    return key == KEY.decode()


@pytest.mark.parametrize(
    "headers, status",
    [
        (b"", 401),
        (b"X-API-Key: %s\r\n" % KEY, 200),
        (b"Authorization: ApiKey %s\r\n" % KEY, 200),
        (b"Authorization: Bearer %s\r\n" % KEY, 200),
        (b"X-API-Key: eco_k1_other\r\n", 401),
        (b"X-API-Key: k1\r\n", 401),
    ],
)
async def test_protected_route_needs_credentials_found_in_the_one_header_pass(
    headers: bytes, status: int
) -> None:
    gateway = _gateway(api_key_check=_valid_key_k1)
    client, out, upstream = _connect(gateway)
    sent: list[bytes] = upstream.transport.written  # type: ignore[union-attr]
    client.data_received(b"GET /closed HTTP/1.1\r\nHost: x\r\n%s\r\n" % headers)
    async with asyncio.timeout(5):
        while not sent and not out.written:
            await asyncio.sleep(0)  # the key is checked in a task
    if status == 200:
        assert sent
        upstream.data_received(RESPONSE)
    assert out.written[-1].startswith(b"HTTP/1.1 %d " % status)
    await gateway.close()


def test_settling_the_heap_freezes_startup_objects_and_widens_the_young_generation() -> None:
    threshold = gc.get_threshold()
    gc.unfreeze()  # the test session's heap is frozen already (tests/conftest.py)
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] > threshold[0]
        assert gc.isenabled()
    finally:
        gc.set_threshold(*threshold)


CACHEABLE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: public, max-age=60\r\n"
    b'ETag: "v1"\r\nTraceparent: 00-%s-%s-01\r\nX-Request-ID: %s\r\n'
    b"Server-Timing: app;dur=3.1\r\nContent-Length: 9\r\n\r\n"
    b'{"id": 1}'
)
TRACE = "00-{}-{}-01"


def _ids_of(response: bytes) -> tuple[str, str]:
    """The x-request-id and traceparent of a response head (each exactly once)."""
    head = response.split(b"\r\n\r\n", 1)[0].decode()
    [request_id] = re.findall(r"\r\nx-request-id: ([^\r]*)", head, re.IGNORECASE)
    [traceparent] = re.findall(r"\r\ntraceparent: ([^\r]*)", head, re.IGNORECASE)
    return request_id, traceparent


def _access_lines(gateway: Gateway) -> dict[str, dict[str, Any]]:
    gateway._flush_log()
    log = gateway._access_log
    assert isinstance(log, io.StringIO)
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    return {line["request_id"]: line for line in lines}


async def test_a_cache_hit_carries_this_requests_ids_and_trace_not_the_stored_ones() -> None:
    gateway = _gateway(routes=[{"prefix": "/open", "service": "tiny", "public": True, "cache": {}}])
    client, out, upstream = _connect(gateway)
    # The first request fills the cache; its ids come back from the upstream and are stored.
    first_trace = TRACE.format("1" * 32, "2" * 16)
    client.data_received(
        b"GET /open/p HTTP/1.1\r\nHost: x\r\nTraceparent: %s\r\nX-Request-ID: first\r\n\r\n"
        % first_trace.encode()
    )
    upstream.data_received(CACHEABLE % (b"1" * 32, b"a" * 16, b"first"))
    assert b"x-cache: MISS\r\n" in out.written[-1]
    # A caller with its own trace and request id.
    client.data_received(
        b"GET /open/p HTTP/1.1\r\nHost: x\r\nTraceparent: %s\r\nX-Request-ID: second\r\n\r\n"
        % TRACE.format("3" * 32, "4" * 16).encode()
    )
    hit = out.written[-1]
    assert b"x-cache: HIT\r\n" in hit and hit.endswith(b'\r\n\r\n{"id": 1}')
    request_id, traceparent = _ids_of(hit)
    assert request_id == "second"
    version, trace_id, span_id, flags = traceparent.split("-")
    assert (version, trace_id, flags) == ("00", "3" * 32, "01")
    # The gateway answered: the span is its own, neither the caller's nor the upstream's.
    assert re.fullmatch("[0-9a-f]{16}", span_id) and span_id not in ("4" * 16, "a" * 16)
    assert b"server-timing" not in hit.lower()
    # A caller without either gets the ids the gateway made for it, also on a 304.
    client.data_received(b'GET /open/p HTTP/1.1\r\nHost: x\r\nIf-None-Match: "v1"\r\n\r\n')
    not_modified = out.written[-1]
    assert not_modified.startswith(b"HTTP/1.1 304 ")
    made_id, made_trace = _ids_of(not_modified)
    assert re.fullmatch("[0-9a-f]{32}", made_id) and made_trace.startswith(f"00-{made_id}-")
    assert made_trace.split("-")[2] != made_id[16:]
    lines = _access_lines(gateway)
    assert (lines["second"]["cache"], lines["second"]["trace_id"]) == ("HIT", "3" * 32)
    assert (lines[made_id]["cache"], lines[made_id]["trace_id"]) == ("HIT", made_id)
    await gateway.close()


@pytest.mark.parametrize(
    "request_head, status",
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n", 200),
        (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n", 404),
        (b"GET /closed HTTP/1.1\r\nHost: x\r\n", 401),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", 200),
        (
            b"OPTIONS /open HTTP/1.1\r\nHost: x\r\nOrigin: https://shop.example\r\n"
            b"Access-Control-Request-Method: GET\r\n",
            204,
        ),
    ],
)
async def test_answers_the_gateway_gives_itself_carry_the_requests_trace(
    request_head: bytes, status: int
) -> None:
    gateway = _gateway(cors={"allow_origins": ["https://shop.example"]})
    client, out, _ = _connect(gateway)
    for trace in (TRACE.format("5" * 32, "6" * 16), None):
        extra = b"Traceparent: %s\r\n" % trace.encode() if trace else b""
        client.data_received(request_head + extra + b"\r\n")
        response = out.written[-1]
        assert response.startswith(b"HTTP/1.1 %d " % status)
        request_id, traceparent = _ids_of(response)
        trace_id = "5" * 32 if trace else request_id
        assert re.fullmatch(f"00-{trace_id}-[0-9a-f]{{16}}-01", traceparent)
        assert traceparent.split("-")[2] != trace_id[16:]
        assert traceparent != trace
        assert _access_lines(gateway)[request_id]["trace_id"] == trace_id
    await gateway.close()


async def test_an_answer_to_bytes_that_make_no_request_has_a_trace_too() -> None:
    gateway = _gateway()
    client, out, _ = _connect(gateway)
    client.data_received(b"GARBAGE\x00 / HTTP/1.1\r\n\r\n")
    response = b"".join(out.written)
    assert response.startswith(b"HTTP/1.1 400 ")
    request_id, traceparent = _ids_of(response)
    assert re.fullmatch(f"00-{request_id}-[0-9a-f]{{16}}-01", traceparent)
    assert traceparent.split("-")[2] != request_id[16:]
    assert _access_lines(gateway)[request_id]["trace_id"] == request_id
    await gateway.close()


@pytest.mark.parametrize(
    "traceparent, kept",
    [
        ("00-" + "7" * 32 + "-" + "8" * 16 + "-01", True),
        ("01-" + "7" * 32 + "-" + "8" * 16 + "-01-later-fields", True),
        ("00-" + "A" * 32 + "-" + "8" * 16 + "-01", False),  # upper-case hex
        ("00-" + "0" * 32 + "-" + "8" * 16 + "-01", False),
        ("00-" + "7" * 32 + "-" + "0" * 16 + "-01", False),
        ("ff-" + "7" * 32 + "-" + "8" * 16 + "-01", False),
        ("00-" + "z" * 32 + "-" + "8" * 16 + "-01", False),
        ("00-" + "7" * 32 + "-" + "8" * 16 + "-01-more", False),  # version 00 has 4 fields
        ("00-" + "7" * 32 + "-" + "8" * 16 + "-0", False),
    ],
)
async def test_the_gateway_keeps_only_a_traceparent_the_services_accept(
    traceparent: str, kept: bool
) -> None:
    """An invalid one starts a new trace, as the service's edge would: the request sent on,
    the gateway's own answers and the access lines all name the same trace, and the invalid
    header is not sent on beside the new one."""
    gateway = _gateway()
    client, out, upstream = _connect(gateway)
    sent: list[bytes] = upstream.transport.written  # type: ignore[union-attr]
    lines = []
    for path in (b"/open", b"/nowhere"):
        client.data_received(
            b"GET %s HTTP/1.1\r\nHost: x\r\nTraceparent: %s\r\n\r\n" % (path, traceparent.encode())
        )
        if path == b"/open":
            upstream.data_received(RESPONSE)
        head = out.written[-1].split(b"\r\n\r\n", 1)[0].decode()
        [request_id] = re.findall(r"\r\nx-request-id: ([^\r]*)", head)
        lines.append(_access_lines(gateway)[request_id])
    [forwarded] = re.findall(r"\r\ntraceparent: ([^\r]*)", sent[-1].decode())
    _, answered = _ids_of(out.written[-1])
    if kept:
        assert forwarded == traceparent
        assert answered.split("-")[1] == "7" * 32
    else:
        made = lines[0]["request_id"]
        assert re.fullmatch(f"00-{made}-[0-9a-f]{{16}}-01", forwarded)
        assert forwarded.split("-")[2] != made[16:]
        assert answered.startswith(f"00-{lines[1]['request_id']}-")
    assert lines[0]["trace_id"] == forwarded.split("-")[1]
    assert lines[1]["trace_id"] == answered.split("-")[1]
    await gateway.close()


@pytest.mark.parametrize(
    "request_id, kept",
    [
        ("order-42_retry.1", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("a:b", False),
        ("a/b", False),
        ('a"b', False),
    ],
)
async def test_the_gateway_keeps_only_a_request_id_the_services_accept(
    request_id: str, kept: bool
) -> None:
    gateway = _gateway()
    client, out, upstream = _connect(gateway)
    sent: list[bytes] = upstream.transport.written  # type: ignore[union-attr]
    client.data_received(
        b"GET /open HTTP/1.1\r\nHost: x\r\nX-Request-ID: %s\r\n\r\n" % request_id.encode()
    )
    upstream.data_received(RESPONSE)
    [answered] = re.findall(r"\r\nx-request-id: ([^\r]*)", out.written[-1].decode())
    assert f"\r\nx-request-id: {answered}\r\n" in sent[-1].decode()
    if kept:
        assert answered == request_id
    else:
        assert re.fullmatch("[0-9a-f]{32}", answered)
        assert request_id not in sent[-1].decode()
    await gateway.close()
