"""CacheMiddleware over real Redis: single flight across workers, invalidation, failing Redis."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as redis_asyncio
from prometheus_client import CollectorRegistry

from prodkit.asgi import ASGIApp, BreakerState, CircuitBreaker, Receive, Scope, Send
from prodkit.cache import RedisCacheStore, ResponseCache
from tests.cache.helpers import CountingApp
from tests.cache.test_middleware import arrivals, make_cache, outcomes
from tests.conftest import ClientFactory
from tests.servers import HOST, free_port, run_server, wait_for_port

pytestmark = pytest.mark.redis


@pytest.fixture
def redis_target(redis_url: str, redis_prefix: str) -> tuple[str, str]:
    """The shared test Redis and this test's key prefix (resolved outside the event loop)."""
    return redis_url, redis_prefix


@pytest.fixture
async def redis_cache(
    redis_target: tuple[str, str], registry: CollectorRegistry
) -> AsyncIterator[ResponseCache]:
    url, prefix = redis_target
    cache = ResponseCache(RedisCacheStore(url, key_prefix=prefix), registry=registry)
    yield cache
    await cache.aclose()


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


async def test_two_middlewares_sharing_redis_compute_once(
    redis_target: tuple[str, str], make_client: ClientFactory
) -> None:
    """Two 'workers' in one process, 50 requests each: one computation between them."""
    url, prefix = redis_target
    app = CountingApp()
    app.gate = asyncio.Event()
    caches = [
        ResponseCache(RedisCacheStore(url, key_prefix=prefix), registry=CollectorRegistry())
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


async def test_a_waiter_that_outlives_the_lease_computes_itself(
    redis_target: tuple[str, str], make_client: ClientFactory
) -> None:
    url, prefix = redis_target
    stuck = CountingApp()
    stuck.gate = asyncio.Event()  # the first worker's computation never finishes on its own
    fine = CountingApp()
    caches = [
        ResponseCache(RedisCacheStore(url, key_prefix=prefix), registry=CollectorRegistry())
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


# -- a Redis that dies, and one that never answers -----------------------------------------


@contextlib.contextmanager
def throwaway_redis(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A private redis-server on 127.0.0.1 (never the shared one), stopped by its PID."""
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 10, process)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def timed_get(client: httpx.AsyncClient, path: str) -> tuple[httpx.Response, float]:
    start = time.perf_counter()
    response = await client.get(path)
    return response, time.perf_counter() - start


async def test_redis_stopped_mid_run_fails_open_with_bounded_latency(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    port = free_port()
    clock = FakeClock()
    breaker = CircuitBreaker(
        "cache-test",
        failure_threshold=3,
        recovery_time=5,
        timeout=0.25,
        registry=registry,
        clock=clock,
    )
    with throwaway_redis(port) as server:
        store = RedisCacheStore(
            f"redis://{HOST}:{port}/0", socket_timeout=0.25, connect_timeout=0.25
        )
        cache = ResponseCache(store, breaker=breaker, registry=registry)
        app = CountingApp()
        client = make_client(make_cache(app, registry, cache=cache))
        assert (await client.get("/items/1")).headers["x-cache"] == "MISS"
        assert (await client.get("/items/1")).headers["x-cache"] == "HIT"
        healthy = [(await timed_get(client, "/items/1"))[1] for _ in range(20)]

        server.kill()  # SIGKILL to our own redis-server's PID
        server.wait(timeout=10)
        down: list[float] = []
        for index in range(40):
            response, elapsed = await timed_get(client, f"/items/{index % 4}")
            assert response.status_code == 200
            down.append(elapsed)
        assert breaker.state is BreakerState.OPEN
        assert outcomes(registry, "/items/{id}").get("error", 0) == 40
        # Bounded: connection refused is quick, and the open breaker makes it free.
        assert max(down) < 2.0
        assert statistics.median(down[10:]) < 0.05
        print(  # noqa: T201 - the measured latency, reported with -s
            f"\nredis killed: healthy median {statistics.median(healthy) * 1e3:.2f} ms, "
            f"first 3 {[round(d * 1e3, 2) for d in down[:3]]} ms, "
            f"then median {statistics.median(down[10:]) * 1e3:.2f} ms, max {max(down) * 1e3:.2f} ms"
        )

    # Redis comes back: after recovery_time one probe closes the breaker again.
    with throwaway_redis(port):
        clock.now += 5
        response = await client.get("/items/7")
        assert response.headers["x-cache"] == "MISS"
        assert breaker.state.name == "CLOSED"
        assert (await client.get("/items/7")).headers["x-cache"] == "HIT"
    await cache.aclose()


async def test_a_black_holed_redis_costs_microseconds_once_the_breaker_opens(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    # A listening socket that never accepts or answers: connects succeed, replies never come.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as hole:
        hole.bind((HOST, 0))
        hole.listen(256)
        port = hole.getsockname()[1]
        breaker = CircuitBreaker(
            "cache-hole", failure_threshold=3, recovery_time=60, timeout=0.2, registry=registry
        )
        store = RedisCacheStore(f"redis://{HOST}:{port}/0", socket_timeout=5, connect_timeout=5)
        cache = ResponseCache(store, breaker=breaker, registry=registry)
        app = CountingApp()
        client = make_client(make_cache(app, registry, cache=cache))
        latencies: list[float] = []
        for index in range(30):
            response, elapsed = await timed_get(client, f"/items/{index}")
            assert response.status_code == 200
            assert response.headers["x-cache"] == "MISS"
            latencies.append(elapsed)
        assert breaker.state is BreakerState.OPEN
        # The first calls wait for the breaker's timeout; after that, nothing waits.
        assert sum(latencies[:3]) < 3 * 0.2 * 2 + 1.0
        assert statistics.median(latencies[5:]) < 0.05
        print(  # noqa: T201 - the measured latency, reported with -s
            f"\nblack hole: first 3 {[round(x * 1e3, 1) for x in latencies[:3]]} ms, "
            f"then median {statistics.median(latencies[5:]) * 1e3:.3f} ms"
        )
        with contextlib.suppress(Exception):
            await asyncio.wait_for(cache.aclose(), 1)
