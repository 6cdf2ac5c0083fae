"""Settings: one object, from ``ECOSISTEMA_*`` environment variables and an optional ``.env``."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceParseError

from ecosistema.platform.proxies import proxy_networks

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
ENV_PREFIX = "ECOSISTEMA_"
ENV_FILE = ".env"


class Settings(BaseSettings):
    """Every setting has a safe default for the embedded shape (one process, SQLite, in memory)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=ENV_FILE,
        env_file_encoding="utf-8",
        extra="ignore",
        # ``inf`` or ``nan`` is never a sensible duration, size or threshold.
        allow_inf_nan=False,
    )

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path("data")
    public_url: str = "http://127.0.0.1:8000"

    # Persistence. ``database_url`` is the default for every service: a SQLite URL template or a
    # PostgreSQL URL (each service then lives in its own schema). ``database_urls`` overrides it
    # per service, e.g. ECOSISTEMA_DATABASE_URLS='{"identity": "postgresql+asyncpg://..."}'.
    database_url: str = "sqlite+aiosqlite:///{data_dir}/{service}.db"
    database_urls: dict[str, str] = Field(default_factory=dict)
    database_pool_size: int = Field(default=10, ge=1, le=1000)
    database_echo: bool = False

    database_schema_prefix: str = ""

    bus_url: str = "memory://"
    bus_stream: str = "ecosistema"
    cache_url: str = "memory://"
    cache_prefix: str = "eco:"

    # Security.
    master_key: SecretStr | None = None
    master_key_id: str = "mk1"
    old_master_keys: dict[str, SecretStr] = Field(default_factory=dict)
    # Keys the blind indexes (exact-match lookups on encrypted fields) are computed with; it
    # never rotates with the master key. Required when ``master_key`` is set.
    blind_index_key: SecretStr | None = None
    jwt_issuer: str = "ecosistema"
    jwt_audience: str = "ecosistema-api"
    access_token_ttl_seconds: int = Field(default=900, ge=1, le=86_400)
    refresh_token_ttl_seconds: int = Field(default=30 * 86_400, ge=60, le=366 * 86_400)
    signing_key_rotation_days: int = Field(default=30, ge=1, le=3650)
    # How stale identity's idea of the active signing key may be: a rotation made by another
    # process (``ecosistema keys rotate``) is used for new tokens within this many seconds.
    signing_key_recheck_seconds: float = Field(default=10.0, gt=0, le=3600)
    # Where other processes reach identity: a base URL per instance, comma-separated.
    identity_url: str | None = None
    # The API key (``users:read``) processes without identity present to look users up, e.g.
    # orders reading a customer's email at checkout.
    identity_api_key: SecretStr | None = None
    # Verifiers re-read identity's JWKS this often, and at most once per interval on an unknown kid.
    jwks_cache_seconds: float = Field(default=300.0, ge=0, le=86_400)
    jwks_refresh_min_interval_seconds: float = Field(default=5.0, ge=0, le=86_400)
    lockout_threshold: int = Field(default=10, ge=1)
    lockout_seconds: int = Field(default=900, ge=1)
    login_delay_after_failures: int = Field(default=3, ge=0)
    # Failed logins from one client IP (across accounts) before that IP is locked out.
    login_ip_lockout_threshold: int = Field(default=50, ge=1)
    # Login is refused until the email address is verified.
    require_verified_email: bool = False
    # argon2id cost; the defaults are OWASP's (19 MiB, 2 passes, 1 lane). Lower only in tests.
    password_hash_memory_kib: int = Field(default=19_456, ge=8, le=4 * 1024 * 1024)
    password_hash_time_cost: int = Field(default=2, ge=1, le=100)
    password_hash_parallelism: int = Field(default=1, ge=1, le=64)
    # Proxies (IPs or CIDR networks) whose X-Forwarded-For is believed for the client IP.
    trusted_proxies: list[str] = Field(default_factory=list)

    # HTTP.
    max_body_bytes: int = Field(default=1_048_576, ge=1)
    cors_origins: list[str] = Field(default_factory=list)

    # Gateway. ``gateway_secret`` signs the principal header the gateway adds for services
    # (HMAC-SHA256); without it the gateway still authenticates but passes no principal on.
    gateway_secret: SecretStr | None = None
    gateway_routes: Path | None = None
    # ``ecosistema up`` serves through the gateway: its rate limits (overrides of the route
    # table's ``rate_limits``: anonymous, authenticated, roles, enabled), the stricter bucket on
    # the auth endpoints, and the response cache for public catalog reads.
    gateway_rate_limits: dict[str, Any] = Field(default_factory=dict)
    gateway_auth_rate: float = Field(default=1.0, gt=0)
    gateway_auth_burst: int = Field(default=10, ge=1)
    gateway_cache_seconds: float = Field(default=60.0, ge=0)
    gateway_cache_max_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    gateway_access_log: bool = True

    # ``ecosistema up --distributed``: processes per service (default 1; e.g.
    # ECOSISTEMA_DISTRIBUTED_REPLICAS='{"catalog": 2}') and the first of the consecutive ports
    # the service processes listen on.
    distributed_replicas: dict[str, int] = Field(default_factory=dict)
    distributed_base_port: int = Field(default=8100, ge=1, le=65_535)

    # Mail: ``file://`` writes each message under ``{data_dir}/mail``; ``smtp://host:port``.
    mailer_url: str = "file://"
    mail_from: str = "Ecosistema <no-reply@ecosistema.local>"

    # Telemetry.
    # Case-insensitive; stored upper-case.
    log_level: LogLevel = "INFO"
    log_json: bool = True
    otlp_endpoint: str | None = None
    service_name: str = "ecosistema"

    # Machine learning: where model versions live (a path or any fsspec URL), and the PSI above
    # which drift raises an alert.
    ml_registry_url: str = "{data_dir}/models"
    ml_drift_threshold: float = Field(default=0.2, gt=0)
    # Drift is not alerted on fewer leads than this (PSI over a few dozen rows is noise).
    ml_drift_min_rows: int = Field(default=200, ge=1)
    # A training run with no result this many seconds after it started (its process died) is
    # settled as failed. Replicas starting on an empty registry elect one trainer with a lease in
    # the database that lasts ``ml_lease_seconds`` unless its holder renews it.
    ml_run_timeout_seconds: float = Field(default=3600.0, gt=0)
    ml_lease_seconds: float = Field(default=60.0, gt=0)

    # Sales. A new install trains the default lead-scoring model on the bundled data at first
    # start (``sales_train_default_model``); the serving version is re-read and stale leads
    # re-scored every ``sales_rescore_interval_seconds``; closed leads retrain the model every
    # ``sales_retrain_interval_seconds`` once there are ``sales_retrain_min_rows`` of them.
    # ``sales_macro_indicators`` is the current economic context (``euribor3m``, ...) the model
    # scores every lead in; empty means the latest values in the model's training data.
    sales_train_default_model: bool = True
    sales_rescore_interval_seconds: float = Field(default=30.0, gt=0)
    sales_rescore_batch_size: int = Field(default=1000, ge=1, le=100_000)
    sales_retrain_interval_seconds: float = Field(default=86_400.0, gt=0)
    sales_retrain_min_rows: int = Field(default=200, ge=1)
    sales_macro_indicators: dict[str, float] = Field(default_factory=dict)
    sales_url: str | None = None

    # Catalog. Reads are cached this many seconds (0 turns the read cache off); prices are shown
    # tax-inclusive or not per sales channel (``channel_prices_include_tax`` overrides the
    # default for named channels, e.g. {"b2b": false}).
    catalog_cache_seconds: float = Field(default=300.0, ge=0)
    catalog_default_currency: str = "EUR"
    catalog_low_stock_threshold: int = Field(default=5, ge=0)
    catalog_reservation_sweep_seconds: float = Field(default=30.0, gt=0)
    catalog_import_batch_size: int = Field(default=1000, ge=1, le=100_000)
    sales_channel: str = "web"
    prices_include_tax: bool = True
    channel_prices_include_tax: dict[str, bool] = Field(default_factory=dict)
    # Where other processes reach catalog (a base URL per instance, comma-separated, like every
    # ``<service>_url``: calls are balanced over them), and the API key (``inventory:write``,
    # ``catalog:write``) they present for quotes and reservations.
    catalog_url: str | None = None
    catalog_api_key: SecretStr | None = None

    # Orders. Checkout holds stock this long before an unpaid order is cancelled; the sweeper
    # looks for such orders this often. Carts without a country are taxed as this country.
    orders_reservation_ttl_seconds: int = Field(default=900, ge=60, le=7 * 86_400)
    orders_sweep_interval_seconds: float = Field(default=30.0, gt=0)
    orders_default_country: str = "ES"
    orders_number_prefix: str = "ORD-"
    orders_url: str | None = None
    # The API key (``orders:read_all``) processes without orders present to read any order, e.g.
    # payments reading the order it charges.
    orders_api_key: SecretStr | None = None
    # Mail to buyers (order confirmation, shipping, cancellation, refund) through the mailer of
    # ``mailer_url``, from ``orders_email_from`` (unset: ``mail_from``'s address under
    # ``seller_name``); queued mail is sent every ``orders_email_interval_seconds``. The link to
    # the order is ``orders_email_order_url`` with ``{public_url}``, ``{order_id}`` and
    # ``{number}`` filled in: point it at the storefront's order page.
    orders_emails: bool = True
    orders_email_from: str | None = None
    orders_email_interval_seconds: float = Field(default=2.0, gt=0, le=3600)
    orders_email_order_url: str = "{public_url}/api/v1/orders/{order_id}"

    # Payments. ``payment_provider`` is used for new payments: the built-in ``sandbox`` (no money
    # moves) or ``stripe`` (needs ``stripe_api_key``). Incoming provider webhooks are accepted
    # only for providers with a secret in ``payment_webhook_secrets`` ({"stripe": "whsec_..."}).
    # The seller's data is printed on every invoice and credit note.
    payment_provider: Literal["sandbox", "stripe"] = "sandbox"
    stripe_api_key: SecretStr | None = None
    stripe_api_base: str = "https://api.stripe.com"
    payment_webhook_secrets: dict[str, SecretStr] = Field(default_factory=dict)
    payment_webhook_tolerance_seconds: int = Field(default=300, ge=1, le=86_400)
    seller_name: str = "Ecosistema Demo Shop"
    seller_address: str = "Calle Mayor 1, 28013 Madrid, ES"
    seller_tax_id: str = "ESB00000000"
    payments_url: str | None = None

    # Webhooks. Due deliveries are sent every ``webhooks_dispatch_interval_seconds``, at most
    # ``webhooks_max_concurrency`` at a time, each attempt cut after ``webhooks_timeout_seconds``;
    # a delivery is retried with backoff for ``webhooks_retry_window_seconds``, and a
    # subscription whose deliveries keep failing that long is disabled. Loopback and private
    # targets are refused in production unless ``webhooks_allow_private_targets`` is true (unset:
    # allowed outside production).
    webhooks_dispatch_interval_seconds: float = Field(default=1.0, gt=0)
    webhooks_max_concurrency: int = Field(default=8, ge=1, le=256)
    webhooks_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    webhooks_retry_window_seconds: int = Field(default=86_400, ge=60)
    webhooks_secret_overlap_seconds: int = Field(default=86_400, ge=0, le=7 * 86_400)
    webhooks_retention_days: int = Field(default=30, ge=1)
    webhooks_allow_private_targets: bool | None = None

    def ml_registry_location(self) -> str:
        """The model registry URL with ``{data_dir}`` filled in."""
        return self.ml_registry_url.format(data_dir=self.data_dir.as_posix())

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        level = value.strip().upper()
        level = "WARNING" if level == "WARN" else level
        if level not in get_args(LogLevel):
            raise ValueError(f"must be {_one_of(get_args(LogLevel))} (any case)")
        return level

    @field_validator("catalog_default_currency", "orders_default_country", mode="before")
    @classmethod
    def _iso_code(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            return value
        code = value.strip().upper()
        letters = 3 if info.field_name == "catalog_default_currency" else 2
        if len(code) != letters or not code.isascii() or not code.isalpha():
            what = "ISO 4217 currency code (EUR)" if letters == 3 else "ISO 3166 country code (ES)"
            raise ValueError(f"must be a {letters}-letter {what}")
        return code

    @model_validator(mode="after")
    def _argon2_memory_covers_its_lanes(self) -> Settings:
        # argon2 needs 8 KiB of memory per lane; a smaller setting would fail at the first hash.
        if self.password_hash_memory_kib < 8 * self.password_hash_parallelism:
            raise ValueError(
                f"ECOSISTEMA_PASSWORD_HASH_MEMORY_KIB={self.password_hash_memory_kib}: must be at "
                "least 8 times ECOSISTEMA_PASSWORD_HASH_PARALLELISM "
                f"({8 * self.password_hash_parallelism})"
            )
        return self

    @field_validator("master_key", "blind_index_key")
    @classmethod
    def _key_material(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        # The same parser the keyring uses, so a key that passes here is one it accepts.
        from ecosistema.platform.crypto import KEY_FORMAT_RULE, KeyConfigurationError, parse_key

        if value is None or not value.get_secret_value().strip():
            return value
        try:
            parse_key(value.get_secret_value(), name=str(info.field_name))
        except KeyConfigurationError:
            raise ValueError(KEY_FORMAT_RULE) from None
        return value

    @field_validator("master_key_id")
    @classmethod
    def _master_key_id(cls, value: str) -> str:
        from ecosistema.platform.crypto import is_key_id

        if not is_key_id(value):
            raise ValueError("must be 1-64 letters, digits, '-' or '_'")
        return value

    @field_validator("old_master_keys")
    @classmethod
    def _old_master_keys(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        from ecosistema.platform.crypto import (
            KEY_FORMAT_RULE,
            KEY_ID_RULE,
            KeyConfigurationError,
            is_key_id,
            parse_key,
        )

        for kid, secret in value.items():
            if not is_key_id(kid):
                raise ValueError(f"key id {kid!r} {KEY_ID_RULE}")
            try:
                parse_key(secret.get_secret_value(), name=kid)
            except KeyConfigurationError:
                raise ValueError(f"the key {kid!r} {KEY_FORMAT_RULE}") from None
        return value

    @model_validator(mode="after")
    def _master_key_setup(self) -> Settings:
        if self.master_key is None or not self.master_key.get_secret_value().strip():
            return self
        if self.blind_index_key is None or not self.blind_index_key.get_secret_value().strip():
            raise ValueError(
                "ECOSISTEMA_BLIND_INDEX_KEY is required when ECOSISTEMA_MASTER_KEY is set: it keys "
                "the lookups on encrypted fields and must never change (32 random bytes, as 64 "
                "hex digits or base64)"
            )
        if self.master_key_id in self.old_master_keys:
            raise ValueError(
                f"ECOSISTEMA_OLD_MASTER_KEYS has a key under {self.master_key_id!r}, the id of "
                "ECOSISTEMA_MASTER_KEY (ECOSISTEMA_MASTER_KEY_ID): give the new master key a new id"
            )
        return self

    @model_validator(mode="after")
    def _stripe_needs_its_key(self) -> Settings:
        # Found at start, not at the first customer's payment (which could only answer 503).
        key = self.stripe_api_key
        if self.payment_provider == "stripe" and (
            key is None or not key.get_secret_value().strip()
        ):
            raise ValueError(
                "ECOSISTEMA_STRIPE_API_KEY is required when ECOSISTEMA_PAYMENT_PROVIDER=stripe "
                "(a secret key, sk_live_... or sk_test_..., or a restricted key, rk_...)"
            )
        return self

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        _check_database_url(value)
        return value

    @field_validator("database_urls")
    @classmethod
    def _database_urls(cls, value: dict[str, str]) -> dict[str, str]:
        for service, url in value.items():
            try:
                _check_database_url(url)
            except ValueError as exc:
                raise ValueError(f"{service!r} {exc}") from None
        return value

    @field_validator("bus_url")
    @classmethod
    def _bus_url(cls, value: str) -> str:
        from ecosistema.platform.events.bus import BUS_URL_PREFIXES, BUS_URL_RULE

        if not value.startswith(BUS_URL_PREFIXES):
            raise ValueError(BUS_URL_RULE)
        return value

    @field_validator("cache_url")
    @classmethod
    def _cache_url(cls, value: str) -> str:
        from ecosistema.platform.cache import CACHE_URL_PREFIXES, CACHE_URL_RULE

        if not value.startswith(CACHE_URL_PREFIXES):
            raise ValueError(CACHE_URL_RULE)
        return value

    @field_validator("ml_registry_url")
    @classmethod
    def _ml_registry_url(cls, value: str) -> str:
        # The model registry opens its location with fsspec; an unknown protocol, or one whose
        # package is not installed, would fail in the sales service's start instead.
        if "://" not in value:
            return value
        import fsspec

        protocol = value.split("://", 1)[0]
        try:
            fsspec.get_filesystem_class(protocol)
        except ValueError:
            raise ValueError(
                f"{protocol}:// is not a storage protocol: give a path or a URL such as "
                "s3://bucket/models"
            ) from None
        except ImportError as exc:
            raise ValueError(
                f"{protocol}:// needs a package that is not installed: {exc}"
            ) from None
        return value

    @field_validator("mailer_url")
    @classmethod
    def _mailer_url(cls, value: str) -> str:
        # The mailer's own parser, on a copy of the defaults: the mail jobs would otherwise fail
        # on every round long after start.
        from ecosistema.platform.mail import create_mailer

        try:
            create_mailer(cls.model_construct(mailer_url=value))
        except ValueError as exc:
            rule = str(exc).removeprefix("ECOSISTEMA_MAILER_URL ")
            raise ValueError(
                rule if rule.startswith("must") else f"is not usable: {rule}"
            ) from None
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: list[str]) -> list[str]:
        proxy_networks(value)
        return [entry.strip() for entry in value]

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("identity_url", "catalog_url", "orders_url", "payments_url", "sales_url")
    @classmethod
    def _service_urls(cls, value: str | None) -> str | None:
        """One base URL per instance, comma-separated; each must be http(s)://host[:port]."""
        if value is None:
            return None
        urls = [item.strip().rstrip("/") for item in value.split(",") if item.strip()]
        for url in urls:
            scheme, sep, rest = url.partition("://")
            if not sep or scheme not in ("http", "https") or not rest or rest.startswith("/"):
                raise ValueError(
                    f"{_mask_url(url)!r} is not a base URL: give http(s)://host:port, one per "
                    "instance, "
                    "separated by commas"
                )
        return ",".join(urls) or None

    def database_url_for(self, service: str) -> str:
        """The database URL a service uses, with ``{data_dir}`` and ``{service}`` filled in."""
        template = self.database_urls.get(service, self.database_url)
        return template.format(data_dir=self.data_dir.as_posix(), service=service)

    def masked(self) -> dict[str, Any]:
        """Effective settings with secrets and URL passwords masked, for ``ecosistema config``."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                out[name] = "**********" if value.get_secret_value() else ""
            elif isinstance(value, dict):
                out[name] = {
                    k: "**********" if isinstance(v, SecretStr) else _mask_url(str(v))
                    for k, v in value.items()
                }
            elif isinstance(value, str) and "://" in value:
                out[name] = _mask_url(value)
            elif isinstance(value, Path):
                out[name] = str(value)
            else:
                out[name] = value
        return out


# The database drivers the platform runs on (async: aiosqlite and asyncpg).
DATABASE_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")


def _check_database_url(template: str) -> None:
    """``ValueError`` (the rule, not the URL: it may hold a password) unless ``template``, with
    ``{data_dir}`` and ``{service}`` filled in, is a URL of a driver the platform runs on."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    rule = (
        "must be a sqlite+aiosqlite:///path or postgresql+asyncpg://user@host/database URL "
        "({data_dir} and {service} are filled in)"
    )
    try:
        url = make_url(template.format(data_dir="data", service="service"))
    except (ArgumentError, ValueError, KeyError, IndexError):
        raise ValueError(rule) from None
    if url.drivername not in DATABASE_DRIVERS:
        raise ValueError(rule)


def _mask_url(url: str) -> str:
    if "," in url:  # a list of base URLs, one per instance
        return ",".join(_mask_url(part) for part in url.split(","))
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:****@{host}" if ":" in creds else url


class InvalidSettingsError(Exception):
    """Settings that cannot be loaded; ``problems`` has one line per bad setting, naming its
    environment variable, its value (masked when secret) and the rule it breaks."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_settings() -> Settings:
    """Settings from the environment and ``.env``, or ``InvalidSettingsError`` saying what is
    wrong in words an operator can act on (not a validation traceback)."""
    try:
        return Settings()
    except ValidationError as exc:
        raise InvalidSettingsError(_explain(exc)) from None
    except SourceParseError as exc:
        # A list or map setting whose value is not JSON: pydantic-settings names only the field.
        found = re.search(r'field "(\w+)"', str(exc))
        name = found.group(1) if found else None
        if name is None:
            raise InvalidSettingsError([str(exc)]) from None
        raise InvalidSettingsError(
            [_problem(name, "", _raw_value(name), "must be JSON (a list or an object)")]
        ) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once; ``InvalidSettingsError`` when they are wrong."""
    return load_settings()


def _problem(name: str, key: str, value: Any, rule: str) -> str:
    where = "" if _in_environment(name) or not Path(ENV_FILE).is_file() else f" (in {ENV_FILE})"
    return f"{ENV_PREFIX}{name.upper()}{key}={_shown(name, value)}{where}: {rule}"


def _in_environment(name: str) -> bool:
    wanted = f"{ENV_PREFIX}{name}".upper()
    return any(key.upper() == wanted for key in os.environ)


def _raw_value(name: str) -> Any:
    wanted = f"{ENV_PREFIX}{name}".upper()
    for key, value in os.environ.items():
        if key.upper() == wanted:
            return value
    return None


def _is_secret(name: str) -> bool:
    field = Settings.model_fields.get(name)
    return field is not None and "SecretStr" in repr(field.annotation)


def _shown(name: str, value: Any) -> str:
    """A bad value as an operator may see it: secrets masked, URL passwords hidden."""
    if _is_secret(name):
        return "'**********'"
    if isinstance(value, str):
        return repr(_mask_url(value) if "://" in value else value)
    return repr(value)


def _one_of(choices: tuple[str, ...] | list[str]) -> str:
    items = [str(choice) for choice in choices]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def _rule(error: Any) -> str:
    """A pydantic error as the rule the value breaks: "must be at least 1", not a type code."""
    kind, ctx = error["type"], error.get("ctx") or {}
    bounds = {
        "greater_than": "must be greater than {gt}",
        "greater_than_equal": "must be at least {ge}",
        "less_than": "must be less than {lt}",
        "less_than_equal": "must be at most {le}",
    }
    if kind in bounds:
        return bounds[kind].format(**ctx)
    if kind == "literal_error":
        return "must be " + str(ctx.get("expected", "")).replace("'", "")
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return "must be a whole number"
    if kind in ("float_parsing", "float_type"):
        return "must be a number"
    if kind == "finite_number":
        return "must be a finite number"
    if kind in ("bool_parsing", "bool_type"):
        return "must be true or false"
    if kind in ("dict_type", "list_type"):
        return "must be a JSON " + ("object" if kind == "dict_type" else "list")
    message = str(error["msg"]).removeprefix("Value error, ")
    return message[:1].lower() + message[1:]


def _explain(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        if not loc:  # a rule across settings (model validator): its message names them
            problems.append(str(error["msg"]).removeprefix("Value error, "))
            continue
        name = loc[0]
        value = _raw_value(name) if len(loc) == 1 and _in_environment(name) else error["input"]
        key = "".join(f"[{part!r}]" for part in loc[1:])
        problems.append(_problem(name, key, value, _rule(error)))
    return problems
