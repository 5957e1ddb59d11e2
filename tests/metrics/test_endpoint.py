"""MetricsApp and MetricsEndpointMiddleware: formats, compression, protection, bad input."""

from __future__ import annotations

import gzip
import re
from typing import Any, get_type_hints

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from prodkit import ConfigurationError
from prodkit.asgi import Message
from prodkit.metrics import (
    HTTPMetricsMiddleware,
    MetricsApp,
    MetricsEndpointKeywords,
    MetricsEndpointMiddleware,
    MetricsEndpointOptions,
    business_counter,
)
from tests.apps import build_app
from tests.conftest import ClientFactory

TOKEN = "scrape-me"  # noqa: S105 - a test credential


def _stack(registry: CollectorRegistry, **options: Any) -> MetricsEndpointMiddleware:
    app = HTTPMetricsMiddleware(build_app("starlette"), registry=registry)
    return MetricsEndpointMiddleware(app, registry=registry, **options)


async def test_metrics_endpoint_serves_text_and_is_not_measured(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    client = make_client(HTTPMetricsMiddleware(_stack(registry), registry=registry))
    await client.get("/items/1")
    for _ in range(3):
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    assert set(families) >= {
        "http_request_duration_seconds",
        "http_requests_in_flight",
        "http_request_size_bytes",
        "http_response_size_bytes",
        "http_exceptions",
    }
    routes = {s.labels.get("route") for s in families["http_request_duration_seconds"].samples}
    assert routes == {"/items/{item_id}"}


async def test_openmetrics_by_accept_and_gzip_when_asked(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    client = make_client(_stack(registry))
    await client.get("/items/1")
    response = await client.get(
        "/metrics",
        headers={
            "Accept": "application/openmetrics-text; version=1.0.0",
            "Accept-Encoding": "gzip",
        },
    )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.headers["content-encoding"] == "gzip"
    assert response.text.rstrip().endswith("# EOF")  # httpx decoded the gzip body
    raw = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in raw.headers
    refused = await client.get("/metrics", headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers


async def test_gzip_body_is_valid(registry: CollectorRegistry) -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/metrics",
        "headers": [(b"accept-encoding", b"br, gzip")],
    }
    business_counter("gz_probe_total", "probe", registry=registry).inc()
    await MetricsApp(registry)(scope, receive, send)
    assert b"gz_probe_total 1.0" in gzip.decompress(sent[1]["body"])


async def test_bearer_token_protection(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    client = make_client(_stack(registry, bearer_token=TOKEN))
    missing = await client.get("/metrics")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="metrics"'
    assert missing.json()["code"] == "METRICS_UNAUTHORIZED"
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    basic = await client.get("/metrics", headers={"Authorization": "Basic c2NyYXBlLW1l"})
    assert basic.status_code == 401
    ok = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    assert (await client.get("/items/1")).status_code == 200  # the app is not protected


async def test_allowed_clients(make_client: ClientFactory, registry: CollectorRegistry) -> None:
    app = _stack(registry, allowed_clients=["10.0.0.0/8"])
    inside = make_client(app, client=("10.1.2.3", 1234))
    outside = make_client(app, client=("203.0.113.5", 1234))
    assert (await inside.get("/metrics")).status_code == 200
    forbidden = await outside.get("/metrics")
    assert forbidden.status_code == 403
    assert forbidden.json()["code"] == "METRICS_FORBIDDEN"


async def test_only_get_and_head(make_client: ClientFactory, registry: CollectorRegistry) -> None:
    client = make_client(_stack(registry))
    response = await client.post("/metrics")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.json()["code"] == "METHOD_NOT_ALLOWED"
    head = await client.head("/metrics")
    assert head.status_code == 200
    assert head.content == b""


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bearer_token": ""}, "bearer_token"),
        ({"bearer_token": "has space "}, "bearer_token"),
        ({"allowed_clients": ["nope"]}, "allowed_clients"),
        ({"multiprocess_dir": "/nonexistent/prodkit"}, "does not exist"),
    ],
)
def test_metrics_app_configuration_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        MetricsApp(CollectorRegistry(), **options)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    accept=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/;=.,-+ *", max_size=80)
    | st.sampled_from(
        [
            "application/openmetrics-text; version=abc",
            "text/plain; version=x.y",
            "application/openmetrics-text; version=",
        ]
    ),
    encoding=st.text(alphabet="gzipqdeflat=0.;, *", max_size=30),
)
async def test_any_accept_header_gets_an_exposition(accept: str, encoding: str) -> None:
    registry = CollectorRegistry()
    business_counter("probe_total", "probe", registry=registry).inc()
    transport = httpx.ASGITransport(app=MetricsApp(registry))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get(
            "/metrics", headers={"Accept": accept, "Accept-Encoding": encoding}
        )
    assert response.status_code == 200
    assert "probe_total 1.0" in response.text


# -- options ---------------------------------------------------------------------------------


async def test_options_object_and_keywords_configure_the_same_middleware(
    make_client: ClientFactory,
) -> None:
    registry = CollectorRegistry()
    by_keyword = MetricsEndpointMiddleware(
        build_app("raw"), path="/internal/metrics", registry=registry, bearer_token=TOKEN
    )
    options = MetricsEndpointOptions(
        path="/internal/metrics", registry=registry, bearer_token=TOKEN
    )
    by_object = MetricsEndpointMiddleware(build_app("raw"), options=options)
    assert by_object.options is options
    assert by_keyword.options == options
    for middleware in (by_keyword, by_object):
        client = make_client(middleware)
        refused = await client.get("/internal/metrics")
        scraped = await client.get(
            "/internal/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert (refused.status_code, scraped.status_code) == (401, 200)


def test_the_defaults_are_the_options_defaults() -> None:
    middleware = MetricsEndpointMiddleware(build_app("raw"))
    assert middleware.options == MetricsEndpointOptions()
    assert middleware.path == "/metrics"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"path": "metrics"}, "path='metrics': not a path starting with '/'"),
        ({"bearer_token": ""}, "bearer_token: 0 characters long"),
        ({"bearer_token": " token"}, "bearer_token: spaces at an end"),
        ({"allowed_clients": "10.0.0.0/8, nope"}, "'nope' is not an IP address or network"),
    ],
)
def test_invalid_options_are_refused_when_made(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        MetricsEndpointOptions(**options)


def test_allowed_clients_are_kept_as_a_tuple() -> None:
    options = MetricsEndpointOptions(allowed_clients="10.0.0.0/8, ::1")
    assert options.allowed_clients == ("10.0.0.0/8", "::1")


def test_the_keywords_are_the_options_fields() -> None:
    assert get_type_hints(MetricsEndpointKeywords) == get_type_hints(MetricsEndpointOptions)
