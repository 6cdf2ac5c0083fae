"""``ecosistema certs dev``: a development CA and a server certificate it signs, and the gateway
(a real ``ecosistema gateway`` process) serving TLS 1.2+ with them to a client trusting the CA."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from typer.testing import CliRunner

from ecosistema.certs import create_dev_certificates, parse_hosts
from ecosistema.cli import app
from tests.integration.test_distributed_support import free_ports
from tests.integration.test_gateway_upstream import start_upstream, stop

runner = CliRunner()


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certs_dev_writes_a_ca_and_a_server_certificate_it_signed(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["certs", "dev", "--dir", str(tmp_path), "--hosts", "localhost,127.0.0.1,api.test"]
    )
    assert result.exit_code == 0, result.output
    ca, server = _load(tmp_path / "ca.pem"), _load(tmp_path / "server.pem")
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "api.test"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    for key in ("ca-key.pem", "server-key.pem"):
        assert (tmp_path / key).stat().st_mode & 0o777 == 0o600
    assert "--certfile" in result.output and "--cacert" in result.output


def test_a_second_run_keeps_the_ca_and_issues_a_new_certificate(tmp_path: Path) -> None:
    first = create_dev_certificates(tmp_path, ("localhost",))
    ca_before = first.ca_cert.read_bytes()
    server_before = first.server_cert.read_bytes()
    second = create_dev_certificates(tmp_path, ("localhost", "shop.test"))
    assert first.ca_created and not second.ca_created
    assert second.ca_cert.read_bytes() == ca_before
    assert second.server_cert.read_bytes() != server_before
    _load(second.server_cert).verify_directly_issued_by(_load(second.ca_cert))


@pytest.mark.parametrize("hosts", ["", " , ", "bad host", "exa$mple.com"])
def test_hosts_that_are_not_names_or_addresses_are_refused(hosts: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="host"):
        parse_hosts(hosts)
    result = runner.invoke(app, ["certs", "dev", "--dir", str(tmp_path), "--hosts", hosts])
    assert result.exit_code == 1
    assert not (tmp_path / "server.pem").exists()


@pytest.fixture
def tls_gateway(tmp_path: Path) -> tuple[str, Path]:
    made = create_dev_certificates(tmp_path / "certs", ("localhost", "127.0.0.1"))
    upstream, url = start_upstream("tls")
    routes = tmp_path / "routes.json"
    routes.write_text(
        json.dumps(
            {
                "services": {"svc": {"instances": [url], "health_path": None}},
                "routes": [{"prefix": "/echo", "service": "svc", "public": True}],
            }
        )
    )
    (port,) = free_ports(1)
    gateway = subprocess.Popen(
        [
            *(sys.executable, "-m", "ecosistema", "gateway", "--routes", str(routes)),
            *("--port", str(port), "--workers", "1"),
            *("--certfile", str(made.server_cert), "--keyfile", str(made.server_key)),
        ],
        env={**os.environ, "ECOSISTEMA_LOG_LEVEL": "WARNING"},
        stdout=subprocess.DEVNULL,
    )
    context = ssl.create_default_context(cafile=str(made.ca_cert))
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                with httpx.Client(verify=context) as client:
                    client.get(f"https://localhost:{port}/echo")
                break
            except httpx.TransportError:
                assert gateway.poll() is None, "the gateway exited"
                assert time.monotonic() < deadline, "the gateway did not start"
                time.sleep(0.1)
        yield f"localhost:{port}", made.ca_cert
    finally:
        gateway.terminate()
        gateway.wait(timeout=20)
        stop(upstream)


def test_gateway_serves_tls_with_the_dev_certificate_to_a_client_trusting_the_ca(
    tls_gateway: tuple[str, Path],
) -> None:
    address, ca = tls_gateway
    context = ssl.create_default_context(cafile=str(ca))
    with httpx.Client(verify=context) as client:
        response = client.get(f"https://{address}/echo")
        version = response.extensions["network_stream"].get_extra_info("ssl_object").version()
    assert response.status_code == 200
    assert version in ("TLSv1.2", "TLSv1.3")
    assert response.headers["strict-transport-security"].startswith("max-age=")
    # The certificate covers the IP address too.
    ip = address.replace("localhost", "127.0.0.1")
    with httpx.Client(verify=context) as client:
        assert client.get(f"https://{ip}/echo").status_code == 200


def _legacy_client(ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    return context


def _legacy_server_accepts(client: ssl.SSLContext, cert: Path, key: Path) -> bool:
    """Control: whether this client can complete a TLS 1.1 handshake with a server that allows
    it (on this OpenSSL build), so a refusal by the gateway means the gateway refused."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1
    server.set_ciphers("ALL:@SECLEVEL=0")
    server.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept() -> None:
        conn, _ = listener.accept()
        with contextlib.suppress(OSError), server.wrap_socket(conn, server_side=True):
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        with raw, client.wrap_socket(raw, server_hostname="localhost"):
            return True
    except (ssl.SSLError, OSError):
        return False
    finally:
        thread.join(timeout=5)
        listener.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_gateway_refuses_tls_below_1_2(tls_gateway: tuple[str, Path]) -> None:
    address, ca = tls_gateway
    client = _legacy_client(ca)
    certs = ca.parent
    if not _legacy_server_accepts(client, certs / "server.pem", certs / "server-key.pem"):
        pytest.skip("this OpenSSL build cannot speak TLS 1.1 at all, so nothing to refuse")
    with httpx.Client(verify=client) as http, pytest.raises(httpx.ConnectError):
        http.get(f"https://{address}/echo")


def test_a_client_not_trusting_the_dev_ca_is_refused_the_connection(
    tls_gateway: tuple[str, Path],
) -> None:
    address, _ = tls_gateway
    untrusting = httpx.Client(verify=ssl.create_default_context())
    with untrusting, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusting.get(f"https://{address}/echo")
