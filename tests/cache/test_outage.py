"""A Redis outage (SIGSTOP of our own redis-server) loses no invalidation, and ends fast.

Each test starts a private redis-server, caches a read, pauses the server, writes, resumes it,
and checks what a client then gets: the app's current answer, never an entry the write made
stale. A second ``CacheMiddleware`` over the same app data and the same Redis, with its own
``ResponseCache``, stands for another worker process: it cannot see the first one's record
of pending invalidations, only what reaches Redis.

Time-based behaviour is checked as "within a bounded number of polls", never as a duration.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from prodkit.asgi import BreakerState, CircuitBreaker, Receive, Scope, Send, read_body
from prodkit.cache import CacheMiddleware, CacheRule, RedisCacheStore, ResponseCache
from prodkit.cache._cache import FLUSH_KEYS, fenced, tag_key
from prodkit.testing import capture_logs
from tests.cache.helpers import FakeClock, outcomes, paused
from tests.servers import HOST, free_port, redis_server

pytestmark = pytest.mark.redis

ROUTES = {"/items/{id}": CacheRule(ttl=60, tags=("item:{id}",))}
POLL = 0.1  # seconds between two polls
RECOVERY_POLLS = 10  # "within 1 s" of Redis answering again, as polls of 0.1 s


@dataclass
class ItemsApp:
    """The origin: ``GET /items/{id}`` answers 200 ``{"id", "name"}`` or 404; ``PATCH``
    (``{"name"}``) renames, ``DELETE`` removes (204). Data shared by every "worker"."""

    items: dict[str, str] = field(default_factory=lambda: {str(i): f"item {i}" for i in range(10)})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        item = scope["path"].rsplit("/", 1)[-1]
        method = scope["method"]
        status, body = 404, b'{"title": "not found"}'
        if method == "PATCH" and item in self.items:
            self.items[item] = json.loads((await read_body(receive))[0])["name"]
        elif method == "DELETE" and item in self.items:
            del self.items[item]
            status, body = 204, b""
        if method in ("GET", "PATCH") and item in self.items:
            status, body = 200, json.dumps({"id": item, "name": self.items[item]}).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@dataclass
class Worker:
    """One "process": its ``ResponseCache`` (own breaker, own pending record) and a client."""

    cache: ResponseCache
    http: httpx.AsyncClient
    registry: CollectorRegistry

    @property
    def breaker(self) -> CircuitBreaker:
        assert self.cache.breaker is not None
        return self.cache.breaker

    def state(self) -> BreakerState:
        """Read through a call, so the type checker does not narrow it between reads."""
        return self.breaker.state

    async def get(self, item: str = "1") -> httpx.Response:
        return await self.http.get(f"/items/{item}")


@pytest.fixture
def own_redis() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    with redis_server(port) as process:
        yield process, f"redis://{HOST}:{port}/0"


WorkerFactory = Callable[..., Worker]


@pytest.fixture
async def workers(
    own_redis: tuple[subprocess.Popen[bytes], str],
) -> AsyncIterator[WorkerFactory]:
    """Build workers over one ``ItemsApp`` and the throwaway Redis; all closed at teardown."""
    _, url = own_redis
    app = ItemsApp()
    prefix = f"outage:{uuid.uuid4().hex[:8]}:"
    made: list[Worker] = []

    def factory(**options: Any) -> Worker:
        registry = CollectorRegistry()
        store = RedisCacheStore.from_url(
            url, key_prefix=prefix, socket_timeout=0.5, connect_timeout=0.5
        )
        cache = ResponseCache(store, registry=registry, **options)
        middleware = CacheMiddleware(app, cache=cache, routes=ROUTES, registry=registry)
        transport = httpx.ASGITransport(app=middleware)
        http = httpx.AsyncClient(transport=transport, base_url="http://t")
        made.append(Worker(cache, http, registry))
        return made[-1]

    yield factory
    for worker in made:
        await worker.http.aclose()
        await worker.cache.aclose()


async def trip(worker: Worker) -> None:
    """With Redis paused: read until the worker's breaker opens (its reads then fail open)."""
    for index in range(worker.breaker.failure_threshold):
        response = await worker.get(str(5 + index))
        assert (response.status_code, response.headers["x-cache"]) == (200, "MISS")
    assert worker.state() is BreakerState.OPEN


async def cached(worker: Worker, item: str = "1") -> dict[str, Any]:
    """Read ``item`` twice: a miss that stores it, then a hit."""
    assert (await worker.get(item)).headers["x-cache"] == "MISS"
    hit = await worker.get(item)
    assert (hit.status_code, hit.headers["x-cache"]) == (200, "HIT")
    result: dict[str, Any] = hit.json()
    return result


