"""The ``ecosistema`` command: run, migrate, configure and administer the platform."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import DBAPIError
from typer.core import TyperGroup

from ecosistema import __version__
from ecosistema.platform.config import InvalidSettingsError, Settings, get_settings
from ecosistema.platform.runtime import BackendUnreachableError, Runtime, one_line
from ecosistema.services import SERVICE_NAMES, load_services

T = TypeVar("T")
# Exit status of a command refused before it did anything: bad arguments or bad settings.
USAGE_ERROR = 2
# uvicorn's exit status when it cannot serve (the port cannot be listened on).
STARTUP_FAILURE = 3


class _Commands(TyperGroup):
    """The command tree; settings that cannot be loaded end any command with one line per bad
    setting and exit status 2, instead of a traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except InvalidSettingsError as exc:
            report_invalid_settings(exc)
            raise typer.Exit(USAGE_ERROR) from None


def report_invalid_settings(exc: InvalidSettingsError) -> None:
    """``error: ECOSISTEMA_X='value': rule`` on stderr, one line per bad setting."""
    for problem in exc.problems:
        err_console.print(
            Text.assemble(("error:", "bold red"), " ", problem), soft_wrap=True, highlight=False
        )


app = typer.Typer(
    cls=_Commands,
    name="ecosistema",
    help="Ecosistema: self-hostable, AI-native commerce and sales platform.",
    no_args_is_help=True,
    add_completion=False,
)
users_app = typer.Typer(help="Manage users.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage encryption and signing keys.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")

console = Console()
err_console = Console(stderr=True)
# How long a command relays the events it caused before it exits; what is left waits in the
# outboxes for the platform's relay.
RELAY_AT_EXIT_SECONDS = 10.0

HostOpt = Annotated[str, typer.Option("--host", help="Interface to listen on.")]
PortOpt = Annotated[int, typer.Option("--port", help="TCP port to listen on.")]


def _settings() -> Settings:
    from ecosistema.platform.logging import configure_logging

    settings = get_settings()
    configure_logging(settings)
    return settings


def _with_runtime(
    settings: Settings,
    work: Callable[[Runtime], Awaitable[T]],
    names: list[str] | None = None,
    *,
    start_hooks: Collection[str] | None = None,
) -> T:
    """Run ``work`` against a started runtime (migrated, no background tasks), then stop it.

    ``names`` hosts only those services (default: all), and ``start_hooks`` runs only those
    services' start hooks (default: all hosted), so a maintenance command neither migrates
    nor warms up (the sales model, for one) what it does not use. Events are relayed at the
    end only when every service is hosted: otherwise a consumer that is not here would miss
    them on the in-process bus, so they wait in the outbox for the platform's relay."""
    from dataclasses import replace

    async def _main() -> T:
        services = load_services(names)
        if start_hooks is not None:
            services = [
                svc if svc.name in start_hooks else replace(svc, on_start=None) for svc in services
            ]
        runtime = Runtime(settings, services)
        try:
            await runtime.start(background=False)
        except (OSError, DBAPIError) as exc:
            # A database, bus or cache that cannot be reached: say which, not a traceback.
            with contextlib.suppress(Exception):
                await runtime.stop()
            _fail(f"could not start: {_reason(exc)}")
        try:
            result = await work(runtime)
            if names is None:
                try:
                    await runtime.drain_outboxes(RELAY_AT_EXIT_SECONDS)
                except TimeoutError:
                    # A backlog (a large import, say) is no reason to fail: the events are kept
                    # in the outboxes, and the platform's relay sends them once it runs.
                    err_console.print(
                        "[yellow]note:[/] events are still waiting to be relayed; "
                        "the platform sends them once it is running."
                    )
            return result
        finally:
            await runtime.stop()

    return asyncio.run(_main())


def _reason(exc: BaseException) -> str:
    """An exception in one line: a driver's own error where SQLAlchemy wraps one."""
    if isinstance(exc, BackendUnreachableError):
        return str(exc)
    return one_line(getattr(exc, "orig", None) or exc)


def _fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code=code)


@app.command()
def version() -> None:
    """Print the version."""
    console.print(f"ecosistema {__version__}")


