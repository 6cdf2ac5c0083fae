"""How other services ask identity about users and API keys: in process, or over HTTP."""

from __future__ import annotations

from typing import Protocol
from urllib.parse import quote

import httpx

from ecosistema.identity.schemas import ApiKeyIdentity, User, WhoAmI
from ecosistema.identity.service import get_user, get_user_email, verify_api_key
from ecosistema.platform.config import Settings
from ecosistema.platform.errors import NotFound
from ecosistema.platform.http import AUTH_ERRORS_ARE_ANSWERS, service_client
from ecosistema.platform.service import ServiceContext


class IdentityClient(Protocol):
    """Identity's interface for other services."""

    async def get_user(self, user_id: str) -> User | None:
        """The user with this id, or None."""
        ...

    async def get_user_email(self, user_id: str) -> str | None:
        """The email address of the user with this id, or None."""
        ...

    async def verify_api_key(self, raw_key: str) -> ApiKeyIdentity | None:
        """Who a presented API key acts for, or None when it is not valid."""
        ...


class InProcessIdentityClient:
    """Calls identity's use cases directly, when it runs in the same process."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    async def get_user(self, user_id: str) -> User | None:
        """The user with this id, or None."""
        try:
            return await get_user(self._ctx, user_id=user_id)
        except NotFound:
            return None

    async def get_user_email(self, user_id: str) -> str | None:
        """The email address of the user with this id, or None (one column read and
        decrypted, not the whole profile)."""
        return await get_user_email(self._ctx, user_id=user_id)

    async def verify_api_key(self, raw_key: str) -> ApiKeyIdentity | None:
        """Who a presented API key acts for, or None when it is not valid."""
        return await verify_api_key(self._ctx, raw_key)


class HttpIdentityClient:
    """Calls identity over HTTP; ``credential`` (an API key with ``users:read``) authorises
    user look-ups. Identity refusing that credential, failing or being down is a 502 or 503
    naming identity (``platform.http``), never a 500 of the caller."""

    def __init__(
        self,
        base_url: str,
        *,
        credential: str | None = None,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = service_client(
            base_url,
            credential=credential,
            timeout=timeout,
            transport=transport,
            service="identity",
        )

    async def get_user(self, user_id: str) -> User | None:
        """The user with this id, or None."""
        response = await self._http.get(f"/users/{quote(user_id, safe='')}")
        # 422: an id identity could never have issued (too long).
        if response.status_code in (404, 422):
            return None
        response.raise_for_status()
        return User.model_validate(response.json())

    async def get_user_email(self, user_id: str) -> str | None:
        """The email address of the user with this id, or None."""
        user = await self.get_user(user_id)
        return None if user is None else str(user.email)

    async def verify_api_key(self, raw_key: str) -> ApiKeyIdentity | None:
        """Asks identity who the key is, presenting the key itself; None when it is refused."""
        response = await self._http.get(
            "/auth/whoami",
            headers={"Authorization": f"Bearer {raw_key}"},
            extensions={AUTH_ERRORS_ARE_ANSWERS: True},
        )
        if response.status_code in (401, 403):
            return None
        response.raise_for_status()
        me = WhoAmI.model_validate(response.json())
        if me.kind != "api_key" or me.api_key_id is None:
            return None
        return ApiKeyIdentity(
            key_id=me.api_key_id, user_id=me.subject, role=me.role, scopes=me.scopes
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()


def http_client(settings: Settings) -> HttpIdentityClient:
    """The HTTP client the runtime uses when identity runs in another process."""
    if not settings.identity_url:
        raise LookupError("identity is not hosted here and ECOSISTEMA_IDENTITY_URL is not set")
    key = settings.identity_api_key
    return HttpIdentityClient(
        settings.identity_url, credential=key.get_secret_value() if key else None
    )
