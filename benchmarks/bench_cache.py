"""Response cache: prodkit hit and miss against fastapi-cache2 and cashews, on one endpoint.

Every case serves the same FastAPI endpoint ``GET /items/{item_id}`` (a small JSON body built
from a little CPU work, standing in for a database read). *hit* repeats one URL; *miss* sends
a new ``X-User-Id`` on every request, and every cache keys by it, so each request misses and
stores. Memory backends always; Redis ones when ``PRODKIT_TEST_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``) answers. *redis unreachable* points prodkit's Redis store at a
port that refuses connections: once the circuit breaker opens (within the warm-up), what a
request pays for the dead store over the bare endpoint. *write* sends ``PATCH`` to the same
path: what prodkit's write path (a fence before the endpoint runs, an invalidation after it)
costs over the bare endpoint. *prodkit near* puts prodkit's near cache in front of its Redis
store: a hit is served from the process's memory, kept coherent through Redis.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.harness import Case
from prodkit import caller_from_header
from prodkit.asgi import ASGIApp
from prodkit.cache import (
    CacheMiddleware,
    CacheRule,
    CacheStore,
    MemoryCacheStore,
    NearCacheStore,
    RedisCacheStore,
    ResponseCache,
)

REDIS_URL = os.environ.get("PRODKIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN = uuid.uuid4().hex[:8]
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _work(item_id: str) -> dict[str, Any]:
    digest = item_id.encode()
    for _ in range(200):  # ~50 µs of "database" work, so a hit has something to save
        digest = hashlib.sha256(digest).digest()
    return {"id": item_id, "name": f"fund {item_id}", "checksum": digest.hex()}


def endpoint_app(decorate: Decorator | None = None) -> ASGIApp:
    from fastapi import FastAPI, Header

    app = FastAPI()

    async def item(item_id: str, x_user_id: str = Header("")) -> dict[str, Any]:
        return _work(item_id)

    async def rename(item_id: str) -> dict[str, Any]:
        return {"id": item_id}

    handler = decorate(item) if decorate is not None else item
    app.get("/items/{item_id}")(handler)
    app.patch("/items/{item_id}")(rename)
    return app


def prodkit_app(
    redis: bool, url: Callable[[], str] = lambda: REDIS_URL, *, near: bool = False
) -> Callable[[], ASGIApp]:
    def build() -> ASGIApp:
        store: CacheStore = MemoryCacheStore()
        registry = _registry()
        if redis:
            store = RedisCacheStore.from_url(url(), key_prefix=f"prodkit-bench:{RUN}:")
            if near:
                store = NearCacheStore(store, registry=registry)
        return CacheMiddleware(
            endpoint_app(),
            cache=ResponseCache(store, registry=registry),
            routes={"/items/{item_id}": CacheRule(ttl=60, per_caller=True)},
            caller=caller_from_header("X-User-Id"),
        )

    return build


def fastapi_cache2_app(redis: bool) -> Callable[[], ASGIApp]:
    def build() -> ASGIApp:
        from fastapi_cache import FastAPICache
        from fastapi_cache.backends.inmemory import InMemoryBackend
        from fastapi_cache.decorator import cache

        backend: Any
        if redis:
            import redis.asyncio as redis_asyncio
            from fastapi_cache.backends.redis import RedisBackend

            backend = RedisBackend(redis_asyncio.Redis.from_url(REDIS_URL))
        else:
            backend = InMemoryBackend()
        FastAPICache.reset()
        FastAPICache.init(backend, prefix=f"fastapi-cache-bench:{RUN}")
        return endpoint_app(cache(expire=60))

    return build


def cashews_app(redis: bool) -> Callable[[], ASGIApp]:
    def build() -> ASGIApp:
        from cashews import Cache

        cache = Cache()
        cache.setup(REDIS_URL if redis else "mem://")
        key = f"cashews-bench:{RUN}:" + "{item_id}:{x_user_id}"
        return endpoint_app(cache(ttl="1m", key=key))

    return build


def _registry() -> Any:
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


def _redis_up() -> bool:
    import asyncio

    try:
        import redis.asyncio as redis_asyncio
    except ImportError:
        return False

    async def ping() -> None:
        client = redis_asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        try:
            await client.ping()
        finally:
            await client.aclose()

    try:
        asyncio.run(ping())
    except Exception:
        return False
    return True


def _refusing_url() -> str:
    """A Redis URL on 127.0.0.1 where nothing listens: every connection is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


#: Every request names its host, as HTTP/1.1 requires (it is part of prodkit's keys).
HOST = ("Host", "127.0.0.1:8000")


def _unique_user(counter: int) -> Sequence[tuple[str, str]]:
    return [HOST, ("X-User-Id", f"user-{RUN}-{counter}")]


def cases() -> list[Case]:
    """Bare endpoint, hit and miss for prodkit, fastapi-cache2 and cashews, prodkit writes, and
    prodkit without Redis."""
    found = [
        Case("fastapi: bare endpoint", endpoint_app),
        Case("fastapi: bare endpoint, write", endpoint_app, method="PATCH"),
    ]
    user = [HOST, ("X-User-Id", "alice")]
    backends = [("memory", False)] + ([("redis", True)] if _redis_up() else [])
    peers = [
        ("prodkit", prodkit_app),
        ("fastapi-cache2", fastapi_cache2_app),
        ("cashews", cashews_app),
    ]
    for backend, redis in backends:
        for name, factory in peers:
            found.append(
                Case(
                    f"{name} {backend}: hit",
                    factory(redis),
                    headers=user,
                    baseline="fastapi: bare endpoint",
                )
            )
            found.append(
                Case(
                    f"{name} {backend}: miss",
                    factory(redis),
                    make_headers=_unique_user,
                    baseline="fastapi: bare endpoint",
                )
            )
        found.append(
            Case(
                f"prodkit {backend}: write",
                prodkit_app(redis),
                method="PATCH",
                headers=user,
                baseline="fastapi: bare endpoint, write",
            )
        )
    if len(backends) > 1:
        for kind, method, bare in (("hit", "GET", ""), ("write", "PATCH", ", write")):
            found.append(
                Case(
                    f"prodkit near: {kind}",
                    prodkit_app(True, near=True),
                    method=method,
                    headers=user,
                    baseline=f"fastapi: bare endpoint{bare}",
                )
            )
    found.append(
        Case(
            "prodkit redis unreachable: breaker open",
            prodkit_app(True, _refusing_url),
            headers=user,
            baseline="fastapi: bare endpoint",
        )
    )
    return found
