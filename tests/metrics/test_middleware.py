"""HTTPMetricsMiddleware, the metrics endpoint and business metrics: real scraped samples."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from prodkit import ConfigurationError, ErrorMiddleware
from prodkit._core.collectors import loop_gauge, loop_histogram
from prodkit.asgi import Message, Receive, Scope, Send
from prodkit.metrics._middleware import (
    BusinessMetrics,
    HTTPMetricsMiddleware,
    MetricsApp,
    MetricsEndpointMiddleware,
    business_counter,
    business_gauge,
    business_histogram,
    remove_dead_process_files,
)
from tests.apps import build_app
from tests.conftest import ClientFactory
from tests.servers import free_port, run_server, server_env

DURATION = "http_request_duration_seconds"
TOKEN = "scrape-me"  # noqa: S105 - a test credential
ROUTE = {
    "raw": "__unmatched__",
    "starlette": "/items/{item_id}",
    "fastapi": "/items/{item_id}",
    "litestar": "/items/{item_id}",
}


def series(
    registry: CollectorRegistry, sample_name: str
) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called ``sample_name``, keyed by its sorted labels."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == sample_name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def count(registry: CollectorRegistry, method: str, route: str, status: str) -> float | None:
    return registry.get_sample_value(
        f"{DURATION}_count", {"method": method, "route": route, "status_code": status}
    )


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
        await client.get("/boom")
    route = "__unmatched__" if framework == "raw" else "/boom"
    assert count(registry, "GET", route, "500") == 1
    exceptions = registry.get_sample_value(
        "http_exceptions_total", {"route": route, "exception_type": "RuntimeError"}
    )
    # Litestar answers the 500 itself: no exception reaches the middleware.
    assert exceptions == (None if framework == "litestar" else 1)


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


# -- the /metrics endpoint -------------------------------------------------------------------


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


# -- business metrics -------------------------------------------------------------------------


async def test_business_counter_for_the_example(
    make_client: ClientFactory, registry: CollectorRegistry
) -> None:
    labels = ["status", "idempotency_status", "model_version"]
    created = business_counter("fund_creations_total", "Funds created.", labels, registry=registry)
    again = business_counter("fund_creations_total", "Funds created.", labels, registry=registry)
    assert created is again
    created.labels(status="201", idempotency_status="created", model_version="v3").inc()
    again.labels(status="201", idempotency_status="replayed", model_version="v3").inc()
    text = (await make_client(MetricsApp(registry)).get("/metrics")).text
    samples = {
        (s.labels["idempotency_status"], s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "fund_creations_total"
    }
    assert samples == {("created", 1.0), ("replayed", 1.0)}


def test_business_metrics_prefix_kinds_and_errors(registry: CollectorRegistry) -> None:
    metrics = BusinessMetrics(registry=registry, metric_prefix="funds_")
    metrics.histogram("projection_seconds", "Projection time.", buckets=[0.1, 1.0]).observe(0.5)
    metrics.gauge("open_rounds", "Rounds open.", ["stage"]).labels("seed").set(3)
    business_histogram("h_seconds", "h", registry=registry).observe(1)
    business_gauge("g_value", "g", registry=registry).set(2)
    assert registry.get_sample_value("funds_projection_seconds_bucket", {"le": "1.0"}) == 1
    assert registry.get_sample_value("funds_open_rounds", {"stage": "seed"}) == 3
    assert registry.get_sample_value("g_value") == 2
    with pytest.raises(ConfigurationError, match="not a Counter"):
        metrics.counter("open_rounds", "clash")
    with pytest.raises(ConfigurationError, match="bad-name"):
        metrics.counter("bad-name", "invalid")
    with pytest.raises(ConfigurationError, match="list of names"):
        metrics.counter("one_total", "x", "status")
    with pytest.raises(ConfigurationError, match="prefix"):
        BusinessMetrics(metric_prefix="bad prefix")


# -- multiprocess mode with real uvicorn workers ----------------------------------------------


@pytest.mark.server
async def test_multiprocess_mode_aggregates_real_uvicorn_workers(tmp_path: Path) -> None:
    multiproc_dir = tmp_path / "prometheus"
    multiproc_dir.mkdir()
    port = free_port()
    args = ["uvicorn", "tests.servers.metrics_app:app", "--host", "127.0.0.1"]
    args += ["--port", str(port), "--workers", "2", "--log-level", "warning"]
    env = {"PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
    with run_server(args, port=port, tmp_path=tmp_path, env=env) as server:
        pids: set[str] = set()
        sent = 0
        limits = httpx.Limits(max_keepalive_connections=0)  # a new connection per request
        async with httpx.AsyncClient(base_url=server.base_url, timeout=20, limits=limits) as client:
            for _ in range(10):  # bounded: stop as soon as both workers have answered
                batch = [client.get(f"/items/{sent + i}") for i in range(20)]
                responses = await asyncio.gather(*batch)
                assert all(r.status_code == 200 for r in responses), server.output()
                pids.update(r.text for r in responses)
                sent += len(responses)
                if len(pids) >= 2:
                    break
            assert len(pids) == 2, f"one worker served everything: {server.output()}"
            unauthorized = await client.get("/metrics")
            assert unauthorized.status_code == 401
            scrape = await client.get("/metrics", headers={"Authorization": "Bearer scrape"})
    assert scrape.status_code == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(scrape.text)
        for sample in family.samples
    }
    labels = (("method", "GET"), ("route", "/items/{item_id}"), ("status_code", "200"))
    assert samples[(f"{DURATION}_count", labels)] == sent  # every worker's requests, one scrape
    assert samples[("demo_orders_total", (("status", "created"),))] == sent
    assert samples[("http_requests_in_flight", (("method", "GET"),))] == 0
    assert not [key for key in samples if key[0].startswith(DURATION) and "/metrics" in str(key)]


def test_names_taken_by_another_library_are_a_configuration_error() -> None:
    from prometheus_client import Histogram

    shared = CollectorRegistry()
    Histogram("http_request_duration_seconds", "someone else's", registry=shared)
    with pytest.raises(ConfigurationError, match="metric_prefix="):
        HTTPMetricsMiddleware(build_app("raw"), registry=shared)
    HTTPMetricsMiddleware(
        build_app("raw"), registry=shared, metric_prefix="prodkit_"
    )  # the way out


def _die_with_one_in_flight(directory: Path) -> int:
    """Run a process that starts a request (in-flight gauge 1) and dies; return its pid."""
    script = (
        "import os\n"
        "from prometheus_client import Gauge\n"
        "g = Gauge('http_requests_in_flight', 'x', ['method'], multiprocess_mode='livesum')\n"
        "g.labels('GET').inc()\n"
        "print(os.getpid())\n"
        "os._exit(0)\n"
    )
    env = {**server_env(), "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, check=True, timeout=60
    )
    return int(done.stdout)


async def test_in_flight_of_a_killed_worker_is_dropped_at_scrape(
    tmp_path: Path, make_client: ClientFactory
) -> None:
    pid = await asyncio.to_thread(_die_with_one_in_flight, tmp_path)
    assert any(str(pid) in name for name in os.listdir(tmp_path))
    response = await make_client(MetricsApp(multiprocess_dir=str(tmp_path))).get("/metrics")
    assert 'http_requests_in_flight{method="GET"}' not in response.text
    assert not any(str(pid) in name for name in os.listdir(tmp_path))
    assert remove_dead_process_files(str(tmp_path)) == []


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


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=50)
@given(
    values=st.lists(
        st.floats(min_value=0, max_value=1e7, allow_nan=False) | st.sampled_from([0.005, 64.0]),
        max_size=40,
    ),
    labels=st.sampled_from([("GET", "/a"), ("POST", "/b")]),
)
def test_loop_histogram_exposes_what_a_prometheus_histogram_does(
    values: list[float], labels: tuple[str, str]
) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    buckets = [0.005, 0.5, 64.0, 1024.0]
    loop = loop_histogram("h", "help", ["m", "r"], registry=ours, buckets=buckets)
    reference = Histogram("h", "help", ["m", "r"], registry=theirs, buckets=buckets)
    for value in values:
        loop.labels(*labels).observe(value)
        reference.labels(*labels).observe(value)

    def samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
        text = generate_latest(registry).decode()
        return [
            (sample.name, sample.labels, round(sample.value, 6))
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if not sample.name.endswith("_created")
        ]

    assert samples(ours) == samples(theirs)
    with pytest.raises(ConfigurationError):
        loop_gauge("h", "help", registry=ours)
