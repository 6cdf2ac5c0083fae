"""Helpers shared by identity's integration and end-to-end tests (no tests here)."""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path
from typing import Any

import httpx
import pyotp
from fastapi import FastAPI

from ecosistema.identity.domain import totp_step
from ecosistema.platform.config import Settings
from ecosistema.platform.db import utcnow
from ecosistema.platform.service import ServiceContext
from tests.conftest import make_settings

PASSWORD = "violet kayak river"
API = "/api/v1"

# argon2id at a cost tests can afford; production keeps OWASP's parameters.
FAST_HASHING: dict[str, object] = {
    "password_hash_memory_kib": 64,
    "password_hash_time_cost": 1,
    "password_hash_parallelism": 1,
}


def fast_settings(shape: str, data_dir: Path, **overrides: object) -> Settings:
    """Test settings for a shape, with cheap password hashing."""
    return make_settings(shape, data_dir, **{**FAST_HASHING, **overrides})


def identity_ctx(app: FastAPI) -> ServiceContext:
    ctx: ServiceContext = app.state.runtime.contexts["identity"]
    return ctx


def mails_to(settings: Settings, address: str) -> list[email.message.EmailMessage]:
    """Messages the file mailer wrote to ``address``, oldest first."""
    folder = settings.data_dir / "mail"
    found = []
    for path in sorted(folder.glob("*.eml")) if folder.exists() else []:
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if address.lower() in str(message["To"]).lower():
            found.append(message)
    return found  # type: ignore[return-value]


def token_from_last_mail(settings: Settings, address: str, label: str) -> str:
    """The token after ``label`` (e.g. 'verification token') in the newest mail to ``address``."""
    messages = mails_to(settings, address)
    assert messages, f"no mail to {address}"
    body = messages[-1].get_body(preferencelist=("plain",))
    assert body is not None
    match = re.search(rf"{label}: (\S+)", body.get_content(), re.IGNORECASE)
    assert match, f"no {label} in the mail"
    return match.group(1)


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def register(client: httpx.AsyncClient, email_address: str, **extra: Any) -> dict[str, Any]:
    response = await client.post(
        f"{API}/auth/register", json={"email": email_address, "password": PASSWORD, **extra}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def login(
    client: httpx.AsyncClient, email_address: str, password: str = PASSWORD, **extra: Any
) -> httpx.Response:
    return await client.post(
        f"{API}/auth/login", json={"email": email_address, "password": password, **extra}
    )


async def signed_in(
    client: httpx.AsyncClient, email_address: str, password: str = PASSWORD
) -> dict[str, Any]:
    response = await login(client, email_address, password)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def totp_code_for_next_step(secret: str, last_step: int | None) -> str:
    """A valid code for a step not used yet: the current one, else the next (drift window)."""
    now_step = totp_step(utcnow())
    step = now_step if last_step is None or last_step < now_step else now_step + 1
    return pyotp.TOTP(secret).at(step * 30)
