"""A tiny rate-limited app for real-server tests, configured by environment variables.

* ``PRODKIT_TEST_RL_REDIS_URL``: Redis URL of the shared store (memory store when unset)
* ``PRODKIT_TEST_RL_PREFIX``: Redis key prefix (one per test)
* ``PRODKIT_TEST_RL_RATE``: the global policy, e.g. ``100/day``
* ``PRODKIT_TEST_RL_RESERVE``: the Redis store's ``reserve`` (its default when unset)

Run with ``uvicorn tests.servers.ratelimit_app:app``.
"""

from __future__ import annotations

import os

from prodkit.asgi import Receive, Scope, Send
from prodkit.ratelimit import (
    MemoryRateLimitStore,
    RateLimitMiddleware,
    RateLimitStore,
    RedisRateLimitStore,
)


async def ok(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})


def _store() -> RateLimitStore:
    url = os.environ.get("PRODKIT_TEST_RL_REDIS_URL")
    if not url:
        return MemoryRateLimitStore()
    prefix = os.environ.get("PRODKIT_TEST_RL_PREFIX", "t:")
    reserve = os.environ.get("PRODKIT_TEST_RL_RESERVE")
    if reserve is None:  # the store's default
        return RedisRateLimitStore.from_url(url, key_prefix=prefix)
    return RedisRateLimitStore.from_url(url, key_prefix=prefix, reserve=float(reserve))


app = RateLimitMiddleware(
    ok, policy=os.environ.get("PRODKIT_TEST_RL_RATE", "100/day"), store=_store()
)
