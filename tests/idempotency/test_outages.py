"""A store outage while a keyed request runs: its key is free again as soon as the store is back.

Issue #21, item 4. The store (real PostgreSQL or Redis) is reached through a TCP proxy
(:mod:`tests.servers.proxy`). While the handler runs, the proxy is cut and every open
connection reset — a server restart behind a partition — and the handler fails as an app
does when its database goes away: a 503. The middleware cannot release the key then. Once the
proxy relays again, the client's retry with the same key must run the handler (201), well
before the claim's 60-second lease ends, instead of getting 409 for the rest of the lease.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client import CollectorRegistry

from prodkit import ErrorMiddleware, IdempotencyMiddleware
from prodkit.asgi import Receive, Scope, Send
from prodkit.idempotency import (
    IdempotencyStore,
    PostgresIdempotencyStore,
    RedisIdempotencyStore,
)
from prodkit.testing import capture_logs
from tests.servers import HOST
from tests.servers.proxy import TcpProxy

pytestmark = pytest.mark.server

#: Retries of the client, 0.1 s apart: 10 s, against the default lease of 60 s.
RETRIES = 100


@dataclass
class FlakyApp:
    """``POST /orders``: 201 with the run's number; a run may be held, then fail with a 503
    (what the example's error layer answers when its database went away)."""

    runs: int = 0
    hold: bool = False
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    proceed: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        self.runs += 1
        if self.hold:
            self.hold = False
            self.entered.set()
            await self.proceed.wait()
            raise ConnectionResetError("the database went away")
        body = f'{{"run": {self.runs}}}'.encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(params=["postgres", pytest.param("redis", marks=pytest.mark.redis)])
def target(request: pytest.FixtureRequest) -> tuple[str, str]:
    """The store's kind and the URL of its real server."""
    if request.param == "postgres":
        return "postgres", request.getfixturevalue("postgres_dsn")
    return "redis", request.getfixturevalue("redis_url")


@pytest.fixture
def proxy(target: tuple[str, str]) -> Iterator[TcpProxy]:
    parts = urlsplit(target[1])
    default_port = 5432 if target[0] == "postgres" else 6379
    with TcpProxy((parts.hostname or HOST, parts.port or default_port)) as made:
        yield made


@pytest.fixture
async def store(
    target: tuple[str, str], proxy: TcpProxy, request: pytest.FixtureRequest
) -> AsyncIterator[IdempotencyStore]:
    """A store of the kind under test, through the proxy; closed (and its keys gone) after."""
    kind, url = target
    made: PostgresIdempotencyStore | RedisIdempotencyStore
    if kind == "postgres":
        made = PostgresIdempotencyStore(
            proxy.dsn(url),
            pool_options={"min_size": 1, "max_size": 2},
            registry=CollectorRegistry(),
        )
        await made.ensure_schema()
    else:
        made = RedisIdempotencyStore.from_url(
            proxy.dsn(url), key_prefix=request.getfixturevalue("redis_prefix")
        )
    try:
        yield made
    finally:
        async with asyncio.timeout(30):
            await made.aclose()


def build(app: FlakyApp, store: IdempotencyStore) -> httpx.AsyncClient:
    """The app behind the middleware (default options) and an error layer, as in the stack."""
    idempotent = IdempotencyMiddleware(app, store=store, registry=CollectorRegistry())
    stack = ErrorMiddleware(idempotent, unavailable=[ConnectionResetError])
    transport = httpx.ASGITransport(app=stack)
    return httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30)


async def retried_until_run(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    """The client's retries: 409 while the key is still claimed, then the handler's answer."""
    for _ in range(RETRIES):
        response = await client.post("/orders", headers=headers)
        if response.status_code != 409:
            return response
        await asyncio.sleep(0.1)
    raise AssertionError("the key stayed claimed after the store was back")


async def test_a_key_is_free_again_once_the_store_is_back(
    store: IdempotencyStore, proxy: TcpProxy
) -> None:
    app = FlakyApp(hold=True)
    headers = {"Idempotency-Key": uuid.uuid4().hex, "Authorization": "Bearer alice"}
    async with build(app, store) as client:
        with capture_logs() as logs:
            first = asyncio.create_task(client.post("/orders", headers=headers))
            async with asyncio.timeout(10):
                await app.entered.wait()  # claimed: the handler runs
            proxy.cut()
            proxy.reset()  # the server restarts behind a partition
            app.proceed.set()
            failed = await first
            assert failed.status_code == 503
            assert failed.json()["code"] == "DEPENDENCY_UNAVAILABLE"

            proxy.restore()
            answer = await retried_until_run(client, headers)
            assert answer.status_code == 201
            assert answer.headers["idempotency-status"] == "created"
            assert answer.json() == {"run": 2}
            replayed = await client.post("/orders", headers=headers)
            assert replayed.headers["idempotency-status"] == "replayed"
            assert app.runs == 2

    # Said once, with what went wrong; the retries themselves are quiet.
    failures = [e for e in logs if e["event"].startswith("idempotency claim not released")]
    assert len(failures) == 1, failures
    assert failures[0]["event"] == "idempotency claim not released; retrying in the background"
    assert failures[0]["log_level"] == "warning"
    assert 0 < failures[0]["retry_for_seconds"] <= 60


async def test_a_pending_release_lands_by_aclose_at_the_latest(
    target: tuple[str, str], store: IdempotencyStore, proxy: TcpProxy
) -> None:
    app = FlakyApp(hold=True)
    headers = {"Idempotency-Key": uuid.uuid4().hex, "Authorization": "Bearer alice"}
    async with build(app, store) as client:
        first = asyncio.create_task(client.post("/orders", headers=headers))
        async with asyncio.timeout(10):
            await app.entered.wait()
        proxy.cut()
        proxy.reset()
        app.proceed.set()
        assert (await first).status_code == 503
    proxy.restore()
    await store.aclose()  # the release lands now, if the background retries have not yet

    # Another process (a fresh store on the same server) can run the key at once.
    kind, url = target
    other: PostgresIdempotencyStore | RedisIdempotencyStore
    if kind == "postgres":
        other = PostgresIdempotencyStore(url, registry=CollectorRegistry())
    else:
        assert isinstance(store, RedisIdempotencyStore)
        other = RedisIdempotencyStore.from_url(url, key_prefix=store.key_prefix)
    try:
        async with build(FlakyApp(), other) as client:
            answer = await client.post("/orders", headers=headers)
            assert (answer.status_code, answer.headers["idempotency-status"]) == (201, "created")
    finally:
        await other.aclose()


async def test_aclose_says_which_releases_did_not_land(
    store: IdempotencyStore, proxy: TcpProxy
) -> None:
    app = FlakyApp(hold=True)
    async with build(app, store) as client:
        first = asyncio.create_task(
            client.post(
                "/orders",
                headers={"Idempotency-Key": uuid.uuid4().hex, "Authorization": "Bearer alice"},
            )
        )
        async with asyncio.timeout(10):
            await app.entered.wait()
        proxy.cut()
        proxy.reset()
        app.proceed.set()
        assert (await first).status_code == 503
    with capture_logs() as logs:
        async with asyncio.timeout(20):  # bounded while the store is still unreachable
            await store.aclose()
    [line] = [e for e in logs if e["event"] == "idempotency claims not released at close"]
    assert line["count"] == 1
    assert line["log_level"] == "warning"
