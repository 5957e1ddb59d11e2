"""Recording a response from the handler, for a store that cannot join its transaction (#21).

The work is a row in PostgreSQL; the idempotency record lives in Redis or in memory. A
handler records right after its commit (``IdempotencyClaim.complete``) or while the commit is
in flight (``IdempotencyClaim.complete_during``). To see where the record is while the commit
runs, a deferred constraint trigger holds every commit of ``orders`` on an advisory lock the
test takes, and can refuse it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from prodkit import BackendError, ErrorMiddleware
from prodkit.asgi import Receive, Scope, Send
from prodkit.idempotency import (
    IdempotencyMiddleware,
    IdempotencyStore,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
    StoredResponse,
    WithdrawingIdempotencyStore,
    current_claim,
)
from tests.conftest import RUN_ID, fresh_database

asyncpg = pytest.importorskip("asyncpg")

pytestmark = pytest.mark.postgres

#: The advisory lock every commit of ``orders`` waits for (the test holds it to stop commits).
GATE = 7_021
CALLER = "caller-1"
SCHEMA = """
CREATE TABLE orders (id uuid PRIMARY KEY);
CREATE TABLE refusals (refuse boolean NOT NULL);
INSERT INTO refusals VALUES (false);
CREATE FUNCTION at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_advisory_xact_lock_shared(7021);  -- GATE
  IF (SELECT refuse FROM refusals) THEN
    RAISE EXCEPTION 'the commit was refused';
  END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER at_commit AFTER INSERT ON orders
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION at_commit();
"""


@pytest.fixture(scope="module")
def orders_dsn(postgres_server_dsn: str) -> Iterator[str]:
    with fresh_database(postgres_server_dsn, f"prodkit_test_{RUN_ID}_claims") as dsn:
        yield dsn


@pytest.fixture
async def pool(orders_dsn: str) -> AsyncIterator[Any]:
    made = await asyncpg.create_pool(orders_dsn, min_size=1, max_size=4)
    await made.execute("DROP TABLE IF EXISTS orders, refusals; DROP FUNCTION IF EXISTS at_commit")
    await made.execute(SCHEMA)
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[IdempotencyStore]:
    """A store that keeps its records outside the orders' database."""
    if request.param == "memory":
        yield MemoryIdempotencyStore()
        return
    made = RedisIdempotencyStore.from_url(
        request.getfixturevalue("redis_url"), key_prefix=request.getfixturevalue("redis_prefix")
    )
    try:
        yield made
    finally:
        await made.aclose()


class OrderApp:
    """``POST /orders``: insert a row, commit, record the response as ``how`` says.

    ``how``: ``"during"`` (``complete_during``), ``"after"`` (``complete`` after the commit).
    ``fail_after`` raises once the response is recorded (the handler's bug after its work).
    """

    def __init__(self, pool: Any, how: str, *, fail_after: bool = False) -> None:
        self.pool = pool
        self.how = how
        self.fail_after = fail_after
        self.runs = 0
        self.recorded: list[Any] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.runs += 1
        claim = current_claim(scope)
        assert claim is not None
        order = uuid.uuid4()
        body = json.dumps({"id": str(order)}).encode()
        headers = [(b"content-type", b"application/json")]
        async with self.pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute("INSERT INTO orders (id) VALUES ($1)", order)
            if self.how == "during":
                self.recorded.append(
                    await claim.complete_during(transaction.commit(), 201, headers, body)
                )
            else:
                await transaction.commit()
                self.recorded.append(await claim.complete(201, headers, body))
        if self.fail_after:
            raise RuntimeError("a bug after the work was done")
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def client_for(
    app: OrderApp, store: IdempotencyStore
) -> tuple[IdempotencyMiddleware, httpx.AsyncClient]:
    middleware = IdempotencyMiddleware(
        app, store=store, caller=lambda scope: CALLER, registry=CollectorRegistry()
    )
    transport = httpx.ASGITransport(app=ErrorMiddleware(middleware))
    return middleware, httpx.AsyncClient(transport=transport, base_url="http://test")


