"""Telemetry: request ids and W3C trace context carried in context variables.

The HTTP edge (``telemetry_http``) sets these for every request; logs read them (``logging``) and
outgoing HTTP calls propagate them with :func:`outgoing_headers`.
"""

from __future__ import annotations

import os
import re
import uuid
from contextvars import ContextVar
from dataclasses import dataclass

REQUEST_ID_HEADER = "X-Request-ID"
TRACEPARENT_HEADER = "traceparent"
MAX_REQUEST_ID_LENGTH = 128

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# https://www.w3.org/TR/trace-context/#traceparent-header-field-values
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16
SAMPLED = 0x01


@dataclass(frozen=True, slots=True)
class TraceContext:
    """One position in a W3C trace: the trace, the current span and the trace flags."""

    trace_id: str
    span_id: str
    flags: int = SAMPLED

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    def traceparent(self) -> str:
        """The ``traceparent`` header value naming this span as the parent."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"

    def child(self) -> TraceContext:
        """A new span in the same trace, with the same flags."""
        return TraceContext(self.trace_id, new_span_id(), self.flags)


request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
trace_id_var: ContextVar[str | None] = ContextVar("trace_id", default=None)
trace_context_var: ContextVar[TraceContext | None] = ContextVar("trace_context", default=None)


def current_request_id() -> str | None:
    """The id of the request being served, if any."""
    return request_id_var.get()


def current_trace_id() -> str | None:
    """The W3C trace id of the request being served, if any."""
    return trace_id_var.get()


def current_trace_context() -> TraceContext | None:
    """The trace position (trace id and this server's span id) of the request being served."""
    return trace_context_var.get()


def new_request_id() -> str:
    """A fresh request id: 32 lowercase hex characters."""
    return uuid.uuid4().hex


def new_trace_id() -> str:
    """A random, never all-zero, 16-byte trace id in lowercase hex."""
    while True:
        value = os.urandom(16).hex()
        if value != _ZERO_TRACE_ID:
            return value


def new_span_id() -> str:
    """A random, never all-zero, 8-byte span id in lowercase hex."""
    while True:
        value = os.urandom(8).hex()
        if value != _ZERO_SPAN_ID:
            return value


def new_trace() -> TraceContext:
    """The root span of a new, sampled trace."""
    return TraceContext(new_trace_id(), new_span_id(), SAMPLED)


def sanitize_request_id(value: str | None) -> str:
    """The caller's request id when it is safe to log and echo, else a fresh one."""
    if value and len(value) <= MAX_REQUEST_ID_LENGTH and _SANE_REQUEST_ID.fullmatch(value):
        return value
    return new_request_id()


def parse_traceparent(value: str | None) -> TraceContext | None:
    """Parse a W3C ``traceparent`` header; ``None`` when absent or invalid.

    Version 00 must be exactly 55 characters. A higher version may carry more fields after a
    dash, which are ignored as the specification requires; version ff is invalid.
    """
    if not value:
        return None
    value = value.strip()
    if len(value) < 55:
        return None
    match = _TRACEPARENT.fullmatch(value[:55])
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff":
        return None
    if version == "00" and len(value) != 55:
        return None
    if len(value) > 55 and value[55] != "-":
        return None
    if trace_id == _ZERO_TRACE_ID or span_id == _ZERO_SPAN_ID:
        return None
    return TraceContext(trace_id, span_id, int(flags, 16))


def outgoing_headers() -> dict[str, str]:
    """Headers an HTTP client adds so the callee joins this request's trace and request id."""
    headers: dict[str, str] = {}
    context = trace_context_var.get()
    if context is not None:
        headers[TRACEPARENT_HEADER] = context.traceparent()
    request_id = request_id_var.get()
    if request_id is not None:
        headers[REQUEST_ID_HEADER] = request_id
    return headers
