"""The near cache: reads served from memory, dropped when any worker writes, flushed on outages.

Each "worker" is a ``CacheMiddleware`` with its own ``ResponseCache`` over its own
``NearCacheStore`` (own tracking connection, own table), over shared app data and one Redis, as
every worker process of a service has. Tests that count Redis commands, kill, restart or flush
Redis use a private redis-server on a loopback port, stopped by its own PID; the others share
the test Redis under their own key prefix. Time is never asserted (one count is bounded by the
time it took): waits are bounded polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from prodkit import ConfigurationError
from prodkit._core.drivers import redis_client
from prodkit.asgi import Receive, Scope, Send, read_body
from prodkit.cache import (
    CacheMiddleware,
    CacheRule,
    Lookup,
    MemoryCacheStore,
    NearCacheStore,
    RedisCacheStore,
    ResponseCache,
)
from prodkit.testing import capture_logs
from tests.cache.helpers import paused
from tests.conftest import unavailable
from tests.servers import HOST, free_port, redis_server
from tests.servers.proxy import TcpProxy
from tests.servers.redis_topologies import (
    Topology,
    cli,
    collect_dropped_connections,
    redis_binaries_missing,
    redis_cluster,
    redis_sentinel,
)

pytestmark = pytest.mark.redis

ROUTES = {"/items/{id}": CacheRule(ttl=60, tags=("item:{id}",))}
POLL = 0.05  # seconds between two polls
POLLS = 100  # "soon": 100 polls (5 s on an idle machine)


@dataclass
class Items:
    """The origin: ``GET /items/{id}`` answers ``{"id", "name"}``; ``PATCH`` (``{"name"}``)
    renames. Data shared by every "worker"."""

    names: dict[str, str] = field(default_factory=lambda: {str(i): f"item {i}" for i in range(9)})
    reads: int = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        item = scope["path"].rsplit("/", 1)[-1]
        if scope["method"] == "PATCH":
            self.names[item] = json.loads((await read_body(receive))[0])["name"]
        else:
            self.reads += 1
        body = json.dumps({"id": item, "name": self.names[item]}).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@dataclass
class Worker:
    """One "process": its near store, ``ResponseCache``, metrics and a client."""

    store: NearCacheStore
    cache: ResponseCache
    http: httpx.AsyncClient
    registry: CollectorRegistry

    def near(self, outcome: str) -> float:
        """``cache_near_reads_total{outcome}`` of this worker."""
        value = self.registry.get_sample_value(
            "prodkit_cache_near_reads_total", {"outcome": outcome}
        )
        return value or 0.0

    def flushes(self, reason: str) -> float:
        value = self.registry.get_sample_value(
            "prodkit_cache_near_flushes_total", {"reason": reason}
        )
        return value or 0.0

    async def get(self, item: str = "1") -> httpx.Response:
        return await self.http.get(f"/items/{item}")

    async def rename(self, item: str, name: str) -> None:
        response = await self.http.patch(f"/items/{item}", json={"name": name})
        assert response.status_code == 200

    async def near_hit(self, item: str = "1") -> httpx.Response:
        """Read ``item`` until a read is answered from memory (bounded); that answer.

        The reads are a quarter of ``max_lag`` apart: a read that finds the tracking connection
        lagging sends a ``PING``, and the next one is served from memory if that reply is less
        than ``max_lag`` old by then. (Reads ``POLL`` apart always found it lagging again, and
        were served from memory only when the reply came back during the same read: often
        not through the proxy below, whose thread waits for the GIL.)
        """
        pause = min(POLL, self.store.max_lag / 4)
        deadline = time.monotonic() + POLLS * POLL
        while time.monotonic() < deadline:
            before = self.near("hit")
            response = await self.get(item)
            if response.headers["x-cache"] == "HIT" and self.near("hit") > before:
                return response
            await asyncio.sleep(pause)
        raise AssertionError(f"no read of item {item} was answered from memory")


WorkerFactory = Callable[..., Awaitable[Worker]]


@pytest.fixture
def own_redis() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A private redis-server: ``(process, port)``."""
    port = free_port()
    with redis_server(port) as process:
        yield process, port


