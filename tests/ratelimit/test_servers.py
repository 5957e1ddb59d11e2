"""Real processes: four uvicorn workers sharing Redis, and a Redis server that dies mid-test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
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
@pytest.mark.parametrize("reserve", [None, "0"], ids=["default", "no-reserve"])
async def test_four_workers_on_redis_let_exactly_the_quota_through(
    redis_url: str, redis_prefix: str, tmp_path: Path, reserve: str | None
) -> None:
    """With the default reservations (1 unit ahead at q=100) as without: exactly the quota."""
    port = free_port()
    env = {
        "PRODKIT_TEST_RL_REDIS_URL": redis_url,
        "PRODKIT_TEST_RL_PREFIX": redis_prefix,
        "PRODKIT_TEST_RL_RATE": "100/day",  # no refill during the test
        **({} if reserve is None else {"PRODKIT_TEST_RL_RESERVE": reserve}),
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
        async with _one_connection_per_worker(server.base_url, 4) as clients:
            workers = list(clients)
            responses = await asyncio.gather(
                *(clients[workers[i % 4]].get("/") for i in range(1000))
            )
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 100, 429: 900}, server.output()[-2000:]
    # The quota really was shared between processes: a worker refused requests while it had
    # allowed fewer than the quota itself (which worker allows the 100 is a race).
    by_worker: dict[str, Counter[int]] = {}
    for i, response in enumerate(responses):
        by_worker.setdefault(workers[i % 4], Counter())[response.status_code] += 1
    assert len(by_worker) > 1, by_worker
    assert any(seen[429] and seen[200] < 100 for seen in by_worker.values()), by_worker
    allowed = sorted(_remaining(r) for r in responses if r.status_code == 200)
    if reserve == "0":
        # Every unit of the shared quota was handed out once, whichever worker asked for it.
        assert allowed == list(range(100))
    else:
        # A worker reports what Redis had left when it last asked, plus its own reserved
        # units: the figure can lag the other workers' requests, but stays in range.
        assert all(0 <= r < 100 for r in allowed)
        assert allowed[0] == 0
    for response in responses:
        assert response.headers["ratelimit-policy"] == '"default";q=100;w=86400'
        if response.status_code == 429:
            assert _remaining(response) == 0
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["code"] == "RATE_LIMITED"


@pytest.mark.server
@pytest.mark.redis
@pytest.mark.timeout(120)
async def test_units_reserved_by_four_workers_are_back_within_reserve_for(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """At ``1000/day`` each round trip reserves 10 units (1 %) for its worker. A burst past the
    quota never gets more than 1,000 through; what idles in the other workers then (at most
    10 each) is back in Redis a second later, and exactly the quota has been served."""
    port = free_port()
    env = {
        "PRODKIT_TEST_RL_REDIS_URL": redis_url,
        "PRODKIT_TEST_RL_PREFIX": redis_prefix,
        "PRODKIT_TEST_RL_RATE": "1000/day",
    }
    args = ["uvicorn", "tests.servers.ratelimit_app:app", "--host", HOST, "--port", str(port)]
    args += ["--workers", "4", "--no-access-log", "--log-level", "warning"]
    with run_server(args, port=port, tmp_path=tmp_path, env=env, startup_timeout=60) as server:
        await _wait_for_workers(server.base_url, 4)
        limits = httpx.Limits(max_connections=40, max_keepalive_connections=40)
        async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=30) as client:
            burst = await asyncio.gather(*(client.get("/") for _ in range(1100)))
            first = sum(r.status_code == 200 for r in burst)
            assert 1000 - 3 * 10 <= first <= 1000
            await asyncio.sleep(1.6)  # reserve_for (1 s), checked every half of it
            later = await asyncio.gather(*(client.get("/") for _ in range(100)))
    assert first + sum(r.status_code == 200 for r in later) == 1000
    assert {r.status_code for r in [*burst, *later]} == {200, 429}


@contextlib.asynccontextmanager
async def _one_connection_per_worker(
    base_url: str, workers: int
) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """One single-connection client per worker, by the worker's pid: the kernel hands each new
    connection to whichever worker accepts first, so a pool of many can end up on one worker;
    these spread a burst over every worker for sure. ``/livez`` (it costs no quota) tells
    which one."""
    found: dict[str, httpx.AsyncClient] = {}
    spare: list[httpx.AsyncClient] = []
    try:
        for _ in range(200):  # bounded: a new connection each time
            if len(found) == workers:
                break
            client = httpx.AsyncClient(
                base_url=base_url, limits=httpx.Limits(max_connections=1), timeout=30
            )
            worker = (await client.get("/livez")).text
            if worker in found:
                spare.append(client)
            else:
                found[worker] = client
        assert len(found) == workers, f"only workers {sorted(found)} took a connection"
        yield found
    finally:
        for client in [*found.values(), *spare]:
            await client.aclose()


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
def redis_server(
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


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def _remaining(response: httpx.Response) -> int:
    """The ``r`` of the response's ``RateLimit`` field (one policy)."""
    found = re.search(r";r=(\d+);", response.headers["ratelimit"])
    assert found is not None, response.headers["ratelimit"]
    return int(found[1])


