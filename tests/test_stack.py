"""The recommended stack as data: its layer list, editing it, the parts it shares and closes."""

from __future__ import annotations

import logging
import random
import uuid
from typing import Any

import httpx
import pytest
import structlog
from asgi_lifespan import LifespanManager
from prometheus_client import CollectorRegistry

from prodkit import (
    AccessLogMiddleware,
    CacheMiddleware,
    ConcurrencyLimitMiddleware,
    ConfigurationError,
    CORSMiddleware,
    ErrorMiddleware,
    GracefulShutdownMiddleware,
    HealthMiddleware,
    HTTPMetricsMiddleware,
    IdempotencyMiddleware,
    MetricsEndpointMiddleware,
    RateLimitMiddleware,
    RequestIdMiddleware,
    RequestTimeoutMiddleware,
    SecurityHeadersMiddleware,
    Stack,
    StackSettings,
    caller_from_header,
    recommended_stack,
)
from prodkit.asgi import ASGIApp, Message, Receive, Scope, Send, set_header
from prodkit.cache import CacheRule, MemoryCacheStore, NearCacheStore, RedisCacheStore
from prodkit.idempotency import (
    MemoryIdempotencyStore,
    PostgresIdempotencyStore,
    RedisIdempotencyStore,
)
from prodkit.ratelimit import MemoryRateLimitStore, RedisRateLimitStore
from prodkit.stack import Layer, idempotency_store_for
from prodkit.testing import capture_log_output
from tests.conftest import ClientFactory

CACHE_ROUTES = {"/items/{item_id}": CacheRule(ttl=60, per_caller=True)}
FULL = StackSettings(cors_origins=("https://app.example.com",))

#: Every layer of the recommended stack, outermost first, and its middleware.
RECOMMENDED = [
    ("request_id", RequestIdMiddleware),
    ("access_log", AccessLogMiddleware),
    ("metrics", HTTPMetricsMiddleware),
    ("metrics_endpoint", MetricsEndpointMiddleware),
    ("security_headers", SecurityHeadersMiddleware),
    ("cors", CORSMiddleware),
    ("errors", ErrorMiddleware),
    ("health", HealthMiddleware),
    ("shutdown", GracefulShutdownMiddleware),
    ("request_timeout", RequestTimeoutMiddleware),
    ("concurrency_limit", ConcurrencyLimitMiddleware),
    ("rate_limit", RateLimitMiddleware),
    ("idempotency", IdempotencyMiddleware),
    ("cache", CacheMiddleware),
]

#: DESIGN.md, "Recommended order": request id → access log → metrics → CORS → errors →
#: shutdown/health → concurrency limit → rate limit → idempotency → cache → app.
DESIGN_ORDER = [
    "request_id",
    "access_log",
    "metrics",
    "cors",
    "errors",
    "health",
    "shutdown",
    "concurrency_limit",
    "rate_limit",
    "idempotency",
    "cache",
]


async def items(scope: Scope, receive: Receive, send: Send) -> None:
    """The app under the stack: ``GET /items/{id}`` and ``POST /items`` answer ``{}``."""
    if scope["type"] != "http":
        return
    status = 201 if scope["method"] == "POST" else 200
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": b"{}"})


class Tag:
    """A layer of the test's own: sets ``X-Layer: <value>`` on the response start."""

    def __init__(self, app: ASGIApp, *, value: str) -> None:
        self.app = app
        self.value = value.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def tagging(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                set_header(headers, b"x-layer", self.value)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, tagging)


def recommended(settings: StackSettings = FULL, **options: Any) -> Stack:
    options.setdefault("registry", CollectorRegistry())
    options.setdefault("cache_routes", CACHE_ROUTES)
    return Stack.recommended(settings, caller=caller_from_header("X-User-Id"), **options)


def some_client() -> tuple[str, int]:
    """A client address of the test's own: rate-limit counters in Redis are keyed by it."""
    return (f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}", 4000)


# -- the list -----------------------------------------------------------------------------------


def test_the_recommended_layers_are_the_design_order() -> None:
    stack = recommended()
    assert [(layer.name, layer.middleware) for layer in stack.layers] == RECOMMENDED
    assert [name for name in stack.names if name in DESIGN_ORDER] == DESIGN_ORDER


def test_cors_and_cache_layers_only_when_configured() -> None:
    names = recommended(StackSettings(), cache_routes=None).names
    assert names == [name for name, _ in RECOMMENDED if name not in ("cors", "cache")]


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


# -- typed layers: mypy --strict checks this file, so these lines are type checks too --------


async def test_a_layer_takes_its_options_as_checked_keywords(make_client: ClientFactory) -> None:
    typed = Layer("request_id", RequestIdMiddleware, header_name="X-Correlation-ID")
    mapped = Layer("request_id", RequestIdMiddleware, {"header_name": "X-Correlation-ID"})
    assert typed == mapped
    assert typed.options == {"header_name": "X-Correlation-ID"}
    stack = Stack([typed, Layer("tag", Tag, value="typed")])
    response = await make_client(stack.build(items)).get("/items/1")
    assert response.headers["x-correlation-id"]
    assert response.headers["x-layer"] == "typed"


