"""Lead CSV rows the reader cannot take as they stand are refused on their own line, on both
shapes: a quote left open (which would swallow the rows after it), text after a closing quote,
bytes that are not UTF-8 past the start of the file. The rows around them keep their lines."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from tests.integration.test_sales_import import lead_count, post_csv
from tests.integration.test_sales_support import API, app, bearer, settings, users

__all__ = ["app", "settings"]


async def test_a_lead_row_whose_quote_is_never_closed_is_refused_and_swallows_no_row(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    sales = (await users(app, client))["sales"]
    body = (
        "name,email,message\n"
        "Ana,ana@example.com,Hello\n"
        'Luis,luis@example.com,"Call me\n'
        "Sara,sara@example.com,Hi\n"
    )

    rejected = await post_csv(client, sales, body)
    written_when_rejected = await lead_count(app)
    skipped = await post_csv(client, sales, body, mode="skip-invalid")

    assert rejected.status_code == 422, rejected.text
    [error] = rejected.json()["errors"]
    assert (error["line"], error["field"], error["code"]) == (3, "body", "row")
    assert "never closed" in error["message"], error
    assert written_when_rejected == 0
    assert skipped.status_code == 200, skipped.text
    report = skipped.json()
    assert (report["rows_read"], report["created"]) == (2, 1)
    assert [e["line"] for e in report["errors"]] == [3]
    [lead_id] = report["lead_ids"]
    ana = await client.get(f"{API}/leads/{lead_id}", headers=bearer(sales))
    assert ana.json()["name"] == "Ana"


async def test_rows_after_an_unreadable_row_keep_their_own_line_numbers(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    sales = (await users(app, client))["sales"]
    body = (
        "name,email,message\n"
        'Ana,ana@example.com,"line one\nline two"\n'
        'Bad,bad@example.com,"hi"there\n'
        "Luis,luis@example.com,Hello\n"
        "No Contact,,Hello\n"
    )

    response = await post_csv(client, sales, body, mode="skip-invalid")

    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["rows_read"], report["created"]) == (4, 2)
    errors = {e["line"]: e for e in report["errors"]}
    assert sorted(errors) == [4, 6]
    assert errors[4]["field"] == "body" and "unreadable row" in errors[4]["message"]
    assert "email or a phone" in errors[6]["message"]


async def test_a_byte_that_is_not_utf8_past_the_start_refuses_its_row_only(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    sales = (await users(app, client))["sales"]
    filler = "x" * 500  # 149 rows of it fill more than the start checked up front
    rows = [f"Lead {i},lead{i}@example.com,{filler}\n".encode() for i in range(1, 201)]
    rows[149] = f"Lead 150,lead150@example.com,{filler}\xff\n".encode("latin-1")
    rows[150] = b'Lead 151,lead151@example.com,"two\nlines"\n'
    rows[151] = b"No Contact,,hello\n"
    body = b"name,email,message\n" + b"".join(rows)

    rejected = await post_csv(client, sales, body)
    skipped = await post_csv(client, sales, body, mode="skip-invalid")

    assert rejected.status_code == 422, rejected.text
    assert [e["line"] for e in rejected.json()["errors"]] == [151, 154]
    assert skipped.status_code == 200, skipped.text
    report = skipped.json()
    assert (report["rows_read"], report["created"]) == (200, 198)
    first, second = report["errors"]
    assert (first["line"], first["field"], first["code"]) == (151, "message", "encoding")
    assert "UTF-8" in first["message"]
    assert (second["line"], second["field"]) == (154, "body")
    assert await lead_count(app) == 198


async def test_a_quote_left_open_that_runs_past_the_cell_limit_refuses_its_row_only(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    sales = (await users(app, client))["sales"]
    body = (
        "name,email,message\n"
        'Luis,luis@example.com,"Call me\n' + "x" * 140_000 + "\n" + "Sara,sara@example.com,Hi\n"
    )

    response = await post_csv(client, sales, body, mode="skip-invalid")

    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["rows_read"], report["created"]) == (2, 1)
    [error] = report["errors"]
    assert (error["line"], error["field"]) == (2, "body")
    assert "longer than 131072 characters" in error["message"], error
    assert 'closing " is missing' in error["message"], error


async def test_a_header_that_is_not_utf8_past_the_start_is_refused(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    sales = (await users(app, client))["sales"]
    header = b"name,email," + b" " * 70_000 + b"\xff\n"

    response = await post_csv(client, sales, header + b"Ana,ana@example.com,\n")

    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "not UTF-8" in response.json()["detail"]
    assert await lead_count(app) == 0
