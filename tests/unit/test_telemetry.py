"""Request ids, W3C trace context and the log processor that stamps them on every line."""

from __future__ import annotations

import re

import pytest
from fastapi import APIRouter, FastAPI

from ecosistema.platform.logging import add_request_context
from ecosistema.platform.telemetry import (
    TraceContext,
    current_request_id,
    current_trace_id,
    new_span_id,
    new_trace,
    outgoing_headers,
    parse_traceparent,
    request_id_var,
    sanitize_request_id,
    trace_context_var,
    trace_id_var,
)
from ecosistema.platform.telemetry_http import UNMATCHED_ROUTE, RouteTemplates, traces_url

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


def test_valid_version_00_traceparent_is_parsed() -> None:
    parsed = parse_traceparent(f"00-{TRACE_ID}-{SPAN_ID}-01")
    assert parsed == TraceContext(TRACE_ID, SPAN_ID, 1)
    assert parsed.sampled


def test_unsampled_flag_is_kept() -> None:
    parsed = parse_traceparent(f"00-{TRACE_ID}-{SPAN_ID}-00")
    assert parsed is not None
    assert not parsed.sampled
    assert parsed.traceparent() == f"00-{TRACE_ID}-{SPAN_ID}-00"


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        f"00-{TRACE_ID}-{SPAN_ID}",  # no flags
        f"00-{TRACE_ID.upper()}-{SPAN_ID}-01",  # upper-case hex is not allowed
        f"00-{'0' * 32}-{SPAN_ID}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
        f"ff-{TRACE_ID}-{SPAN_ID}-01",  # forbidden version
        f"00-{TRACE_ID}-{SPAN_ID}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE_ID[:-1]}-{SPAN_ID}-01",  # short trace id
        f"00-{TRACE_ID}-{SPAN_ID}-1",  # short flags
        f"00_{TRACE_ID}_{SPAN_ID}_01",  # wrong separators
        f"0g-{TRACE_ID}-{SPAN_ID}-01",  # non-hex version
        f"01-{TRACE_ID}-{SPAN_ID}-01x",  # a later version's extra data needs a dash
    ],
)
def test_invalid_traceparent_is_rejected(value: str | None) -> None:
    assert parse_traceparent(value) is None


def test_future_version_traceparent_keeps_the_known_fields() -> None:
    parsed = parse_traceparent(f"cc-{TRACE_ID}-{SPAN_ID}-01-what-the-future-holds")
    assert parsed == TraceContext(TRACE_ID, SPAN_ID, 1)


def test_child_span_stays_in_the_trace_with_a_new_span_id() -> None:
    parent = TraceContext(TRACE_ID, SPAN_ID, 1)
    child = parent.child()
    assert child.trace_id == TRACE_ID
    assert child.span_id != SPAN_ID
    assert re.fullmatch(r"[0-9a-f]{16}", child.span_id)
    assert parse_traceparent(child.traceparent()) == child


def test_new_trace_has_random_w3c_ids() -> None:
    first, second = new_trace(), new_trace()
    assert re.fullmatch(r"[0-9a-f]{32}", first.trace_id)
    assert re.fullmatch(r"[0-9a-f]{16}", first.span_id)
    assert first.trace_id != second.trace_id
    assert first.sampled
    assert new_span_id() != new_span_id()


@pytest.mark.parametrize(
    "value", ["abc", "req-1.2_3", "A" * 128, "0af7651916cd43dd8448eb211c80319c"]
)
def test_sane_request_id_is_kept(value: str) -> None:
    assert sanitize_request_id(value) == value


@pytest.mark.parametrize(
    "value",
    [None, "", "A" * 129, "has space", "semi;colon", "new\nline", "ünï", "a/b", '"quoted"'],
)
def test_unsafe_request_id_is_replaced_by_a_fresh_one(value: str | None) -> None:
    replaced = sanitize_request_id(value)
    assert replaced != value
    assert re.fullmatch(r"[0-9a-f]{32}", replaced)


def test_log_processor_adds_request_and_trace_ids_from_the_context() -> None:
    rid = request_id_var.set("req-42")
    tid = trace_id_var.set(TRACE_ID)
    try:
        event = add_request_context(None, "info", {"event": "something"})
        assert current_request_id() == "req-42"
        assert current_trace_id() == TRACE_ID
    finally:
        trace_id_var.reset(tid)
        request_id_var.reset(rid)
    assert event == {"event": "something", "request_id": "req-42", "trace_id": TRACE_ID}


def test_log_processor_adds_nothing_outside_a_request() -> None:
    assert add_request_context(None, "info", {"event": "boot"}) == {"event": "boot"}


def test_log_processor_keeps_an_explicit_request_id() -> None:
    token = request_id_var.set("from-context")
    try:
        event = add_request_context(None, "info", {"event": "x", "request_id": "explicit"})
    finally:
        request_id_var.reset(token)
    assert event["request_id"] == "explicit"


def test_outgoing_headers_propagate_the_current_trace_and_request_id() -> None:
    assert outgoing_headers() == {}
    context = TraceContext(TRACE_ID, SPAN_ID, 1)
    ctx_token = trace_context_var.set(context)
    rid_token = request_id_var.set("req-7")
    try:
        headers = outgoing_headers()
    finally:
        request_id_var.reset(rid_token)
        trace_context_var.reset(ctx_token)
    assert headers == {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01", "X-Request-ID": "req-7"}


def test_route_label_is_the_full_template_including_router_prefixes() -> None:
    app = FastAPI()
    router = APIRouter()

    @router.get("/users/{user_id}")
    async def get_user(user_id: str) -> None:
        return None

    @app.get("/healthz")
    async def healthz() -> None:
        return None

    app.include_router(router, prefix="/api/v1")
    app.include_router(router, prefix="/api/v2")
    templates = RouteTemplates(app)
    health = next(r for r in app.routes if getattr(r, "path", None) == "/healthz")

    assert templates.template({"route": health, "path": "/healthz"}) == "/healthz"
    assert templates.template({"path": "/nowhere"}) == UNMATCHED_ROUTE
    inner = router.routes[0]
    assert templates.template({"route": inner, "path": "/api/v1/users/42"}) == (
        "/api/v1/users/{user_id}"
    )
    assert templates.template({"route": inner, "path": "/api/v2/users/42"}) == (
        "/api/v2/users/{user_id}"
    )


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("http://collector:4318/", "http://collector:4318/v1/traces"),
        ("https://otel.example/v1/traces", "https://otel.example/v1/traces"),
    ],
)
def test_otlp_endpoint_is_a_base_url(endpoint: str, url: str) -> None:
    assert traces_url(endpoint) == url
