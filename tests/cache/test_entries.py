"""Entries (``prodkit.cache._entries``): a response as an entry's bytes and its ETag, entries
looked up and stored on the memory and Redis stores, and reads answered from them.

A hit reuses what it worked out for the same URL and the same stored bytes before (the entry
keys, the decoded entry): these tests change the entry under it and check that the next hit
serves the new response.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from prodkit import HTTPMetricsMiddleware
from prodkit.cache import (
    CachedResponse,
    CacheMiddleware,
    CacheRule,
    ResponseCache,
    compute_etag,
)
from prodkit.cache._entries import DecodedEntries
from prodkit.cache._rules import etag_matches
from tests.cache.helpers import USER, Backend, CountingApp, make_cache, open_store
from tests.conftest import ClientFactory

# -- an entry as bytes, its ETag ----------------------------------------------------------------


header_names = st.binary(min_size=1, max_size=20).map(lambda b: b.lower())
headers = st.lists(st.tuples(header_names, st.binary(max_size=50)), max_size=8)


@given(
    status=st.integers(100, 599),
    headers=headers,
    body=st.binary(max_size=2000),
    versions=st.lists(st.text(max_size=40), max_size=4),
    vary=st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1), max_size=3),
    stored_at=st.floats(0, 2e9),
    route=st.none() | st.text(max_size=40),
)
def test_cached_responses_round_trip(
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    versions: list[str],
    vary: list[str],
    stored_at: float,
    route: str | None,
) -> None:
    entry = CachedResponse(
        status,
        tuple(headers),
        body,
        compute_etag(body, headers),
        stored_at,
        tuple(versions),
        tuple(vary),
        route,
    )
    assert CachedResponse.decode(entry.encode()) == entry


@given(body=st.binary(max_size=500), content_type=st.binary(max_size=40))
def test_an_etag_matches_itself_weakly_and_strongly(body: bytes, content_type: bytes) -> None:
    etag = compute_etag(body, [(b"content-type", content_type)])
    assert etag_matches(etag, etag)
    assert etag_matches(b"W/" + etag, etag)
    assert etag_matches(b'"other", ' + etag, etag)
    assert etag_matches(b"*", etag)
    assert not etag_matches(b'"other"', etag)


def test_decoded_entries_are_reused_only_for_the_same_bytes_and_stay_bounded() -> None:
    def encoded(body: bytes) -> bytes:
        return CachedResponse(200, (), body, compute_etag(body), 1.0).encode()

    decoded = DecodedEntries(max_entries=2, max_bytes=1000)
    old = encoded(b"old")
    assert decoded.decode("a", old).body == b"old"
    assert decoded.decode("a", bytes(old)).body == b"old"  # equal bytes from another read
    assert decoded.decode("a", encoded(b"new")).body == b"new"  # replaced under the same key
    decoded.decode("b", encoded(b"b"))
    decoded.decode("c", encoded(b"c"))
    assert len(decoded) == 2
    assert decoded.decode("d", encoded(b"x" * 2000)).body == b"x" * 2000  # too big to keep
    assert len(decoded) == 2


# -- entries looked up and stored ---------------------------------------------------------------


@pytest.fixture
async def cache(backend: Backend, registry: CollectorRegistry) -> AsyncIterator[ResponseCache]:
    made = ResponseCache(await open_store(backend), registry=registry)
    yield made
    await made.aclose()


def calls(response: httpx.Response) -> int:
    return int(json.loads(response.content)["calls"])


async def test_a_hit_after_a_refresh_serves_the_new_response(
    cache: ResponseCache, registry: CollectorRegistry, make_client: ClientFactory
) -> None:
    client = make_client(make_cache(CountingApp(), registry, cache=cache))
    assert calls(await client.get("/items/1")) == 1
    assert calls(await client.get("/items/1")) == 1
    refreshed = await client.get("/items/1", headers={"Cache-Control": "no-cache"})
    assert (refreshed.headers["x-cache"], calls(refreshed)) == ("MISS", 2)
    hit = await client.get("/items/1")
    assert (hit.headers["x-cache"], calls(hit)) == ("HIT", 2)
    assert hit.headers["etag"] == refreshed.headers["etag"]
    assert hit.headers["content-length"] == str(len(hit.content))


async def test_a_hit_after_a_write_serves_the_new_response(
    cache: ResponseCache, registry: CollectorRegistry, make_client: ClientFactory
) -> None:
    client = make_client(make_cache(CountingApp(), registry, cache=cache))
    for _ in range(2):
        assert calls(await client.get("/funds/1", headers=USER)) == 1
    assert (await client.patch("/funds/1", headers=USER)).status_code == 200
    miss = await client.get("/funds/1", headers=USER)
    hit = await client.get("/funds/1", headers=USER)
    assert (miss.headers["x-cache"], calls(miss)) == ("MISS", 2)
    assert (hit.headers["x-cache"], calls(hit)) == ("HIT", 2)


async def test_repeated_hits_keep_urls_callers_and_variants_apart(
    cache: ResponseCache, registry: CollectorRegistry, make_client: ClientFactory
) -> None:
    client = make_client(make_cache(CountingApp(), registry, cache=cache))
    requests = [
        ("/items/1", {}),
        ("/items/1?b=2&a=1", {}),
        ("/items/2", {}),
        ("/funds/1", {"X-User-Id": "alice"}),
        ("/funds/1", {"X-User-Id": "bob"}),
        ("/lang", {"Accept-Language": "de"}),
        ("/lang", {"Accept-Language": "fr"}),
    ]
    first = [await client.get(url, headers=headers) for url, headers in requests]
    assert [r.headers["x-cache"] for r in first] == ["MISS"] * len(requests)
    for _ in range(3):
        again = [await client.get(url, headers=headers) for url, headers in requests]
        assert [r.headers["x-cache"] for r in again] == ["HIT"] * len(requests)
        assert [r.content for r in again] == [r.content for r in first]
    assert [r.content for r in first[-2:]] == [b"de", b"fr"]


async def test_a_hit_is_counted_under_the_route_the_app_matched(
    cache: ResponseCache, registry: CollectorRegistry, make_client: ClientFactory
) -> None:
    """The app does not run on a hit; the metrics still see the template of its mounted route."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route

    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["item_id"]})

    app = Starlette(routes=[Mount("/api", routes=[Route("/items/{item_id}", item)])])
    cached = CacheMiddleware(
        app, routes={"/api/items/{id}": CacheRule(ttl=60)}, cache=cache, registry=registry
    )
    client = make_client(HTTPMetricsMiddleware(cached, registry=registry))
    responses = [await client.get("/api/items/7") for _ in range(3)]
    assert [r.headers["x-cache"] for r in responses] == ["MISS", "HIT", "HIT"]
    labels = {"method": "GET", "route": "/api/items/{item_id}", "status_code": "200"}
    assert registry.get_sample_value("http_request_duration_seconds_count", labels) == 3


