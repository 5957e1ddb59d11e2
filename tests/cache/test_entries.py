"""Entries looked up on the memory and Redis stores: what a hit serves after the entry changes.

A hit reuses what it worked out for the same URL and the same stored bytes before (the entry
key, the decoded entry); these cases check that nothing reused outlives the entry it came from.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import CollectorRegistry

from prodkit import HTTPMetricsMiddleware
from prodkit.cache import (
    CacheMiddleware,
    CacheRule,
    ResponseCache,
)
from tests.cache.helpers import USER, Backend, CountingApp, make_cache, open_store
from tests.conftest import ClientFactory


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
