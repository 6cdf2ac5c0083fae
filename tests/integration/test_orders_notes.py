"""Staff notes on both shapes: text people read in the order's history. Lines are welcome; a
blank note, or one carrying control or invisible formatting characters, is refused at `text`."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from tests.integration.test_identity_support import API, bearer
from tests.integration.test_orders_support import (
    app,
    place_guest_order,
    seed_shop,
    settings,
    staff_tokens,
)

__all__ = ["app", "settings"]


async def test_notes_must_say_something_readable_and_may_span_lines(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-N": 5})
    order = await place_guest_order(client, {"TEE-N": 1})
    url = f"{API}/orders/{order['id']}"

    refused = {
        "": "at least 1 character",
        "   ": "must not be blank",
        " \n\t\r\n ": "must not be blank",
        "call\x00back": "control or invisible formatting characters",
        "refund \u202eUSD": "control or invisible formatting characters",
        "line\u2028break": "control or invisible formatting characters",
    }
    for text, message in refused.items():
        response = await client.post(f"{url}/notes", json={"text": text}, headers=bearer(admin))
        assert response.status_code == 422, (text, response.text)
        [error] = response.json()["errors"]
        assert error["field"] == "text" and message in error["message"], (text, error)

    text = "Gift wrap, please.\nLeave with the neighbour at no. 3.\r\n\tTel. first"
    note = await client.post(f"{url}/notes", json={"text": text}, headers=bearer(admin))
    assert note.status_code == 201, note.text
    assert note.json()["reason"] == text
    history = await client.get(f"{url}/history", headers=bearer(admin))
    assert [e["reason"] for e in history.json() if e["kind"] == "note"] == [text]


async def test_reasons_of_changes_and_returns_follow_the_rule_of_notes(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await staff_tokens(app, client)
    await seed_shop(app, client, admin, {"TEE-R": 5})
    order = await place_guest_order(client, {"TEE-R": 1})
    url = f"{API}/orders/{order['id']}"

    for body in ({"reason": "  "}, {"reason": "late \u202eparcel"}):
        cancelled = await client.post(f"{url}/cancel", json=body, headers=bearer(admin))
        assert cancelled.status_code == 422, cancelled.text
        assert [e["field"] for e in cancelled.json()["errors"]] == ["reason"]
    line = order["lines"][0]["line_id"]
    returned = await client.post(
        f"{url}/returns",
        json={"lines": [{"line_id": line, "quantity": 1}], "reason": "\x07"},
        headers=bearer(admin),
    )
    assert returned.status_code == 422, returned.text
    assert [e["field"] for e in returned.json()["errors"]] == ["reason"]

    cancelled = await client.post(
        f"{url}/cancel", json={"reason": "Buyer asked.\nBy phone."}, headers=bearer(admin)
    )
    assert cancelled.status_code == 200, cancelled.text
