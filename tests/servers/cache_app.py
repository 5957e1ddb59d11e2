"""An app for multi-worker cache tests: computations and arrivals are counted in Redis.

Environment: ``CACHE_TEST_REDIS_URL`` and ``CACHE_TEST_PREFIX``. ``GET /items/{id}`` counts a
computation under ``{prefix}computations:{path}``, then waits until ``{prefix}go`` exists, so
a test can hold the computation until every request has arrived (counted under
``{prefix}arrivals``). Every response says which worker answered (``X-Worker-Pid``).
"""

from __future__ import annotations

import asyncio
import os

import redis.asyncio as redis_asyncio

from prodkit.asgi import Message, Receive, Scope, Send, message_headers, set_header
from prodkit.cache import CacheMiddleware, CacheRule, RedisCacheStore

URL = os.environ["CACHE_TEST_REDIS_URL"]
PREFIX = os.environ["CACHE_TEST_PREFIX"]
PID = str(os.getpid()).encode()

client = redis_asyncio.Redis.from_url(URL)


async def compute(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path: str = scope["path"]
    await client.incr(f"{PREFIX}computations:{path}")
    for _ in range(2000):  # at most 20 s
        if await client.exists(f"{PREFIX}go"):
            break
        await asyncio.sleep(0.01)
    body = f'{{"path": "{path}", "computed_by": {PID.decode()}}}'.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


cached = CacheMiddleware(
    compute,
    store=RedisCacheStore.from_url(URL, key_prefix=PREFIX + "cache:"),
    routes={"/items/{id}": CacheRule(ttl=60)},
    lock_lease=30.0,
)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        await cached(scope, receive, send)
        return
    await client.incr(f"{PREFIX}arrivals")

    async def send_with_pid(message: Message) -> None:
        if message["type"] == "http.response.start":
            set_header(message_headers(message), b"x-worker-pid", PID)
        await send(message)

    await cached(scope, receive, send_with_pid)