async def post(client: httpx.AsyncClient, key: str = "order-1") -> httpx.Response:
    return await client.post(
        "/orders", json={}, headers={"Idempotency-Key": key, "Authorization": "Bearer alice"}
    )


async def orders(pool: Any) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM orders"))


@asynccontextmanager
async def commits_held(pool: Any) -> AsyncIterator[Any]:
    """Commits of ``orders`` wait (in their trigger) until the block ends; yields a connection."""
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", GATE)
        try:
            yield conn
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", GATE)


async def commit_waiting(db: Any) -> bool:
    count = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND wait_event = 'advisory' AND query LIKE 'COMMIT%'"
    )
    return bool(count)


async def commit_running(db: Any) -> bool:
    """Whether a commit is still at work on the server (its client may have gone)."""
    count = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'COMMIT%'"
    )
    return bool(count)


async def until(db: Any, what: str) -> None:
    for _ in range(200):  # bounded: 10 s
        if await commit_waiting(db):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting until {what}")


async def test_complete_during_records_while_the_commit_is_in_flight(
    pool: Any, store: IdempotencyStore
) -> None:
    app = OrderApp(pool, "during")
    middleware, client = client_for(app, store)
    key = middleware.storage_key(CALLER, "order-1")
    async with client:
        async with commits_held(pool) as db:
            first = asyncio.create_task(post(client))
            await until(db, "the handler's commit waits")
            # The commit has not returned, and the record is already there: a process
            # killed now would leave the work (the server commits) and its record, replayed
            # once the lease is over.
            record = await store.get(key)
            assert record is not None
            assert record.tentative
            # The commit may still fail: a retry now waits rather than replay it.
            during = await post(client)
            assert during.status_code == 409
            assert during.json()["code"] == "IDEMPOTENCY_REQUEST_IN_PROGRESS"
        answer = await first
        again = await post(client)
    assert (answer.status_code, answer.headers["idempotency-status"]) == (201, "created")
    assert (again.status_code, again.headers["idempotency-status"]) == (201, "replayed")
    assert again.content == answer.content
    assert app.recorded == [None]  # complete_during returns the commit's result
    assert app.runs == 1
    assert await orders(pool) == 1


async def test_a_retry_during_a_commit_that_fails_is_never_told_it_succeeded(
    pool: Any, store: IdempotencyStore
) -> None:
    await pool.execute("UPDATE refusals SET refuse = true")
    app = OrderApp(pool, "during")
    _, client = client_for(app, store)
    async with client:
        async with commits_held(pool) as db:
            first = asyncio.create_task(post(client))
            await until(db, "the handler's commit waits")
            during = await post(client)
        failed = await first
        await pool.execute("UPDATE refusals SET refuse = false")
        retried = await post(client)
    assert during.status_code == 409
    assert failed.status_code == 500
    assert (retried.status_code, retried.headers["idempotency-status"]) == (201, "created")
    assert app.runs == 2
    assert await orders(pool) == 1


async def test_a_cancelled_request_whose_commit_fails_leaves_no_record(
    pool: Any, store: IdempotencyStore
) -> None:
    await pool.execute("UPDATE refusals SET refuse = true")
    app = OrderApp(pool, "during")
    middleware, client = client_for(app, store)
    key = middleware.storage_key(CALLER, "order-1")
    async with client:
        async with commits_held(pool) as db:
            first = asyncio.create_task(post(client))
            await until(db, "the handler's commit waits")
            first.cancel()  # the client went away, or the shutdown deadline came
            await asyncio.wait({first})
        # The commit now fails, with nobody waiting for it: its record goes all the same.
        for _ in range(200):  # bounded: 10 s
            if await store.get(key) is None and not await commit_running(pool):
                break
            await asyncio.sleep(0.05)
        assert await store.get(key) is None
        await pool.execute("UPDATE refusals SET refuse = false")
        retried = await post(client)
    assert (retried.status_code, retried.headers["idempotency-status"]) == (201, "created")
    assert app.runs == 2
    assert await orders(pool) == 1


