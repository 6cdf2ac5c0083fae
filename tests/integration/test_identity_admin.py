"""Identity administration on both shapes: roles, disabling, API keys, audit, events, signing
keys, demo seeding, and personal data encrypted at rest."""

from __future__ import annotations

import asyncio
import base64
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from sqlalchemy import select, text, update

from ecosistema.identity import create_admin, rotate_signing_key, seed_demo
from ecosistema.identity.domain import JWKS_LEEWAY_SECONDS
from ecosistema.identity.models import outbox, signing_keys
from ecosistema.platform.app import create_app
from ecosistema.platform.config import Settings
from ecosistema.platform.db import utcnow
from ecosistema.platform.errors import Conflict, Unprocessable
from ecosistema.platform.runtime import Runtime
from ecosistema.services import load_services
from tests.conftest import drop_test_schemas
from tests.integration.test_identity_support import (
    API,
    PASSWORD,
    bearer,
    fast_settings,
    identity_ctx,
    login,
    register,
    signed_in,
)

ADMIN_EMAIL = "root@example.com"
ADMIN_PASSWORD = "an admin passphrase"


@pytest.fixture
def settings(shape: str, tmp_path: Path) -> Settings:
    return fast_settings(shape, tmp_path)


async def admin_tokens(app: FastAPI, client: httpx.AsyncClient) -> dict[str, Any]:
    await create_admin(identity_ctx(app), email=ADMIN_EMAIL, password=ADMIN_PASSWORD)
    return await signed_in(client, ADMIN_EMAIL, ADMIN_PASSWORD)


