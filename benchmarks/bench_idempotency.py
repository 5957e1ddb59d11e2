"""Idempotency: per-request overhead of a first execution and of a replay, per store.

Cases against a bare raw ASGI app answering ``201`` JSON to ``POST /api/funds``:

* ``first``: a new key on every request (claim, run, record);
* ``replay``: the same key every time (one claim answered from the record);
* ``full``: a new key on every request to a memory store already at its bound (10,000 records:
  the oldest 1% claims still in progress, the rest completed), so every claim evicts the
  oldest completed record; and the same claim and completion called on the store directly,
  without the middleware (``store only``), for the store's own cost per claim at capacity.

Stores: memory always; Redis and PostgreSQL when reachable at ``PRODKIT_BENCH_REDIS_URL`` /
``PRODKIT_BENCH_DATABASE_URL`` (defaults: the local test services; the PostgreSQL cases use
their own table ``prodkit_bench_idempotency``). The peer ``asgi-idempotency-header`` runs with
its memory and Redis backends when installed (it only stores JSON responses, keeps no request
fingerprint, and its check-then-set is not atomic, so it does less work per request).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from benchmarks.harness import Case
from prodkit import IdempotencyMiddleware
from prodkit.asgi import ASGIApp, Receive, Scope, Send
from prodkit.idempotency import (
    IdempotencyStore,
    MemoryIdempotencyStore,
    PostgresIdempotencyStore,
    RedisIdempotencyStore,
    StoredResponse,
)

DATABASE_URL = os.environ.get(
    "PRODKIT_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("PRODKIT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
BODY = b'{"name":"Seed fund","size":1000000}'
FULL = 10_000  #: the bound of the memory store in the ``full`` cases (the default)
TTL = 24 * 3600.0  #: the middleware's default ttl: no record expires during a run
RECORDED = StoredResponse(
    201, ((b"content-type", b"application/json"),), b'{"id":42,"name":"Seed fund"}'
)
RUN = uuid.uuid4().hex[:8]


def bare_app() -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body", False):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"location", b"/api/funds/42"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b'{"id":42,"name":"Seed fund"}'})

    return app


def reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 1
        ):
            return True
    except OSError:
        return False


class SetUpFirst:
    """Run ``setup`` before the first request (the harness builds apps synchronously)."""

    def __init__(self, app: ASGIApp, setup: Callable[[], Awaitable[object]]) -> None:
        self.app = app
        self.setup = setup
        self.ready = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.ready:
            await self.setup()
            self.ready = True
        await self.app(scope, receive, send)


def prodkit_app(make_store: Callable[[], IdempotencyStore]) -> Callable[[], ASGIApp]:
    def factory() -> ASGIApp:
        store = make_store()
        app: ASGIApp = IdempotencyMiddleware(bare_app(), store=store, registry=CollectorRegistry())
        if isinstance(store, PostgresIdempotencyStore):
            app = SetUpFirst(app, store.ensure_schema)
        if isinstance(store, MemoryIdempotencyStore) and store.max_entries == FULL:
            app = SetUpFirst(app, lambda: fill(store))
        return app

    return factory


async def fill(store: MemoryIdempotencyStore) -> None:
    """Bring a memory store to its bound: the oldest 1% claims in progress, the rest completed."""
    running = store.max_entries // 100
    for index in range(store.max_entries):
        key = f"{RUN}-fill-{index}"
        await store.claim(key, b"fp", key, lease=TTL, ttl=TTL)
        if index >= running:
            await store.complete(key, key, RECORDED, ttl=TTL)


def store_only_app() -> ASGIApp:
    """The bare app behind a claim and a completion on a full memory store, no middleware."""
    store = MemoryIdempotencyStore(max_entries=FULL)
    inner = bare_app()
    counter = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal counter
        counter += 1
        key = f"{RUN}-direct-{counter}"
        await store.claim(key, b"fp", key, lease=60.0, ttl=TTL)
        await store.complete(key, key, RECORDED, ttl=TTL)
        await inner(scope, receive, send)

    return SetUpFirst(app, lambda: fill(store))


def peer_app(backend: str) -> Callable[[], ASGIApp]:
    def factory() -> ASGIApp:
        from idempotency_header_middleware import (
            IdempotencyHeaderMiddleware,
        )
        from idempotency_header_middleware.backends import (
            MemoryBackend,
            RedisBackend,
        )

        if backend == "memory":
            made: Any = MemoryBackend()
        else:
            import redis.asyncio as redis_asyncio

            made = RedisBackend(
                redis_asyncio.Redis.from_url(REDIS_URL),
                keys_key=f"prodkit-bench:{RUN}:keys",
                response_key=f"prodkit-bench:{RUN}:responses:",
                expiry=600,
            )
        # Its __call__ is annotated as returning a response; it is an ASGI app all the same.
        peer: Any = IdempotencyHeaderMiddleware(bare_app(), backend=made)
        return peer  # type: ignore[no-any-return]

    return factory


def new_keys(label: str) -> Callable[[int], Sequence[tuple[str, str]]]:
    def headers(counter: int) -> Sequence[tuple[str, str]]:
        return [
            ("content-type", "application/json"),
            ("authorization", "Bearer bench"),
            ("idempotency-key", f"{RUN}-{label}-{counter}"),
        ]

    return headers


def post_case(name: str, app: Callable[[], ASGIApp], *, first: bool) -> Case:
    label = "".join(c if c.isalnum() else "-" for c in name)
    fixed = [
        ("content-type", "application/json"),
        ("authorization", "Bearer bench"),
        ("idempotency-key", f"{RUN}-{label}"),
    ]
    return Case(
        name,
        app,
        method="POST",
        path="/api/funds",
        body=BODY,
        headers=fixed,
        make_headers=new_keys(label) if first else None,
        baseline="bare POST",
        expect_status=201,
    )


def cases() -> list[Case]:
    """Bare app, then first execution and replay per store (and full, for memory) and the peer."""
    stores: list[tuple[str, Callable[[], IdempotencyStore]]] = [
        ("memory", lambda: MemoryIdempotencyStore(max_entries=1_000_000)),
    ]
    if reachable(REDIS_URL, 6379):
        stores.append(
            (
                "redis",
                lambda: RedisIdempotencyStore.from_url(
                    REDIS_URL, key_prefix=f"prodkit-bench:{RUN}:"
                ),
            )
        )
    else:
        print(f"redis not reachable at {REDIS_URL}: its cases are skipped")
    if reachable(DATABASE_URL, 5432):
        stores.append(
            (
                "postgres",
                lambda: PostgresIdempotencyStore(
                    DATABASE_URL,
                    table="prodkit_bench_idempotency",
                    pool_options={"min_size": 1, "max_size": 2},
                ),
            )
        )
    else:
        print(f"PostgreSQL not reachable at {DATABASE_URL}: its cases are skipped")

    result = [
        Case(
            "bare POST",
            bare_app,
            method="POST",
            path="/api/funds",
            body=BODY,
            headers=[("content-type", "application/json")],
            expect_status=201,
        )
    ]
    for label, make_store in stores:
        result.append(post_case(f"prodkit {label}: first", prodkit_app(make_store), first=True))
        result.append(post_case(f"prodkit {label}: replay", prodkit_app(make_store), first=False))
        if label == "memory":
            full = prodkit_app(lambda: MemoryIdempotencyStore(max_entries=FULL))
            result.append(post_case("prodkit memory, full (10k): first", full, first=True))
            result.append(
                Case(
                    "memory store, full (10k): store only",
                    store_only_app,
                    method="POST",
                    path="/api/funds",
                    body=BODY,
                    headers=[("content-type", "application/json")],
                    baseline="bare POST",
                    expect_status=201,
                )
            )
    try:
        import idempotency_header_middleware  # noqa: F401 - only probing
    except ImportError:
        print("asgi-idempotency-header is not installed: peer cases skipped")
        return result
    peers = ["memory"] + (["redis"] if any(label == "redis" for label, _ in stores) else [])
    for backend in peers:
        result.append(
            post_case(f"asgi-idempotency-header {backend}: first", peer_app(backend), first=True)
        )
        result.append(
            post_case(f"asgi-idempotency-header {backend}: replay", peer_app(backend), first=False)
        )
    return result
