"""Webhook subscriptions on both shapes: who may manage them, what a subscription may ask for
and point at, and how it is changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ecosistema.platform.app import create_app
from ecosistema.platform.config import Settings
from tests.conftest import drop_test_schemas
from tests.integration.test_identity_support import API, bearer, fast_settings, signed_in
from tests.integration.test_orders_support import customer, staff_tokens
from tests.integration.test_webhooks_support import (
    WEBHOOK_TEST_SETTINGS,
    Receiver,
    app,
    receiver,
    services,
    settings,
    subscribe,
)

__all__ = ["app", "receiver", "settings"]

ENDPOINTS = [
    ("GET", "/webhook-event-types"),
    ("GET", "/webhook-subscriptions"),
    ("POST", "/webhook-subscriptions"),
    ("GET", "/webhook-subscriptions/{id}"),
    ("PATCH", "/webhook-subscriptions/{id}"),
    ("DELETE", "/webhook-subscriptions/{id}"),
    ("POST", "/webhook-subscriptions/{id}/rotate-secret"),
    ("POST", "/webhook-subscriptions/{id}/test"),
    ("GET", "/webhook-deliveries"),
    ("GET", "/webhook-deliveries/{id}"),
    ("POST", "/webhook-deliveries/{id}/replay"),
]


async def _call(
    client: httpx.AsyncClient, method: str, path: str, sub_id: str, headers: dict[str, str]
) -> httpx.Response:
    body: dict[str, Any] | None = None
    if method == "POST" and path == "/webhook-subscriptions":
        body = {"url": "http://127.0.0.1:9/x", "event_types": ["*"]}
    elif method == "PATCH":
        body = {"description": "x"}
    return await client.request(method, API + path.format(id=sub_id), json=body, headers=headers)


async def test_anonymous_callers_get_401_and_customers_and_sales_get_403(
    app: FastAPI, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    admin = await staff_tokens(app, client)
    sub = await subscribe(client, admin, receiver.url, ["*"])
    shopper = await customer(client, "shopper")
    seller = await customer(client, "seller")
    promoted = await client.patch(
        f"{API}/users/{seller['id']}", json={"role": "sales"}, headers=bearer(admin)
    )
    assert promoted.status_code == 200, promoted.text
    seller = await signed_in(client, seller["email"])
    for method, path in ENDPOINTS:
        anonymous = await _call(client, method, path, sub["id"], {})
        assert anonymous.status_code == 401, (method, path, anonymous.text)
        assert anonymous.headers["content-type"].startswith("application/problem+json")
        for who in (shopper, seller):
            refused = await _call(client, method, path, sub["id"], bearer(who))
            assert refused.status_code == 403, (method, path, refused.text)
    assert receiver.requests == []  # nobody without the right could trigger a test ping


async def test_staff_manage_subscriptions(
    app: FastAPI, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    admin = await staff_tokens(app, client)
    worker = await customer(client, "worker")
    staffed = await client.patch(
        f"{API}/users/{worker['id']}", json={"role": "staff"}, headers=bearer(admin)
    )
    assert staffed.status_code == 200, staffed.text
    staff = await signed_in(client, worker["email"])
    sub = await subscribe(client, staff, receiver.url, ["order.paid", "order.paid", "stock.low"])
    assert sub["event_types"] == ["order.paid", "stock.low"]
    assert sub["status"] == "enabled"
    listed = await client.get(f"{API}/webhook-subscriptions", headers=bearer(staff))
    assert [s["id"] for s in listed.json()["items"]] == [sub["id"]]
    changed = await client.patch(
        f"{API}/webhook-subscriptions/{sub['id']}",
        json={"event_types": ["*"], "description": "ERP", "status": "disabled"},
        headers=bearer(staff),
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["event_types"] == ["*"] and changed.json()["description"] == "ERP"
    assert changed.json()["status"] == "disabled" and changed.json()["disabled_reason"]
    disabled = await client.get(
        f"{API}/webhook-subscriptions", params={"status": "disabled"}, headers=bearer(staff)
    )
    assert [s["id"] for s in disabled.json()["items"]] == [sub["id"]]
    types = await client.get(f"{API}/webhook-event-types", headers=bearer(staff))
    assert "order.paid" in types.json()["event_types"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "http://127.0.0.1/x", "event_types": ["order.payed"]}, "event_types"),
        ({"url": "http://127.0.0.1/x", "event_types": []}, "event_types"),
        ({"url": "ftp://example.com/x", "event_types": ["*"]}, "url"),
        ({"url": "example.com/x", "event_types": ["*"]}, "url"),
        ({"url": "https://user:pw@example.com/x", "event_types": ["*"]}, "url"),
        ({"url": "http:///x", "event_types": ["*"]}, "url"),
        ({"url": "http://127.0.0.1/x", "event_types": ["*"], "secret": "mine"}, "secret"),
    ],
)
async def test_bad_subscriptions_get_422_naming_the_field(
    app: FastAPI, client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    admin = await staff_tokens(app, client)
    response = await client.post(f"{API}/webhook-subscriptions", json=body, headers=bearer(admin))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in response.json()["errors"]] == [field]


@pytest.mark.parametrize("field", ["url", "event_types", "description", "status"])
async def test_null_in_a_change_is_refused_and_changes_nothing(
    app: FastAPI, client: httpx.AsyncClient, receiver: Receiver, field: str
) -> None:
    admin = await staff_tokens(app, client)
    sub = await subscribe(client, admin, receiver.url, ["order.paid"])
    before = await client.get(f"{API}/webhook-subscriptions/{sub['id']}", headers=bearer(admin))
    response = await client.patch(
        f"{API}/webhook-subscriptions/{sub['id']}",
        json={field: None, "description": "changed"} if field != "description" else {field: None},
        headers=bearer(admin),
    )
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [field]
    after = await client.get(f"{API}/webhook-subscriptions/{sub['id']}", headers=bearer(admin))
    assert after.json() == before.json()


async def test_unknown_event_types_are_named_in_the_error(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    response = await client.post(
        f"{API}/webhook-subscriptions",
        json={"url": "https://example.com/x", "event_types": ["order.paid", "order.shipped"]},
        headers=bearer(admin),
    )
    assert response.status_code == 422
    assert "'order.shipped'" in response.json()["detail"]
    patched = await client.patch(
        f"{API}/webhook-subscriptions/whatever",
        json={"event_types": ["nope"]},
        headers=bearer(admin),
    )
    assert patched.status_code == 422
    assert patched.json()["errors"][0]["field"] == "event_types"


@pytest.fixture
def private_refused(shape: str, tmp_path: Path) -> Settings:
    return fast_settings(
        shape, tmp_path, webhooks_allow_private_targets=False, **WEBHOOK_TEST_SETTINGS
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/x",
        "http://localhost/x",
        "http://10.1.2.3/x",
        "http://192.168.0.10/x",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://0.0.0.0/x",
    ],
)
async def test_private_targets_are_refused_when_not_allowed(
    private_refused: Settings, url: str
) -> None:
    application = create_app(services("identity", "webhooks"), private_refused)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            admin = await staff_tokens(application, client)
            response = await client.post(
                f"{API}/webhook-subscriptions",
                json={"url": url, "event_types": ["*"]},
                headers=bearer(admin),
            )
            assert response.status_code == 422, response.text
            [error] = response.json()["errors"]
            assert error["field"] == "url" and error["code"] == "target_not_allowed"
    await drop_test_schemas(private_refused)


async def test_missing_subscriptions_and_deliveries_are_404(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    for method, path in ENDPOINTS:
        if "{id}" not in path:
            continue
        response = await _call(client, method, path, "0" * 32, bearer(admin))
        assert response.status_code == 404, (method, path, response.text)


async def test_hostile_input_is_422_never_a_server_error(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    nul = await client.post(
        f"{API}/webhook-subscriptions",
        json={"url": "https://example.com/x", "event_types": ["*"], "description": "a\x00b"},
        headers=bearer(admin),
    )
    assert nul.status_code == 422 and nul.json()["errors"][0]["field"] == "description"
    for params in (
        {"event_type": "order.paid\x00"},
        {"subscription_id": "a\x00"},
        {"event_id": "'; drop table x"},
        {"cursor": "eyJ4IjoxfQ"},
        {"limit": 1000},
        {"status": "sent"},
    ):
        response = await client.get(
            f"{API}/webhook-deliveries", params=params, headers=bearer(admin)
        )
        assert response.status_code == 422, (params, response.text)
    path = await client.get(f"{API}/webhook-deliveries/a%00b", headers=bearer(admin))
    assert path.status_code == 422
    rotation = await client.post(
        f"{API}/webhook-subscriptions/{'0' * 32}/rotate-secret",
        json={"expire_previous_in_seconds": -1},
        headers=bearer(admin),
    )
    assert rotation.status_code == 422