async def test_admin_changes_a_role_and_the_change_is_evented_and_audited(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await admin_tokens(app, client)
    user = await register(client, "promote@example.com")
    customer = await signed_in(client, "promote@example.com")

    forbidden = await client.patch(
        f"{API}/users/{user['id']}", json={"role": "admin"}, headers=bearer(customer)
    )
    assert forbidden.status_code == 403
    smuggled = await client.patch(
        f"{API}/users/me", json={"role": "admin"}, headers=bearer(customer)
    )
    assert smuggled.status_code == 422

    changed = await client.patch(
        f"{API}/users/{user['id']}", json={"role": "sales"}, headers=bearer(admin)
    )
    assert changed.status_code == 200 and changed.json()["role"] == "sales"
    # The old token carried the old role; its session ended with the change.
    assert (
        await client.post(f"{API}/auth/refresh", json={"refresh_token": customer["refresh_token"]})
    ).status_code == 401
    relogged = await signed_in(client, "promote@example.com")
    who = (await client.get(f"{API}/auth/whoami", headers=bearer(relogged))).json()
    assert who["role"] == "sales" and "leads:write" in who["permissions"]

    events = await outbox_events(app, "UserRoleChanged")
    assert events == [
        {
            "user_id": user["id"],
            "old_role": "customer",
            "new_role": "sales",
            "changed_by": who_am_i_subject(admin),
        }
    ]
    audit = await client.get(
        f"{API}/audit-events", params={"type": "user.role_changed"}, headers=bearer(admin)
    )
    assert audit.status_code == 200
    [entry] = audit.json()["items"]
    assert entry["user_id"] == user["id"] and entry["ip"] == "203.0.113.7"
    assert entry["details"] == {"old_role": "customer", "new_role": "sales"}


def who_am_i_subject(tokens: dict[str, Any]) -> str:
    import jwt

    sub: str = jwt.decode(tokens["access_token"], options={"verify_signature": False})["sub"]
    return sub


async def outbox_events(app: FastAPI, type_: str) -> list[dict[str, Any]]:
    ctx = identity_ctx(app)
    async with ctx.db.read() as session:
        rows = (
            await session.execute(
                select(outbox.table.c.payload)
                .where(outbox.table.c.type == type_)
                .order_by(outbox.table.c.position)
            )
        ).all()
    return [dict(r.payload) for r in rows]


async def test_disabling_a_user_ends_their_sessions_and_refuses_login(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await admin_tokens(app, client)
    user = await register(client, "disable@example.com")
    tokens = await signed_in(client, "disable@example.com")
    response = await client.patch(
        f"{API}/users/{user['id']}", json={"status": "disabled"}, headers=bearer(admin)
    )
    assert response.status_code == 200 and response.json()["status"] == "disabled"
    assert (
        await client.post(f"{API}/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    ).status_code == 401
    assert (await client.post(f"{API}/auth/logout", headers=bearer(tokens))).status_code == 401
    refused = await login(client, "disable@example.com")
    unknown = await login(client, "never-registered@example.com")
    assert refused.status_code == 401 and refused.json()["detail"] == unknown.json()["detail"]

    [event] = await outbox_events(app, "UserDisabled")
    assert event["user_id"] == user["id"]
    assert set(event) == {"user_id", "disabled_by", "disabled_at"}

    enabled = await client.patch(
        f"{API}/users/{user['id']}", json={"status": "active"}, headers=bearer(admin)
    )
    assert enabled.status_code == 200
    assert (await login(client, "disable@example.com")).status_code == 200


async def test_admins_cannot_demote_or_disable_themselves(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await admin_tokens(app, client)
    me = who_am_i_subject(admin)
    for body in ({"role": "customer"}, {"status": "disabled"}):
        response = await client.patch(f"{API}/users/{me}", json=body, headers=bearer(admin))
        assert response.status_code == 409


async def test_admin_lists_users_filtered_by_role_status_and_email_with_pagination(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await admin_tokens(app, client)
    for i in range(5):
        await register(client, f"list{i}@example.com")
    page = (
        await client.get(
            f"{API}/users", params={"role": "customer", "limit": 2}, headers=bearer(admin)
        )
    ).json()
    assert page["total"] == 5 and len(page["items"]) == 2
    rest = (
        await client.get(
            f"{API}/users",
            params={"role": "customer", "limit": 10, "offset": 2},
            headers=bearer(admin),
        )
    ).json()
    emails = {u["email"] for u in page["items"] + rest["items"]}
    assert emails == {f"list{i}@example.com" for i in range(5)}
    by_email = (
        await client.get(
            f"{API}/users", params={"email": "LIST3@example.com"}, headers=bearer(admin)
        )
    ).json()
    assert [u["email"] for u in by_email["items"]] == ["list3@example.com"]
    admins = (
        await client.get(f"{API}/users", params={"role": "admin"}, headers=bearer(admin))
    ).json()
    assert [u["email"] for u in admins["items"]] == [ADMIN_EMAIL]
    disabled = (
        await client.get(f"{API}/users", params={"status": "disabled"}, headers=bearer(admin))
    ).json()
    assert disabled["total"] == 0
    one = await client.get(f"{API}/users/{page['items'][0]['id']}", headers=bearer(admin))
    assert one.status_code == 200
    missing = await client.get(f"{API}/users/{'0' * 32}", headers=bearer(admin))
    assert missing.status_code == 404


async def test_api_key_is_created_once_used_within_its_scopes_and_revoked(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await admin_tokens(app, client)
    created = await client.post(
        f"{API}/api-keys",
        json={"name": "reporting", "scopes": ["users:read"]},
        headers=bearer(admin),
    )
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    assert key.startswith("eco_")

    listed = (await client.get(f"{API}/api-keys", headers=bearer(admin))).json()
    assert [k["name"] for k in listed] == ["reporting"]
    assert "key" not in listed[0]

    as_key = {"X-API-Key": key}
    assert (await client.get(f"{API}/users", headers=as_key)).status_code == 200
    who = (await client.get(f"{API}/auth/whoami", headers=as_key)).json()
    assert who["kind"] == "api_key" and who["permissions"] == ["users:read"]
    for scheme in ("ApiKey", "apikey", "Bearer"):  # the key in Authorization works alike
        same = await client.get(f"{API}/auth/whoami", headers={"Authorization": f"{scheme} {key}"})
        assert same.status_code == 200, (scheme, same.text)
        assert same.json() == who
    beyond_scope = await client.patch(
        f"{API}/users/{who['subject']}", json={"role": "staff"}, headers=as_key
    )
    assert beyond_scope.status_code == 403
    creators_profile = await client.get(f"{API}/users/me", headers=as_key)
    assert creators_profile.status_code == 403
    assert creators_profile.json()["type"].endswith("/user-required")
    no_password_change = await client.post(
        f"{API}/auth/password/change",
        json={"current_password": ADMIN_PASSWORD, "new_password": "key cannot do this"},
        headers=as_key,
    )
    assert no_password_change.status_code == 403

    tampered = key[:-2] + ("AA" if not key.endswith("AA") else "BB")
    assert (await client.get(f"{API}/users", headers={"X-API-Key": tampered})).status_code == 401

    revoked = await client.delete(f"{API}/api-keys/{created.json()['id']}", headers=bearer(admin))
    assert revoked.status_code == 204
    assert (await client.get(f"{API}/users", headers=as_key)).status_code == 401
    revoked_in_authorization = {"Authorization": f"ApiKey {key}"}
    assert (await client.get(f"{API}/users", headers=revoked_in_authorization)).status_code == 401
    types = [
        e["type"]
        for e in (await client.get(f"{API}/audit-events", headers=bearer(admin))).json()["items"]
    ]
    assert "api_key.created" in types and "api_key.revoked" in types


async def test_api_key_scopes_cannot_exceed_the_creators_role(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await admin_tokens(app, client)
    user = await register(client, "seller@example.com")
    await client.patch(f"{API}/users/{user['id']}", json={"role": "sales"}, headers=bearer(admin))
    seller = await signed_in(client, "seller@example.com")
    too_much = await client.post(
        f"{API}/api-keys", json={"name": "x", "scopes": ["users:manage"]}, headers=bearer(seller)
    )
    assert too_much.status_code == 422 and too_much.json()["errors"][0]["field"] == "scopes"
    unknown = await client.post(
        f"{API}/api-keys", json={"name": "x", "scopes": ["nuclear:launch"]}, headers=bearer(seller)
    )
    assert unknown.status_code == 422
    ok = await client.post(
        f"{API}/api-keys", json={"name": "crm", "scopes": ["leads:write"]}, headers=bearer(seller)
    )
    assert ok.status_code == 201

    # Another user's key answers like a missing one.
    admin_key = await client.post(
        f"{API}/api-keys", json={"name": "ops", "scopes": ["audit:read"]}, headers=bearer(admin)
    )
    other = await client.delete(f"{API}/api-keys/{admin_key.json()['id']}", headers=bearer(seller))
    missing = await client.delete(f"{API}/api-keys/{'0' * 32}", headers=bearer(seller))
    assert other.status_code == missing.status_code == 404
    assert other.json()["detail"] == missing.json()["detail"]

    customer_user = await register(client, "buyer@example.com")
    assert customer_user["role"] == "customer"
    buyer = await signed_in(client, "buyer@example.com")
    refused = await client.post(
        f"{API}/api-keys", json={"name": "x", "scopes": ["catalog:read"]}, headers=bearer(buyer)
    )
    assert refused.status_code == 403


async def test_security_events_are_audited_with_ip_and_user_agent_and_paged_by_cursor(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await admin_tokens(app, client)
    await register(client, "audited@example.com")
    agent = {"User-Agent": "audit-test/1.0"}
    await client.post(
        f"{API}/auth/login",
        json={"email": "audited@example.com", "password": "wrong wrong wrong"},
        headers=agent,
    )
    await client.post(
        f"{API}/auth/login",
        json={"email": "audited@example.com", "password": PASSWORD},
        headers=agent,
    )
    failed = (
        await client.get(
            f"{API}/audit-events", params={"type": "login.failed"}, headers=bearer(admin)
        )
    ).json()["items"]
    assert len(failed) == 1
    assert failed[0]["ip"] == "203.0.113.7" and failed[0]["user_agent"] == "audit-test/1.0"
    assert failed[0]["details"] == {"reason": "wrong_password"}

    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (
            await client.get(f"{API}/audit-events", params=params, headers=bearer(admin))
        ).json()
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    everything = (
        await client.get(f"{API}/audit-events", params={"limit": 200}, headers=bearer(admin))
    ).json()["items"]
    assert seen == [e["id"] for e in everything] and len(seen) >= 5
    assert len(set(seen)) == len(seen)

    user_id = failed[0]["user_id"]
    for_user = (
        await client.get(f"{API}/audit-events", params={"user_id": user_id}, headers=bearer(admin))
    ).json()["items"]
    assert {e["type"] for e in for_user} >= {"user.registered", "login.failed", "login.succeeded"}
    future = (utcnow() + timedelta(hours=1)).isoformat()
    empty = (
        await client.get(f"{API}/audit-events", params={"since": future}, headers=bearer(admin))
    ).json()["items"]
    assert empty == []
    bad_cursor = await client.get(
        f"{API}/audit-events", params={"cursor": "not-a-cursor"}, headers=bearer(admin)
    )
    assert bad_cursor.status_code == 422
    customer = await signed_in(client, "audited@example.com")
    assert (await client.get(f"{API}/audit-events", headers=bearer(customer))).status_code == 403


@pytest.mark.parametrize(
    "cursor",
    [
        base64.urlsafe_b64encode(b"p:99999999999999999999999").decode(),
        base64.urlsafe_b64encode(b"[99999999999999999999999]").decode(),
        base64.urlsafe_b64encode(b'["12"]').decode(),
    ],
)
async def test_tampered_audit_cursor_is_refused_with_422(
    app: FastAPI, client: httpx.AsyncClient, cursor: str
) -> None:
    admin = await admin_tokens(app, client)
    refused = await client.get(
        f"{API}/audit-events", params={"cursor": cursor}, headers=bearer(admin)
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["type"].endswith("invalid-cursor")
    assert refused.json()["errors"][0]["field"] == "cursor"


def _nested_preferences(depth: int) -> dict[str, Any]:
    document: dict[str, Any] = {}
    inner = document
    for _ in range(depth - 1):
        inner["a"] = {}
        inner = inner["a"]
    return document


async def test_unreasonable_preferences_are_refused_with_their_path_and_not_stored(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await admin_tokens(app, client)
    await register(client, "prefs@example.com")
    tokens = await signed_in(client, "prefs@example.com")
    kept = await client.patch(
        f"{API}/users/me", json={"preferences": {"theme": "dark"}}, headers=bearer(tokens)
    )
    assert kept.status_code == 200, kept.text

    deep = await client.patch(
        f"{API}/users/me",
        json={"preferences": _nested_preferences(256)},
        headers=bearer(tokens),
    )
    assert deep.status_code == 422, deep.text
    assert deep.json()["errors"][0]["field"] == "preferences." + ".".join(["a"] * 8)
    for preferences in ({"k" * 65: 1}, {"blob": "x" * 9000}):
        refused = await client.patch(
            f"{API}/users/me", json={"preferences": preferences}, headers=bearer(tokens)
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"][0]["field"].startswith("preferences")

    me = await client.get(f"{API}/users/me", headers=bearer(tokens))
    assert me.status_code == 200 and me.json()["profile"]["preferences"] == {"theme": "dark"}
    assert (await client.get(f"{API}/users", headers=bearer(admin))).status_code == 200


async def test_profile_refuses_control_characters_unknown_countries_and_languages(
    client: httpx.AsyncClient,
) -> None:
    await register(client, "strict@example.com", name="Ana")
    tokens = await signed_in(client, "strict@example.com")
    address = {"line1": "Calle Mayor 1", "city": "Madrid"}
    for body, field in (
        ({"name": "a\u0000b"}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "\u202eevil\u0007"}, "name"),
        ({"addresses": [{**address, "country": "zz"}]}, "addresses.0.country"),
        ({"locale": "xx-YY"}, "locale"),
    ):
        refused = await client.patch(f"{API}/users/me", json=body, headers=bearer(tokens))
        assert refused.status_code == 422, (body, refused.text)
        assert refused.json()["errors"][0]["field"] == field
    me = (await client.get(f"{API}/users/me", headers=bearer(tokens))).json()["profile"]
    assert me["name"] == "Ana" and me["addresses"] == [] and me["locale"] == "en"


async def test_personal_data_is_not_stored_in_plaintext(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await register(client, "private.person@example.com", name="Priya Secretname")
    tokens = await signed_in(client, "private.person@example.com")
    updated = await client.patch(
        f"{API}/users/me",
        json={
            "phone": "+34 600 123 456",
            "addresses": [{"line1": "Calle Escondida 42", "city": "Sevilla", "country": "es"}],
            "locale": "es-ES",
            "preferences": {"newsletter": False},
        },
        headers=bearer(tokens),
    )
    assert updated.status_code == 200, updated.text
    profile = updated.json()["profile"]
    assert profile["phone"] == "+34 600 123 456"
    assert profile["addresses"][0]["country"] == "ES" and profile["name"] == "Priya Secretname"

    ctx = identity_ctx(app)
    dumped = ""
    async with ctx.db.read() as session:
        for table in ("users", "profiles", "audit_events", "outbox", "user_tokens"):
            rows = (await session.execute(text(f"SELECT * FROM {table}"))).all()
            dumped += repr(rows)
    for secret in (
        "private.person",
        "example.com",
        "Priya",
        "Secretname",
        "600 123",
        "Escondida",
        "Sevilla",
    ):
        assert secret.lower() not in dumped.lower(), secret
    assert "es-ES" in dumped  # locale is not personal data; proves the read saw the row


async def test_user_events_carry_no_secrets(app: FastAPI, client: httpx.AsyncClient) -> None:
    user = await register(client, "evented@example.com")
    [registered] = await outbox_events(app, "UserRegistered")
    assert registered["user_id"] == user["id"] and registered["role"] == "customer"
    assert "email" not in registered and "password" not in str(registered)


async def test_rotated_signing_key_stays_published_until_its_tokens_expired(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    await register(client, "rotate@example.com")
    before = await signed_in(client, "rotate@example.com")
    old_kids = {k["kid"] for k in (await client.get("/.well-known/jwks.json")).json()["keys"]}
    ctx = identity_ctx(app)
    new_kid = await rotate_signing_key(ctx)
    assert new_kid not in old_kids

    published = {k["kid"] for k in (await client.get("/.well-known/jwks.json")).json()["keys"]}
    assert published == old_kids | {new_kid}
    assert (await client.get(f"{API}/users/me", headers=bearer(before))).status_code == 200
    after = await signed_in(client, "rotate@example.com")
    import jwt

    assert jwt.get_unverified_header(after["access_token"])["kid"] == new_kid
    assert (await client.get(f"{API}/users/me", headers=bearer(after))).status_code == 200

    long_ago = utcnow() - timedelta(
        seconds=settings.access_token_ttl_seconds + JWKS_LEEWAY_SECONDS + 1
    )
    async with ctx.db.transaction() as session:
        await session.execute(
            update(signing_keys).where(signing_keys.c.id.in_(old_kids)).values(rotated_at=long_ago)
        )
    retired = {k["kid"] for k in (await client.get("/.well-known/jwks.json")).json()["keys"]}
    assert retired == {new_kid}
    async with ctx.db.read() as session:
        stored = (await session.execute(select(signing_keys))).all()
    assert all("PRIVATE KEY" not in r.private_key_encrypted for r in stored)


async def test_running_server_signs_with_a_key_rotated_by_another_process(
    shape: str, tmp_path: Path
) -> None:
    settings = fast_settings(shape, tmp_path, signing_key_recheck_seconds=0.05)
    server = create_app(load_services(["identity"]), settings)
    try:
        async with server.router.lifespan_context(server):
            transport = httpx.ASGITransport(app=server, client=("203.0.113.7", 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                await register(client, "rotated@example.com")
                first = await signed_in(client, "rotated@example.com")
                old_kid = jwt.get_unverified_header(first["access_token"])["kid"]

                operator = Runtime(settings, load_services(["identity"]))
                await operator.start(background=False)
                try:
                    new_kid = await rotate_signing_key(operator.contexts["identity"])
                finally:
                    await operator.stop()
                assert new_kid != old_kid

                async with asyncio.timeout(5):
                    while True:
                        tokens = await signed_in(client, "rotated@example.com")
                        if jwt.get_unverified_header(tokens["access_token"])["kid"] == new_kid:
                            break
                        await asyncio.sleep(0.01)
                me = await client.get(f"{API}/users/me", headers=bearer(tokens))
                assert me.status_code == 200
    finally:
        await drop_test_schemas(settings)


async def test_create_admin_applies_the_password_policy_and_refuses_duplicates(
    app: FastAPI,
) -> None:
    ctx = identity_ctx(app)
    with pytest.raises(Unprocessable):
        await create_admin(ctx, email="weak-admin@example.com", password="password1234")
    admin = await create_admin(ctx, email="Boss@Example.com", password=ADMIN_PASSWORD)
    assert admin.role == "admin" and admin.email_verified and admin.email == "boss@example.com"
    with pytest.raises(Conflict):
        await create_admin(ctx, email="boss@example.com", password=ADMIN_PASSWORD)


async def test_seed_demo_is_idempotent_and_its_credentials_sign_in(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    ctx = identity_ctx(app)
    first = await seed_demo(ctx)
    second = await seed_demo(ctx)
    assert first == second
    assert set(first) == {"admin", "staff", "sales", "customer", "wholesale"}
    assert first["admin"]["email"] == "admin@demo.ecosistema.dev"
    assert first["wholesale"]["email"] == "wholesale@demo.ecosistema.dev"
    # One account per role, and a second customer: the demo catalogue's wholesale buyer.
    roles = {"wholesale": "customer"}
    for account, creds in first.items():
        tokens = await signed_in(client, creds["email"], creds["password"])
        who = (await client.get(f"{API}/auth/whoami", headers=bearer(tokens))).json()
        assert who["role"] == roles.get(account, account)
    admin = await signed_in(client, first["admin"]["email"], first["admin"]["password"])
    listed = (await client.get(f"{API}/users", headers=bearer(admin))).json()
    assert listed["total"] == 5


async def test_identity_clients_find_users_and_verify_api_keys_in_process_and_over_http(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    from ecosistema.identity.client import HttpIdentityClient

    admin = await admin_tokens(app, client)
    user = await register(client, "client-lookup@example.com")
    key = (
        await client.post(
            f"{API}/api-keys", json={"name": "svc", "scopes": ["users:read"]}, headers=bearer(admin)
        )
    ).json()

    local = app.state.runtime.client("identity")
    found = await local.get_user(user["id"])
    assert found is not None and found.email == "client-lookup@example.com"
    assert await local.get_user("0" * 32) is None
    assert await local.get_user_email(user["id"]) == "client-lookup@example.com"
    assert await local.get_user_email("0" * 32) is None
    identity = await local.verify_api_key(key["key"])
    assert identity is not None and identity.scopes == ["users:read"]
    assert await local.verify_api_key(key["key"] + "x") is None

    remote = HttpIdentityClient(
        "http://testserver", credential=key["key"], transport=httpx.ASGITransport(app=app)
    )
    try:
        fetched = await remote.get_user(user["id"])
        assert fetched is not None and fetched.id == user["id"]
        assert await remote.get_user("0" * 32) is None
        assert await remote.get_user_email(user["id"]) == "client-lookup@example.com"
        assert await remote.get_user_email("0" * 32) is None
        verified = await remote.verify_api_key(key["key"])
        assert verified is not None and verified.key_id == key["id"]
        assert await remote.verify_api_key("eco_" + "0" * 32 + "_nope") is None
    finally:
        await remote.aclose()
