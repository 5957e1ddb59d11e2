"""A tiny ASGI app for real-process idempotency tests: ``uvicorn tests.servers.idempotency_app:app``.

Every handled request inserts a row into a PostgreSQL table, so tests count side effects.
Configuration by environment:

* ``DATABASE_URL`` (required): where side effects (table ``idem_charges``) are written;
* ``IDEMPOTENCY_STORE``: ``postgres`` (default), ``redis`` or ``memory``;
* ``REDIS_URL``, ``IDEMPOTENCY_REDIS_PREFIX``: for the Redis store;
* ``IDEMPOTENCY_LEASE``: claim lease in seconds.

Endpoints (caller = ``X-User-Id``): ``POST /charges?delay=S`` (201 after S seconds),
``POST /fail`` (500), ``POST /hang`` (the first attempt for a key never answers; later ones
answer 201). Every response carries ``X-Worker-Pid``.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any
from urllib.parse import parse_qs

import asyncpg

from prodkit import caller_from_header
from prodkit.asgi import Message, Receive, Scope, Send, read_body, scope_header
from prodkit.idempotency import (
    IdempotencyMiddleware,
    IdempotencyStore,
    MemoryIdempotencyStore,
    PostgresIdempotencyStore,
    RedisIdempotencyStore,
)

DATABASE_URL = os.environ["DATABASE_URL"]
TABLE = "idem_charges"
_pool: Any = None


def make_store() -> IdempotencyStore:
    kind = os.environ.get("IDEMPOTENCY_STORE", "postgres")
    if kind == "postgres":
        return PostgresIdempotencyStore(DATABASE_URL, pool_options={"min_size": 1, "max_size": 8})
    if kind == "redis":
        return RedisIdempotencyStore.from_url(
            os.environ["REDIS_URL"], key_prefix=os.environ.get("IDEMPOTENCY_REDIS_PREFIX", "idem:")
        )
    return MemoryIdempotencyStore()


STORE = make_store()


async def startup() -> None:
    global _pool
    _pool = await asyncpg.create_pool(DATABASE_URL, min_size=1, max_size=8)
    async with _pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", TABLE)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, idem_key text,"
            " user_id text, path text, body text, pid integer)"
        )
    if isinstance(STORE, PostgresIdempotencyStore):
        await STORE.ensure_schema()


async def respond(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json")]
    if status == 201:
        headers.append((b"location", f"/charges/{payload['id']}".encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def handler(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message: Message = await receive()
            if message["type"] == "lifespan.startup":
                await startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _pool is not None:
                    await _pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if scope["method"] == "GET":
        await respond(send, 200, {"pid": os.getpid()})
        return
    body, _ = await read_body(receive)
    key = (scope_header(scope, b"idempotency-key") or b"").decode()
    user = (scope_header(scope, b"x-user-id") or b"").decode()
    row_id = await _pool.fetchval(
        f"INSERT INTO {TABLE} (idem_key, user_id, path, body, pid)"  # noqa: S608 - constant
        " VALUES ($1, $2, $3, $4, $5) RETURNING id",
        key,
        user,
        path,
        body.decode(),
        os.getpid(),
    )
    if path == "/fail":
        await respond(send, 500, {"id": row_id, "error": "failed after the side effect"})
        return
    if path == "/hang":
        attempts = await _pool.fetchval(
            f"SELECT count(*) FROM {TABLE} WHERE idem_key = $1 AND path = '/hang'",  # noqa: S608
            key,
        )
        if attempts == 1:
            await asyncio.sleep(3600)  # the test kills this worker here
    delay = float(parse_qs(scope.get("query_string", b"").decode()).get("delay", ["0"])[0])
    await asyncio.sleep(delay)
    await respond(send, 201, {"id": row_id, "pid": os.getpid(), "body": body.decode()})


idempotent = IdempotencyMiddleware(
    handler,
    store=STORE,
    caller=caller_from_header("X-User-Id"),
    lease=float(os.environ.get("IDEMPOTENCY_LEASE", "60")),
)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The idempotent handler, with ``X-Worker-Pid`` on every response."""
    pid = str(os.getpid()).encode()

    async def send_pid(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (b"x-worker-pid", pid)]
        await send(message)

    await idempotent(scope, receive, send_pid)
