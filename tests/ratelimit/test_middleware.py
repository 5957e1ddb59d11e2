"""RateLimitMiddleware: headers, 429 problems, client keys (IPv6, proxies), routes, metrics."""

from __future__ import annotations

import re
from typing import Any, get_type_hints

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from prodkit import ConfigurationError, caller_from_header
from prodkit.asgi import Message, Receive, Scope, Send
from prodkit.ratelimit import (
    DEFAULT_EXCLUDE_PATHS,
    MemoryRateLimitStore,
    RateLimitDecision,
    RateLimitKeywords,
    RateLimitMiddleware,
    RateLimitOptions,
    RateLimitPolicy,
)
from prodkit.ratelimit._middleware import QUOTA_EXCEEDED_TYPE, RouteSpec
from tests.apps import build_app
from tests.conftest import ClientFactory

SF_ITEM = re.compile(r'"([^"]+)";r=(\d+);t=(\d+)')


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limited(app: object = None, **options: object) -> RateLimitMiddleware:
    options.setdefault("policy", "3/minute")
    return RateLimitMiddleware(app or build_app("raw"), **options)  # type: ignore[arg-type]


async def test_allowed_responses_carry_the_ietf_fields(
    framework: str, make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    client = make_client(limited(build_app(framework), registry=registry))
    responses = [await client.get("/items/1") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert {r.headers["ratelimit-policy"] for r in responses} == {'"default";q=3;w=60'}
    assert [r.headers["ratelimit"] for r in responses] == [
        '"default";r=2;t=20',
        '"default";r=1;t=40',
        '"default";r=0;t=20',
    ]


async def test_limited_request_gets_a_429_problem_and_never_reaches_the_app(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    calls = 0
    inner = build_app("raw")

    async def counting(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal calls
        calls += 1
        await inner(scope, receive, send)

    client = make_client(limited(counting, registry=registry))
    for _ in range(3):
        await client.get("/items/1")
    response = await client.get("/items/1")
    assert calls == 3
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["type"] == QUOTA_EXCEEDED_TYPE
    assert body["code"] == "RATE_LIMITED"
    assert body["status"] == 429
    assert body["violated-policies"] == ["default"]
    retry_after = int(response.headers["retry-after"])
    name, remaining, reset = SF_ITEM.fullmatch(response.headers["ratelimit"]).groups()  # type: ignore[union-attr]
    assert (name, remaining) == ("default", "0")
    assert 0 < int(reset) <= retry_after <= 20  # 3/minute refills one unit every 20 s
    assert response.headers["ratelimit-policy"] == '"default";q=3;w=60'


@pytest.mark.parametrize("elapsed", [0.0, 0.5, 7.3, 13.0, 19.2])
async def test_retry_after_is_right_within_a_second(
    make_client: ClientFactory, registry: CollectorRegistry, elapsed: float
) -> None:
    clock = Clock()
    store = MemoryRateLimitStore(clock=clock)
    client = make_client(limited(store=store, registry=registry))
    for _ in range(3):
        await client.get("/items/1")
    clock.now += elapsed
    response = await client.get("/items/1")
    assert response.status_code == 429
    truth = 20 - elapsed  # seconds until one unit is back
    retry_after = int(response.headers["retry-after"])
    assert truth <= retry_after < truth + 1
    clock.now += retry_after
    assert (await client.get("/items/1")).status_code == 200


@pytest.mark.parametrize(
    ("first", "second", "shared"),
    [
        ("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff", True),  # same /64
        ("2001:db8:1:2::1", "2001:db8:1:3::1", False),  # neighbouring /64
        ("::ffff:192.0.2.7", "192.0.2.7", True),  # IPv4-mapped IPv6 is the IPv4 client
        ("192.0.2.7", "192.0.2.8", False),
    ],
)
async def test_client_key_groups_ipv6_by_prefix(
    make_client: ClientFactory, registry: CollectorRegistry, first: str, second: str, shared: bool
) -> None:
    app = limited(policy="1/minute", registry=registry)
    assert (await make_client(app, client=(first, 1000)).get("/items/1")).status_code == 200
    status = (await make_client(app, client=(second, 2000)).get("/items/1")).status_code
    assert status == (429 if shared else 200)


async def test_ipv6_prefix_is_configurable(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = limited(policy="1/minute", ipv6_prefix=56, registry=registry)
    assert (await make_client(app, client=("2001:db8:0:100::1", 1)).get("/")).status_code == 404
    assert (await make_client(app, client=("2001:db8:0:1ff::1", 1)).get("/")).status_code == 429


async def test_rotating_x_forwarded_for_from_an_untrusted_peer_does_not_reset_the_limit(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    client = make_client(limited(registry=registry), client=("198.51.100.9", 4000))
    statuses = [
        (
            await client.get(
                "/items/1",
                headers={"X-Forwarded-For": f"203.0.113.{n}", "Forwarded": f"for=10.0.0.{n}"},
            )
        ).status_code
        for n in range(6)
    ]
    assert statuses == [200, 200, 200, 429, 429, 429]


async def test_behind_a_trusted_proxy_the_forwarded_client_is_limited(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = limited(policy="1/minute", trusted_proxies="10.0.0.0/8", registry=registry)
    proxy = make_client(app, client=("10.1.2.3", 4000))

    async def status(xff: str) -> int:
        return (await proxy.get("/items/1", headers={"X-Forwarded-For": xff})).status_code

    assert await status("203.0.113.5") == 200
    assert await status("203.0.113.6") == 200  # another client behind the same proxy
    # The client prepends spoofed entries; the proxy appended the real address last.
    assert await status("1.1.1.1, 203.0.113.5") == 429
    assert await status("8.8.8.8, 203.0.113.5") == 429


async def test_route_policies_exemptions_and_probes(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = limited(
        build_app("starlette"),
        policy="100/minute",
        routes={"/items/{item_id}": RateLimitPolicy(1, 60, "items"), "/slow": None},
        registry=registry,
    )
    client = make_client(app)
    first = await client.get("/items/1")
    assert first.headers["ratelimit-policy"] == '"default";q=100;w=60, "items";q=1;w=60'
    assert first.headers["ratelimit"] == '"default";r=99;t=1, "items";r=0;t=60'
    refused = await client.get("/items/2")
    assert refused.status_code == 429
    assert refused.json()["violated-policies"] == ["items"]
    assert int(refused.headers["retry-after"]) == 60
    unlimited = await client.get("/slow")
    assert unlimited.status_code == 200
    assert "ratelimit" not in unlimited.headers
    for _ in range(3):
        probe = await client.get("/livez")
        assert "ratelimit" not in probe.headers


async def test_string_route_policies_are_named_after_the_route(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = RateLimitMiddleware(
        build_app("raw"), routes={"/api/login": "5/minute"}, registry=registry
    )
    response = await make_client(app).get("/api/login")
    assert response.headers["ratelimit-policy"] == '"route:api_login";q=5;w=60'
    assert "ratelimit" not in (await make_client(app).get("/other")).headers


LONG = "/api/v1/organisations/{organisation_id}/projects/{project_id}/"


@pytest.mark.parametrize(
    ("routes", "first", "second"),
    [
        # Issue 21: route policies were named after the route cleaned and cut to 64 characters.
        ({"/api/login": "1/minute", "/api_login": "1/minute"}, "/api/login", "/api_login"),
        ({"/api/login": "1/minute", "/api/login/": "1/minute"}, "/api/login", "/api/login/"),
        (
            {LONG + "members": "1/minute", LONG + "invoices": "1/minute"},
            LONG.format(organisation_id=1, project_id=2) + "members",
            LONG.format(organisation_id=1, project_id=2) + "invoices",
        ),
        # A route's second policy was "-2" after its name: the name of route `/a-2`.
        ({"/a": ["5/minute", "1/minute"], "/a-2": "1/minute"}, "/a", "/a-2"),
    ],
)
async def test_routes_whose_names_looked_alike_keep_separate_quotas(
    make_client: ClientFactory,
    registry: CollectorRegistry,
    routes: dict[str, RouteSpec],
    first: str,
    second: str,
) -> None:
    app = RateLimitMiddleware(build_app("raw"), routes=routes, registry=registry)
    client = make_client(app)
    assert (await client.get(first)).status_code == 404
    assert (await client.get(first)).status_code == 429
    answer = await client.get(second)
    assert answer.status_code == 404
    assert SF_ITEM.findall(answer.headers["ratelimit"])[-1][1] == "0"


async def test_routes_whose_names_looked_alike_may_have_different_rates(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    # This raised "two different policies are named 'route:api_login'" at start-up.
    app = RateLimitMiddleware(
        build_app("raw"),
        routes={"/api/login": "5/minute", "/api_login": "10/minute"},
        registry=registry,
    )
    client = make_client(app)
    assert (await client.get("/api/login")).headers["ratelimit-policy"] == (
        '"route:api_login";q=5;w=60'
    )
    assert (await client.get("/api_login")).headers["ratelimit-policy"] == (
        '"route:api_login:b42879bfd7c4b740";q=10;w=60'
    )


def test_two_policies_that_share_a_name_are_named_with_their_routes() -> None:
    with pytest.raises(ConfigurationError) as caught:
        RateLimitMiddleware(
            build_app("raw"),
            routes={"/a": RateLimitPolicy(1, 60, "x"), "/b": RateLimitPolicy(2, 60, "x")},
        )
    assert str(caught.value) == (
        "two different policies are named 'x' and would count in one quota: 1 per 60 s "
        "(route '/a') and 2 per 60 s (route '/b'); give each its own name, or pass one "
        "RateLimitPolicy object to share a quota"
    )


A, B = "192.0.2.1", "198.51.100.9"


@pytest.mark.parametrize(
    ("caller", "first", "second", "shared"),
    [
        # The default: by client address, whatever the request says about itself.
        (None, (A, "k1"), (A, "k2"), True),
        (None, (A, "k1"), (B, "k1"), False),
        # Issue 22: with a caller, each caller has one quota wherever it calls from.
        ("X-Api-Key", (A, "k1"), (A, "k2"), False),
        ("X-Api-Key", (A, "k1"), (B, "k1"), True),
        # A request that names no caller is limited by its address (it was not limited).
        ("X-Api-Key", (A, None), (A, None), True),
        ("X-Api-Key", (A, None), (B, None), False),
        ("X-Api-Key", (A, "k1"), (A, None), False),
        # A caller named like an address does not spend that address's quota.
        ("X-Api-Key", (A, None), (B, A), False),
    ],
)
async def test_quotas_are_per_caller_else_per_client_address(
    make_client: ClientFactory,
    registry: CollectorRegistry,
    caller: str | None,
    first: tuple[str, str | None],
    second: tuple[str, str | None],
    shared: bool,
) -> None:
    options: dict[str, object] = {"policy": "1/minute", "registry": registry}
    if caller is not None:
        options["caller"] = caller_from_header(caller)
    app = limited(**options)

    async def status(address: str, key: str | None) -> int:
        headers = {} if key is None else {"X-Api-Key": key}
        client = make_client(app, client=(address, 1000))
        return (await client.get("/items/1", headers=headers)).status_code

    assert await status(*first) == 200
    assert await status(*second) == (429 if shared else 200)


async def test_decisions_are_counted(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    client = make_client(limited(policy="1/minute", registry=registry))
    await client.get("/items/1")
    await client.get("/items/1")
    await client.get("/items/1")

    def sample(decision: str) -> float | None:
        return registry.get_sample_value(
            "prodkit_rate_limit_decisions_total", {"policy": "default", "decision": decision}
        )

    assert sample("allowed") == 1
    assert sample("limited") == 2
    assert sample("error") == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"policy": None}, "needs a policy"),
        ({"policy": "lots"}, "not a rate"),
        ({"policy": "1/minute", "on_store_error": "ignore"}, "fail_open"),
        ({"policy": "1/minute", "unavailable_retry_after": 0}, "unavailable_retry_after"),
        ({"policy": "1/minute", "ipv6_prefix": 129}, "ipv6_prefix"),
        ({"policy": "1/minute", "trusted_proxies": "10.0.0.0/33"}, "trusted_proxies"),
        (
            {"policy": RateLimitPolicy(1, 60, "x"), "routes": {"/a": RateLimitPolicy(2, 60, "x")}},
            "distinct names",
        ),
        (
            {"routes": {"/a": RateLimitPolicy(1, 60, "x"), "/b": RateLimitPolicy(2, 60, "x")}},
            "two different policies",
        ),
        ({"routes": {"a": "1/minute"}}, "must start with '/'"),
    ],
)
def test_configuration_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RateLimitMiddleware(build_app("raw"), **options)  # type: ignore[arg-type]


async def test_a_shared_policy_object_is_one_quota_across_routes(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    writes = RateLimitPolicy(2, 60, "writes")
    app = RateLimitMiddleware(
        build_app("raw"), routes={"/a": writes, "/b": writes}, registry=registry
    )
    client = make_client(app)
    statuses = [(await client.get(path)).status_code for path in ("/a", "/b", "/a")]
    assert statuses == [404, 404, 429]


async def test_headers_survive_http_errors_from_the_app(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    response = await make_client(limited(registry=registry)).get("/nope")
    assert response.status_code == 404
    assert isinstance(response, httpx.Response)
    assert response.headers["ratelimit"] == '"default";r=2;t=20'


async def test_several_global_policies_from_strings(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = RateLimitMiddleware(build_app("raw"), policy=["2/second", "3/minute"], registry=registry)
    client = make_client(app)
    first = await client.get("/items/1")
    assert first.headers["ratelimit-policy"] == '"default";q=2;w=1, "default-2";q=3;w=60'
    statuses = [(await client.get("/items/1")).status_code for _ in range(2)]
    assert statuses == [200, 429]


class AwaitedMemoryStore(MemoryRateLimitStore):
    """The memory store behind an overridden ``consume``: the middleware must await it."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.calls = 0

    async def consume(self, key: str, policy: RateLimitPolicy, cost: int = 1) -> RateLimitDecision:
        self.calls += 1
        return await super().consume(key, policy, cost)


async def test_a_store_subclass_that_overrides_consume_is_still_called(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    store = AwaitedMemoryStore(Clock())
    client = make_client(limited(store=store, registry=registry))
    statuses = [(await client.get("/items/1")).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert store.calls == 4


async def drive(app: RateLimitMiddleware, path: str, client: str) -> list[tuple[str, str]]:
    """One request straight through the ASGI interface: its status and the limit's fields."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "client": (client, 1)}
    await app(scope, receive, send)
    start = sent[0]
    fields = [("status", str(start["status"]))]
    for name, value in start["headers"]:
        if name in (b"ratelimit", b"ratelimit-policy", b"retry-after"):
            fields.append((name.decode(), value.decode()))
    return fields


@settings(max_examples=60, deadline=None)
@given(
    quotas=st.lists(st.tuples(st.integers(1, 5), st.integers(1, 30)), min_size=1, max_size=3),
    steps=st.lists(
        st.tuples(
            st.floats(0, 15, allow_nan=False),
            st.sampled_from(["/items/1", "/login", "/livez", "/free"]),
            st.sampled_from(["192.0.2.1", "192.0.2.2"]),
        ),
        min_size=1,
        max_size=40,
    ),
)
async def test_the_memory_store_answers_exactly_as_a_subclass_that_overrides_it(
    quotas: list[tuple[int, int]], steps: list[tuple[float, str, str]]
) -> None:
    # The memory store and a subclass overriding ``consume`` are both awaited like any other
    # store (there is no synchronous lane for the memory store): both must give the same
    # statuses, fields and counts.
    policy = [RateLimitPolicy(q, w, f"p{n}") for n, (q, w) in enumerate(quotas)]
    routes: dict[str, RouteSpec] = {"/login": RateLimitPolicy(2, 10, "login"), "/free": None}
    clock = Clock()
    registries = [CollectorRegistry(), CollectorRegistry()]
    lane = RateLimitMiddleware(
        build_app("raw"),
        policy=policy,
        routes=routes,
        store=MemoryRateLimitStore(clock=clock),
        registry=registries[0],
    )
    awaited = RateLimitMiddleware(
        build_app("raw"),
        policy=policy,
        routes=routes,
        store=AwaitedMemoryStore(clock),
        registry=registries[1],
    )
    for wait, path, client in steps:
        clock.now += wait
        assert await drive(lane, path, client) == await drive(awaited, path, client)
    samples = [
        sorted(
            (s.labels["policy"], s.labels["decision"], s.value)
            for s in metric.samples
            if s.name.endswith("_total")
        )
        for registry in registries
        for metric in registry.collect()
        if metric.name == "prodkit_rate_limit_decisions"
    ]
    assert samples[0]
    assert samples[0] == samples[1]


# Without trusted proxies a client's key depends only on its peer address, so the middleware
# remembers the key per peer address (writing an IPv6 network out costs several µs). With a
# trusted proxy it asks ClientAddressResolver.key() on every request: for peers that are not
# the proxy, both must decide alike, field for field.
_PEER_ADDRESSES = [
    "192.0.2.1",
    "192.0.2.1:8080",
    "::ffff:192.0.2.1",
    "192.0.2.2",
    "2001:db8::1",
    "[2001:db8::2]:443",
    "2001:db8:0:1::1",
    "2001:db8:100::1",
    "fe80::1%eth0",
    "testclient",
    "",
]


@settings(max_examples=60, deadline=None)
@given(
    ipv6_prefix=st.sampled_from([48, 56, 64, 128]),
    steps=st.lists(
        st.tuples(st.floats(0, 40, allow_nan=False), st.sampled_from(_PEER_ADDRESSES)),
        min_size=1,
        max_size=30,
    ),
)
async def test_remembered_client_keys_decide_as_the_resolvers_keys(
    ipv6_prefix: int, steps: list[tuple[float, str]]
) -> None:
    clock = Clock()
    remembered, resolved = (
        RateLimitMiddleware(
            build_app("raw"),
            policy="2/minute",
            store=MemoryRateLimitStore(clock=clock),
            ipv6_prefix=ipv6_prefix,
            trusted_proxies=trusted,
            registry=CollectorRegistry(),
        )
        for trusted in ((), ("198.51.100.250",))
    )
    for wait, peer in steps:
        clock.now += wait
        assert await drive(remembered, "/items/1", peer) == await drive(resolved, "/items/1", peer)


# -- options ---------------------------------------------------------------------------------


async def test_options_object_and_keywords_configure_the_same_middleware(
    make_client: ClientFactory,
) -> None:
    by_keyword = limited(policy="1/minute", registry=CollectorRegistry())
    options = RateLimitOptions(policy="1/minute", registry=CollectorRegistry())
    by_object = RateLimitMiddleware(build_app("raw"), options=options)
    assert by_object.options is options
    for middleware in (by_keyword, by_object):
        client = make_client(middleware)
        assert [(await client.get("/items/1")).status_code for _ in range(2)] == [200, 429]


def test_the_defaults_are_the_options_defaults(registry: CollectorRegistry) -> None:
    middleware = limited(policy="1/minute", registry=registry)
    assert middleware.options == RateLimitOptions(policy="1/minute", registry=registry)
    assert middleware.options.exclude_paths == DEFAULT_EXCLUDE_PATHS
    assert (middleware.on_store_error, middleware.unavailable_retry_after) == ("fail_open", 5)


def test_the_policies_are_kept_parsed() -> None:
    options = RateLimitOptions(
        policy=["100/minute", "1000/hour"], routes={"/login": "5/minute", "/ping": None}
    )
    assert options.policy == (
        RateLimitPolicy(100, 60, "default"),
        RateLimitPolicy(1000, 3600, "default-2"),
    )
    assert options.routes == {"/login": (RateLimitPolicy(5, 60, "route:login"),), "/ping": None}
    assert RateLimitOptions(policy="1/s", trusted_proxies="10.0.0.1").trusted_proxies == (
        "10.0.0.1",
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"routes": {"/ping": None}}, "needs a policy"),
        ({"policy": "1/s", "on_store_error": "open"}, "on_store_error='open': not one of"),
        ({"policy": "1/s", "ipv6_prefix": 0}, "ipv6_prefix=0: less than 1"),
        ({"policy": "1/s", "unavailable_retry_after": True}, "unavailable_retry_after=True"),
        ({"policy": "1/s", "exclude_paths": "/livez"}, "exclude_paths='/livez': a list of"),
        ({"policy": "1/s", "metric_prefix": "rate-"}, "metric_prefix='rate-': not a valid"),
    ],
)
def test_invalid_options_are_refused_when_made(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        RateLimitOptions(**options)


def test_the_keywords_are_the_options_fields() -> None:
    assert get_type_hints(RateLimitKeywords) == get_type_hints(RateLimitOptions)
