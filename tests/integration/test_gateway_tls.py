"""HTTPS at the edge: a self-signed certificate, TLS 1.2 at least, HSTS on responses."""

from __future__ import annotations

import datetime as dt
import io
import ssl
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ecosistema.gateway import create_ssl_context, gateway_config, serve
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
