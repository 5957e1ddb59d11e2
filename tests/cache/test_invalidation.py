"""Writes invalidate: a write is fenced on its path's and its routes' tags while it runs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from prometheus_client import CollectorRegistry

from prodkit.asgi import Receive, Scope, Send, read_body
from prodkit.cache import (
    CacheMiddleware,
    CacheRule,
    CacheStore,
    MemoryCacheStore,
    RedisCacheStore,
    ResponseCache,
)
from tests.cache.helpers import USER, Backend, CountingApp, FakeClock, make_cache, open_store
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


# -- fenced writes: a read that starts after the commit never gets the data from before it ------


class Renaming:
    """``GET /items/1`` answers ``{"name"}``; ``PATCH`` renames it (its "commit"), then waits
    for ``answer`` before it answers: the instant between a commit and the response."""

    def __init__(self) -> None:
        self.name = "old"
        self.committed = asyncio.Event()
        self.answer = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "PATCH":
            self.name = json.loads((await read_body(receive))[0])["name"]
            self.committed.set()
            await self.answer.wait()
        body = json.dumps({"name": self.name}).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


ITEMS = {"/items/{id}": CacheRule(ttl=60)}
Stores = Callable[[], CacheStore]


@pytest.fixture
async def shared_store(backend: Backend) -> AsyncIterator[Stores]:
    """Stores over one backend, as every worker process has its own (memory: one object)."""
    memory = MemoryCacheStore()
    made = [] if backend.kind == "memory" else [await open_store(backend) for _ in range(3)]
    handed = iter(made)

    def factory() -> CacheStore:
        return memory if backend.kind == "memory" else next(handed)

    yield factory
    for store in made:
        await store.aclose()


async def read(client: httpx.AsyncClient, path: str = "/items/1") -> tuple[str, str]:
    """The name read and ``X-Cache``."""
    response = await client.get(path)
    assert response.status_code == 200
    return str(response.json()["name"]), str(response.headers["x-cache"])


async def test_a_read_after_the_commit_gets_the_new_data_before_the_write_answers(
    shared_store: Stores, make_client: ClientFactory
) -> None:
    app = Renaming()
    writer, reader = (
        make_client(
            CacheMiddleware(
                app,
                cache=ResponseCache(shared_store(), registry=CollectorRegistry()),
                routes=ITEMS,
            )
        )
        for _ in range(2)
    )
    await read(reader)
    assert await read(reader) == ("old", "HIT")
    write = asyncio.create_task(writer.patch("/items/1", json={"name": "new"}))
    await app.committed.wait()
    # Committed, not answered: the write's process could die now. Another worker's reads
    # find the new name, and store nothing while the write is under way.
    for _ in range(3):
        assert await read(reader) == ("new", "MISS")
    app.answer.set()
    assert (await write).status_code == 200
    assert await read(reader) == ("new", "MISS")
    assert await read(reader) == ("new", "HIT")


async def test_a_writer_that_died_after_its_commit_holds_the_fence_for_write_fence_seconds(
    shared_store: Stores, make_client: ClientFactory
) -> None:
    app = Renaming()
    clock = FakeClock(time.time())
    writer = ResponseCache(shared_store(), registry=CollectorRegistry(), write_fence=60)
    cache = ResponseCache(shared_store(), registry=CollectorRegistry(), wall_clock=clock)
    reader = make_client(CacheMiddleware(app, cache=cache, routes=ITEMS))
    await read(reader)
    assert await read(reader) == ("old", "HIT")
    # The writer fences the path, commits, and dies: its fence is never lifted.
    assert await writer.invalidating(["path:/items/1"]).__aenter__() is True
    app.name = "new"
    for _ in range(3):
        assert await read(reader) == ("new", "MISS")
    # The fence ends write_fence seconds after the write began; then the entry is stored.
    clock.now += 61
    assert await read(reader) == ("new", "MISS")
    assert await read(reader) == ("new", "HIT")


async def test_a_write_longer_than_the_fence_keeps_it_by_renewing_it(
    shared_store: Stores, make_client: ClientFactory
) -> None:
    app = Renaming()
    writer = ResponseCache(shared_store(), registry=CollectorRegistry(), write_fence=0.3)
    cache = ResponseCache(shared_store(), registry=CollectorRegistry())
    reader = make_client(CacheMiddleware(app, cache=cache, routes=ITEMS))
    await read(reader)
    async with writer.invalidating(["path:/items/1"]):
        # Four times the fence, the write not committed yet: what the reader computes now
        # would be stale once the write commits, so none of it is stored.
        for _ in range(12):
            assert await read(reader) == ("old", "MISS")
            await asyncio.sleep(0.1)
        app.name = "new"
    assert await read(reader) == ("new", "MISS")
    assert await read(reader) == ("new", "HIT")


async def test_a_retried_delete_that_finds_nothing_invalidates(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    # The first DELETE committed and its process died before invalidating; the client's
    # retry answers 404 and must still make the entry stale.
    app = CountingApp()
    client = make_client(make_cache(app, registry))
    await client.get("/funds/1", headers=USER)
    assert (await client.get("/funds/1", headers=USER)).headers["x-cache"] == "HIT"
    retry = await client.delete("/funds/1?status=404", headers=USER)
    assert retry.status_code == 404
    assert (await client.get("/funds/1", headers=USER)).headers["x-cache"] == "MISS"
