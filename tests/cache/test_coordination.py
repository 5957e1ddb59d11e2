"""Coordination (``prodkit.cache._coordination``): concurrent misses of one key call the app once,
in a process and across workers; a write is fenced on its path's and routes' tags while it runs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as redis_asyncio
from prometheus_client import CollectorRegistry

from prodkit.asgi import ASGIApp, CircuitBreaker, Message, Receive, Scope, Send, read_body
from prodkit.cache import (
    CacheMiddleware,
    CacheRule,
    CacheStore,
    MemoryCacheStore,
    RedisCacheStore,
    ResponseCache,
)
from tests.cache.helpers import (
    USER,
    Backend,
    CountingApp,
    FakeClock,
    arrivals,
    make_cache,
    open_store,
    outcomes,
)
from tests.conftest import ClientFactory
from tests.servers import HOST, free_port, run_server

# -- single flight ------------------------------------------------------------------------------


async def test_concurrent_misses_call_the_app_once(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    app.gate = asyncio.Event()
    client = make_client(arrivals(make_cache(app, registry), 100, app.gate))
    responses = await asyncio.gather(*(client.get("/items/1?x=1") for _ in range(100)))
    assert {r.status_code for r in responses} == {200}
    assert {r.content for r in responses} == {responses[0].content}
    assert app.calls["/items/1"] == 1
    assert {r.headers["x-cache"] for r in responses} == {"MISS"}
    assert outcomes(registry, "/items/{id}") == {"miss": 1, "coalesced": 99}


async def test_concurrent_misses_of_other_variants_get_their_own_response(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    app.gate = asyncio.Event()
    client = make_client(arrivals(make_cache(app, registry), 20, app.gate))
    languages = ["en", "de"] * 10
    responses = await asyncio.gather(
        *(client.get("/lang", headers={"Accept-Language": lang}) for lang in languages)
    )
    assert [r.text for r in responses] == languages


async def test_waiters_do_not_hang_when_the_leader_fails(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    gate = asyncio.Event()
    calls = 0

    async def flaky(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal calls
        calls += 1
        first = calls == 1
        await gate.wait()
        if first:
            raise RuntimeError("upstream failed")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    client = make_client(arrivals(make_cache(flaky, registry), 5, gate))
    results = await asyncio.gather(
        *(client.get("/items/1") for _ in range(5)), return_exceptions=True
    )
    failures = [r for r in results if isinstance(r, Exception)]
    assert len(failures) == 1
    assert all(r.status_code == 200 for r in results if isinstance(r, httpx.Response))


async def test_a_waiter_gives_up_on_a_leader_that_outlives_the_lease(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    release = asyncio.Event()
    started = asyncio.Event()
    calls = 0

    async def first_call_hangs(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            started.set()
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(calls).encode()})

    client = make_client(make_cache(first_call_hangs, registry, lock_lease=0.2))
    leader = asyncio.create_task(client.get("/items/1"))
    await started.wait()
    waiter = await client.get("/items/1")
    assert waiter.status_code == 200
    assert waiter.text == "2"
    release.set()
    assert (await leader).status_code == 200


async def test_a_read_after_a_write_never_joins_a_flight_that_started_before_it(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    app.gate = asyncio.Event()
    client = make_client(make_cache(app, registry))
    held = app.gate
    leader = asyncio.create_task(client.get("/funds/1", headers=USER))  # reads the old row
    await app.started.wait()
    app.gate = None  # later handler runs are not held back; the leader still waits on `held`
    write = await client.patch("/funds/1", headers=USER)
    assert write.status_code == 200
    # Joining the leader's flight would wait for it and hand back the pre-write answer.
    after = await asyncio.wait_for(client.get("/funds/1", headers=USER), 5)
    assert after.json()["calls"] == 2  # its own handler run, after the write
    held.set()
    assert (await leader).status_code == 200


# -- across workers, over real Redis ------------------------------------------------------------


@pytest.mark.redis
async def test_hundred_concurrent_misses_call_the_app_once(
    redis_cache: ResponseCache, registry: CollectorRegistry, make_client: ClientFactory
) -> None:
    app = CountingApp()
    app.gate = asyncio.Event()
    client = make_client(arrivals(make_cache(app, registry, cache=redis_cache), 100, app.gate))
    responses = await asyncio.gather(*(client.get("/items/1") for _ in range(100)))
    assert {r.status_code for r in responses} == {200}
    assert app.calls["/items/1"] == 1
    assert outcomes(registry, "/items/{id}") == {"miss": 1, "coalesced": 99}
    assert (await client.get("/items/1")).headers["x-cache"] == "HIT"


@pytest.mark.redis
async def test_two_middlewares_sharing_redis_compute_once(
    redis_target: tuple[str, str], make_client: ClientFactory
) -> None:
    """Two 'workers' in one process, 50 requests each: one computation between them.

    Generous timeouts: on a loaded machine a Redis call past the default 0.25 s fails open
    and computes a second time, which is right, but not what this test is about."""
    url, prefix = redis_target
    app = CountingApp()
    app.gate = asyncio.Event()
    caches = [
        ResponseCache(
            RedisCacheStore.from_url(url, key_prefix=prefix, socket_timeout=5),
            registry=(registry := CollectorRegistry()),
            breaker=CircuitBreaker("cache", timeout=5, registry=registry),
        )
        for _ in range(2)
    ]
    workers = [make_cache(app, CollectorRegistry(), cache=cache) for cache in caches]
    seen = 0
    # The computation waits until all 100 requests are in and both workers asked for the lease:
    # a worker whose first ask came only after the first worker had computed and let go of it
    # would compute again, which is right (docs/caching.md) but not what this test is about.
    claims = [0, 0]

    def open_gate_when_ready() -> None:
        if seen >= 100 and all(claims):
            assert app.gate is not None
            app.gate.set()

    for index, cache in enumerate(caches):

        async def claim(
            key: str, token: str, lease: float, _index: int = index, _claim: Any = cache.claim
        ) -> bool:
            claims[_index] += 1
            held: bool = await _claim(key, token, lease)
            open_gate_when_ready()
            return held

        cache.claim = claim  # type: ignore[method-assign]

    def counted(worker: ASGIApp) -> ASGIApp:
        async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
            nonlocal seen
            seen += 1
            open_gate_when_ready()
            await worker(scope, receive, send)

        return wrapper

    clients = [make_client(counted(worker)) for worker in workers]
    try:
        responses = await asyncio.gather(*(clients[i % 2].get("/items/9") for i in range(100)))
    finally:
        for cache in caches:  # closed before the loop is, even when a request failed
            await cache.aclose()
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    assert app.calls["/items/9"] == 1


@pytest.mark.redis
async def test_a_waiter_that_outlives_the_lease_computes_itself(
    redis_target: tuple[str, str], make_client: ClientFactory
) -> None:
    url, prefix = redis_target
    stuck = CountingApp()
    stuck.gate = asyncio.Event()  # the first worker's computation never finishes on its own
    fine = CountingApp()
    caches = [
        ResponseCache(
            RedisCacheStore.from_url(url, key_prefix=prefix), registry=CollectorRegistry()
        )
        for _ in range(2)
    ]
    first = make_client(make_cache(stuck, CollectorRegistry(), cache=caches[0], lock_lease=0.3))
    second = make_client(make_cache(fine, CollectorRegistry(), cache=caches[1], lock_lease=0.3))
    leader = asyncio.create_task(first.get("/items/5"))
    await stuck.started.wait()  # the leader holds the lease and is computing
    response = await second.get("/items/5")
    assert response.status_code == 200
    assert fine.calls["/items/5"] == 1
    stuck.gate.set()
    assert (await leader).status_code == 200
    for cache in caches:
        await cache.aclose()


@pytest.mark.redis
@pytest.mark.server
async def test_uvicorn_workers_share_one_computation(
    redis_target: tuple[str, str], tmp_path: Path
) -> None:
    url, prefix = redis_target
    port = free_port()
    control = redis_asyncio.Redis.from_url(url)
    args = ["uvicorn", "tests.servers.cache_app:app", "--host", HOST, "--port", str(port)]
    args += ["--workers", "2", "--log-level", "warning"]
    env = {"CACHE_TEST_REDIS_URL": url, "CACHE_TEST_PREFIX": prefix}
    requests = 40
    try:
        with run_server(args, port=port, tmp_path=tmp_path, env=env):
            limits = httpx.Limits(max_connections=requests, max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", limits=limits) as http:
                pids: set[str] = set()
                for attempt in range(5):  # until both workers took part in one round
                    path = f"/items/{attempt}"
                    await control.delete(f"{prefix}go", f"{prefix}arrivals")
                    pending = [
                        asyncio.create_task(http.get(path, timeout=30)) for _ in range(requests)
                    ]
                    for _ in range(2000):
                        if int(await control.get(f"{prefix}arrivals") or 0) >= requests:
                            break
                        await asyncio.sleep(0.01)
                    await control.set(f"{prefix}go", "1")
                    responses = await asyncio.gather(*pending)
                    assert {r.status_code for r in responses} == {200}
                    assert len({r.content for r in responses}) == 1
                    computations = int(await control.get(f"{prefix}computations:{path}") or 0)
                    assert computations == 1
                    pids = {r.headers["x-worker-pid"] for r in responses}
                    if len(pids) >= 2:
                        break
                assert len(pids) >= 2, "every request went to one worker in 5 rounds"
    finally:
        await control.aclose()


# -- writes invalidate --------------------------------------------------------------------------


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
        ResponseCache(
            RedisCacheStore.from_url(url, key_prefix=prefix), registry=CollectorRegistry()
        )
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


@pytest.mark.redis
async def test_a_read_that_starts_after_a_commit_never_joins_a_computation_from_before_it(
    redis_target: tuple[str, str],
) -> None:
    """The leader of a single flight has answered and is still storing its entry when a write
    commits; a read that starts then must not be handed the leader's answer, from before the
    commit (it reads the new state: the write's fence makes it compute)."""
    url, prefix = redis_target
    data = {"name": "before"}
    patching, commit, committed, finish = (asyncio.Event() for _ in range(4))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "PATCH":
            await read_body(receive)
            patching.set()
            await commit.wait()
            data["name"] = "after"
            committed.set()
            await finish.wait()
        body = json.dumps(data).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    cache = ResponseCache(
        RedisCacheStore.from_url(url, key_prefix=prefix), registry=CollectorRegistry()
    )
    middleware = make_cache(app, CollectorRegistry(), cache=cache)
    stored = asyncio.Event()  # holds the leader's store (and so its flight) back
    complete = cache.complete

    async def slow_complete(*args: Any) -> Any:
        await stored.wait()
        return await complete(*args)

    cache.complete = slow_complete  # type: ignore[method-assign,assignment]

    async def request(method: str, answered: asyncio.Event | None = None) -> bytes:
        scope = {
            "type": "http",
            "method": method,
            "path": "/items/9",
            "raw_path": b"/items/9",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"test")],
            "http_version": "1.1",
            "scheme": "http",
            "client": ("127.0.0.1", 5000),
            "server": ("test", 80),
        }
        body = bytearray()

        async def receive() -> Message:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.body":
                body.extend(message.get("body", b""))
                if not message.get("more_body") and answered is not None:
                    answered.set()

        await middleware(scope, receive, send)
        return bytes(body)

    try:
        async with asyncio.timeout(20):
            write = asyncio.create_task(request("PATCH"))
            await patching.wait()  # the write is fenced and under way
            answered = asyncio.Event()
            first = asyncio.create_task(request("GET", answered))
            await answered.wait()  # the first read has its answer; its flight is storing
            commit.set()
            await committed.wait()
            second = asyncio.create_task(request("GET"))
            await asyncio.sleep(0.05)
            stored.set()
            assert json.loads(await first) == {"name": "before"}
            assert json.loads(await second) == {"name": "after"}
            finish.set()
            await write
    finally:
        stored.set()
        commit.set()
        finish.set()
        await cache.aclose()
