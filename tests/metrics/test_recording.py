"""HTTPMetricsMiddleware: real requests, then the samples its collectors expose."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_type_hints

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, Histogram, generate_latest

from prodkit import ConfigurationError, ErrorMiddleware
from prodkit.asgi import Message, Receive, Scope, Send
from prodkit.metrics import (
    DEFAULT_BUCKETS,
    SIZE_BUCKETS,
    HTTPMetricsKeywords,
    HTTPMetricsMiddleware,
    HTTPMetricsOptions,
)
from tests.apps import build_app
from tests.conftest import ClientFactory
from tests.metrics.helpers import DURATION, count, series
from tests.servers import server_env

ROUTE = {
    "raw": "__unmatched__",
    "starlette": "/items/{item_id}",
    "fastapi": "/items/{item_id}",
    "litestar": "/items/{item_id}",
    "quart": "/items/{item_id}",
    "django": "/items/{item_id}",
}


async def test_duration_is_labelled_with_the_route_template(
    framework: str, make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    client = make_client(HTTPMetricsMiddleware(build_app(framework), registry=registry))
    for item in ("1", "2", "3"):
        assert (await client.get(f"/items/{item}")).status_code == 200
    assert count(registry, "GET", ROUTE[framework], "200") == 3
    assert len(series(registry, f"{DURATION}_count")) == 1
    assert registry.get_sample_value("http_requests_in_flight", {"method": "GET"}) == 0


async def test_a_thousand_unknown_paths_add_one_series(
    framework: str, make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    client = make_client(HTTPMetricsMiddleware(build_app(framework), registry=registry))
    for index in range(1000):
        await client.get(f"/scan/{index}/wp-admin.php")
    assert series(registry, f"{DURATION}_count") == {
        (("method", "GET"), ("route", "__unmatched__"), ("status_code", "404")): 1000.0
    }
    assert len(series(registry, "http_response_size_bytes_count")) == 1


async def test_a_raising_endpoint_records_500_and_the_exception_type(
    framework: str, make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    client = make_client(HTTPMetricsMiddleware(build_app(framework), registry=registry))
    with contextlib.suppress(RuntimeError):  # re-raised to the server, except by Litestar
        await client.get("/boom")  # and Django
    route = "__unmatched__" if framework == "raw" else "/boom"
    assert count(registry, "GET", route, "500") == 1
    exceptions = registry.get_sample_value(
        "http_exceptions_total", {"route": route, "exception_type": "RuntimeError"}
    )
    # Litestar and Django answer the 500 themselves: no exception reaches the middleware.
    assert exceptions == (None if framework in ("litestar", "django") else 1)


async def test_an_exception_before_the_response_is_re_raised(
    registry: CollectorRegistry,
) -> None:
    app = HTTPMetricsMiddleware(build_app("raw"), registry=registry)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with pytest.raises(RuntimeError):
            await client.get("/boom")
    assert registry.get_sample_value("http_requests_in_flight", {"method": "GET"}) == 0


async def test_behind_error_middleware_the_500_is_counted_once(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    app = HTTPMetricsMiddleware(ErrorMiddleware(build_app("starlette")), registry=registry)
    assert (await make_client(app).get("/boom")).status_code == 500
    assert count(registry, "GET", "/boom", "500") == 1


async def test_streaming_responses_are_timed_to_the_last_chunk(
    framework: str, make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    # tests/apps.py sleeps ``delay`` between the three chunks: 2 x 0.3 s = 0.6 s.
    client = make_client(HTTPMetricsMiddleware(build_app(framework), registry=registry))
    assert (await client.get("/stream?delay=0.2")).text == "abc"
    route = "__unmatched__" if framework == "raw" else "/stream"
    labels = {"method": "GET", "route": route, "status_code": "200"}
    assert (registry.get_sample_value(f"{DURATION}_sum", labels) or 0) >= 0.6
    assert registry.get_sample_value(f"{DURATION}_bucket", {**labels, "le": "0.5"}) == 0


async def test_sizes_are_the_bytes_transferred(
    framework: str, make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    client = make_client(HTTPMetricsMiddleware(build_app(framework), registry=registry))
    body = b"x" * 1000
    response = await client.post("/echo", content=body, headers={"content-type": "text/plain"})
    route = "__unmatched__" if framework == "raw" else "/echo"
    labels = {"method": "POST", "route": route}
    # FastAPI's /echo in tests/apps.py answers 422 without reading the body (its string
    # annotation cannot be resolved): then no request byte was transferred, and none counted.
    received = 0 if response.status_code == 422 else 1000
    assert registry.get_sample_value("http_request_size_bytes_sum", labels) == received
    sent = registry.get_sample_value("http_response_size_bytes_sum", labels)
    assert sent == len(response.content) > 0


async def test_in_flight_counts_requests_being_served(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        entered.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    client = make_client(HTTPMetricsMiddleware(app, registry=registry))
    request = asyncio.create_task(client.delete("/things/1"))
    await entered.wait()
    assert registry.get_sample_value("http_requests_in_flight", {"method": "DELETE"}) == 1
    release.set()
    assert (await request).status_code == 204
    assert registry.get_sample_value("http_requests_in_flight", {"method": "DELETE"}) == 0


async def test_unknown_methods_collapse_to_other(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    client = make_client(HTTPMetricsMiddleware(build_app("raw"), registry=registry))
    for method in ("FOO", "BAR", "PROPFIND", "get-ish"):
        await client.request(method, "/items/1")
    await client.get("/items/1")
    assert set(series(registry, f"{DURATION}_count")) == {
        (("method", "GET"), ("route", "__unmatched__"), ("status_code", "200")),
        (("method", "other"), ("route", "__unmatched__"), ("status_code", "200")),
    }


async def test_client_gone_before_the_response_is_499(registry: CollectorRegistry) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    messages: Iterator[Message] = iter(
        [{"type": "http.request", "body": b"12345", "more_body": True}, {"type": "http.disconnect"}]
    )

    async def receive() -> Message:
        return next(messages)

    async def send(message: Message) -> None:
        raise AssertionError("nothing may be sent")

    scope = {"type": "http", "method": "PUT", "path": "/x", "headers": [], "query_string": b""}
    await HTTPMetricsMiddleware(app, registry=registry)(scope, receive, send)
    assert count(registry, "PUT", "__unmatched__", "499") == 1
    labels = {"method": "PUT", "route": "__unmatched__"}
    assert registry.get_sample_value("http_request_size_bytes_sum", labels) == 5


async def test_exception_type_labels_are_bounded(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise {"/a": ValueError, "/b": KeyError, "/c": TypeError}[scope["path"]]()

    client = make_client(HTTPMetricsMiddleware(app, registry=registry, max_exception_types=1))
    for path in ("/a", "/b", "/c"):
        with pytest.raises(Exception):  # noqa: B017, PT011 - three different types on purpose
            await client.get(path)
    assert series(registry, "http_exceptions_total") == {
        (("exception_type", "ValueError"), ("route", "__unmatched__")): 1.0,
        (("exception_type", "other"), ("route", "__unmatched__")): 2.0,
    }


async def test_prefix_and_registry_are_honoured(make_client: ClientFactory) -> None:
    own = CollectorRegistry()
    client = make_client(
        HTTPMetricsMiddleware(build_app("raw"), registry=own, metric_prefix="svc_")
    )
    await client.get("/items/1")
    labels = {"method": "GET", "route": "__unmatched__", "status_code": "200"}
    assert own.get_sample_value("svc_http_request_duration_seconds_count", labels) == 1
    assert REGISTRY.get_sample_value("svc_http_request_duration_seconds_count", labels) is None


async def test_two_middlewares_on_one_registry_share_the_collectors(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    for _ in range(2):
        client = make_client(HTTPMetricsMiddleware(build_app("raw"), registry=registry))
        await client.get("/items/1")
    assert count(registry, "GET", "__unmatched__", "200") == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"metric_prefix": "1bad"}, "metric_prefix"),
        ({"buckets": [1.0, 0.5]}, "buckets"),
        ({"size_buckets": []}, "size_buckets"),
        ({"max_exception_types": 0}, "max_exception_types"),
        ({"exclude_paths": "/metrics"}, "exclude_paths"),
    ],
)
def test_configuration_errors(
    options: dict[str, Any], message: str, registry: CollectorRegistry
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        HTTPMetricsMiddleware(build_app("raw"), registry=registry, **options)


def test_names_taken_by_another_library_are_a_configuration_error() -> None:

    shared = CollectorRegistry()
    Histogram("http_request_duration_seconds", "someone else's", registry=shared)
    with pytest.raises(ConfigurationError, match="metric_prefix="):
        HTTPMetricsMiddleware(build_app("raw"), registry=shared)
    HTTPMetricsMiddleware(
        build_app("raw"), registry=shared, metric_prefix="prodkit_"
    )  # the way out


async def test_exception_after_the_response_started_keeps_the_status(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise ConnectionError("upstream went away mid-stream")

    with pytest.raises(ConnectionError):
        await make_client(HTTPMetricsMiddleware(app, registry=registry)).get("/export")
    assert count(registry, "GET", "__unmatched__", "200") == 1
    labels = {"route": "__unmatched__", "exception_type": "ConnectionError"}
    assert registry.get_sample_value("http_exceptions_total", labels) == 1
    sizes = {"method": "GET", "route": "__unmatched__"}
    assert registry.get_sample_value("http_response_size_bytes_sum", sizes) == 4


async def test_exceptions_answered_by_an_inner_error_middleware_are_counted(
    registry: CollectorRegistry, make_client: ClientFactory
) -> None:
    # The recommended order puts ErrorMiddleware inside the metrics: the 500 and the
    # exception type must still be recorded.
    from prodkit import ErrorMiddleware, HTTPMetricsMiddleware

    app = HTTPMetricsMiddleware(ErrorMiddleware(build_app("starlette")), registry=registry)
    response = await make_client(app).get("/boom")
    assert response.status_code == 500
    assert (
        registry.get_sample_value(
            "http_exceptions_total", {"route": "/boom", "exception_type": "RuntimeError"}
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "http_request_duration_seconds_count",
            {"method": "GET", "route": "/boom", "status_code": "500"},
        )
        == 1
    )


# One request through the middleware in a fresh interpreter, whose environment decides the mode
# as it imports prometheus-client; it prints its pid and the kinds of collector chosen.
_ONE_REQUEST = """
import asyncio, os
from prometheus_client import CollectorRegistry
from prodkit.metrics import (
    DEFAULT_BUCKETS,
    HTTPMetricsKeywords,
    HTTPMetricsMiddleware,
    HTTPMetricsOptions,
)

