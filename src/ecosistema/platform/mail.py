"""Outgoing mail through a pluggable mailer: files under ``{data_dir}/mail`` by default, or SMTP.

Messages may carry secrets (password-reset links, sign-in codes), so neither mailer logs a body,
a recipient or a subject: the file mailer logs where it wrote the message, the SMTP mailer the
relay it handed it to.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import os
import re
import secrets
import smtplib
import ssl
import sys
from datetime import UTC, datetime
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr, getaddresses, make_msgid, parseaddr
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import parse_qs, unquote, urlsplit

import structlog

from ecosistema.platform.config import Settings

log = structlog.get_logger(__name__)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@runtime_checkable
class Mailer(Protocol):
    """Sends one message to one recipient."""

    async def send(self, to: str, subject: str, text: str, html: str | None = None) -> None:
        """Deliver (or hand over for delivery) one message."""
        ...


def build_message(
    *, sender: str, to: str, subject: str, text: str, html: str | None = None
) -> Message:
    """A complete RFC 5322 message: plain text, plus an HTML alternative when given."""
    recipient = _single_address(to)
    if any(c in subject for c in "\r\n"):
        raise ValueError("a mail subject cannot contain line breaks")
    sender_header, recipient_header = _header_address(sender), _header_address(recipient)
    if sender_header is None or recipient_header is None:
        return _international_message(sender, recipient, subject, text, html)
    # The classic builder: a quarter of the modern one's cost (which parses every header it
    # is given), the same message on the wire.
    message: Message = MIMEText(_ending_in_newline(text), "plain", "utf-8")
    if html is not None:
        alternative = MIMEMultipart("alternative")
        alternative.attach(message)
        alternative.attach(MIMEText(_ending_in_newline(html), "html", "utf-8"))
        message = alternative
    message["From"], message["To"] = sender_header, recipient_header
    message["Subject"] = subject if subject.isascii() else Header(subject, "utf-8").encode()
    message["Date"] = format_datetime(datetime.now(UTC))
    domain = _domain_of(sender)
    message["Message-ID"] = make_msgid(domain=domain) if domain else make_msgid()
    return message


def message_bytes(
    *, sender: str, to: str, subject: str, text: str, html: str | None = None
) -> bytes:
    """``build_message(...).as_bytes()``: the same message, byte for byte, written directly
    when its headers are short printable ASCII (the usual mail), at a tenth of the cost of the
    standard library's builder and generator, which fold and parse every header."""
    recipient = _single_address(to)
    if any(c in subject for c in "\r\n"):
        raise ValueError("a mail subject cannot contain line breaks")
    sender_header, domain = _sender(sender)
    recipient_header = _header_address(recipient)
    if sender_header is not None and recipient_header is not None:
        written = _written_message(
            sender_header,
            recipient_header,
            subject,
            text,
            html,
            date=format_datetime(datetime.now(UTC)),
            message_id=make_msgid(domain=domain) if domain else make_msgid(),
            boundary=_boundary(),
        )
        if written is not None:
            return written
    return build_message(sender=sender, to=to, subject=subject, text=text, html=html).as_bytes()


# What the standard library's classic generator writes for a header it need not fold: a line of
# printable ASCII no longer than 78 characters.
_UNFOLDED = re.compile(r"[\x20-\x7e]*")
_PART_HEADERS = (
    'Content-Type: text/{}; charset="utf-8"\nMIME-Version: 1.0\n'
    "Content-Transfer-Encoding: base64\n\n"
)


@functools.lru_cache(maxsize=16)
def _sender(sender: str) -> tuple[str | None, str | None]:
    """The sender's header and domain: one sender sends every message of a mailer."""
    return _header_address(sender), _domain_of(sender)


def _boundary() -> str:
    """A multipart boundary as the standard library's generator makes one. It need not be
    checked against the parts: they are base64, which has no ``-``."""
    return "=" * 15 + f"{secrets.randbelow(sys.maxsize):019d}" + "=="


def _written_message(
    sender: str,
    recipient: str,
    subject: str,
    text: str,
    html: str | None,
    *,
    date: str,
    message_id: str,
    boundary: str,
) -> bytes | None:
    """The message the classic builder and generator write for these headers and bodies, or
    None when one of its headers would be folded or encoded (left to them)."""
    headers = (
        ("From", sender),
        ("To", recipient),
        ("Subject", subject),
        ("Date", date),
        ("Message-ID", message_id),
    )
    for name, value in headers:
        if len(name) + 2 + len(value) > 78 or not _UNFOLDED.fullmatch(value):
            return None
    top = "".join(f"{name}: {value}\n" for name, value in headers)
    if html is None:
        return (
            'Content-Type: text/plain; charset="utf-8"\nMIME-Version: 1.0\n'
            f"Content-Transfer-Encoding: base64\n{top}\n{_base64_body(text)}"
        ).encode("ascii")
    # The boundary's nineteen digits put the content type past 78 characters: folded.
    return (
        f'Content-Type: multipart/alternative;\n boundary="{boundary}"\nMIME-Version: 1.0\n'
        f"{top}\n--{boundary}\n{_PART_HEADERS.format('plain')}{_base64_body(text)}\n"
        f"--{boundary}\n{_PART_HEADERS.format('html')}{_base64_body(html)}\n--{boundary}--\n"
    ).encode("ascii")


def _base64_body(body: str) -> str:
    """A body as the classic builder encodes it: UTF-8, base64 in lines of 76 characters."""
    return base64.encodebytes(_ending_in_newline(body).encode("utf-8")).decode("ascii")


