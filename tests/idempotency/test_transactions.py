"""The record completed in the handler's own PostgreSQL transaction (issue #15).

A raw ASGI handler inserts an order row and completes the idempotency record on the same
connection, in one transaction: both commit or neither does.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from prodkit import ErrorMiddleware, Problem
from prodkit.asgi import Receive, Scope, Send, read_body
from prodkit.idempotency import (
    ClaimLost,
    IdempotencyMiddleware,
    MemoryIdempotencyStore,
    PostgresIdempotencyStore,
    current_claim,
)
from prodkit.testing import capture_log_output

asyncpg = pytest.importorskip("asyncpg")


class OrderApp:
    """``POST /orders``: insert a row, record the response in the same transaction, commit.

    ``fail_before_commit`` raises after the record is written, inside the transaction;
    ``take_over`` hands the key to another owner just before the record is written (what a
    retry does once this request's lease ran out).
    """

    def __init__(self, pool: Any, table: str) -> None:
        self.pool = pool
        self.table = table
        self.calls = 0
        self.fail_before_commit = False
        self.take_over = False
        self.outside_transaction = False
        self.enlisted: list[bool] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        body, _ = await read_body(receive)
        claim = current_claim(scope)
        order_id = str(uuid.uuid4())
        payload = json.dumps({"id": order_id, "item": json.loads(body)["item"]}).encode()
        headers = [(b"content-type", b"application/json"), (b"location", b"/orders/1")]
        async with self.pool.acquire() as conn:
            if self.outside_transaction:
                assert claim is not None
                await claim.complete_in(conn, 201, headers, payload)
            async with conn.transaction():
                await conn.execute("INSERT INTO orders (id) VALUES ($1)", uuid.UUID(order_id))
                if claim is not None:
                    if self.take_over:
                        await self.pool.execute(f"UPDATE {self.table} SET owner = 'retry'")  # noqa: S608
                    self.enlisted.append(await claim.complete_in(conn, 201, headers, payload))
                if self.fail_before_commit:
                    raise RuntimeError("failed before the commit")
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


@pytest.fixture
async def pool(postgres_dsn: str) -> AsyncIterator[Any]:
    made = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4)
    await made.execute("CREATE TABLE IF NOT EXISTS orders (id uuid PRIMARY KEY)")
    try:
        yield made
    finally:
        await made.execute("DROP TABLE IF EXISTS orders")
        await made.close()


@pytest.fixture
async def store(pool: Any) -> AsyncIterator[PostgresIdempotencyStore]:
    table = f"idem_tx_{uuid.uuid4().hex[:8]}"
    made = PostgresIdempotencyStore(pool, table=table)
    await made.ensure_schema()
    try:
        yield made
    finally:
        await pool.execute(f"DROP TABLE IF EXISTS {table}")


def client_for(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=ErrorMiddleware(app))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def post(client: httpx.AsyncClient, key: str = "order-1") -> httpx.Response:
    headers = {"Idempotency-Key": key, "Authorization": "Bearer t"}
    return await client.post("/orders", json={"item": "book"}, headers=headers)


async def orders(pool: Any) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM orders"))


async def test_the_record_commits_with_the_handlers_row(
    pool: Any, store: PostgresIdempotencyStore
) -> None:
    app = OrderApp(pool, store.table)
    middleware = IdempotencyMiddleware(app, store=store, registry=CollectorRegistry())
    async with client_for(middleware) as client:
        first = await post(client)
        again = await post(client)
    assert first.status_code == 201
    assert first.headers["idempotency-status"] == "created"
    assert app.enlisted == [True]
    assert again.status_code == 201
    assert again.headers["idempotency-status"] == "replayed"
    assert again.content == first.content
    assert again.headers["location"] == "/orders/1"
    assert app.calls == 1
    assert await orders(pool) == 1
    [row] = await pool.fetch(f"SELECT owner, status FROM {store.table}")  # noqa: S608
    assert row["status"] == 201  # completed (its owner stays: only it may withdraw it)


async def test_a_rolled_back_transaction_leaves_no_record_and_the_retry_runs(
    pool: Any, store: PostgresIdempotencyStore
) -> None:
    app = OrderApp(pool, store.table)
    app.fail_before_commit = True
    middleware = IdempotencyMiddleware(app, store=store, registry=CollectorRegistry())
    async with client_for(middleware) as client:
        failed = await post(client)
        assert failed.status_code == 500
        assert await orders(pool) == 0
        # The record rolled back with the row, and the claim was released: the retry runs.
        assert await pool.fetchval(f"SELECT count(*) FROM {store.table}") == 0  # noqa: S608
        app.fail_before_commit = False
        retried = await post(client)
    assert retried.status_code == 201
    assert retried.headers["idempotency-status"] == "created"
    assert await orders(pool) == 1


async def test_a_claim_taken_over_rolls_the_handler_back(
    pool: Any, store: PostgresIdempotencyStore
) -> None:
    app = OrderApp(pool, store.table)
    app.take_over = True
    middleware = IdempotencyMiddleware(app, store=store, registry=CollectorRegistry())
    async with client_for(middleware) as client:
        lost = await post(client)
    assert lost.status_code == 409
    assert lost.json()["code"] == "IDEMPOTENCY_REQUEST_IN_PROGRESS"
    assert lost.headers["retry-after"] == "1"
    assert await orders(pool) == 0  # the other owner's run is the one that counts
    [row] = await pool.fetch(f"SELECT owner, status FROM {store.table}")  # noqa: S608
    assert (row["owner"], row["status"]) == ("retry", None)


async def test_completing_outside_a_transaction_is_refused(
    pool: Any, store: PostgresIdempotencyStore
) -> None:
    app = OrderApp(pool, store.table)
    app.outside_transaction = True
    middleware = IdempotencyMiddleware(app, store=store, registry=CollectorRegistry())
    with capture_log_output() as logs:
        async with client_for(middleware) as client:
            refused = await post(client)
    assert refused.status_code == 500
    [logged] = logs.events("unhandled exception")
    assert logged["exc_type"] == "ConfigurationError"
    assert await orders(pool) == 0
    assert await pool.fetchval(f"SELECT count(*) FROM {store.table}") == 0  # noqa: S608


async def test_stores_that_keep_records_elsewhere_do_not_enlist(pool: Any) -> None:
    app = OrderApp(pool, "unused")
    store = MemoryIdempotencyStore()
    middleware = IdempotencyMiddleware(app, store=store, registry=CollectorRegistry())
    async with client_for(middleware) as client:
        first = await post(client)
        again = await post(client)
    assert app.enlisted == [False]  # nothing written in the transaction
    assert first.headers["idempotency-status"] == "created"
    assert again.headers["idempotency-status"] == "replayed"  # recorded by the middleware
    assert app.calls == 1


def test_claim_lost_is_a_retryable_409() -> None:
    lost = ClaimLost()
    assert (lost.status, lost.code, lost.headers) == (
        409,
        "IDEMPOTENCY_REQUEST_IN_PROGRESS",
        {"Retry-After": "1"},
    )


def starlette_orders(
    pool: Any, *, raise_inside: Exception | None = None, raise_after: Exception | None = None
) -> Any:
    """A Starlette app whose handler records its 201 in the order's transaction, then may
    raise ``raise_inside`` before the commit or ``raise_after`` after it."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def create(request: Request) -> Response:
        claim = current_claim(request.scope)
        assert claim is not None
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO orders (id) VALUES ($1)", uuid.uuid4())
            response = JSONResponse({"ok": True}, status_code=201)
            await claim.complete_in(conn, 201, response.raw_headers, bytes(response.body))
            if raise_inside is not None:
                raise raise_inside  # the order and the record roll back
        if raise_after is not None:
            raise raise_after  # committed: a bug, or a call after the commit that failed
        return response

    return Starlette(routes=[Route("/orders", create, methods=["POST"])])


async def test_a_failure_after_complete_in_rolls_back_and_frees_the_key(
    pool: Any, store: PostgresIdempotencyStore
) -> None:
    # Starlette sends its plain 500 before re-raising: the middleware must not take it for the
    # response recorded in the (rolled back) transaction and keep the key for the whole lease.
    app = starlette_orders(pool, raise_inside=RuntimeError("failed before the commit"))
    middleware = IdempotencyMiddleware(app, store=store, registry=CollectorRegistry())
    async with client_for(middleware) as client:
        failed = await post(client)
        assert failed.status_code == 500
        assert failed.json()["code"] == "INTERNAL_ERROR"
        assert await pool.fetchval(f"SELECT count(*) FROM {store.table}") == 0  # noqa: S608
        app.router.routes[:] = starlette_orders(pool).router.routes
        retried = await post(client)
    assert (retried.status_code, retried.headers["idempotency-status"]) == (201, "created")
    assert await orders(pool) == 1


async def test_a_problem_raised_after_complete_in_is_what_is_recorded(
    pool: Any, store: PostgresIdempotencyStore
) -> None:
    app = starlette_orders(pool, raise_inside=Problem(409, "ORDER_CONFLICT", "basket changed"))
    middleware = IdempotencyMiddleware(app, store=store, registry=CollectorRegistry())
    async with client_for(middleware) as client:
        first = await post(client)
        again = await post(client)
    assert (first.status_code, first.headers["idempotency-status"]) == (409, "created")
    assert first.json()["code"] == "ORDER_CONFLICT"
    assert (again.status_code, again.headers["idempotency-status"]) == (409, "replayed")
    assert again.content == first.content
    assert await orders(pool) == 0


async def test_complete_in_leaves_what_is_not_recorded_to_the_middleware(
    pool: Any, store: PostgresIdempotencyStore
) -> None:
    from prodkit.idempotency import IdempotencyClaim

    def claim_of(**options: Any) -> IdempotencyClaim:
        middleware = IdempotencyMiddleware(
            OrderApp(pool, store.table), store=store, registry=CollectorRegistry(), **options
        )
        recorder = middleware.recorder
        return IdempotencyClaim(store, "k", "owner", ttl=recorder.ttl, record=recorder.record)

    claim = claim_of()
    async with pool.acquire() as conn, conn.transaction():
        assert not await claim.complete_in(conn, 503, [(b"retry-after", b"1")], b"busy")
        assert not await claim.complete_in(conn, 429, {}, b"slow down")
        assert not await claim.complete_in(conn, 408, {}, b"too slow")
        assert not await claim.complete_in(conn, 200, {"Retry-After": "3"}, b"come back")
    small = claim_of(max_response_bytes=4)
    async with pool.acquire() as conn, conn.transaction():
        assert not await small.complete_in(conn, 201, {}, b"12345")
    assert not claim.completed


async def test_a_committed_record_is_what_retries_get_whatever_the_handler_does_next(
    pool: Any, store: PostgresIdempotencyStore
) -> None:
    app = starlette_orders(pool, raise_after=Problem(409, "TOO_LATE", "after the commit"))
    middleware = IdempotencyMiddleware(app, store=store, registry=CollectorRegistry())
    async with client_for(middleware) as client:
        first = await post(client)
        again = await post(client)
    assert first.status_code == 409
    assert first.headers["idempotency-stored"] == "false"  # this answer is not the record
    assert (again.status_code, again.headers["idempotency-status"]) == (201, "replayed")
    assert again.json() == {"ok": True}
    assert await orders(pool) == 1
