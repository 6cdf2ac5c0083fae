"""The `ecosistema` command as an operator uses it, in a fresh working directory."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import pytest
from typer.testing import CliRunner

from ecosistema import __version__
from ecosistema.cli import app
from ecosistema.platform.config import get_settings
from tests.default_model import DefaultModelCache

runner = CliRunner()


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("ECOSISTEMA_DATABASE_URL", "ECOSISTEMA_DATA_DIR", "ECOSISTEMA_BUS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ECOSISTEMA_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("ECOSISTEMA_PASSWORD_HASH_MEMORY_KIB", "1024")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["up"],
        ["serve"],
        ["migrate"],
        ["config"],
        ["users", "create-admin"],
        ["keys", "rotate"],
        ["version"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    output = invoke(*command, "--help")
    assert "Usage" in output


def test_version_prints_the_package_version() -> None:
    assert __version__ in invoke("version")


def test_config_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECOSISTEMA_MASTER_KEY", "A" * 43 + "=")
    monkeypatch.setenv("ECOSISTEMA_BLIND_INDEX_KEY", "B" * 43 + "=")
    monkeypatch.setenv("ECOSISTEMA_CACHE_URL", "redis://:topsecret@cache:6379/0")
    get_settings.cache_clear()
    values = json.loads(invoke("config", "--json"))
    assert values["master_key"] == "**********"
    assert "topsecret" not in json.dumps(values)


def test_migrate_creates_state_under_data_in_the_working_directory(workdir: Path) -> None:
    invoke("migrate")
    assert (workdir / "data" / "identity.db").exists()


def test_migrate_rejects_an_unknown_service() -> None:
    result = runner.invoke(app, ["migrate", "nope"])
    assert result.exit_code == 1
    assert "unknown service" in result.output


def test_create_admin_generates_and_prints_a_password_when_none_is_given() -> None:
    output = invoke("users", "create-admin", "--email", "root@example.com")
    match = re.search(r"password: (\S+)", output)
    assert match, output
    assert len(match.group(1)) >= 12


def _databases(workdir: Path) -> list[str]:
    return sorted(path.stem for path in (workdir / "data").glob("*.db"))


def _pending_events(database: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT type FROM outbox WHERE published_at IS NULL").fetchall()
    return [row[0] for row in rows]


def test_create_admin_hosts_only_identity_and_leaves_its_events_for_the_platform(
    workdir: Path,
) -> None:
    invoke("users", "create-admin", "--email", "root@example.com")

    # No other service is migrated or started (sales would load its scoring model).
    assert _databases(workdir) == ["identity"]
    assert not (workdir / "data" / "models").exists()
    # Sales consumes the registration; not hosted here, so the event waits in identity's outbox
    # for the platform's relay instead of being relayed to no one.
    assert "UserRegistered" in _pending_events(workdir / "data" / "identity.db")


def test_keys_rotate_hosts_only_the_services_with_encrypted_data(workdir: Path) -> None:
    from ecosistema.services import load_services

    invoke("keys", "rotate")

    encrypted = sorted(svc.name for svc in load_services() if svc.encrypted_columns)
    assert "sales" in encrypted and "catalog" not in encrypted
    assert _databases(workdir) == encrypted
    assert not (workdir / "data" / "models").exists()


def test_create_admin_rejects_a_weak_password() -> None:
    result = runner.invoke(
        app, ["users", "create-admin", "--email", "root@example.com", "--password", "short"]
    )
    assert result.exit_code == 1


def test_keys_rotate_issues_new_master_and_signing_keys(workdir: Path) -> None:
    invoke(
        "users",
        "create-admin",
        "--email",
        "root@example.com",
        "--password",
        "a long enough passphrase",
    )
    output = invoke("keys", "rotate")
    assert "new master key" in output
    assert "new signing key" in output
    assert (workdir / "data" / "master.key").stat().st_mode & 0o777 == 0o600


def test_config_shows_the_master_key_the_key_ring_has_active(workdir: Path) -> None:
    assert json.loads(invoke("config", "--json"))["master_key_id"] is None  # no key file yet
    invoke("keys", "rotate", "--no-signing")  # creates the key file (mk1), rotates to mk2

    assert json.loads(invoke("config", "--json"))["master_key_id"] == "mk2"
    assert "mk2" in invoke("config")


def test_config_piped_prints_each_setting_whole_on_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "postgresql+asyncpg://postgres@database.internal.example.com:5432/ecosistema_{service}"
    monkeypatch.setenv("ECOSISTEMA_DATABASE_URL", url)
    monkeypatch.setenv("ECOSISTEMA_CACHE_URL", "redis://:topsecret@cache:6379/0")
    get_settings.cache_clear()
    lines = invoke("config").splitlines()
    assert f"database_url={url}" in lines
    assert "topsecret" not in "\n".join(lines)
    assert all("=" in line for line in lines)


def test_config_shows_the_configured_master_key_id_when_the_key_comes_from_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ECOSISTEMA_MASTER_KEY", "A" * 43 + "=")
    monkeypatch.setenv("ECOSISTEMA_BLIND_INDEX_KEY", "B" * 43 + "=")
    monkeypatch.setenv("ECOSISTEMA_MASTER_KEY_ID", "prod2")
    get_settings.cache_clear()
    assert json.loads(invoke("config", "--json"))["master_key_id"] == "prod2"


def test_gateway_without_a_route_table_says_how_to_give_one() -> None:
    result = runner.invoke(app, ["gateway"])
    assert result.exit_code == 1
    assert "--routes" in result.output


def test_payments_reconcile_on_a_fresh_install_is_clean() -> None:
    output = invoke("payments", "reconcile")
    assert '"journal_balanced": true' in output
    assert '"mismatched": []' in output


@pytest.mark.parametrize(
    ("provider", "says"),
    [
        ("bogus", "No payment provider named 'bogus'"),
        ("stripe", "Stripe is not configured"),
        ("", "--provider needs a name"),
    ],
)
def test_payments_reconcile_that_cannot_compare_says_why_in_one_line_and_exits_2(
    provider: str, says: str
) -> None:
    result = runner.invoke(app, ["payments", "reconcile", "--provider", provider])
    assert result.exit_code == 2, result.output
    assert says in result.output
    assert "Traceback" not in result.output


def test_up_with_demo_seeds_every_service_that_has_demo_data(
    default_model_cache: DefaultModelCache,
) -> None:
    from ecosistema.cli import _seed_demo

    default_model_cache.seed(get_settings())
    seeded = _seed_demo(get_settings())
    assert seeded["identity"]["admin"]["email"] == "admin@demo.ecosistema.dev"
    assert {"identity", "catalog", "orders"} <= set(seeded)
    again = _seed_demo(get_settings())  # seeding twice changes nothing
    assert again["identity"] == seeded["identity"]


def test_a_backlog_of_events_left_after_a_command_waits_in_the_outbox_instead_of_failing(
    default_model_cache: DefaultModelCache,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import sqlite3

    from ecosistema.cli import _seed_demo
    from ecosistema.platform.runtime import Runtime
    from ecosistema.services import load_services

    def pending() -> int:
        catalog = Path(get_settings().data_dir) / "catalog.db"
        with sqlite3.connect(catalog) as conn:
            query = "SELECT count(*) FROM outbox WHERE published_at IS NULL"
            return int(conn.execute(query).fetchone()[0])

    default_model_cache.seed(get_settings())
    # The demo's thousands of events cannot be relayed in no time at all: as with a big import.
    monkeypatch.setattr("ecosistema.cli.RELAY_AT_EXIT_SECONDS", 0.0)
    seeded = _seed_demo(get_settings())
    assert "catalog" in seeded
    assert "still waiting to be relayed" in capsys.readouterr().err
    assert pending() > 0

    async def platform_relays_them() -> None:
        runtime = Runtime(get_settings(), load_services())
        await runtime.start()  # with its relays, as the serving platform runs them
        try:
            for _ in range(600):
                if pending() == 0:
                    return
                await asyncio.sleep(0.05)
        finally:
            await runtime.stop()

    asyncio.run(platform_relays_them())
    assert pending() == 0


@pytest.mark.parametrize("email", ["bad", "root@", "two@@example.com"])
def test_create_admin_refuses_an_email_registration_would_refuse(email: str) -> None:
    result = runner.invoke(
        app, ["users", "create-admin", "--email", email, "--password", "a long enough passphrase"]
    )
    assert result.exit_code == 1
    assert "email" in result.output and "not a valid email address" in result.output
    assert "admin created" not in result.output


def _serving_public_url(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import ecosistema.cli as cli

    served: list[str] = []

    def serve(_host: str, _port: int, _settings: object) -> None:
        served.append(get_settings().public_url)

    monkeypatch.setattr(cli, "_serve", serve)
    return served


def test_up_points_mail_links_at_where_it_listens(
    monkeypatch: pytest.MonkeyPatch, default_model_cache: DefaultModelCache
) -> None:
    monkeypatch.setenv("ECOSISTEMA_PUBLIC_URL", "placeholder")  # restored to unset afterwards
    monkeypatch.delenv("ECOSISTEMA_PUBLIC_URL")
    get_settings.cache_clear()
    default_model_cache.seed(get_settings())
    served = _serving_public_url(monkeypatch)
    invoke("up", "--host", "0.0.0.0", "--port", "8123")
    assert served == ["http://127.0.0.1:8123"]


def test_up_keeps_an_explicit_public_url(
    monkeypatch: pytest.MonkeyPatch, default_model_cache: DefaultModelCache
) -> None:
    monkeypatch.setenv("ECOSISTEMA_PUBLIC_URL", "https://shop.example.com")
    get_settings.cache_clear()
    default_model_cache.seed(get_settings())
    served = _serving_public_url(monkeypatch)
    invoke("up", "--port", "8123")
    assert served == ["https://shop.example.com"]


@pytest.mark.parametrize("command", [["up"], ["up", "--distributed"], ["serve", "catalog"]])
def test_a_port_in_use_fails_at_once_with_a_clear_error(workdir: Path, command: list[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, [*command, "--port", str(port)])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
    assert "--port" in result.output
    assert not (workdir / "data").exists()  # nothing migrated or seeded


@pytest.mark.parametrize("command", [["config"], ["up"], ["serve", "catalog"], ["migrate"]])
def test_a_bad_setting_ends_any_command_with_one_line_per_setting_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.setenv("ECOSISTEMA_ENVIRONMENT", "prod")
    monkeypatch.setenv("ECOSISTEMA_MAX_BODY_BYTES", "abc")
    monkeypatch.setenv("ECOSISTEMA_STRIPE_API_KEY", "x" * 10)
    get_settings.cache_clear()

    result = runner.invoke(app, command)

    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        "error: ECOSISTEMA_ENVIRONMENT='prod': must be development, test or production",
        "error: ECOSISTEMA_MAX_BODY_BYTES='abc': must be a whole number",
    ]


@pytest.mark.parametrize(
    "command", [["config"], ["up"], ["serve", "catalog"], ["migrate"], ["keys", "rotate"]]
)
def test_a_malformed_master_key_ends_any_command_in_one_line_without_showing_it(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.setenv("ECOSISTEMA_MASTER_KEY", "hunter2-not-a-key")
    monkeypatch.setenv("ECOSISTEMA_BLIND_INDEX_KEY", "00" * 32)
    get_settings.cache_clear()

    result = runner.invoke(app, command)

    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        "error: ECOSISTEMA_MASTER_KEY='**********': must be 32 random bytes, as 64 hex digits "
        'or base64; generate one with: python -c "import secrets; print(secrets.token_hex(32))"'
    ]
    assert not (workdir / "data").exists()  # nothing migrated, no key file generated


def test_a_mailer_url_no_mailer_takes_ends_up_in_one_line_without_its_password(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECOSISTEMA_MAILER_URL", "smpt://shop:hunter2@mail.example.com:587")
    get_settings.cache_clear()

    result = runner.invoke(app, ["up", "--port", "0"])

    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        "error: ECOSISTEMA_MAILER_URL='smpt://shop:****@mail.example.com:587': must start with "
        "file://, smtp:// or smtps://"
    ]
    assert not (workdir / "data").exists()


def test_the_gateway_module_refuses_a_malformed_blind_index_key_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ecosistema.gateway.__main__ import main as gateway_main

    monkeypatch.setenv("ECOSISTEMA_MASTER_KEY", "00" * 32)
    monkeypatch.setenv("ECOSISTEMA_BLIND_INDEX_KEY", "hunter2")
    with pytest.raises(SystemExit) as stopped:
        gateway_main(["--routes", "routes.yaml"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ECOSISTEMA_BLIND_INDEX_KEY='**********': must be 32 random")
    assert len(err.splitlines()) == 1
    assert "hunter2" not in err


def test_the_gateway_module_refuses_bad_settings_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ecosistema.gateway.__main__ import main as gateway_main

    monkeypatch.setenv("ECOSISTEMA_LOG_LEVEL", "bogus")
    with pytest.raises(SystemExit) as stopped:
        gateway_main(["--routes", "routes.yaml"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (
        "error: ECOSISTEMA_LOG_LEVEL='bogus': must be DEBUG, INFO, WARNING, ERROR or CRITICAL "
        "(any case)\n"
    )


def test_config_says_where_the_master_key_comes_from(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = json.loads(invoke("config", "--json"))
    assert values["master_key"] == "(unset: generated into data/master.key at first start)"
    invoke("keys", "rotate", "--no-signing")  # creates data/master.key
    assert json.loads(invoke("config", "--json"))["master_key"] == "(file data/master.key)"

    monkeypatch.setenv("ECOSISTEMA_MASTER_KEY", "A" * 43 + "=")
    monkeypatch.setenv("ECOSISTEMA_BLIND_INDEX_KEY", "B" * 43 + "=")
    get_settings.cache_clear()
    assert json.loads(invoke("config", "--json"))["master_key"] == "**********"


def test_config_says_an_unset_public_url_follows_the_served_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ECOSISTEMA_PUBLIC_URL", raising=False)
    shown = json.loads(invoke("config", "--json"))["public_url"]
    assert "`ecosistema up` uses the address it serves on" in shown

    monkeypatch.setenv("ECOSISTEMA_PUBLIC_URL", "https://shop.example.com")
    get_settings.cache_clear()
    assert json.loads(invoke("config", "--json"))["public_url"] == "https://shop.example.com"


IMPORT_HEADER = (
    "slug,name,description,status,category,images,sku,variant_name,options,weight_grams,"
    "price_EUR,price_USD\n"
)
GOOD_ROW = "lamp,Desk Lamp,,active,,,LAMP-1,,,900,4990,\n"
BAD_ROW = "bad,,,,,,,,,,,\n"


@pytest.mark.parametrize(
    ("rows", "mode", "status"),
    [
        (GOOD_ROW, "all-or-nothing", 0),
        (GOOD_ROW + BAD_ROW, "skip-invalid", 3),
        (GOOD_ROW + BAD_ROW, "all-or-nothing", 1),
        (BAD_ROW, "skip-invalid", 1),
    ],
)
def test_catalog_import_exit_status_tells_all_some_or_no_rows_imported(
    workdir: Path, rows: str, mode: str, status: int
) -> None:
    path = workdir / "products.csv"
    path.write_text(IMPORT_HEADER + rows, encoding="utf-8")

    result = runner.invoke(app, ["catalog", "import", str(path), "--mode", mode])

    assert result.exit_code == status, result.output


def test_catalog_import_with_an_unknown_mode_is_a_usage_error(workdir: Path) -> None:
    path = workdir / "products.csv"
    path.write_text(IMPORT_HEADER + GOOD_ROW, encoding="utf-8")
    result = runner.invoke(app, ["catalog", "import", str(path), "--mode", "lenient"])
    assert result.exit_code == 2
    assert "exit status" in runner.invoke(app, ["catalog", "import", "--help"]).output.lower()


@pytest.mark.parametrize("command", [["migrate"], ["up", "--port", "0"]])
def test_a_database_that_cannot_be_reached_ends_in_one_line_without_its_password(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    # Port 1: nothing listens there.
    monkeypatch.setenv("ECOSISTEMA_DATABASE_URL", "postgresql+asyncpg://shop:hunter2@127.0.0.1:1/x")
    get_settings.cache_clear()

    result = runner.invoke(app, command)

    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if not line.startswith("{")]
    assert len(lines) <= 2 and lines[0].startswith("error: could not "), result.output
    assert "ConnectionRefusedError" in result.output or "OSError" in result.output
    assert "hunter2" not in result.output and "Traceback" not in result.output


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("setting", "url", "named"),
    [
        ("ECOSISTEMA_BUS_URL", "nats://shop:hunter2@127.0.0.1:{port}", "ECOSISTEMA_BUS_URL"),
        ("ECOSISTEMA_BUS_URL", "redis://:hunter2@127.0.0.1:{port}/0", "ECOSISTEMA_BUS_URL"),
        (
            "ECOSISTEMA_DATABASE_URL",
            "postgresql+asyncpg://shop:hunter2@127.0.0.1:{port}/x",
            "ConnectionRefusedError",
        ),
    ],
    ids=["nats", "redis", "postgresql"],
)
def test_serve_with_a_backend_that_cannot_be_reached_exits_with_one_line(
    workdir: Path, setting: str, url: str, named: str
) -> None:
    # Nothing listens on the backend's port: start-up gives up, rather than leaving a process
    # that never serves (the timeout is generous; the process is expected well before it).
    env = {**os.environ, setting: url.format(port=_unused_port()), "ECOSISTEMA_LOG_LEVEL": "ERROR"}
    done = subprocess.run(
        [sys.executable, "-m", "ecosistema", "serve", "catalog", "--port", str(_unused_port())],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith("error: could not start: "), done.stderr
    assert named in lines[0], done.stderr
    assert "127.0.0.1" in lines[0] or named == "ConnectionRefusedError"
    assert "hunter2" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr + done.stdout


def test_serve_stops_on_sigterm_while_it_waits_for_its_bus(workdir: Path) -> None:
    port = _unused_port()
    env = {
        **os.environ,
        "ECOSISTEMA_BUS_URL": f"nats://127.0.0.1:{_unused_port()}",
        "ECOSISTEMA_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "ecosistema", "serve", "catalog", "--port", str(port)],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    tried = threading.Event()

    def _read(stream: IO[str]) -> None:
        for line in stream:
            if "nats" in line.lower():
                tried.set()

    assert process.stdout is not None
    threading.Thread(target=_read, args=(process.stdout,), daemon=True).start()
    try:
        # Once it tries the bus (its first refused attempt is logged), it is starting.
        tried.wait(timeout=60)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode in (0, -signal.SIGTERM)