async def drained(worker: Worker, polls: int = 30) -> bool:
    """Whether the worker's pending invalidations reach the store within ``polls`` polls."""
    for _ in range(polls):
        if worker.cache.pending_invalidations == 0:
            return True
        await asyncio.sleep(POLL)
    return worker.cache.pending_invalidations == 0


# The bug this file is for: DELETE / PATCH while Redis was paused left the old entry served as
# "200 HIT" for its whole TTL once Redis came back.


async def test_a_delete_during_the_pause_is_never_followed_by_a_stale_hit(
    own_redis: tuple[subprocess.Popen[bytes], str], workers: WorkerFactory
) -> None:
    process, _ = own_redis
    clock = FakeClock()  # the half-open probe comes when the test moves the clock
    breaker = CircuitBreaker("cache", failure_threshold=3, timeout=0.25, clock=clock)
    # No background retries: the first read after the outage must write the record itself.
    first = workers(breaker=breaker, retry_interval=3600)
    other = workers()
    await cached(first)
    assert (await other.get()).headers["x-cache"] == "HIT"  # the entry is in Redis

    with paused(process):
        await trip(first)  # the open breaker refuses the invalidation: nothing is sent
        deleted = await first.http.delete("/items/1")
        assert deleted.status_code == 204
        assert first.cache.pending_invalidations > 0
        during = await first.get()
        assert (during.status_code, during.headers["x-cache"]) == (404, "MISS")

    # Redis answers again, but the breaker is still open: reads go to the app, never to the
    # entry the DELETE made stale.
    assert first.state() is BreakerState.OPEN
    assert (await first.get()).status_code == 404
    clock.now += first.breaker.recovery_time  # the next read is the half-open probe
    after = await first.get()
    assert (after.status_code, after.headers["x-cache"]) == (404, "MISS")
    assert first.cache.pending_invalidations == 0  # that read wrote them before reading
    assert first.state() is BreakerState.CLOSED
    # Written to Redis, so another process sees the entry stale too.
    elsewhere = await other.get()
    assert (elsewhere.status_code, elsewhere.headers["x-cache"]) == (404, "MISS")


async def test_a_patch_during_the_pause_serves_the_new_name_in_every_worker(
    own_redis: tuple[subprocess.Popen[bytes], str], workers: WorkerFactory
) -> None:
    process, _ = own_redis
    first = workers()  # default breaker and background retries
    other = workers()
    assert (await cached(first))["name"] == "item 1"
    assert (await other.get()).headers["x-cache"] == "HIT"

    with paused(process):
        await trip(first)
        patched = await first.http.patch("/items/1", json={"name": "renamed"})
        assert (patched.status_code, patched.json()["name"]) == (200, "renamed")
        assert first.cache.pending_invalidations > 0

    # No read in the first worker: its background retry writes the record.
    assert await drained(first)
    for worker in (other, first):
        for _ in range(3):
            response = await worker.get()
            assert (response.status_code, response.json()["name"]) == (200, "renamed")
    assert (await first.get()).headers["x-cache"] == "HIT"  # cached again, with the new name


async def test_reads_while_invalidations_are_pending_never_hit(
    own_redis: tuple[subprocess.Popen[bytes], str], workers: WorkerFactory
) -> None:
    process, _ = own_redis
    first = workers()
    await cached(first)
    with paused(process):
        await trip(first)
        assert (await first.http.delete("/items/1")).status_code == 204
    names = []
    for _ in range(20):  # whatever the retries are doing meanwhile
        response = await first.get()
        names.append((response.status_code, response.headers["x-cache"]))
        await asyncio.sleep(POLL / 2)
    assert set(names) == {(404, "MISS")}
    assert await drained(first)


async def test_the_breaker_uses_redis_again_within_a_second_and_logs_once_each_way(
    own_redis: tuple[subprocess.Popen[bytes], str], workers: WorkerFactory
) -> None:
    process, _ = own_redis
    worker = workers()  # the default breaker, on the real clock
    await cached(worker, "2")
    with capture_logs() as events:
        with paused(process):
            await trip(worker)
            for _ in range(20):  # refused at once by the open breaker: no more log lines
                assert (await worker.get("3")).status_code == 200
        hits = 0
        for polls in range(1, RECOVERY_POLLS + 1):
            if (await worker.get("2")).headers["x-cache"] == "HIT":
                hits = polls
                break
            await asyncio.sleep(POLL)
    assert hits, f"no hit within {RECOVERY_POLLS} polls of {POLL}s after Redis came back"
    assert worker.state() is BreakerState.CLOSED
    breaker_lines = [e for e in events if e["event"].startswith("circuit breaker")]
    assert [(e["event"], e["breaker"], e["log_level"]) for e in breaker_lines] == [
        ("circuit breaker opened", "cache", "warning"),
        ("circuit breaker closed", "cache", "warning"),
    ]
    assert "timed out" in breaker_lines[0]["error"]