@pytest.mark.server
@pytest.mark.timeout(60)
async def test_redis_dying_mid_test_fails_open_and_stops_calling_it(tmp_path: Path) -> None:
    _need_redis_server()
    from prodkit._core.breaker import CircuitBreaker
    from prodkit.ratelimit._redis import RedisRateLimitStore

    registry = CollectorRegistry()
    # The middleware's default breaker, on a clock that stands still: it never half-opens
    # during the test, however slowly the machine runs it. (The latency this buys is measured
    # by benchmarks/ratelimit_servers.py, not asserted here.)
    breaker = CircuitBreaker("rate-limit", timeout=0.5, clock=lambda: 0.0, registry=registry)
    with redis_server(tmp_path) as (process, url):
        store = RedisRateLimitStore.from_url(url)
        app = RateLimitMiddleware(
            build_app("raw"), policy="5/minute", store=store, breaker=breaker, registry=registry
        )
        transport = httpx.ASGITransport(app=app, client=("192.0.2.1", 1))
        other = httpx.ASGITransport(app=app, client=("192.0.2.2", 1))
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://t") as client,
            httpx.AsyncClient(transport=other, base_url="http://t") as concurrent,
        ):
            before = [(await client.get("/items/1")).status_code for _ in range(3)]
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            after = [await client.get("/items/1") for _ in range(30)]
            # With the breaker open: another client, all at once.
            together = await asyncio.gather(*(concurrent.get("/items/1") for _ in range(10)))
        await store.aclose()
    assert before == [200, 200, 200]
    # The per-process fallback store takes over with the same policy: 5 more, then 429s.
    assert [r.status_code for r in after] == [200] * 5 + [429] * 25
    assert [_remaining(r) for r in after[:5]] == [4, 3, 2, 1, 0]
    # Redis was called until the breaker opened (5 consecutive failures), never again: every
    # later request was decided without touching the network.
    assert _sample(registry, "prodkit_circuit_breaker_failures_total", breaker="rate-limit") == 5
    assert _sample(registry, "prodkit_circuit_breaker_rejections_total", breaker="rate-limit") == 35
    assert _sample(registry, "prodkit_circuit_breaker_state", breaker="rate-limit") == 1
    errors = _sample(
        registry, "prodkit_rate_limit_decisions_total", policy="default", decision="error"
    )
    assert errors == 40
    # Concurrent requests share the fallback's quota exactly: each unit is handed out once.
    allowed = [r for r in together if r.status_code == 200]
    refused = [r for r in together if r.status_code == 429]
    assert (len(allowed), len(refused)) == (5, 5)
    assert sorted(_remaining(r) for r in allowed) == [0, 1, 2, 3, 4]
    for response in (*after, *together):
        assert response.headers["ratelimit-policy"] == '"default";q=5;w=60'
    for response in (*after[5:], *refused):
        assert _remaining(response) == 0
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["code"] == "RATE_LIMITED"


@pytest.mark.server
@pytest.mark.timeout(60)
async def test_redis_down_fails_closed_with_a_503_problem(tmp_path: Path) -> None:
    _need_redis_server()
    from prodkit.ratelimit._redis import RedisRateLimitStore

    registry = CollectorRegistry()
    with redis_server(tmp_path) as (process, url):
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
    with redis_server(tmp_path, port) as (process, url):
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
            with redis_server(tmp_path, port):  # Redis is back (empty: no persistence)
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
