"""The gateway's response cache: anonymous GETs of routes that ask for it, kept as ready-to-send
bytes in this worker's memory, bounded in bytes (least recently used first out), expired by TTL
and purged by tag when the owning service publishes an event about the cached resource.

A hit is answered without touching the upstream: the stored status line, headers and body are
written with only the per-request headers (request id, ``traceparent``, ``Age``, CORS, security)
added. Headers that describe the request that filled the entry (its ids, trace, timings) are
not stored: each hit gets its own.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

from ecosistema.gateway.config import CacheRule, ResponseCacheConfig

Headers = list[tuple[bytes, bytes]]

# Every list page is tagged with this, and every purge names it: a new, changed or archived
# resource can move in or out of any list.
COLLECTION_TAG = "\x00collection"

# Response headers never stored: per-connection, per-request, or added by the gateway itself.
# ``Date`` is kept: with ``Age`` it says how old the stored response is (RFC 9111, section 4).
_NOT_STORED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"age",
        b"x-cache",
        b"x-request-id",
        b"traceparent",
        b"tracestate",
        b"server-timing",
        b"x-content-type-options",
        b"x-frame-options",
        b"strict-transport-security",
        b"access-control-allow-origin",
        b"access-control-allow-credentials",
        b"access-control-expose-headers",
        b"ratelimit-limit",
        b"ratelimit-remaining",
        b"ratelimit-reset",
        b"surrogate-key",
        b"cache-tag",
    }
)
# The headers a 304 repeats from the stored 200 (RFC 9110, section 15.4.5).
_NOT_MODIFIED_KEEP = frozenset(
    {b"cache-control", b"content-location", b"etag", b"expires", b"vary", b"last-modified"}
)
_MAX_TAGS = 4096


def parse_cache_control(value: bytes) -> dict[str, str]:
    """Cache-Control directives, lower-cased, with their (unquoted) arguments."""
    out: dict[str, str] = {}
    for part in value.decode("latin-1").split(","):
        name, _, arg = part.strip().partition("=")
        if name:
            out[name.lower()] = arg.strip().strip('"')
    return out


def _seconds(value: str) -> float | None:
    return float(value) if value.isdigit() else None


def freshness(headers: Headers, rule: CacheRule) -> float:
    """How long (seconds) a 200 response may be served from the cache; 0: not at all."""
    directives: dict[str, str] = {}
    for name, value in headers:
        lname = name.lower()
        if lname == b"set-cookie":
            return 0.0
        if lname == b"cache-control":
            directives.update(parse_cache_control(value))
        elif lname == b"vary":
            names = {v.strip().lower() for v in value.decode("latin-1").split(",")}
            if "*" in names or not names <= {*rule.vary, ""}:
                return 0.0
    if "no-store" in directives or "private" in directives:
        return 0.0
    if "no-cache" in directives and not rule.revalidate_by_events:
        return 0.0
    ttl = rule.ttl_seconds
    limit = directives.get("s-maxage")
    if limit is None:
        limit = directives.get("max-age")
    if limit is not None:
        seconds = _seconds(limit)
        if seconds is None:
            return 0.0
        ttl = min(ttl, seconds)
    return ttl


def _walk(value: Any, fields: frozenset[str], out: set[str], depth: int = 0) -> None:
    if depth > 6 or len(out) >= _MAX_TAGS:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if key in fields and isinstance(item, str | int) and not isinstance(item, bool):
                out.add(str(item))
            elif isinstance(item, dict | list):
                _walk(item, fields, out, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _walk(item, fields, out, depth + 1)


def tags_of(body: bytes, headers: Headers, rule: CacheRule) -> set[str]:
    """What a response is about: ``Surrogate-Key``/``Cache-Tag`` values from the upstream, the
    values of the rule's tag fields in a JSON body, and the collection tag for list pages."""
    tags: set[str] = set()
    for name, value in headers:
        if name.lower() in (b"surrogate-key", b"cache-tag"):
            tags.update(value.decode("latin-1").replace(",", " ").split())
    try:
        document = json.loads(body) if body[:1] in (b"{", b"[") else None
    except ValueError:
        document = None
    if document is not None:
        _walk(document, frozenset(rule.tag_fields), tags)
        if isinstance(document, list) or (
            isinstance(document, dict)
            and any(isinstance(document.get(k), list) for k in ("items", "data", "results"))
        ):
            tags.add(COLLECTION_TAG)
    return tags


def purge_tags(payload: dict[str, Any], fields: Iterable[str]) -> set[str]:
    """The tags an event names: values of the purge fields of its payload, and every list."""
    tags = {COLLECTION_TAG}
    for name in fields:
        value = payload.get(name)
        if isinstance(value, list):
            tags.update(str(v) for v in value if isinstance(v, str | int))
        elif isinstance(value, str | int) and not isinstance(value, bool):
            tags.add(str(value))
    return tags


