"""Helpers shared by the cache tests: a counting app, its routes, clocks and metric readers.

``CountingApp`` is a raw ASGI app that counts calls and has one path per caching situation.

GET paths:

* ``/items/{id}``: 200 JSON ``{"id", "calls", "query"}``; waits for ``gate`` when one is set
* ``/funds/{id}``, ``/funds/{id}/projection``: like items (per-user routes in the tests)
* ``/cookie``: sets a cookie; ``/nostore``, ``/private``, ``/nocache``: those Cache-Control
  directives; ``/varystar``: ``Vary: *``; ``/missing``: 404; ``/big``: a 64 KiB body streamed
  in 16 chunks; ``/etag``: the app's own ETag
* ``/lang``: ``Vary: Accept-Language``, body is the header's value

Writes: any other method on any path answers 200 (``DELETE``: 204); ``POST /fail`` answers 500;
``?status=NNN`` on a write makes it answer ``NNN`` (a 303 after a ``POST``, say).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Awaitable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

from prometheus_client import CollectorRegistry

from prodkit import caller_from_header
from prodkit.asgi import ASGIApp, Message, Receive, Scope, Send, get_header, read_body
from prodkit.cache import (
    CacheMiddleware,
    CacheRule,
    CacheStore,
    FenceChange,
    Lookup,
    MemoryCacheStore,
    NearCacheStore,
    RedisCacheStore,
)

ROUTES = {
    "/items/{id}": CacheRule(ttl=60),
    "/funds/{id}": CacheRule(ttl=60, per_caller=True, tags=("fund:{id}", "user:{caller}")),
    "/funds/{id}/projection": CacheRule(ttl=300, per_caller=True, tags=("fund:{id}",)),
    "/cookie": CacheRule(ttl=60),
    "/nostore": CacheRule(ttl=60),
    "/private": CacheRule(ttl=60),
    "/nocache": CacheRule(ttl=60),
    "/varystar": CacheRule(ttl=60),
    "/missing": CacheRule(ttl=60),
    "/lang": CacheRule(ttl=60),
    "/etag": CacheRule(ttl=60),
    "/big": CacheRule(ttl=60),
}
USER = {"X-User-Id": "alice"}
T = TypeVar("T")


class Backend(NamedTuple):
    """What a test's stores are built over: ``kind`` is ``memory``, ``redis`` or ``near`` (a
    :class:`NearCacheStore` over Redis), with the Redis URL and this test's key prefix."""

    kind: str
    url: str = ""
    prefix: str = ""


def store_for(backend: Backend) -> CacheStore:
    """A new store over ``backend`` (each one stands for a worker process's own); a near
    cache opens its tracking connection on its first reads (see :func:`open_store`)."""
    if backend.kind == "memory":
        return MemoryCacheStore()
    redis = RedisCacheStore.from_url(backend.url, key_prefix=backend.prefix)
    if backend.kind == "redis":
        return redis
    return NearCacheStore(redis, registry=CollectorRegistry())


async def open_store(backend: Backend) -> CacheStore:
    """:func:`store_for`, a near cache's tracking connection open already."""
    store = store_for(backend)
    if isinstance(store, NearCacheStore):
        assert await store.connect()
    return store


@contextlib.contextmanager
def paused(process: subprocess.Popen[bytes]) -> Iterator[None]:
    """SIGSTOP our own redis-server for the block, SIGCONT after it (whatever happens)."""
    os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(process.pid, signal.SIGCONT)


def make_cache(app: ASGIApp, registry: CollectorRegistry, **options: Any) -> CacheMiddleware:
    """A ``CacheMiddleware`` over ``app`` with :data:`ROUTES` and ``X-User-Id`` as the caller."""
    options.setdefault("routes", ROUTES)
    options.setdefault("caller", caller_from_header("X-User-Id"))
    return CacheMiddleware(app, registry=registry, **options)