async def test_an_overflowing_record_flushes_every_entry_in_every_worker(
    own_redis: tuple[subprocess.Popen[bytes], str], workers: WorkerFactory
) -> None:
    process, _ = own_redis
    first = workers(max_pending=2)
    other = workers()
    for item in ("1", "8", "9"):  # 8 and 9: entries that no write touches
        await cached(first, item)
    with capture_logs() as events:
        with paused(process):
            await trip(first)
            for item in ("1", "2", "3"):  # three tags pending: one more than max_pending
                patched = await first.http.patch(f"/items/{item}", json={"name": "new"})
                assert patched.status_code == 200
            # The tags were replaced by a flush of everything.
            assert first.cache.pending_invalidations == len(FLUSH_KEYS)
        assert await drained(first)
    assert [e["event"] for e in events if e["event"].startswith("cache invalidations")] == [
        "cache invalidations pending",
        "cache invalidations overflowed",
        "cache invalidations written",
    ]
    for worker, item in ((other, "9"), (first, "8")):
        untouched = await worker.get(item)
        assert (untouched.status_code, untouched.headers["x-cache"]) == (200, "MISS")
    assert (await other.get("1")).json()["name"] == "new"


async def test_invalidations_still_pending_at_close_are_logged_as_lost(
    own_redis: tuple[subprocess.Popen[bytes], str], registry: CollectorRegistry
) -> None:
    process, url = own_redis
    cache = ResponseCache(
        RedisCacheStore.from_url(url, key_prefix="lost:", socket_timeout=0.5), registry=registry
    )
    with capture_logs() as events, paused(process):
        assert await cache.invalidate_tags(["item:1"]) is False
        assert cache.pending_invalidations == 1
        assert registry.get_sample_value("prodkit_cache_pending_invalidations") == 1
        await cache.aclose()  # one last attempt, cut off by the breaker's timeout
    lost = [e for e in events if e["event"] == "cache invalidations lost"]
    assert [(e["log_level"], e["count"], e["tags"]) for e in lost] == [("error", 1, ["t:item:1"])]


async def test_outcomes_count_pending_reads_as_errors(
    own_redis: tuple[subprocess.Popen[bytes], str], workers: WorkerFactory
) -> None:
    process, _ = own_redis
    first = workers(retry_interval=3600)
    await cached(first)
    with paused(process):
        await trip(first)
        assert (await first.http.delete("/items/1")).status_code == 204
        for _ in range(4):
            assert (await first.get()).status_code == 404
    counted = outcomes(first.registry, "/items/{id}")
    assert counted.get("hit", 0) == 1  # only the one before the outage
    assert counted["error"] == first.breaker.failure_threshold + 4
    # The write's two store writes (its fence before, its invalidation after) both failed.
    assert (
        first.registry.get_sample_value("prodkit_cache_invalidations_total", {"outcome": "error"})
        == 2
    )


async def fenced_in_redis(worker: Worker, tag: str) -> bool:
    """Whether the tag's version in Redis says a write to it is under way."""
    [version] = (await worker.cache.store.get("unused", tags=[tag_key(tag)])).versions
    return fenced([version], time.time())


async def test_a_fence_refused_during_the_outage_is_written_once_redis_answers(
    own_redis: tuple[subprocess.Popen[bytes], str], workers: WorkerFactory
) -> None:
    process, _ = own_redis
    first = workers()
    other = workers()  # another process: it sees only what reaches Redis
    await cached(first)
    write = first.cache.invalidating(["path:/items/1"])
    with paused(process):
        await trip(first)
        # The open breaker refuses the fence: the write goes ahead all the same.
        assert await write.__aenter__() is False
    # Redis answers again while the write is still under way: its fence is retried until it
    # is there, so other processes store nothing the write could make stale.
    for _ in range(30):
        if await fenced_in_redis(other, "path:/items/1"):
            break
        await asyncio.sleep(POLL)
    assert await fenced_in_redis(other, "path:/items/1")
    assert (await other.get()).headers["x-cache"] == "MISS"
    assert (await other.get()).headers["x-cache"] == "MISS"  # nothing stored while fenced
    await write.__aexit__(None, None, None)
    assert not await fenced_in_redis(other, "path:/items/1")
    assert (await other.get()).headers["x-cache"] == "MISS"
    assert (await other.get()).headers["x-cache"] == "HIT"
