"""Reserved units on real Redis: a worker takes a few units ahead and hands them out with no
round trip, and still no more than the quota is ever allowed across workers.

Each ``RedisRateLimitStore`` here stands for one worker process; they share one Redis. That a
decision made no round trip is seen in Redis itself: the key's stored arrival time does not
move (the time is injected, so only a script run can change it).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from prodkit.asgi import Receive, Scope, Send
from prodkit.ratelimit import RateLimitMiddleware, RateLimitPolicy, RedisRateLimitStore
from tests.ratelimit.test_stores import EPOCH, FakeClock
from tests.servers import HOST, free_port, redis_server

pytestmark = pytest.mark.redis

THOUSAND_PER_MINUTE = RateLimitPolicy(1000, 60, "k")  # a unit every 60 ms; 10 reserved ahead


@pytest.fixture
async def workers(
    redis_url: str, redis_prefix: str
) -> AsyncIterator[Callable[..., RedisRateLimitStore]]:
    """Make stores ("workers") on the test Redis; every one is closed after the test."""
    made: list[RedisRateLimitStore] = []

    def worker(**options: object) -> RedisRateLimitStore:
        store = RedisRateLimitStore.from_url(redis_url, key_prefix=redis_prefix, **options)  # type: ignore[arg-type]
        made.append(store)
        return store

    yield worker
    for store in made:
        await store.aclose()


async def stored(store: RedisRateLimitStore, key: str, policy: RateLimitPolicy) -> str | None:
    """The key's arrival time as Redis holds it."""
    value = await store.client.get(store.redis_key(key, policy))
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


async def test_by_default_one_round_trip_reserves_one_percent_of_the_quota(
    workers: Callable[..., RedisRateLimitStore],
) -> None:
    clock = FakeClock()
    store = workers(clock=clock)
    policy = THOUSAND_PER_MINUTE
    first = await store.consume("c", policy)
    assert (first.allowed, first.remaining) == (True, 999)  # as if nothing were reserved
    arrival = await stored(store, "c", policy)
    assert arrival is not None
    # Redis counted the request and the 10 units this worker took ahead.
    assert float(arrival) == pytest.approx((EPOCH + 11 * policy.interval) * 1000, abs=0.01)
    for expected in range(998, 988, -1):
        decision = await store.consume("c", policy)
        assert (decision.allowed, decision.remaining) == (True, expected)
        assert await stored(store, "c", policy) == arrival  # no script ran
    await store.consume("c", policy)  # the reservation is spent: Redis again, 10 more
    moved = await stored(store, "c", policy)
    assert moved is not None
    assert float(moved) == pytest.approx((EPOCH + 22 * policy.interval) * 1000, abs=0.01)


async def test_another_worker_sees_the_reserved_units_as_taken(
    workers: Callable[..., RedisRateLimitStore],
) -> None:
    clock = FakeClock()
    first, second = workers(clock=clock), workers(clock=clock)
    await first.consume("c", THOUSAND_PER_MINUTE)
    seen = await second.consume("c", THOUSAND_PER_MINUTE)
    assert seen.remaining == 1000 - 1 - 10 - 1  # its own request too (its reserve is not shown)


async def test_a_burst_in_flight_reserves_once_not_once_per_request(
    workers: Callable[..., RedisRateLimitStore],
) -> None:
    """Fifty requests of one client at once: one round trip reserves, the others wait for its
    units; Redis holds the fifty and at most 1 % of the quota more, never fifty reserves."""
    clock = FakeClock()
    store = workers(clock=clock)
    policy = THOUSAND_PER_MINUTE
    results = await asyncio.gather(*(store.consume("c", policy) for _ in range(50)))
    assert all(result.allowed for result in results)
    arrival = await stored(store, "c", policy)
    assert arrival is not None
    taken = (float(arrival) / 1000 - EPOCH) / policy.interval
    assert 50 <= round(taken) <= 50 + 10
    assert sorted(result.remaining for result in results)[-1] == 999


