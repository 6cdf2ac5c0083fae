"""Property-based fuzzing of the webhook operations as an administrator, so generated input gets
past authentication and reaches validation and the use cases: no 5xx, every answer as
documented. (The whole-API fuzz runs anonymously and mostly meets 401s here.)"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.python import asgi

from ecosistema.identity import create_admin
from ecosistema.platform.app import create_app
from ecosistema.platform.config import Settings
from ecosistema.services import load_services
from tests.conftest import make_settings
from tests.e2e.test_openapi_fuzz import CHECKS

MAX_EXAMPLES = 25
NAMES = ("identity", "webhooks")
DATA_DIR = Path(tempfile.mkdtemp(prefix="ecosistema-webhooks-fuzz-"))
SETTINGS = make_settings(
    "embedded",
    DATA_DIR,
    password_hash_memory_kib=64,
    password_hash_time_cost=1,
    webhooks_dispatch_interval_seconds=3600.0,
)


async def _admin_token(settings: Settings) -> str:
    """An administrator's access token, made by a first run over the same data directory."""
    app = create_app(load_services(NAMES), settings)
    async with app.router.lifespan_context(app):
        email, password = "fuzz-admin@example.com", "a fuzzing passphrase"
        await create_admin(app.state.runtime.contexts["identity"], email=email, password=password)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post(
                "/api/v1/auth/login", json={"email": email, "password": password}
            )
            response.raise_for_status()
            return str(response.json()["access_token"])


app = create_app(load_services(NAMES), SETTINGS)
schema = schemathesis.openapi.from_dict(app.openapi()).include(path_regex="webhook")
schema.app = app


@pytest.fixture(scope="module")
def admin_token() -> Iterator[str]:
    """An administrator's token, made before the first call starts the fuzzed app (only in the
    test process that runs this module), and the app stopped when the module is done."""
    try:
        yield asyncio.run(_admin_token(SETTINGS))
        asgi.shutdown_lifespans()
    finally:
        shutil.rmtree(DATA_DIR, ignore_errors=True)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_input_from_an_administrator_breaks_the_webhooks_contract(
    case: schemathesis.Case[Any], admin_token: str
) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {admin_token}"}, checks=CHECKS)
