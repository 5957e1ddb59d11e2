"""Which reads share an entry: the route, the origin, the path, the normalised query, the caller."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry

from prodkit.asgi import Receive, Scope, Send, get_header
from prodkit.cache import CacheRule
from prodkit.cache._request import origin
from tests.cache.helpers import CountingApp, make_cache
from tests.conftest import ClientFactory


async def absolute_links(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that builds absolute URLs from the request's ``Host``, as ``url_for`` does."""
    host = (get_header(scope["headers"], b"host") or b"").decode("latin-1")
    body = json.dumps({"self": f"{scope['scheme']}://{host}{scope['path']}"}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def test_a_request_for_another_host_cannot_poison_the_entry(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    # RFC 9111 section 2: the key is the target URI, whose authority is the Host header.
    client = make_client(
        make_cache(absolute_links, registry, routes={"/items/{id}": CacheRule(ttl=60)})
    )
    poisoned = await client.get("/items/1", headers={"Host": "evil.example"})
    assert poisoned.json()["self"] == "http://evil.example/items/1"
    served = await client.get("/items/1")
    assert served.headers["x-cache"] == "MISS"
    assert served.json()["self"] == "http://testserver/items/1"
    again = await client.get("/items/1")
    assert (again.headers["x-cache"], again.json()) == ("HIT", served.json())


@pytest.mark.parametrize(
    ("scheme", "host", "same_as"),
    [
        # Lower-cased, the scheme's default port dropped (RFC 3986 section 6.2.3).
        ("http", b"Example.COM", b"example.com"),
        ("http", b"example.com:80", b"example.com"),
        ("https", b"example.com:443", b"example.com"),
        ("http", b"[::1]:80", b"[::1]"),
    ],
)
def test_the_origin_is_normalised(scheme: str, host: bytes, same_as: bytes) -> None:
    assert origin(scheme, host, None) == origin(scheme, same_as, None)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (("http", b"example.com", None), ("https", b"example.com", None)),
        (("https", b"example.com:80", None), ("https", b"example.com", None)),
        (("http", b"example.com:8080", None), ("http", b"example.com", None)),
        (("http", b"example.com", None), ("http", b"example.org", None)),
    ],
)
def test_origins_that_differ_keep_apart(
    one: tuple[str, bytes, None], other: tuple[str, bytes, None]
) -> None:
    assert origin(*one) != origin(*other)


def test_without_a_host_header_the_origin_is_the_server_address() -> None:
    assert origin("http", None, ("10.0.0.1", 80)) == origin("http", b"10.0.0.1", None)
    assert origin("https", None, ("::1", 8443)) == "https://[::1]:8443"
    assert origin("http", None, None) == "http://"


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
