from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from ecosistema.platform.config import InvalidSettingsError, Settings, load_settings


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
        master_key=SecretStr("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2U="),
        blind_index_key=SecretStr("00" * 32),
        database_url="postgresql+asyncpg://app:hunter2@db:5432/eco",
        cache_url="redis://:redispass@cache:6379/0",
    )
    masked = settings.masked()
    text = repr(masked)
    assert "hunter2" not in text
    assert "redispass" not in text
    assert "c2VjcmV0" not in text
    assert "00" * 32 not in text
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


@pytest.mark.parametrize(
    ("variable", "value", "rule"),
    [
        ("ECOSISTEMA_ACCESS_TOKEN_TTL_SECONDS", "-5", "must be at least 1"),
        ("ECOSISTEMA_REFRESH_TOKEN_TTL_SECONDS", "0", "must be at least 60"),
        ("ECOSISTEMA_ORDERS_RESERVATION_TTL_SECONDS", "0", "must be at least 60"),
        ("ECOSISTEMA_DATABASE_POOL_SIZE", "0", "must be at least 1"),
        ("ECOSISTEMA_GATEWAY_AUTH_RATE", "0", "must be greater than 0"),
        ("ECOSISTEMA_GATEWAY_CACHE_SECONDS", "nan", "must be a finite number"),
        ("ECOSISTEMA_DISTRIBUTED_BASE_PORT", "70000", "must be at most 65535"),
        ("ECOSISTEMA_PASSWORD_HASH_TIME_COST", "0", "must be at least 1"),
        ("ECOSISTEMA_MAX_BODY_BYTES", "abc", "must be a whole number"),
        (
            "ECOSISTEMA_LOG_LEVEL",
            "bogus",
            "must be DEBUG, INFO, WARNING, ERROR or CRITICAL (any case)",
        ),
        ("ECOSISTEMA_ENVIRONMENT", "prod", "must be development, test or production"),
        ("ECOSISTEMA_ORDERS_DEFAULT_COUNTRY", "Spain", "must be a 2-letter ISO 3166"),
        (
            "ECOSISTEMA_TRUSTED_PROXIES",
            '["10.0.0.0/8", "proxy.local"]',
            "'proxy.local' is not an IP address or CIDR network",
        ),
    ],
)
def test_a_nonsense_setting_is_refused_naming_its_variable_value_and_rule(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str, rule: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(variable, value)
    with pytest.raises(InvalidSettingsError) as refused:
        load_settings()
    [problem] = refused.value.problems
    assert problem.startswith(f"{variable}={value!r}: {rule}")


def test_every_bad_setting_gets_its_own_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ECOSISTEMA_ENVIRONMENT", "prod")
    monkeypatch.setenv("ECOSISTEMA_LOCKOUT_SECONDS", "-1")
    with pytest.raises(InvalidSettingsError) as refused:
        load_settings()
    assert refused.value.problems == [
        "ECOSISTEMA_ENVIRONMENT='prod': must be development, test or production",
        "ECOSISTEMA_LOCKOUT_SECONDS='-1': must be at least 1",
    ]


def test_a_bad_secret_or_url_password_is_never_shown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ECOSISTEMA_PAYMENT_WEBHOOK_SECRETS", '{"stripe": 42, "x": ["whsec_1"]}')
    monkeypatch.setenv("ECOSISTEMA_CATALOG_URL", "ftp://svc:hunter2@catalog:8000")
    with pytest.raises(InvalidSettingsError) as refused:
        load_settings()
    text = "\n".join(refused.value.problems)
    assert "whsec_1" not in text
    assert "hunter2" not in text
    assert "ECOSISTEMA_PAYMENT_WEBHOOK_SECRETS['x']='**********'" in text
    assert "ECOSISTEMA_CATALOG_URL='ftp://svc:****@catalog:8000'" in text


def test_a_bad_value_in_the_env_file_says_it_comes_from_there(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ECOSISTEMA_ENVIRONMENT", raising=False)
    (tmp_path / ".env").write_text("ECOSISTEMA_ENVIRONMENT=prod\n")
    with pytest.raises(InvalidSettingsError) as refused:
        load_settings()
    assert refused.value.problems == [
        "ECOSISTEMA_ENVIRONMENT='prod' (in .env): must be development, test or production"
    ]


def test_a_list_setting_that_is_not_json_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ECOSISTEMA_CORS_ORIGINS", "https://shop.example")
    with pytest.raises(InvalidSettingsError) as refused:
        load_settings()
    assert refused.value.problems == [
        "ECOSISTEMA_CORS_ORIGINS='https://shop.example': must be JSON (a list or an object)"
    ]


def test_log_level_is_case_insensitive() -> None:
    assert Settings(log_level="warning").log_level == "WARNING"
    assert Settings(log_level=" Debug ").log_level == "DEBUG"
    assert Settings(log_level="warn").log_level == "WARNING"


def test_argon2_memory_must_cover_its_lanes() -> None:
    with pytest.raises(ValidationError, match="at least 8 times"):
        Settings(password_hash_memory_kib=16, password_hash_parallelism=4)
    assert Settings(password_hash_memory_kib=64, password_hash_parallelism=1)


def test_the_small_values_tests_and_benchmarks_use_are_allowed() -> None:
    Settings(
        jwks_cache_seconds=0.0,
        jwks_refresh_min_interval_seconds=0.0,
        signing_key_recheck_seconds=0.05,
        webhooks_dispatch_interval_seconds=0.05,
        gateway_auth_rate=0.01,
        gateway_auth_burst=1,
        password_hash_memory_kib=64,
        password_hash_time_cost=1,
        max_body_bytes=64,
        catalog_cache_seconds=0,
        lockout_threshold=2,
        login_delay_after_failures=0,
        login_ip_lockout_threshold=4,
        orders_reservation_ttl_seconds=60,
        catalog_default_currency="usd",
    )


KEY = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("environment", "line"),
    [
        (
            {"ECOSISTEMA_MASTER_KEY": "short-but-secret"},
            "ECOSISTEMA_MASTER_KEY='**********': must be 32 random bytes, as 64 hex digits or "
            "base64",
        ),
        (
            {"ECOSISTEMA_MASTER_KEY": KEY, "ECOSISTEMA_BLIND_INDEX_KEY": "short-but-secret"},
            "ECOSISTEMA_BLIND_INDEX_KEY='**********': must be 32 random bytes",
        ),
        (
            {"ECOSISTEMA_BLIND_INDEX_KEY": "ab" * 31},
            "ECOSISTEMA_BLIND_INDEX_KEY='**********': must be 32 random bytes",
        ),
        (
            {"ECOSISTEMA_MASTER_KEY": KEY},
            "ECOSISTEMA_BLIND_INDEX_KEY is required when ECOSISTEMA_MASTER_KEY is set",
        ),
        (
            {"ECOSISTEMA_PAYMENT_PROVIDER": "stripe"},
            "ECOSISTEMA_STRIPE_API_KEY is required when ECOSISTEMA_PAYMENT_PROVIDER=stripe",
        ),
        (
            {"ECOSISTEMA_PAYMENT_PROVIDER": "stripe", "ECOSISTEMA_STRIPE_API_KEY": "  "},
            "ECOSISTEMA_STRIPE_API_KEY is required when ECOSISTEMA_PAYMENT_PROVIDER=stripe",
        ),
        (
            {
                "ECOSISTEMA_MASTER_KEY": KEY,
                "ECOSISTEMA_BLIND_INDEX_KEY": KEY[::-1],
                "ECOSISTEMA_MASTER_KEY_ID": "prod key",
            },
            "ECOSISTEMA_MASTER_KEY_ID='prod key': must be 1-64 letters, digits, '-' or '_'",
        ),
        (
            {
                "ECOSISTEMA_MASTER_KEY": KEY,
                "ECOSISTEMA_BLIND_INDEX_KEY": KEY[::-1],
                "ECOSISTEMA_MASTER_KEY_ID": "mk2",
                "ECOSISTEMA_OLD_MASTER_KEYS": '{"mk1": "short-but-secret"}',
            },
            "ECOSISTEMA_OLD_MASTER_KEYS='**********': the key 'mk1' must be 32 random bytes",
        ),
        (
            {
                "ECOSISTEMA_MASTER_KEY": KEY,
                "ECOSISTEMA_BLIND_INDEX_KEY": KEY[::-1],
                "ECOSISTEMA_OLD_MASTER_KEYS": f'{{"mk.1": "{KEY}"}}',
            },
            "ECOSISTEMA_OLD_MASTER_KEYS='**********': key id 'mk.1' is not a valid key id",
        ),
        (
            {
                "ECOSISTEMA_MASTER_KEY": KEY,
                "ECOSISTEMA_BLIND_INDEX_KEY": KEY[::-1],
                "ECOSISTEMA_OLD_MASTER_KEYS": f'{{"mk1": "{KEY[::-1]}"}}',
            },
            "ECOSISTEMA_OLD_MASTER_KEYS has a key under 'mk1', the id of ECOSISTEMA_MASTER_KEY",
        ),
    ],
)
def test_key_settings_the_keyring_would_refuse_are_refused_at_load_without_showing_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, environment: dict[str, str], line: str
) -> None:
    monkeypatch.chdir(tmp_path)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(InvalidSettingsError) as refused:
        load_settings()
    [problem] = refused.value.problems
    assert problem.startswith(line)
    assert "short-but-secret" not in problem
    assert KEY not in problem and KEY[::-1] not in problem


