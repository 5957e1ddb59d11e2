"""Which reads may use the cache at all (RFC 9111 section 3.5 and the route's rule)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from prodkit.asgi import Scope
from prodkit.cache import CacheRule
from tests.cache.helpers import CountingApp, make_cache, outcomes
from tests.conftest import ClientFactory

BYPASSED = [
    # (path, request headers): the request keeps the cache out altogether
    pytest.param("/items/1", {"Authorization": "Bearer t"}, id="request Authorization (3.5)"),
    pytest.param("/items/1", {"Cookie": "session=abc"}, id="request Cookie"),
    pytest.param("/items/1", {"Cache-Control": "no-store"}, id="request no-store (5.2.1.5)"),
    pytest.param("/items/1", {"Range": "bytes=0-3"}, id="request Range"),
    pytest.param("/funds/1", {}, id="per-user route, caller unknown"),
]


ROUTE_OF = {"/items/1": "/items/{id}", "/funds/1": "/funds/{id}"}


@pytest.mark.parametrize(("path", "headers"), BYPASSED)
async def test_requests_that_bypass_the_cache(
    path: str, headers: dict[str, str], make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry))
    for _ in range(3):
        response = await client.get(path, headers=headers)
        assert response.headers.get("x-cache") is None
    assert app.calls[path] == 3
    assert outcomes(registry, ROUTE_OF[path]) == {"bypass": 3}
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
