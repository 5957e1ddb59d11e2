"""ResponseCache over a Redis that dies or never answers: requests fail open, the breaker opens.

What these cases count is how many calls reached Redis; what those calls cost is measured by
``python -m benchmarks cache`` (the "redis unreachable" case), never asserted here.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest
from prometheus_client import CollectorRegistry

from prodkit.asgi import BreakerState, CircuitBreaker
from prodkit.cache import RedisCacheStore, ResponseCache
from tests.cache.helpers import (
    CountingApp,
    CountingStore,
    FakeClock,
    make_cache,
    outcomes,
)
from tests.conftest import ClientFactory
from tests.servers import HOST, free_port, redis_server

pytestmark = pytest.mark.redis


async def test_redis_stopped_mid_run_fails_open_and_stops_calling_it(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    port = free_port()
    clock = FakeClock()  # stands still: no half-open probe until the test moves it
    breaker = CircuitBreaker(
        "cache-test",
        failure_threshold=3,
        recovery_time=5,
        timeout=0.25,
        registry=registry,
        clock=clock,
    )
    with redis_server(port) as server:
        store = CountingStore(
            RedisCacheStore.from_url(
                f"redis://{HOST}:{port}/0", socket_timeout=0.25, connect_timeout=0.25
            )
        )
        cache = ResponseCache(store, breaker=breaker, registry=registry)
        app = CountingApp()
        client = make_client(make_cache(app, registry, cache=cache))
        assert (await client.get("/items/1")).headers["x-cache"] == "MISS"
        assert (await client.get("/items/1")).headers["x-cache"] == "HIT"

        server.kill()  # SIGKILL to our own redis-server's PID
        server.wait(timeout=10)
        before = store.calls
        for index in range(40):
            response = await client.get(f"/items/{index % 4}")
            assert response.status_code == 200
        assert breaker.state is BreakerState.OPEN
        assert outcomes(registry, "/items/{id}").get("error", 0) == 40
        # One failed read per request until the breaker opens; the other 37 never reach Redis.
        assert store.calls - before == 3
        assert app.calls == {"/items/1": 11, "/items/0": 10, "/items/2": 10, "/items/3": 10}

    # Redis comes back: after recovery_time one probe closes the breaker again.
    with redis_server(port):
        clock.now += 5
        response = await client.get("/items/7")
        assert response.headers["x-cache"] == "MISS"
        assert breaker.state.name == "CLOSED"
        assert (await client.get("/items/7")).headers["x-cache"] == "HIT"
    await cache.aclose()


async def test_a_black_holed_redis_is_cut_off_by_the_breaker_then_not_called(
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
        # Redis's own timeouts (5 s) would end a call with an error, not a cancellation.
        store = CountingStore(
            RedisCacheStore.from_url(
                f"redis://{HOST}:{port}/0", socket_timeout=5, connect_timeout=5
            )
        )
        cache = ResponseCache(store, breaker=breaker, registry=registry)
        app = CountingApp()
        client = make_client(make_cache(app, registry, cache=cache))
        for index in range(30):
            response = await client.get(f"/items/{index}")
            assert response.status_code == 200
            assert response.headers["x-cache"] == "MISS"
        assert breaker.state is BreakerState.OPEN
        assert app.total == 30
        # The first three calls were cut off by the breaker's timeout; after that, none was made.
        assert (store.calls, store.cancelled) == (3, 3)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(cache.aclose(), 1)
