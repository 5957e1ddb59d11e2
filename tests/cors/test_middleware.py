"""CORSMiddleware: safe configuration, exact and subdomain origins, preflights, Vary."""

from __future__ import annotations

import re
from typing import get_type_hints

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prodkit import ConfigurationError, ErrorMiddleware
from prodkit.asgi import Receive, Scope, Send
from prodkit.cors import (
    DEFAULT_ALLOW_METHODS,
    DEFAULT_EXPOSE_HEADERS,
    CORSKeywords,
    CORSMiddleware,
    CORSOptions,
    OriginMatcher,
)
from prodkit.ratelimit import RateLimitMiddleware
from prodkit.shedding import ConcurrencyLimitMiddleware
from tests.apps import build_app
from tests.conftest import ClientFactory

ORIGINS = "https://app.example.org, https://*.example.com, http://localhost:3000"


def cors(app: object = None, **options: object) -> CORSMiddleware:
    options.setdefault("allow_origins", ORIGINS)
    return CORSMiddleware(app or build_app("raw"), **options)  # type: ignore[arg-type]


# Each row: origin sent, allowed? The subdomain pattern must match on label boundaries only.
ORIGIN_CASES = [
    ("https://app.example.org", True),  # listed exactly
    ("https://a.example.com", True),  # subdomain pattern
    ("https://deep.a.example.com", True),  # any depth
    ("https://example.com", False),  # the bare domain is not a subdomain
    ("https://evil-example.com", False),  # suffix without a dot boundary
    ("https://evilexample.com", False),
    ("https://a.example.com.evil.io", False),  # pattern as a prefix of another host
    ("http://a.example.com", False),  # scheme differs
    ("https://a.example.com:8443", False),  # port differs
    ("https://.example.com", False),  # empty label
    ("https://a_b.example.com", False),  # not a hostname
    ("https://a.example.com/", False),  # an Origin never has a path
    ("null", False),  # sandboxed iframes and file: pages; only if listed
    ("https://APP.example.org", False),  # browsers serialise lower-case; no reflection games
    ("http://localhost:3000", True),
    ("http://localhost:3001", False),
    ("https://app.example.org.evil.io", False),
    ("", False),
]


@pytest.mark.parametrize(("origin", "allowed"), ORIGIN_CASES)
async def test_simple_requests_by_origin(
    make_client: ClientFactory, origin: str, allowed: bool
) -> None:
    response = await make_client(cors()).get("/items/1", headers={"Origin": origin})
    assert response.status_code == 200  # the request itself is never blocked server-side
    assert response.headers.get("access-control-allow-origin") == (origin if allowed else None)
    assert "Origin" in response.headers["vary"]
    if allowed:
        exposed = response.headers["access-control-expose-headers"]
        assert "RateLimit-Policy" in exposed
        assert "X-Request-ID" in exposed
        assert "access-control-allow-credentials" not in response.headers


@pytest.mark.parametrize(("origin", "allowed"), ORIGIN_CASES)
async def test_preflights_by_origin(make_client: ClientFactory, origin: str, allowed: bool) -> None:
    response = await make_client(cors()).options(
        "/items/1",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "content-type, idempotency-key",
        },
    )
    assert response.headers["vary"] == (
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    )
    if allowed:
        assert response.status_code == 204
        assert response.headers["access-control-allow-origin"] == origin
        assert "PATCH" in response.headers["access-control-allow-methods"]
        assert response.headers["access-control-allow-headers"] == "content-type, idempotency-key"
        assert response.headers["access-control-max-age"] == "600"
    else:
        assert response.status_code == 403
        assert response.json()["code"] == "CORS_PREFLIGHT_REJECTED"
        assert not [h for h in response.headers if h.startswith("access-control-")]


@pytest.mark.parametrize(
    ("method", "headers", "reason"),
    [
        ("TRACE", "", "method"),
        ("PUT", "x-secret-header", "headers"),
        ("DELETE", "content-type, x-evil", "x-evil"),
    ],
)
async def test_preflight_refuses_methods_and_headers_not_allowed(
    make_client: ClientFactory, method: str, headers: str, reason: str
) -> None:
    request_headers = {"Origin": "https://a.example.com", "Access-Control-Request-Method": method}
    if headers:
        request_headers["Access-Control-Request-Headers"] = headers
    response = await make_client(cors()).options("/items/1", headers=request_headers)
    assert response.status_code == 403
    assert reason in response.json()["detail"]
    assert "access-control-allow-origin" not in response.headers


