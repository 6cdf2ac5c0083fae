from pathlib import Path

from pydantic import SecretStr

from ecosistema.platform.config import Settings


def test_each_service_gets_its_own_sqlite_file_under_the_data_dir() -> None:
    settings = Settings(data_dir=Path("/srv/eco"))
    assert settings.database_url_for("identity") == "sqlite+aiosqlite:////srv/eco/identity.db"
    assert settings.database_url_for("catalog") == "sqlite+aiosqlite:////srv/eco/catalog.db"


def test_a_per_service_database_url_overrides_the_default() -> None:
    settings = Settings(
        database_url="postgresql+asyncpg://app@db/eco",
        database_urls={"identity": "postgresql+asyncpg://id@iddb/identity"},
    )
    assert settings.database_url_for("identity") == "postgresql+asyncpg://id@iddb/identity"
    assert settings.database_url_for("catalog") == "postgresql+asyncpg://app@db/eco"


def test_settings_come_from_prefixed_environment_variables(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ECOSISTEMA_BUS_URL", "nats://10.0.0.5:4222")
    monkeypatch.setenv("ECOSISTEMA_DATABASE_URLS", '{"identity": "sqlite+aiosqlite:///x.db"}')
    settings = Settings()
    assert settings.bus_url == "nats://10.0.0.5:4222"
    assert settings.database_urls == {"identity": "sqlite+aiosqlite:///x.db"}


def test_masked_settings_hide_secrets_and_url_passwords() -> None:
    settings = Settings(
        master_key=SecretStr("c2VjcmV0"),
        database_url="postgresql+asyncpg://app:hunter2@db:5432/eco",
        cache_url="redis://:redispass@cache:6379/0",
    )
    masked = settings.masked()
    text = repr(masked)
    assert "hunter2" not in text
    assert "redispass" not in text
    assert "c2VjcmV0" not in text
    assert masked["master_key"] == "**********"
    assert masked["database_url"] == "postgresql+asyncpg://app:****@db:5432/eco"


def test_masked_service_url_lists_keep_every_instance_and_hide_each_password() -> None:
    settings = Settings(catalog_url="http://a:pw1@cat-1:8101,http://b:pw2@cat-2:8101")
    masked = settings.masked()["catalog_url"]
    assert masked == "http://a:****@cat-1:8101,http://b:****@cat-2:8101"


def test_every_setting_is_documented_for_operators() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    missing = [
        f"ECOSISTEMA_{name.upper()}"
        for name in Settings.model_fields
        if f"`ECOSISTEMA_{name.upper()}`" not in doc
    ]
    assert not missing, f"undocumented settings: {missing}"
