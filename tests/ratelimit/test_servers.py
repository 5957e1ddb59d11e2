"""Real processes: four uvicorn workers sharing Redis, and a Redis server that dies mid-test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from prodkit.ratelimit import RateLimitMiddleware
from tests.apps import build_app
from tests.servers import HOST, free_port, run_server, wait_for_port


@pytest.mark.server
@pytest.mark.redis
@pytest.mark.timeout(120)
async def test_four_workers_on_redis_let_exactly_the_quota_through(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        "PRODKIT_TEST_RL_REDIS_URL": redis_url,
        "PRODKIT_TEST_RL_PREFIX": redis_prefix,
        "PRODKIT_TEST_RL_RATE": "100/day",  # no refill during the test
    }
    args = [
        "uvicorn",
        "tests.servers.ratelimit_app:app",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "4",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    with run_server(args, port=port, tmp_path=tmp_path, env=env, startup_timeout=60) as server:
        await _wait_for_workers(server.base_url, 4)
        limits = httpx.Limits(max_connections=40, max_keepalive_connections=40)
        async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=30) as client:
            responses = await asyncio.gather(*(client.get("/") for _ in range(1000)))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 100, 429: 900}, server.output()[-2000:]
    served_by = {r.text for r in responses if r.status_code == 200}
    assert len(served_by) > 1  # the quota really was shared between processes


async def _wait_for_workers(base_url: str, workers: int) -> None:
    """Until every worker has answered: the listening socket accepts before workers do.

    ``/livez`` is exempt from rate limiting, so this spends none of the quota under test.
    """
    seen: set[str] = set()
    deadline = time.monotonic() + 45
    while len(seen) < workers and time.monotonic() < deadline:
        # A fresh connection each time, so the kernel may hand it to another worker.
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            response = await client.get("/livez")
            assert "ratelimit" not in response.headers
            seen.add(response.text)
    assert len(seen) == workers, f"only workers {seen} answered within 45 s"


@contextlib.contextmanager
def throwaway_redis(
    tmp_path: Path, port: int | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A private redis-server on a free loopback port, stopped by its own PID."""
    port = port or free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 10, process)
        yield process, f"redis://{HOST}:{port}/0"
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def _need_redis_server() -> None:
    if subprocess.run(["which", "redis-server"], capture_output=True).returncode != 0:
        pytest.skip("redis-server is not installed")


@pytest.mark.server
@pytest.mark.timeout(60)
async def test_redis_dying_mid_test_fails_open_with_bounded_latency(tmp_path: Path) -> None:
    _need_redis_server()
    from prodkit.ratelimit._redis import RedisRateLimitStore

    registry = CollectorRegistry()
    with throwaway_redis(tmp_path) as (process, url):
        store = RedisRateLimitStore.from_url(url)
        app = RateLimitMiddleware(
            build_app("raw"), policy="5/minute", store=store, registry=registry
        )
        transport = httpx.ASGITransport(app=app, client=("192.0.2.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            before = [(await client.get("/items/1")).status_code for _ in range(3)]
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            after: list[int] = []
            durations: list[float] = []
            for _ in range(30):
                start = time.perf_counter()
                after.append((await client.get("/items/1")).status_code)
                durations.append(time.perf_counter() - start)
        await store.aclose()
    assert before == [200, 200, 200]
    # The per-process fallback store takes over with the same policy: 5 more, then 429s.
    assert after == [200] * 5 + [429] * 25
    assert max(durations) < 2.0  # one failed call costs at most the driver's short timeout
    # Once the breaker is open, a request does not touch the network at all.
    assert sorted(durations)[len(durations) // 2] < 0.25
    errors = registry.get_sample_value(
        "prodkit_rate_limit_decisions_total", {"policy": "default", "decision": "error"}
    )
    assert errors == 30
    assert (
        registry.get_sample_value("prodkit_circuit_breaker_state", {"breaker": "rate-limit"}) == 1
    )


@pytest.mark.server
@pytest.mark.timeout(60)
async def test_redis_down_fails_closed_with_a_503_problem(tmp_path: Path) -> None:
    _need_redis_server()
    from prodkit.ratelimit._redis import RedisRateLimitStore

    registry = CollectorRegistry()
    with throwaway_redis(tmp_path) as (process, url):
        store = RedisRateLimitStore.from_url(url)
        app = RateLimitMiddleware(
            build_app("raw"),
            policy="5/minute",
            store=store,
            on_store_error="fail_closed",
            registry=registry,
        )
        transport = httpx.ASGITransport(app=app, client=("192.0.2.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/items/1")).status_code == 200
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            responses = [await client.get("/items/1") for _ in range(8)]
            probe = await client.get("/livez")  # exempt paths never touch the store
        await store.aclose()
    assert {r.status_code for r in responses} == {503}
    for response in responses:
        assert response.headers["retry-after"] == "5"
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "RATE_LIMIT_UNAVAILABLE"
    assert probe.status_code == 404  # the raw test app has no /livez; it was not rejected


@pytest.mark.server
@pytest.mark.timeout(60)
async def test_the_shared_store_is_used_again_once_redis_is_back(tmp_path: Path) -> None:
    _need_redis_server()
    from prodkit._core.breaker import CircuitBreaker
    from prodkit.ratelimit._redis import RedisRateLimitStore

    registry = CollectorRegistry()
    now = [0.0]
    breaker = CircuitBreaker("rate-limit", clock=lambda: now[0], registry=registry)
    port = free_port()
    with throwaway_redis(tmp_path, port) as (process, url):
        store = RedisRateLimitStore.from_url(url)
        app = RateLimitMiddleware(
            build_app("raw"), policy="10/minute", store=store, breaker=breaker, registry=registry
        )
        transport = httpx.ASGITransport(app=app, client=("192.0.2.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for _ in range(3):
                await client.get("/items/1")
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            for _ in range(6):  # opens the breaker; the fallback decides meanwhile
                assert (await client.get("/items/1")).status_code == 200
            assert (
                registry.get_sample_value(
                    "prodkit_circuit_breaker_state", {"breaker": "rate-limit"}
                )
                == 1
            )
            with throwaway_redis(tmp_path, port):  # Redis is back (empty: no persistence)
                now[0] += breaker.recovery_time  # the breaker may probe again
                back = await client.get("/items/1")
                again = await client.get("/items/1")
        await store.aclose()
    assert (
        registry.get_sample_value("prodkit_circuit_breaker_state", {"breaker": "rate-limit"}) == 0
    )
    # Decided by the fresh Redis again: its count starts over, unlike the fallback's (6 used).
    assert back.headers["ratelimit"] == '"default";r=9;t=6'
    assert again.headers["ratelimit"] == '"default";r=8;t=12'