async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})

async def receive():
    return {"type": "http.request", "body": b""}

async def send(message):
    pass

middleware = HTTPMetricsMiddleware(app, registry=CollectorRegistry())
scope = {"type": "http", "method": "GET", "path": "/x", "headers": [], "query_string": b""}
asyncio.run(middleware(scope, receive, send))
print(os.getpid(), type(middleware.duration).__name__, type(middleware.in_flight).__name__)
"""


@pytest.mark.parametrize(
    ("variable", "duration", "in_flight"),
    [
        (None, "LoopHistogram", "LoopGauge"),
        ("PROMETHEUS_MULTIPROC_DIR", "Histogram", "Gauge"),
        # deprecated, but prometheus-client still switches to multiprocess mode on it
        ("prometheus_multiproc_dir", "Histogram", "Gauge"),
    ],
)
def test_multiprocess_mode_from_the_environment_chooses_the_collectors(
    variable: str | None, duration: str, in_flight: str, tmp_path: Path
) -> None:
    env = server_env()
    for name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
        env.pop(name, None)
    if variable is not None:
        env[variable] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", _ONE_REQUEST],
        env=env,
        capture_output=True,
        check=True,
        text=True,
        timeout=60,
    )
    pid, *kinds = done.stdout.split()
    assert kinds == [duration, in_flight]
    files = set(os.listdir(tmp_path))
    if variable is None:
        assert files == set()
    else:  # only prometheus-client's collectors write the files a scrape sums over workers
        assert {f"histogram_{pid}.db", f"gauge_livesum_{pid}.db"} <= files


# -- the recording path against prometheus-client's own collectors ----------------------------
#
# Outside multiprocess mode the middleware records into LoopHistogram and LoopGauge (no lock, no
# validation per observation). What it exposes must be what prometheus-client's Histogram and
# Gauge expose after observing the same requests: the sizes byte for byte, the in-flight gauge,
# and one duration per request in the series of its method, route and status.

_REQUESTS = st.lists(
    st.tuples(
        st.sampled_from(["GET", "POST", "PUT", "PURGE"]),  # PURGE is counted as "other"
        st.sampled_from(["/items/1", "/items/2", "/orders/7", "/nowhere"]),
        st.binary(max_size=3000),  # request body
        st.integers(0, 20_000),  # response body bytes
        st.sampled_from([200, 201, 404, 500]),
    ),
    min_size=1,
    max_size=12,
)


def _template(scope: Scope) -> str | None:
    path: str = scope["path"]
    return {"/items": "/items/{id}", "/orders": "/orders/{id}"}.get(path.rsplit("/", 1)[0])


def _exposed(registry: CollectorRegistry, *names: str) -> list[str]:
    """The exposition's TYPE and sample lines of ``names``, in order, without ``_created``."""
    lines = generate_latest(registry).decode().split("\n")
    return [
        line
        for name in names
        for line in lines
        if line.removeprefix("# TYPE ").startswith(name) and "_created" not in line
    ]