# -- what is stored and how it is answered: storability, ETags and 304s, Vary, large bodies -----


NOT_STORED = [
    # (path): the response says a shared cache must not store it (RFC 9111 section 3)
    pytest.param("/cookie", id="response Set-Cookie"),
    pytest.param("/nostore", id="response Cache-Control no-store (5.2.2.5)"),
    pytest.param("/private", id="response Cache-Control private (5.2.2.7)"),
    pytest.param("/nocache", id="response Cache-Control no-cache (5.2.2.4)"),
    pytest.param("/varystar", id="response Vary * (4.1)"),
    pytest.param("/missing", id="status not configured (404)"),
]


@pytest.mark.parametrize("path", NOT_STORED)
async def test_responses_a_shared_cache_must_not_store(
    path: str, make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry))
    for _ in range(3):
        response = await client.get(path)
        client.cookies.clear()  # the client would send /cookie's cookie back: not this case
        assert response.headers.get("x-cache") == "MISS"
    assert app.calls[path] == 3


# -- ETag and conditional requests (RFC 9110 sections 8.8.3, 13.1.2) ----------------------------


async def test_if_none_match_gets_304_on_hit_and_on_miss(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry))
    first = await client.get("/lang", headers={"Accept-Language": "en"})
    etag = first.headers["etag"]
    hit = await client.get("/lang", headers={"Accept-Language": "en", "If-None-Match": etag})
    assert hit.status_code == 304
    assert hit.content == b""
    assert hit.headers["etag"] == etag
    assert hit.headers["vary"] == "Accept-Language"
    assert hit.headers["x-cache"] == "HIT"
    assert "content-type" not in hit.headers
    weak = await client.get(
        "/lang", headers={"Accept-Language": "en", "If-None-Match": f"W/{etag}"}
    )
    assert weak.status_code == 304
    listed = await client.get(
        "/lang", headers={"Accept-Language": "en", "If-None-Match": f'"other", {etag}'}
    )
    assert listed.status_code == 304
    other = await client.get("/lang", headers={"Accept-Language": "en", "If-None-Match": '"x"'})
    assert other.status_code == 200

    # A fresh cache (another process) computes the same ETag and answers 304 on its miss.
    other_app = CountingApp()
    fresh = make_client(make_cache(other_app, CollectorRegistry()))
    miss = await fresh.get("/lang", headers={"Accept-Language": "en", "If-None-Match": etag})
    assert miss.status_code == 304
    assert miss.headers["x-cache"] == "MISS"
    assert miss.headers["etag"] == etag
    assert other_app.calls["/lang"] == 1


