"""Leads through the API on both shapes: scored on create, encrypted at rest, owned by their
salesperson, listed by score, with a timeline fed by users and by the platform's events."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import select, text

from ecosistema.platform.config import Settings
from ecosistema.platform.crypto import reencrypt_columns, rotate_master_key
from ecosistema.sales import descriptor
from ecosistema.sales.models import activities, leads, sales_users
from ecosistema.sales.service import email_index, seed_demo
from tests.integration.test_identity_support import register, signed_in
from tests.integration.test_orders_support import place_guest_order, publish, seed_shop
from tests.integration.test_sales_support import (
    API,
    another_sales_user,
    app,
    bearer,
    eventually,
    lead_body,
    sales_ctx,
    settings,
    users,
)

__all__ = ["app", "settings"]


async def create(client: httpx.AsyncClient, who: dict[str, Any], **body: Any) -> dict[str, Any]:
    response = await client.post(f"{API}/leads", json=lead_body(**body), headers=bearer(who))
    assert response.status_code == 201, response.text
    lead: dict[str, Any] = response.json()
    return lead


async def test_created_lead_is_scored_with_factors_before_the_answer(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    lead = await create(client, people["sales"])
    assert 0 <= lead["score"] <= 100 and 0 < lead["probability"] < 1
    assert lead["model_version"] == "v1"
    assert 3 <= len(lead["factors"]) <= 4
    assert all(f["phrase"].rstrip("+-").endswith(": ") for f in lead["factors"])
    assert lead["owner_id"] == people["sales"]["id"] and lead["status"] == "new"


async def test_contact_data_is_encrypted_at_rest_and_found_by_blind_index(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    lead = await create(
        client, people["sales"], name="Marta Secreta", email="Marta.Secreta@Example.com"
    )
    ctx = sales_ctx(app)
    async with ctx.db.read() as session:
        row = (
            await session.execute(
                text(
                    "SELECT name_encrypted, email_encrypted, phone_encrypted, email_index "
                    "FROM leads WHERE id = :id"
                ),
                {"id": lead["id"]},
            )
        ).one()
    stored = " ".join(str(v) for v in row)
    for plain in ("Marta", "Secreta", "example.com", "600 123 456"):
        assert plain.lower() not in stored.lower()
    assert row.email_index == email_index(ctx, "marta.secreta@example.com")
    again = await client.get(f"{API}/leads/{lead['id']}", headers=bearer(people["sales"]))
    assert again.json()["name"] == "Marta Secreta"
    assert again.json()["email"] == "Marta.Secreta@example.com"


async def test_salespeople_see_only_their_own_leads_staff_see_all_customers_none(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    other = await another_sales_user(client, people["admin"])
    mine = await create(client, people["sales"])
    theirs = await create(client, other)
    hidden = await client.get(f"{API}/leads/{theirs['id']}", headers=bearer(people["sales"]))
    assert hidden.status_code == 404
    changed = await client.patch(
        f"{API}/leads/{theirs['id']}", json={"company": "x"}, headers=bearer(people["sales"])
    )
    assert changed.status_code == 404
    listed = await client.get(f"{API}/leads", headers=bearer(people["sales"]))
    assert [item["id"] for item in listed.json()["items"]] == [mine["id"]]
    everyone = await client.get(f"{API}/leads", headers=bearer(people["staff"]))
    assert {item["id"] for item in everyone.json()["items"]} == {mine["id"], theirs["id"]}
    for method, path in (
        ("GET", "/leads"),
        ("GET", f"/leads/{mine['id']}"),
        ("POST", "/leads"),
        ("GET", "/ml/models"),
    ):
        refused = await client.request(
            method, f"{API}{path}", json=lead_body(), headers=bearer(people["customer"])
        )
        assert refused.status_code == 403, (method, path, refused.text)
        assert refused.headers["content-type"].startswith("application/problem+json")


async def test_only_staff_assign_leads_and_only_to_sales_users(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    other = await another_sales_user(client, people["admin"])
    refused = await client.post(
        f"{API}/leads", json=lead_body(owner_id=other["id"]), headers=bearer(people["sales"])
    )
    assert refused.status_code == 403
    customer = await client.post(
        f"{API}/leads",
        json=lead_body(owner_id=people["customer"]["id"]),
        headers=bearer(people["staff"]),
    )
    assert customer.status_code == 422
    assert customer.json()["errors"][0]["field"] == "owner_id"
    assigned = await create(client, people["staff"], owner_id=other["id"])
    assert assigned["owner_id"] == other["id"]
    seen = await client.get(f"{API}/leads/{assigned['id']}", headers=bearer(other))
    assert seen.status_code == 200


async def test_status_follows_allowed_transitions_and_closing_is_final(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    lead = await create(client, people["sales"])
    path, auth = f"{API}/leads/{lead['id']}", bearer(people["sales"])
    contacted = await client.patch(path, json={"status": "contacted"}, headers=auth)
    assert contacted.json()["status"] == "contacted" and contacted.json()["closed_at"] is None
    won = await client.patch(path, json={"status": "won"}, headers=auth)
    assert won.json()["status"] == "won" and won.json()["closed_at"] is not None
    reopened = await client.patch(path, json={"status": "contacted"}, headers=auth)
    assert reopened.status_code == 409
    assert reopened.json()["type"].endswith("/lead-transition-not-allowed")
    timeline = await client.get(f"{path}/activities", headers=auth)
    changes = [a["details"] for a in timeline.json()["items"] if a["kind"] == "status"]
    assert [(c["from"], c["to"]) for c in changes] == [("contacted", "won"), ("new", "contacted")]


async def test_a_new_lead_can_be_closed_as_won_at_once(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    lead = await create(client, people["sales"])
    path, auth = f"{API}/leads/{lead['id']}", bearer(people["sales"])
    won = await client.patch(path, json={"status": "won"}, headers=auth)
    assert won.status_code == 200
    assert won.json()["status"] == "won" and won.json()["closed_at"] is not None
    back = await client.patch(path, json={"status": "new"}, headers=auth)
    assert back.status_code == 409


async def test_list_sorts_by_score_filters_and_pages_without_gaps(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    jobs = ("student", "retired", "blue-collar", "admin.", "technician", "services", "management")
    for i, job in enumerate(jobs):
        await create(
            client,
            people["sales"],
            campaign="a" if i % 2 else "b",
            attributes={"age": 20 + 9 * i, "job": job},
            channel="mobile" if i % 3 else "landline",
        )
    auth = bearer(people["sales"])
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"sort": "score_desc", "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get(f"{API}/leads", params=params, headers=auth)).json()
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    scores = [item["score"] for item in seen]
    assert len(seen) == len(jobs) == len({item["id"] for item in seen})
    assert scores == sorted(scores, reverse=True)
    middle = sorted(scores)[len(scores) // 2]
    high = await client.get(
        f"{API}/leads", params={"min_score": middle, "campaign": "a"}, headers=auth
    )
    assert high.json()["items"] and all(
        i["score"] >= middle and i["campaign"] == "a" for i in high.json()["items"]
    )
    bad = await client.get(f"{API}/leads", params={"cursor": "not-a-cursor"}, headers=auth)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "cursor"
    inverted = await client.get(
        f"{API}/leads", params={"min_score": 80, "max_score": 10}, headers=auth
    )
    assert inverted.status_code == 422


async def test_logged_call_counts_as_a_contact_and_rescores_the_lead(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    lead = await create(client, people["sales"])
    path, auth = f"{API}/leads/{lead['id']}", bearer(people["sales"])
    for kind in ("call", "note", "email"):
        logged = await client.post(
            f"{path}/activities", json={"kind": kind, "body": f"a {kind}"}, headers=auth
        )
        assert logged.status_code == 201, logged.text
    ctx = sales_ctx(app)
    async with ctx.db.read() as session:
        row = (
            await session.execute(
                select(leads.c.contacts, leads.c.features).where(leads.c.id == lead["id"])
            )
        ).one()
    assert row.contacts == 2 and row.features["campaign"] == 3
    timeline = (await client.get(f"{path}/activities", headers=auth)).json()["items"]
    assert [a["kind"] for a in timeline] == ["email", "note", "call"]
    assert all(a["actor_id"] == people["sales"]["id"] for a in timeline)


async def test_repeat_lead_reads_the_outcome_of_the_earlier_one(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    first = await create(client, people["sales"], email="repeat@example.com")
    await client.patch(
        f"{API}/leads/{first['id']}", json={"status": "won"}, headers=bearer(people["sales"])
    )
    second = await create(client, people["sales"], email="REPEAT@example.com")
    async with sales_ctx(app).db.read() as session:
        features = await session.scalar(select(leads.c.features).where(leads.c.id == second["id"]))
    assert features is not None
    assert features["previous"] == 1 and features["poutcome"] == "success"
    assert features["pdays"] == 0


async def _timeline(
    app: FastAPI, client: httpx.AsyncClient, who: dict[str, Any], lead_id: str
) -> list[dict[str, Any]]:
    await app.state.runtime.drain_outboxes()
    path = f"{API}/leads/{lead_id}/activities"
    items: list[dict[str, Any]] = (await client.get(path, headers=bearer(who))).json()["items"]
    return items


async def test_a_placed_order_shows_on_the_timeline_and_its_payment_wins_the_lead(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    sales = people["sales"]
    await seed_shop(app, client, people["admin"], {"SALES-TEE": 5})
    lead = await create(client, sales, email="buyer@example.com")
    order = await place_guest_order(client, {"SALES-TEE": 1}, email="Buyer@Example.com")
    path, auth = f"{API}/leads/{lead['id']}", bearer(sales)

    async def placed() -> bool:
        items = await _timeline(app, client, sales, lead["id"])
        return any(a["kind"] == "order_placed" for a in items)

    await eventually(placed, what="the placed order on the lead's timeline")
    # Placed is not paid: the order may still be cancelled, so the lead stays open.
    still = (await client.get(path, headers=auth)).json()
    assert still["status"] == "new" and still["closed_at"] is None
    timeline = await _timeline(app, client, sales, lead["id"])
    assert all(a["kind"] != "status" for a in timeline)
    shown = next(a for a in timeline if a["kind"] == "order_placed")
    assert shown["details"]["number"] and shown["actor_id"] is None

    succeeded = {
        "payment_id": "p1",
        "order_id": order["id"],
        "amount": order["total"],
        "currency": order["currency"],
        "captured_amount": order["total"],
    }
    await publish(app, "PaymentSucceeded", succeeded)

    async def won() -> bool:
        await app.state.runtime.drain_outboxes()
        return bool((await client.get(path, headers=auth)).json()["status"] == "won")

    await eventually(won, what="the order's payment to win the lead")
    timeline = await _timeline(app, client, sales, lead["id"])
    assert {"order_placed", "order_paid"} <= {a["kind"] for a in timeline}
    changes = [a["details"] for a in timeline if a["kind"] == "status"]
    assert changes == [{"from": "new", "to": "won", "reason": "OrderPaid"}]


async def test_a_cancelled_order_never_wins_the_lead(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    sales = people["sales"]
    await seed_shop(app, client, people["admin"], {"SALES-TEE": 5})
    lead = await create(client, sales, email="never.paid@example.com")
    order = await place_guest_order(client, {"SALES-TEE": 1}, email="never.paid@example.com")
    cancelled = await client.post(
        f"{API}/orders/{order['id']}/cancel", headers=bearer(people["admin"])
    )
    assert cancelled.status_code == 200, cancelled.text

    async def placed() -> bool:
        items = await _timeline(app, client, sales, lead["id"])
        return any(a["kind"] == "order_placed" for a in items)

    await eventually(placed, what="the placed order on the lead's timeline")
    await app.state.runtime.drain_outboxes()
    seen = (await client.get(f"{API}/leads/{lead['id']}", headers=bearer(sales))).json()
    assert seen["status"] == "new" and seen["closed_at"] is None
    timeline = await _timeline(app, client, sales, lead["id"])
    assert [a["kind"] for a in timeline] == ["order_placed"]
    # The lead is still open, so the same email cannot open a second one, and is no label.
    again = await client.post(
        f"{API}/leads", json=lead_body(email="never.paid@example.com"), headers=bearer(sales)
    )
    assert again.status_code == 409, again.text


async def test_registration_with_the_leads_email_shows_on_its_timeline(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    lead = await create(client, people["sales"], email="newcomer@example.com")
    await register(client, "newcomer@example.com")
    path, auth = f"{API}/leads/{lead['id']}/activities", bearer(people["sales"])

    async def registered() -> bool:
        await app.state.runtime.drain_outboxes()
        items = (await client.get(path, headers=auth)).json()["items"]
        return any(a["kind"] == "registered" for a in items)

    await eventually(registered, what="the registration on the timeline")
    async with sales_ctx(app).db.read() as session:
        count = await session.scalar(
            select(activities.c.id).where(
                activities.c.lead_id == lead["id"], activities.c.kind == "registered"
            )
        )
    assert count is not None


async def test_cart_created_by_a_customer_with_the_leads_email_shows_on_its_timeline(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    lead = await create(client, people["sales"], email="cart.shopper@example.com")
    other = await create(client, people["sales"], email="someone.else@example.com")
    await register(client, "cart.shopper@example.com")
    shopper = await signed_in(client, "cart.shopper@example.com")
    cart = await client.post(f"{API}/carts", json={"currency": "EUR"}, headers=bearer(shopper))
    assert cart.status_code == 201, cart.text
    auth = bearer(people["sales"])
    path = f"{API}/leads/{lead['id']}/activities"

    async def shown() -> bool:
        await app.state.runtime.drain_outboxes()
        items = (await client.get(path, headers=auth)).json()["items"]
        return any(a["kind"] == "cart_created" for a in items)

    await eventually(shown, what="the new cart on the lead's timeline")
    items = (await client.get(path, headers=auth)).json()["items"]
    carted = next(a for a in items if a["kind"] == "cart_created")
    assert carted["body"] == "cart created" and carted["actor_id"] is None
    assert carted["details"]["cart_id"] == cart.json()["id"]
    # Only the lead with that email: a cart is no sale, so the lead stays open.
    others = (await client.get(f"{API}/leads/{other['id']}/activities", headers=auth)).json()
    assert all(a["kind"] != "cart_created" for a in others["items"])
    assert (await client.get(f"{API}/leads/{lead['id']}", headers=auth)).json()["status"] != "won"


async def test_bad_lead_input_is_a_problem_naming_the_field(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    auth = bearer(people["sales"])
    cases = [
        (lead_body(email=None, phone=None), "body"),
        (lead_body(attributes={"age": "forty"}), "attributes.age"),
        (lead_body(attributes={"age": 300}), "attributes.age"),
        (lead_body(attributes={"Bad Key": 1}), "attributes.Bad Key"),
        (lead_body(attributes={"job": "astronaut"}), "attributes.job"),
        (lead_body(attributes={f"k{i}": i for i in range(51)}), "attributes"),
        (lead_body(email="not-an-email"), "email"),
        (lead_body(surprise=True), "surprise"),
    ]
    for body, field in cases:
        response = await client.post(f"{API}/leads", json=body, headers=auth)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["errors"][0]["field"] == field, response.json()
    lead = await create(client, people["sales"])
    cleared = await client.patch(
        f"{API}/leads/{lead['id']}", json={"email": None, "phone": None}, headers=auth
    )
    assert cleared.status_code == 422
    missing = await client.get(f"{API}/leads/nope", headers=auth)
    assert missing.status_code == 404
    async with sales_ctx(app).db.read() as session:
        assert len((await session.execute(select(leads.c.id))).all()) == 1


async def test_demo_seeding_gives_the_demo_salesperson_fifty_scored_leads_once(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    ctx = sales_ctx(app)
    first = await seed_demo(ctx)
    assert first == {"leads": 50, "owner_id": people["sales"]["id"]}
    again = await seed_demo(ctx)
    assert again["leads"] == 50
    page = await client.get(
        f"{API}/leads", params={"sort": "score_desc", "limit": 200}, headers=bearer(people["sales"])
    )
    items = page.json()["items"]
    assert len(items) == 50 and all(i["model_version"] == "v1" for i in items)
    assert len({i["status"] for i in items}) > 1 and items[0]["score"] > items[-1]["score"]
    # Each demo lead is a reference-data row's person and contact history.
    history = {"age", "job", "education", "campaign", "pdays", "previous", "poutcome"}
    assert all(history <= set(i["attributes"]) for i in items)
    # Fifty leads are too few for drift to mean anything: no false alarm on a fresh demo.
    drift = (await client.get(f"{API}/ml/drift", headers=bearer(people["staff"]))).json()
    assert drift["rows"] == 50 and drift["status"] == "not_enough_data" and not drift["alert"]


async def test_key_rotation_reencrypts_lead_contact_data_and_keeps_the_email_index(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    people = await users(app, client)
    lead = await create(client, people["sales"], email="rotate@example.com")
    ctx = sales_ctx(app)
    rotate_master_key(settings)
    ctx.cipher.keyring.refresh()
    count = await reencrypt_columns(ctx.db, ctx.cipher, descriptor.encrypted_columns)
    assert count == 3
    again = await client.get(f"{API}/leads/{lead['id']}", headers=bearer(people["sales"]))
    assert again.json()["email"] == "rotate@example.com"
    async with ctx.db.read() as session:
        index = await session.scalar(select(leads.c.email_index).where(leads.c.id == lead["id"]))
    assert index == email_index(ctx, "rotate@example.com")


async def test_sales_learns_who_may_own_leads_from_identity_events_and_nobody_else(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    people = await users(app, client)
    rep = await another_sales_user(client, people["admin"])
    ctx = sales_ctx(app)

    async def known() -> dict[str, str]:
        await app.state.runtime.drain_outboxes()
        async with ctx.db.read() as session:
            rows = (await session.execute(select(sales_users.c.user_id, sales_users.c.role))).all()
        return {r.user_id: r.role for r in rows}

    async def rep_known() -> bool:
        return (await known()).get(rep["id"]) == "sales"

    await eventually(rep_known, what="the role change to reach sales")
    roles = await known()
    assert roles[people["sales"]["id"]] == "sales" and roles[people["staff"]["id"]] == "staff"
    assert people["customer"]["id"] not in roles