@pytest.mark.parametrize(
    "material",
    [
        "0123456789abcdef" * 4,  # hex
        "ASNFZ4mrze8BI0VniavN7wEjRWeJq83vASNFZ4mrze8=",  # base64
        "ASNFZ4mrze8BI0VniavN7wEjRWeJq83vASNFZ4mrze8",  # URL-safe base64 without padding
    ],
)
def test_well_formed_key_settings_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, material: str
) -> None:
    from ecosistema.platform.crypto import load_cipher

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ECOSISTEMA_MASTER_KEY", material)
    monkeypatch.setenv("ECOSISTEMA_BLIND_INDEX_KEY", f"  {material}  ")
    monkeypatch.setenv("ECOSISTEMA_OLD_MASTER_KEYS", f'{{"mk0": "{material}"}}')
    settings = load_settings()
    assert load_cipher(settings).keyring.key_ids == ("mk1", "mk0")


def test_a_blank_master_key_means_the_key_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ECOSISTEMA_MASTER_KEY", "  ")
    assert load_settings().master_key is not None


@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        (
            "ECOSISTEMA_MAILER_URL",
            "smpt://shop:hunter2@mail.example.com:587",
            "ECOSISTEMA_MAILER_URL='smpt://shop:****@mail.example.com:587': must start with "
            "file://, smtp:// or smtps://",
        ),
        (
            "ECOSISTEMA_MAILER_URL",
            "smtp://shop:hunter2@mail.example.com:587?starttls=maybe",
            "ECOSISTEMA_MAILER_URL='smtp://shop:****@mail.example.com:587?starttls=maybe': is "
            "not usable: starttls must be true or false, not 'maybe'",
        ),
        (
            "ECOSISTEMA_MAILER_URL",
            "smtp://shop:hunter2@",
            "ECOSISTEMA_MAILER_URL='smtp://shop:****@': is not usable: the SMTP URL names no host",
        ),
        (
            "ECOSISTEMA_BUS_URL",
            "nast://bus:hunter2@nats:4222",
            "ECOSISTEMA_BUS_URL='nast://bus:****@nats:4222': must start with memory://, nats://, "
            "tls://, redis://, rediss:// or kafka://",
        ),
        (
            "ECOSISTEMA_CACHE_URL",
            "redis2://cache:hunter2@redis:6379/0",
            "ECOSISTEMA_CACHE_URL='redis2://cache:****@redis:6379/0': must start with memory://, "
            "redis://, rediss:// or unix://",
        ),
        (
            "ECOSISTEMA_DATABASE_URL",
            "mysql://shop:hunter2@db/shop",
            "ECOSISTEMA_DATABASE_URL='mysql://shop:****@db/shop': must be a "
            "sqlite+aiosqlite:///path or postgresql+asyncpg://user@host/database URL",
        ),
        (
            "ECOSISTEMA_DATABASE_URL",
            "postgresql://shop:hunter2@db/shop",
            "ECOSISTEMA_DATABASE_URL='postgresql://shop:****@db/shop': must be a",
        ),
        (
            "ECOSISTEMA_DATABASE_URL",
            "not a url",
            "ECOSISTEMA_DATABASE_URL=",
        ),
        (
            "ECOSISTEMA_DATABASE_URLS",
            '{"orders": "sqlite:///orders.db"}',
            "ECOSISTEMA_DATABASE_URLS=",
        ),
    ],
)
def test_a_url_no_backend_takes_is_refused_at_load_password_hidden(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str, line: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(variable, value)
    with pytest.raises(InvalidSettingsError) as refused:
        load_settings()
    [problem] = refused.value.problems
    assert problem.startswith(line)
    assert "hunter2" not in problem


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ECOSISTEMA_MAILER_URL", "smtps://shop:pw@mail.example.com?timeout=10"),
        ("ECOSISTEMA_MAILER_URL", "file:///var/spool/shop-mail"),
        ("ECOSISTEMA_BUS_URL", "kafka://broker:9092"),
        ("ECOSISTEMA_BUS_URL", "tls://nats:4222"),
        ("ECOSISTEMA_CACHE_URL", "unix:///run/redis.sock"),
    ],
)
def test_urls_the_backends_take_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(variable, value)
    assert getattr(load_settings(), variable.removeprefix("ECOSISTEMA_").lower()) == value


def test_a_model_registry_url_fsspec_cannot_open_is_refused_at_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ECOSISTEMA_ML_REGISTRY_URL", "s4://models:hunter2@bucket/models")
    with pytest.raises(InvalidSettingsError) as refused:
        load_settings()
    assert refused.value.problems == [
        "ECOSISTEMA_ML_REGISTRY_URL='s4://models:****@bucket/models': s4:// is not a storage "
        "protocol: give a path or a URL such as s3://bucket/models"
    ]
    monkeypatch.setenv("ECOSISTEMA_ML_REGISTRY_URL", "memory://models")
    assert load_settings().ml_registry_url == "memory://models"