async def test_the_apps_own_etag_is_kept(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    client = make_client(make_cache(CountingApp(), registry))
    await client.get("/etag")
    response = await client.get("/etag", headers={"If-None-Match": '"app-v1"'})
    assert response.status_code == 304
    assert response.headers["etag"] == 'W/"app-v1"'


def test_etag_is_the_same_in_another_process() -> None:
    code = (
        "from prodkit.cache import compute_etag;"
        "print(compute_etag(b'{\"id\":1}', [(b'content-type', b'application/json')]).decode())"
    )
    env_seeds = ("1", "2")
    results = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": ":".join(sys.path)},
        ).stdout.strip()
        for seed in env_seeds
    }
    assert results == {compute_etag(b'{"id":1}', [(b"content-type", b"application/json")]).decode()}


# -- Vary and large bodies ----------------------------------------------------------------------


async def test_vary_on_a_request_header_keeps_separate_entries(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry))
    en = {"Accept-Language": "en"}
    de = {"Accept-Language": "de"}
    assert (await client.get("/lang", headers=en)).headers["x-cache"] == "MISS"
    assert (await client.get("/lang", headers=de)).headers["x-cache"] == "MISS"
    hit_en = await client.get("/lang", headers=en)
    hit_de = await client.get("/lang", headers=de)
    assert (hit_en.headers["x-cache"], hit_en.text) == ("HIT", "en")
    assert (hit_de.headers["x-cache"], hit_de.text) == ("HIT", "de")
    assert (await client.get("/lang")).text == "none"
    assert app.calls["/lang"] == 3


async def test_a_large_response_streams_through_unstored(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry, max_body_bytes=10_000))
    for _ in range(2):
        response = await client.get("/big")
        assert response.headers["x-cache"] == "MISS"
        assert response.content == b"".join(bytes([i]) * 4096 for i in range(16))
    assert app.calls["/big"] == 2


# A hit reuses the entry decoded from the same bytes (DecodedEntries) instead of decoding the
# stored value again: what it hands out must be what decoding those bytes gives.
_STORED = st.builds(
    lambda status, body, stored_at: CachedResponse(
        status, ((b"content-type", b"text/plain"),), body, compute_etag(body), stored_at
    ).encode(),
    st.sampled_from([200, 404]),
    st.binary(max_size=300),
    st.sampled_from([1.0, 2.0]),
)


@given(
    reads=st.lists(st.tuples(st.sampled_from("abc"), _STORED, st.booleans()), max_size=30),
    max_entries=st.integers(1, 3),
    max_bytes=st.integers(1, 1000),
)
def test_a_remembered_entry_is_what_decoding_the_stored_bytes_gives(
    reads: list[tuple[str, bytes, bool]], max_entries: int, max_bytes: int
) -> None:
    decoded = DecodedEntries(max_entries=max_entries, max_bytes=max_bytes)
    last: dict[str, bytes] = {}
    for key, value, again in reads:
        if again and key in last:
            value = last[key]  # the same object again, as the memory store returns it
        stored = bytes(bytearray(value))  # equal bytes from another read, as Redis returns them
        for read in (value, stored):
            assert decoded.decode(key, read) == CachedResponse.decode(read)
        last[key] = value
        assert len(decoded) <= max_entries