async def test_small_quotas_reserve_nothing_by_default(
    workers: Callable[..., RedisRateLimitStore],
) -> None:
    clock = FakeClock()
    policy = RateLimitPolicy(99, 60, "small")  # 1 % of 99 is 0 units
    store = workers(clock=clock)
    before = None
    for _ in range(3):
        await store.consume("c", policy)
        now = await stored(store, "c", policy)
        assert now != before  # every decision is a script run
        before = now
        clock.advance(0.001)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    quota=st.integers(10, 300),
    share=st.sampled_from([0.01, 0.05, 0.2, 0.5]),
    plan=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 3)), min_size=1, max_size=120),
)
async def test_workers_never_allow_more_than_the_quota_and_lose_nothing(
    workers: Callable[..., RedisRateLimitStore],
    quota: int,
    share: float,
    plan: list[tuple[int, int]],
) -> None:
    """Any interleaving of three workers: never more than the quota; once they close, every
    unit they reserved and did not use is back, so a fresh exact worker gets the rest."""
    clock = FakeClock()
    policy = RateLimitPolicy(quota, 86_400, f"q{quota}")
    key = uuid.uuid4().hex  # a fresh key per example: earlier examples' keys do not matter
    trio = [workers(clock=clock, reserve=share) for _ in range(3)]
    allowed = 0
    for which, cost in plan:
        decision = await trio[which].consume(key, policy, cost)
        if decision.allowed:
            allowed += cost
        assert allowed <= quota
    for worker in trio:
        await worker.aclose()
    exact = workers(clock=clock, reserve=0)
    rest = 0
    while (await exact.consume(key, policy)).allowed:
        rest += 1
    assert rest == quota - allowed


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    share=st.sampled_from([0.05, 0.1, 0.2]),
    plan=st.lists(
        st.one_of(
            st.tuples(st.just("consume"), st.integers(0, 2), st.integers(1, 3)),
            st.tuples(st.just("burst"), st.integers(0, 2), st.just(1)),
            st.tuples(st.just("wait"), st.integers(0, 1200), st.booleans()),
        ),
        min_size=1,
        max_size=40,
    ),
)
# Units reserved before a quiet spell, handed out in the burst after it.
@example(share=0.05, plan=[("consume", 0, 1), ("wait", 300, False), ("burst", 0, 1)])
# Units given back after the debt drained past them, over another worker's burst.
@example(
    share=0.05, plan=[("consume", 0, 1), ("wait", 1000, False), ("burst", 1, 1), ("consume", 0, 1)]
)
async def test_every_unit_reserving_workers_allow_an_exact_limiter_allows_too(
    workers: Callable[..., RedisRateLimitStore],
    share: float,
    plan: list[tuple[str, int, int | bool]],
) -> None:
    """Three reserving workers, bursts and time passing, units given back on the way: every
    unit they allow, an exact limiter given the same units at the same times allows too (no
    reserved unit, handed out late or given back, ever makes room that was not there)."""
    clock = FakeClock()
    policy = RateLimitPolicy(100, 6, "mixed")  # a unit every 60 ms; 5 to 20 reserved ahead
    key = uuid.uuid4().hex
    trio = [workers(clock=clock, reserve=share) for _ in range(3)]
    exact = workers(clock=clock, reserve=0)
    for step in plan:
        kind, which, cost = step
        if kind == "wait":
            clock.advance(which / 1000)
            if cost:  # the give-back task's round, run now rather than in real time
                for worker in trio:
                    assert worker._reserved is not None
                    for each in worker._reserved.expired():
                        await worker._return(*each)
            continue
        assert isinstance(cost, int)
        for _ in range(2 * policy.quota if kind == "burst" else 1):  # a burst: until refused
            if not (await trio[which].consume(key, policy, cost)).allowed:
                break
            assert (await exact.consume(f"{key}:exact", policy, cost)).allowed, step


async def test_unused_units_go_back_to_redis_after_reserve_for(
    workers: Callable[..., RedisRateLimitStore],
) -> None:
    policy = RateLimitPolicy(20, 86_400, "daily")  # no refill during the test
    holder = workers(reserve=0.1, reserve_for=0.2)  # real time: takes 2 units ahead
    other = workers(reserve=0)
    assert (await holder.consume("c", policy)).allowed
    served = 0
    while (await other.consume("c", policy)).allowed:
        served += 1
    assert served == 17  # 20 - 1 - the 2 the holder keeps
    await asyncio.sleep(0.6)  # the holder gives its 2 back (it checks every reserve_for / 2)
    assert (await other.consume("c", policy)).allowed
    assert (await other.consume("c", policy)).allowed
    assert not (await other.consume("c", policy)).allowed


async def test_closing_a_worker_gives_its_units_back(
    workers: Callable[..., RedisRateLimitStore],
) -> None:
    clock = FakeClock()
    holder, other = workers(clock=clock), workers(clock=clock, reserve=0)
    await holder.consume("c", THOUSAND_PER_MINUTE)
    await holder.aclose()
    assert (await other.consume("c", THOUSAND_PER_MINUTE)).remaining == 998


