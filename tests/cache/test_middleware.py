"""CacheMiddleware: what it answers a read, request Cache-Control, HEAD, options, scope types."""

from __future__ import annotations

import re
from collections.abc import Callable
from email.utils import formatdate
from typing import Any, get_type_hints

import pytest
from prometheus_client import CollectorRegistry

from prodkit import ConfigurationError
from prodkit.asgi import Receive, Scope, Send
from prodkit.cache import (
    CacheKeywords,
    CacheMiddleware,
    CacheOptions,
    CacheRule,
    MemoryCacheStore,
    ResponseCache,
)
from tests.apps import build_app
from tests.cache.helpers import ROUTES, CountingApp, FakeClock, make_cache, outcomes
from tests.conftest import ClientFactory


async def test_miss_then_hit_with_age_and_etag(
    framework: str, make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    clock = FakeClock(1_700_000_000.0)
    client = make_client(
        make_cache(
            build_app(framework),
            registry,
            routes={"/items/{id}": CacheRule(ttl=60)},
            wall_clock=clock,
        )
    )
    first = await client.get("/items/7")
    clock.now += 42.9  # Age is whole seconds, rounded down (RFC 9111 section 5.1)
    second = await client.get("/items/7")
    assert first.status_code == second.status_code == 200
    assert first.headers["x-cache"] == "MISS"
    assert "age" not in first.headers
    assert second.headers["x-cache"] == "HIT"
    assert second.headers["age"] == "42"
    assert second.content == first.content
    assert second.headers["etag"] == first.headers["etag"]
    assert second.headers["etag"].startswith('"')
    assert len(second.headers["etag"]) == 34
    assert second.headers["content-length"] == str(len(first.content))
    assert outcomes(registry, "/items/{id}") == {"miss": 1, "hit": 1}


async def test_head_is_answered_from_the_get_entry(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry))
    get = await client.get("/items/1")
    head = await client.head("/items/1")
    assert head.status_code == 200
    assert head.headers["x-cache"] == "HIT"
    assert head.content == b""
    assert head.headers["content-length"] == str(len(get.content))
    assert app.calls["/items/1"] == 1


async def test_routes_not_configured_pass_through_untouched(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry, routes={"/funds/{id}": ROUTES["/funds/{id}"]}))
    for _ in range(2):
        response = await client.get("/items/1")
        assert "x-cache" not in response.headers
        assert "etag" not in response.headers
    assert app.calls["/items/1"] == 2


# -- request Cache-Control (RFC 9111 section 5.2.1) -----------------------------------------


async def test_request_no_cache_revalidates_and_refreshes_the_entry(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry))
    await client.get("/items/1")
    refreshed = await client.get("/items/1", headers={"Cache-Control": "no-cache"})
    assert refreshed.headers["x-cache"] == "MISS"
    assert refreshed.json()["calls"] == 2
    after = await client.get("/items/1")
    assert after.headers["x-cache"] == "HIT"
    assert after.json()["calls"] == 2
    zero = await client.get("/items/1", headers={"Cache-Control": "max-age=0"})
    assert zero.headers["x-cache"] == "MISS"
    assert app.calls["/items/1"] == 3


async def test_request_no_cache_can_be_ignored(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry, honor_no_cache=False))
    await client.get("/items/1")
    response = await client.get("/items/1", headers={"Cache-Control": "no-cache"})
    assert response.headers["x-cache"] == "HIT"
    assert app.calls["/items/1"] == 1


