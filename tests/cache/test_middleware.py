"""CacheMiddleware over the memory store: keys, HTTP semantics, single-flight, invalidation."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from prodkit import ConfigurationError, caller_from_header
from prodkit.asgi import ASGIApp, Receive, Scope, Send
from prodkit.cache import CacheMiddleware, CacheRule, MemoryCacheStore, ResponseCache, compute_etag
from tests.apps import build_app
from tests.cache.helpers import CountingApp
from tests.conftest import ClientFactory

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


def make_cache(app: ASGIApp, registry: CollectorRegistry, **options: Any) -> CacheMiddleware:
    options.setdefault("routes", ROUTES)
    options.setdefault("caller", caller_from_header("X-User-Id"))
    return CacheMiddleware(app, registry=registry, **options)


def outcomes(registry: CollectorRegistry, route: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for outcome in ("hit", "miss", "bypass", "error", "coalesced"):
        value = registry.get_sample_value(
            "prodkit_cache_requests_total", {"route": route, "outcome": outcome}
        )
        if value:
            found[outcome] = value
    return found


# -- basics, on every framework ------------------------------------------------------------


async def test_miss_then_hit_with_age_and_etag(
    framework: str, make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    client = make_client(
        make_cache(build_app(framework), registry, routes={"/items/{id}": CacheRule(ttl=60)})
    )
    first = await client.get("/items/7")
    second = await client.get("/items/7")
    assert first.status_code == second.status_code == 200
    assert first.headers["x-cache"] == "MISS"
    assert "age" not in first.headers
    assert second.headers["x-cache"] == "HIT"
    assert int(second.headers["age"]) >= 0
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


async def test_query_parameters_are_normalised(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry))
    assert (await client.get("/items/1?a=1&b=2")).headers["x-cache"] == "MISS"
    assert (await client.get("/items/1?b=2&a=1")).headers["x-cache"] == "HIT"
    assert (await client.get("/items/1?b=2&a=%31")).headers["x-cache"] == "HIT"
    assert (await client.get("/items/1?a=2&b=2")).headers["x-cache"] == "MISS"
    assert (await client.get("/items/1")).headers["x-cache"] == "MISS"
    # undecodable bytes never collapse into one key
    assert (await client.get("/items/1?q=%ff")).headers["x-cache"] == "MISS"
    assert (await client.get("/items/1?q=%fe")).headers["x-cache"] == "MISS"
    assert (await client.get("/items/1?q=%ff")).headers["x-cache"] == "HIT"


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


# -- what is never stored (RFC 9111 section 3) ----------------------------------------------

NEVER_STORED = [
    # (path, request headers, X-Cache on the response or None when the cache stays out)
    pytest.param("/cookie", {}, "MISS", id="response Set-Cookie"),
    pytest.param("/nostore", {}, "MISS", id="response Cache-Control no-store (5.2.2.5)"),
    pytest.param("/private", {}, "MISS", id="response Cache-Control private (5.2.2.7)"),
    pytest.param("/nocache", {}, "MISS", id="response Cache-Control no-cache (5.2.2.4)"),
    pytest.param("/varystar", {}, "MISS", id="response Vary * (4.1)"),
    pytest.param("/missing", {}, "MISS", id="status not configured (404)"),
    pytest.param("/items/1", {"Authorization": "Bearer t"}, None, id="request Authorization (3.5)"),
    pytest.param("/items/1", {"Cookie": "session=abc"}, None, id="request Cookie"),
    pytest.param("/items/1", {"Cache-Control": "no-store"}, None, id="request no-store (5.2.1.5)"),
    pytest.param("/items/1", {"Range": "bytes=0-3"}, None, id="request Range"),
    pytest.param("/funds/1", {}, None, id="per-user route, caller unknown"),
]


@pytest.mark.parametrize(("path", "headers", "x_cache"), NEVER_STORED)
async def test_never_stored(
    path: str,
    headers: dict[str, str],
    x_cache: str | None,
    make_client: ClientFactory,
    registry: CollectorRegistry,
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry))
    for _ in range(3):
        response = await client.get(path, headers=headers)
        client.cookies.clear()  # the client would send /cookie's cookie back: not this case
        assert response.headers.get("x-cache") == x_cache
    assert app.calls[path] == 3
    # and a plain request afterwards finds nothing stored by them either
    if path == "/items/1":
        assert (await client.get(path)).headers["x-cache"] == "MISS"


async def test_a_route_can_opt_in_to_caching_authorized_requests_per_caller(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()

    def bearer(scope: Scope) -> str | None:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return str(value.decode())
        return None

    routes = {"/items/{id}": CacheRule(ttl=60, per_caller=True, allow_credentials=True)}
    client = make_client(make_cache(app, registry, routes=routes, caller=bearer))
    alice = {"Authorization": "Bearer alice"}
    assert (await client.get("/items/1", headers=alice)).headers["x-cache"] == "MISS"
    assert (await client.get("/items/1", headers=alice)).headers["x-cache"] == "HIT"
    bob = await client.get("/items/1", headers={"Authorization": "Bearer bob"})
    assert bob.headers["x-cache"] == "MISS"


# -- request Cache-Control -----------------------------------------------------------------


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


# -- ETag and conditional requests (RFC 9110 sections 8.8.3, 13.1.2) ------------------------


async def test_if_none_match_gets_304_on_hit_and_on_miss(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry))
    first = await client.get("/lang", headers={"Accept-Language": "en"})
    etag = first.headers["etag"]
    hit = await client.get("/lang", headers={"Accept-Language": "en", "If-None-Match": etag})
    assert hit.status_code == 304
    assert hit.content == b""
    assert hit.headers["etag"] == etag
    assert hit.headers["vary"] == "Accept-Language"
    assert hit.headers["x-cache"] == "HIT"
    assert "content-type" not in hit.headers
    weak = await client.get(
        "/lang", headers={"Accept-Language": "en", "If-None-Match": f"W/{etag}"}
    )
    assert weak.status_code == 304
    listed = await client.get(
        "/lang", headers={"Accept-Language": "en", "If-None-Match": f'"other", {etag}'}
    )
    assert listed.status_code == 304
    other = await client.get("/lang", headers={"Accept-Language": "en", "If-None-Match": '"x"'})
    assert other.status_code == 200

    # A fresh cache (another process) computes the same ETag and answers 304 on its miss.
    other_app = CountingApp()
    fresh = make_client(make_cache(other_app, CollectorRegistry()))
    miss = await fresh.get("/lang", headers={"Accept-Language": "en", "If-None-Match": etag})
    assert miss.status_code == 304
    assert miss.headers["x-cache"] == "MISS"
    assert miss.headers["etag"] == etag
    assert other_app.calls["/lang"] == 1


async def test_the_apps_own_etag_is_kept(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    client = make_client(make_cache(CountingApp(), registry))
    await client.get("/etag")
    response = await client.get("/etag", headers={"If-None-Match": '"app-v1"'})
    assert response.status_code == 304
    assert response.headers["etag"] == 'W/"app-v1"'


def test_etag_is_the_same_in_another_process() -> None:
    code = (
        "from prodkit.cache import compute_etag;"
        "print(compute_etag(b'{\"id\":1}', [(b'content-type', b'application/json')]).decode())"
    )
    env_seeds = ("1", "2")
    results = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": ":".join(sys.path)},
        ).stdout.strip()
        for seed in env_seeds
    }
    assert results == {compute_etag(b'{"id":1}', [(b"content-type", b"application/json")]).decode()}


# -- Vary ----------------------------------------------------------------------------------


async def test_vary_on_a_request_header_keeps_separate_entries(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry))
    en = {"Accept-Language": "en"}
    de = {"Accept-Language": "de"}
    assert (await client.get("/lang", headers=en)).headers["x-cache"] == "MISS"
    assert (await client.get("/lang", headers=de)).headers["x-cache"] == "MISS"
    hit_en = await client.get("/lang", headers=en)
    hit_de = await client.get("/lang", headers=de)
    assert (hit_en.headers["x-cache"], hit_en.text) == ("HIT", "en")
    assert (hit_de.headers["x-cache"], hit_de.text) == ("HIT", "de")
    assert (await client.get("/lang")).text == "none"
    assert app.calls["/lang"] == 3


async def test_per_user_routes_keep_callers_apart(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry))
    assert (await client.get("/funds/1", headers={"X-User-Id": "a"})).headers["x-cache"] == "MISS"
    assert (await client.get("/funds/1", headers={"X-User-Id": "b"})).headers["x-cache"] == "MISS"
    assert (await client.get("/funds/1", headers={"X-User-Id": "a"})).headers["x-cache"] == "HIT"


# -- invalidation --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["PATCH", "DELETE", "PUT", "POST"])
async def test_a_successful_write_makes_the_next_get_a_miss(
    method: str, make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry))
    bob = {"X-User-Id": "bob"}
    for path, user in (
        ("/funds/1", USER),
        ("/funds/1/projection?simulations=100", USER),
        ("/funds/2", bob),
    ):
        await client.get(path, headers=user)
        assert (await client.get(path, headers=user)).headers["x-cache"] == "HIT"
    write = await client.request(method, "/funds/1", headers=USER)
    assert write.status_code in (200, 204)
    fund = await client.get("/funds/1", headers=USER)
    assert fund.headers["x-cache"] == "MISS"
    assert fund.json()["calls"] == 2
    projection = await client.get("/funds/1/projection?simulations=100", headers=USER)
    assert projection.headers["x-cache"] == "MISS"  # tag fund:{id}
    # alice's write bumped fund:1, path:/funds/1 and user:alice; bob's other fund stays
    other = await client.get("/funds/2", headers=bob)
    assert other.headers["x-cache"] == "HIT"


async def test_a_failed_write_invalidates_nothing(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry, routes={"/fail": CacheRule(ttl=60)}))
    # /fail answers GET normally and POST with 500
    await client.get("/fail")
    assert (await client.post("/fail")).status_code == 500
    assert (await client.get("/fail")).headers["x-cache"] == "HIT"


async def test_invalidate_tags_from_the_app(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    cache = ResponseCache(MemoryCacheStore(), registry=registry)
    client = make_client(make_cache(app, registry, cache=cache))
    await client.get("/funds/1", headers=USER)
    await client.get("/funds/1", headers={"X-User-Id": "bob"})
    assert await cache.invalidate_tags(["user:alice"])
    assert (await client.get("/funds/1", headers=USER)).headers["x-cache"] == "MISS"
    assert (await client.get("/funds/1", headers={"X-User-Id": "bob"})).headers["x-cache"] == "HIT"
    assert registry.get_sample_value("prodkit_cache_invalidations_total", {"outcome": "ok"}) == 1


async def test_extra_invalidation_templates(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    cache = make_cache(app, registry, invalidate={"/funds": ["user:{caller}"]})
    client = make_client(cache)
    await client.get("/funds/1", headers=USER)
    assert (await client.post("/funds", headers=USER)).status_code == 200
    assert (await client.get("/funds/1", headers=USER)).headers["x-cache"] == "MISS"


# -- single flight -------------------------------------------------------------------------


def arrivals(app: ASGIApp, expected: int, gate: asyncio.Event) -> ASGIApp:
    """Open ``gate`` once ``expected`` requests have reached the middleware."""
    seen = 0

    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal seen
        seen += 1
        if seen == expected:
            gate.set()
        await app(scope, receive, send)

    return wrapper


async def test_concurrent_misses_call_the_app_once(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    app.gate = asyncio.Event()
    client = make_client(arrivals(make_cache(app, registry), 100, app.gate))
    responses = await asyncio.gather(*(client.get("/items/1?x=1") for _ in range(100)))
    assert {r.status_code for r in responses} == {200}
    assert {r.content for r in responses} == {responses[0].content}
    assert app.calls["/items/1"] == 1
    assert {r.headers["x-cache"] for r in responses} == {"MISS"}
    assert outcomes(registry, "/items/{id}") == {"miss": 1, "coalesced": 99}


async def test_concurrent_misses_of_other_variants_get_their_own_response(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    app.gate = asyncio.Event()
    client = make_client(arrivals(make_cache(app, registry), 20, app.gate))
    languages = ["en", "de"] * 10
    responses = await asyncio.gather(
        *(client.get("/lang", headers={"Accept-Language": lang}) for lang in languages)
    )
    assert [r.text for r in responses] == languages


async def test_waiters_do_not_hang_when_the_leader_fails(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    gate = asyncio.Event()
    calls = 0

    async def flaky(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal calls
        calls += 1
        first = calls == 1
        await gate.wait()
        if first:
            raise RuntimeError("upstream failed")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    client = make_client(arrivals(make_cache(flaky, registry), 5, gate))
    results = await asyncio.gather(
        *(client.get("/items/1") for _ in range(5)), return_exceptions=True
    )
    failures = [r for r in results if isinstance(r, Exception)]
    assert len(failures) == 1
    assert all(r.status_code == 200 for r in results if isinstance(r, httpx.Response))


async def test_a_waiter_gives_up_on_a_leader_that_outlives_the_lease(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    release = asyncio.Event()
    started = asyncio.Event()
    calls = 0

    async def first_call_hangs(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            started.set()
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(calls).encode()})

    client = make_client(make_cache(first_call_hangs, registry, lock_lease=0.2))
    leader = asyncio.create_task(client.get("/items/1"))
    await started.wait()
    waiter = await client.get("/items/1")
    assert waiter.status_code == 200
    assert waiter.text == "2"
    release.set()
    assert (await leader).status_code == 200


async def test_a_large_response_streams_through_unstored(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry, max_body_bytes=10_000))
    for _ in range(2):
        response = await client.get("/big")
        assert response.headers["x-cache"] == "MISS"
        assert response.content == b"".join(bytes([i]) * 4096 for i in range(16))
    assert app.calls["/big"] == 2


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


async def test_value_order_of_a_repeated_parameter_is_part_of_the_key(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    client = make_client(make_cache(CountingApp(), registry))
    first = await client.get("/items/1?sort=name&sort=date")
    second = await client.get("/items/1?sort=date&sort=name")
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "MISS")
    assert second.json()["query"] == "sort=date&sort=name"


async def test_a_read_after_a_write_never_joins_a_flight_that_started_before_it(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    app.gate = asyncio.Event()
    client = make_client(make_cache(app, registry))
    held = app.gate
    leader = asyncio.create_task(client.get("/funds/1", headers=USER))  # reads the old row
    await app.started.wait()
    app.gate = None  # later handler runs are not held back; the leader still waits on `held`
    write = await client.patch("/funds/1", headers=USER)
    assert write.status_code == 200
    # Joining the leader's flight would wait for it and hand back the pre-write answer.
    after = await asyncio.wait_for(client.get("/funds/1", headers=USER), 5)
    assert after.json()["calls"] == 2  # its own handler run, after the write
    held.set()
    assert (await leader).status_code == 200
