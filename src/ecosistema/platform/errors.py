"""Typed errors and their one mapping to RFC 9457 problem+json."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from sqlalchemy.exc import StatementError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

from ecosistema.platform.timestamps import TimestampOutOfRange

PROBLEM_BASE = "https://ecosistema.dev/problems/"
PROBLEM_JSON = "application/problem+json"

log = structlog.get_logger(__name__)


# The title of each problem type raised by several services' use cases without a class of its
# own: a problem's title names its type (RFC 9457 3.1.3), so a client can show it, and it is
# declared once here rather than at every place the type is raised. A raise that passes its own
# ``title`` keeps it; a type missing here takes its class's title.
PROBLEM_TITLES: Mapping[str, str] = {
    # catalog
    "below-reserved": "Stock below what is reserved",
    "category-not-empty": "Category not empty",
    "code-taken": "Code already in use",
    "no-warehouse": "No warehouse",
    "order-not-committed": "Order's stock not committed",
    "product-conflict": "Product conflicts with a concurrent change",
    "reservation-released": "Reservation released",
    "restock-exceeds-order": "Restock exceeds the order",
    "sku-taken": "SKU already in use",
    "slug-taken": "Slug already in use",
    "variant-has-stock": "Variant still holds stock",
    # identity
    "demo-in-production": "No demo data in production",
    "email-not-verified": "Email address not verified",
    "email-taken": "Email address already registered",
    "invalid-credentials": "Invalid credentials",
    "invalid-refresh-token": "Invalid refresh token",
    "invalid-second-factor": "Invalid second factor",
    "mfa-already-enabled": "Two-factor authentication already on",
    "mfa-not-enabled": "Two-factor authentication not on",
    "mfa-not-enrolling": "Two-factor enrolment not started",
    "self-administration": "Own account not changeable",
    "session-ended": "Session ended",
    "user-required": "Signed-in user required",
    # payments
    "invalid-webhook-signature": "Invalid webhook signature",
    # sales
    "malformed-multipart": "Malformed multipart body",
    "no-leads-yet": "No leads yet",
    "unsupported-import-format": "Unsupported import format",
    # webhooks
    "webhook-delivery-in-flight": "Webhook delivery in flight",
    "webhook-subscription-disabled": "Webhook subscription disabled",
}


class ProblemError(Exception):
    """An error that leaves the API as problem+json. Subclass it in domains and services."""

    status: int = 400
    type: str = "bad-request"
    title: str = "Bad request"

    def __init__(
        self,
        detail: str | None = None,
        *,
        type: str | None = None,
        title: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if type is not None:
            self.type = type
            self.title = PROBLEM_TITLES.get(type, self.title)
        if title is not None:
            self.title = title
        if status is not None:
            self.status = status
        self.headers = headers or {}
        self.extra = extra


class BadRequest(ProblemError):
    status, type, title = 400, "bad-request", "Bad request"


class Unauthorized(ProblemError):
    status, type, title = 401, "unauthorized", "Authentication required"

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(detail, **kwargs)


class Forbidden(ProblemError):
    status, type, title = 403, "forbidden", "Forbidden"


class NotFound(ProblemError):
    status, type, title = 404, "not-found", "Not found"


class Conflict(ProblemError):
    status, type, title = 409, "conflict", "Conflict"


class Gone(ProblemError):
    status, type, title = 410, "gone", "Gone"


class PayloadTooLarge(ProblemError):
    status, type, title = 413, "payload-too-large", "Request body too large"


class PreconditionFailed(ProblemError):
    status, type, title = 412, "precondition-failed", "Precondition failed"


class UnsupportedMediaType(ProblemError):
    status, type, title = 415, "unsupported-media-type", "Unsupported media type"


class Unprocessable(ProblemError):
    status, type, title = 422, "validation-error", "Validation failed"

    def __init__(
        self, detail: str | None = None, *, errors: Sequence[dict[str, Any]] = (), **kwargs: Any
    ) -> None:
        super().__init__(detail, errors=list(errors), **kwargs)


class TooManyRequests(ProblemError):
    status, type, title = 429, "too-many-requests", "Too many requests"

    def __init__(self, detail: str | None = None, *, retry_after: int, **kwargs: Any) -> None:
        headers = {"Retry-After": str(max(1, int(retry_after)))}
        super().__init__(detail, headers=headers, retry_after=max(1, int(retry_after)), **kwargs)


class ServiceUnavailable(ProblemError):
    status, type, title = 503, "service-unavailable", "Service unavailable"


def field_error(field: str, message: str, code: str = "invalid") -> Unprocessable:
    """A 422 pointing at one field, for rules Pydantic cannot express."""
    return Unprocessable(
        f"{field}: {message}", errors=[{"field": field, "message": message, "code": code}]
    )


def refuse_inverted_range(
    low_field: str, low: Any, high_field: str, high: Any, *, relation: str = "after"
) -> None:
    """A query range whose low end passes its high end: a 422 at the low end's parameter,
    rather than an empty page that hides the caller's mistake."""
    if low is not None and high is not None and low > high:
        message = f"must not be {relation} {high_field}"
        raise Unprocessable(
            f"{low_field}: {message}",
            errors=[{"field": low_field, "in": "query", "message": message, "code": "invalid"}],
        )


