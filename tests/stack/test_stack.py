"""Stack: editing its layer list, building it, the parts it shares and closes, which store."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import httpx
import pytest
import structlog
from asgi_lifespan import LifespanManager
from prometheus_client import CollectorRegistry

from prodkit import (
    ConfigurationError,
    ErrorMiddleware,
    HealthMiddleware,
    RateLimitMiddleware,
    RequestIdMiddleware,
    Stack,
    StackSettings,
    recommended_stack,
)
from prodkit.cache import MemoryCacheStore, NearCacheStore, RedisCacheStore
from prodkit.idempotency import (
    MemoryIdempotencyStore,
    PostgresIdempotencyStore,
    RedisIdempotencyStore,
)
from prodkit.ratelimit import MemoryRateLimitStore, RedisRateLimitStore
from prodkit.stack import Layer, idempotency_store_for
from tests.conftest import ClientFactory
from tests.stack.helpers import RECOMMENDED, Tag, items, recommended, some_client

# -- the list -----------------------------------------------------------------------------------


def test_layers_are_data_built_around_the_app_in_order() -> None:
    stack = recommended().build(items)
    assert isinstance(stack.lifespan.app, RequestIdMiddleware)
    assert isinstance(stack.health, HealthMiddleware)
    assert stack.get("rate_limit").options["policy"] == "6000/minute"
    assert stack.get("idempotency").options["store"] is stack.idempotency_store


async def test_insert_remove_and_replace_change_the_built_app(
    make_client: ClientFactory,
) -> None:
    stack = recommended(StackSettings(rate_limit="1/minute"))
    stack.insert_after("errors", Layer("inner_tag", Tag, {"value": "inner"}))
    stack.insert_before("request_id", Layer("outer_tag", Tag, {"value": "outer"}))
    assert stack.names[0] == "outer_tag"
    assert stack.names[stack.index("errors") + 1] == "inner_tag"
    removed = stack.remove("rate_limit")
    assert removed.middleware is RateLimitMiddleware
    old = stack.replace("inner_tag", Layer("inner_tag", Tag, {"value": "replaced"}))
    assert old.options == {"value": "inner"}
    client = make_client(stack.build(items), client=some_client())
    responses = [await client.get("/items/1", headers={"X-User-Id": "u"}) for _ in range(3)]
    # No rate limit any more: 1/minute would have answered the second request with a 429.
    assert [r.status_code for r in responses] == [200, 200, 200]
    # The outermost tag writes last, so its value is the one the client sees.
    assert responses[0].headers["x-layer"] == "outer"
    assert responses[0].headers["x-request-id"]
    stack_without_outer = recommended()
    stack_without_outer.insert_after("errors", Layer("tag", Tag, {"value": "inner"}))
    response = await make_client(stack_without_outer.build(items)).get("/items/2")
    assert response.headers["x-layer"] == "inner"


@pytest.mark.parametrize(
    ("change", "mentions"),
    [
        (lambda s: s.remove("nope"), "no layer 'nope'"),
        (lambda s: s.insert_after("nope", Layer("x", Tag)), "no layer 'nope'"),
        (lambda s: s.insert_before("errors", Layer("cors", Tag)), "already in this stack"),
        (lambda s: s.replace("errors", Layer("cors", Tag)), "already in this stack"),
    ],
)
def test_bad_edits_say_what_is_wrong(change: Any, mentions: str) -> None:
    stack = recommended()
    before = list(stack.layers)
    with pytest.raises(ConfigurationError, match=mentions):
        change(stack)
    assert stack.layers == before


def test_a_built_stack_is_not_edited_or_built_again() -> None:
    stack = recommended().build(items)
    with pytest.raises(ConfigurationError, match="built"):
        stack.remove("cache")
    with pytest.raises(ConfigurationError, match="already built"):
        stack.build(items)
    assert stack.names == [name for name, _ in RECOMMENDED]


async def test_an_unbuilt_stack_refuses_to_serve(make_client: ClientFactory) -> None:
    with pytest.raises(ConfigurationError, match="build"):
        await make_client(recommended()).get("/items/1")


async def test_checks_added_before_and_after_build_are_served(
    make_client: ClientFactory,
) -> None:
    key = "health-key-0123456789abcdef"
    stack = recommended(StackSettings(health_key=key))

    async def fine() -> None:
        return None

    async def down() -> None:
        raise RuntimeError("down")

    before = stack.add_check("before", fine, timeout=0.5)
    assert before in stack.get("health").options["checks"]  # data until the stack is built
    assert (before.timeout, before.cache_ttl) == (0.5, 1.0)  # the layer's cache_ttl
    stack.build(items)
    after = stack.add_check("after", down, critical=False, cache_ttl=0.25)
    assert (after.timeout, after.cache_ttl) == (2.0, 0.25)
    client = make_client(stack)
    report = (await client.get("/healthz", headers={"X-Health-Key": key})).json()
    assert set(report["checks"]) == {"before", "after"}
    assert (await client.get("/readyz")).status_code == 200  # "after" is not critical


# -- the parts ----------------------------------------------------------------------------------


async def test_one_redis_client_is_shared_by_every_redis_store(
    redis_url: str, redis_prefix: str, make_client: ClientFactory
) -> None:
    settings = StackSettings(
        redis_url=redis_url, idempotency_store="redis", redis_key_prefix=redis_prefix
    )
    stack = recommended(settings)
    assert isinstance(stack.rate_limit_store, RedisRateLimitStore)
    assert isinstance(stack.idempotency_store, RedisIdempotencyStore)
    assert stack.cache is not None
    near = stack.cache.store
    assert isinstance(near, NearCacheStore)  # on by default, over the shared Redis store
    assert stack.redis is not None
    assert stack.rate_limit_store.client is stack.redis
    assert stack.idempotency_store.client is stack.redis
    assert near.store.client is stack.redis
    redis_check = next(c for c in stack.get("health").options["checks"] if c.name == "redis")
    assert not redis_check.critical  # the cache and the rate limiter fail open
    client = make_client(stack.build(items), client=some_client())
    user = {"X-User-Id": f"stack-{uuid.uuid4().hex[:8]}"}
    headers = {**user, "Idempotency-Key": uuid.uuid4().hex}
    first = await client.post("/items", headers=headers, json={})
    again = await client.post("/items", headers=headers, json={})
    assert (first.status_code, first.headers["idempotency-status"]) == (201, "created")
    assert (again.status_code, again.headers["idempotency-status"]) == (201, "replayed")
    assert "ratelimit" in first.headers
    assert (await client.get("/items/1", headers=user)).headers["x-cache"] == "MISS"
    # Every key the stores wrote starts with redis_key_prefix (and the fixture deletes them).
    assert stack.rate_limit_store.key_prefix == f"{redis_prefix}ratelimit:"
    assert near.store.key_prefix == f"{redis_prefix}cache:"
    written = [key async for key in stack.redis.scan_iter(match=f"{redis_prefix}*")]
    assert any(key.startswith(f"{redis_prefix}idem:".encode()) for key in written)
    assert any(key.startswith(f"{redis_prefix}cache:".encode()) for key in written)
    await stack.aclose()


async def test_near_cache_off_leaves_the_redis_store_alone(redis_url: str) -> None:
    stack = recommended(StackSettings(redis_url=redis_url, near_cache=False))
    assert stack.cache is not None
    assert isinstance(stack.cache.store, RedisCacheStore)
    await stack.aclose()


async def test_the_near_cache_opens_at_start_up_and_serves_hits_from_memory(
    redis_url: str, redis_prefix: str, registry: CollectorRegistry
) -> None:
    settings = StackSettings(redis_url=redis_url, redis_key_prefix=redis_prefix)
    stack = recommended(settings, registry=registry)
    stack.build(items)
    assert stack.cache is not None
    near = stack.cache.store
    assert isinstance(near, NearCacheStore)

    def hits() -> float:
        found = registry.get_sample_value("prodkit_cache_near_reads_total", {"outcome": "hit"})
        return found or 0.0

    async with LifespanManager(stack) as manager:
        assert near.tracking  # opened by the start-up hook
        transport = httpx.ASGITransport(app=manager.app, client=some_client())
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            user = {"X-User-Id": f"near-{uuid.uuid4().hex[:8]}"}
            for _ in range(50):  # a miss, a hit read from Redis, then hits from memory
                assert (await http.get("/items/1", headers=user)).status_code == 200
                if hits():
                    break
    assert hits() >= 1
    assert (near.tracking, len(near)) == (False, 0)  # closed with the stack
    await stack.aclose()


def test_without_redis_every_store_is_in_memory() -> None:
    stack = recommended(StackSettings())
    assert stack.redis is None
    assert isinstance(stack.rate_limit_store, MemoryRateLimitStore)
    assert isinstance(stack.idempotency_store, MemoryIdempotencyStore)
    assert stack.cache is not None
    assert isinstance(stack.cache.store, MemoryCacheStore)


def test_recommended_stack_takes_exactly_the_options_of_stack_recommended() -> None:
    import inspect

    app, *options = inspect.signature(recommended_stack).parameters.values()
    assert (app.name, app.kind) == ("app", inspect.Parameter.POSITIONAL_ONLY)
    assert options == list(inspect.signature(Stack.recommended).parameters.values())


async def redis_connections(redis_url: str, name: str) -> int:
    import redis.asyncio as redis_asyncio

    probe = redis_asyncio.Redis.from_url(redis_url)
    try:
        return sum(1 for entry in await probe.client_list() if entry.get("name") == name)
    finally:
        await probe.aclose()


async def test_lifespan_shutdown_closes_everything_once(redis_url: str, redis_prefix: str) -> None:
    name = f"prodkit-stack-test-{uuid.uuid4().hex[:8]}"
    settings = StackSettings(
        redis_url=f"{redis_url}?client_name={name}",
        idempotency_store="redis",
        redis_key_prefix=redis_prefix,
    )
    stack = recommended(settings)
    closed: list[str] = []

    async def close_spy() -> None:
        closed.append("spy")

    stack.on_close(close_spy)
    stack.build(items)
    async with LifespanManager(stack) as manager:
        transport = httpx.ASGITransport(app=manager.app, client=some_client())
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            assert (await http.get("/items/1", headers={"X-User-Id": "u"})).status_code == 200
        assert await redis_connections(redis_url, name) >= 1
        assert closed == []
    assert closed == ["spy"]
    assert await redis_connections(redis_url, name) == 0  # the one shared client is closed
    await stack.aclose()
    assert closed == ["spy"]


async def test_aclose_runs_every_closer_and_raises_the_first_failure() -> None:
    stack = Stack([Layer("errors", ErrorMiddleware)])
    ran: list[str] = []

    async def first() -> None:
        ran.append("first")

    async def broken() -> None:
        ran.append("broken")
        raise OSError("gone")

    stack.on_close(first)
    stack.on_close(broken)
    with pytest.raises(OSError, match="gone"):
        await stack.aclose()
    assert ran == ["broken", "first"]  # last added first, and the failure stops nothing
    await stack.aclose()
    assert ran == ["broken", "first"]


async def test_aclose_runs_the_close_hooks_once() -> None:
    stack = recommended(StackSettings()).build(items)
    ran: list[str] = []

    async def spy() -> None:
        ran.append("spy")

    stack.on_close(spy)
    await stack.aclose()
    await stack.aclose()
    assert ran == ["spy"]


def test_building_a_stack_leaves_logging_alone() -> None:
    before = (structlog.get_config(), list(logging.getLogger().handlers), logging.getLogger().level)
    recommended_stack(items, StackSettings(log_level="DEBUG", log_format="console"))
    after = (structlog.get_config(), list(logging.getLogger().handlers), logging.getLogger().level)
    assert after == before


# -- which idempotency store ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, MemoryIdempotencyStore),
        ({"DATABASE_URL": "postgresql://u@127.0.0.1/db"}, PostgresIdempotencyStore),
        (
            {"DATABASE_URL": "postgresql://u@127.0.0.1/db", "IDEMPOTENCY_STORE": "memory"},
            MemoryIdempotencyStore,
        ),
        (
            {"IDEMPOTENCY_STORE": "redis", "REDIS_URL": "redis://127.0.0.1:6379/0"},
            RedisIdempotencyStore,
        ),
    ],
)
async def test_idempotency_store_for(environ: dict[str, str], expected: type[Any]) -> None:
    store = idempotency_store_for(StackSettings.from_env(environ))
    assert isinstance(store, expected)
    if isinstance(store, RedisIdempotencyStore):
        await store.aclose()


def test_settings_built_in_code_choose_postgres_like_the_environment() -> None:
    dsn = "postgresql://u@127.0.0.1/db"
    store = idempotency_store_for(StackSettings(database_url=dsn))
    assert isinstance(store, PostgresIdempotencyStore)
    assert isinstance(recommended(StackSettings(database_url=dsn)).idempotency_store, type(store))


@pytest.mark.parametrize(
    "environ",
    [{"IDEMPOTENCY_STORE": "postgres"}, {"IDEMPOTENCY_STORE": "redis"}, {"IDEMPOTENCY_STORE": "x"}],
)
def test_idempotency_store_for_rejects_incomplete_settings(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="IDEMPOTENCY_STORE"):
        idempotency_store_for(StackSettings.from_env(environ))
