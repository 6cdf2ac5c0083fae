"""Telemetry: request ids and W3C trace context carried in context variables."""

from __future__ import annotations

from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
trace_id_var: ContextVar[str | None] = ContextVar("trace_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being served, if any."""
    return request_id_var.get()


def current_trace_id() -> str | None:
    """The W3C trace id of the request being served, if any."""
    return trace_id_var.get()