class CachedResponse:
    """One stored 200: its head (status line and stored headers, ending before the per-request
    headers), its body, and what a 304 needs."""

    __slots__ = ("body", "etag", "expires_at", "head", "key", "not_modified", "size", "stored_at")

    def __init__(
        self, key: bytes, headers: Headers, body: bytes, *, stored_at: float, ttl: float
    ) -> None:
        self.key = key
        self.body = body
        self.stored_at = stored_at
        self.expires_at = stored_at + ttl
        self.etag: bytes | None = None
        lines = [b"HTTP/1.1 200 OK\r\n"]
        not_modified = [b"HTTP/1.1 304 Not Modified\r\n"]
        for name, value in headers:
            lname = name.lower()
            if lname in _NOT_STORED:
                continue
            line = b"%s: %s\r\n" % (name, value)
            lines.append(line)
            if lname == b"etag":
                self.etag = value
            if lname in _NOT_MODIFIED_KEEP:
                not_modified.append(line)
        lines.append(b"content-length: %d\r\nx-cache: HIT\r\n" % len(body))
        not_modified.append(b"x-cache: HIT\r\n")
        self.head = b"".join(lines)
        self.not_modified = b"".join(not_modified)
        self.size = len(self.head) + len(body) + len(key) + 200

    def matches(self, if_none_match: bytes) -> bool:
        """Whether If-None-Match names the stored ETag (weak comparison)."""
        etag = self.etag
        if etag is None:
            return False
        bare = etag.removeprefix(b"W/")
        for candidate in if_none_match.split(b","):
            candidate = candidate.strip()
            if candidate == b"*" or candidate.removeprefix(b"W/") == bare:
                return True
        return False


class ResponseCache:
    """Stored responses by key, least recently used evicted first once ``max_bytes`` is passed."""

    def __init__(self, config: ResponseCacheConfig) -> None:
        self.config = config
        self.max_bytes = config.max_bytes
        self._entries: OrderedDict[bytes, CachedResponse] = OrderedDict()
        self._tags: dict[str, set[bytes]] = {}
        self._entry_tags: dict[bytes, set[str]] = {}
        self.size = 0
        self.hits = 0
        self.misses = 0
        self.purged = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self._entries))

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: bytes, now: float) -> CachedResponse | None:
        """The fresh entry for ``key``, or None (an expired one is dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if entry.expires_at <= now:
            self._drop(key)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, entry: CachedResponse, tags: set[str]) -> None:
        """Store ``entry`` under its key and tags, evicting the least recently used as needed."""
        if entry.size > self.max_bytes:
            return
        if entry.key in self._entries:
            self._drop(entry.key)
        self._entries[entry.key] = entry
        self._entry_tags[entry.key] = tags
        for tag in tags:
            self._tags.setdefault(tag, set()).add(entry.key)
        self.size += entry.size
        while self.size > self.max_bytes and self._entries:
            self._drop(next(iter(self._entries)))

    def purge(self, tags: Iterable[str]) -> int:
        """Drop every entry carrying one of ``tags``; returns how many were dropped."""
        keys: set[bytes] = set()
        for tag in tags:
            keys |= self._tags.get(tag, set())
        for key in keys:
            self._drop(key)
        self.purged += len(keys)
        return len(keys)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()
        self._tags.clear()
        self._entry_tags.clear()
        self.size = 0

    def _drop(self, key: bytes) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self.size -= entry.size
        for tag in self._entry_tags.pop(key, ()):
            keys = self._tags.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._tags[tag]


class CacheFill:
    """Collects a response on its way to the client and stores it if it may be cached."""

    __slots__ = ("_body", "_cache", "_headers", "_key", "_rule", "_size", "_ttl")

    def __init__(self, cache: ResponseCache, key: bytes, rule: CacheRule) -> None:
        self._cache = cache
        self._key = key
        self._rule = rule
        self._headers: Headers = []
        self._body: list[bytes] | None = None
        self._size = 0
        self._ttl = 0.0

    def head(self, status: int, headers: Headers) -> None:
        """The response head arrived (again, when an attempt is retried): decide whether to
        keep the body."""
        self._body = None
        self._size = 0
        if status != 200:
            return
        ttl = freshness(headers, self._rule)
        if ttl <= 0:
            return
        self._ttl = ttl
        self._headers = headers
        self._body = []

    def body(self, data: bytes) -> None:
        """A piece of the body went to the client."""
        if self._body is None:
            return
        self._size += len(data)
        if self._size > self._rule.max_entry_bytes:
            self._body = None
            return
        self._body.append(data)

    def complete(self) -> None:
        """The whole response went through: store it."""
        if self._body is None:
            return
        body = b"".join(self._body)
        self._body = None
        entry = CachedResponse(
            self._key, self._headers, body, stored_at=time.monotonic(), ttl=self._ttl
        )
        self._cache.put(entry, tags_of(body, self._headers, self._rule))
