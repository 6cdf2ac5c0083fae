"""Property-based fuzzing of the whole API from its own OpenAPI document.

Every operation of every hosted service gets generated requests, valid and invalid alike; no
response may be a 5xx, and every response must match its documented status codes, media types
and schemas. The app runs in the embedded shape, its lifespan started by schemathesis on the
first request (on schemathesis's own event loop thread) and stopped when this module is done.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.python import asgi

from ecosistema.platform.app import create_app
from ecosistema.services import load_services
from tests.conftest import make_settings
from tests.default_model import DefaultModelCache

# Bounded so the whole run stays near a minute on two shared cores.
MAX_EXAMPLES = 25


@schemathesis.check
def problem_details_for_every_error(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case[Any]
) -> bool | None:
    """Every 4xx and 5xx is RFC 9457 problem+json whose ``status`` is the response's."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/problem+json"), (
        f"{response.status_code} answered as {content_type!r}, not application/problem+json"
    )
    body = response.json()
    assert isinstance(body, dict), "a problem is a JSON object"
    missing = {"type", "title", "status", "detail"} - set(body)
    assert not missing, f"problem lacks {sorted(missing)}"
    assert body["status"] == response.status_code, "problem status differs from the response's"
    return True


CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    problem_details_for_every_error,
]

# The schema is read from the app itself rather than over HTTP, so building it starts nothing;
# schemathesis's lazy fixture loading does not work with this pytest version.
DATA_DIR = Path(tempfile.mkdtemp(prefix="ecosistema-fuzz-"))
APP_SETTINGS = make_settings("embedded", DATA_DIR)
app = create_app(load_services(), APP_SETTINGS)
schema = schemathesis.openapi.from_dict(app.openapi())
schema.app = app


@pytest.fixture(scope="module", autouse=True)
def running_app(default_model_cache: DefaultModelCache) -> Iterator[None]:
    default_model_cache.seed(APP_SETTINGS)  # before the first call starts the app
    yield
    try:
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
def test_no_input_breaks_the_api_contract(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(checks=CHECKS)


def test_every_operation_documents_the_problems_it_can_answer() -> None:
    # An unknown query parameter is a 422 everywhere, so every operation says so.
    for path, item in app.openapi()["paths"].items():
        for method, operation in item.items():
            problem = operation["responses"].get("422", {}).get("content", {})
            assert "application/problem+json" in problem, (method, path)