@pytest.fixture
async def workers(redis_url: str, redis_prefix: str) -> AsyncIterator[WorkerFactory]:
    """Build workers over one ``Items`` app; the shared test Redis unless ``url=`` is given."""
    app = Items()
    made: list[Worker] = []

    async def factory(*, url: str = redis_url, connect: bool = True, **near: Any) -> Worker:
        registry = CollectorRegistry()
        store = NearCacheStore(
            RedisCacheStore.from_url(url, key_prefix=redis_prefix), registry=registry, **near
        )
        cache = ResponseCache(store, registry=registry)
        middleware = CacheMiddleware(app, cache=cache, routes=ROUTES, registry=registry)
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=middleware), base_url="http://t")
        made.append(Worker(store, cache, http, registry))
        if connect:
            assert await store.connect()
        return made[-1]

    yield factory
    for worker in made:
        await worker.http.aclose()
        await worker.cache.aclose()


def url_of(port: int) -> str:
    return f"redis://{HOST}:{port}/0"


def commands(port: int) -> dict[str, int]:
    """Calls per command the Redis on ``port`` has run (``INFO commandstats``)."""
    found = {}
    for line in cli(port, "info", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, stats = line.removeprefix("cmdstat_").partition(":")
            found[name] = int(stats.split(",")[0].removeprefix("calls="))
    return found


# -- reads ---------------------------------------------------------------------------------


async def test_a_read_made_before_is_answered_from_memory_without_a_round_trip(
    own_redis: tuple[subprocess.Popen[bytes], int], workers: WorkerFactory
) -> None:
    _, port = own_redis
    # A loaded machine can stall a worker for more than the default max_lag (then a read
    # goes to Redis, as it should); a long one keeps this test about round trips alone.
    worker = await workers(url=url_of(port), max_lag=5.0)
    first = await worker.get()
    assert first.headers["x-cache"] == "MISS"
    await worker.near_hit()
    before = commands(port)
    for _ in range(200):
        hit = await worker.get()
        assert (hit.headers["x-cache"], hit.json()) == ("HIT", first.json())
    after = commands(port)
    # No command reading or writing a key went to Redis.
    reads = ("get", "mget", "pttl", "eval", "evalsha", "set")
    assert {name: after.get(name) for name in reads} == {name: before.get(name) for name in reads}
    assert worker.near("hit") >= 200
    assert len(worker.store) == 1


@pytest.mark.parametrize("items", [["1"], ["1", "2", "3", "4", "5"]], ids=["one", "five"])
async def test_reads_in_flight_together_are_answered_from_memory_without_a_round_trip(
    own_redis: tuple[subprocess.Popen[bytes], int], workers: WorkerFactory, items: list[str]
) -> None:
    # The throughput benchmark's shape: 50 reads in flight at once, of one entry (one caller)
    # or of several; each must be a hit from memory, none a read joining another's flight.
    _, port = own_redis
    worker = await workers(url=url_of(port), max_lag=5.0)  # as above: about round trips alone
    for item in items:
        await worker.get(item)
        await worker.near_hit(item)
    hits = worker.near("hit")
    before = commands(port)
    for _ in range(20):
        answers = await asyncio.gather(*(worker.get(items[i % len(items)]) for i in range(50)))
        assert {answer.headers["x-cache"] for answer in answers} == {"HIT"}
    after = commands(port)
    reads = ("get", "mget", "pttl", "eval", "evalsha", "set")
    assert {name: after.get(name) for name in reads} == {name: before.get(name) for name in reads}
    assert worker.near("hit") - hits == 1000


async def test_pings_are_paced_by_time_not_by_reads(
    own_redis: tuple[subprocess.Popen[bytes], int], workers: WorkerFactory
) -> None:
    _, port = own_redis
    worker = await workers(url=url_of(port))  # max_lag 0.01 s: a PING at most every 5 ms
    await worker.get()
    await worker.near_hit()
    before = commands(port).get("ping", 0)
    started = time.monotonic()
    for _ in range(20):
        await asyncio.gather(*(worker.get() for _ in range(50)))
    elapsed = time.monotonic() - started
    pings = commands(port).get("ping", 0) - before
    # A PING goes out once the last command sent is max_lag / 2 old, however many hits ask:
    # a thousand reads in a tenth of a second make at most 21 PINGs, not one each.
    assert pings <= elapsed / (worker.store.max_lag / 2) + 1


async def test_hits_carry_what_a_redis_hit_carries(workers: WorkerFactory) -> None:
    worker = await workers()
    miss = await worker.get()
    hit = await worker.near_hit()
    assert hit.headers["etag"] == miss.headers["etag"]
    assert hit.headers["age"].isdigit()
    assert hit.content == miss.content


async def test_until_the_tracking_connection_is_open_reads_go_to_redis(
    workers: WorkerFactory,
) -> None:
    worker = await workers(connect=False)
    assert not worker.store.tracking
    assert (await worker.get()).headers["x-cache"] == "MISS"
    assert (await worker.get()).headers["x-cache"] == "HIT"  # from Redis: nothing held yet
    assert worker.near("bypass") >= 1
    await worker.near_hit()  # the first read opened the connection in the background
    assert worker.store.tracking


async def test_an_entry_is_held_no_longer_than_redis_keeps_it(
    workers: WorkerFactory, redis_url: str, redis_prefix: str
) -> None:
    store = (await workers(max_lag=5.0)).store
    plain = RedisCacheStore.from_url(redis_url, key_prefix=redis_prefix)
    await store.set("e:{short}", b"value", 0.3)
    assert (await store.get("e:{short}")).value == b"value"  # read on the tracking connection
    assert store.peek("e:{short}") == Lookup(b"value", ())  # held
    try:
        for _ in range(POLLS):
            in_redis = (await plain.get("e:{short}")).value
            near = store.peek("e:{short}")
            if in_redis is None:
                assert near is None  # gone from Redis: gone from memory already
                break
            await asyncio.sleep(POLL / 5)
        assert in_redis is None
    finally:
        await plain.aclose()


# -- invalidation --------------------------------------------------------------------------


async def test_a_write_through_one_worker_is_never_followed_by_the_old_entry_on_another(
    workers: WorkerFactory,
) -> None:
    reader, writer = await workers(), await workers()
    for round_ in range(20):
        assert (await reader.near_hit()).json()["name"] != f"name {round_}"
        await writer.rename("1", f"name {round_}")
        # The PATCH has answered: no read that starts now may serve the name from before it.
        after = await reader.get()
        assert after.json()["name"] == f"name {round_}"
        assert after.headers["x-cache"] == "MISS"


async def test_once_another_worker_has_fenced_a_write_no_read_is_served_from_memory(
    workers: WorkerFactory,
) -> None:
    reader, writer = await workers(), await workers()
    for round_ in range(30):
        await reader.near_hit()
        async with writer.cache.invalidating(["item:1"]):
            # The write could commit here: from now on no read may get the entry from before.
            during = await reader.get()
            assert during.headers["x-cache"] == "MISS", round_


async def test_invalidate_tags_in_one_worker_is_seen_by_the_next_read_of_another(
    workers: WorkerFactory,
) -> None:
    reader, writer = await workers(), await workers()
    for round_ in range(20):
        await reader.near_hit()
        assert await writer.cache.invalidate_tags(["item:1"])
        assert (await reader.get()).headers["x-cache"] == "MISS", round_


async def test_a_write_in_the_readers_own_process_drops_its_entry_at_once(
    workers: WorkerFactory,
) -> None:
    worker = await workers()
    await worker.near_hit()
    await worker.rename("1", "renamed here")
    after = await worker.get()
    assert (after.headers["x-cache"], after.json()["name"]) == ("MISS", "renamed here")


async def test_a_flush_of_redis_empties_every_near_cache(
    own_redis: tuple[subprocess.Popen[bytes], int], workers: WorkerFactory
) -> None:
    _, port = own_redis
    worker = await workers(url=url_of(port))
    await worker.near_hit()
    cli(port, "flushall")
    for _ in range(POLLS):
        if not len(worker.store):
            break
        await asyncio.sleep(POLL)
    assert len(worker.store) == 0
    assert worker.flushes("server") == 1
    assert (await worker.get()).headers["x-cache"] == "MISS"


# -- the window: an invalidation that cannot arrive -----------------------------------------


@pytest.fixture
def proxied(redis_url: str) -> Iterator[TcpProxy]:
    """A cuttable proxy in front of the test Redis (the reader's only way to it)."""
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    with TcpProxy((host, int(port))) as proxy:
        yield proxy


async def test_a_reader_that_hears_nothing_stops_serving_from_memory_after_max_lag(
    proxied: TcpProxy, redis_url: str, workers: WorkerFactory
) -> None:
    reader = await workers(url=proxied.dsn(redis_url))
    writer = await workers()
    await reader.near_hit()
    proxied.cut()  # a partition: the reader's connections stay open and silent
    await writer.rename("1", "renamed behind the partition")
    await asyncio.sleep(0.05)  # well past max_lag (0.01 s)
    after = await reader.get()
    # Not from memory: through Redis, which cannot answer, so the app does (fail open).
    assert (after.headers["x-cache"], after.json()["name"]) == (
        "MISS",
        "renamed behind the partition",
    )


async def test_within_max_lag_a_reader_that_hears_nothing_may_serve_the_old_entry(
    proxied: TcpProxy, redis_url: str, workers: WorkerFactory
) -> None:
    # The window the docs state, made wide: with max_lag=60 s, an invalidation that cannot
    # reach the reader is not waited for, and the entry from before the write is served.
    reader = await workers(url=proxied.dsn(redis_url), max_lag=60.0)
    writer = await workers()
    before = await reader.near_hit()
    proxied.cut()
    await writer.rename("1", "renamed behind the partition")
    stale = await reader.get()
    assert (stale.headers["x-cache"], stale.json()) == ("HIT", before.json())
    proxied.restore()
    for _ in range(POLLS):  # the invalidation arrives once the partition heals
        if (await reader.get()).json()["name"] == "renamed behind the partition":
            break
        await asyncio.sleep(POLL)
    assert (await reader.get()).json()["name"] == "renamed behind the partition"


# -- outages: lose Redis, flush, read through, come back -------------------------------------


async def test_losing_redis_flushes_the_near_cache_and_its_return_brings_it_back(
    own_redis: tuple[subprocess.Popen[bytes], int], workers: WorkerFactory
) -> None:
    process, port = own_redis
    worker = await workers(url=url_of(port))
    app_reads = await worker.near_hit()
    assert app_reads.headers["x-cache"] == "HIT"
    with capture_logs() as events:
        process.kill()
        process.wait(timeout=10)
        after = await worker.get()
    # Today's behaviour without Redis: the app answers (fail open); nothing from memory.
    assert after.headers["x-cache"] == "MISS"
    assert len(worker.store) == 0
    assert not worker.store.tracking
    assert worker.flushes("disconnected") == 1
    lost = [e for e in events if e["event"] == "near cache off"]
    assert len(lost) == 1
    assert lost[0]["flushed"] == 1
    with redis_server(port):  # the same port: the server is back, empty
        await worker.near_hit()
        assert worker.store.tracking


async def test_a_paused_redis_stops_hits_from_memory_then_drops_the_connection(
    own_redis: tuple[subprocess.Popen[bytes], int], workers: WorkerFactory
) -> None:
    process, port = own_redis
    worker = await workers(url=url_of(port), timeout=0.2)
    await worker.near_hit()
    with paused(process):
        await asyncio.sleep(0.05)  # past max_lag: the connection cannot prove it is current
        hits = worker.near("hit")
        during = await worker.get()
        # Not from memory; Redis does not answer either, so the app does (fail open).
        assert (during.headers["x-cache"], worker.near("hit")) == ("MISS", hits)
        # The tracking read waited longer than timeout: the connection counts as lost.
        assert not worker.store.tracking
        assert len(worker.store) == 0
    await worker.near_hit()  # resumed: connected again, hits from memory again


# -- bounds --------------------------------------------------------------------------------


async def test_the_table_stays_within_its_entry_and_byte_bounds(workers: WorkerFactory) -> None:
    worker = await workers(max_entries=5, max_bytes=2000, max_tags=3)
    store = worker.store
    for index in range(20):
        await store.set(f"e:{{{index}}}", bytes(100 + 10 * index), 60)
        await store.get(f"e:{{{index}}}", tags=[f"t:{index}"])
        assert len(store) <= 5
        assert store.size_bytes <= 2000
    assert len(store) >= 1
    await store.set("e:{big}", bytes(4000), 60)
    await store.get("e:{big}")
    assert store.peek("e:{big}") is None  # larger than max_bytes on its own: never held


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_entries", 0), ("max_bytes", 0), ("max_tags", 0), ("max_lag", 0), ("timeout", -1)],
)
def test_bad_bounds_are_refused(option: str, value: float, redis_url: str) -> None:
    options: dict[str, Any] = {option: value}
    with pytest.raises(ConfigurationError, match=option):
        NearCacheStore(RedisCacheStore.from_url(redis_url), **options)


