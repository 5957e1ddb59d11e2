"""Rules (``prodkit.cache._rules``): which reads share an entry, which reads may use the cache
at all (RFC 9111 section 3.5 and the route's rule), and Cache-Control, dates and freshness."""

from __future__ import annotations

import json
from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from prodkit import Stack, StackSettings, caller_from_authorization, caller_from_header
from prodkit.asgi import Message, Receive, Scope, Send, get_header
from prodkit.cache import CacheRule, ResponseCache
from prodkit.cache._rules import (
    CacheRequest,
    RequestReader,
    cache_control,
    etag_matches,
    freshness_lifetime,
    http_date,
    origin,
    parse_cache_control,
    read_routes,
)
from tests.cache.helpers import CountingApp, make_cache, outcomes
from tests.conftest import ClientFactory

# -- which reads share an entry: the route, the origin, the path, the query, the caller ---------


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


# -- which reads may use the cache at all -------------------------------------------------------


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


# -- hostile request headers --------------------------------------------------------------------


@given(value=st.binary(max_size=200), etag=st.binary(max_size=40))
def test_hostile_if_none_match_and_cache_control_never_raise(value: bytes, etag: bytes) -> None:
    etag_matches(value, b'"' + etag.replace(b'"', b"") + b'"')
    cache_control([(b"cache-control", value)])


# -- Cache-Control: RFC 9111 section 5.2 over RFC 9110 section 5.6 lists and quoted strings -----

TCHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
tokens = st.text(alphabet=TCHARS, min_size=1, max_size=12)
# qdtext and quoted-pair's characters: HTAB, SP, VCHAR and obs-text (latin-1), quotes included.
quoted_text = st.text(
    alphabet=st.sampled_from(["\t", *map(chr, range(0x20, 0x7F)), *map(chr, range(0x80, 0x100))]),
    max_size=24,
)
values = st.none() | st.tuples(st.just("token"), tokens) | st.tuples(st.just("quoted"), quoted_text)
separators = st.sampled_from([",", ", ", " , ", ",\t", ", ,", ",,  "])


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@given(
    directives=st.lists(st.tuples(tokens, values), min_size=1, max_size=8),
    seps=st.lists(separators, min_size=8, max_size=8),
    lines=st.integers(1, 3),
)
def test_cache_control_reads_back_what_was_written(
    directives: list[tuple[str, tuple[str, str] | None]], seps: list[str], lines: int
) -> None:
    elements = []
    for name, value in directives:
        if value is None:
            elements.append(name)
        elif value[0] == "token":
            elements.append(f"{name}={value[1]}")
        else:
            elements.append(f"{name}={quote(value[1])}")
    # one list, written as up to three field lines (RFC 9110 section 5.3 joins them with commas)
    cut = max(1, len(elements) // lines)
    fields = []
    for start in range(0, len(elements), cut):
        chunk = elements[start : start + cut]
        text = chunk[0] + "".join(
            sep + element for sep, element in zip(seps, chunk[1:], strict=False)
        )
        fields.append(text.encode("latin-1"))
    expected: dict[str, str] = {}
    for name, value in directives:
        expected.setdefault(name.lower(), "" if value is None else value[1])
    assert parse_cache_control(fields) == (expected, True)


@given(value=quoted_text.filter(lambda text: '"' not in text and "\\" not in text))
def test_an_unterminated_quoted_string_makes_the_field_malformed(value: str) -> None:
    field = f'max-age=60, x-ext="{value}'.encode("latin-1")
    directives, well_formed = parse_cache_control([field])
    assert not well_formed
    assert directives["max-age"] == "60"
    assert directives["x-ext"] == value  # swallowed to the end, never split into directives


@given(raw=st.binary(max_size=300))
def test_any_cache_control_parses_into_strings(raw: bytes) -> None:
    directives, well_formed = parse_cache_control([raw])
    assert isinstance(well_formed, bool)
    assert all(name and name == name.lower() for name in directives)
    assert all(isinstance(value, str) for value in directives.values())


@pytest.mark.parametrize(
    ("field", "directives", "well_formed"),
    [
        (b'x-ext="a, max-age=3600", max-age=1', {"x-ext": "a, max-age=3600", "max-age": "1"}, True),
        (
            b'private="set-cookie, x-a", max-age=5',
            {"private": "set-cookie, x-a", "max-age": "5"},
            True,
        ),
        (b'x="say \\"hi\\", ok"', {"x": 'say "hi", ok'}, True),
        (b"MAX-AGE=5, max-age=9", {"max-age": "5"}, True),  # the first counts (4.2.1)
        (b'max-age="5"', {"max-age": "5"}, True),  # the quoted form is accepted (5.2)
        (b" , no-store ,, ", {"no-store": ""}, True),  # empty list elements (5.6.1)
        (b"max-age=", {"max-age": ""}, False),
        (b"max-age=5 6", {"max-age": "5"}, False),
        (b"=5, public", {"public": ""}, False),
        (b'no-store x="a, b", public', {"no-store": "", "public": ""}, False),
    ],
)
def test_cache_control_cases(field: bytes, directives: dict[str, str], well_formed: bool) -> None:
    assert parse_cache_control([field]) == (directives, well_formed)


NOW = 1_700_000_000.0


def _date(at: float) -> bytes:
    return formatdate(at, usegmt=True).encode()


@pytest.mark.parametrize(
    ("headers", "lifetime"),
    [
        # Nothing said: the rule's TTL alone applies.
        ([], None),
        ([(b"cache-control", b"public")], None),
        # RFC 9111 section 4.2.1: s-maxage, else max-age, else Expires - Date.
        ([(b"cache-control", b"max-age=30")], 30.0),
        ([(b"cache-control", b"max-age=0")], 0.0),
        ([(b"cache-control", b"max-age=30, s-maxage=5")], 5.0),
        ([(b"cache-control", b"s-maxage=30, max-age=0")], 30.0),
        ([(b"expires", _date(NOW + 10))], 10.0),
        ([(b"expires", _date(NOW + 10)), (b"date", _date(NOW - 100))], 110.0),
        # Section 5.3: max-age and s-maxage win over Expires, whatever it says.
        ([(b"expires", _date(NOW - 10)), (b"cache-control", b"max-age=30")], 30.0),
        ([(b"expires", b"0"), (b"cache-control", b"s-maxage=7")], 7.0),
        # An Expires in the past, Expires: 0 and an invalid date are already expired.
        ([(b"expires", _date(NOW - 10))], 0.0),
        ([(b"expires", b"0")], 0.0),
        ([(b"expires", b"-1")], 0.0),
        ([(b"expires", b"tomorrow")], 0.0),
        # Of several Expires lines, the first is used (section 4.2.1).
        ([(b"expires", _date(NOW + 10)), (b"expires", b"0")], 10.0),
        # Invalid freshness information is stale (section 4.2.1 encourages it).
        ([(b"cache-control", b"max-age=soon")], 0.0),
        ([(b"cache-control", b"max-age")], 0.0),
    ],
)
def test_freshness_lifetime_follows_rfc_9111(
    headers: list[tuple[bytes, bytes]], lifetime: float | None
) -> None:
    assert freshness_lifetime(headers, NOW) == lifetime


@pytest.mark.parametrize(
    "value",
    [
        b"Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        b"Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850 format
        b"Sun Nov  6 08:49:37 1994",  # ANSI C asctime() format
    ],
)
def test_http_dates_in_all_three_formats(value: bytes) -> None:
    # RFC 9110 section 5.6.7: a recipient accepts all three.
    assert http_date(value) == 784111777.0


@given(st.binary(max_size=40))
def test_any_expires_value_is_a_date_or_none(value: bytes) -> None:
    parsed = http_date(value)
    assert parsed is None or isinstance(parsed, float)


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
    routes = dict(read_routes(_RULES, cache.flushable))
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
