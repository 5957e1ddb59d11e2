"""Shared fixtures: the framework matrix, real PostgreSQL and Redis, and ASGI clients."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from hypothesis import settings
from prometheus_client import CollectorRegistry

from prodkit.asgi import ASGIApp
from tests.apps import FRAMEWORKS, build_app
from tests.servers.redis_topologies import (
    SentinelGroup,
    Topology,
    redis_binaries_missing,
    redis_cluster,
    redis_sentinel,
)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DATABASE_URL = os.environ.get(
    "PRODKIT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("PRODKIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

# The suite asserts behaviour, never time: no hypothesis example fails for being slow on a
# loaded machine.
settings.register_profile("prodkit", deadline=None)
settings.load_profile("prodkit")

#: One id per test run: databases and Redis keys created by this run carry it.
RUN_ID = uuid.uuid4().hex[:12]
T = TypeVar("T")


def run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even if an event loop is running here.

    Session fixtures may be first requested from inside an async test or fixture, where
    ``asyncio.run`` is not allowed; a short-lived thread gives the coroutine its own loop.
    """
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(factory()))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="fixture-setup")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def unavailable(reason: str) -> None:
    """Skip on a developer machine without the service; fail under ``CI=true``."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: services must be running; see .ci/run)")
    pytest.skip(reason)


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    """Each framework of the matrix (:data:`tests.apps.FRAMEWORKS`), Quart and Django included."""
    return str(request.param)


@pytest.fixture
def app(framework: str) -> ASGIApp:
    """A fresh test app (see :mod:`tests.apps`) for the framework under test."""
    return build_app(framework)


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh Prometheus registry per test, so no test sees another's samples."""
    return CollectorRegistry(auto_describe=True)


ClientFactory = Callable[..., httpx.AsyncClient]


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    """Build ``httpx.AsyncClient`` instances over ``ASGITransport``; all closed at teardown."""
    clients: list[httpx.AsyncClient] = []

    def factory(
        asgi_app: ASGIApp, *, client: tuple[str, int] = ("127.0.0.1", 50000), **kwargs: object
    ) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=asgi_app, client=client)
        made = httpx.AsyncClient(transport=transport, base_url="http://testserver", **kwargs)  # type: ignore[arg-type]
        clients.append(made)
        return made

    yield factory
    for made in clients:
        await made.aclose()


@pytest.fixture(scope="session")
def postgres_server_dsn() -> str:
    """DSN of the PostgreSQL server's maintenance database (checked once per run)."""
    asyncpg = pytest.importorskip("asyncpg")

    async def ping() -> None:
        conn = await asyncpg.connect(DATABASE_URL, timeout=5)
        await conn.close()

    try:
        run_sync(ping)
    except Exception as exc:
        unavailable(f"PostgreSQL not reachable at PRODKIT_TEST_DATABASE_URL: {exc!r}")
    return DATABASE_URL


@contextlib.contextmanager
def fresh_database(server_dsn: str, name: str) -> Iterator[str]:
    """Create the database ``name`` on the server of ``server_dsn``; its DSN, dropped after."""
    import asyncpg

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(server_dsn, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    run_sync(lambda: run(f'CREATE DATABASE "{name}"'))
    base, _, _ = server_dsn.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        run_sync(lambda: run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_dsn(postgres_server_dsn: str) -> Iterator[str]:
    """DSN of a database created for this test run and dropped after it."""
    with fresh_database(postgres_server_dsn, f"prodkit_test_{RUN_ID}") as dsn:
        yield dsn


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the test Redis server (checked once per run)."""
    redis_asyncio = pytest.importorskip("redis.asyncio")

    async def ping() -> None:
        client = redis_asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        try:
            await client.ping()
        finally:
            await client.aclose()

    try:
        run_sync(ping)
    except Exception as exc:
        unavailable(f"Redis not reachable at PRODKIT_TEST_REDIS_URL: {exc!r}")
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to this test; its keys are deleted afterwards (with SCAN, not KEYS)."""
    import redis.asyncio as redis_asyncio

    prefix = f"prodkit-test:{RUN_ID}:{uuid.uuid4().hex[:8]}:"
    yield prefix

    async def cleanup() -> None:
        client = redis_asyncio.Redis.from_url(redis_url)
        try:
            async for key in client.scan_iter(match=f"*{prefix}*", count=500):
                await client.delete(key)
        finally:
            await client.aclose()

    run_sync(cleanup)


@pytest.fixture(scope="session")
def shared_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """A Redis Cluster (three primaries, three replicas) started once for the run.

    Shared: never kill or pause its nodes (start a topology of your own for a failover). Its
    keys need no cleanup: the servers and their data go at the end of the run.
    """
    missing = redis_binaries_missing()
    if missing:
        unavailable(missing)
    with redis_cluster(tmp_path_factory.mktemp("shared-cluster")) as topology:
        yield topology


@pytest.fixture(scope="session")
def shared_redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    """A Sentinel group (one primary, one replica, three Sentinels) started once for the run;
    shared like :func:`shared_redis_cluster`."""
    missing = redis_binaries_missing()
    if missing:
        unavailable(missing)
    with redis_sentinel(tmp_path_factory.mktemp("shared-sentinel")) as group:
        yield group


#: Store-suite parameters for the shared topologies; :func:`redis_topology_url` resolves them.
REDIS_TOPOLOGIES = (
    pytest.param("redis-cluster", marks=[pytest.mark.redis, pytest.mark.server]),
    pytest.param("redis-sentinel", marks=[pytest.mark.redis, pytest.mark.server]),
)


def redis_topology_url(request: pytest.FixtureRequest, topology: str) -> str:
    """The URL of the shared topology named ``redis-cluster`` or ``redis-sentinel``."""
    fixture = {"redis-cluster": "shared_redis_cluster", "redis-sentinel": "shared_redis_sentinel"}
    shared: Topology = request.getfixturevalue(fixture[topology])
    return shared.url


#: Records a measured figure: ``figures("name", key=value, ...)``.
Figures = Callable[..., None]


@pytest.fixture(scope="session")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Figures:
    """Append measured figures as JSON lines to ``$PRODKIT_SCALE_FIGURES`` (default: a file in
    the session's temporary directory). Tests record times here; they never assert them."""
    path = Path(
        os.environ.get("PRODKIT_SCALE_FIGURES")
        or tmp_path_factory.getbasetemp() / "scale-figures.jsonl"
    )

    def record(name: str, **values: object) -> None:
        line = {"figure": name, "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        with path.open("a", encoding="utf-8") as out:
            out.write(json.dumps({**line, **values}) + "\n")

    return record


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under ``CI=true``, fail the run when Redis still holds a key carrying this run's id.

    Every test writes its Redis keys under a prefix with :data:`RUN_ID` (``redis_prefix``, the
    example's ``REDIS_KEY_PREFIX``) and deletes them; a key left behind is a leak to fix.
    """
    if not IN_CI:
        return
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
    try:
        left = [key.decode() for key in client.scan_iter(match=f"*{RUN_ID}*", count=1000)]
    except redis.RedisError:
        return  # no Redis: the tests that needed it have already failed under CI
    finally:
        client.close()
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            shown = ", ".join(sorted(left)[:10])
            reporter.write_line(f"{len(left)} Redis key(s) of this run left behind: {shown}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
