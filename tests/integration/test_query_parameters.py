"""A query parameter an operation does not declare is refused with a 422 naming it, instead of
being silently ignored (a misspelt filter would otherwise answer as if it had not been given)."""

from __future__ import annotations

import httpx

API = "/api/v1"


async def test_an_unknown_query_parameter_is_refused_and_named(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{API}/products", params={"limit": 5, "colour": "red"})
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"].endswith("/validation-error")
    [error] = problem["errors"]
    assert error["field"] == "colour"
    assert error["in"] == "query"
    assert error["code"] == "unknown_parameter"
    assert "option" in error["message"]  # it lists what the operation takes


async def test_every_unknown_parameter_is_named_once(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{API}/products?a=1&b=2&a=3&limit=2")
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["a", "b"]


async def test_declared_parameters_aliases_and_repeats_are_accepted(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get(
        f"{API}/products?option=colour:red&option=size:m&sort=newest&limit=3&in_stock=true"
    )
    assert response.status_code == 200
    # `status` is the alias of a parameter named otherwise in the code: the operation reads it
    # (and refuses it to a shopper for its own reason).
    statuses = await client.get(f"{API}/products?status=draft")
    assert [e["code"] for e in statuses.json().get("errors", [])] != ["unknown_parameter"]
    assert "staff" in statuses.json()["detail"]


async def test_an_operation_without_query_parameters_takes_none(client: httpx.AsyncClient) -> None:
    missing = await client.get(f"{API}/products/no-such-product")
    assert missing.status_code == 404
    # The storefront's fast read of a product must not skip the check either.
    response = await client.get(f"{API}/products/no-such-product?expand=variants")
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "expand"
    assert "takes none" in response.json()["errors"][0]["message"]
    head = await client.head(f"{API}/products/no-such-product?expand=variants")
    assert head.status_code == 422


async def test_pages_outside_the_api_keep_their_parameters(client: httpx.AsyncClient) -> None:
    # The OAuth2 redirect page of the interactive docs receives the provider's parameters.
    response = await client.get("/docs/oauth2-redirect?code=abc&state=xyz")
    assert response.status_code == 200
