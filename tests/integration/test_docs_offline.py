"""The API explorer at /docs works offline: Swagger UI's files are served by the app itself."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from ecosistema.platform.app import create_app
from ecosistema.services import load_services
from tests.conftest import make_settings


@pytest.fixture
async def docs_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    # No lifespan: the page and its files need neither database nor bus.
    app = create_app(load_services(["catalog"]), make_settings("embedded", tmp_path))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
        yield client


async def test_docs_reference_no_external_host(docs_client: httpx.AsyncClient) -> None:
    page = await docs_client.get("/docs")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "swagger-ui-bundle.js" in html and "swagger-ui.css" in html
    assert re.findall(r"https?://", html) == []
    # The public validator's badge would be an external request too.
    assert '"validatorUrl": null' in html


async def test_the_assets_the_docs_page_names_are_served(docs_client: httpx.AsyncClient) -> None:
    html = (await docs_client.get("/docs")).text
    assets = re.findall(r'(?:src|href)="(/[^"]+)"', html)
    assert sorted(Path(a).name for a in assets) == [
        "favicon-32x32.png",
        "swagger-ui-bundle.js",
        "swagger-ui.css",
    ]
    for asset in assets:
        served = await docs_client.get(asset)
        assert served.status_code == 200, asset
        assert len(served.content) > 500, asset
    bundle = await docs_client.get("/docs/static/swagger-ui-bundle.js")
    assert "javascript" in bundle.headers["content-type"]
    assert b"SwaggerUIBundle" in bundle.content
    redirect = await docs_client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200
    assert re.findall(r"https?://", redirect.text) == []


async def test_only_the_vendored_files_are_served(docs_client: httpx.AsyncClient) -> None:
    assert (await docs_client.get("/docs/static/%2e%2e/%2e%2e/app.py")).status_code == 404
    assert (await docs_client.get("/docs/static/missing.js")).status_code == 404