async def test_request_max_age_refuses_older_entries(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    """RFC 9111 section 5.2.1.1: a stored response older than the request's max-age is not used."""
    clock = FakeClock()
    app = CountingApp()
    client = make_client(make_cache(app, registry, wall_clock=clock))
    await client.get("/items/1")
    clock.now += 30
    young_enough = await client.get("/items/1", headers={"Cache-Control": "max-age=30"})
    assert (young_enough.headers["x-cache"], young_enough.headers["age"]) == ("HIT", "30")
    too_old = await client.get("/items/1", headers={"Cache-Control": "max-age=29"})
    assert too_old.headers["x-cache"] == "MISS"
    assert too_old.json()["calls"] == 2
    assert app.calls["/items/1"] == 2


def _date(at: float) -> str:
    return formatdate(at, usegmt=True)


#: The app's freshness headers, made from the time it answers; then whether the cache stores
#: the answer. RFC 9111 section 4.2.1 (freshness lifetime) and section 5.3 (Expires).
FRESHNESS: list[tuple[Callable[[float], dict[str, str]], bool]] = [
    (lambda now: {"Expires": _date(now - 10)}, False),  # in the past
    (lambda now: {"Expires": "0"}, False),  # "0" is a time in the past
    (lambda now: {"Expires": "next week"}, False),  # invalid dates too
    (lambda now: {"Expires": _date(now + 30)}, True),
    # max-age and s-maxage take precedence over Expires
    (lambda now: {"Expires": _date(now - 10), "Cache-Control": "max-age=30"}, True),
    (lambda now: {"Expires": "0", "Cache-Control": "s-maxage=30"}, True),
    (lambda now: {"Expires": _date(now + 30), "Cache-Control": "max-age=0"}, False),
    # Expires is counted from the response's Date, not from the cache's clock
    (lambda now: {"Date": _date(now - 60), "Expires": _date(now - 30)}, True),
    (lambda now: {"Cache-Control": "max-age=later"}, False),  # invalid: stale
    # RFC 9110 section 5.6.4: a comma inside a quoted string separates nothing
    (lambda now: {"Cache-Control": 'x-ext="a, max-age=0", max-age=60'}, True),
    (lambda now: {"Cache-Control": 'x-ext="a, no-store", max-age=60'}, True),
    # a malformed Cache-Control: what it meant to forbid is unknown, so not stored
    (lambda now: {"Cache-Control": 'max-age=60, x-ext="unterminated, no-store'}, False),
    (lambda now: {"Cache-Control": "max-age=60 no-store"}, False),
]


class FreshnessApp:
    """Answers 200 with ``headers(clock.now)``; ``calls`` counts its runs."""

    def __init__(self, clock: FakeClock, headers: Callable[[float], dict[str, str]]) -> None:
        self.clock = clock
        self.headers = headers
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        made = self.headers(self.clock.now)
        raw = [(k.lower().encode(), v.encode()) for k, v in made.items()]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": b"fresh"})


@pytest.mark.parametrize(("headers", "stored"), FRESHNESS)
async def test_responses_already_stale_are_not_stored(
    headers: Callable[[float], dict[str, str]],
    stored: bool,
    make_client: ClientFactory,
    registry: CollectorRegistry,
) -> None:
    clock = FakeClock(1_700_000_000.0)
    app = FreshnessApp(clock, headers)
    client = make_client(
        make_cache(
            app,
            registry,
            routes={"/doc": CacheRule(ttl=60)},
            store=MemoryCacheStore(clock=clock),
            wall_clock=clock,
        )
    )
    assert (await client.get("/doc")).headers["x-cache"] == "MISS"
    second = await client.get("/doc")
    assert second.headers["x-cache"] == ("HIT" if stored else "MISS")
    assert app.calls == (1 if stored else 2)


@pytest.mark.parametrize(
    ("headers", "lifetime"),
    [
        (lambda now: {"Expires": _date(now + 10)}, 10),  # shorter than the rule's 60 s
        (lambda now: {"Expires": _date(now + 600)}, 60),  # never longer than the rule
        (lambda now: {"Date": _date(now - 5), "Expires": _date(now + 5)}, 10),
        (lambda now: {"Expires": _date(now + 10), "Cache-Control": "max-age=20"}, 20),
        # The max-age inside the quoted value is not a directive: this one lives 1 s, not 3600.
        (lambda now: {"Cache-Control": 'x-ext="a, max-age=3600", max-age=1'}, 1),
    ],
)
async def test_expires_shortens_the_rules_ttl(
    headers: Callable[[float], dict[str, str]],
    lifetime: int,
    make_client: ClientFactory,
    registry: CollectorRegistry,
) -> None:
    clock = FakeClock(1_700_000_000.0)
    start = clock.now
    app = FreshnessApp(clock, headers)
    client = make_client(
        make_cache(
            app,
            registry,
            routes={"/doc": CacheRule(ttl=60)},
            store=MemoryCacheStore(clock=clock),
            wall_clock=clock,
        )
    )
    await client.get("/doc")
    clock.now = start + lifetime - 1
    assert (await client.get("/doc")).headers["x-cache"] == "HIT"
    clock.now = start + lifetime + 1
    assert (await client.get("/doc")).headers["x-cache"] == "MISS"
    assert app.calls == 2


async def test_only_if_cached_answers_504_problem_on_a_miss(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry))
    only = {"Cache-Control": "only-if-cached"}
    missing = await client.get("/items/1", headers=only)
    assert missing.status_code == 504
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["code"] == "NOT_CACHED"
    assert app.calls["/items/1"] == 0
    await client.get("/items/1")
    found = await client.get("/items/1", headers=only)
    assert found.status_code == 200
    assert found.headers["x-cache"] == "HIT"


