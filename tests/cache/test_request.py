"""Which reads may use the cache at all (RFC 9111 section 3.5 and the route's rule)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from prodkit import Stack, StackSettings, caller_from_authorization, caller_from_header
from prodkit.asgi import Message, Receive, Scope, Send, get_header
from prodkit.cache import CacheRule, ResponseCache
from prodkit.cache._request import CacheRequest, RequestReader
from prodkit.cache._rules import read_routes
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


async def whose(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the request's credentials in the body; ``/<directive>`` paths send that
    ``Cache-Control`` (``/plain``: none)."""
    credentials = get_header(scope["headers"], b"authorization") or b"anonymous"
    headers = []
    directive = scope["path"].strip("/")
    if directive != "plain":
        headers.append((b"cache-control", directive.replace("_", "=").encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": credentials})


ALICE = {"Authorization": "Bearer alice"}
BOB = {"Authorization": "Bearer bob"}


@pytest.mark.parametrize("opt_in", [False, True], ids=["default", "allow_credentials"])
async def test_a_per_caller_route_caches_requests_with_credentials_for_their_caller(
    opt_in: bool, make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    # The stack's default caller is a digest of Authorization: a per_caller route keyed by it
    # is what caching authenticated requests needs, with no other option.
    rule = CacheRule(ttl=60, per_caller=True, allow_credentials=opt_in)
    client = make_client(
        make_cache(whose, registry, routes={"/plain": rule}, caller=caller_from_authorization)
    )
    first = await client.get("/plain", headers=ALICE)
    again = await client.get("/plain", headers=ALICE)
    bob = await client.get("/plain", headers=BOB)
    anonymous = await client.get("/plain")
    assert (first.headers["x-cache"], first.content) == ("MISS", b"Bearer alice")
    assert (again.headers["x-cache"], again.content) == ("HIT", b"Bearer alice")
    assert (bob.headers["x-cache"], bob.content) == ("MISS", b"Bearer bob")
    assert (anonymous.headers.get("x-cache"), anonymous.content) == (None, b"anonymous")


async def test_the_recommended_stack_caches_authenticated_reads_per_caller(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    stack = Stack.recommended(
        StackSettings(),
        registry=registry,
        cache_routes={"/plain": CacheRule(ttl=60, per_caller=True)},
    ).build(whose)
    client = make_client(stack)
    try:
        assert (await client.get("/plain", headers=ALICE)).headers["x-cache"] == "MISS"
        hit = await client.get("/plain", headers=ALICE)
        assert (hit.headers["x-cache"], hit.content) == ("HIT", b"Bearer alice")
        bob = await client.get("/plain", headers=BOB)
        assert (bob.headers["x-cache"], bob.content) == ("MISS", b"Bearer bob")
    finally:
        await stack.aclose()


@pytest.mark.parametrize(
    ("path", "shared"),
    [
        # RFC 9111 section 3.5: the answer to a request with Authorization is stored by a
        # shared cache only when the response says public, s-maxage or must-revalidate.
        ("/plain", False),
        ("/max-age_30", False),
        ("/public", True),
        ("/s-maxage_30", True),
        ("/must-revalidate", True),
    ],
)
async def test_a_shared_route_stores_an_authenticated_answer_only_when_it_says_so(
    path: str, shared: bool, make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    rule = CacheRule(ttl=60, allow_credentials=True)
    client = make_client(make_cache(whose, registry, routes={path: rule}))
    assert (await client.get(path, headers=ALICE)).headers["x-cache"] == "MISS"
    for headers in (ALICE, BOB, {}):
        response = await client.get(path, headers=headers)
        if shared:  # the app said anyone may have it
            assert (response.headers["x-cache"], response.content) == ("HIT", b"Bearer alice")
        else:  # never alice's answer to anyone else, nor stored for her either
            assert response.headers["x-cache"] == "MISS"
            assert response.content == headers.get("Authorization", "anonymous").encode()


# -- the keys of recent reads are remembered (RequestReader) ----------------------------------
#
# A read's entry key and tag keys are remembered by route, scheme, Host, path, query and
# caller, so that a repeated read does not parse and hash its URL again. What is remembered must
# be what a reader that remembers nothing makes for the same request.

_RULES = {
    "/items/{id}": CacheRule(ttl=60),
    "/funds/{id}": CacheRule(ttl=60, per_caller=True, tags=("fund:{id}", "user:{caller}")),
}


@st.composite
def _reads(draw: st.DrawFn) -> tuple[str, Scope]:
    template = draw(st.sampled_from(sorted(_RULES)))
    headers: list[tuple[bytes, bytes]] = []
    host = draw(st.sampled_from([None, b"example.com", b"Example.COM:80", b"api.example.com"]))
    if host is not None:
        headers.append((b"host", host))
    user = draw(st.sampled_from([None, b"alice", b"bob"]))
    if user is not None:
        headers.append((b"x-user-id", user))
    scope: Scope = {
        "type": "http",
        "method": "GET",
        "scheme": draw(st.sampled_from(["http", "https"])),
        "path": template.replace("{id}", draw(st.sampled_from(["1", "2"]))),
        "query_string": draw(st.sampled_from([b"", b"a=1&b=2", b"b=2&a=1", b"a=2"])),
        "headers": headers,
        "server": draw(st.sampled_from([None, ("a.example", 80), ("b.example", 8080)])),
    }
    return template, scope


def _facts(read: CacheRequest | str) -> object:
    return read if isinstance(read, str) else (read.base, read.tags, read.entry_key)


@given(reads=st.lists(_reads(), min_size=1, max_size=20))
def test_remembered_keys_are_the_keys_a_fresh_read_makes(reads: list[tuple[str, Scope]]) -> None:
    caller = caller_from_header("X-User-Id")
    cache = ResponseCache(registry=CollectorRegistry())
    routes = dict(read_routes(_RULES, cache, caller))
    statuses = frozenset({200})
    reader = RequestReader(caller, statuses)
    for template, scope in reads:
        remembered = reader.read(scope, routes[template])
        fresh = RequestReader(caller, statuses).read(scope, routes[template])
        assert _facts(remembered) == _facts(fresh)


async def server_address(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that answers with the address it was reached at (``scope["server"]``)."""
    host, port = scope["server"]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": f"{host}:{port}".encode()})


async def test_a_read_without_host_is_not_served_another_servers_entry(
    registry: CollectorRegistry,
) -> None:
    # RFC 9111 section 2: without a Host header the target URI's authority is the server's
    # address; the remembered keys once ignored it and served a.example's answer on b.example.
    app = make_cache(server_address, registry, routes={"/items/{id}": CacheRule(ttl=60)})
    answers = []
    for server in [("a.example", 80), ("b.example", 80), ("b.example", 80)]:
        sent: list[Message] = []
        scope: Scope = {
            "type": "http",
            "http_version": "1.0",
            "method": "GET",
            "scheme": "http",
            "path": "/items/1",
            "root_path": "",
            "query_string": b"",
            "headers": [],
            "server": server,
        }

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message, sent: list[Message] = sent) -> None:
            sent.append(message)

        await app(scope, receive, send)
        answers.append((get_header(sent[0]["headers"], b"x-cache"), sent[1]["body"]))
    assert answers == [
        (b"MISS", b"a.example:80"),
        (b"MISS", b"b.example:80"),
        (b"HIT", b"b.example:80"),
    ]
