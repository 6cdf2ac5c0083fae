"""A message written directly is the one the standard library's classic builder writes, byte for
byte: the same headers in the same order and folding, the same base64 bodies and boundaries."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from ecosistema.platform import mail
from ecosistema.platform.mail import build_message, message_bytes

SHOP = "Tienda Prueba <orders@shop.example>"
BUYER = "buyer-1a2b3c4d@example.com"


def _written_like(
    raw: bytes, sender: str, to: str, subject: str, text: str, html: str | None
) -> bytes | None:
    """What the direct writer gives for the date, message id and boundary ``raw`` carries (None
    for addresses beyond ASCII, which only the modern builder writes)."""
    sender_header = mail._header_address(sender)
    recipient_header = mail._header_address(mail._single_address(to))
    if sender_header is None or recipient_header is None:
        return None
    head = raw.split(b"\n\n", 1)[0].decode("ascii")
    date = re.search(r"^Date: (.*)$", head, re.M)
    message_id = re.search(r"^Message-ID: (.*)$", head, re.M)
    boundary = re.search(r'boundary="([^"]*)"', head)
    assert date is not None and message_id is not None
    return mail._written_message(
        sender_header,
        recipient_header,
        subject,
        text,
        html,
        date=date.group(1),
        message_id=message_id.group(1),
        boundary=boundary.group(1) if boundary else "",
    )


def test_a_shops_order_mail_is_written_directly_as_the_classic_builder_writes_it() -> None:
    text = "Hello Nora,\n\nThank you for your order ORD-100042.\n\n1 x Tee (TEE-M) at €20.00\n"
    html = '<!doctype html><html><body style="font-family:sans-serif"><p>Hello</p></body></html>'
    for body in (html, None):
        raw = build_message(
            sender=SHOP, to=BUYER, subject="Order ORD-100042 confirmed", text=text, html=body
        ).as_bytes()
        written = _written_like(raw, SHOP, BUYER, "Order ORD-100042 confirmed", text, body)
        assert written == raw


def test_a_message_written_directly_has_the_headers_a_reader_expects() -> None:
    raw = message_bytes(sender=SHOP, to=BUYER, subject="Order 1 confirmed", text="Hi", html="<p>")
    head = raw.split(b"\n\n", 1)[0].decode("ascii")
    assert head.startswith('Content-Type: multipart/alternative;\n boundary="===============')
    assert "\nFrom: Tienda Prueba <orders@shop.example>\nTo: buyer-1a2b3c4d@example.com\n" in head
    assert re.search(r"\nMessage-ID: <[^>]+@shop\.example>$", head)


_NAMES = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x24F), max_size=60)
_BODIES = st.text(max_size=400)


@settings(max_examples=300, deadline=None)
@given(
    name=_NAMES,
    mailbox=st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,40}", fullmatch=True),
    subject=st.text(
        alphabet=st.characters(min_codepoint=32, max_codepoint=0x24F, blacklist_characters="\x7f"),
        max_size=90,
    ),
    text=_BODIES,
    html=st.one_of(st.none(), _BODIES),
)
def test_any_message_is_written_as_the_classic_builder_writes_it_or_left_to_it(
    name: str, mailbox: str, subject: str, text: str, html: str | None
) -> None:
    to = f"{name} <{mailbox}@example.com>" if name.strip() else f"{mailbox}@example.com"
    try:
        raw = build_message(sender=SHOP, to=to, subject=subject, text=text, html=html).as_bytes()
    except ValueError:
        return
    written = _written_like(raw, SHOP, to, subject, text, html)
    assert written is None or written == raw