def refuse_nulls(data: BaseModel, fields: Sequence[str]) -> None:
    """A PATCH that sets to null a field that cannot be empty: a 422 at the field. Leaving a
    field out keeps its value; null neither keeps nor clears it silently."""
    for name in fields:
        if name in data.model_fields_set and getattr(data, name) is None:
            raise field_error(name, "must not be null")


_RESPONSE_DESCRIPTIONS = {
    400: "Malformed request",
    401: "Not authenticated, or the credentials are not correct",
    403: "Not allowed",
    404: "Not found",
    409: "Conflicts with the current state",
    410: "Gone",
    412: "The resource changed since the ETag given in If-Match",
    413: "Request body too large",
    415: "Body is not in a type the operation takes",
    422: "Validation failed",
    429: "Too many requests; retry after the time given",
    503: "A dependency is unavailable",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for an operation's problem answers; the app fills in the schema."""
    return {
        code: {
            "description": _RESPONSE_DESCRIPTIONS.get(code, "Problem"),
            "content": {PROBLEM_JSON: {}},
        }
        for code in codes
    }


def problem_response(
    status: int,
    type: str,
    title: str,
    detail: str,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """Build one problem+json response; the only place its shape is written."""
    body: dict[str, Any] = {
        "type": type if type.startswith(("http:", "https:", "about:")) else PROBLEM_BASE + type,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


_STATUS_TYPES = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    409: ("conflict", "Conflict"),
    413: ("payload-too-large", "Request body too large"),
    412: ("precondition-failed", "Precondition failed"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("validation-error", "Validation failed"),
    429: ("too-many-requests", "Too many requests"),
    500: ("internal-error", "Internal server error"),
    503: ("service-unavailable", "Service unavailable"),
}


_LOCATIONS = ("body", "query", "path", "header", "cookie")


def _field_path(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in (loc[1:] if loc and loc[0] in _LOCATIONS else loc)]
    return ".".join(parts) if parts else str(loc[0]) if loc else "body"


# The rules of the string patterns fields must match, in words, by pattern (``pattern_rule``).
_PATTERN_RULES: dict[str, str] = {}


def pattern_rule(pattern: str, rule: str) -> str:
    """Declare a field pattern's rule in words (``rule`` completes "must be ..."), so a value
    that breaks it is told the rule, not shown the regular expression; returns ``pattern``,
    for ``Field(pattern=pattern_rule(...))``."""
    _PATTERN_RULES[pattern] = rule
    return pattern


def validation_message(err: Mapping[str, Any]) -> str:
    """A pydantic error in words: without the prefix pydantic puts before a validator's own
    words, and with a pattern's rule instead of its regular expression when it is declared."""
    message = str(err.get("msg", "invalid"))
    if err.get("type") == "value_error":
        return message.removeprefix("Value error, ")
    if err.get("type") == "string_pattern_mismatch":
        context = err.get("ctx") or {}
        rule = _PATTERN_RULES.get(str(context.get("pattern", "")))
        if rule is not None:
            return f"must be {rule}"
    return message


def validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Pydantic errors as ``{field, message, code}`` with dotted field paths."""
    out = []
    for err in exc.errors():
        loc = err.get("loc", ())
        where = loc[0] if loc else "body"
        out.append(
            {
                "field": _field_path(loc),
                "in": where if where in _LOCATIONS else "body",
                "message": validation_message(err),
                "code": str(err.get("type", "invalid")),
            }
        )
    return out


def install_error_handlers(app: FastAPI) -> None:
    """Map every error, including framework ones and unexpected ones, to problem+json."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            exc.status,
            exc.type,
            exc.title,
            exc.detail,
            instance=request.url.path,
            headers=exc.headers,
            **exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(exc)
        content_type = request.headers.get("content-type", "")
        if (
            any(e["in"] == "body" for e in errors)
            and request.headers.get("content-length", "0") != "0"
            and not _is_json(content_type)
        ):
            return problem_response(
                415,
                "unsupported-media-type",
                "Unsupported media type",
                f"This operation takes application/json, not {content_type or 'an untyped body'}.",
                instance=request.url.path,
            )
        if any(e["code"] == "json_invalid" for e in errors):
            return problem_response(
                400,
                "malformed-json",
                "Malformed JSON",
                "The request body is not valid JSON.",
                instance=request.url.path,
            )
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return problem_response(
            422,
            "validation-error",
            "Validation failed",
            detail or "Validation failed",
            instance=request.url.path,
            errors=_jsonable(errors),
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_, title = _STATUS_TYPES.get(exc.status_code, ("http-error", "HTTP error"))
        detail = exc.detail if isinstance(exc.detail, str) else title
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"No resource at {request.url.path}."
        if exc.status_code == 400 and detail == "There was an error parsing the body":
            if isinstance(exc.__cause__, ClientDisconnect):
                return _incomplete_body(request)
            # FastAPI's answer to bodies its JSON parser chokes on (bad UTF-8, absurd nesting).
            type_, title = "malformed-json", "Malformed JSON"
            detail = "The request body is not valid JSON."
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}."
        return problem_response(
            exc.status_code,
            type_,
            title,
            detail,
            instance=request.url.path,
            headers=dict(exc.headers or {}),
        )

    @app.exception_handler(TimestampOutOfRange)
    async def _out_of_range(request: Request, exc: TimestampOutOfRange) -> JSONResponse:
        return _timestamp_problem(request, exc)

    @app.exception_handler(StatementError)
    async def _statement(request: Request, exc: StatementError) -> JSONResponse:
        # A value the database layer refused while binding it (an instant UTC cannot hold).
        if isinstance(exc.orig, TimestampOutOfRange):
            return _timestamp_problem(request, exc.orig)
        raise exc

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        return _incomplete_body(request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error", path=request.url.path, error=type(exc).__name__)
        return problem_response(
            500,
            "internal-error",
            "Internal server error",
            "An unexpected error occurred; it has been logged.",
            instance=request.url.path,
        )


def _incomplete_body(request: Request) -> JSONResponse:
    """400 for a body the client stopped sending (or the gateway cut at its limit) while it was
    being read: nothing was applied, and no one may be listening for the answer."""
    log.info("request_body_incomplete", path=request.url.path)
    return problem_response(
        400,
        "incomplete-body",
        "Incomplete request body",
        "The connection closed before the request body was complete; nothing was applied.",
        instance=request.url.path,
    )


def _timestamp_problem(request: Request, exc: TimestampOutOfRange) -> JSONResponse:
    """422 for an instant out of range that no field check caught (the field is not known)."""
    return problem_response(
        422,
        "validation-error",
        "Validation failed",
        f"A date or time {exc}.",
        instance=request.url.path,
        errors=[{"field": "body", "in": "body", "message": str(exc), "code": "value_error"}],
    )


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
