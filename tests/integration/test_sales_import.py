"""CSV import of leads on both shapes: a per-line report, scoring in batches, and bad input
(unknown columns, wrong types, empty files, binary garbage, oversized bodies) refused with a
clear problem and nothing written."""

from __future__ import annotations

import os

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select

from ecosistema.sales.models import leads
from tests.integration.test_sales_support import API, app, bearer, sales_ctx, settings, users

__all__ = ["app", "settings"]

GOOD = (
    "name,email,phone,company,source,channel,campaign,message,age,job,attr.segment\n"
    "Ana García,ana@example.com,,Solaris,web,mobile,spring,Call me,35,admin.,smb\n"
    'Luis Pérez,luis@example.com,+34 600 111 222,,event,landline,spring,"Hi, quote?",61,retired,\n'
    "\n"
    "Sara Díaz,,+34 600 333 444,Brisa,referral,mobile,fair,,28,student,enterprise\n"
)


async def lead_count(app: FastAPI) -> int:
    async with sales_ctx(app).db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(leads)) or 0)


async def post_csv(
    client: httpx.AsyncClient, who: dict[str, str], body: bytes | str, **params: str
) -> httpx.Response:
    return await client.post(
        f"{API}/leads/import",
        content=body.encode() if isinstance(body, str) else body,
        params=params,
        headers={**bearer(who), "Content-Type": "text/csv"},
    )


async def test_import_scores_every_row_and_reports_the_created_leads(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    response = await post_csv(client, people["sales"], GOOD)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["applied"] and report["rows_read"] == 3 and report["created"] == 3
    assert report["scored"] == 3 and report["model_version"] == "v1" and report["errors"] == []
    first = await client.get(
        f"{API}/leads/{report['lead_ids'][0]}", headers=bearer(people["sales"])
    )
    lead = first.json()
    assert lead["attributes"] == {"age": 35, "job": "admin.", "segment": "smb"}
    assert lead["owner_id"] == people["sales"]["id"] and lead["factors"]


async def test_multipart_upload_imports_the_file_part(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    response = await client.post(
        f"{API}/leads/import",
        data={"note": "ignored"},
        files={"file": ("leads.csv", GOOD.encode(), "text/csv")},
        headers=bearer(people["sales"]),
    )
    assert response.status_code == 200, response.text
    assert response.json()["created"] == 3 and await lead_count(app) == 3


async def test_bad_rows_are_reported_by_line_and_nothing_is_written(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    body = (
        "name,email,age,job\n"
        "Good One,good@example.com,40,admin.\n"
        "Bad Age,bad@example.com,forty,admin.\n"
        ",nameless@example.com,30,admin.\n"
        "Too Old,old@example.com,300,admin.\n"
        "No Contact,,30,admin.\n"
        "Extra,x@example.com,30,admin.,surplus\n"
    )
    response = await post_csv(client, people["sales"], body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["type"].endswith("/import-rejected")
    lines = {e["line"]: e["message"] for e in problem["errors"]}
    assert sorted(lines) == [3, 4, 5, 6, 7]
    assert "age must be a number" in lines[3] and "between 16 and 110" in lines[5]
    assert "email or a phone" in lines[6] and "fields" in lines[7]
    assert problem["report"]["applied"] is False and await lead_count(app) == 0

    partial = await post_csv(client, people["sales"], body, mode="skip-invalid")
    assert partial.status_code == 200 and partial.json()["created"] == 1
    assert len(partial.json()["errors"]) == 5 and await lead_count(app) == 1


async def test_unreadable_files_are_refused_before_any_row(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    sales = people["sales"]
    cases: list[tuple[bytes | str, int, str]] = [
        ("name,email,favourite_colour\nAna,a@example.com,red\n", 422, "unknown columns"),
        ("", 422, "empty"),
        ("name,email\n", 422, "no leads"),
        ("email,phone\na@example.com,\n", 422, "name column"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(2000), 422, "binary"),
        (b"name,email\n\xff\xfe\xfa garbage\n" + b"\xc3" * 10, 422, "UTF-8"),
    ]
    for body, status, words in cases:
        response = await post_csv(client, sales, body)
        assert response.status_code == status, (body[:40], response.text)
        assert words in response.json()["detail"], response.json()
        assert response.headers["content-type"].startswith("application/problem+json")
    garbage = os.urandom(10 * 1024 * 1024)
    too_big = await post_csv(client, sales, garbage)
    assert too_big.status_code == 413
    assert too_big.headers["content-type"].startswith("application/problem+json")
    wrong_type = await client.post(
        f"{API}/leads/import",
        content=b"{}",
        headers={**bearer(sales), "Content-Type": "application/json"},
    )
    assert wrong_type.status_code == 400
    no_file = await client.post(
        f"{API}/leads/import", data={"note": "no file here"}, files={}, headers=bearer(sales)
    )
    assert no_file.status_code in (400, 422)
    customer = await post_csv(client, people["customer"], GOOD)
    assert customer.status_code == 403
    assert await lead_count(app) == 0