def test_positional_options_are_named_from_the_middleware_signature() -> None:
    def gzip_like(app: ASGIApp, /, minimum_size: int = 500, **rest: int) -> ASGIApp:
        return app

    layer = Layer("gzip", gzip_like, 100, compresslevel=9)
    assert layer.options == {"minimum_size": 100, "compresslevel": 9}
    with pytest.raises(ConfigurationError, match="layer 'gzip'"):
        Layer("gzip", gzip_like, 1, 2)  # type: ignore[call-overload]


def test_a_wrong_option_is_a_type_error_where_the_stack_is_written() -> None:
    # The ignores below are the test: with warn_unused_ignores (mypy --strict), mypy fails
    # this file if a misspelt or mistyped option stops being a type error.
    misspelt = Layer("request_id", RequestIdMiddleware, heder_name="X")  # type: ignore[call-overload]
    mistyped = Layer("shedding", ConcurrencyLimitMiddleware, max_concurrency="10")  # type: ignore[call-overload]
    Layer("tag", Tag, valeu="x")  # type: ignore[call-overload]
    # At run time, the middleware refuses them when the stack is built.
    with pytest.raises(TypeError, match="heder_name"):
        misspelt.wrap(items)
    with pytest.raises(ConfigurationError, match="max_concurrency='10'"):
        mistyped.wrap(items)


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


# -- one caller for every layer (issue 22) ------------------------------------------------------

A, B = ("192.0.2.1", 1000), ("198.51.100.9", 1000)


@pytest.mark.parametrize(
    ("caller", "first", "second", "shared"),
    [
        # The default: quotas per client address; a client inventing credentials gets no more.
        (None, (A, "k1"), (A, "k2"), True),
        (None, (A, "k1"), (B, "k1"), False),
        # caller=: one quota per caller, wherever it calls from.
        ("X-Api-Key", (A, "k1"), (A, "k2"), False),
        ("X-Api-Key", (A, "k1"), (B, "k1"), True),
        # A request naming no caller is limited by its address.
        ("X-Api-Key", (A, None), (A, None), True),
        ("X-Api-Key", (A, None), (B, None), False),
    ],
)
async def test_the_stacks_caller_scopes_rate_limits_too(
    make_client: ClientFactory,
    caller: str | None,
    first: tuple[tuple[str, int], str | None],
    second: tuple[tuple[str, int], str | None],
    shared: bool,
) -> None:
    options: dict[str, Any] = {"registry": CollectorRegistry()}
    if caller is not None:
        options["caller"] = caller_from_header(caller)
    stack = Stack.recommended(StackSettings(rate_limit="1/minute"), **options).build(items)

    async def status(address: tuple[str, int], key: str | None) -> int:
        headers = {} if key is None else {"X-Api-Key": key, "Authorization": f"Bearer {key}"}
        return (
            await make_client(stack, client=address).get("/items/1", headers=headers)
        ).status_code

    try:
        assert await status(*first) == 200
        assert await status(*second) == (429 if shared else 200)
    finally:
        await stack.aclose()


async def test_by_default_idempotency_keys_are_scoped_by_authorization(
    make_client: ClientFactory,
) -> None:
    stack = recommended_stack(items, StackSettings(), registry=CollectorRegistry())
    client = make_client(stack)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    try:
        answers = [
            await client.post("/items", json={}, headers={**key, "Authorization": who})
            for who in ("Bearer a", "Bearer b", "Bearer a")
        ]
    finally:
        await stack.aclose()
    statuses = [answer.headers["idempotency-status"] for answer in answers]
    assert statuses == ["created", "created", "replayed"]


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


# -- one route resolver for every layer that labels by route ------------------------------------


def items_resolver(scope: Scope) -> str | None:
    """The raw ``items`` app's templates, as the raw-ASGI docs page writes them."""
    path: str = scope["path"]
    return "/items/{item_id}" if path.startswith("/items/") and path.count("/") == 2 else None


def test_route_resolver_reaches_every_layer_that_labels_by_route() -> None:
    stack = recommended(route_resolver=items_resolver)
    takes = {"access_log", "metrics", "concurrency_limit"}
    for layer in stack.layers:
        expected = items_resolver if layer.name in takes else None
        assert layer.options.get("route_resolver") is expected, layer.name
    assert "route_resolver" not in recommended().get("metrics").options


async def test_route_resolver_names_a_raw_apps_routes_in_metrics_and_logs() -> None:
    registry = CollectorRegistry()
    app = recommended_stack(
        items, StackSettings(), registry=registry, route_resolver=items_resolver
    )
    transport = httpx.ASGITransport(app=app, client=some_client())
    try:
        with capture_log_output() as logs:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                found = await client.get("/items/7")
                other = await client.get("/elsewhere")
    finally:
        await app.aclose()
    assert found.status_code == other.status_code == 200
    count = "http_request_duration_seconds_count"
    labels = {"method": "GET", "route": "/items/{item_id}", "status_code": "200"}
    assert registry.get_sample_value(count, labels) == 1
    unmatched = {**labels, "route": "__unmatched__"}
    assert registry.get_sample_value(count, unmatched) == 1
    routes = [line["route"] for line in logs.events("request completed")]
    assert routes == ["/items/{item_id}", "__unmatched__"]
