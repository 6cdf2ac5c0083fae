"""Leads cannot be gamed by entering the same person again, and their attributes are checked
against what the model knows: duplicates answer 409 (API) or are skipped (CSV import), unknown
categories and bad values name the exact attribute."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from ecosistema.sales.service import _histories, email_index
from tests.integration.test_sales_import import GOOD, lead_count, post_csv
from tests.integration.test_sales_support import (
    API,
    app,
    bearer,
    lead_body,
    sales_ctx,
    settings,
    users,
)

__all__ = ["app", "settings"]


async def test_same_email_again_answers_409_with_the_open_lead(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    auth = bearer(people["sales"])
    first = await client.post(f"{API}/leads", json=lead_body(email="dup@example.com"), headers=auth)
    assert first.status_code == 201, first.text
    again = await client.post(
        f"{API}/leads", json=lead_body(email="  DUP@example.com"), headers=auth
    )
    assert again.status_code == 409, again.text
    problem = again.json()
    assert problem["type"].endswith("/lead-exists") and problem["lead_id"] == first.json()["id"]
    assert await lead_count(app) == 1

    # Once that lead is closed, the person may come back as a new lead, which sees the outcome.
    closed = await client.patch(
        f"{API}/leads/{first.json()['id']}", json={"status": "lost"}, headers=auth
    )
    assert closed.status_code == 200, closed.text
    back = await client.post(f"{API}/leads", json=lead_body(email="dup@example.com"), headers=auth)
    assert back.status_code == 201, back.text


async def test_an_uncontacted_open_lead_is_no_previous_contact(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    created = await client.post(
        f"{API}/leads", json=lead_body(email="quiet@example.com"), headers=bearer(people["sales"])
    )
    assert created.status_code == 201, created.text
    ctx = sales_ctx(app)
    index = email_index(ctx, "quiet@example.com")
    async with ctx.db.read() as session:
        assert await _histories(session, [index]) == {}
    call = await client.post(
        f"{API}/leads/{created.json()['id']}/activities",
        json={"kind": "call", "body": "talked about pricing"},
        headers=bearer(people["sales"]),
    )
    assert call.status_code == 201, call.text
    async with ctx.db.read() as session:
        assert (await _histories(session, [index]))[index].previous == 1


async def test_importing_the_same_file_twice_creates_nothing_the_second_time(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    first = await post_csv(client, people["sales"], GOOD)
    assert first.status_code == 200 and first.json()["created"] == 3
    again = await post_csv(client, people["sales"], GOOD)
    assert again.status_code == 200, again.text
    report = again.json()
    # Sara has no email: nothing to match her by, so she is the only one created again.
    assert report["created"] == 1 and report["errors"] == [] and await lead_count(app) == 4
    duplicates = report["duplicates"]
    assert [d["line"] for d in duplicates] == [2, 3]
    assert {d["code"] for d in duplicates} == {"lead-exists"}
    assert {d["lead_id"] for d in duplicates} <= set(first.json()["lead_ids"])
    with_email = "name,email\nAna,ana@example.com\nLuis,luis@example.com\n"
    third = await post_csv(client, people["sales"], with_email)
    assert third.json()["created"] == 0 and await lead_count(app) == 4


async def test_a_repeated_email_inside_one_file_is_skipped_with_its_line(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    body = "name,email\nAna,ana@example.com\nAna Again,ANA@example.com\n"
    response = await post_csv(client, people["sales"], body)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["created"] == 1
    assert report["duplicates"][0]["line"] == 3 and "line 2" in report["duplicates"][0]["message"]


async def test_category_attributes_are_normalised_or_refused_naming_the_attribute(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    auth = bearer(people["sales"])
    retired = await client.post(
        f"{API}/leads", json=lead_body(attributes={"job": " Retired"}), headers=auth
    )
    assert retired.status_code == 201, retired.text
    assert retired.json()["attributes"]["job"] == "retired"
    astronaut = await client.post(
        f"{API}/leads", json=lead_body(attributes={"job": "astronaut"}), headers=auth
    )
    assert astronaut.status_code == 422, astronaut.text
    error = astronaut.json()["errors"][0]
    assert error["field"] == "attributes.job" and "retired" in error["allowed"]
    lead_id = retired.json()["id"]
    patched = await client.patch(
        f"{API}/leads/{lead_id}", json={"attributes": {"marital": "complicated"}}, headers=auth
    )
    assert patched.status_code == 422 and patched.json()["errors"][0]["field"] == (
        "attributes.marital"
    )


async def test_import_lists_every_problem_of_a_line_in_one_shape(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    body = (
        "name,email,age,job\n"
        "Good,good@example.com,40,Admin.\n"
        "Twice Bad,not-an-email,forty,admin.\n"
        "Astronaut,astro@example.com,40,astronaut\n"
    )
    rejected = await post_csv(client, people["sales"], body)
    assert rejected.status_code == 422, rejected.text
    skipped = await post_csv(client, people["sales"], body, mode="skip-invalid")
    assert skipped.status_code == 200, skipped.text
    for errors in (rejected.json()["errors"], skipped.json()["errors"]):
        assert {(e["line"], e["field"]) for e in errors} == {
            (3, "email"),
            (3, "attributes.age"),
            (4, "attributes.job"),
        }
        assert all({"line", "field", "code", "message"} <= set(e) for e in errors)
        assert not any("more problem" in e["message"] for e in errors)
    created = skipped.json()["lead_ids"]
    lead = await client.get(f"{API}/leads/{created[0]}", headers=bearer(people["sales"]))
    assert lead.json()["attributes"]["job"] == "admin."


async def test_a_column_given_twice_refuses_the_file_naming_it(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    body = "name,email,age,age\nAna,ana@example.com,30,99\n"
    response = await post_csv(client, people["sales"], body)
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert error["code"] == "duplicate_columns" and "'age'" in error["message"]
    assert await lead_count(app) == 0


async def test_every_bad_attribute_is_reported_by_the_api_and_the_import(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    auth = bearer(people["sales"])
    bad = {"age": "abc", "job": "nojob", "marital": "zz"}
    created = await client.post(f"{API}/leads", json=lead_body(attributes=bad), headers=auth)
    assert created.status_code == 422, created.text
    assert [e["field"] for e in created.json()["errors"]] == [
        "attributes.age",
        "attributes.job",
        "attributes.marital",
    ]
    body = (
        "name,email,age,job,marital\n"
        "Ana,ana@example.com,abc,nojob,single\n"
        "Bad Mail,not-an-email,40,nojob,zz\n"
    )
    rejected = await post_csv(client, people["sales"], body)
    assert rejected.status_code == 422, rejected.text
    errors = rejected.json()["errors"]
    assert [(e["line"], e["field"]) for e in errors] == [
        (2, "attributes.age"),
        (2, "attributes.job"),
        (3, "email"),
        (3, "attributes.job"),
        (3, "attributes.marital"),
    ]
    assert "retired" in errors[1]["allowed"] and errors[1]["code"] == "unknown_category"
    assert await lead_count(app) == 0


async def test_import_reads_header_names_in_any_case(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    body = "Name, Email ,AGE,Attr.Segment\nAna,ana@example.com,41,vip\n"
    response = await post_csv(client, people["sales"], body)
    assert response.status_code == 200, response.text
    [lead_id] = response.json()["lead_ids"]
    lead = (await client.get(f"{API}/leads/{lead_id}", headers=bearer(people["sales"]))).json()
    assert lead["email"] == "ana@example.com"
    assert lead["attributes"] == {"age": 41, "segment": "vip"}
