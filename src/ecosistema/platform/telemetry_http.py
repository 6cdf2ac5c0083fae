"""HTTP telemetry wiring (request ids, access logs, metrics, traces) for an app."""

from __future__ import annotations

from fastapi import FastAPI

from ecosistema.platform.config import Settings


def install(app: FastAPI, settings: Settings) -> None:
    """Attach request context, logging, metrics and tracing to ``app``."""
    return None
