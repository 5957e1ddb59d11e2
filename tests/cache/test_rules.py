"""Which reads share an entry: the route, the path, the normalised query and the caller."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from tests.cache.helpers import CountingApp, make_cache
from tests.conftest import ClientFactory


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


async def test_value_order_of_a_repeated_parameter_is_part_of_the_key(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    client = make_client(make_cache(CountingApp(), registry))
    first = await client.get("/items/1?sort=name&sort=date")
    second = await client.get("/items/1?sort=date&sort=name")
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "MISS")
    assert second.json()["query"] == "sort=date&sort=name"


async def test_per_user_routes_keep_callers_apart(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = CountingApp()
    client = make_client(make_cache(app, registry))
    assert (await client.get("/funds/1", headers={"X-User-Id": "a"})).headers["x-cache"] == "MISS"
    assert (await client.get("/funds/1", headers={"X-User-Id": "b"})).headers["x-cache"] == "MISS"
    assert (await client.get("/funds/1", headers={"X-User-Id": "a"})).headers["x-cache"] == "HIT"
