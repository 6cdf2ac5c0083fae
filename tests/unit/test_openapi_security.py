"""The OpenAPI document's security requirements: operations anonymous callers may call (a guest
with a cart token, a shopper browsing) offer the empty requirement, so generated clients may call
them without credentials; the others require credentials."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from ecosistema.platform.app import API_PREFIX
from ecosistema.services import load_services

GUEST_OPERATIONS_WITH_CART_TOKEN = [
    ("get", "/carts/{cart_id}"),
    ("post", "/orders"),
    ("get", "/orders/{order_id}"),
    ("post", "/orders/{order_id}/cancel"),
    ("post", "/payments"),
    ("get", "/payments/{payment_id}"),
    ("post", "/payments/{payment_id}/confirm"),
    ("post", "/payments/{payment_id}/cancel"),
]


def _spec() -> dict[str, Any]:
    app = FastAPI()
    for service in load_services():
        if service.router is not None:
            app.include_router(service.router, prefix=API_PREFIX)
        if service.root_router is not None:
            app.include_router(service.root_router)
    return app.openapi()


def test_operations_guests_may_call_make_credentials_optional_and_take_the_cart_token() -> None:
    paths = _spec()["paths"]
    for method, path in [*GUEST_OPERATIONS_WITH_CART_TOKEN, ("post", "/carts")]:
        operation = paths[API_PREFIX + path][method]
        assert operation["security"] == [{"AccessToken": []}, {"ApiKey": []}, {}], (method, path)
    for method, path in GUEST_OPERATIONS_WITH_CART_TOKEN:
        headers = {
            p["name"] for p in paths[API_PREFIX + path][method]["parameters"] if p["in"] == "header"
        }
        assert "X-Cart-Token" in headers, (method, path)


def test_operations_that_need_credentials_do_not_offer_the_empty_requirement() -> None:
    paths = _spec()["paths"]
    for method, path in [
        ("post", "/products"),
        ("post", "/orders/{order_id}/ship"),
        ("post", "/payments/{payment_id}/capture"),
        ("get", "/reports/sales"),
    ]:
        security = paths[API_PREFIX + path][method]["security"]
        assert security and {} not in security, (method, path)
    anonymous = [
        (method, path)
        for path, item in paths.items()
        for method, operation in item.items()
        if {} in operation.get("security", [])
    ]
    # Every anonymous operation still names the credentials it reads, once each.
    for method, path in anonymous:
        security = paths[path][method]["security"]
        assert security.count({}) == 1 and len(security) > 1, (method, path)