def _ending_in_newline(body: str) -> str:
    """A body as the modern builder writes it: ending in a line break."""
    return body if body.endswith("\n") else body + "\n"


def _header_address(value: str) -> str | None:
    """``Name <address>`` as a header carries it (the name RFC 2047-encoded when not ASCII);
    None for an address that is not ASCII itself, which only the modern builder writes."""
    name, address = parseaddr(value)
    if not address.isascii():
        return None
    return formataddr((name, address), charset="utf-8")


def _international_message(
    sender: str, recipient: str, subject: str, text: str, html: str | None
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime.now(UTC))
    domain = _domain_of(sender)
    message["Message-ID"] = make_msgid(domain=domain) if domain else make_msgid()
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    return message


def _single_address(to: str) -> str:
    if any(c in to for c in "\r\n"):
        raise ValueError("a mail recipient cannot contain line breaks")
    found = getaddresses([to])
    if len(found) != 1 or "@" not in found[0][1]:
        raise ValueError(f"{to!r} is not a single mail address")
    name, address = found[0]
    local, _, domain = address.rpartition("@")
    if not local or not domain:
        raise ValueError(f"{to!r} is not a single mail address")
    return str(Address(display_name=name, username=local, domain=domain))


def _domain_of(sender: str) -> str | None:
    found = getaddresses([sender])
    if found and "@" in found[0][1]:
        return found[0][1].rpartition("@")[2] or None
    return None


class FileMailer:
    """Writes each message as an ``.eml`` file in one directory: the embedded default."""

    def __init__(self, directory: Path, *, sender: str) -> None:
        self.directory = directory
        self.sender = sender

    async def send(self, to: str, subject: str, text: str, html: str | None = None) -> None:
        """Write the message to ``{directory}/<time>-<random>.eml``."""
        content = message_bytes(sender=self.sender, to=to, subject=subject, text=text, html=html)
        path = await asyncio.to_thread(self._write, content)
        log.info("mail_written", path=str(path))

    def _write(self, content: bytes) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"{stamp}-{secrets.token_hex(4)}.eml"
        final = self.directory / name
        partial = self.directory / f".{name}.partial"
        # Written aside and renamed, so a reader of the directory never sees half a message;
        # private, because messages may carry sign-in links.
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, content)
        finally:
            os.close(fd)
        os.replace(partial, final)
        return final


class SmtpMailer:
    """Hands messages to an SMTP relay: plain, STARTTLS or implicit TLS (``smtps://``)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        sender: str,
        username: str | None = None,
        password: str | None = None,
        implicit_tls: bool = False,
        starttls: bool = False,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if implicit_tls and starttls:
            raise ValueError("choose implicit TLS (smtps://) or STARTTLS, not both")
        self.host = host
        self.port = port
        self.sender = sender
        self.username = username
        self.password = password
        self.implicit_tls = implicit_tls
        self.starttls = starttls
        self.timeout = timeout
        self.ssl_context = ssl_context

    @classmethod
    def from_url(
        cls, url: str, *, sender: str, ssl_context: ssl.SSLContext | None = None
    ) -> SmtpMailer:
        """``smtp://user:pass@host:port?starttls=true`` or ``smtps://user:pass@host:port``."""
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps"):
            raise ValueError(f"not an SMTP URL: {parts.scheme}://")
        if not parts.hostname:
            raise ValueError("the SMTP URL names no host, e.g. smtp://mail.example.com:587")
        implicit_tls = parts.scheme == "smtps"
        query = {k: v[-1].lower() for k, v in parse_qs(parts.query).items()}
        starttls = _flag(query.get("starttls", "false"), "starttls")
        timeout = float(query.get("timeout", "30"))
        return cls(
            parts.hostname,
            parts.port or (465 if implicit_tls else 25),
            sender=sender,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            implicit_tls=implicit_tls,
            starttls=starttls,
            timeout=timeout,
            ssl_context=ssl_context,
        )

    async def send(self, to: str, subject: str, text: str, html: str | None = None) -> None:
        """Deliver the message to the relay; raises ``smtplib.SMTPException`` or ``OSError``."""
        message = build_message(sender=self.sender, to=to, subject=subject, text=text, html=html)
        await asyncio.to_thread(self._deliver, message)
        log.info("mail_sent", relay=f"{self.host}:{self.port}", message_id=message["Message-ID"])

    def _context(self) -> ssl.SSLContext:
        return self.ssl_context or ssl.create_default_context()

    def _deliver(self, message: Message) -> None:
        smtp: smtplib.SMTP
        if self.implicit_tls:
            smtp = smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout, context=self._context()
            )
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        with smtp:
            smtp.ehlo()
            if self.starttls:
                smtp.starttls(context=self._context())
                smtp.ehlo()
            if self.username is not None:
                smtp.login(self.username, self.password or "")
            smtp.send_message(message)


def _flag(value: str, name: str) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false, not {value!r}")


def create_mailer(settings: Settings) -> Mailer:
    """The mailer ``Settings.mailer_url`` names: ``file://``, ``file:///dir``, ``smtp(s)://``."""
    url = settings.mailer_url.strip()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "file":
        parts = urlsplit(url)
        location = unquote(parts.path)
        if parts.netloc and parts.netloc != "localhost":
            location = unquote(parts.netloc) + location
        directory = Path(location) if location else settings.data_dir / "mail"
        return FileMailer(directory.expanduser(), sender=settings.mail_from)
    if scheme in ("smtp", "smtps"):
        return SmtpMailer.from_url(url, sender=settings.mail_from)
    # The URL is not repeated: it may hold the SMTP password.
    raise ValueError("ECOSISTEMA_MAILER_URL must start with file://, smtp:// or smtps://")