@settings(deadline=None)  # behaviour, never time: a busy machine is slow
@given(requests=_REQUESTS)
async def test_the_recorded_metrics_are_what_prometheus_clients_collectors_expose(
    requests: list[tuple[str, str, bytes, int, int]],
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        status, size = scope["state"]
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * size})

    ours, theirs = CollectorRegistry(), CollectorRegistry()
    middleware = HTTPMetricsMiddleware(app, registry=ours, route_resolver=_template)
    sizes = [
        Histogram(name, "help", ["method", "route"], registry=theirs, buckets=SIZE_BUCKETS)
        for name in ("http_request_size_bytes", "http_response_size_bytes")
    ]
    in_flight = Gauge("http_requests_in_flight", "help", ["method"], registry=theirs)
    durations: Counter[tuple[str, str, str]] = Counter()
    for method, path, body, size, status in requests:
        chunks = [body[:1000], body[1000:]]

        async def receive(chunks: list[bytes] = chunks) -> Message:
            return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

        async def send(message: Message) -> None:
            pass

        scope: Scope = {
            "type": "http",
            "method": method,
            "path": path,
            "headers": [],
            "query_string": b"",
            "state": (status, size),
        }
        await middleware(scope, receive, send)
        label = method if method != "PURGE" else "other"
        route = _template(scope) or "__unmatched__"
        sizes[0].labels(label, route).observe(len(body))
        sizes[1].labels(label, route).observe(size)
        in_flight.labels(label).inc()
        in_flight.labels(label).dec()
        durations[label, route, str(status)] += 1

    names = ("http_request_size_bytes", "http_response_size_bytes", "http_requests_in_flight")
    assert _exposed(ours, *names) == _exposed(theirs, *names)
    counts = series(ours, f"{DURATION}_count")
    assert counts == {
        (("method", m), ("route", r), ("status_code", s)): n for (m, r, s), n in durations.items()
    }


