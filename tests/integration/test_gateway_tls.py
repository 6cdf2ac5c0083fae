"""HTTPS at the edge: a self-signed certificate, TLS 1.2 at least, HSTS on responses."""

from __future__ import annotations

import datetime as dt
import io
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ecosistema.gateway import create_ssl_context, gateway_config, serve
from tests.default_model import DefaultModelCache
from tests.integration.test_gateway_upstream import start_upstream, stop


def write_self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_context_refuses_versions_below_1_2(tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path)
    assert create_ssl_context(str(cert), str(key)).minimum_version == ssl.TLSVersion.TLSv1_2


async def test_https_requests_are_proxied_with_hsts_and_forwarded_proto(tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path)
    proc, url = start_upstream("a")
    try:
        config = gateway_config(
            {
                "services": {"svc": {"instances": [url], "health_path": None}},
                "routes": [{"prefix": "/echo", "service": "svc", "public": True}],
            }
        )
        server = await serve(
            config,
            port=0,
            ssl_context=create_ssl_context(str(cert), str(key)),
            access_log=io.StringIO(),
        )
        verify = ssl.create_default_context(cafile=str(cert))
        try:
            async with httpx.AsyncClient(verify=verify) as c:
                response = await c.get(f"https://localhost:{server.port}/echo")
        finally:
            await server.close(1)
    finally:
        stop(proc)
    assert response.status_code == 200
    assert response.headers["strict-transport-security"].startswith("max-age=")
    assert response.json()["headers"]["x-forwarded-proto"] == ["https"]


# --- ecosistema up --certfile/--keyfile (the embedded shape through the gateway server) ----------


def test_up_refuses_a_key_without_a_certificate_or_a_certificate_it_cannot_load(
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from ecosistema.cli import app

    runner = CliRunner()
    alone = runner.invoke(app, ["up", "--keyfile", str(tmp_path / "key.pem")])
    assert alone.exit_code != 0 and "--keyfile needs --certfile" in alone.output
    (tmp_path / "cert.pem").write_text("not a certificate")
    broken = runner.invoke(app, ["up", "--certfile", str(tmp_path / "cert.pem")])
    assert broken.exit_code != 0 and "cannot serve HTTPS" in broken.output
    for args in (["--distributed"], []):
        missing = runner.invoke(app, ["up", *args, "--certfile", str(tmp_path / "missing.pem")])
        assert missing.exit_code != 0 and "cannot serve HTTPS" in missing.output


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_up_serves_https_with_tls_1_2_or_later_and_a_dev_certificate(
    tmp_path: Path, default_model_cache: DefaultModelCache
) -> None:
    from ecosistema.certs import create_dev_certificates
    from tests.conftest import make_settings
    from tests.integration.test_certs_dev import _legacy_client, _legacy_server_accepts
    from tests.integration.test_distributed_support import child_environment, free_ports

    certs = create_dev_certificates(tmp_path / "certs", ("localhost", "127.0.0.1"))
    settings = make_settings("embedded", tmp_path)
    default_model_cache.seed(settings)
    (port,) = free_ports(1)
    log = (tmp_path / "up.log").open("wb")
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "ecosistema", "up", "--port", str(port)),
            *("--certfile", str(certs.server_cert), "--keyfile", str(certs.server_key)),
        ],
        env={**os.environ, **child_environment(settings)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    trust = ssl.create_default_context(cafile=str(certs.ca_cert))
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "up did not start serving HTTPS"
            try:
                response = httpx.get(f"{url}/api/v1/products", verify=trust, timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert response.status_code == 200
        assert response.headers["strict-transport-security"].startswith("max-age=")
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with raw, trust.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
        legacy = _legacy_client(certs.ca_cert)
        if _legacy_server_accepts(legacy, certs.server_cert, certs.server_key):
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{url}/api/v1/products", verify=legacy, timeout=5)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/api/v1/products", timeout=5)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
            log.close()
