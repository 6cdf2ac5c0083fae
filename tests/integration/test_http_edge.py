"""The HTTP edge of every app: ids and trace context, problem+json errors, metrics, health, logs."""

from __future__ import annotations

import gzip
import json
import re
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Query, Request
from pydantic import BaseModel, Field

from ecosistema.platform.app import create_app
from ecosistema.platform.config import Settings
from ecosistema.platform.db import new_metadata
from ecosistema.platform.events import Outbox
from ecosistema.platform.service import Service, Subscription
from ecosistema.platform.telemetry import current_request_id, outgoing_headers
from tests.conftest import drop_test_schemas, make_settings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
PROBLEM_JSON = "application/problem+json"


class Address(BaseModel):
    zip: str = Field(min_length=4)


class Shipment(BaseModel):
    name: str = Field(min_length=1)
    quantity: int = Field(gt=0)
    address: Address


def add_test_routes(app: FastAPI) -> None:
    things = APIRouter()

    @things.get("/things/{thing_id}")
    async def get_thing(thing_id: str) -> dict[str, Any]:
        return {"id": thing_id, "request_id": current_request_id(), "outgoing": outgoing_headers()}

    app.include_router(things, prefix="/api/v1")

    @app.post("/api/v1/shipments", status_code=201)
    async def create_shipment(shipment: Shipment, limit: int = Query(1, ge=1)) -> dict[str, str]:
        return {"name": shipment.name}

    @app.post("/api/v1/uploads")
    async def upload(body: dict[str, Any]) -> dict[str, int]:
        return {"keys": len(body)}

    @app.post("/api/v1/streamed-uploads")
    async def streamed_upload(request: Request) -> dict[str, int]:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return {"size": size}

    @app.get("/api/v1/broken")
    async def broken() -> None:
        raise RuntimeError("a bug, not an input")


def edge_settings(tmp_path: Path, shape: str = "embedded", **overrides: Any) -> Settings:
    overrides.setdefault("log_level", "INFO")
    overrides.setdefault("max_body_bytes", 1024)
    return make_settings(shape, tmp_path, **overrides)


