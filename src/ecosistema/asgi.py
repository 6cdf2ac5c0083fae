"""ASGI entry points for servers: ``uvicorn --factory ecosistema.asgi:embedded_app``."""

from __future__ import annotations

import os

from fastapi import FastAPI

from ecosistema.platform.app import create_app
from ecosistema.platform.config import get_settings
from ecosistema.services import load_services


def embedded_app() -> FastAPI:
    """Every service in one process: what ``ecosistema up`` serves behind the gateway, and what
    any ASGI server can serve on its own."""
    return create_app(load_services(), get_settings())


def single_service_app() -> FastAPI:
    """The one service named by ECOSISTEMA_SERVE_SERVICE (``ecosistema serve``)."""
    name = os.environ["ECOSISTEMA_SERVE_SERVICE"]
    return create_app(load_services([name]), get_settings(), title=f"Ecosistema {name}")