def test_only_a_redis_store_can_be_wrapped() -> None:
    with pytest.raises(ConfigurationError, match="RedisCacheStore"):
        NearCacheStore(MemoryCacheStore())  # type: ignore[arg-type]


async def test_a_tls_client_turns_the_near_cache_off_and_reads_pass_through() -> None:
    with capture_logs() as events:
        store = NearCacheStore(
            RedisCacheStore.from_url("rediss://127.0.0.1:1/0"), registry=CollectorRegistry()
        )
    assert [e["reason"] for e in events if e["event"] == "near cache unavailable"] == [
        "TLS (rediss://) tracking connections are not supported"
    ]
    assert not await store.connect()
    await store.aclose()


# -- the contract, as a model: every read equals Redis's own ----------------------------------

Op = tuple[str, int, int]
ops = st.lists(
    st.tuples(
        st.sampled_from(["read", "write", "bump", "bump-and-read"]),
        st.integers(0, 3),  # which entry
        st.integers(0, 2),  # which tag, or which store
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops)
def test_every_read_of_a_near_cache_equals_a_read_of_redis(ops: list[Op], redis_url: str) -> None:
    """Three near caches (three workers, the last one with tiny bounds) and the plain store
    over one Redis: after each write by any of them, a read through any near cache returns
    what Redis holds then, and no near cache holds more than its bounds."""

    async def run() -> None:
        prefix = f"prodkit-test:near-model:{uuid.uuid4().hex[:8]}:"
        plain = RedisCacheStore.from_url(redis_url, key_prefix=prefix)
        bounds: list[dict[str, Any]] = [{}, {}, {"max_entries": 2, "max_bytes": 150, "max_tags": 2}]
        near = [
            NearCacheStore(
                RedisCacheStore.from_url(redis_url, key_prefix=prefix),
                registry=CollectorRegistry(),
                **bound,
            )
            for bound in bounds
        ]
        try:
            for store in near:
                assert await store.connect()
            for op, entry, which in ops:
                key, tags = f"e:{{{entry}}}", [f"t:{entry % 2}", f"t:{which}"]
                store = near[which]
                if op == "write":
                    await store.set(key, f"{entry}-{uuid.uuid4().hex[:4]}".encode(), 60)
                elif op == "bump":
                    await store.bump([f"t:{which}"], 60)
                elif op == "bump-and-read":  # a read in flight across a write, one process
                    await asyncio.gather(store.bump(tags[:1], 60), store.get(key, tags=tags))
                # What a client sees after the write answered: every worker agrees with Redis.
                expected = await plain.get(key, tags=tags)
                for reader in near:
                    assert await reader.get(key, tags=tags) == expected
                    assert await reader.get(key, tags=tags) == expected  # from memory, if held
                small = near[2]
                assert len(small) <= 2
                assert small.size_bytes <= 150
        finally:
            for store in near:
                await store.aclose()
            client = plain.client
            keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
            if keys:
                await client.delete(*keys)
            await plain.aclose()

    asyncio.run(run())


# -- Redis Cluster and Sentinel --------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    missing = redis_binaries_missing()
    if missing:
        unavailable(missing)
    with redis_cluster(tmp_path_factory.mktemp("near-cluster")) as topology:
        yield topology


def near_over(url: str, prefix: str, **options: Any) -> NearCacheStore:
    """A near cache over a client that :func:`redis_client` builds for ``url``."""
    shared = RedisCacheStore(redis_client(url), key_prefix=prefix)
    return NearCacheStore(shared, registry=CollectorRegistry(), **options)


async def close_all(*stores: NearCacheStore) -> None:
    for store in stores:
        await store.aclose()
        client = store.store.client
        await client.aclose()  # the client was given to the store: not its own
        # A Sentinel-managed client asked the Sentinels where the primary is, through
        # clients of their own that closing it leaves open.
        manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
        for sentinel in [] if manager is None else manager.sentinels:
            await sentinel.aclose()


async def until_held(store: NearCacheStore, key: str, value: bytes) -> bool:
    """Write ``key`` through ``store`` and read it until it is held in memory (bounded)."""
    for _ in range(POLLS * 4):
        with contextlib.suppress(Exception):  # the topology is changing under the client
            await store.set(key, value, 60)
            if (await store.get(key)).value == value and store.peek(key) is not None:
                return True
        await asyncio.sleep(POLL)
    return False


async def until_flushed(store: NearCacheStore) -> bool:
    """Whether ``store`` empties itself within a bounded number of polls (a lost connection
    is noticed by the event loop, or by the next look at memory)."""
    for _ in range(POLLS):
        store.peek("e:{a}")
        if len(store) == 0:
            return True
        await asyncio.sleep(POLL)
    return False


async def test_on_a_cluster_every_primary_is_tracked_and_every_worker_sees_every_write(
    cluster: Topology,
) -> None:
    prefix = f"prodkit-test:{uuid.uuid4().hex[:8]}:"
    # A long max_lag: this test is about routing and invalidation, not about lag.
    reader = near_over(cluster.url, prefix, max_lag=5.0)
    writer = near_over(cluster.url, prefix, max_lag=5.0)
    try:
        assert await reader.connect()
        primaries = [node.port for node in reader.store.client.get_primaries()]
        tracking = [
            cli(port, "client", "list").count("name=prodkit-near-cache") for port in primaries
        ]
        assert tracking == [1, 1, 1]  # one tracking connection per primary
        # Entries and tags on every node (their keys hash to slots all over the cluster).
        keys = [(f"e:{{{index}}}", [f"t:{index}", f"t:{index + 1}"]) for index in range(24)]
        for key, _ in keys:
            await writer.set(key, key.encode(), 60)
        for key, tags in keys:
            assert (await reader.get(key, tags=tags)).value == key.encode()
        held = [reader.peek(key, tags) for key, tags in keys]
        assert [None if found is None else found.value for found in held] == [
            key.encode() for key, _ in keys
        ]
        await writer.bump([f"t:{index}" for index in range(0, 25, 2)], 60)
        for (key, tags), before in zip(keys, held, strict=True):
            assert before is not None
            now = await reader.get(key, tags=tags)
            # Every tag the writer bumped has a new version here too; the others do not.
            changed = [a != b for a, b in zip(before.versions, now.versions, strict=True)]
            assert changed == [int(tag[2:]) % 2 == 0 for tag in tags]
    finally:
        await close_all(reader, writer)


async def test_a_cluster_failover_flushes_the_near_cache_and_it_comes_back(
    tmp_path: Any,
) -> None:
    missing = redis_binaries_missing()
    if missing:
        unavailable(missing)
    prefix = f"prodkit-test:{uuid.uuid4().hex[:8]}:"
    with redis_cluster(tmp_path) as topology:
        near = near_over(topology.url, prefix, max_lag=5.0)
        try:
            assert await near.connect()
            assert await until_held(near, "e:{a}", b"before")
            # The port only: the node object keeps its connections, which must be collected.
            primary = near.store.client.get_node_from_key(prefix + "e:{a}").port
            topology.kill(primary)  # the primary holding the entry dies
            assert await until_flushed(near)  # nothing is served from memory meanwhile
            # A replica takes over; reads go through the client, then through a new tracking
            # connection to the new primary, and are served from memory again.
            assert await until_held(near, "e:{a}", b"after")
            assert near.store.client.get_node_from_key(prefix + "e:{a}").port != primary
        finally:
            await close_all(near)
            collect_dropped_connections()


async def test_a_sentinel_failover_flushes_the_near_cache_and_it_follows_the_new_primary(
    tmp_path: Any,
) -> None:
    missing = redis_binaries_missing()
    if missing:
        unavailable(missing)
    prefix = f"prodkit-test:{uuid.uuid4().hex[:8]}:"
    with redis_sentinel(tmp_path) as group:
        near = near_over(group.url, prefix, max_lag=5.0)
        try:
            assert await near.connect()
            assert await until_held(near, "e:{a}", b"before")
            group.kill(group.primary)
            assert await until_flushed(near)
            assert await until_held(near, "e:{a}", b"after")
            assert group.current_primary() == group.replica
        finally:
            await close_all(near)
            collect_dropped_connections()
