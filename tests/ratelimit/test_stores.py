"""The store contract, run against every backend: memory and real Redis (one server, a Redis
Cluster, a Sentinel group).

Time is injected (a fake clock) so that the GCRA arithmetic, and above all Retry-After, can be
checked at exact points of a window without sleeping.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prodkit.ratelimit import MemoryRateLimitStore, RateLimitPolicy, RateLimitStore
from prodkit.ratelimit._policy import ceil_seconds
from prodkit.ratelimit._store import decision, gcra
from tests.conftest import REDIS_TOPOLOGIES, redis_topology_url

EPOCH = 1_800_000_000.0


class FakeClock:
    """Seconds since the epoch, moved by hand."""

    def __init__(self) -> None:
        self.now = EPOCH

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(
    params=["memory", pytest.param("redis", marks=pytest.mark.redis), *REDIS_TOPOLOGIES]
)
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """``("memory", "")`` or (a Redis URL, key prefix): the test Redis, a Redis Cluster or a
    Sentinel group; resolved outside the event loop."""
    if request.param == "memory":
        return "memory", ""
    if request.param == "redis":
        return request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    return redis_topology_url(request, request.param), f"prodkit-test:{uuid.uuid4().hex}:"


@pytest.fixture
async def store(backend: tuple[str, str], clock: FakeClock) -> AsyncIterator[RateLimitStore]:
    url, prefix = backend
    if url == "memory":
        made: RateLimitStore = MemoryRateLimitStore(clock=clock)
    else:
        from prodkit.ratelimit._redis import RedisRateLimitStore

        made = RedisRateLimitStore.from_url(url, key_prefix=prefix, clock=clock)
    yield made
    await made.aclose()


TEN_PER_MINUTE = RateLimitPolicy(10, 60)  # one unit every 6 s


async def test_fresh_key_gets_the_whole_quota_then_is_limited(store: RateLimitStore) -> None:
    remaining = []
    for _ in range(10):
        result = await store.consume("client", TEN_PER_MINUTE)
        assert result.allowed
        remaining.append(result.remaining)
    assert remaining == list(range(9, -1, -1))
    refused = await store.consume("client", TEN_PER_MINUTE)
    assert not refused.allowed
    assert refused.remaining == 0


@pytest.mark.parametrize(
    ("elapsed", "retry_after"),
    [(0.0, 6.0), (1.0, 5.0), (2.5, 3.5), (4.2, 1.8), (5.9, 0.1)],
)
async def test_retry_after_is_exact_at_points_of_the_window(
    store: RateLimitStore, clock: FakeClock, elapsed: float, retry_after: float
) -> None:
    for _ in range(10):
        assert (await store.consume("c", TEN_PER_MINUTE)).allowed
    clock.advance(elapsed)
    refused = await store.consume("c", TEN_PER_MINUTE)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(retry_after, abs=0.01)
    assert refused.reset == pytest.approx(retry_after, abs=1)  # t: whole seconds, rounded up
    assert refused.reset >= retry_after - 0.01
    clock.advance(refused.retry_after - 0.05)
    assert not (await store.consume("c", TEN_PER_MINUTE)).allowed
    clock.advance(0.06)
    assert (await store.consume("c", TEN_PER_MINUTE)).allowed


async def test_quota_refills_smoothly_not_at_a_window_edge(
    store: RateLimitStore, clock: FakeClock
) -> None:
    for _ in range(10):
        await store.consume("c", TEN_PER_MINUTE)
    clock.advance(30)  # half a window: half the quota is back
    allowed = [(await store.consume("c", TEN_PER_MINUTE)).allowed for _ in range(7)]
    assert allowed == [True] * 5 + [False] * 2


async def test_reset_after_is_when_the_whole_quota_is_back(
    store: RateLimitStore, clock: FakeClock
) -> None:
    first = await store.consume("c", TEN_PER_MINUTE)
    assert first.remaining == 9
    assert first.reset_after == pytest.approx(6, abs=0.01)
    assert first.reset == 6
    await store.consume("c", TEN_PER_MINUTE)
    clock.advance(3)
    third = await store.consume("c", TEN_PER_MINUTE)
    assert third.reset_after == pytest.approx(15, abs=0.01)


async def test_keys_and_policies_are_independent(store: RateLimitStore) -> None:
    one = RateLimitPolicy(1, 60, "one")
    assert (await store.consume("a", one)).allowed
    assert not (await store.consume("a", one)).allowed
    assert (await store.consume("b", one)).allowed
    assert (await store.consume("a", RateLimitPolicy(1, 60, "other"))).allowed
    await store.reset("a", one)
    assert (await store.consume("a", one)).allowed


async def test_cost_takes_several_units(store: RateLimitStore) -> None:
    assert (await store.consume("c", TEN_PER_MINUTE, cost=8)).remaining == 2
    refused = await store.consume("c", TEN_PER_MINUTE, cost=3)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(6, abs=0.01)


async def test_concurrent_consumers_never_exceed_the_quota(store: RateLimitStore) -> None:
    policy = RateLimitPolicy(50, 3600, "burst")
    results = await asyncio.gather(*(store.consume("hot", policy) for _ in range(200)))
    assert sum(r.allowed for r in results) == 50


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(st.floats(0, 20, allow_nan=False), st.integers(1, 3)), min_size=1, max_size=40
    ),
    quota=st.integers(1, 20),
)
async def test_never_more_than_quota_plus_refill(
    store: RateLimitStore, clock: FakeClock, steps: list[tuple[float, int]], quota: int
) -> None:
    policy = RateLimitPolicy(quota, 60, f"p{quota}")
    key = f"k{clock.now}"
    start = clock.now
    granted = 0
    for wait, cost in steps:
        clock.advance(wait)
        result = await store.consume(key, policy, cost)
        assert result.remaining >= 0
        assert result.retry_after >= 0
        assert result.reset >= 0
        if result.allowed:
            granted += cost
        else:
            assert result.retry_after > 0
            assert result.remaining < cost
    assert granted <= quota + (clock.now - start) / policy.interval + 1e-6
    clock.advance(10_000)


async def test_memory_store_evicts_the_least_recently_used_key(clock: FakeClock) -> None:
    store = MemoryRateLimitStore(max_keys=2, clock=clock)
    one = RateLimitPolicy(1, 60, "one")
    for key in ("a", "b"):
        assert (await store.consume(key, one)).allowed
    assert not (await store.consume("a", one)).allowed  # "a" is now the most recent
    assert (await store.consume("c", one)).allowed  # evicts "b"
    assert len(store) == 2
    assert not (await store.consume("a", one)).allowed
    assert (await store.consume("b", one)).allowed  # forgotten, so a fresh quota


async def test_memory_store_quota_is_whole_again_after_the_refill(clock: FakeClock) -> None:
    store = MemoryRateLimitStore(clock=clock)
    await store.consume("a", TEN_PER_MINUTE)
    clock.advance(6)
    await store.consume("b", TEN_PER_MINUTE)
    assert (await store.consume("a", TEN_PER_MINUTE)).remaining == 9


def test_redis_keys_are_cluster_hash_tagged_and_bounded() -> None:
    import redis.asyncio

    from prodkit.ratelimit._redis import RedisRateLimitStore

    store = RedisRateLimitStore(redis.asyncio.Redis(), key_prefix="app:rl:")
    policy = RateLimitPolicy(5, 60, "login")
    assert store.redis_key("2001:db8::/64", policy) == "app:rl:login:{2001:db8::/64}"
    hostile = store.redis_key("a}{b", policy)
    long = store.redis_key("x" * 500, policy)
    for key in (hostile, long):
        assert key.startswith("app:rl:login:{")
        assert len(key) < 100
        assert key.count("{") == 1


def test_importing_the_package_does_not_import_the_driver() -> None:
    import subprocess
    import sys

    code = "import sys, prodkit.ratelimit; print('redis' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


@pytest.mark.redis
async def test_redis_store_takes_time_from_the_server_by_default(
    backend_redis: tuple[str, str],
) -> None:
    from prodkit.ratelimit._redis import RedisRateLimitStore

    url, prefix = backend_redis
    store = RedisRateLimitStore.from_url(url, key_prefix=prefix)  # no clock: Redis TIME
    try:
        policy = RateLimitPolicy(2, 3600, "hourly")
        first = await store.consume("c", policy)
        assert (first.allowed, first.remaining, first.reset) == (True, 1, 1800)
        await store.consume("c", policy)
        refused = await store.consume("c", policy)
        assert not refused.allowed
        assert 1790 < refused.retry_after <= 1800  # a unit comes back every 30 minutes
    finally:
        await store.aclose()


@pytest.fixture
def backend_redis(redis_url: str, redis_prefix: str) -> tuple[str, str]:
    return redis_url, redis_prefix


@pytest.mark.parametrize(
    ("quota", "window"), [(7, 60), (3, 2), (6, 7), (1000, 1), (14, 86_400), (1000, 86_400)]
)
async def test_awkward_rates_still_grant_the_whole_quota_at_one_instant(
    store: RateLimitStore, quota: int, window: int
) -> None:
    # Rounding of the stored arrival time once cost the last unit (7/minute allowed 6). The
    # clock is fake but the key's TTL is real; it outlives the arrival time by a second, so the
    # round trips of a loaded machine do not expire it between two calls.
    policy = RateLimitPolicy(quota, window)
    granted = [(await store.consume("burst", policy)).allowed for _ in range(quota + 1)]
    assert granted == [True] * quota + [False]


def reference_decision(
    allowed: bool, debt: float, policy: RateLimitPolicy, cost: int
) -> tuple[bool, int, float, float, int]:
    """``decision`` as first written (max, math.floor, ceil_seconds), to hold the fast one to."""
    debt = max(debt, 0.0)
    interval = policy.window / policy.quota
    spare = policy.window - debt
    remaining = max(0, math.floor(spare / interval + 1e-6))
    if not allowed:
        retry_after = max(0.0, cost * interval - spare)
    elif remaining > 0:
        retry_after = 0.0
    else:
        retry_after = max(0.0, interval - spare)
    reset = ceil_seconds(debt if remaining > 0 else retry_after)
    return allowed, remaining, debt, retry_after, reset


@given(
    quota=st.integers(1, 10**6),
    window=st.integers(1, 86400),
    share=st.floats(-0.5, 1.5, allow_nan=False),
    allowed=st.booleans(),
    cost=st.integers(1, 5),
)
def test_decision_matches_the_reference_arithmetic(
    quota: int, window: int, share: float, allowed: bool, cost: int
) -> None:
    policy = RateLimitPolicy(quota, window)
    debt = share * window  # negative, inside and past the window: all reach ``decision``
    made = decision(allowed, debt, policy, cost)
    found = (made.allowed, made.remaining, made.reset_after, made.retry_after, made.reset)
    assert found == reference_decision(allowed, debt, policy, cost)


@given(
    quota=st.integers(1, 1000),
    window=st.integers(1, 3600),
    steps=st.lists(st.tuples(st.floats(0, 100, allow_nan=False), st.integers(1, 3)), max_size=30),
)
def test_every_debt_a_store_reaches_decides_as_the_reference(
    quota: int, window: int, steps: list[tuple[float, int]]
) -> None:
    # Debts on the GCRA's own grid (multiples of the interval, near the window's edge), where
    # the epsilons matter, rather than arbitrary floats.
    policy = RateLimitPolicy(quota, window)
    debt = 0.0
    for wait, cost in steps:
        debt = max(debt - wait * policy.interval, 0.0)
        allowed, debt = gcra(debt, policy, cost)
        made = decision(allowed, debt, policy, cost)
        found = (made.allowed, made.remaining, made.reset_after, made.retry_after, made.reset)
        assert found == reference_decision(allowed, debt, policy, cost)
