"""Identity: users, authentication, MFA, sessions, roles, profiles, API keys and audit."""

from __future__ import annotations

from pathlib import Path

from ecosistema.identity import service as _service
from ecosistema.identity.api import root_router, router
from ecosistema.identity.client import InProcessIdentityClient
from ecosistema.identity.models import metadata, outbox
from ecosistema.platform.auth import Principal
from ecosistema.platform.service import EncryptedColumn, Job, Service, ServiceContext


async def _on_start(ctx: ServiceContext) -> None:
    from ecosistema.platform.mail import create_mailer

    ctx.extras["mailer"] = create_mailer(ctx.settings)
    await _service.ensure_signing_key(ctx)

    async def _jwks() -> dict[str, list[dict[str, str]]]:
        return await _service.jwks(ctx)

    async def _resolve_api_key(raw_key: str) -> Principal | None:
        found = await _service.verify_api_key(ctx, raw_key)
        if found is None:
            return None
        return Principal.for_api_key(found.user_id, found.role, found.scopes, found.key_id)

    ctx.runtime.verifier.add_local_jwks(_jwks)
    ctx.runtime.verifier.set_api_key_resolver(_resolve_api_key)


descriptor = Service(
    name="identity",
    metadata=metadata,
    outbox=outbox,
    migrations=Path(__file__).parent / "migrations",
    router=router,
    root_router=root_router,
    jobs=(Job("rotate-signing-key", 3600.0, _service.rotate_signing_key_when_due),),
    encrypted_columns=(
        EncryptedColumn("users", "email_encrypted"),
        EncryptedColumn("users", "totp_secret_encrypted"),
        EncryptedColumn("users", "totp_pending_secret_encrypted"),
        EncryptedColumn("profiles", "name_encrypted", id_column="user_id"),
        EncryptedColumn("profiles", "phone_encrypted", id_column="user_id"),
        EncryptedColumn("profiles", "addresses_encrypted", id_column="user_id"),
        EncryptedColumn("signing_keys", "private_key_encrypted"),
    ),
    on_start=_on_start,
    seed_demo=_service.seed_demo,
    make_client=InProcessIdentityClient,
)

create_admin = _service.create_admin
seed_demo = _service.seed_demo
rotate_signing_key = _service.rotate_signing_key

__all__ = ["create_admin", "descriptor", "rotate_signing_key", "seed_demo"]