async def test_wildcard_methods_and_headers_echo_only_tokens(make_client: ClientFactory) -> None:
    client = make_client(cors(allow_methods="*", allow_headers="*"))
    base = {"Origin": "https://a.example.com"}
    ok = await client.options(
        "/",
        headers={
            **base,
            "Access-Control-Request-Method": "PURGE",
            "Access-Control-Request-Headers": "x-anything, x-else",
        },
    )
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-methods"] == "PURGE"
    assert ok.headers["access-control-allow-headers"] == "x-anything, x-else"
    bad = await client.options(
        "/",
        headers={
            **base,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-ok, bad header",
        },
    )
    assert bad.status_code == 403
    assert "access-control-allow-headers" not in bad.headers


async def test_null_origin_only_when_listed(make_client: ClientFactory) -> None:
    client = make_client(cors(allow_origins=["null"]))
    response = await client.get("/items/1", headers={"Origin": "null"})
    assert response.headers["access-control-allow-origin"] == "null"


async def test_wildcard_without_credentials_answers_star_and_does_not_vary(
    make_client: ClientFactory,
) -> None:
    client = make_client(cors(allow_origins="*"))
    response = await client.get("/items/1", headers={"Origin": "https://anything.test"})
    assert response.headers["access-control-allow-origin"] == "*"
    assert "vary" not in response.headers
    assert "vary" not in (await client.get("/items/1")).headers


async def test_credentials_reflect_the_exact_origin(make_client: ClientFactory) -> None:
    client = make_client(cors(allow_credentials=True))
    response = await client.get("/items/1", headers={"Origin": "https://a.example.com"})
    assert response.headers["access-control-allow-origin"] == "https://a.example.com"
    assert response.headers["access-control-allow-credentials"] == "true"
    preflight = await client.options(
        "/items/1",
        headers={"Origin": "https://a.example.com", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.headers["access-control-allow-credentials"] == "true"


async def test_vary_origin_even_without_an_origin_header(make_client: ClientFactory) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"vary", b"Accept")]}
        )
        await send({"type": "http.response.body", "body": b"{}"})

    response = await make_client(cors(app)).get("/")
    assert response.headers["vary"] == "Accept, Origin"


