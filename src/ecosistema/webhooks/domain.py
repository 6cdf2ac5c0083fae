"""Webhooks' pure rules: public event names, the signature scheme, the retry schedule, and
which targets a subscription may point at. No I/O."""

from __future__ import annotations

import ipaddress
import json
import random
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final
from urllib.parse import urlsplit

from ecosistema.platform.signatures import (
    SCHEME,
    parse_signature_header,
)

SIGNATURE_HEADER: Final = "Ecosistema-Signature"
EVENT_ID_HEADER: Final = "Ecosistema-Event-Id"
EVENT_TYPE_HEADER: Final = "Ecosistema-Event-Type"
DELIVERY_ID_HEADER: Final = "Ecosistema-Delivery-Id"
ATTEMPT_HEADER: Final = "Ecosistema-Delivery-Attempt"
USER_AGENT: Final = "Ecosistema-Webhooks/1"
SECRET_PREFIX: Final = "whsec_"
SIGNATURE_SCHEME: Final = SCHEME
DEFAULT_TOLERANCE_SECONDS: Final = 300

ALL_EVENTS: Final = "*"
PING: Final = "ping"

# Internal bus event name -> public name. The public names are the contract with receivers;
# the internal ones may change without them noticing.
PUBLIC_NAMES: Final[Mapping[str, str]] = {
    "OrderPlaced": "order.placed",
    "OrderPaid": "order.paid",
    "OrderCancelled": "order.cancelled",
    "OrderFulfilled": "order.fulfilled",
    "OrderRefunded": "order.refunded",
    "PaymentSucceeded": "payment.succeeded",
    "PaymentFailed": "payment.failed",
    "PaymentRefunded": "payment.refunded",
    "InvoiceIssued": "invoice.issued",
    "CreditNoteIssued": "credit_note.issued",
    "ProductCreated": "product.created",
    "ProductUpdated": "product.updated",
    "ProductArchived": "product.archived",
    "CategoryCreated": "category.created",
    "CategoryUpdated": "category.updated",
    "CategoryDeleted": "category.deleted",
    "StockChanged": "stock.changed",
    "StockLow": "stock.low",
}
EVENT_TYPES: Final[tuple[str, ...]] = tuple(sorted(PUBLIC_NAMES.values()))
SUBSCRIBABLE: Final[frozenset[str]] = frozenset(EVENT_TYPES) | {ALL_EVENTS}

# Bounds on what is kept of a receiver's answer.
RESPONSE_BODY_EXCERPT_BYTES: Final = 2048
RESPONSE_HEADERS_KEPT: Final = 32
RESPONSE_HEADER_VALUE_CHARS: Final = 256

# Backoff: the n-th retry waits about BASE * 2**(n-1), at most CAP, with "equal jitter" (half
# fixed, half random) so receivers that failed together are not hit again all at once.
RETRY_BASE_SECONDS: Final = 30.0
RETRY_CAP_SECONDS: Final = 4 * 3600.0


