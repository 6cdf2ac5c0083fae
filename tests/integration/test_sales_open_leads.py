"""One open lead per email holds under concurrent writers (SQLite and PostgreSQL): the database
index decides, the loser gets the same 409 ``lead-exists``, an import racing a create skips the
row as a duplicate, and the existing lead's id is named only to a caller who may read it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from ecosistema.sales import service
from ecosistema.sales.events import LEAD_CREATED
from ecosistema.sales.models import leads
from tests.integration.test_sales_import import post_csv
from tests.integration.test_sales_support import (
    API,
    another_sales_user,
    app,
    bearer,
    lead_body,
    sales_ctx,
    settings,
    users,
)

__all__ = ["app", "settings"]

RACERS = 12


async def _open_leads_with(app: FastAPI, email: str) -> list[str]:
    ctx = sales_ctx(app)
    async with ctx.db.read() as session:
        rows = await session.execute(
            select(leads.c.id).where(
                leads.c.email_index == service.email_index(ctx, email),
                leads.c.status.in_(["new", "contacted", "qualified"]),
            )
        )
        return [r.id for r in rows]


async def test_concurrent_creates_with_one_email_make_one_lead_and_409s(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    auth = bearer(people["sales"])
    body = lead_body(email="race@example.com")
    answers = await asyncio.gather(
        *(client.post(f"{API}/leads", json=body, headers=auth) for _ in range(RACERS))
    )
    created = [a for a in answers if a.status_code == 201]
    refused = [a for a in answers if a.status_code != 201]
    assert len(created) == 1, [a.text for a in answers]
    assert {a.status_code for a in refused} == {409}
    winner = created[0].json()["id"]
    for answer in refused:
        problem = answer.json()
        assert problem["type"].endswith("/lead-exists") and problem["lead_id"] == winner
        assert problem["errors"][0]["field"] == "email"
    assert await _open_leads_with(app, "race@example.com") == [winner]


async def test_concurrent_email_changes_to_one_address_leave_one_open_lead(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    auth = bearer(people["staff"])
    ids = []
    for _ in range(6):
        made = await client.post(f"{API}/leads", json=lead_body(), headers=auth)
        assert made.status_code == 201, made.text
        ids.append(made.json()["id"])
    answers = await asyncio.gather(
        *(
            client.patch(f"{API}/leads/{i}", json={"email": "Taken@Example.com"}, headers=auth)
            for i in ids
        )
    )
    assert sorted(a.status_code for a in answers) == [200] + [409] * 5, [a.text for a in answers]
    winner = next(a.json()["id"] for a in answers if a.status_code == 200)
    assert all(a.json()["lead_id"] == winner for a in answers if a.status_code == 409)
    assert await _open_leads_with(app, "taken@example.com") == [winner]


async def test_the_409_names_the_existing_lead_only_to_who_may_read_it(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    other_rep = await another_sales_user(client, people["admin"])
    mine = await client.post(
        f"{API}/leads", json=lead_body(email="owned@example.com"), headers=bearer(people["sales"])
    )
    assert mine.status_code == 201, mine.text
    lead_id = mine.json()["id"]
    body = lead_body(email="OWNED@example.com")

    # The owner and staff may read the lead: they are told which one it is.
    for who in (people["sales"], people["staff"]):
        again = await client.post(f"{API}/leads", json=body, headers=bearer(who))
        assert again.status_code == 409 and again.json()["lead_id"] == lead_id, again.text

    # Another salesperson cannot read it (404 on GET): the 409 names no lead.
    assert (
        await client.get(f"{API}/leads/{lead_id}", headers=bearer(other_rep))
    ).status_code == 404
    hidden = await client.post(f"{API}/leads", json=body, headers=bearer(other_rep))
    assert hidden.status_code == 409, hidden.text
    problem = hidden.json()
    assert problem["type"].endswith("/lead-exists") and "lead_id" not in problem
    assert lead_id not in hidden.text and problem["errors"][0]["field"] == "email"

    # Changing their own lead's email to that one: the same.
    own = await client.post(f"{API}/leads", json=lead_body(), headers=bearer(other_rep))
    changed = await client.patch(
        f"{API}/leads/{own.json()['id']}",
        json={"email": "owned@example.com"},
        headers=bearer(other_rep),
    )
    assert changed.status_code == 409 and "lead_id" not in changed.json(), changed.text

    # An import's duplicates follow the same rule.
    csv = "name,email\nAna,owned@example.com\n"
    for who, named in ((other_rep, None), (people["sales"], lead_id)):
        report = await post_csv(client, who, csv)
        assert report.status_code == 200, report.text
        [duplicate] = report.json()["duplicates"]
        assert duplicate["code"] == "lead-exists" and duplicate.get("lead_id") == named


async def test_an_import_racing_a_create_skips_the_row_as_a_duplicate(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    people = await users(app, client)
    ctx = sales_ctx(app)
    created: list[str] = []
    score = service.score_new_leads
    racing = False

    async def create_meanwhile(*args: Any, **kwargs: Any) -> None:
        # Between the import's duplicate check and its write, someone creates Luis's lead
        # (whose own scoring comes through here too: it goes straight on).
        nonlocal racing
        if not racing:
            racing = True
            made = await client.post(
                f"{API}/leads",
                json=lead_body(email="luis@example.com"),
                headers=bearer(people["sales"]),
            )
            assert made.status_code == 201, made.text
            created.append(made.json()["id"])
        await score(*args, **kwargs)

    monkeypatch.setattr(service, "score_new_leads", create_meanwhile)
    csv = "name,email\nAna,ana@example.com\nLuis,LUIS@example.com\nMarta,marta@example.com\n"
    response = await post_csv(client, people["sales"], csv)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["created"] == 2 and len(report["lead_ids"]) == 2
    [duplicate] = report["duplicates"]
    assert (duplicate["line"], duplicate["field"], duplicate["code"]) == (3, "email", "lead-exists")
    assert duplicate["lead_id"] == created[0]
    assert await _open_leads_with(app, "luis@example.com") == created
    async with ctx.db.read() as session:
        total = await session.scalar(select(func.count()).select_from(leads))
    assert total == 3
    # Only the created leads were announced: one LeadCreated per lead, none for the skipped row.
    async with ctx.db.read() as session:
        events = await session.scalar(
            select(func.count())
            .select_from(ctx.outbox.table)
            .where(ctx.outbox.table.c.type == LEAD_CREATED)
        )
    assert events == 3