@asynccontextmanager
async def serve(
    settings: Settings, services: list[Service] | None = None
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """A small app with the platform edge and the test routes, its lifespan running."""
    app = create_app(services or [], settings)
    add_test_routes(app)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield app, client


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(edge_settings(tmp_path)) as (_app, client):
        yield client


def assert_problem(response: httpx.Response, status: int, type_suffix: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].endswith("/" + type_suffix)
    assert body["title"]
    assert body["detail"]
    assert response.headers["x-request-id"]
    assert TRACEPARENT.fullmatch(response.headers["traceparent"])
    return body


def metric_value(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


# Request ids and trace context.


async def test_response_echoes_a_sane_request_id_and_continues_the_callers_trace(
    edge: httpx.AsyncClient,
) -> None:
    response = await edge.get(
        "/api/v1/things/t1",
        headers={"X-Request-ID": "abc-123", "traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "abc-123"
    match = TRACEPARENT.fullmatch(response.headers["traceparent"])
    assert match is not None
    trace_id, span_id, flags = match.groups()
    assert trace_id == TRACE_ID
    assert span_id != PARENT_SPAN_ID
    assert flags == "01"
    body = response.json()
    assert body["request_id"] == "abc-123"
    # A call made while serving the request carries the same ids onward.
    assert body["outgoing"] == {
        "traceparent": response.headers["traceparent"],
        "X-Request-ID": "abc-123",
    }


async def test_request_without_ids_gets_a_new_request_id_and_a_new_trace(
    edge: httpx.AsyncClient,
) -> None:
    first = await edge.get("/healthz")
    second = await edge.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    first_trace = TRACEPARENT.fullmatch(first.headers["traceparent"])
    second_trace = TRACEPARENT.fullmatch(second.headers["traceparent"])
    assert first_trace and second_trace
    assert first_trace.group(1) != second_trace.group(1)


async def test_unsafe_request_id_and_invalid_traceparent_are_replaced(
    edge: httpx.AsyncClient,
) -> None:
    response = await edge.get(
        "/healthz",
        headers={"X-Request-ID": "x" * 200, "traceparent": f"00-{'0' * 32}-{PARENT_SPAN_ID}-01"},
    )
    assert response.headers["x-request-id"] != "x" * 200
    match = TRACEPARENT.fullmatch(response.headers["traceparent"])
    assert match is not None
    assert match.group(1) != "0" * 32


# Errors: problem+json for every input, never a 500.


async def test_unknown_path_is_a_404_problem(edge: httpx.AsyncClient) -> None:
    body = assert_problem(await edge.get("/api/v1/nowhere"), 404, "not-found")
    assert body["instance"] == "/api/v1/nowhere"


async def test_wrong_method_is_a_405_problem(edge: httpx.AsyncClient) -> None:
    response = await edge.delete("/api/v1/shipments")
    assert_problem(response, 405, "method-not-allowed")
    assert "POST" in response.headers["allow"]


async def test_malformed_json_is_a_400_problem(edge: httpx.AsyncClient) -> None:
    response = await edge.post(
        "/api/v1/shipments",
        content=b'{"name": "crate", ',
        headers={"content-type": "application/json"},
    )
    assert_problem(response, 400, "malformed-json")


async def test_validation_failure_is_a_422_problem_with_field_paths(
    edge: httpx.AsyncClient,
) -> None:
    response = await edge.post(
        "/api/v1/shipments?limit=0",
        json={"name": "", "quantity": "many", "address": {"zip": "1"}},
    )
    body = assert_problem(response, 422, "validation-error")
    body_fields = {e["field"] for e in body["errors"] if e["in"] == "body"}
    assert body_fields == {"name", "quantity", "address.zip"}
    query_fields = [e["field"] for e in body["errors"] if e["in"] == "query"]
    assert len(query_fields) == 1
    assert query_fields[0].endswith("limit")
    assert all(e["message"] and e["code"] for e in body["errors"])


async def test_missing_body_is_a_422_problem(edge: httpx.AsyncClient) -> None:
    body = assert_problem(await edge.post("/api/v1/shipments"), 422, "validation-error")
    assert body["errors"][0]["in"] == "body"


async def test_body_over_the_limit_with_content_length_is_a_413_problem(
    edge: httpx.AsyncClient,
) -> None:
    payload = json.dumps({"blob": "x" * 2048}).encode()
    response = await edge.post(
        "/api/v1/uploads", content=payload, headers={"content-type": "application/json"}
    )
    assert_problem(response, 413, "payload-too-large")


async def test_body_over_the_limit_without_content_length_is_a_413_problem(
    edge: httpx.AsyncClient,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"blob": "'
        for _ in range(8):
            yield b"x" * 256
        yield b'"}'

    response = await edge.post(
        "/api/v1/uploads", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_problem(response, 413, "payload-too-large")


async def test_body_under_the_limit_without_content_length_is_accepted(
    edge: httpx.AsyncClient,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"a": 1,'
        yield b' "b": 2}'

    response = await edge.post(
        "/api/v1/uploads", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 200
    assert response.json() == {"keys": 2}


async def test_a_bug_in_a_handler_is_a_500_problem_that_still_carries_the_ids(
    edge: httpx.AsyncClient,
) -> None:
    response = await edge.get("/api/v1/broken", headers={"X-Request-ID": "bug-1"})
    body = assert_problem(response, 500, "internal-error")
    assert response.headers["x-request-id"] == "bug-1"
    assert "a bug, not an input" not in json.dumps(body)


# Metrics.


async def test_metrics_label_requests_by_route_template_not_raw_path(
    edge: httpx.AsyncClient,
) -> None:
    await edge.get("/api/v1/things/secret-id-42")
    await edge.get("/api/v1/things/another-id")
    await edge.get("/no/such/path")
    await edge.get("/api/v1/broken")
    response = await edge.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    route = "/api/v1/things/{thing_id}"
    assert (
        metric_value(
            text,
            f'ecosistema_http_requests_total{{method="GET",route="{route}",status="200"}}',
        )
        == 2.0
    )
    assert (
        metric_value(
            text, f'ecosistema_http_request_duration_seconds_count{{method="GET",route="{route}"}}'
        )
        == 2.0
    )
    assert "secret-id-42" not in text
    assert (
        metric_value(
            text, 'ecosistema_http_requests_total{method="GET",route="unmatched",status="404"}'
        )
        == 1.0
    )
    assert (
        metric_value(text, 'ecosistema_http_errors_total{route="/api/v1/broken",status="500"}')
        == 1.0
    )
    assert metric_value(text, 'ecosistema_http_errors_total{route="unmatched",status="404"}') == 1.0


async def test_each_app_counts_only_its_own_requests(tmp_path: Path) -> None:
    async with (
        serve(edge_settings(tmp_path / "a")) as (_a, first),
        serve(edge_settings(tmp_path / "b")) as (_b, second),
    ):
        await first.get("/healthz")
        text = (await second.get("/metrics")).text
    assert 'route="/healthz"' not in text


def ledger_service(tmp_path: Path) -> Service:
    """A minimal service with an outbox, one subscription and an empty migration history."""
    migrations = tmp_path / "ledger_migrations"
    (migrations / "versions").mkdir(parents=True)
    (migrations / "env.py").write_text(
        "from sqlalchemy import MetaData\n"
        "from ecosistema.platform.migrations import run_migrations\n"
        "run_migrations(MetaData())\n"
    )

    async def project(_ctx: Any, _session: Any, _envelope: Any) -> None:
        return None

    metadata = new_metadata()
    return Service(
        name="ledger",
        metadata=metadata,
        outbox=Outbox("ledger", metadata),
        migrations=migrations,
        subscriptions=[Subscription("projector", ("EntryPosted",), project)],
    )


async def test_metrics_report_the_outbox_backlog_of_each_service(tmp_path: Path) -> None:
    ledger = ledger_service(tmp_path)
    app = create_app([ledger], edge_settings(tmp_path))
    runtime = app.state.runtime
    # The relay is created but not running, so written events stay in the backlog.
    await runtime.start(migrate=False, background=False)
    try:
        ctx = runtime.contexts["ledger"]
        async with ctx.db.engine.begin() as conn:
            await conn.run_sync(ledger.metadata.create_all)
        async with ctx.db.transaction() as session:
            for n in range(3):
                await ctx.outbox.add(session, "EntryPosted", {"n": n})
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            before = (await client.get("/metrics")).text
            await runtime.drain_outboxes()
            after = (await client.get("/metrics")).text
    finally:
        await runtime.stop()
    assert metric_value(before, 'ecosistema_outbox_backlog{service="ledger"}') == 3.0
    assert metric_value(after, 'ecosistema_outbox_backlog{service="ledger"}') == 0.0


async def test_metrics_report_the_lag_of_each_durable_consumer(shape: str, tmp_path: Path) -> None:
    settings = edge_settings(tmp_path, shape)
    try:
        async with serve(settings, [ledger_service(tmp_path)]) as (_app, client):
            text = (await client.get("/metrics")).text
    finally:
        await drop_test_schemas(settings)
    assert metric_value(text, 'ecosistema_consumer_lag{consumer="ledger.projector"}') == 0.0


# Health.


async def test_healthz_says_the_process_is_alive(edge: httpx.AsyncClient) -> None:
    response = await edge.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_ready_when_database_bus_and_cache_answer(
    shape: str, tmp_path: Path
) -> None:
    settings = edge_settings(tmp_path, shape)
    try:
        async with serve(settings, [ledger_service(tmp_path)]) as (_app, client):
            response = await client.get("/readyz")
    finally:
        await drop_test_schemas(settings)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "ready",
        "checks": {"database:ledger": "ok", "bus": "ok", "cache": "ok"},
    }


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_readyz_is_503_when_the_cache_is_down(tmp_path: Path) -> None:
    settings = edge_settings(tmp_path, cache_url=f"redis://127.0.0.1:{closed_port()}/0")
    async with serve(settings) as (_app, client):
        response = await client.get("/readyz")
        alive = await client.get("/healthz")
    assert response.status_code == 503
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body = response.json()
    assert body["checks"]["cache"].startswith("error")
    assert body["checks"]["bus"] == "ok"
    assert alive.status_code == 200


# Logs.


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_access_log_is_one_json_line_with_route_status_and_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serve(edge_settings(tmp_path)) as (_app, client):
        capsys.readouterr()
        response = await client.get(
            "/api/v1/things/t9",
            headers={"X-Request-ID": "log-1", "traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"},
        )
        lines = json_lines(capsys.readouterr().out)
    assert response.status_code == 200
    access = [line for line in lines if line.get("logger") == "ecosistema.access"]
    assert len(access) == 1
    line = access[0]
    assert line["event"] == "request"
    assert line["method"] == "GET"
    assert line["route"] == "/api/v1/things/{thing_id}"
    assert line["status"] == 200
    assert line["duration_ms"] >= 0
    assert line["client_ip"] == "203.0.113.7"
    assert line["request_id"] == "log-1"
    assert line["trace_id"] == TRACE_ID
    assert line["level"] == "info"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", line["timestamp"])


async def test_error_log_of_a_bug_carries_the_request_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serve(edge_settings(tmp_path)) as (_app, client):
        capsys.readouterr()
        await client.get("/api/v1/broken", headers={"X-Request-ID": "bug-2"})
        lines = json_lines(capsys.readouterr().out)
    errors = [line for line in lines if line.get("event") == "unhandled_error"]
    assert len(errors) == 1
    assert errors[0]["request_id"] == "bug-2"
    assert errors[0]["level"] == "error"
    assert "RuntimeError" in errors[0]["exception"]


async def test_stdlib_log_records_become_json_lines_with_the_request_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    async with serve(edge_settings(tmp_path)) as (app, client):

        @app.get("/api/v1/stdlib-log")
        async def stdlib_log() -> dict[str, str]:
            logging.getLogger("uvicorn.error").warning("disk %s is %d%% full", "/data", 91)
            return {}

        capsys.readouterr()
        await client.get("/api/v1/stdlib-log", headers={"X-Request-ID": "std-1"})
        lines = json_lines(capsys.readouterr().out)
    records = [line for line in lines if line.get("logger") == "uvicorn.error"]
    assert records == [
        {
            "event": "disk /data is 91% full",
            "logger": "uvicorn.error",
            "level": "warning",
            "request_id": "std-1",
            "trace_id": records[0]["trace_id"],
            "timestamp": records[0]["timestamp"],
        }
    ]


# Traces over OTLP.


class Collector:
    """A tiny OTLP/HTTP collector on 127.0.0.1 that keeps what it receives."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes]] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                received.append((self.path, body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def spans(self) -> list[Any]:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        out = []
        for path, body in self.requests:
            assert path == "/v1/traces"
            export = ExportTraceServiceRequest()
            export.ParseFromString(body)
            for resource_spans in export.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    out.extend(scope_spans.spans)
        return out


@pytest.fixture
def collector() -> Iterator[Collector]:
    running = Collector()
    running.thread.start()
    yield running
    running.server.shutdown()
    running.server.server_close()


async def test_server_spans_are_exported_over_otlp_with_the_response_ids(
    tmp_path: Path, collector: Collector
) -> None:
    settings = edge_settings(tmp_path, otlp_endpoint=collector.url, service_name="edge-test")
    async with serve(settings) as (_app, client):
        continued = await client.get(
            "/api/v1/things/t1", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"}
        )
        fresh = await client.get("/api/v1/broken")
    # Leaving the lifespan shuts the tracer provider down, which exports what is buffered.
    spans = {span.span_id.hex(): span for span in collector.spans()}

    match = TRACEPARENT.fullmatch(continued.headers["traceparent"])
    assert match is not None
    span = spans[match.group(2)]
    assert span.trace_id.hex() == TRACE_ID
    assert span.parent_span_id.hex() == PARENT_SPAN_ID
    assert span.name == "GET /api/v1/things/{thing_id}"
    attributes = {a.key: a.value for a in span.attributes}
    assert attributes["http.method"].string_value == "GET"
    assert attributes["http.route"].string_value == "/api/v1/things/{thing_id}"
    assert attributes["http.status_code"].int_value == 200

    match = TRACEPARENT.fullmatch(fresh.headers["traceparent"])
    assert match is not None
    root = spans[match.group(2)]
    assert root.trace_id.hex() == match.group(1)
    assert root.parent_span_id == b""
    assert {a.key: a.value for a in root.attributes}["http.status_code"].int_value == 500
    assert root.status.code == 2  # STATUS_CODE_ERROR


async def test_every_service_route_of_the_full_app_is_behind_the_edge(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/v1/no-such-resource", headers={"X-Request-ID": "full-1"})
    assert_problem(response, 404, "not-found")
    assert response.headers["x-request-id"] == "full-1"
    assert (await client.get("/readyz")).status_code == 200
    text = (await client.get("/metrics")).text
    assert 'route="/readyz"' in text
    assert "ecosistema_outbox_backlog{" in text


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
async def test_a_body_that_is_not_json_is_a_415_problem(
    edge: httpx.AsyncClient, content_type: str
) -> None:
    response = await edge.post(
        "/api/v1/uploads", content=b'{"a": 1}', headers={"content-type": content_type}
    )
    assert_problem(response, 415, "unsupported-media-type")


async def test_json_with_a_vendor_suffix_is_accepted(edge: httpx.AsyncClient) -> None:
    response = await edge.post(
        "/api/v1/uploads", content=b'{"a": 1}', headers={"content-type": "application/merge+json"}
    )
    assert response.status_code == 200


async def test_a_body_that_is_not_utf8_is_malformed_json(edge: httpx.AsyncClient) -> None:
    response = await edge.post(
        "/api/v1/uploads",
        content=b'{"a": "\xff\xfe"}',
        headers={"content-type": "application/json"},
    )
    assert_problem(response, 400, "malformed-json")


async def test_health_checks_answer_head_requests(edge: httpx.AsyncClient) -> None:
    assert (await edge.head("/healthz")).status_code == 200
    assert (await edge.head("/readyz")).status_code == 200


async def test_cors_preflight_is_answered_for_configured_origins(tmp_path: Path) -> None:
    settings = edge_settings(tmp_path, cors_origins=["https://shop.example"])
    async with serve(settings) as (_app, client):
        allowed = await client.options(
            "/api/v1/uploads",
            headers={
                "Origin": "https://shop.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,idempotency-key",
            },
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
        other = await client.options(
            "/api/v1/uploads",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in other.headers


# Security headers and fast routes.


async def test_every_response_carries_the_security_headers(edge: httpx.AsyncClient) -> None:
    payload = json.dumps({"blob": "x" * 2048}).encode()
    for response in (
        await edge.get("/healthz"),
        await edge.get("/api/v1/nowhere"),
        await edge.post(
            "/api/v1/uploads", content=payload, headers={"content-type": "application/json"}
        ),
    ):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"


@asynccontextmanager
async def serve_with_fast_route(
    tmp_path: Path,
) -> AsyncIterator[tuple[list[str], httpx.AsyncClient]]:
    """An app whose /api/v1/gadgets/{gadget_id} route also has a fast handler; ``served``
    records which of the two answered each request."""
    from ecosistema.platform.edge import FastRequest, FastResponse, serve_fast
    from ecosistema.platform.errors import NotFound

    served: list[str] = []
    gadgets = APIRouter()

    @gadgets.get("/gadgets/featured")
    async def featured_gadget() -> dict[str, str]:
        served.append("featured")
        return {"id": "featured"}

    @gadgets.get("/gadgets/{gadget_id}")
    async def get_gadget(gadget_id: str) -> dict[str, str]:
        served.append("route")
        if gadget_id == "missing":
            raise NotFound("No gadget with this id.")
        return {"id": gadget_id}

    async def get_gadget_fast(request: FastRequest) -> FastResponse | None:
        gadget_id = request.path_params["gadget_id"]
        if gadget_id == "declined":
            return None
        served.append("fast")
        if gadget_id == "missing":
            raise NotFound("No gadget with this id.")
        if gadget_id == "broken":
            raise RuntimeError("a bug in a fast handler")
        body = json.dumps({"id": gadget_id}, separators=(",", ":")).encode()
        return FastResponse(200, body, [(b"content-type", b"application/json")])

    serve_fast(get_gadget, get_gadget_fast)
    async with serve(edge_settings(tmp_path)) as (app, client):
        app.include_router(gadgets, prefix="/api/v1")
        yield served, client


async def test_a_fast_route_answers_anonymous_gets_and_leaves_the_rest_to_the_route(
    tmp_path: Path,
) -> None:
    async with serve_with_fast_route(tmp_path) as (served, client):
        fast = await client.get("/api/v1/gadgets/g1", headers={"X-Request-ID": "fast-1"})
        signed = await client.get("/api/v1/gadgets/g1", headers={"Authorization": "Bearer x"})
        declined = await client.get("/api/v1/gadgets/declined")
        metrics = (await client.get("/metrics")).text
    assert served == ["fast", "route", "route"]
    assert declined.json() == {"id": "declined"}
    assert fast.status_code == signed.status_code == 200
    assert fast.json() == signed.json() == {"id": "g1"}
    assert fast.headers["content-length"] == str(len(fast.content))
    assert fast.headers["x-request-id"] == "fast-1"
    assert TRACEPARENT.fullmatch(fast.headers["traceparent"])
    assert fast.headers["x-content-type-options"] == "nosniff"
    series = 'ecosistema_http_requests_total{method="GET",route="/api/v1/gadgets/{gadget_id}"'
    assert metric_value(metrics, series + ',status="200"}') == 3.0


async def test_a_route_declared_before_a_fast_route_keeps_its_paths(tmp_path: Path) -> None:
    async with serve_with_fast_route(tmp_path) as (served, client):
        response = await client.get("/api/v1/gadgets/featured")
    assert response.json() == {"id": "featured"}
    assert served == ["featured"]


async def test_a_problem_from_a_fast_handler_is_the_routes_problem(tmp_path: Path) -> None:
    async with serve_with_fast_route(tmp_path) as (served, client):
        fast = await client.get("/api/v1/gadgets/missing")
        routed = await client.get("/api/v1/gadgets/missing", headers={"Authorization": "Bearer x"})
    assert served == ["fast", "route"]
    assert assert_problem(fast, 404, "not-found") == assert_problem(routed, 404, "not-found")


async def test_a_bug_in_a_fast_handler_is_a_logged_500_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serve_with_fast_route(tmp_path) as (_served, client):
        capsys.readouterr()
        response = await client.get("/api/v1/gadgets/broken", headers={"X-Request-ID": "bug-3"})
        lines = json_lines(capsys.readouterr().out)
    body = assert_problem(response, 500, "internal-error")
    assert "a bug in a fast handler" not in json.dumps(body)
    errors = [line for line in lines if line.get("event") == "unhandled_error"]
    assert len(errors) == 1 and errors[0]["request_id"] == "bug-3"
    access = [line for line in lines if line.get("logger") == "ecosistema.access"]
    assert [(line["route"], line["status"]) for line in access] == [
        ("/api/v1/gadgets/{gadget_id}", 500)
    ]


@pytest.mark.parametrize("path", ["/api/v1/uploads", "/api/v1/streamed-uploads"])
async def test_a_client_leaving_mid_body_is_an_incomplete_body_not_an_error(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], path: str
) -> None:
    async with serve(edge_settings(tmp_path)) as (app, _client):
        messages = iter(
            [
                {"type": "http.request", "body": b'{"blob": "', "more_body": True},
                {"type": "http.disconnect"},
            ]
        )
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return next(messages)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
            "client": ("203.0.113.7", 50000),
            "server": ("test", 80),
            "state": {},
        }
        await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert start["status"] == 400
    assert body["type"].endswith("/incomplete-body")
    logged = capfd.readouterr()
    assert "unhandled_error" not in logged.out + logged.err
    assert "request_body_incomplete" in logged.out + logged.err