class SubscriptionStatus(StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class InvalidSignature(Exception):
    """A webhook request whose signature header does not prove it came from Ecosistema."""


def public_name(internal: str) -> str | None:
    """The public event type of a bus event, or ``None`` for events not offered to webhooks."""
    return PUBLIC_NAMES.get(internal)


def unknown_event_types(requested: Iterable[str]) -> list[str]:
    """The requested event types that are neither a known public type nor ``*``."""
    return sorted({t for t in requested if t not in SUBSCRIBABLE})


def subscribed(event_types: Sequence[str], public_type: str) -> bool:
    """Whether a subscription to ``event_types`` receives ``public_type``."""
    return ALL_EVENTS in event_types or public_type in event_types


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` and 32 random bytes, URL-safe."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def event_document(
    event_id: str, event_type: str, created: datetime, data: Mapping[str, Any]
) -> dict[str, Any]:
    """What a receiver gets: ``{id, type, created (unix seconds), data}``."""
    return {"id": event_id, "type": event_type, "created": int(created.timestamp()), "data": data}


def event_body(event_id: str, event_type: str, created: datetime, data: Mapping[str, Any]) -> bytes:
    """The exact bytes a receiver gets (and the signature covers)."""
    document = event_document(event_id, event_type, created, data)
    return json.dumps(document, separators=(",", ":"), default=str).encode()


def verify_signature(
    body: bytes,
    header: str,
    secret: str,
    *,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> int:
    """Check a delivery as a receiver would; returns its timestamp, else ``InvalidSignature``.

    Any ``v1`` signature may match (several are sent while a secret is being rotated), and the
    timestamp must be within ``tolerance`` seconds of ``now`` so a captured request cannot be
    replayed later.
    """
    parsed = parse_signature_header(header)
    if parsed.timestamp_given and parsed.timestamp is None:
        raise InvalidSignature("the timestamp is not an integer")
    if parsed.timestamp is None or not parsed.signatures:
        raise InvalidSignature("the header needs t= and at least one v1=")
    if not parsed.signed_by(secret, body):
        raise InvalidSignature("no signature matches the body and secret")
    current = time.time() if now is None else now
    if tolerance > 0 and abs(current - parsed.timestamp) > tolerance:
        raise InvalidSignature("the timestamp is outside the tolerance")
    return parsed.timestamp


def retry_delay(failures: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after the ``failures``-th failed attempt (1-based), with equal jitter."""
    ceiling = min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2.0 ** max(0, failures - 1))
    draw = (rng or _RNG).random()
    return ceiling / 2 + draw * ceiling / 2


_RNG = random.SystemRandom()


@dataclass(frozen=True)
class AttemptOutcome:
    """What happens to a delivery after an attempt."""

    status: DeliveryStatus
    next_attempt_at: datetime | None


def after_attempt(
    *,
    succeeded: bool,
    failures: int,
    now: datetime,
    deadline: datetime,
    retry: bool = True,
    rng: random.Random | None = None,
) -> AttemptOutcome:
    """A delivery's next state: done, retried later, or given up once past its deadline."""
    if succeeded:
        return AttemptOutcome(DeliveryStatus.SUCCEEDED, None)
    if not retry:
        return AttemptOutcome(DeliveryStatus.FAILED, None)
    next_at = now + timedelta(seconds=retry_delay(failures, rng))
    if next_at > deadline:
        if now < deadline:
            # One last try at the deadline itself rather than none for the rest of the window.
            return AttemptOutcome(DeliveryStatus.PENDING, deadline)
        return AttemptOutcome(DeliveryStatus.FAILED, None)
    return AttemptOutcome(DeliveryStatus.PENDING, next_at)


def should_disable(failing_since: datetime | None, now: datetime, window: timedelta) -> bool:
    """A subscription that has failed without a single success for ``window`` is disabled."""
    return failing_since is not None and now - failing_since >= window


class TargetError(ValueError):
    """A subscription URL that may not be used."""


def check_url_shape(url: str) -> str:
    """The URL if it is an absolute http(s) URL with a host and no credentials; else TargetError."""
    if len(url) > 2048:
        raise TargetError("the URL is longer than 2048 characters")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        raise TargetError("the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetError("the URL is malformed") from exc
    if parts.scheme not in ("http", "https"):
        raise TargetError("only http and https URLs are accepted")
    if not parts.hostname:
        raise TargetError("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise TargetError("credentials in the URL are not accepted; authenticate by signature")
    if parts.fragment:
        raise TargetError("the URL may not have a fragment")
    if port == 0:
        raise TargetError("port 0 is not a valid target")
    return url


def host_of(url: str) -> str:
    """The host part of a checked URL, without IPv6 brackets."""
    return urlsplit(url).hostname or ""


def is_public_address(address: str) -> bool:
    """Whether an IP address is a public unicast one (not loopback, private, link-local...)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def literal_address(host: str) -> str | None:
    """The host as an IP address when it is written as one."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


PRIVATE_HOST_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def obviously_private_host(host: str) -> bool:
    """A host that is private without resolving it: loopback names or a non-public literal IP."""
    lowered = host.lower().rstrip(".")
    if lowered in PRIVATE_HOST_NAMES or lowered.endswith((".localhost", ".local", ".internal")):
        return True
    literal = literal_address(lowered)
    return literal is not None and not is_public_address(literal)


def excerpt(body: bytes, limit: int = RESPONSE_BODY_EXCERPT_BYTES) -> str:
    """The start of a response body as text, bounded, with invalid UTF-8 replaced."""
    text = body[:limit].decode("utf-8", errors="replace")
    return text + ("…" if len(body) > limit else "")


def kept_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """A bounded copy of a receiver's response headers."""
    out: dict[str, str] = {}
    for name, value in headers:
        if len(out) >= RESPONSE_HEADERS_KEPT:
            break
        out[name.lower()[:100]] = value[:RESPONSE_HEADER_VALUE_CHARS]
    return out