async def test_a_refusal_is_repeated_without_redis_for_reserve_for(
    workers: Callable[..., RedisRateLimitStore],
) -> None:
    clock = FakeClock()
    policy = RateLimitPolicy(5, 60, "five")
    store = workers(clock=clock, reserve_for=5)
    results = [await store.consume("c", policy) for _ in range(6)]
    assert [r.allowed for r in results] == [True] * 5 + [False]
    assert results[-1].retry_after == pytest.approx(12)
    await store.client.delete(store.redis_key("c", policy))  # a reset from elsewhere
    clock.advance(1)
    again = await store.consume("c", policy)  # still refused: Redis was not asked
    assert not again.allowed
    assert again.retry_after == pytest.approx(11)
    clock.advance(4)  # reserve_for is over: Redis decides, and the key is gone
    assert (await store.consume("c", policy)).allowed


async def test_a_full_table_decides_new_keys_in_redis_one_by_one(
    workers: Callable[..., RedisRateLimitStore],
) -> None:
    clock = FakeClock()
    store = workers(clock=clock, max_reserved_keys=2)
    policy = THOUSAND_PER_MINUTE
    for key in ("a", "b", "c"):
        await store.consume(key, policy)
    held = [await stored(store, key, policy) for key in ("a", "b", "c")]
    assert [float(value or 0) for value in held] == pytest.approx(
        [(EPOCH + n * policy.interval) * 1000 for n in (11, 11, 1)], abs=0.01
    )


async def test_reserved_units_still_answer_while_redis_is_down() -> None:
    """Through the middleware (fail closed), with its Redis killed: the units already reserved
    allow requests without the network; the next request needs Redis and gets a 503."""
    port = free_port()
    with redis_server(port) as server:
        store = RedisRateLimitStore.from_url(f"redis://{HOST}:{port}/0")
        app = RateLimitMiddleware(
            ok,
            policy="6000/minute",
            store=store,
            on_store_error="fail_closed",
            registry=CollectorRegistry(),
        )
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                first = await client.get("/")
                assert first.headers["ratelimit"] == '"default";r=5999;t=1'
                server.kill()
                server.wait(timeout=10)
                statuses = [(await client.get("/")).status_code for _ in range(61)]
        finally:
            await store.aclose()
    # 60 reserved units (1 % of 6000) answer without Redis; the next request needs it.
    assert statuses == [200] * 60 + [503]


async def ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("give_back", ["close", "reserve_for"])
async def test_units_drained_meanwhile_are_not_given_back_over_another_workers(
    workers: Callable[..., RedisRateLimitStore], give_back: str
) -> None:
    """A reservation given back after the key's debt drained changes nothing an exact worker
    would have decided: the units another worker took meanwhile stay taken."""
    clock = FakeClock()

    async def remaining_after(holder: RedisRateLimitStore, key: str) -> int:
        other = workers(clock=clock, reserve=0)
        assert (await holder.consume(key, THOUSAND_PER_MINUTE)).allowed  # +10 ahead, or none
        clock.advance(0.65)  # 11 units of debt (660 ms) drain to 10 ms
        for _ in range(10):
            assert (await other.consume(key, THOUSAND_PER_MINUTE)).allowed
        if give_back == "close":
            await holder.aclose()
        else:
            clock.advance(0.35)  # reserve_for is over: the holder's give-back task sends them
            await asyncio.sleep(1.2)  # it looks every reserve_for / 2 (real time)
        return (await other.consume(key, THOUSAND_PER_MINUTE)).remaining

    reserving = await remaining_after(workers(clock=clock), "reserving")
    exact = await remaining_after(workers(clock=clock, reserve=0), "exact")
    assert reserving == exact


@pytest.mark.parametrize("idle", [0.3, 0.9])
async def test_units_reserved_a_while_ago_never_make_a_burst_larger_than_the_quota(
    workers: Callable[..., RedisRateLimitStore], idle: float
) -> None:
    """A client quiet since its worker reserved, then bursting: the burst is what an exact
    limiter allows (the quota, less what is still owed), not the quota plus the reserved
    units whose place in the debt drained while the client was quiet."""
    clock = FakeClock()

    async def burst(worker: RedisRateLimitStore, key: str) -> int:
        assert (await worker.consume(key, THOUSAND_PER_MINUTE)).allowed  # +10 ahead, or none
        clock.advance(idle)  # 11 units of debt (660 ms) drain to 360 ms, or to nothing
        allowed = 0
        while (await worker.consume(key, THOUSAND_PER_MINUTE)).allowed:
            allowed += 1
        return allowed

    assert await burst(workers(clock=clock), "reserving") == 1000
    assert await burst(workers(clock=clock, reserve=0), "exact") == 1000