# -- configuration and scope types ---------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"routes": {"/a": CacheRule(ttl=60, per_caller=True)}, "caller": None}, "caller"),
        ({"routes": {"/a/{id}": CacheRule(ttl=60, tags=("x:{nope}",))}}, "nope"),
        ({"routes": {"/a/{id}": CacheRule(ttl=60, tags=("x:{id",))}}, "valid template"),
        ({"routes": {"/a/{id}": CacheRule(ttl=60, tags=("x:{id!r}",))}}, "valid template"),
        ({"routes": {"/a": CacheRule(ttl=10**6)}}, "tag_ttl"),
        ({"routes": {"/a": CacheRule(ttl=0)}}, "ttl"),
        ({"routes": {"/a": 60}}, "CacheRule"),
        ({"routes": {"a": CacheRule(ttl=1)}}, "start with '/'"),
        ({"routes": {}, "statuses": ()}, "statuses"),
        ({"routes": {}, "lock_lease": 0}, "lock_lease"),
        ({"routes": {}, "invalidate": {"/a": "tag"}}, "list"),
    ],
)
def test_bad_options_are_rejected(options: dict[str, Any], message: str) -> None:
    options.setdefault("caller", None)
    with pytest.raises(ConfigurationError, match=message):
        CacheMiddleware(CountingApp(), registry=CollectorRegistry(), **options)


async def test_options_object_and_keywords_configure_the_same_middleware(
    make_client: ClientFactory,
) -> None:
    routes = {"/items/{id}": CacheRule(ttl=60)}
    by_keyword = CacheMiddleware(CountingApp(), routes=routes, registry=CollectorRegistry())
    options = CacheOptions(routes=routes, registry=CollectorRegistry())
    by_object = CacheMiddleware(CountingApp(), options=options)
    assert by_object.options is options
    for middleware in (by_keyword, by_object):
        client = make_client(middleware)
        first, second = [await client.get("/items/1") for _ in range(2)]
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")


def test_the_defaults_are_the_options_defaults(registry: CollectorRegistry) -> None:
    middleware = CacheMiddleware(CountingApp(), routes={}, registry=registry)
    assert middleware.options == CacheOptions(routes={}, registry=registry)
    assert (middleware.statuses, middleware.max_body_bytes, middleware.lock_lease) == (
        frozenset({200}),
        1024 * 1024,
        10.0,
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"statuses": [200, 700]}, "statuses=(200, 700): not HTTP status codes from 200 to 599"),
        ({"max_body_bytes": 0}, "max_body_bytes=0: less than 1"),
        ({"lock_lease": -1}, "lock_lease=-1: not greater than 0"),
        ({"metric_prefix": "cache-"}, "metric_prefix='cache-': not a valid start"),
        ({"routes": {"/a": CacheRule(ttl=0)}}, "routes['/a'].ttl=0: not greater than 0"),
        ({"store": MemoryCacheStore(), "cache": "a cache"}, "cache= and store= were both"),
    ],
)
def test_invalid_options_are_refused_when_made(options: dict[str, Any], message: str) -> None:
    options.setdefault("routes", {})
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        CacheOptions(**options)


def test_a_rules_ttl_is_checked_against_the_given_caches_tag_ttl() -> None:
    short = ResponseCache(tag_ttl=30, registry=CollectorRegistry())
    with pytest.raises(ConfigurationError, match="exceeds the cache's tag_ttl 30s"):
        CacheOptions(routes={"/a": CacheRule(ttl=60)}, cache=short)
    CacheOptions(routes={"/a": CacheRule(ttl=60)})  # the default tag_ttl: a day


def test_the_keywords_are_the_options_fields() -> None:
    assert get_type_hints(CacheKeywords) == get_type_hints(CacheOptions)
