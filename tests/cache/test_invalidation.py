"""Writes invalidate: a write is fenced on its path's and its routes' tags while it runs."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from prodkit.cache import CacheRule, MemoryCacheStore, RedisCacheStore, ResponseCache
from tests.cache.helpers import USER, CountingApp, make_cache
from tests.conftest import ClientFactory


@pytest.mark.parametrize("method", ["PATCH", "DELETE", "PUT", "POST"])
async def test_a_successful_write_makes_the_next_get_a_miss(
    method: str, make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry))
    bob = {"X-User-Id": "bob"}
    for path, user in (
        ("/funds/1", USER),
        ("/funds/1/projection?simulations=100", USER),
        ("/funds/2", bob),
    ):
        await client.get(path, headers=user)
        assert (await client.get(path, headers=user)).headers["x-cache"] == "HIT"
    write = await client.request(method, "/funds/1", headers=USER)
    assert write.status_code in (200, 204)
    fund = await client.get("/funds/1", headers=USER)
    assert fund.headers["x-cache"] == "MISS"
    assert fund.json()["calls"] == 2
    projection = await client.get("/funds/1/projection?simulations=100", headers=USER)
    assert projection.headers["x-cache"] == "MISS"  # tag fund:{id}
    # alice's write bumped fund:1, path:/funds/1 and user:alice; bob's other fund stays
    other = await client.get("/funds/2", headers=bob)
    assert other.headers["x-cache"] == "HIT"


async def test_a_failed_write_invalidates_too(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    # A write that answers an error may have committed (a 500 raised after the commit, the
    # 404 of a retried DELETE that had committed): the cache cannot tell, so it invalidates.
    app = CountingApp()
    client = make_client(make_cache(app, registry, routes={"/fail": CacheRule(ttl=60)}))
    # /fail answers GET normally and POST with 500
    await client.get("/fail")
    assert (await client.get("/fail")).headers["x-cache"] == "HIT"
    assert (await client.post("/fail")).status_code == 500
    assert (await client.get("/fail")).headers["x-cache"] == "MISS"


@pytest.mark.parametrize(
    ("method", "status", "invalidates"),
    [
        # RFC 9111 section 4.4: a non-error status (2xx or 3xx) to an unsafe method...
        ("POST", 303, True),  # the POST-redirect-GET of a form
        ("PUT", 301, True),
        ("PATCH", 204, True),
        # ... "including methods whose safety is unknown"
        ("PURGE", 200, True),
        ("FROBNICATE", 302, True),
        # an error status too: the write may have changed the data before it failed
        ("POST", 400, True),
        ("PURGE", 404, True),
        ("DELETE", 500, True),
        # safe methods (RFC 9110 section 9.2.1) never invalidate
        ("OPTIONS", 200, False),
        ("TRACE", 200, False),
    ],
)
async def test_any_answer_to_an_unsafe_or_unknown_method_invalidates(
    method: str,
    status: int,
    invalidates: bool,
    make_client: ClientFactory,
    registry: CollectorRegistry,
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry))
    await client.get("/items/1")
    assert (await client.get("/items/1")).headers["x-cache"] == "HIT"
    write = await client.request(method, f"/items/1?status={status}")
    assert write.status_code == status
    after = await client.get("/items/1")
    assert after.headers["x-cache"] == ("MISS" if invalidates else "HIT")


async def test_invalidate_tags_from_the_app(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    cache = ResponseCache(MemoryCacheStore(), registry=registry)
    client = make_client(make_cache(app, registry, cache=cache))
    await client.get("/funds/1", headers=USER)
    await client.get("/funds/1", headers={"X-User-Id": "bob"})
    assert await cache.invalidate_tags(["user:alice"])
    assert (await client.get("/funds/1", headers=USER)).headers["x-cache"] == "MISS"
    assert (await client.get("/funds/1", headers={"X-User-Id": "bob"})).headers["x-cache"] == "HIT"
    assert registry.get_sample_value("prodkit_cache_invalidations_total", {"outcome": "ok"}) == 1


async def test_extra_invalidation_templates(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    cache = make_cache(app, registry, invalidate={"/funds": ["user:{caller}"]})
    client = make_client(cache)
    await client.get("/funds/1", headers=USER)
    assert (await client.post("/funds", headers=USER)).status_code == 200
    assert (await client.get("/funds/1", headers=USER)).headers["x-cache"] == "MISS"


@pytest.mark.redis
async def test_a_write_through_one_worker_invalidates_the_other(
    redis_target: tuple[str, str], make_client: ClientFactory
) -> None:
    url, prefix = redis_target
    app = CountingApp()
    caches = [
        ResponseCache(RedisCacheStore(url, key_prefix=prefix), registry=CollectorRegistry())
        for _ in range(2)
    ]
    first, second = (make_client(make_cache(app, CollectorRegistry(), cache=c)) for c in caches)
    user = {"X-User-Id": "alice"}
    assert (await first.get("/funds/1", headers=user)).headers["x-cache"] == "MISS"
    assert (await second.get("/funds/1", headers=user)).headers["x-cache"] == "HIT"
    assert (await first.patch("/funds/1", headers=user)).status_code == 200
    assert (await second.get("/funds/1", headers=user)).headers["x-cache"] == "MISS"
    assert (await first.get("/funds/1", headers=user)).headers["x-cache"] == "HIT"
    for cache in caches:
        await cache.aclose()
