"""CSV imports whose header or quoting would make the result a guess are refused, on both
shapes: one currency priced by two columns, a quote left open, text after a closing quote."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from tests.integration.test_catalog_support import (
    API,
    settings_fixture,  # noqa: F401 - a fixture
    shop_app_fixture,  # noqa: F401 - a fixture
    shop_fixture,  # noqa: F401 - a fixture
    sign_in_demo,
)

CSV = {"Content-Type": "text/csv"}
SKIP = {"mode": "skip-invalid"}


async def test_a_csv_header_pricing_one_currency_twice_is_refused_whatever_the_case(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = {**await sign_in_demo(shop_app, shop, "staff"), **CSV}
    body = "slug,name,status,sku,price_EUR,price_eur\ncase-twice,Twice,active,TW-1,100,200\n"
    answers = [
        await shop.post(f"{API}/products/import", params=params, content=body, headers=staff)
        for params in ({}, SKIP)
    ]
    listed = await shop.get(f"{API}/products", params={"status": "active"}, headers=staff)

    for answer in answers:
        assert answer.status_code == 422, answer.text
        [error] = answer.json()["errors"]
        assert error["field"] == "body"
        assert "'price_EUR' and 'price_eur'" in error["message"], error
    assert listed.json()["items"] == []


async def test_a_csv_row_whose_quote_is_never_closed_is_refused_with_its_line(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = {**await sign_in_demo(shop_app, shop, "staff"), **CSV}
    header = "slug,name,status,sku,variant_name,price_EUR\n"
    good = "good-1,Good,active,G-1,a,100\n"
    open_quote = 'q-fd82e,"unterminated,active,Q-fd82e,a,100\n'
    skipped = await shop.post(
        f"{API}/products/import", params=SKIP, content=header + good + open_quote, headers=staff
    )
    rejected = await shop.post(f"{API}/products/import", content=header + open_quote, headers=staff)
    after_quote = await shop.post(
        f"{API}/products/import",
        params=SKIP,
        content=header + 'bad-1,"Bad"x,active,B-1,a,100\n' + "next-1,Next,active,N-1,a,100\n",
        headers=staff,
    )
    multi_line = await shop.post(
        f"{API}/products/import",
        content='slug,name,description\nml-1,Multi,"line one\nline two"\n',
        headers=staff,
    )

    assert skipped.status_code == 200, skipped.text
    report = skipped.json()
    assert (report["products_created"], report["rows_read"]) == (1, 2)
    [error] = report["errors"]
    assert error["line"] == 3
    assert [p["field"] for p in error["problems"]] == [None]
    assert "never closed" in error["reason"]
    assert rejected.status_code == 422, rejected.text
    assert [e["line"] for e in rejected.json()["errors"]] == [2]
    assert after_quote.status_code == 200, after_quote.text
    assert [e["line"] for e in after_quote.json()["errors"]] == [2]
    assert "text follows a closing" in after_quote.json()["errors"][0]["reason"]
    assert after_quote.json()["products_created"] == 1
    assert multi_line.status_code == 200, multi_line.text
    assert (multi_line.json()["products_created"], multi_line.json()["errors"]) == (1, [])


async def test_a_row_that_is_not_utf8_is_refused_alone_wherever_it_falls(
    shop_app: FastAPI, shop: httpx.AsyncClient
) -> None:
    staff = {**await sign_in_demo(shop_app, shop, "staff"), **CSV}
    header = b"slug,name,status,sku,price_EUR\r\n"

    def good(n: int) -> bytes:
        return b"nu-%d,Row %d,active,NU-%d,100\r\n" % (n, n, n)

    # The bad row well past the first 8 KiB, with good rows after it; and a bad second line.
    far = header + b"".join(good(n) for n in range(2, 300)) + b"nu-bad,B\xe9ad,active,NU-B,1\r\n"
    far += b"".join(good(n) for n in range(301, 900))
    near = header + b"nu-x,B\xe9ad,active,NU-X,1\r\n" + good(1000)
    answers = [
        await shop.post(f"{API}/products/import", params=SKIP, content=body, headers=staff)
        for body in (far, near)
    ]

    for answer, bad_line, rows in zip(answers, (300, 2), (898, 2), strict=True):
        assert answer.status_code == 200, answer.text
        report = answer.json()
        assert report["rows_read"] == rows
        assert report["products_created"] == rows - 1
        [error] = report["errors"]
        assert error["line"] == bad_line
        assert error["reason"].startswith("not UTF-8"), error
    listed = await shop.get(f"{API}/inventory/NU-899", headers=staff)
    assert listed.status_code == 200, listed.text
