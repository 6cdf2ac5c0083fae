"""Logging: one JSON line per event on stdout, structlog and stdlib loggers alike."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from structlog.typing import EventDict, Processor

from ecosistema.platform.config import Settings
from ecosistema.platform.telemetry import request_id_var, trace_id_var

# Loggers that install their own handlers; their records go through ours instead.
_ROUTED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "sqlalchemy", "alembic")


def add_request_context(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """Stamp the request id and trace id of the request being served on every log event."""
    request_id = request_id_var.get()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    trace_id = trace_id_var.get()
    if trace_id is not None:
        event_dict.setdefault("trace_id", trace_id)
    return event_dict


def _drop_color_message(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # uvicorn duplicates its message with ANSI colours under this key.
    event_dict.pop("color_message", None)
    return event_dict


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stdout`` is at emit time, so redirections are honoured."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def shared_processors() -> list[Processor]:
    """The processors every line passes through, whichever logger emitted it."""
    return [
        structlog.contextvars.merge_contextvars,
        add_request_context,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        _drop_color_message,
        structlog.processors.StackInfoRenderer(),
    ]


def configure_logging(settings: Settings) -> None:
    """Send structlog and stdlib logs to stdout as JSON lines (or coloured text when not JSON).

    Calling it again replaces the previous configuration rather than adding a second handler.
    """
    level = logging.getLevelName(settings.log_level.upper())
    if not isinstance(level, int):
        level = logging.INFO
    shared = shared_processors()
    renderer: Processor
    if settings.log_json:
        renderer = structlog.processors.JSONRenderer()
        final: list[Processor] = [structlog.processors.format_exc_info, renderer]
    else:
        renderer = structlog.dev.ConsoleRenderer()
        final = [renderer]

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )

    handler = _StdoutHandler()
    handler.set_name("ecosistema")
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
        )
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == "ecosistema":
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)

    for name in _ROUTED_LOGGERS:
        routed = logging.getLogger(name)
        routed.handlers.clear()
        routed.propagate = True
    # The HTTP edge writes its own access line with the route template and ids.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    sqlalchemy_level = logging.INFO if settings.database_echo else logging.WARNING
    logging.getLogger("sqlalchemy.engine").setLevel(sqlalchemy_level)
    # Alembic narrates every migration context at INFO; only its warnings matter to an operator.
    alembic_level = logging.DEBUG if settings.log_level.upper() == "DEBUG" else logging.WARNING
    logging.getLogger("alembic").setLevel(alembic_level)
