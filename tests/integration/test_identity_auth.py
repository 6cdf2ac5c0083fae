"""Identity's authentication flows on both shapes: registration, verification, login, refresh
rotation and replay, brute-force throttling, MFA, password change and reset."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from ecosistema.identity.domain import totp_step
from ecosistema.identity.models import users
from ecosistema.identity.service import email_index
from ecosistema.platform.config import Settings
from ecosistema.platform.db import utcnow
from tests.integration.test_identity_support import (
    API,
    PASSWORD,
    bearer,
    fast_settings,
    identity_ctx,
    login,
    mails_to,
    register,
    signed_in,
    token_from_last_mail,
    totp_code_for_next_step,
)


@pytest.fixture
def settings(shape: str, tmp_path: Path) -> Settings:
    return fast_settings(
        shape,
        tmp_path,
        lockout_threshold=5,
        login_delay_after_failures=5,
        login_ip_lockout_threshold=100,
        lockout_seconds=600,
    )


async def test_register_verify_login_refresh_rotates_and_replay_revokes_the_session(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    user = await register(client, "Ana.Lopez@Example.com", name="Ana López")
    assert user["email"] == "ana.lopez@example.com"
    assert user["role"] == "customer" and user["email_verified"] is False

    token = token_from_last_mail(settings, "ana.lopez@example.com", "verification token")
    verified = await client.post(f"{API}/auth/verify-email", json={"token": token})
    assert verified.status_code == 200 and verified.json()["email_verified"] is True
    again = await client.post(f"{API}/auth/verify-email", json={"token": token})
    assert again.status_code == 422

    first = await signed_in(client, "ana.lopez@example.com")
    assert first["token_type"] == "Bearer"
    assert first["expires_in"] == settings.access_token_ttl_seconds
    me = await client.get(f"{API}/users/me", headers=bearer(first))
    assert me.status_code == 200 and me.json()["profile"]["name"] == "Ana López"

    second = (
        await client.post(f"{API}/auth/refresh", json={"refresh_token": first["refresh_token"]})
    ).json()
    assert second["refresh_token"] != first["refresh_token"]
    third = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": second["refresh_token"]}
    )
    assert third.status_code == 200

    replay = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": first["refresh_token"]}
    )
    assert replay.status_code == 401
    # The whole family is gone: the newest refresh token and the access token's session too.
    newest = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": third.json()["refresh_token"]}
    )
    assert newest.status_code == 401
    assert (await client.post(f"{API}/auth/logout", headers=bearer(first))).status_code == 401


async def test_registering_an_email_twice_is_a_conflict(client: httpx.AsyncClient) -> None:
    await register(client, "dup@example.com")
    response = await client.post(
        f"{API}/auth/register", json={"email": "DUP@example.com", "password": PASSWORD}
    )
    assert response.status_code == 409


@pytest.mark.parametrize(
    ("password", "code"),
    [
        ("short pass", "password_too_short"),
        ("qwerty123456", "password_too_common"),
        ("x" * 129, "password_too_long"),
        ("a valid pass phrase\u0000zz", "password_control_character"),
        ("a valid pass\nphrase", "password_control_character"),
    ],
)
async def test_registration_enforces_the_password_policy(
    client: httpx.AsyncClient, password: str, code: str
) -> None:
    response = await client.post(
        f"{API}/auth/register", json={"email": "weak@example.com", "password": password}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0] == {
        "field": "password",
        "message": response.json()["errors"][0]["message"],
        "code": code,
    }


async def test_registration_refuses_a_role_in_the_body(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{API}/auth/register",
        json={"email": "sneaky@example.com", "password": PASSWORD, "role": "admin"},
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "role"


async def test_unknown_email_wrong_password_and_lockout_give_the_same_error_text(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    await register(client, "locked@example.com")
    unknown = await login(client, "nobody@example.com", "whatever password")
    wrong = await login(client, "locked@example.com", "not the password")
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json()["detail"] == wrong.json()["detail"]
    assert unknown.json()["type"] == wrong.json()["type"]

    for _ in range(settings.lockout_threshold - 1):
        assert (await login(client, "locked@example.com", "not the password")).status_code == 401
    locked = await login(client, "locked@example.com", PASSWORD)
    assert locked.status_code == 429
    assert 1 <= int(locked.headers["Retry-After"]) <= settings.lockout_seconds
    assert locked.json()["detail"] == wrong.json()["detail"]

    # An unknown address is locked out just the same, so lockout does not reveal existence.
    for _ in range(settings.lockout_threshold):
        await login(client, "nobody@example.com", "whatever password")
    ghost = await login(client, "nobody@example.com", "whatever password")
    assert ghost.status_code == 429 and ghost.json()["detail"] == locked.json()["detail"]


async def test_simultaneous_wrong_guesses_get_no_more_tries_than_the_lockout_threshold(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    await register(client, "raced@example.com")
    guesses = await asyncio.gather(
        *(login(client, "raced@example.com", f"guess number {i}") for i in range(20))
    )
    statuses = [r.status_code for r in guesses]
    # Each attempt is counted before its password is hashed, so at most `threshold` were tried.
    assert statuses.count(401) <= settings.lockout_threshold
    assert statuses.count(429) >= 20 - settings.lockout_threshold
    assert set(statuses) <= {401, 429}
    assert (await login(client, "raced@example.com", PASSWORD)).status_code == 429


async def test_right_password_with_mfa_pending_does_not_use_up_attempts(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    await register(client, "steady@example.com")
    for _ in range(settings.lockout_threshold + 2):
        await signed_in(client, "steady@example.com")
    for _ in range(settings.lockout_threshold - 1):
        assert (await login(client, "steady@example.com", "wrong wrong wrong")).status_code == 401
    await signed_in(client, "steady@example.com")


async def test_failures_beyond_the_free_attempts_must_wait_a_growing_delay(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    await register(client, "slow@example.com")
    ctx = identity_ctx(app)
    ctx.settings = settings.model_copy(
        update={"lockout_threshold": 50, "login_delay_after_failures": 1}
    )
    # Five failures already counted for this account (made earlier, in the same window).
    counter = f"identity:login:acct:{email_index(ctx, 'slow@example.com')}:fail"
    await ctx.cache.incr(counter, 5, ttl=600)
    assert (await login(client, "slow@example.com", "sixth wrong guess")).status_code == 401
    response = await login(client, "slow@example.com")
    assert response.status_code == 429
    # The sixth failure asks for 2 ** (6 - 1) = 32 seconds.
    assert 16 < int(response.headers["Retry-After"]) <= 32


async def test_one_client_ip_is_locked_out_across_accounts(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    ctx = identity_ctx(app)
    ctx.settings = settings.model_copy(update={"login_ip_lockout_threshold": 4})
    statuses = [
        (await login(client, f"spray{i}@example.com", "guess guess guess")).status_code
        for i in range(6)
    ]
    assert statuses[:2] == [401, 401]
    assert statuses[-1] == 429


async def test_successful_login_resets_the_account_failure_count(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    await register(client, "reset-count@example.com")
    for _ in range(settings.lockout_threshold - 1):
        await login(client, "reset-count@example.com", "not the password")
    await signed_in(client, "reset-count@example.com")
    for _ in range(settings.lockout_threshold - 1):
        assert (await login(client, "reset-count@example.com", "nope nope nope")).status_code == 401
    await signed_in(client, "reset-count@example.com")


async def test_mfa_enrol_confirm_then_login_needs_a_code_and_recovery_codes_work_once(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await register(client, "mfa@example.com")
    tokens = await signed_in(client, "mfa@example.com")
    enrol = (await client.post(f"{API}/auth/mfa/totp/enroll", headers=bearer(tokens))).json()
    assert enrol["otpauth_uri"].startswith("otpauth://totp/")
    secret = enrol["secret"]
    wrong = await client.post(
        f"{API}/auth/mfa/totp/confirm", json={"code": "000000"}, headers=bearer(tokens)
    )
    assert wrong.status_code == 422
    confirm = await client.post(
        f"{API}/auth/mfa/totp/confirm",
        json={"code": pyotp.TOTP(secret).now()},
        headers=bearer(tokens),
    )
    assert confirm.status_code == 200, confirm.text
    recovery = confirm.json()["recovery_codes"]
    assert len(recovery) == 10

    needs_code = await login(client, "mfa@example.com")
    assert needs_code.status_code == 401
    assert needs_code.json()["type"].endswith("/mfa-required")

    ctx = identity_ctx(app)
    async with ctx.db.read() as session:
        last = await session.scalar(
            select(users.c.totp_last_step).where(users.c.id == tokens_sub(app, tokens))
        )
    code = totp_code_for_next_step(secret, last)
    assert (await login(client, "mfa@example.com", mfa_code=code)).status_code == 200
    replayed = await login(client, "mfa@example.com", mfa_code=code)
    assert replayed.status_code == 401
    assert replayed.json()["type"].endswith("/invalid-second-factor")
    assert replayed.json()["detail"].startswith("This code was already used: wait for the next")
    assert "password" not in replayed.json()["detail"]
    wrong_code = await login(client, "mfa@example.com", mfa_code=wrong_totp(secret))
    assert wrong_code.json()["type"].endswith("/invalid-second-factor")
    assert "code is wrong or was already used" in wrong_code.json()["detail"]
    # A wrong password with a code still says nothing about the code.
    bad_password = await login(
        client, "mfa@example.com", password="not-the-password-1", mfa_code=code
    )
    assert bad_password.json()["type"].endswith("/invalid-credentials")

    assert (
        await login(client, "mfa@example.com", recovery_code=recovery[0].upper())
    ).status_code == 200
    used = await login(client, "mfa@example.com", recovery_code=recovery[0])
    assert used.status_code == 401
    assert used.json()["detail"] == "The recovery code is wrong or was already used."
    assert (await login(client, "mfa@example.com", recovery_code=recovery[1])).status_code == 200


def wrong_totp(secret: str) -> str:
    """A six-digit code that is none of the codes accepted around now."""
    totp = pyotp.TOTP(secret)
    accepted = {totp.at(time.time() + drift) for drift in range(-120, 121, 30)}
    return next(c for c in (f"{n:06d}" for n in range(1_000_000)) if c not in accepted)


def tokens_sub(app: FastAPI, tokens: dict[str, Any]) -> str:
    import jwt

    sub: str = jwt.decode(tokens["access_token"], options={"verify_signature": False})["sub"]
    return sub


async def test_totp_secret_is_stored_encrypted_and_mfa_can_be_disabled(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await register(client, "mfa-off@example.com")
    tokens = await signed_in(client, "mfa-off@example.com")
    secret = (await client.post(f"{API}/auth/mfa/totp/enroll", headers=bearer(tokens))).json()[
        "secret"
    ]
    code = pyotp.TOTP(secret).now()
    codes = (
        await client.post(
            f"{API}/auth/mfa/totp/confirm", json={"code": code}, headers=bearer(tokens)
        )
    ).json()["recovery_codes"]
    ctx = identity_ctx(app)
    async with ctx.db.read() as session:
        stored = await session.scalar(
            select(users.c.totp_secret_encrypted).where(users.c.id == tokens_sub(app, tokens))
        )
    assert stored and secret not in stored

    wrong_password = await client.post(
        f"{API}/auth/mfa/totp/disable",
        json={"password": "not the password", "recovery_code": codes[0]},
        headers=bearer(tokens),
    )
    assert wrong_password.status_code == 403
    disabled = await client.post(
        f"{API}/auth/mfa/totp/disable",
        json={"password": PASSWORD, "recovery_code": codes[0]},
        headers=bearer(tokens),
    )
    assert disabled.status_code == 204
    assert (await login(client, "mfa-off@example.com")).status_code == 200


async def test_wrong_codes_when_disabling_mfa_count_towards_lockout(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    await register(client, "mfa-guess@example.com")
    tokens = await signed_in(client, "mfa-guess@example.com")
    secret = (await client.post(f"{API}/auth/mfa/totp/enroll", headers=bearer(tokens))).json()[
        "secret"
    ]
    await client.post(
        f"{API}/auth/mfa/totp/confirm",
        json={"code": pyotp.TOTP(secret).now()},
        headers=bearer(tokens),
    )
    statuses = []
    for _ in range(settings.lockout_threshold + 1):
        guess = await client.post(
            f"{API}/auth/mfa/totp/disable",
            json={"password": PASSWORD, "recovery_code": "wrong-code-0000"},
            headers=bearer(tokens),
        )
        statuses.append(guess.status_code)
    assert statuses[0] == 422
    assert statuses[-1] == 429, statuses


async def test_password_change_ends_other_sessions_but_not_this_one(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    await register(client, "change@example.com")
    here = await signed_in(client, "change@example.com")
    elsewhere = await signed_in(client, "change@example.com")
    wrong = await client.post(
        f"{API}/auth/password/change",
        json={"current_password": "not my password", "new_password": "a brand new passphrase"},
        headers=bearer(here),
    )
    assert wrong.status_code == 403
    common = await client.post(
        f"{API}/auth/password/change",
        json={"current_password": PASSWORD, "new_password": "qwertyuiop123"},
        headers=bearer(here),
    )
    assert common.status_code == 422 and common.json()["errors"][0]["field"] == "new_password"
    changed = await client.post(
        f"{API}/auth/password/change",
        json={"current_password": PASSWORD, "new_password": "a brand new passphrase"},
        headers=bearer(here),
    )
    assert changed.status_code == 204

    refresh_elsewhere = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": elsewhere["refresh_token"]}
    )
    assert refresh_elsewhere.status_code == 401
    assert (await client.get(f"{API}/users/me", headers=bearer(here))).status_code == 200
    refresh_here = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": here["refresh_token"]}
    )
    assert refresh_here.status_code == 200
    assert (await login(client, "change@example.com")).status_code == 401
    assert (await login(client, "change@example.com", "a brand new passphrase")).status_code == 200
    assert any(
        "password was changed" in str(m["Subject"])
        for m in mails_to(settings, "change@example.com")
    )


async def test_password_reset_by_mailed_token_ends_every_session(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    await register(client, "forgot@example.com")
    session = await signed_in(client, "forgot@example.com")
    unknown = await client.post(f"{API}/auth/password/forgot", json={"email": "ghost@example.com"})
    known = await client.post(f"{API}/auth/password/forgot", json={"email": "forgot@example.com"})
    assert unknown.status_code == known.status_code == 202
    assert unknown.json() == known.json()
    assert mails_to(settings, "ghost@example.com") == []

    token = token_from_last_mail(settings, "forgot@example.com", "reset token")
    weak = await client.post(
        f"{API}/auth/password/reset", json={"token": token, "new_password": "short"}
    )
    assert weak.status_code == 422
    done = await client.post(
        f"{API}/auth/password/reset",
        json={"token": token, "new_password": "another long passphrase"},
    )
    assert done.status_code == 204, done.text
    reused = await client.post(
        f"{API}/auth/password/reset",
        json={"token": token, "new_password": "yet another passphrase"},
    )
    assert reused.status_code == 422
    assert (
        await client.post(f"{API}/auth/refresh", json={"refresh_token": session["refresh_token"]})
    ).status_code == 401
    assert (await login(client, "forgot@example.com", "another long passphrase")).status_code == 200


async def test_logout_ends_this_session_and_logout_all_ends_every_session(
    client: httpx.AsyncClient,
) -> None:
    await register(client, "bye@example.com")
    one = await signed_in(client, "bye@example.com")
    two = await signed_in(client, "bye@example.com")
    three = await signed_in(client, "bye@example.com")
    assert (await client.post(f"{API}/auth/logout", headers=bearer(one))).status_code == 204
    assert (await client.get(f"{API}/users/me", headers=bearer(two))).status_code == 200
    refresh_one = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": one["refresh_token"]}
    )
    assert refresh_one.status_code == 401
    assert (await client.post(f"{API}/auth/logout-all", headers=bearer(two))).status_code == 204
    for tokens in (two, three):
        refreshed = await client.post(
            f"{API}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert refreshed.status_code == 401
    assert (await client.post(f"{API}/auth/logout", headers=bearer(three))).status_code == 401


async def test_login_rehashes_a_password_hashed_with_older_parameters(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    user = await register(client, "rehash@example.com")
    ctx = identity_ctx(app)
    async with ctx.db.read() as session:
        before = await session.scalar(select(users.c.password_hash).where(users.c.id == user["id"]))
    assert before is not None and "m=64,t=1,p=1" in before
    ctx.settings = settings.model_copy(update={"password_hash_memory_kib": 128})
    assert (await login(client, "rehash@example.com")).status_code == 200
    async with ctx.db.read() as session:
        after = await session.scalar(select(users.c.password_hash).where(users.c.id == user["id"]))
    assert after is not None and after.startswith("$argon2id$") and "m=128,t=1,p=1" in after


async def test_login_needs_a_verified_email_when_settings_say_so(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    await register(client, "unverified@example.com")
    identity_ctx(app).settings = settings.model_copy(update={"require_verified_email": True})
    refused = await login(client, "unverified@example.com")
    assert refused.status_code == 403 and refused.json()["type"].endswith("/email-not-verified")
    token = token_from_last_mail(settings, "unverified@example.com", "verification token")
    await client.post(f"{API}/auth/verify-email", json={"token": token})
    assert (await login(client, "unverified@example.com")).status_code == 200


async def test_totp_step_helper_matches_the_domain(app: FastAPI) -> None:
    assert totp_step(utcnow()) > 0


def _last_mail_text(settings: Settings, address: str) -> str:
    body = mails_to(settings, address)[-1].get_body(preferencelist=("plain",))
    assert body is not None
    text: str = body.get_content()
    return text


async def test_mails_give_the_token_and_the_exact_api_call_not_a_missing_page(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    await register(client, "mailed@example.com")
    base = settings.public_url.rstrip("/")
    token = token_from_last_mail(settings, "mailed@example.com", "verification token")
    verification = _last_mail_text(settings, "mailed@example.com")
    assert f"POST {base}/api/v1/auth/verify-email\n" in verification
    assert f'{{"token": "{token}"}}' in verification
    assert "?token=" not in verification and f"{base}/verify-email" not in verification

    await client.post(f"{API}/auth/password/forgot", json={"email": "mailed@example.com"})
    token = token_from_last_mail(settings, "mailed@example.com", "reset token")
    reset = _last_mail_text(settings, "mailed@example.com")
    assert f"POST {base}/api/v1/auth/password/reset\n" in reset
    assert f'"token": "{token}"' in reset and '"new_password"' in reset
    assert "?token=" not in reset and f"{base}/reset-password" not in reset


async def test_signing_in_with_the_code_that_confirmed_enrolment_says_to_wait_for_the_next(
    client: httpx.AsyncClient,
) -> None:
    await register(client, "mfa-same-step@example.com")
    tokens = await signed_in(client, "mfa-same-step@example.com")
    secret = (await client.post(f"{API}/auth/mfa/totp/enroll", headers=bearer(tokens))).json()[
        "secret"
    ]
    code = pyotp.TOTP(secret).now()
    confirm = await client.post(
        f"{API}/auth/mfa/totp/confirm", json={"code": code}, headers=bearer(tokens)
    )
    assert confirm.status_code == 200, confirm.text

    # Whichever step the clock is in now, the confirming code is for a step already used.
    same = await login(client, "mfa-same-step@example.com", mfa_code=code)

    assert same.status_code == 401
    assert same.json()["type"].endswith("/invalid-second-factor")
    assert same.json()["detail"] == (
        "This code was already used: wait for the next code your authenticator app shows (a new "
        "one every 30 seconds), or use a recovery code."
    )
