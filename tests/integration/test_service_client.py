"""Calls between services carry the caller's credential, request id and trace context."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ecosistema.platform.http import service_client
from ecosistema.platform.telemetry import new_trace, request_id_var, trace_context_var


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse(
        {k: request.headers.get(k) for k in ("authorization", "x-request-id", "traceparent")}
    )


callee = Starlette(routes=[Route("/api/v1/echo", _echo)])


async def test_a_service_call_carries_credential_request_id_and_trace() -> None:
    trace = new_trace()
    request_token = request_id_var.set("req-123")
    trace_token = trace_context_var.set(trace)
    try:
        async with service_client(
            "http://orders/", credential="eco_k_s", transport=httpx.ASGITransport(app=callee)
        ) as client:
            seen = (await client.get("/echo")).json()
    finally:
        request_id_var.reset(request_token)
        trace_context_var.reset(trace_token)
    assert seen["authorization"] == "Bearer eco_k_s"
    assert seen["x-request-id"] == "req-123"
    assert seen["traceparent"] == trace.traceparent()


async def test_outside_a_request_a_service_call_sends_no_ids() -> None:
    async with service_client("http://orders", transport=httpx.ASGITransport(app=callee)) as client:
        seen = (await client.get("/echo")).json()
    assert seen == {"authorization": None, "x-request-id": None, "traceparent": None}
