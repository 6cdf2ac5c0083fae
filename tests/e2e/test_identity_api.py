"""Identity over HTTP, as a new customer and as an administrator would use it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pyotp
import pytest
from fastapi import FastAPI

from ecosistema.identity import seed_demo
from ecosistema.platform.config import Settings
from tests.integration.test_identity_support import (
    API,
    PASSWORD,
    bearer,
    fast_settings,
    identity_ctx,
    login,
    token_from_last_mail,
    totp_code_for_next_step,
)


@pytest.fixture
def settings(shape: str, tmp_path: Path) -> Settings:
    return fast_settings(shape, tmp_path)


async def test_a_new_customer_signs_up_verifies_manages_profile_and_mfa_then_signs_out(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    signup = await client.post(
        f"{API}/auth/register",
        json={"email": "lucia@example.com", "password": PASSWORD, "name": "Lucía", "locale": "es"},
    )
    assert signup.status_code == 201
    token = token_from_last_mail(settings, "lucia@example.com", "verification token")
    assert (await client.post(f"{API}/auth/verify-email", json={"token": token})).status_code == 200

    tokens = (await login(client, "lucia@example.com")).json()
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 900
    me = (await client.get(f"{API}/users/me", headers=bearer(tokens))).json()
    assert me["email_verified"] and me["profile"]["locale"] == "es"

    patched = await client.patch(
        f"{API}/users/me",
        json={"phone": "+34 911 000 000", "preferences": {"theme": "dark"}},
        headers=bearer(tokens),
    )
    assert patched.status_code == 200
    assert patched.json()["profile"]["preferences"] == {"theme": "dark"}
    assert patched.json()["profile"]["name"] == "Lucía"  # untouched fields stay
    mass_assignment = await client.patch(
        f"{API}/users/me", json={"status": "active", "email_verified": True}, headers=bearer(tokens)
    )
    assert mass_assignment.status_code == 422
    assert mass_assignment.headers["content-type"] == "application/problem+json"

    forbidden = await client.get(f"{API}/users", headers=bearer(tokens))
    assert forbidden.status_code == 403
    assert (await client.get(f"{API}/users")).status_code == 401

    secret = (await client.post(f"{API}/auth/mfa/totp/enroll", headers=bearer(tokens))).json()[
        "secret"
    ]
    confirmed = await client.post(
        f"{API}/auth/mfa/totp/confirm",
        json={"code": pyotp.TOTP(secret).now()},
        headers=bearer(tokens),
    )
    assert confirmed.status_code == 200
    challenge = await login(client, "lucia@example.com")
    assert challenge.status_code == 401 and challenge.json()["type"].endswith("/mfa-required")
    code = totp_code_for_next_step(secret, step_of_the_confirm_code())
    second = await login(client, "lucia@example.com", mfa_code=code)
    assert second.status_code == 200, second.text

    refreshed = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": second.json()["refresh_token"]}
    )
    assert refreshed.status_code == 200
    assert (
        await client.post(f"{API}/auth/logout-all", headers=bearer(refreshed.json()))
    ).status_code == 204
    # Every session ended, the first one too: its access token no longer reaches identity.
    assert (await client.get(f"{API}/users/me", headers=bearer(tokens))).status_code == 401
    after = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": refreshed.json()["refresh_token"]}
    )
    assert after.status_code == 401


def step_of_the_confirm_code() -> int:
    from ecosistema.identity.domain import totp_step
    from ecosistema.platform.db import utcnow

    # The confirm call used the current step; the next login must use a later one.
    return totp_step(utcnow())


async def test_an_admin_manages_users_keys_and_reads_the_audit_log(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    demo = await seed_demo(identity_ctx(app))
    admin = (await login(client, demo["admin"]["email"], demo["admin"]["password"])).json()
    users = (await client.get(f"{API}/users", params={"limit": 10}, headers=bearer(admin))).json()
    assert {u["role"] for u in users["items"]} == {"admin", "staff", "sales", "customer"}

    customer = next(u for u in users["items"] if u["role"] == "customer")
    promoted = await client.patch(
        f"{API}/users/{customer['id']}", json={"role": "staff"}, headers=bearer(admin)
    )
    assert promoted.status_code == 200 and promoted.json()["role"] == "staff"
    smuggled = await client.patch(
        f"{API}/users/{customer['id']}", json={"email": "x@example.com"}, headers=bearer(admin)
    )
    assert smuggled.status_code == 422

    key = (
        await client.post(
            f"{API}/api-keys",
            json={"name": "audit-export", "scopes": ["audit:read"]},
            headers=bearer(admin),
        )
    ).json()
    audit = await client.get(
        f"{API}/audit-events",
        params={"type": "user.role_changed"},
        headers={"Authorization": f"Bearer {key['key']}"},
    )
    assert audit.status_code == 200
    assert [e["user_id"] for e in audit.json()["items"]] == [customer["id"]]
    assert (
        await client.delete(f"{API}/api-keys/{key['id']}", headers=bearer(admin))
    ).status_code == 204

    jwks = (await client.get("/.well-known/jwks.json")).json()
    assert jwks["keys"] and all(k["alg"] == "EdDSA" and "d" not in k for k in jwks["keys"])


async def test_forwarded_for_is_believed_only_from_trusted_proxies(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    demo = await seed_demo(identity_ctx(app))
    admin = (await login(client, demo["admin"]["email"], demo["admin"]["password"])).json()
    spoofed = {"X-Forwarded-For": "198.51.100.9"}
    await client.post(
        f"{API}/auth/login",
        json={"email": "x@example.com", "password": "wrong password"},
        headers=spoofed,
    )
    identity_ctx(app).settings = settings.model_copy(update={"trusted_proxies": ["203.0.113.0/24"]})
    await client.post(
        f"{API}/auth/login",
        json={"email": "y@example.com", "password": "wrong password"},
        headers={"X-Forwarded-For": "192.0.2.1, 198.51.100.20"},
    )
    failed = (
        await client.get(
            f"{API}/audit-events", params={"type": "login.failed"}, headers=bearer(admin)
        )
    ).json()["items"]
    assert [e["ip"] for e in failed] == ["198.51.100.20", "203.0.113.7"]


async def test_identity_endpoints_document_their_responses(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    login_op = spec["paths"]["/api/v1/auth/login"]["post"]
    assert {"200", "401", "422", "429"} <= set(login_op["responses"])
    for path in (
        "/api/v1/auth/register",
        "/api/v1/users/me",
        "/api/v1/api-keys",
        "/api/v1/audit-events",
    ):
        assert path in spec["paths"]
    assert "/.well-known/jwks.json" in spec["paths"]