class ReplyLost:
    """A store whose tentative writes land but whose replies are lost (a timeout, a broken
    connection after the write): they raise although the record is there."""

    def __init__(self, store: IdempotencyStore) -> None:
        self.store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def complete(self, key: str, owner: str, response: StoredResponse, *, ttl: float) -> bool:
        await self.store.complete(key, owner, response, ttl=ttl)
        raise BackendError("the reply was lost")

    async def complete_tentatively(
        self, key: str, owner: str, response: StoredResponse, *, ttl: float
    ) -> bool:
        assert isinstance(self.store, WithdrawingIdempotencyStore)
        await self.store.complete_tentatively(key, owner, response, ttl=ttl)
        raise BackendError("the reply was lost")


async def test_a_record_whose_write_seemed_to_fail_is_withdrawn_when_the_commit_fails(
    pool: Any, store: IdempotencyStore
) -> None:
    await pool.execute("UPDATE refusals SET refuse = true")
    app = OrderApp(pool, "during")
    lossy = ReplyLost(store)
    assert isinstance(lossy, WithdrawingIdempotencyStore)
    middleware, client = client_for(app, lossy)
    async with client:
        failed = await post(client)
        assert await store.get(middleware.storage_key(CALLER, "order-1")) is None
        await pool.execute("UPDATE refusals SET refuse = false")
        retried = await post(client)
    assert failed.status_code == 500
    assert (retried.status_code, retried.headers["idempotency-status"]) == (201, "created")
    assert app.runs == 2
    assert await orders(pool) == 1


async def test_complete_during_withdraws_the_record_when_the_commit_fails(
    pool: Any, store: IdempotencyStore
) -> None:
    await pool.execute("UPDATE refusals SET refuse = true")
    app = OrderApp(pool, "during")
    middleware, client = client_for(app, store)
    async with client:
        failed = await post(client)
        assert failed.status_code == 500
        assert await store.get(middleware.storage_key(CALLER, "order-1")) is None
        await pool.execute("UPDATE refusals SET refuse = false")
        retried = await post(client)
    assert (retried.status_code, retried.headers["idempotency-status"]) == (201, "created")
    assert app.runs == 2
    assert await orders(pool) == 1  # the refused commit left nothing


async def test_complete_after_the_commit_is_what_retries_get_whatever_the_handler_does_next(
    pool: Any, store: IdempotencyStore
) -> None:
    app = OrderApp(pool, "after", fail_after=True)
    _, client = client_for(app, store)
    async with client:
        failed = await post(client)
        app.fail_after = False
        retried = await post(client)
    assert failed.status_code == 500  # the handler's bug, after its work and its record
    assert app.recorded == [True]
    assert (retried.status_code, retried.headers["idempotency-status"]) == (201, "replayed")
    assert app.runs == 1
    assert await orders(pool) == 1


async def test_complete_leaves_what_is_not_recorded_to_the_middleware(
    pool: Any, store: IdempotencyStore
) -> None:
    app = OrderApp(pool, "after")
    middleware, _ = client_for(app, store)
    from prodkit.idempotency import IdempotencyClaim

    key = middleware.storage_key(CALLER, "k")
    assert (await store.claim(key, b"fp", "owner", lease=30, ttl=60)).outcome.value == "acquired"
    recorder = middleware.recorder
    claim = IdempotencyClaim(store, key, "owner", ttl=recorder.ttl, record=recorder.record)
    assert not await claim.complete(503, [(b"retry-after", b"1")], b"busy")
    assert not await claim.complete(429, {}, b"slow down")
    assert not await claim.complete(200, {"Retry-After": "3"}, b"come back")
    other = IdempotencyClaim(store, key, "not-the-owner", ttl=60, record=recorder.record)
    assert not await other.complete(201, {}, b"x")
    assert not claim.completed
    assert await claim.complete(201, {"Content-Type": "text/plain"}, b"made")
    assert await claim.complete(201, {}, b"made")  # already on record
    record = await store.get(key)
    assert record is not None
    assert record.response is not None
    assert (record.response.status, record.response.body) == (201, b"made")
