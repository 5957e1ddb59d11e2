"""HealthMiddleware: liveness, readiness, the keyed detailed report, timeouts, caching.

Readiness against real dependencies: a throwaway ``redis-server`` that the test kills and
restarts by PID, and the shared PostgreSQL reached through a TCP proxy in the test process
that the test stops and starts (the shared servers are never stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from prometheus_client import CollectorRegistry

from prodkit import ConfigurationError
from prodkit.asgi import ASGIApp
from prodkit.health._middleware import HealthCheck, HealthMiddleware, postgres_check, redis_check
from prodkit.lifecycle._coordinator import ShutdownCoordinator
from tests.apps import raw_app
from tests.conftest import ClientFactory
from tests.servers import HOST, free_port

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


def test_duplicate_check_names_are_rejected(registry: CollectorRegistry) -> None:
    app = raw_app()
    middleware = health(app, registry)
    middleware.add_check("db", passing)
    with pytest.raises(ConfigurationError, match="already registered"):
        middleware.add_check("db", passing)


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
    # The dependency changes outside this process: poll, as a real probe does.
    for _ in range(500):
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


class TcpProxy:
    """A TCP proxy on 127.0.0.1 that can be stopped (dropping every connection) and restarted."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, HOST, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._writers.difference_update((writer, up_writer))


@pytest.fixture
async def postgres_proxy(postgres_dsn: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    parts = urlsplit(postgres_dsn)
    proxy = TcpProxy((parts.hostname or HOST, parts.port or 5432))
    await proxy.start()
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@{HOST}:{proxy.port}" if auth else f"{HOST}:{proxy.port}"
    try:
        yield proxy, urlunsplit(parts._replace(netloc=netloc))
    finally:
        await proxy.stop()


@pytest.mark.postgres
async def test_readiness_follows_a_real_postgres(
    postgres_proxy: tuple[TcpProxy, str],
    make_client: ClientFactory,
    registry: CollectorRegistry,
) -> None:
    app = raw_app()
    asyncpg = pytest.importorskip("asyncpg")
    proxy, dsn = postgres_proxy
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, timeout=1)
    middleware = health(app, registry)
    middleware.add_check("postgres", postgres_check(lambda: pool), timeout=1)
    http = make_client(middleware)
    try:
        await wait_for_status(http, "/readyz", 200)
        await proxy.stop()
        await wait_for_status(http, "/readyz", 503)
        assert (await http.get("/livez")).status_code == 200
        await proxy.start()
        await wait_for_status(http, "/readyz", 200)
        detail = (await http.get("/healthz", headers={"X-Health-Key": KEY})).json()
        assert detail["checks"]["postgres"]["status"] == "pass"
    finally:
        await proxy.stop()
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
