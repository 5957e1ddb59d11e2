"""Single flight: concurrent misses of one key call the app once, in a process and across workers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import redis.asyncio as redis_asyncio
from prometheus_client import CollectorRegistry

from prodkit.asgi import ASGIApp, Receive, Scope, Send
from prodkit.cache import RedisCacheStore, ResponseCache
from tests.cache.helpers import USER, CountingApp, arrivals, make_cache, outcomes
from tests.conftest import ClientFactory
from tests.servers import HOST, free_port, run_server


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


# -- across workers, over real Redis ---------------------------------------------------------


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
    """Two 'workers' in one process, 50 requests each: one computation between them."""
    url, prefix = redis_target
    app = CountingApp()
    app.gate = asyncio.Event()
    caches = [
        ResponseCache(
            RedisCacheStore.from_url(url, key_prefix=prefix), registry=CollectorRegistry()
        )
        for _ in range(2)
    ]
    workers = [make_cache(app, CollectorRegistry(), cache=cache) for cache in caches]
    seen = 0

    def counted(worker: ASGIApp) -> ASGIApp:
        async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
            nonlocal seen
            seen += 1
            if seen == 100:
                assert app.gate is not None
                app.gate.set()
            await worker(scope, receive, send)

        return wrapper

    clients = [make_client(counted(worker)) for worker in workers]
    responses = await asyncio.gather(*(clients[i % 2].get("/items/9") for i in range(100)))
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    assert app.calls["/items/9"] == 1
    for cache in caches:
        await cache.aclose()


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
