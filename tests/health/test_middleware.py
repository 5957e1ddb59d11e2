"""HealthMiddleware: liveness, readiness, the keyed detailed report, timeouts, caching.

Readiness against real dependencies: a throwaway ``redis-server`` that the test kills and
restarts by PID, and the shared PostgreSQL reached through a TCP proxy that the test cuts and
restores, as a network partition would (the shared servers are never stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any, get_type_hints
from urllib.parse import urlsplit

import httpx
import pytest
import structlog
from prometheus_client import CollectorRegistry

from prodkit import ConfigurationError
from prodkit.asgi import ASGIApp
from prodkit.health import HealthKeywords, HealthOptions
from prodkit.health._middleware import (
    MAX_ABANDONED,
    HealthCheck,
    HealthMiddleware,
    postgres_check,
    redis_check,
)
from prodkit.lifecycle import ShutdownCoordinator
from tests.apps import raw_app
from tests.conftest import ClientFactory
from tests.servers import HOST, free_port
from tests.servers.proxy import TcpProxy

KEY = "k" * 24


async def passing() -> None:
    return None


async def failing() -> None:
    raise ConnectionRefusedError("connection refused to 10.0.0.5:5432")


def health(app: ASGIApp, registry: CollectorRegistry, **kwargs: Any) -> HealthMiddleware:
    kwargs.setdefault("key", KEY)
    kwargs.setdefault("cache_ttl", 0)
    return HealthMiddleware(app, registry=registry, **kwargs)


async def test_endpoints_answer_json_no_store_and_other_routes_reach_the_app(
    app: ASGIApp, make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    middleware = health(app, registry)
    middleware.add_check("db", passing)
    client = make_client(middleware)
    for path in ("/livez", "/readyz", "/healthz"):
        response = await client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"] == "application/json"
        assert response.headers["cache-control"] == "no-store"
        assert response.json()["status"] == "pass"
    assert (await client.get("/items/3")).json()["id"] == "3"
    head = await client.head("/readyz")
    assert head.status_code == 200
    assert head.content == b""
    # Other methods are the app's business.
    assert (await client.post("/livez")).status_code in (404, 405)


@pytest.mark.parametrize(
    ("checks", "readyz", "healthz", "healthz_status"),
    [
        ([("db", passing, True), ("cache", passing, False)], 200, 200, "pass"),
        ([("db", failing, True), ("cache", passing, False)], 503, 503, "fail"),
        # A non-critical failure degrades the report but keeps the process ready.
        ([("db", passing, True), ("cache", failing, False)], 200, 200, "warn"),
    ],
)
async def test_readiness_follows_critical_checks(
    checks: list[tuple[str, Any, bool]],
    readyz: int,
    healthz: int,
    healthz_status: str,
    make_client: ClientFactory,
    registry: CollectorRegistry,
    app: ASGIApp,
) -> None:
    middleware = health(app, registry)
    for name, func, critical in checks:
        middleware.add_check(name, func, critical=critical)
    client = make_client(middleware)
    ready = await client.get("/readyz")
    assert ready.status_code == readyz
    if readyz == 503:
        assert ready.headers["retry-after"] == "5"
    report = await client.get("/healthz")
    assert report.status_code == healthz
    assert report.json() == {"status": healthz_status, "draining": False}
    assert (await client.get("/livez")).status_code == 200


async def test_detail_only_with_the_key(
    make_client: ClientFactory, registry: CollectorRegistry, app: ASGIApp
) -> None:
    coordinator = ShutdownCoordinator(registry=registry)
    middleware = health(app, registry, coordinator=coordinator)
    middleware.add_check("postgres", failing)
    middleware.add_check("redis", passing, critical=False)
    client = make_client(middleware)

    for headers in ({}, {"X-Health-Key": "wrong"}, {"X-Health-Key": KEY + "x"}):
        summary = await client.get("/healthz", headers=headers)
        assert summary.json() == {"status": "fail", "draining": False}
        assert "10.0.0.5" not in summary.text

    detail = (await client.get("/healthz", headers={"X-Health-Key": KEY})).json()
    assert detail["status"] == "fail"
    assert detail["shutdown_state"] == "running"
    assert detail["in_flight"] == 0
    postgres = detail["checks"]["postgres"]
    assert postgres["status"] == "fail"
    assert postgres["critical"] is True
    assert postgres["error"] == "ConnectionRefusedError: connection refused to 10.0.0.5:5432"
    assert postgres["latency_ms"] >= 0
    assert detail["checks"]["redis"]["status"] == "pass"
    assert detail["checks"]["redis"]["error"] is None
    # Readiness reports critical checks only.
    ready = (await client.get("/readyz", headers={"X-Health-Key": KEY})).json()
    assert list(ready["checks"]) == ["postgres"]


async def test_no_key_never_shows_detail(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = raw_app()
    middleware = health(app, registry, key=None)
    middleware.add_check("db", passing)
    client = make_client(middleware)
    response = await client.get("/healthz", headers={"X-Health-Key": ""})
    assert response.json() == {"status": "pass", "draining": False}


async def test_a_slow_check_times_out(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = raw_app()

    async def hangs() -> None:
        await asyncio.sleep(30)

    middleware = health(app, registry)
    middleware.add_check("db", hangs, timeout=0.05)
    client = make_client(middleware)
    response = await client.get("/healthz", headers={"X-Health-Key": KEY})
    assert response.status_code == 503
    assert response.json()["checks"]["db"]["error"] == "timed out after 0.05s"
    assert registry.get_sample_value("prodkit_health_check_up", {"check": "db"}) == 0


async def test_results_are_cached_and_concurrent_probes_share_one_run(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = raw_app()
    runs = 0
    release = asyncio.Event()
    entered = asyncio.Event()

    async def counted() -> None:
        nonlocal runs
        runs += 1
        entered.set()
        await release.wait()

    middleware = health(app, registry)
    middleware.add_check("db", counted, cache_ttl=60)
    client = make_client(middleware)
    probes = [asyncio.create_task(client.get("/readyz")) for _ in range(10)]
    async with asyncio.timeout(5):
        await entered.wait()
    release.set()
    responses = await asyncio.gather(*probes)
    assert [r.status_code for r in responses] == [200] * 10
    assert (await client.get("/healthz")).status_code == 200
    assert runs == 1
    assert registry.get_sample_value("prodkit_health_check_up", {"check": "db"}) == 1


async def test_a_probe_that_goes_away_does_not_cancel_the_shared_run(
    registry: CollectorRegistry,
) -> None:
    release = asyncio.Event()

    async def gated() -> None:
        await release.wait()

    check = HealthCheck("db", gated, cache_ttl=0)
    first = asyncio.create_task(check.result())
    second = asyncio.create_task(check.result())
    await asyncio.sleep(0.01)
    first.cancel()
    release.set()
    assert (await second).ok


@pytest.mark.parametrize(
    "kwargs",
    [
        {"key": "short"},  # a guessable key
        {"livez_path": "livez"},  # not a path
        {"livez_path": "/h", "readyz_path": "/h"},  # two endpoints on one path
        {"timeout": 0},
    ],
)
def test_invalid_options_are_rejected(kwargs: dict[str, Any]) -> None:
    app = raw_app()
    with pytest.raises(ConfigurationError):
        HealthMiddleware(app, **kwargs)


async def test_options_object_and_keywords_configure_the_same_middleware(
    make_client: ClientFactory,
) -> None:
    by_keyword = HealthMiddleware(raw_app(), readyz_path="/ready", registry=CollectorRegistry())
    options = HealthOptions(readyz_path="/ready", registry=CollectorRegistry())
    by_object = HealthMiddleware(raw_app(), options=options)
    assert by_object.options is options
    for middleware in (by_keyword, by_object):
        response = await make_client(middleware).get("/ready")
        assert response.json() == {"status": "pass", "draining": False}


def test_the_defaults_are_the_options_defaults(registry: CollectorRegistry) -> None:
    middleware = HealthMiddleware(raw_app(), registry=registry)
    assert middleware.options == HealthOptions(registry=registry)
    assert (middleware.timeout, middleware.cache_ttl, middleware.retry_after) == (2.0, 1.0, b"5")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"key": "s3cr3t"}, "key: 6 characters long; write at least 16"),
        ({"livez_path": "livez"}, "livez_path='livez': not a path starting with '/'"),
        ({"readyz_path": "/livez"}, "healthz_path=('/livez', '/livez', '/healthz'): two"),
        ({"timeout": 0}, "timeout=0: not greater than 0"),
        ({"cache_ttl": -1}, "cache_ttl=-1: negative"),
        ({"retry_after": 0}, "retry_after=0: less than 1"),
        ({"checks": ["db"]}, "checks: 'db' is not a HealthCheck"),
    ],
)
def test_invalid_options_are_refused_when_made(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)) as refused:
        HealthOptions(**options)
    assert "s3cr3t" not in str(refused.value)


def test_the_keywords_are_the_options_fields() -> None:
    assert get_type_hints(HealthKeywords) == get_type_hints(HealthOptions)


def test_duplicate_check_names_are_rejected(registry: CollectorRegistry) -> None:
    app = raw_app()
    middleware = health(app, registry)
    middleware.add_check("db", passing)
    with pytest.raises(ConfigurationError, match="already registered"):
        middleware.add_check("db", passing)


async def test_a_check_that_does_not_stop_when_cancelled_still_fails_at_its_timeout(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    # Like asyncpg cancelling a query over a dead connection: told to stop, it first waits for
    # an answer that does not come. Readiness must not wait with it.
    release = asyncio.Event()
    stopped = asyncio.Event()
    calls = []

    async def stubborn() -> None:
        calls.append(1)
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.shield(release.wait())
            stopped.set()

    middleware = health(raw_app(), registry)
    middleware.add_check("db", stubborn, timeout=0.05)
    client = make_client(middleware)
    async with asyncio.timeout(10):  # the probe is answered; before, it hung with the check
        ready = await client.get("/readyz", headers={"X-Health-Key": KEY})
    assert ready.status_code == 503
    assert ready.json()["checks"]["db"]["error"] == "timed out after 0.05s"
    assert not stopped.is_set()  # left to finish in the background, not awaited
    for _ in range(MAX_ABANDONED + 2):
        again = await client.get("/readyz", headers={"X-Health-Key": KEY})
        assert again.status_code == 503
    assert "have not stopped" in again.json()["checks"]["db"]["error"]
    assert len(calls) == MAX_ABANDONED  # no more calls piled on those that will not stop
    release.set()
    async with asyncio.timeout(10):
        await stopped.wait()


async def test_a_check_that_raises_instead_of_returning_an_awaitable_fails(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    def broken() -> Any:
        raise LookupError("no pool configured")

    middleware = health(raw_app(), registry)
    middleware.add_check("db", broken)
    response = await make_client(middleware).get("/readyz", headers={"X-Health-Key": KEY})
    assert response.status_code == 503
    assert response.json()["checks"]["db"]["error"] == "LookupError: no pool configured"


async def test_failing_and_passing_again_are_logged_once_each(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    up = {"db": True}

    async def flips() -> None:
        if not up["db"]:
            raise ConnectionRefusedError("connection refused to 10.0.0.5:5432")

    middleware = health(raw_app(), registry)  # cache_ttl=0: every probe runs the check
    middleware.add_check("db", flips)
    middleware.add_check("cache", failing, critical=False)
    client = make_client(middleware)
    states = [True, True, False, False, False, True, True, False, True]
    with structlog.testing.capture_logs() as logs:
        for state in states:
            up["db"] = state
            expected = 200 if state else 503
            assert (await client.get("/healthz")).status_code == expected
    db = [e for e in logs if e["check"] == "db"]
    assert [(e["event"], e["log_level"]) for e in db] == [
        ("health check failing", "warning"),
        ("health check passing again", "warning"),
        ("health check failing", "warning"),
        ("health check passing again", "warning"),
    ]
    assert db[0]["error"] == "ConnectionRefusedError: connection refused to 10.0.0.5:5432"
    assert db[0]["critical"] is True
    assert db[1]["failed_for"] >= 0
    # Failing from its first run on: logged once, as failing, and never again while it fails.
    cache = [(e["event"], e["critical"]) for e in logs if e["check"] == "cache"]
    assert cache == [("health check failing", False)]


# -- real dependencies ----------------------------------------------------------------------


@contextlib.contextmanager
def redis_server(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A throwaway redis-server on 127.0.0.1:``port``, stopped by its PID."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip("redis-server is not installed")
    process = subprocess.Popen(
        [executable, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as sock:
                if sock.connect_ex((HOST, port)) == 0:
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        yield process
    finally:
        process.kill()
        process.wait(timeout=5)


async def wait_for_status(client: httpx.AsyncClient, path: str, status: int) -> None:
    """Poll ``path`` until it answers ``status``: 10 s at most, a probe that hangs included."""
    # The dependency changes outside this process: poll, as a real probe does.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        async with asyncio.timeout(max(deadline - time.monotonic(), 0.01)):
            if (await client.get(path)).status_code == status:
                return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} never answered {status}")


@pytest.mark.redis
async def test_readiness_follows_a_real_redis(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = raw_app()
    redis_asyncio = pytest.importorskip("redis.asyncio")
    port = free_port()
    client_kwargs = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}
    redis = redis_asyncio.Redis(host=HOST, port=port, **client_kwargs)
    middleware = health(app, registry)
    middleware.add_check("redis", redis_check(redis), timeout=1)
    # A client opened at start-up, after registration, is reached through a callable.
    holder: dict[str, Any] = {}
    middleware.add_check("redis-late", redis_check(lambda: holder.get("client")), timeout=1)
    http = make_client(middleware)
    early = (await http.get("/readyz", headers={"X-Health-Key": KEY})).json()
    assert early["checks"]["redis-late"]["error"] == "RuntimeError: not connected yet"
    holder["client"] = redis
    try:
        with redis_server(port):
            await wait_for_status(http, "/readyz", 200)
        # Killed: not ready, still alive.
        await wait_for_status(http, "/readyz", 503)
        assert (await http.get("/livez")).status_code == 200
        detail = (await http.get("/healthz", headers={"X-Health-Key": KEY})).json()
        assert detail["checks"]["redis"]["status"] == "fail"
        with redis_server(port):
            await wait_for_status(http, "/readyz", 200)
            assert (await http.get("/livez")).status_code == 200
    finally:
        await redis.aclose()


@pytest.fixture
def postgres_proxy(postgres_dsn: str) -> Iterator[tuple[TcpProxy, str]]:
    parts = urlsplit(postgres_dsn)
    with TcpProxy((parts.hostname or HOST, parts.port or 5432)) as proxy:
        yield proxy, proxy.dsn(postgres_dsn)


@pytest.mark.postgres
async def test_readiness_follows_a_real_postgres_through_a_partition(
    postgres_proxy: tuple[TcpProxy, str],
    make_client: ClientFactory,
    registry: CollectorRegistry,
) -> None:
    app = raw_app()
    asyncpg = pytest.importorskip("asyncpg")
    proxy, dsn = postgres_proxy
    # A long command_timeout: asyncpg then takes 30 s to give up on a query cancelled over the
    # cut connection. The check's own timeout (1 s) must decide readiness, not that.
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4, timeout=1, command_timeout=30)
    middleware = health(app, registry)
    middleware.add_check("postgres", postgres_check(lambda: pool), timeout=1)
    http = make_client(middleware)
    try:
        with structlog.testing.capture_logs() as logs:
            await wait_for_status(http, "/readyz", 200)
            proxy.cut()
            await wait_for_status(http, "/readyz", 503)
            assert (await http.get("/livez")).status_code == 200
            detail = (await http.get("/healthz", headers={"X-Health-Key": KEY})).json()
            assert detail["checks"]["postgres"]["error"] == "timed out after 1s"
            proxy.restore()
            await wait_for_status(http, "/readyz", 200)
        detail = (await http.get("/healthz", headers={"X-Health-Key": KEY})).json()
        assert detail["checks"]["postgres"]["status"] == "pass"
        assert [(e["event"], e["check"]) for e in logs] == [
            ("health check failing", "postgres"),
            ("health check passing again", "postgres"),
        ]
    finally:
        proxy.restore()
        pool.terminate()


async def test_probes_are_labelled_with_their_path_in_metrics(make_client: ClientFactory) -> None:
    # The SLO alerts exclude probes by route (route!~"/livez|/readyz|..."): a probe must never
    # be labelled __unmatched__ like a 404.
    from prometheus_client import CollectorRegistry

    from prodkit import HealthMiddleware, HTTPMetricsMiddleware
    from tests.apps import build_app

    registry = CollectorRegistry()
    app = HTTPMetricsMiddleware(HealthMiddleware(build_app("starlette")), registry=registry)
    client = make_client(app)
    for path in ("/livez", "/readyz"):
        assert (await client.get(path)).status_code == 200
        assert (
            registry.get_sample_value(
                "http_request_duration_seconds_count",
                {"method": "GET", "route": path, "status_code": "200"},
            )
            == 1
        )
