"""The response cache's rules, without I/O: what may be stored and for how long, what a response
is tagged with, what an event purges, and the memory bound."""

from __future__ import annotations

import pytest

from ecosistema.gateway.cache import (
    COLLECTION_TAG,
    CachedResponse,
    CacheFill,
    ResponseCache,
    freshness,
    purge_tags,
    tags_of,
)
from ecosistema.gateway.config import CacheRule, ResponseCacheConfig

RULE = CacheRule(ttl_seconds=60, vary=["Accept-Language"])


def headers(**values: str) -> list[tuple[bytes, bytes]]:
    return [(k.replace("_", "-").encode(), v.encode()) for k, v in values.items()]


@pytest.mark.parametrize(
    ("response_headers", "expected"),
    [
        (headers(content_type="application/json"), 60.0),
        (headers(cache_control="public, max-age=30"), 30.0),
        (headers(cache_control="public, max-age=600"), 60.0),
        (headers(cache_control="max-age=600, s-maxage=5"), 5.0),
        (headers(cache_control="no-store"), 0.0),
        (headers(cache_control="private, max-age=60"), 0.0),
        (headers(cache_control="public, no-cache"), 0.0),
        (headers(cache_control="max-age=soon"), 0.0),
        (headers(set_cookie="a=b"), 0.0),
        (headers(vary="*"), 0.0),
        (headers(vary="Cookie"), 0.0),
        (headers(vary="accept-language"), 60.0),
    ],
)
def test_freshness_honours_the_upstreams_cache_control_and_vary(
    response_headers: list[tuple[bytes, bytes]], expected: float
) -> None:
    assert freshness(response_headers, RULE) == expected


def test_no_cache_is_kept_when_events_are_the_revalidation() -> None:
    rule = CacheRule(ttl_seconds=60, revalidate_by_events=True)
    assert freshness(headers(cache_control="public, no-cache"), rule) == 60.0
    assert freshness(headers(cache_control="private, no-cache"), rule) == 0.0


def test_a_product_is_tagged_with_its_id_slug_and_skus() -> None:
    body = b'{"id":"p1","slug":"lamp","variants":[{"id":"v1","sku":"LAMP-1"}],"price":3}'
    assert tags_of(body, [], RULE) == {"p1", "lamp", "v1", "LAMP-1"}


def test_list_pages_carry_the_collection_tag_and_upstream_surrogate_keys() -> None:
    tags = tags_of(b'{"items":[{"id":"p1"}]}', headers(surrogate_key="k1 k2"), RULE)
    assert tags == {"p1", COLLECTION_TAG, "k1", "k2"}
    assert tags_of(b"not json", [], RULE) == set()


def test_an_event_names_its_ids_and_every_list() -> None:
    payload = {"product_id": "p1", "slug": "lamp", "reason": "x", "skus": ["A", "B"]}
    assert purge_tags(payload, ["product_id", "slug", "skus"]) == {
        "p1",
        "lamp",
        "A",
        "B",
        COLLECTION_TAG,
    }


def entry(key: bytes, body: bytes = b"x" * 100) -> CachedResponse:
    return CachedResponse(
        key, headers(etag='"e"', content_type="text/plain"), body, stored_at=0, ttl=10
    )


def test_the_least_recently_used_entries_leave_once_the_byte_bound_is_passed() -> None:
    size = entry(b"/a").size
    cache = ResponseCache(ResponseCacheConfig(max_bytes=size * 2))
    cache.put(entry(b"/a"), set())
    cache.put(entry(b"/b"), set())
    assert cache.get(b"/a", 1) is not None  # /a is now the most recently used
    cache.put(entry(b"/c"), set())
    assert b"/b" not in cache and b"/a" in cache and b"/c" in cache
    assert cache.size <= cache.max_bytes


def test_an_entry_larger_than_the_whole_cache_is_not_stored() -> None:
    cache = ResponseCache(ResponseCacheConfig(max_bytes=1000))
    cache.put(entry(b"/big", b"x" * 2000), set())
    assert len(cache) == 0 and cache.size == 0


def test_purge_drops_every_entry_with_a_named_tag_and_its_index() -> None:
    cache = ResponseCache(ResponseCacheConfig())
    cache.put(entry(b"/p1"), {"p1", "lamp"})
    cache.put(entry(b"/list"), {"p1", "p2", COLLECTION_TAG})
    cache.put(entry(b"/p2"), {"p2"})
    assert cache.purge({"lamp"}) == 1
    assert cache.purge({COLLECTION_TAG}) == 1
    assert list(cache) == [b"/p2"]
    assert cache.purge({"p1", "lamp"}) == 0


def test_expired_entries_are_not_served() -> None:
    cache = ResponseCache(ResponseCacheConfig())
    cache.put(entry(b"/a"), set())
    assert cache.get(b"/a", 9.9) is not None
    assert cache.get(b"/a", 10.0) is None
    assert len(cache) == 0


def test_a_stored_response_is_ready_bytes_and_answers_if_none_match() -> None:
    stored = CachedResponse(
        b"/p",
        headers(etag='W/"v1"', cache_control="public", connection="keep-alive", age="5"),
        b"body",
        stored_at=0,
        ttl=10,
    )
    assert stored.head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 4\r\n" in stored.head and b"x-cache: HIT\r\n" in stored.head
    assert b"connection" not in stored.head and b"age: 5" not in stored.head
    assert stored.not_modified.startswith(b"HTTP/1.1 304 Not Modified\r\n")
    assert b'etag: W/"v1"' in stored.not_modified
    assert stored.matches(b'"v1"') and stored.matches(b'"x", W/"v1"') and stored.matches(b"*")
    assert not stored.matches(b'"v2"')


def test_a_fill_stores_only_a_whole_cacheable_200_within_the_entry_bound() -> None:
    cache = ResponseCache(ResponseCacheConfig())
    small = CacheRule(ttl_seconds=60, max_entry_bytes=10)
    fill = CacheFill(cache, b"/big", small)
    fill.head(200, headers(cache_control="public"))
    fill.body(b"x" * 11)
    fill.complete()
    error = CacheFill(cache, b"/err", RULE)
    error.head(500, [])
    error.body(b"oops")
    error.complete()
    ok = CacheFill(cache, b"/ok", RULE)
    ok.head(200, headers(cache_control="public"))
    ok.body(b'{"id":')
    ok.body(b'"p9"}')
    ok.complete()
    assert list(cache) == [b"/ok"]
    assert cache.purge({"p9"}) == 1


def test_a_fill_retried_after_a_lost_attempt_keeps_only_the_answer_that_completed() -> None:
    cache = ResponseCache(ResponseCacheConfig())
    rule = CacheRule(ttl_seconds=60, max_entry_bytes=10)
    fill = CacheFill(cache, b"/p", rule)
    fill.head(200, headers(cache_control="public"))
    fill.body(b"lost-")  # the instance died here; the request went to another one
    fill.head(200, headers(cache_control="public"))
    fill.body(b'{"a":1}')
    fill.complete()
    stored = cache.get(b"/p", now=0.0)
    assert stored is not None and stored.body == b'{"a":1}'
