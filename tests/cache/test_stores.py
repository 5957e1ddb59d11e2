"""The CacheStore contract, run against every backend, and the memory store's bounds.

The Redis store runs it on one server, on a Redis Cluster (an entry and its tags span slots)
and behind Sentinel, each built from its URL by ``RedisCacheStore.from_url``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prodkit import ConfigurationError, MissingDependencyError
from prodkit.cache import CacheStore, FenceChange, Lookup, MemoryCacheStore, RedisCacheStore
from prodkit.cache._store import fence_of, fenced_version
from tests.cache.helpers import Backend, FakeClock, open_store
from tests.conftest import REDIS_TOPOLOGIES, redis_topology_url


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("near", marks=pytest.mark.redis),
        *REDIS_TOPOLOGIES,
    ]
)
def backend(request: pytest.FixtureRequest) -> Backend:
    """The contract's backends: memory, the test Redis, a near cache over it, a Redis Cluster
    and a Sentinel group."""
    if request.param == "memory":
        return Backend("memory")
    if request.param in ("redis", "near"):
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        return Backend(request.param, url, prefix)
    url = redis_topology_url(request, request.param)
    return Backend("redis", url, f"prodkit-test:{uuid.uuid4().hex}:")


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[CacheStore]:
    made = await open_store(backend)
    yield made
    await made.aclose()


def key() -> str:
    return "e:" + uuid.uuid4().hex


async def test_is_a_cache_store(store: CacheStore) -> None:
    assert isinstance(store, CacheStore)


async def test_set_then_get(store: CacheStore) -> None:
    k = key()
    assert await store.get(k) == Lookup(None, ())
    await store.set(k, b"\x00value\xff", 60)
    assert await store.get(k) == Lookup(b"\x00value\xff", ())
    await store.set(k, b"replaced", 60)
    assert (await store.get(k)).value == b"replaced"


async def test_values_expire(store: CacheStore) -> None:
    k = key()
    await store.set(k, b"v", 0.05)
    await asyncio.sleep(0.15)  # expiry is time passing; nothing to await instead
    assert (await store.get(k)).value is None


async def test_get_returns_tag_versions_and_bump_changes_them(store: CacheStore) -> None:
    k, t1, t2 = key(), "t:" + uuid.uuid4().hex, "t:" + uuid.uuid4().hex
    await store.set(k, b"v", 60)
    assert await store.get(k, tags=[t1, t2]) == Lookup(b"v", ("", ""))
    await store.bump([t1], 60)
    first = await store.get(k, tags=[t1, t2])
    assert first.value == b"v"
    assert first.versions[0] != ""
    assert first.versions[1] == ""
    seen = {first.versions[0]}
    for _ in range(20):
        await store.bump([t1, t2], 60)
        versions = (await store.get(k, tags=[t1, t2])).versions
        assert versions[0] not in seen  # never repeats
        seen.add(versions[0])


# -- write fences: the same arithmetic in every store (the Redis one runs it in Lua) ---------

NOW = 1_700_000_000.0


async def fence(store: CacheStore, tag: str, change: FenceChange) -> tuple[int, int]:
    """Bump ``tag`` with ``change``; its fence as a read at ``change.now`` then finds it."""
    await store.bump([tag], 60, change)
    [version] = (await store.get(key(), tags=[tag])).versions
    assert version != ""
    return fence_of(version, change.now)


async def test_a_fence_counts_the_writes_under_way(store: CacheStore) -> None:
    tag = "t:" + uuid.uuid4().hex
    until = int((NOW + 10) * 1000)
    begin = FenceChange(now=NOW, until=NOW + 10, writers=1, at_least=1)
    assert await fence(store, tag, begin) == (until, 1)
    # A second writer (another process) joins; its later end extends the fence.
    later = FenceChange(now=NOW + 1, until=NOW + 11, writers=1, at_least=1)
    assert await fence(store, tag, later) == (until + 1000, 2)
    # An invalidation that is no write keeps the fence; one writer ends, the other still holds it.
    assert await fence(store, tag, FenceChange(now=NOW + 2)) == (until + 1000, 2)
    assert await fence(store, tag, FenceChange(now=NOW + 2, writers=-1)) == (until + 1000, 1)
    # The last one ends: a plain version again.
    assert await fence(store, tag, FenceChange(now=NOW + 3, writers=-1)) == (0, 0)


async def test_a_fence_whose_writers_died_ends_at_its_until(store: CacheStore) -> None:
    tag = "t:" + uuid.uuid4().hex
    await fence(store, tag, FenceChange(now=NOW, until=NOW + 10, writers=1, at_least=1))
    [version] = (await store.get(key(), tags=[tag])).versions
    assert fence_of(version, NOW + 9.9)[1] == 1
    assert fence_of(version, NOW + 10) == (0, 0)  # read after its end: no fence
    # A new writer after the end starts from nothing, not from the dead writer's count.
    assert await fence(
        store, tag, FenceChange(now=NOW + 20, until=NOW + 30, writers=1, at_least=1)
    ) == (int((NOW + 30) * 1000), 1)
    # A live writer renewing a fence that ran out takes it again.
    assert await fence(store, tag, FenceChange(now=NOW + 40, until=NOW + 50, at_least=1)) == (
        int((NOW + 50) * 1000),
        1,
    )


@given(
    current=st.none()
    | st.text(max_size=40)
    | st.builds(
        lambda until, writes: f"~{until}.{writes}.x", st.integers(0, 10**13), st.integers(0, 9)
    ),
    writers=st.integers(-1, 1),
    at_least=st.integers(0, 1),
    until=st.floats(0, 2e9),
)
def test_a_fenced_version_is_fenced_exactly_when_a_write_holds_it(
    current: str | None, writers: int, at_least: int, until: float
) -> None:
    change = FenceChange(now=NOW, until=until, writers=writers, at_least=at_least)
    version = fenced_version(current, change, "unique")
    assert version.endswith("unique")
    ends, writes = fence_of(version, NOW)
    before_until, before_writes = fence_of(current or "", NOW)
    expected = max(before_writes + writers, at_least)
    if expected > 0 and max(before_until, int(until * 1000)) > NOW * 1000:
        assert (ends, writes) == (max(before_until, int(until * 1000)), expected)
    else:
        assert (ends, writes) == (0, 0)
        assert version == "unique"


async def test_claim_is_exclusive_and_release_needs_the_token(store: CacheStore) -> None:
    lock = "l:" + uuid.uuid4().hex
    assert await store.claim(lock, "a", 10)
    assert not await store.claim(lock, "b", 10)
    assert not await store.release(lock, "b")
    assert not await store.claim(lock, "b", 10)
    assert await store.release(lock, "a")
    assert not await store.release(lock, "a")
    assert await store.claim(lock, "b", 10)


async def test_complete_stores_and_releases_only_its_own_lease(store: CacheStore) -> None:
    lock, a, b = "l:" + uuid.uuid4().hex, key(), key()
    assert await store.claim(lock, "mine", 10)
    await store.complete([(a, b"1"), (b, b"2")], 60, lock, "mine")
    assert (await store.get(a)).value == b"1"
    assert (await store.get(b)).value == b"2"
    assert await store.claim(lock, "theirs", 10)  # released
    await store.complete([(a, b"3")], 60, lock, "mine")  # no longer ours: stays held
    assert (await store.get(a)).value == b"3"
    assert not await store.claim(lock, "third", 10)


async def test_a_lease_runs_out(store: CacheStore) -> None:
    lock = "l:" + uuid.uuid4().hex
    assert await store.claim(lock, "a", 0.05)
    await asyncio.sleep(0.15)
    assert await store.claim(lock, "b", 10)
    assert not await store.release(lock, "a")  # the old holder cannot drop the new lease


# -- memory store bounds -----------------------------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("set"),
            st.integers(0, 40),
            st.binary(max_size=300),
            st.floats(min_value=0.01, max_value=100),
        ),
        st.tuples(st.just("get"), st.integers(0, 40), st.just(b""), st.just(0.0)),
        st.tuples(st.just("tick"), st.just(0), st.just(b""), st.floats(0, 50)),
        st.tuples(st.just("bump"), st.integers(0, 40), st.just(b""), st.just(0.0)),
    ),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(
    ops=operations,
    max_entries=st.integers(1, 10),
    max_bytes=st.integers(1, 2000),
    max_tags=st.integers(1, 5),
)
def test_memory_store_never_exceeds_its_bounds(
    ops: list[tuple[str, int, bytes, float]], max_entries: int, max_bytes: int, max_tags: int
) -> None:
    clock = FakeClock()
    store = MemoryCacheStore(
        max_entries=max_entries, max_bytes=max_bytes, max_tags=max_tags, clock=clock
    )
    model: dict[str, bytes] = {}

    async def run() -> None:
        for op, index, value, number in ops:
            k = f"e:{index}"
            if op == "set":
                await store.set(k, value, number)
                model[k] = value
            elif op == "get":
                found = (await store.get(k)).value
                # a value may be evicted or expired, but never be another value
                assert found is None or found == model.get(k)
            elif op == "tick":
                clock.now += number
            else:
                await store.bump([f"t:{index}"], 10)
            assert len(store) <= max_entries
            assert store.size_bytes <= max_bytes
            assert len(store._tags) <= max_tags

    asyncio.run(run())


async def test_memory_store_evicts_least_recently_used() -> None:
    store = MemoryCacheStore(max_entries=2)
    await store.set("a", b"1", 60)
    await store.set("b", b"2", 60)
    await store.get("a")
    await store.set("c", b"3", 60)
    assert (await store.get("a")).value == b"1"
    assert (await store.get("b")).value is None


async def test_memory_store_skips_values_larger_than_its_byte_budget() -> None:
    store = MemoryCacheStore(max_bytes=1000)
    await store.set("big", b"x" * 2000, 60)
    assert (await store.get("big")).value is None
    assert store.size_bytes == 0


async def test_forgetting_a_tag_version_forgets_the_entries_too() -> None:
    store = MemoryCacheStore(max_tags=1)
    await store.set("e", b"v", 60)
    await store.bump(["t:a"], 60)
    stamped = (await store.get("e", tags=["t:a"])).versions
    await store.bump(["t:b"], 60)  # pushes t:a out
    assert await store.get("e", tags=["t:a"]) == Lookup(None, ("",))
    assert stamped != ("",)


@pytest.mark.parametrize("bound", ["max_entries", "max_bytes", "max_tags"])
def test_memory_store_rejects_bad_bounds(bound: str) -> None:
    with pytest.raises(ConfigurationError, match=bound):
        MemoryCacheStore(**{bound: 0})  # type: ignore[arg-type]


def test_redis_store_takes_a_client_and_points_a_url_to_from_url() -> None:
    with pytest.raises(ConfigurationError, match=r"RedisCacheStore\.from_url\(url\)"):
        RedisCacheStore("redis://127.0.0.1:6379/0")


def test_redis_store_needs_a_client_that_replies_with_bytes() -> None:
    import redis.asyncio as redis_asyncio

    with pytest.raises(ConfigurationError, match="decode_responses=False"):
        RedisCacheStore(redis_asyncio.Redis(decode_responses=True))


def test_redis_store_names_the_extra_when_redis_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(MissingDependencyError, match=r"prodkit-asgi\[redis\]"):
        RedisCacheStore.from_url("redis://127.0.0.1:1/0")


def test_importing_the_cache_imports_no_driver() -> None:
    code = "import sys, prodkit.cache; print(any(m.split('.')[0] == 'redis' for m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
