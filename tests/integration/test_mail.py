"""Mail: the file mailer writes parseable messages; the SMTP mailer talks to a real SMTP server."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import smtplib
import ssl
import stat
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from structlog.testing import capture_logs

from ecosistema.platform.mail import FileMailer, SmtpMailer, create_mailer
from tests.conftest import make_settings

SENDER = "Ecosistema <no-reply@shop.example>"


def parse(raw: bytes) -> EmailMessage:
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


async def test_file_mailer_writes_a_complete_parseable_message(tmp_path: Path) -> None:
    mailer = FileMailer(tmp_path / "mail", sender=SENDER)
    with capture_logs() as logs:
        await mailer.send(
            "Ana Pérez <ana@example.com>",
            "Restablece tu contraseña",
            "Enlace: https://shop.example/reset?token=s3cret",
            html="<p>Enlace: <a href='https://shop.example/reset?token=s3cret'>aquí</a></p>",
        )
    files = list((tmp_path / "mail").iterdir())
    assert len(files) == 1 and files[0].suffix == ".eml"
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    message = parse(files[0].read_bytes())
    assert message["To"].addresses[0].addr_spec == "ana@example.com"
    assert message["From"].addresses[0].addr_spec == "no-reply@shop.example"
    assert str(message["Subject"]) == "Restablece tu contraseña"
    assert message["Date"] and message["Message-ID"].endswith("@shop.example>")
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert plain is not None and "token=s3cret" in plain.get_content()
    assert html is not None and "aquí" in html.get_content()
    assert [e["path"] for e in logs if e["event"] == "mail_written"] == [str(files[0])]
    assert "s3cret" not in repr(logs) and "ana@example.com" not in repr(logs)


async def test_file_mailer_names_files_in_sending_order(tmp_path: Path) -> None:
    mailer = FileMailer(tmp_path, sender=SENDER)
    for n in range(5):
        await mailer.send("bob@example.com", f"message {n}", "hi")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(set(names)) == 5
    subjects = [str(parse((tmp_path / n).read_bytes())["Subject"]) for n in names]
    assert subjects == [f"message {n}" for n in range(5)]


@pytest.mark.parametrize(
    "to", ["", "not an address", "a@example.com, b@example.com", "a@example.com\r\nBcc: x@y.z"]
)
async def test_mail_to_anything_but_one_address_is_refused(tmp_path: Path, to: str) -> None:
    with pytest.raises(ValueError):
        await FileMailer(tmp_path, sender=SENDER).send(to, "s", "t")
    assert list(tmp_path.iterdir()) == []


async def test_header_injection_through_the_subject_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        await FileMailer(tmp_path, sender=SENDER).send("a@example.com", "hi\r\nBcc: x@y.z", "t")


def test_create_mailer_follows_the_mailer_url(tmp_path: Path) -> None:
    default = create_mailer(make_settings("embedded", tmp_path))
    assert isinstance(default, FileMailer) and default.directory == tmp_path / "mail"
    chosen = create_mailer(make_settings("embedded", tmp_path, mailer_url=f"file://{tmp_path}/out"))
    assert isinstance(chosen, FileMailer) and chosen.directory == tmp_path / "out"
    smtp = create_mailer(
        make_settings(
            "embedded", tmp_path, mailer_url="smtp://us%40er:p%3Ass@mail.example:587?starttls=true"
        )
    )
    assert isinstance(smtp, SmtpMailer)
    assert (smtp.host, smtp.port, smtp.username, smtp.password) == (
        "mail.example",
        587,
        "us@er",
        "p:ss",
    )
    assert smtp.starttls and not smtp.implicit_tls
    smtps = create_mailer(make_settings("embedded", tmp_path, mailer_url="smtps://mail.example"))
    assert isinstance(smtps, SmtpMailer) and smtps.implicit_tls and smtps.port == 465
    with pytest.raises(ValueError, match="ECOSISTEMA_MAILER_URL"):
        # Settings refuse this URL at load; the mailer refuses it again when given one unchecked.
        unchecked = make_settings("embedded", tmp_path).model_copy(update={"mailer_url": "ftp://x"})
        create_mailer(unchecked)


# A minimal SMTP receiver (RFC 5321 subset: EHLO, STARTTLS, AUTH PLAIN, MAIL, RCPT, DATA, QUIT).


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    user: str | None
    tls: bool


@dataclass
class SmtpReceiver:
    port: int = 0
    tls: ssl.SSLContext | None = None
    credentials: tuple[str, str] | None = None
    inbox: asyncio.Queue[Received] = field(default_factory=asyncio.Queue)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        secure = writer.get_extra_info("sslcontext") is not None
        user: str | None = None
        sender = ""
        recipients: list[str] = []

        async def reply(line: str) -> None:
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        await reply("220 test ESMTP")
        try:
            while line := await reader.readline():
                verb, _, arg = line.decode().rstrip("\r\n").partition(" ")
                verb = verb.upper()
                if verb == "EHLO":
                    lines = ["test", "8BITMIME", "SMTPUTF8", "AUTH PLAIN"]
                    if self.tls and not secure:
                        lines.append("STARTTLS")
                    for i, ext in enumerate(lines):
                        await reply(f"250{'-' if i < len(lines) - 1 else ' '}{ext}")
                elif verb == "STARTTLS" and self.tls and not secure:
                    await reply("220 go ahead")
                    await writer.start_tls(self.tls)
                    secure = True
                elif verb == "AUTH":
                    mechanism, _, initial = arg.partition(" ")
                    if not initial:
                        await reply("334 ")
                        initial = (await reader.readline()).decode().strip()
                    _, name, secret = base64.b64decode(initial).decode().split("\0")
                    if self.credentials == (name, secret) and mechanism.upper() == "PLAIN":
                        user = name
                        await reply("235 authenticated")
                    else:
                        await reply("535 bad credentials")
                elif verb == "MAIL":
                    if self.credentials and user is None:
                        await reply("530 authentication required")
                        continue
                    sender, recipients = arg.split(":", 1)[1].split()[0].strip("<>"), []
                    await reply("250 ok")
                elif verb == "RCPT":
                    recipients.append(arg.split(":", 1)[1].strip().strip("<>"))
                    await reply("250 ok")
                elif verb == "DATA":
                    await reply("354 end with .")
                    chunks = []
                    while (chunk := await reader.readline()) != b".\r\n":
                        chunks.append(chunk[1:] if chunk.startswith(b"..") else chunk)
                    await self.inbox.put(
                        Received(sender, recipients, b"".join(chunks), user, secure)
                    )
                    await reply("250 queued")
                elif verb == "QUIT":
                    await reply("221 bye")
                    break
                else:
                    await reply("250 ok" if verb in ("RSET", "NOOP", "HELO") else "502 no")
        finally:
            writer.close()


@pytest.fixture
async def receiver() -> AsyncIterator[SmtpReceiver]:
    spec = SmtpReceiver(credentials=("shop", "pa:ss"))
    server = await asyncio.start_server(spec.handle, "127.0.0.1", 0)
    spec.port = server.sockets[0].getsockname()[1]
    async with server:
        yield spec


def self_signed() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "cert.pem").write_bytes(pem)
        (Path(folder) / "key.pem").write_bytes(key_pem)
        server.load_cert_chain(Path(folder) / "cert.pem", Path(folder) / "key.pem")
    client = ssl.create_default_context(cadata=pem.decode())
    return server, client


async def received(receiver: SmtpReceiver) -> Received:
    return await asyncio.wait_for(receiver.inbox.get(), timeout=10)


async def test_smtp_mailer_delivers_to_an_smtp_server(receiver: SmtpReceiver) -> None:
    mailer = SmtpMailer.from_url(f"smtp://shop:pa%3Ass@127.0.0.1:{receiver.port}", sender=SENDER)
    await mailer.send(
        "ana@example.com",
        "Tu pedido",
        "Gracias por tu pedido.\n.\nUna línea con punto.",
        html="<p>Gracias</p>",
    )
    got = await received(receiver)
    assert got.user == "shop"
    assert got.sender == "no-reply@shop.example"
    assert got.recipients == ["ana@example.com"]
    message = parse(got.data)
    assert str(message["Subject"]) == "Tu pedido"
    plain = message.get_body(("plain",))
    assert plain is not None
    body = plain.get_content().replace("\r\n", "\n")
    assert body == "Gracias por tu pedido.\n.\nUna línea con punto.\n"


async def test_smtp_mailer_upgrades_with_starttls(receiver: SmtpReceiver) -> None:
    server_tls, client_tls = self_signed()
    receiver.tls = server_tls
    mailer = SmtpMailer.from_url(
        f"smtp://shop:pa%3Ass@127.0.0.1:{receiver.port}?starttls=true",
        sender=SENDER,
        ssl_context=client_tls,
    )
    await mailer.send("ana@example.com", "Seguro", "cifrado en tránsito")
    got = await received(receiver)
    assert got.tls and got.user == "shop"


async def test_smtps_mailer_uses_implicit_tls() -> None:
    server_tls, client_tls = self_signed()
    spec = SmtpReceiver()
    server = await asyncio.start_server(spec.handle, "127.0.0.1", 0, ssl=server_tls)
    spec.port = server.sockets[0].getsockname()[1]
    async with server:
        mailer = SmtpMailer.from_url(
            f"smtps://127.0.0.1:{spec.port}", sender=SENDER, ssl_context=client_tls
        )
        await mailer.send("bob@example.com", "Hola", "texto")
        got = await received(spec)
    assert got.tls and got.user is None and got.recipients == ["bob@example.com"]


async def test_smtp_mailer_reports_rejected_credentials(receiver: SmtpReceiver) -> None:
    mailer = SmtpMailer.from_url(f"smtp://shop:wrong@127.0.0.1:{receiver.port}", sender=SENDER)
    with pytest.raises(smtplib.SMTPAuthenticationError):
        await mailer.send("ana@example.com", "x", "y")
    assert receiver.inbox.empty()


def test_names_and_subjects_beyond_ascii_reach_the_reader_as_written() -> None:
    from email import message_from_bytes
    from email.policy import default

    from ecosistema.platform.mail import build_message

    for sender, to in (
        ("Café Ñandú <shop@example.com>", "José Pérez <jose@example.com>"),
        ("Shop <shop@example.com>", "josé@exämple.com"),  # an address itself beyond ASCII
    ):
        raw = build_message(
            sender=sender, to=to, subject="Tu pedido — ¡gracias!", text="Hola", html="<p>Hola</p>"
        ).as_bytes()
        read = message_from_bytes(raw, policy=default)
        assert (str(read["From"]), str(read["To"])) == (sender, to)
        assert str(read["Subject"]) == "Tu pedido — ¡gracias!"
        body = read.get_body(preferencelist=("plain",))
        assert body is not None and body.get_content() == "Hola\n"
        html = read.get_body(preferencelist=("html",))
        assert html is not None and html.get_content() == "<p>Hola</p>\n"
