"""Incremental sync through the gateway, on both shapes: anonymous pages of
``GET /products?updated_since=...`` are kept by the gateway's response cache under their full
query, and catalog's events purge them, so a product changed after a page was cached shows up in
it; a PATCH that changes nothing purges nothing."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
from sqlalchemy import func, select

from tests.e2e.test_gateway_embedded import (
    API,
    _eventually_served,
    edge,  # noqa: F401 - a fixture
    login,
    settings,  # noqa: F401 - a fixture
)


def _since(moment: str) -> str:
    return f"{API}/products?updated_since={quote(moment)}&sort=updated_at"


def _ids(response: httpx.Response) -> list[str]:
    return [p["id"] for p in response.json()["items"]]


async def _outbox_size(app: Any) -> int:
    ctx = app.state.runtime.contexts["catalog"]
    async with ctx.db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(ctx.outbox.table)))


async def test_cached_pages_of_changes_show_later_changes_and_no_op_patches_keep_them(
    edge: tuple[Any, httpx.AsyncClient],  # noqa: F811 - the fixture
) -> None:
    app, client = edge
    staff = await login(app, client, "staff")

    async def create(name: str, sku: str) -> dict[str, Any]:
        answer = await client.post(
            f"{API}/products",
            json={
                "name": name,
                "status": "active",
                "variants": [{"sku": sku, "prices": [{"currency": "EUR", "amount": 1500}]}],
            },
            headers=staff,
        )
        assert answer.status_code == 201, answer.text
        product: dict[str, Any] = answer.json()
        return product

    first = await create("Sync Lamp", "SYNC-LAMP")
    from_first = _since(first["updated_at"])
    cold = await client.get(from_first)
    warm = await client.get(from_first)
    assert (cold.headers["x-cache"], warm.headers["x-cache"]) == ("MISS", "HIT")
    assert _ids(warm) == [first["id"]]

    # A product created after the page was cached: its event purges the page.
    second = await create("Sync Shade", "SYNC-SHADE")
    await _eventually_served(
        client, from_first, lambda r: _ids(r) == [first["id"], second["id"]], "the new product"
    )
    # Another instant is another entry: a page of no changes yet, cached beside the first.
    after_second = datetime.fromisoformat(second["updated_at"]) + timedelta(microseconds=1)
    from_later = _since(after_second.isoformat())
    assert _ids(await client.get(from_later)) == []
    assert (await client.get(from_later)).headers["x-cache"] == "HIT"
    assert len(_ids(await client.get(from_first))) == 2

    # A PATCH that changes nothing publishes nothing: both pages stay cached.
    events = await _outbox_size(app)
    same = await client.patch(
        f"{API}/products/{first['id']}", json={"name": "Sync Lamp"}, headers=staff
    )
    assert same.status_code == 200, same.text
    assert await _outbox_size(app) == events
    for url in (from_first, from_later):
        assert (await client.get(url)).headers["x-cache"] == "HIT"

    # A new price is a change of the product: it shows in the later page once purged.
    variant_url = f"{API}/products/{first['id']}/variants/{first['variants'][0]['id']}"
    repriced = await client.patch(
        variant_url, json={"prices": [{"currency": "EUR", "amount": 1700}]}, headers=staff
    )
    assert repriced.status_code == 200, repriced.text
    await _eventually_served(client, from_later, lambda r: _ids(r) == [first["id"]], "the price")
    await _eventually_served(
        client, from_first, lambda r: _ids(r) == [second["id"], first["id"]], "the new order"
    )