@app.command()
def config(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print the effective settings, secrets masked; where a setting is unset and the platform
    decides at run time (the master key, the public URL), say where the value comes from."""
    settings = get_settings()
    values = settings.masked()
    values["master_key_id"] = _active_master_key_id(settings)
    values["master_key"] = _master_key_source(settings, values["master_key"])
    if "public_url" not in settings.model_fields_set:
        values["public_url"] = (
            "(unset: `ecosistema up` uses the address it serves on; "
            f"other processes {settings.public_url})"
        )
    if as_json:
        console.print_json(json.dumps(values, default=str))
        return
    shown = {
        name: value if isinstance(value, str) else json.dumps(value, default=str)
        for name, value in values.items()
    }
    if not console.is_terminal:
        # Piped (to grep, a file): one whole line per setting, never cut to a screen's width.
        for name, value in shown.items():
            typer.echo(f"{name}={value}")
        return
    table = Table("setting", "value", title="Effective settings (ECOSISTEMA_*)")
    for name, value in shown.items():
        table.add_row(name, value)
    console.print(table)


def _master_key_source(settings: Settings, masked: Any) -> Any:
    """The master key as ``config`` shows it: masked when it comes from settings, else the key
    file it is read from (or will be generated into)."""
    from ecosistema.platform.crypto import KEY_FILE_NAME

    if settings.master_key is not None and settings.master_key.get_secret_value().strip():
        return masked
    path = (settings.data_dir / KEY_FILE_NAME).as_posix()
    if (settings.data_dir / KEY_FILE_NAME).exists():
        return f"(file {path})"
    return f"(unset: generated into {path} at first start)"


def _active_master_key_id(settings: Settings) -> str | None:
    """The id of the master key new values are encrypted with: ECOSISTEMA_MASTER_KEY_ID when
    the key comes from settings, else the key file's active key (which ``keys rotate``
    changes); ``None`` before the first start creates the key file."""
    from ecosistema.platform.crypto import KEY_FILE_NAME, KeyConfigurationError, MasterKeyring

    if settings.master_key is not None and settings.master_key.get_secret_value().strip():
        return settings.master_key_id
    path = settings.data_dir / KEY_FILE_NAME
    if not path.exists():
        return None
    try:
        return MasterKeyring.from_key_file(path).active_id
    except (KeyConfigurationError, OSError, ValueError) as exc:
        return f"unreadable key file {path}: {exc}"


@app.command()
def migrate(
    service: Annotated[
        str | None, typer.Argument(help=f"One of: {', '.join(SERVICE_NAMES)}. Default: all.")
    ] = None,
) -> None:
    """Apply database migrations for one service or all of them."""
    settings = _settings()
    names = [service] if service else list(SERVICE_NAMES)
    unknown = [n for n in names if n not in SERVICE_NAMES]
    if unknown:
        _fail(f"unknown service {unknown[0]!r}; known: {', '.join(SERVICE_NAMES)}")

    async def _main() -> None:
        runtime = Runtime(settings, load_services(names))
        try:
            await runtime.migrate()
        finally:
            await runtime.stop()

    try:
        asyncio.run(_main())
    except (OSError, DBAPIError) as exc:
        _fail(f"could not migrate: {_reason(exc)}")
    console.print(f"[green]migrated:[/] {', '.join(names)}")


def _seed_demo(settings: Settings) -> dict[str, Any]:
    """Seed every service that has demo data, in dependency order; returns what each seeded."""

    async def _work(runtime: Runtime) -> dict[str, Any]:
        seeded: dict[str, Any] = {}
        for name, ctx in runtime.contexts.items():
            if ctx.service.seed_demo is not None:
                seeded[name] = await ctx.service.seed_demo(ctx)
        return seeded

    return _with_runtime(settings, _work)


def _serve(
    host: str,
    port: int,
    settings: Settings,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> None:
    """The whole platform behind the gateway: its HTTP server, with every route served by the
    embedded app in process (auth, rate limits, response cache at the edge). ``serve`` runs one
    service its own way (``_serve_service``)."""
    from ecosistema.gateway.embedded import run_embedded
    from ecosistema.gateway.inprocess import LifespanFailed

    try:
        run_embedded(settings, host, port, certfile=certfile, keyfile=keyfile)
    except LifespanFailed as exc:
        # The app logged the traceback as it failed; the operator gets why, and exit 1.
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        _fail(f"could not start: {lines[-1] if lines else exc}")


@app.command()
def up(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    demo: Annotated[bool, typer.Option("--demo/--no-demo", help="Seed demo data.")] = False,
    distributed: Annotated[
        bool,
        typer.Option(
            "--distributed",
            help="Every service as its own processes behind the gateway (PostgreSQL, Redis, "
            "NATS/Kafka from settings).",
        ),
    ] = False,
    replicas: Annotated[
        list[str] | None,
        typer.Option(
            "--replicas",
            help="With --distributed: SERVICE=N processes for a service (repeatable); "
            "default ECOSISTEMA_DISTRIBUTED_REPLICAS, else 1.",
        ),
    ] = None,
    base_port: Annotated[
        int | None,
        typer.Option(
            "--base-port",
            help="With --distributed: first port of the service processes; "
            "default ECOSISTEMA_DISTRIBUTED_BASE_PORT (8100).",
        ),
    ] = None,
    gateway_workers: Annotated[
        int, typer.Option("--gateway-workers", help="With --distributed: gateway processes.")
    ] = 2,
    certfile: Annotated[
        str | None,
        typer.Option("--certfile", help="Serve HTTPS (TLS 1.2+) with this certificate (PEM)."),
    ] = None,
    keyfile: Annotated[
        str | None, typer.Option("--keyfile", help="The certificate's private key (PEM).")
    ] = None,
) -> None:
    """Run the whole platform: in one process (embedded shape), or with --distributed as one
    process per service replica behind the gateway; migrate, optionally seed, serve."""
    _check_tls_files(certfile, keyfile)
    _check_port_free(host, port)
    if distributed:
        _up_distributed(
            host, port, demo, replicas or [], base_port, gateway_workers, certfile, keyfile
        )
        return
    settings = _settings()
    scheme = "https" if certfile else "http"
    if "public_url" not in settings.model_fields_set:
        # Links in mails must point where this server listens; the app reads settings itself.
        os.environ["ECOSISTEMA_PUBLIC_URL"] = _public_url_for(host, port, scheme)
        get_settings.cache_clear()
        settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    seeded = _seed_demo(settings) if demo else _with_runtime(settings, _noop)
    url = f"{scheme}://{host}:{port}"
    lines = [f"Ecosistema {__version__} on [bold]{url}[/]", f"API docs: {url}/docs"]
    accounts = seeded.get("identity", {})
    if accounts:
        lines.append("")
        lines.append("Demo accounts (log in at POST /api/v1/auth/login, or Authorize in /docs):")
        for role, account in accounts.items():
            lines.append(f"  {role:<9} {account['email']:<32} {account['password']}")
    console.print(Panel("\n".join(lines), title="ecosistema up", expand=False))
    tls = {"certfile": certfile, "keyfile": keyfile} if certfile else {}
    _serve(host, port, settings, **tls)


def _check_port_free(host: str, port: int) -> None:
    """Fail before migrating and seeding when the address cannot be listened on (another server
    there, a host name that does not resolve)."""
    import socket

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror}")
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            _fail(
                f"cannot listen on {host}:{port}: {exc.strerror}. Is another server running "
                "there? Choose another port with --port."
            )


def _check_tls_files(certfile: str | None, keyfile: str | None) -> None:
    """Fail before starting anything when the certificate or key cannot be used."""
    if keyfile and not certfile:
        _fail("--keyfile needs --certfile")
    if not certfile:
        return
    import ssl

    from ecosistema.gateway.server import create_ssl_context

    try:
        create_ssl_context(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        _fail(f"cannot serve HTTPS with --certfile {certfile} --keyfile {keyfile}: {exc}")


# Listening on every interface: this machine reaches it on loopback.
_ALL_INTERFACES = frozenset({"", "0.0.0.0", "::"})  # noqa: S104


def _public_url_for(host: str, port: int, scheme: str = "http") -> str:
    """The base URL a server listening on ``host:port`` is reached at from this machine."""
    if host in _ALL_INTERFACES:
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


async def _noop(_runtime: Runtime) -> dict[str, Any]:
    return {}


def _up_distributed(
    host: str,
    port: int,
    demo: bool,
    replicas: list[str],
    base_port: int | None,
    gateway_workers: int,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> None:
    from ecosistema.distributed import (
        DistributedSettingsError,
        Instance,
        parse_replicas,
        run_distributed,
    )
    from ecosistema.supervisor import SupervisorError

    settings = _settings()
    try:
        configured = [f"{name}={n}" for name, n in settings.distributed_replicas.items()]
        counts = parse_replicas([*configured, *replicas], 1)
    except ValueError as exc:
        _fail(str(exc))

    def ready(url: str, instances: list[Instance], seeded: dict[str, Any]) -> None:
        lines = [f"Ecosistema {__version__} (distributed) on [bold]{url}[/]", ""]
        lines += [f"  {i.name:<12} {i.url}" for i in instances]
        lines.append(f"  {'gateway':<12} {url} ({gateway_workers} workers)")
        for role, account in seeded.get("identity", {}).items():
            lines.append(f"  demo {role:<9} {account['email']:<32} {account['password']}")
        console.print(Panel("\n".join(lines), title="ecosistema up --distributed", expand=False))

    try:
        run_distributed(
            settings,
            host=host,
            port=port,
            gateway_workers=gateway_workers,
            replicas=counts,
            base_port=base_port if base_port is not None else settings.distributed_base_port,
            demo=demo,
            on_ready=ready,
            certfile=certfile,
            keyfile=keyfile,
        )
    except (DistributedSettingsError, SupervisorError) as exc:
        _fail(str(exc))


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help=f"One of: {', '.join(SERVICE_NAMES)}.")],
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8001,
) -> None:
    """Run one service in its own process (distributed shape)."""
    if service not in SERVICE_NAMES:
        _fail(f"unknown service {service!r}; known: {', '.join(SERVICE_NAMES)}")
    _settings()  # bad settings end here, one line each, before anything starts
    _check_port_free(host, port)
    os.environ["ECOSISTEMA_SERVE_SERVICE"] = service
    _serve_service(host, port)


def _serve_service(host: str, port: int) -> None:
    """Start the service's runtime, then serve it; a database or bus that cannot be reached
    ends start-up with one line and exit status 1, and SIGTERM or SIGINT while starting stops
    the process (uvicorn would wait for start-up to end before it looks at a signal)."""
    import signal

    import uvicorn
    import uvloop

    from ecosistema.asgi import single_service_app

    application = single_service_app()
    runtime: Runtime = application.state.runtime
    lifespan = application.router.lifespan_context(application)

    async def _main() -> bool:
        loop = asyncio.get_running_loop()
        starting = asyncio.current_task()
        assert starting is not None
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, starting.cancel)
        try:
            await lifespan.__aenter__()
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await runtime.stop()
            return True
        except (OSError, DBAPIError) as exc:
            with contextlib.suppress(Exception):
                await runtime.stop()
            _fail(f"could not start: {_reason(exc)}")
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

        @contextlib.asynccontextmanager
        async def _started(_app: Any) -> AsyncIterator[None]:
            # Started above; uvicorn stops it as it shuts down, before it re-raises a signal.
            try:
                yield
            finally:
                await lifespan.__aexit__(None, None, None)

        application.router.lifespan_context = _started
        config = uvicorn.Config(
            application,
            host=host,
            port=port,
            http="httptools",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
        )
        server = uvicorn.Server(config)
        await server.serve()
        return server.started

    if not uvloop.run(_main()):
        raise typer.Exit(code=STARTUP_FAILURE)


@users_app.command("create-admin")
def create_admin(
    email: Annotated[str, typer.Option("--email", help="The admin's email address.")],
    password: Annotated[
        str | None,
        typer.Option("--password", help="Password; one is generated and printed when omitted."),
    ] = None,
) -> None:
    """Create a verified admin user."""
    from ecosistema.identity.service import create_admin as create_admin_user
    from ecosistema.platform.errors import ProblemError

    settings = _settings()
    generated = password is None
    secret = password or secrets.token_urlsafe(18)

    async def _work(runtime: Runtime) -> Any:
        return await create_admin_user(runtime.contexts["identity"], email=email, password=secret)

    try:
        _with_runtime(settings, _work, ["identity"])
    except ProblemError as exc:
        _fail(exc.detail)
    console.print(f"[green]admin created:[/] {email}")
    if generated:
        console.print(f"password: [bold]{secret}[/]  (shown once; store it now)")


@keys_app.command("rotate")
def rotate_keys(
    master: Annotated[
        bool, typer.Option("--master/--no-master", help="Rotate the master key and re-encrypt.")
    ] = True,
    signing: Annotated[
        bool, typer.Option("--signing/--no-signing", help="Rotate the token signing key.")
    ] = True,
) -> None:
    """Rotate keys without downtime: old ciphertexts and tokens stay valid meanwhile."""
    from ecosistema.platform.crypto import reencrypt_columns, rotate_master_key

    settings = _settings()
    from_settings = settings.master_key is not None and settings.master_key.get_secret_value()
    if master and not from_settings:
        try:
            kid = rotate_master_key(settings)
        except (RuntimeError, ValueError) as exc:
            _fail(str(exc))
        console.print(f"[green]new master key:[/] {kid}")
    elif master:
        # Keys from settings are rotated by the operator (new ECOSISTEMA_MASTER_KEY, old one moved
        # to ECOSISTEMA_OLD_MASTER_KEYS); this re-encrypts everything under the active one.
        console.print(
            f"master key comes from settings; re-encrypting under {settings.master_key_id}"
        )

    async def _work(runtime: Runtime) -> None:
        if master:
            for ctx in runtime.contexts.values():
                columns = ctx.service.encrypted_columns
                if columns:
                    count = await reencrypt_columns(ctx.db, runtime.cipher, columns)
                    console.print(f"re-encrypted {count} value(s) in {ctx.name}")
        if signing:
            from ecosistema.identity.service import rotate_signing_key

            kid = await rotate_signing_key(runtime.contexts["identity"])
            console.print(f"[green]new signing key:[/] {kid}")

    # Only the services whose data is re-encrypted, plus identity for the signing key; only
    # identity's start hook runs (it loads the signing keys).
    hosted = [svc.name for svc in load_services() if master and svc.encrypted_columns]
    if signing and "identity" not in hosted:
        hosted.append("identity")
    if hosted:
        _with_runtime(settings, _work, hosted, start_hooks={"identity"} if signing else ())


catalog_app = typer.Typer(help="Catalog bulk import.", no_args_is_help=True)
payments_app = typer.Typer(help="Payments operations.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")
app.add_typer(payments_app, name="payments")


@catalog_app.command("import")
def catalog_import(
    file: Annotated[Path, typer.Argument(help="A .csv or .jsonl file of products.", exists=True)],
    mode: Annotated[
        str, typer.Option("--mode", help="all-or-nothing, or skip-invalid.")
    ] = "all-or-nothing",
) -> None:
    """Import products from CSV or JSON Lines, streamed, with a progress bar and a row report.

    Exit status: 0 every row was imported; 3 imported, but rows were refused and left out
    (skip-invalid); 1 nothing was imported (all-or-nothing refused the file, or every row was
    refused); 2 the command could not run (bad option, missing file, bad settings).
    """
    from ecosistema.catalog import import_products_command

    if mode not in ("all-or-nothing", "skip-invalid"):
        _fail("--mode is all-or-nothing or skip-invalid", code=USAGE_ERROR)
    report = import_products_command(file, mode=mode, settings=_settings())  # type: ignore[arg-type]
    raise typer.Exit(code=import_exit_status(report.applied, report.rows_read, report.rows_skipped))


IMPORT_ALL_ROWS = 0
IMPORT_NOTHING = 1
IMPORT_ROWS_SKIPPED = 3


def import_exit_status(applied: bool, rows_read: int, rows_skipped: int) -> int:
    """What ``catalog import`` exits with, so a script can tell a partial import from none."""
    if not applied or (rows_skipped and rows_skipped >= rows_read):
        return IMPORT_NOTHING
    return IMPORT_ROWS_SKIPPED if rows_skipped else IMPORT_ALL_ROWS


@payments_app.command("reconcile")
def payments_reconcile(
    provider: Annotated[
        str | None, typer.Option("--provider", help="sandbox or stripe; default: the configured.")
    ] = None,
) -> None:
    """Compare the payments journal with the provider's records; exit 1 on any mismatch, 2 when
    they cannot be compared (an unknown or unconfigured provider, or one that does not answer)."""
    from ecosistema.payments import reconcile_with_provider
    from ecosistema.platform.errors import ProblemError

    if provider is not None and not provider.strip():
        _fail("cannot reconcile: --provider needs a name (sandbox or stripe)", code=2)
    try:
        report = asyncio.run(reconcile_with_provider(_settings(), provider=provider))
    except ProblemError as problem:
        _fail(f"cannot reconcile: {problem.detail}", code=2)
    console.print_json(report.model_dump_json())
    if not report.clean:
        raise typer.Exit(code=1)


@app.command()
def gateway(
    routes: Annotated[
        Path | None,
        typer.Option(
            "--routes", help="Route table (YAML or JSON); default ECOSISTEMA_GATEWAY_ROUTES."
        ),
    ] = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    workers: Annotated[int, typer.Option("--workers", help="Worker processes.")] = 2,
    certfile: Annotated[str | None, typer.Option("--certfile", help="TLS certificate.")] = None,
    keyfile: Annotated[str | None, typer.Option("--keyfile", help="TLS private key.")] = None,
) -> None:
    """Run the API gateway in front of services listed in a route table."""
    from pydantic import ValidationError

    from ecosistema.gateway import gateway_config, run_gateway
    from ecosistema.gateway.config import config_problems

    settings = _settings()
    table = routes or settings.gateway_routes
    if table is None:
        _fail("no route table: pass --routes FILE or set ECOSISTEMA_GATEWAY_ROUTES")
    assert table is not None
    try:
        config = gateway_config(table, settings)
    except ValidationError as exc:
        for problem in config_problems(exc):
            err_console.print(
                Text.assemble(("error:", "bold red"), f" route table {table}: {problem}"),
                soft_wrap=True,
                highlight=False,
            )
        raise typer.Exit(USAGE_ERROR) from None
    run_gateway(
        config,
        host=host,
        port=port,
        workers=workers,
        certfile=certfile,
        keyfile=keyfile,
    )


certs_app = typer.Typer(help="Certificates for HTTPS.", no_args_is_help=True)
app.add_typer(certs_app, name="certs")


@certs_app.command("dev")
def certs_dev(
    directory: Annotated[
        Path, typer.Option("--dir", help="Where to write the CA and the certificate.")
    ] = Path("data/certs"),
    hosts: Annotated[
        str,
        typer.Option("--hosts", help="Comma-separated host names and IP addresses to cover."),
    ] = "localhost,127.0.0.1,::1",
) -> None:
    """Create a local development CA (reused if present) and a server certificate it signs."""
    from ecosistema.certs import create_dev_certificates, parse_hosts

    try:
        names = parse_hosts(hosts)
    except ValueError as exc:
        _fail(str(exc))
    made = create_dev_certificates(directory, names)
    ca = made.ca_cert
    state = "created" if made.ca_created else "reused"
    lines = [
        f"CA ({state}):   {ca}  (key {made.ca_key}, keep it private)",
        f"certificate:    {made.server_cert}  for {', '.join(made.hosts)}",
        f"private key:    {made.server_key}",
        "",
        "Serve HTTPS with it:",
        f"  ecosistema gateway --routes routes.yaml --certfile {made.server_cert} "
        f"--keyfile {made.server_key}",
        "",
        "Trust the CA (development machines only):",
        f"  curl:          curl --cacert {ca} https://localhost:8000/",
        f"  Python/httpx:  SSL_CERT_FILE={ca}",
        f"  Debian/Ubuntu: sudo cp {ca} /usr/local/share/ca-certificates/ecosistema-dev.crt"
        " && sudo update-ca-certificates",
        f"  macOS:         sudo security add-trusted-cert -d -r trustRoot "
        f"-k /Library/Keychains/System.keychain {ca}",
        f"  Firefox:       Settings > Certificates > Authorities > Import {ca}",
    ]
    for line in lines:  # one command per line, never wrapped: they are meant to be copied
        console.print(line, soft_wrap=True, highlight=False, markup=False)


native_app = typer.Typer(help="The gateway's compiled hot path.", no_args_is_help=True)
app.add_typer(native_app, name="native")


@native_app.command("build")
def native_build() -> None:
    """Compile the gateway's hot path with mypyc (needs mypy and a C compiler)."""
    from ecosistema.gateway import native

    try:
        directory = native.build()
    except ImportError:
        _fail("mypy is not installed (pip install mypy); the gateway runs interpreted")
    except (Exception, SystemExit) as exc:  # mypy exits on type errors; output went to stderr
        _fail(f"compiling failed ({exc}); the gateway runs interpreted")
    console.print(f"gateway hot path compiled into {directory}", highlight=False, soft_wrap=True)
    # As mypy does: skip tearing down the type checker's millions of objects (about 20 s).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@native_app.command("status")
def native_status() -> None:
    """Whether the gateway runs compiled: current, stale (sources changed), absent or disabled."""
    from ecosistema.gateway import native

    state, why = native.status()
    console.print(f"{state}: {why}", highlight=False, markup=False, soft_wrap=True)
    if state not in ("current", "disabled"):
        raise typer.Exit(1)


def _mount_subcommands() -> None:
    from ecosistema.ml_cli import app as ml_app

    app.add_typer(ml_app, name="ml", help="Machine-learning pipeline: ingest, train, promote.")


_mount_subcommands()


def main() -> None:  # pragma: no cover - console entry point
    app(sys.argv[1:])