def outcomes(registry: CollectorRegistry, route: str) -> dict[str, float]:
    """``cache_requests_total`` of ``route`` by outcome, leaving out outcomes never counted."""
    found: dict[str, float] = {}
    for outcome in ("hit", "miss", "bypass", "error", "coalesced"):
        value = registry.get_sample_value(
            "prodkit_cache_requests_total", {"route": route, "outcome": outcome}
        )
        if value:
            found[outcome] = value
    return found


def arrivals(app: ASGIApp, expected: int, gate: asyncio.Event) -> ASGIApp:
    """Open ``gate`` once ``expected`` requests have reached ``app``."""
    seen = 0

    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal seen
        seen += 1
        if seen == expected:
            gate.set()
        await app(scope, receive, send)

    return wrapper


class FakeClock:
    """A clock that stands still until a test moves ``now``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingStore:
    """A real store behind a counter: how many calls reached it, and how many were cancelled."""

    def __init__(self, store: CacheStore) -> None:
        self.store = store
        self.calls = 0
        self.cancelled = 0

    async def _count(self, call: Awaitable[T]) -> T:
        self.calls += 1
        try:
            return await call
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def get(self, key: str, *, tags: Sequence[str] = ()) -> Lookup:
        return await self._count(self.store.get(key, tags=tags))

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._count(self.store.set(key, value, ttl))

    async def complete(
        self, values: Sequence[tuple[str, bytes]], ttl: float, lock: str, token: str
    ) -> None:
        await self._count(self.store.complete(values, ttl, lock, token))

    async def bump(
        self, tags: Sequence[str], ttl: float, change: FenceChange | None = None
    ) -> None:
        await self._count(self.store.bump(tags, ttl, change))

    async def claim(self, key: str, token: str, lease: float) -> bool:
        return await self._count(self.store.claim(key, token, lease))

    async def release(self, key: str, token: str) -> bool:
        return await self._count(self.store.release(key, token))

    async def aclose(self) -> None:
        await self.store.aclose()


class CountingApp:
    """The app; ``calls[path]`` counts GET/HEAD handler runs, ``gate`` holds them back."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()  # set when a GET/HEAD handler starts

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        path: str = scope["path"]
        method: str = scope["method"]
        if method not in ("GET", "HEAD"):
            await read_body(receive)
            status = 500 if path == "/fail" else 204 if method == "DELETE" else 200
            query = scope.get("query_string", b"").decode()
            if query.startswith("status="):
                status = int(query.removeprefix("status="))
            await _respond(send, status, b"" if status == 204 else b'{"ok":true}')
            return
        self.calls[path] += 1
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        headers: list[tuple[bytes, bytes]] = []
        status = 200
        body = json.dumps(
            {
                "id": path.rsplit("/", 1)[-1],
                "calls": self.calls[path],
                "query": scope.get("query_string", b"").decode(),
            }
        ).encode()
        if path == "/cookie":
            headers.append((b"set-cookie", b"session=abc; HttpOnly"))
        elif path == "/nostore":
            headers.append((b"cache-control", b"no-store"))
        elif path == "/private":
            headers.append((b"cache-control", b"private, max-age=60"))
        elif path == "/nocache":
            headers.append((b"cache-control", b"no-cache"))
        elif path == "/varystar":
            headers.append((b"vary", b"*"))
        elif path == "/missing":
            status = 404
        elif path == "/etag":
            headers.append((b"etag", b'W/"app-v1"'))
        elif path == "/lang":
            headers.append((b"vary", b"Accept-Language"))
            body = get_header(scope["headers"], b"accept-language") or b"none"
        elif path == "/big":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")],
                }
            )
            for index in range(16):
                await send(
                    {
                        "type": "http.response.body",
                        "body": bytes([index]) * 4096,
                        "more_body": index < 15,
                    }
                )
            return
        await _respond(send, status, b"" if method == "HEAD" else body, headers, len(body))


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    length: int | None = None,
) -> None:
    message: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body) if length is None else length).encode()),
            *(headers or []),
        ],
    }
    await send(message)
    await send({"type": "http.response.body", "body": body})
