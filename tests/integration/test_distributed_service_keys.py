"""``ecosistema up --distributed`` provisions the API keys services present to each other: one per
callee with exactly its scopes, kept under ``data_dir`` and reused while identity accepts it,
replaced once it does not, and never created when the setting already names a key."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from ecosistema.distributed import (
    CATALOG_KEY_SCOPES,
    IDENTITY_KEY_SCOPES,
    ORDERS_KEY_SCOPES,
    ServiceKeys,
    prepare,
    shared_environment,
)
from ecosistema.identity.schemas import ApiKeyIdentity
from ecosistema.identity.service import revoke_api_key, verify_api_key
from ecosistema.platform.config import Settings
from ecosistema.platform.runtime import Runtime
from ecosistema.services import load_services
from tests.conftest import drop_test_schemas, make_settings
from tests.default_model import DefaultModelCache

SCOPES = {
    "catalog": CATALOG_KEY_SCOPES,
    "identity": IDENTITY_KEY_SCOPES,
    "orders": ORDERS_KEY_SCOPES,
}


@pytest.fixture
async def settings(
    shape: str, tmp_path: Path, default_model_cache: DefaultModelCache
) -> AsyncIterator[Settings]:
    made = make_settings(shape, tmp_path, password_hash_memory_kib=1024)
    # ``prepare`` starts every service: sales loads the default model rather than training it.
    default_model_cache.seed(made)
    yield made
    await drop_test_schemas(made)


def by_callee(keys: ServiceKeys) -> dict[str, str]:
    return {"catalog": keys.catalog, "identity": keys.identity, "orders": keys.orders}


async def identities(settings: Settings, keys: ServiceKeys) -> dict[str, ApiKeyIdentity | None]:
    runtime = Runtime(settings, load_services(["identity"]))
    await runtime.start(background=False)
    try:
        ctx = runtime.contexts["identity"]
        return {callee: await verify_api_key(ctx, key) for callee, key in by_callee(keys).items()}
    finally:
        await runtime.stop()


async def test_a_key_per_callee_with_exactly_its_scopes_kept_private_under_data_dir(
    settings: Settings,
) -> None:
    keys, _ = await prepare(settings, demo=False)
    found = await identities(settings, keys)
    for callee, identity in found.items():
        assert identity is not None, callee
        assert sorted(identity.scopes) == sorted(SCOPES[callee])
        kept = settings.data_dir / "service-keys" / f"{callee}.key"
        assert kept.read_text() == by_callee(keys)[callee]
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    # Each callee's key belongs to a service account of its own.
    assert len({identity.user_id for identity in found.values() if identity}) == 3
    env = shared_environment(settings, gateway_url="http://127.0.0.1:8000", keys=keys)
    assert env["ECOSISTEMA_IDENTITY_API_KEY"] == keys.identity
    assert env["ECOSISTEMA_ORDERS_API_KEY"] == keys.orders
    assert env["ECOSISTEMA_CATALOG_API_KEY"] == keys.catalog


async def test_kept_keys_are_reused_and_a_revoked_one_is_replaced(settings: Settings) -> None:
    first, _ = await prepare(settings, demo=False)
    again, _ = await prepare(settings, demo=False)
    assert again == first

    runtime = Runtime(settings, load_services(["identity"]))
    await runtime.start(background=False)
    try:
        ctx = runtime.contexts["identity"]
        revoked = await verify_api_key(ctx, first.identity)
        assert revoked is not None
        await revoke_api_key(ctx, key_id=revoked.key_id, actor_id=revoked.user_id)
        await runtime.drain_outboxes()
    finally:
        await runtime.stop()

    replaced, _ = await prepare(settings, demo=False)
    assert replaced.identity != first.identity
    assert (replaced.catalog, replaced.orders) == (first.catalog, first.orders)
    assert (await identities(settings, replaced))["identity"] is not None


async def test_a_configured_key_is_used_as_it_is_and_none_is_created(settings: Settings) -> None:
    configured = settings.model_copy(
        update={"identity_api_key": SecretStr("eco_configured_identity_key")}
    )
    keys, _ = await prepare(configured, demo=False)
    assert keys.identity == "eco_configured_identity_key"
    assert not (settings.data_dir / "service-keys" / "identity.key").exists()
    assert (settings.data_dir / "service-keys" / "orders.key").exists()