async def test_app_cors_headers_are_replaced_not_duplicated(make_client: ClientFactory) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"access-control-allow-origin", b"*"),
            (b"access-control-allow-credentials", b"true"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    response = await make_client(cors(app)).get("/", headers={"Origin": "https://evil.test"})
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-credentials" not in response.headers
    response = await make_client(cors(app)).get("/", headers={"Origin": "https://a.example.com"})
    assert response.headers.get_list("access-control-allow-origin") == ["https://a.example.com"]


async def test_cors_headers_on_500_429_and_503(make_client: ClientFactory, framework: str) -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    stack = cors(
        ErrorMiddleware(
            ConcurrencyLimitMiddleware(
                RateLimitMiddleware(build_app(framework), policy="1/minute", registry=registry),
                max_concurrency=5,
                registry=registry,
            )
        )
    )
    client = make_client(stack)
    origin = {"Origin": "https://a.example.com"}
    crashed = await client.get("/boom", headers=origin)
    assert crashed.status_code == 500
    limited = await client.get("/items/1", headers=origin)
    assert limited.status_code == 429
    for response in (crashed, limited):
        assert response.headers["access-control-allow-origin"] == "https://a.example.com"
        assert "Retry-After" in response.headers["access-control-expose-headers"]
        assert "Origin" in response.headers["vary"]


async def test_an_overloaded_503_is_readable_cross_origin(make_client: ClientFactory) -> None:
    import asyncio

    from prometheus_client import CollectorRegistry

    release = asyncio.Event()
    entered = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        entered.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    shed = ConcurrencyLimitMiddleware(app, max_concurrency=1, registry=CollectorRegistry())
    client = make_client(cors(shed))
    first = asyncio.create_task(client.get("/"))
    await entered.wait()
    response = await client.get("/", headers={"Origin": "https://a.example.com"})
    release.set()
    await first
    assert response.status_code == 503
    assert response.headers["access-control-allow-origin"] == "https://a.example.com"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"allow_origins": "*", "allow_credentials": True}, "every site"),
        (
            {"allow_origins": ["https://a.example.com", "*"], "allow_credentials": True},
            "every site",
        ),
        ({"allow_origins": ""}, "empty"),
        ({"allow_origins": "https://example.com/"}, "no\\s+path"),
        ({"allow_origins": "example.com"}, "not an origin"),
        ({"allow_origins": "https://*.com"}, "at least one dot"),
        ({"allow_origins": "https://a*.example.com"}, "subdomain pattern"),
        ({"allow_origins": "https://*"}, "subdomain pattern"),
        ({"allow_origins": "*.example.com"}, "subdomain pattern"),
        ({"allow_origins": "https://user@example.com"}, "not an origin"),
        ({"allow_origins": "https://a.test", "allow_methods": ["GET POST"]}, "token"),
        ({"allow_origins": "https://a.test", "max_age": -1}, "max_age"),
        (
            {"allow_origins": "https://a.test", "allow_credentials": True, "expose_headers": "*"},
            "literally",
        ),
    ],
)
def test_unsafe_or_malformed_configuration_is_refused(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        CORSMiddleware(build_app("raw"), **options)  # type: ignore[arg-type]


def test_configured_origins_are_normalised() -> None:
    matcher = OriginMatcher(
        "HTTPS://App.Example.org:443, http://h.test:8080, https://*.Example.com:443"
    )
    assert matcher.matches("https://app.example.org")
    assert matcher.matches("http://h.test:8080")
    assert matcher.matches("https://x.example.com")


# -- the subdomain matcher, property-based ------------------------------------------------------

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
PATTERN = OriginMatcher(["https://*.example.com"])


def reference_match(origin: str) -> bool:
    """An independent statement of the rule: https, one or more DNS labels, then the domain."""
    scheme, sep, host = origin.partition("://")
    if scheme != "https" or not sep or not host.endswith(".example.com"):
        return False
    labels = host[: -len(".example.com")].split(".")
    return all(re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", label) for label in labels)


@given(st.lists(LABEL, min_size=1, max_size=4))
def test_every_subdomain_matches(labels: list[str]) -> None:
    host = ".".join(labels)
    assert PATTERN.matches(f"https://{host}.example.com")
    assert not PATTERN.matches(f"http://{host}.example.com")
    assert not PATTERN.matches(f"https://{host}.example.com.{labels[0]}.io")
    assert not PATTERN.matches(f"https://{host}example.com")
    assert not PATTERN.matches(f"https://{host}-example.com")


@given(
    st.text(alphabet="abcxyz019-._:/\\@%*? \n", max_size=24),
    st.sampled_from(["", "/", ":443", ".evil", "%00", "\n", "@evil.io", "\\", ".", "?"]),
)
def test_matcher_agrees_with_the_reference(prefix: str, suffix: str) -> None:
    for origin in (f"https://{prefix}.example.com{suffix}", f"{prefix}example.com{suffix}"):
        assert PATTERN.matches(origin) == reference_match(origin), origin


@given(st.text(max_size=64))
def test_arbitrary_text_never_matches_outside_the_domain(origin: str) -> None:
    if PATTERN.matches(origin):
        assert origin.startswith("https://")
        assert origin.endswith(".example.com")


# -- options ---------------------------------------------------------------------------------


def test_options_object_and_keywords_configure_the_same_middleware() -> None:
    by_keyword = CORSMiddleware(build_app("raw"), allow_origins="https://a.test, https://b.test")
    options = CORSOptions(allow_origins=["https://a.test", "https://b.test"])
    by_object = CORSMiddleware(build_app("raw"), options=options)
    assert by_keyword.options == by_object.options == options
    assert options.allow_origins == ("https://a.test", "https://b.test")
    # The defaults, written once in the dataclass.
    assert options.allow_methods == DEFAULT_ALLOW_METHODS
    assert options.expose_headers == DEFAULT_EXPOSE_HEADERS
    assert (options.allow_credentials, options.max_age) == (False, 600)


def test_lists_are_normalised_once() -> None:
    options = CORSOptions(allow_origins="https://a.test", allow_methods=" get, POST,GET ")
    assert options.allow_methods == ("GET", "POST")


def test_allow_origins_is_required() -> None:
    with pytest.raises(TypeError, match="allow_origins"):
        CORSMiddleware(build_app("raw"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"allow_origins": 5}, "allow_origins=5: not a list of strings"),
        ({"allow_origins": "https://a.test", "max_age": True}, "max_age=True: not an integer"),
        (
            {"allow_origins": "https://a.test", "allow_headers": ["X Y"]},
            "allow_headers='X Y': not a valid HTTP token",
        ),
    ],
)
def test_invalid_options_are_refused_when_made(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        CORSOptions(**options)  # type: ignore[arg-type]


def test_the_keywords_are_the_options_fields() -> None:
    assert get_type_hints(CORSKeywords) == get_type_hints(CORSOptions)