# -- options ---------------------------------------------------------------------------------


async def test_options_object_and_keywords_configure_the_same_middleware(
    make_client: ClientFactory,
) -> None:
    registries = CollectorRegistry(), CollectorRegistry()
    by_keyword = HTTPMetricsMiddleware(build_app("raw"), registry=registries[0], methods=["get"])
    options = HTTPMetricsOptions(registry=registries[1], methods=["get"])
    by_object = HTTPMetricsMiddleware(build_app("raw"), options=options)
    assert by_object.options is options
    for middleware, registry in zip((by_keyword, by_object), registries, strict=True):
        await make_client(middleware).post("/items/1")
        assert count(registry, "other", "__unmatched__", "200") == 1  # only GET is kept


def test_the_defaults_are_the_options_defaults(registry: CollectorRegistry) -> None:
    middleware = HTTPMetricsMiddleware(build_app("raw"), registry=registry)
    assert middleware.options == HTTPMetricsOptions(registry=registry)
    assert middleware.options.buckets == DEFAULT_BUCKETS
    assert middleware.options.exclude_paths == ("/metrics",)
    assert "PATCH" in middleware.methods
    assert middleware.max_exception_types == 50


def test_lists_are_kept_read_once_and_methods_upper_cased() -> None:
    options = HTTPMetricsOptions(
        buckets=[0.1, 1], exclude_paths=iter(["/livez"]), methods="get, post"
    )
    assert (options.buckets, options.exclude_paths) == ((0.1, 1), ("/livez",))
    assert options.methods == frozenset({"GET", "POST"})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"metric_prefix": "my-app_"}, "metric_prefix='my-app_': not a valid start of a metric"),
        ({"buckets": [1.0, 1.0]}, "buckets=[1.0, 1.0]: not in increasing order"),
        ({"size_buckets": [64, "1k"]}, "size_buckets=[64, '1k']: '1k' is not a finite number"),
        ({"methods": ["GET /"]}, "methods='GET /': not a valid HTTP token"),
        ({"max_exception_types": 0}, "max_exception_types=0: less than 1"),
    ],
)
def test_invalid_options_are_refused_when_made(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        HTTPMetricsOptions(**options)


def test_the_keywords_are_the_options_fields() -> None:
    assert get_type_hints(HTTPMetricsKeywords) == get_type_hints(HTTPMetricsOptions)
