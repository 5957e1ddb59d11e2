"""SecurityHeadersMiddleware: defaults, HTML-only CSP, HTTPS-only HSTS, app headers win."""

from __future__ import annotations

import re
from typing import get_type_hints

import httpx
import pytest

from prodkit import ConfigurationError
from prodkit.asgi import ASGIApp, Receive, Scope, Send
from prodkit.security_headers import (
    DEFAULT_CSP,
    SecurityHeadersKeywords,
    SecurityHeadersMiddleware,
    SecurityHeadersOptions,
)
from tests.apps import build_app
from tests.conftest import ClientFactory


def responding(content_type: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", content_type), *(extra or [])]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"<p>hi</p>"})

    return app


async def https_get(app: ASGIApp, path: str = "/") -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
        return await client.get(path)


async def test_defaults_on_a_json_response_over_http(
    framework: str, make_client: ClientFactory
) -> None:
    response = await make_client(SecurityHeadersMiddleware(build_app(framework))).get("/items/1")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"
    assert "strict-transport-security" not in response.headers  # plain HTTP: no HSTS
    assert "content-security-policy" not in response.headers  # JSON is not rendered


async def test_hsts_over_https() -> None:
    response = await https_get(SecurityHeadersMiddleware(responding(b"application/json")))
    assert response.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"


async def test_hsts_can_be_forced_configured_or_disabled(make_client: ClientFactory) -> None:
    forced = SecurityHeadersMiddleware(
        responding(b"text/plain"),
        hsts_https_only=False,
        hsts_max_age=600,
        hsts_include_subdomains=False,
    )
    assert (await make_client(forced).get("/")).headers[
        "strict-transport-security"
    ] == "max-age=600"
    off = SecurityHeadersMiddleware(responding(b"text/plain"), hsts_max_age=None)
    assert "strict-transport-security" not in (await https_get(off)).headers
    preload = SecurityHeadersMiddleware(responding(b"text/plain"), hsts_preload=True)
    assert (await https_get(preload)).headers["strict-transport-security"].endswith("; preload")


async def test_strict_csp_on_html_only(make_client: ClientFactory) -> None:
    html = await make_client(
        SecurityHeadersMiddleware(responding(b"text/html; charset=utf-8"))
    ).get("/")
    assert html.headers["content-security-policy"] == DEFAULT_CSP
    assert "frame-ancestors 'none'" in html.headers["content-security-policy"]
    assert html.headers["cross-origin-opener-policy"] == "same-origin"
    text = await make_client(SecurityHeadersMiddleware(responding(b"text/plain"))).get("/")
    assert "content-security-policy" not in text.headers


async def test_headers_the_app_set_are_never_overwritten(make_client: ClientFactory) -> None:
    app = responding(
        b"text/html",
        [
            (b"content-security-policy", b"default-src https://cdn.example.com"),
            (b"x-frame-options", b"SAMEORIGIN"),
            (b"referrer-policy", b"origin"),
            (b"strict-transport-security", b"max-age=5"),
        ],
    )
    response = await https_get(SecurityHeadersMiddleware(app))
    assert response.headers.get_list("content-security-policy") == [
        "default-src https://cdn.example.com"
    ]
    assert response.headers.get_list("x-frame-options") == ["SAMEORIGIN"]
    assert response.headers.get_list("referrer-policy") == ["origin"]
    assert response.headers.get_list("strict-transport-security") == ["max-age=5"]
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_each_header_can_be_disabled(make_client: ClientFactory) -> None:
    app = SecurityHeadersMiddleware(
        responding(b"text/html"),
        content_type_options=None,
        referrer_policy=None,
        frame_options=None,
        content_security_policy=None,
        cross_origin_opener_policy=None,
        hsts_max_age=None,
    )
    response = await https_get(app)
    for name in (
        "x-content-type-options",
        "referrer-policy",
        "x-frame-options",
        "content-security-policy",
        "cross-origin-opener-policy",
        "strict-transport-security",
    ):
        assert name not in response.headers


async def test_error_responses_get_the_headers_too(make_client: ClientFactory) -> None:
    from prodkit import ErrorMiddleware

    response = await make_client(SecurityHeadersMiddleware(ErrorMiddleware(build_app("raw")))).get(
        "/boom"
    )
    assert response.status_code == 500
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hsts_max_age": -1}, "hsts_max_age"),
        ({"hsts_preload": True, "hsts_max_age": 600}, "preload"),
        ({"hsts_preload": True, "hsts_include_subdomains": False}, "preload"),
        ({"referrer_policy": ""}, "referrer_policy"),
        ({"content_security_policy": "default-src 'self'\r\nX-Evil: 1"}, "content_security_policy"),
    ],
)
def test_configuration_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SecurityHeadersMiddleware(build_app("raw"), **options)  # type: ignore[arg-type]


# -- options ---------------------------------------------------------------------------------


async def test_options_object_and_keywords_configure_the_same_middleware() -> None:
    by_keyword = SecurityHeadersMiddleware(responding(b"text/html"), frame_options="SAMEORIGIN")
    by_object = SecurityHeadersMiddleware(
        responding(b"text/html"), options=SecurityHeadersOptions(frame_options="SAMEORIGIN")
    )
    assert by_keyword.options == by_object.options
    for middleware in (by_keyword, by_object):
        response = await https_get(middleware)
        assert response.headers["x-frame-options"] == "SAMEORIGIN"
        assert response.headers["content-security-policy"] == DEFAULT_CSP


def test_the_defaults_are_the_options_defaults() -> None:
    assert SecurityHeadersMiddleware(build_app("raw")).options == SecurityHeadersOptions()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hsts_max_age": -1}, "hsts_max_age=-1: negative; write an integer of 0 or more"),
        ({"hsts_max_age": "1y"}, "hsts_max_age='1y': not an integer"),
        ({"frame_options": "DENY\n"}, "frame_options='DENY\\n': not a non-empty printable"),
        ({"hsts_preload": True, "hsts_max_age": 600}, "hsts_preload=True: the preload list"),
    ],
)
def test_invalid_options_are_refused_when_made(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        SecurityHeadersOptions(**options)  # type: ignore[arg-type]


def test_no_hsts_needs_no_preload_check() -> None:
    assert SecurityHeadersOptions(hsts_max_age=None, hsts_preload=True).hsts_max_age is None


def test_the_keywords_are_the_options_fields() -> None:
    assert get_type_hints(SecurityHeadersKeywords) == get_type_hints(SecurityHeadersOptions)
