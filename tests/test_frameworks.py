"""Every framework by every case, through the recommended order of layers (issue #14).

Each row builds a fresh app (see :mod:`tests.apps`) wrapped in request id → access log →
metrics → errors → rate limit → idempotency, sends one case's requests, and checks what an
operator reads: the route label in ``/metrics``, the access log line, and the headers. The raw
ASGI app has no router: it names its routes with a resolver (``raw_route_resolver``), the hook
the docs show.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from prodkit import (
    ErrorMiddleware,
    HealthMiddleware,
    MetricsEndpointMiddleware,
    RequestIdMiddleware,
)
from prodkit.asgi import UNMATCHED_ROUTE, ASGIApp, Message, RouteResolver, Scope, problem_type
from prodkit.cache import CacheMiddleware, CacheRule, MemoryCacheStore
from prodkit.idempotency import IdempotencyMiddleware, MemoryIdempotencyStore
from prodkit.logging import AccessLogMiddleware
from prodkit.metrics import HTTPMetricsMiddleware
from prodkit.ratelimit import RateLimitMiddleware
from prodkit.testing import LogOutput, capture_log_output
from tests.apps import (
    FORBIDDEN_DETAIL,
    FRAMEWORKS,
    SECRET_TEXT,
    build_app,
    raw_route_resolver,
)

DURATION_COUNT = "http_request_duration_seconds_count"


@pytest.fixture
def logs() -> Iterator[LogOutput]:
    with capture_log_output() as output:
        yield output


def stacked(framework: str, registry: CollectorRegistry) -> ASGIApp:
    resolver: RouteResolver | None = raw_route_resolver if framework == "raw" else None
    app = build_app(framework)
    app = IdempotencyMiddleware(app, store=MemoryIdempotencyStore(), registry=registry)
    # One request a minute on the items: the second is refused before any router runs.
    app = RateLimitMiddleware(app, routes={"/items/{item_id}": "1/minute"}, registry=registry)
    app = ErrorMiddleware(app)
    app = HTTPMetricsMiddleware(app, registry=registry, route_resolver=resolver)
    app = AccessLogMiddleware(app, route_resolver=resolver)
    return RequestIdMiddleware(app)


def counted(registry: CollectorRegistry, method: str, route: str, status: int) -> float | None:
    labels = {"method": method, "route": route, "status_code": str(status)}
    return registry.get_sample_value(DURATION_COUNT, labels)


def access_line(logs: LogOutput, response: httpx.Response) -> dict[str, Any]:
    [line] = [
        entry
        for entry in logs.events("request completed")
        if entry["request_id"] == response.headers["x-request-id"]
    ]
    return line


def check(
    registry: CollectorRegistry,
    logs: LogOutput,
    response: httpx.Response,
    route: str,
    status: int,
) -> None:
    """The response, its metric sample and its access log line agree on status and route."""
    assert response.status_code == status
    request_id = response.headers["x-request-id"]
    assert len(request_id) == 32
    assert counted(registry, response.request.method, route, status) == 1
    line = access_line(logs, response)
    assert line["route"] == route
    assert line["status"] == status
    assert line["path"] == response.request.url.path


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def client(framework: str, registry: CollectorRegistry) -> Any:
    transport = httpx.ASGITransport(app=stacked(framework, registry), client=("127.0.0.1", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as made:
        yield made


async def test_routed_200_is_labelled_with_the_template(
    client: httpx.AsyncClient, registry: CollectorRegistry, logs: LogOutput
) -> None:
    response = await client.get("/items/42")
    check(registry, logs, response, "/items/{item_id}", 200)
    assert response.json()["request_id"] == response.headers["x-request-id"]


async def test_404_is_unmatched(
    client: httpx.AsyncClient, registry: CollectorRegistry, logs: LogOutput
) -> None:
    response = await client.get("/no/such/path")
    check(registry, logs, response, UNMATCHED_ROUTE, 404)


# -- one error shape: the framework's own errors become problems (issue #22) --------------------


def problem_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The problem ``response`` carries: its status, code, type and request id checked."""
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert (body["status"], body["code"], body["type"]) == (status, code, problem_type(code))
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def test_unknown_route_is_a_404_problem(framework: str, client: httpx.AsyncClient) -> None:
    # Starlette and the raw app answer in text, FastAPI and Litestar in JSON, Quart and Django
    # in HTML: the text is the detail; a page is not scraped, its detail is the status's own.
    body = problem_of(await client.get("/no/such/path"), 404, "NOT_FOUND")
    assert body["detail"] == ("not found" if framework == "raw" else "Not Found")


async def test_wrong_method_is_a_405_problem_that_keeps_allow(client: httpx.AsyncClient) -> None:
    response = await client.get("/echo")
    body = problem_of(response, 405, "METHOD_NOT_ALLOWED")
    assert body["detail"] == "Method Not Allowed"
    assert "POST" in response.headers["allow"]


async def test_a_framework_403_keeps_its_detail(framework: str, client: httpx.AsyncClient) -> None:
    body = problem_of(await client.get("/forbidden"), 403, "FORBIDDEN")
    # Quart and Django render the refusal as an HTML page: not scraped for its text.
    html = framework in ("quart", "django")
    assert body["detail"] == ("Forbidden" if html else FORBIDDEN_DETAIL)


@pytest.mark.parametrize(
    ("framework", "status", "errors"),
    [
        # FastAPI reports every field, located from the body: ["body", "stages", 0, "months"].
        (
            "fastapi",
            422,
            [
                ("/size", "Input should be a valid integer, unable to parse string as an integer"),
                (
                    "/stages/0/months",
                    "Input should be a valid integer, unable to parse string as an integer",
                ),
            ],
        ),
        # Litestar reports the first, with a dotted key: "size", then "stages[0].months".
        ("litestar", 400, [("/size", "Expected `int`, got `str`")]),
    ],
)
async def test_validation_errors_become_pointers(
    framework: str, status: int, errors: list[tuple[str, str]], client: httpx.AsyncClient
) -> None:
    invalid = {"name": "seed", "size": "big", "stages": [{"months": "six"}]}
    body = problem_of(await client.post("/validate", json=invalid), status, "VALIDATION_FAILED")
    assert [(error["pointer"], error["detail"]) for error in body["errors"]] == errors
    assert "big" not in str(body["errors"])  # the input itself is not echoed
    nested = {"name": "seed", "size": 1, "stages": [{"months": "six"}]}
    body = problem_of(await client.post("/validate", json=nested), status, "VALIDATION_FAILED")
    assert body["errors"][0]["pointer"] == "/stages/0/months"
    query = problem_of(await client.get("/stream?delay=soon"), status, "VALIDATION_FAILED")
    assert [error["pointer"] for error in query["errors"]] == ["/query/delay"]
    valid = await client.post("/validate", json={"name": "seed", "size": 1})
    assert (valid.status_code, valid.json()) == (200, {"name": "seed"})


async def test_429_before_routing_keeps_the_template(
    client: httpx.AsyncClient, registry: CollectorRegistry, logs: LogOutput
) -> None:
    await client.get("/items/1")
    refused = await client.get("/items/2")
    check(registry, logs, refused, "/items/{item_id}", 429)
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["request_id"] == refused.headers["x-request-id"]
    assert int(refused.headers["retry-after"]) >= 1


async def test_idempotent_replay_keeps_the_template(
    client: httpx.AsyncClient, registry: CollectorRegistry, logs: LogOutput
) -> None:
    headers = {
        "Idempotency-Key": "key-1",
        "Content-Type": "text/plain",
        "Authorization": "Bearer t",
    }
    first = await client.post("/echo", content=b"payload", headers=headers)
    again = await client.post("/echo", content=b"payload", headers=headers)
    assert first.headers["idempotency-status"] == "created"
    assert again.headers["idempotency-status"] == "replayed"
    assert again.content == first.content == b"payload"
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    assert counted(registry, "POST", "/echo", 200) == 2
    assert access_line(logs, again)["route"] == "/echo"


async def test_a_raised_problem_is_recorded_and_replayed(framework: str) -> None:
    # Issue #15: Starlette and FastAPI send a plain 500 before re-raising, Litestar, Quart and
    # Django render the problem in the framework (tests/apps.py): the client gets the 409
    # either way, and a retry with the key gets the same 409 replayed without the handler.
    app = IdempotencyMiddleware(
        build_app(framework),
        store=MemoryIdempotencyStore(),
        methods=("GET",),
        registry=CollectorRegistry(),
    )
    transport = httpx.ASGITransport(app=RequestIdMiddleware(ErrorMiddleware(app)))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        headers = {"Idempotency-Key": "problem-1", "Authorization": "Bearer t"}
        first = await client.get("/problem", headers=headers)
        again = await client.get("/problem", headers=headers)
    assert first.status_code == 409
    assert first.headers["content-type"] == "application/problem+json"
    assert first.json()["code"] == "DEMO_CONFLICT"
    assert first.headers["idempotency-status"] == "created"
    assert "idempotency-stored" not in first.headers
    assert again.status_code == 409
    assert again.headers["idempotency-status"] == "replayed"
    assert again.content == first.content


async def test_raised_exception_is_one_problem_and_one_log_line(
    framework: str, client: httpx.AsyncClient, registry: CollectorRegistry, logs: LogOutput
) -> None:
    response = await client.get("/boom")
    check(registry, logs, response, "/boom", 500)
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "INTERNAL_ERROR"
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert SECRET_TEXT not in response.text
    # Django answers the exception itself and logs it through ``django.request``; every other
    # framework lets prodkit's ErrorMiddleware see it (Litestar while answering it).
    event = "Internal Server Error: /boom" if framework == "django" else "unhandled exception"
    [logged] = [
        entry
        for entry in logs.events()
        if entry.get("level") == "error" and entry["event"] != "request completed"
    ]
    assert logged["event"] == event
    assert logged["request_id"] == response.headers["x-request-id"]
    # The traceback as Python prints it (redacted, never with local variables).
    assert logged["exception"].startswith("Traceback (most recent call last):")
    assert "RuntimeError" in logged["exception"]


async def test_prefixed_sub_application_keeps_its_prefix(
    client: httpx.AsyncClient, registry: CollectorRegistry, logs: LogOutput
) -> None:
    response = await client.get("/sub/things/7")
    check(registry, logs, response, "/sub/things/{thing_id}", 200)
    assert response.text == "thing"


async def test_websocket_handshake_carries_the_request_id(
    framework: str, registry: CollectorRegistry
) -> None:
    if framework == "django":
        pytest.skip("Django's ASGI handler serves HTTP only")
    sent = await open_websocket(stacked(framework, registry), "/ws")
    [accept] = [message for message in sent if message["type"] == "websocket.accept"]
    headers = dict(accept["headers"])
    assert len(headers[b"x-request-id"]) == 32
    assert {"type": "websocket.send", "text": "hi"} in [
        {key: message[key] for key in ("type", "text")}
        for message in sent
        if message["type"] == "websocket.send"
    ]


async def open_websocket(app: ASGIApp, path: str) -> list[Message]:
    """Connect, then read what the app sends until it closes the socket."""
    scope: Scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}},
    }
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    await inbox.put({"type": "websocket.connect"})
    sent: list[Message] = []
    closed = asyncio.Event()

    async def receive() -> Message:
        return await inbox.get()

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "websocket.close":
            await inbox.put({"type": "websocket.disconnect", "code": 1000})
            closed.set()

    async def serve() -> None:
        await app(scope, receive, send)

    task = asyncio.create_task(serve())
    # Bounded, so that a socket left open fails the test rather than hanging it.
    await asyncio.wait_for(closed.wait(), 10)
    await asyncio.wait_for(task, 10)
    return sent


# -- an app served under a root_path names its own paths (issue #14) --------------------------


async def test_paths_are_matched_below_the_root_path(
    registry: CollectorRegistry, logs: LogOutput
) -> None:
    app = build_app("starlette")
    app = HealthMiddleware(app)
    app = MetricsEndpointMiddleware(app, registry=registry)
    app = HTTPMetricsMiddleware(app, registry=registry, exclude_paths=["/metrics", "/items/*"])
    app = AccessLogMiddleware(app, exclude_paths=["/livez"])
    transport = httpx.ASGITransport(app=RequestIdMiddleware(app), root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        live = await client.get("/api/livez")
        item = await client.get("/api/items/3")
        exposition = await client.get("/api/metrics")
    assert live.status_code == 200
    assert live.json()["status"] == "pass"
    assert item.status_code == 200
    assert exposition.status_code == 200
    assert "http_request_duration_seconds" in exposition.text
    # /livez is not logged; /items/3 is logged but not measured, /livez is measured.
    assert [line["path"] for line in logs.events("request completed")] == [
        "/api/items/3",
        "/api/metrics",
    ]
    assert counted(registry, "GET", "/livez", 200) == 1
    assert counted(registry, "GET", "/items/{item_id}", 200) is None


# Per-route options are written as the app declares its routes, also under a root_path. The raw
# app routes on the full path, so it is not served under one.
ROOTED = [framework for framework in FRAMEWORKS if framework != "raw"]


def rooted_client(app: ASGIApp) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, root_path="/api", client=("127.0.0.1", 5000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.mark.parametrize("framework", ROOTED)
async def test_cache_routes_are_matched_below_the_root_path(
    framework: str, registry: CollectorRegistry
) -> None:
    cache = CacheMiddleware(
        build_app(framework),
        store=MemoryCacheStore(),
        routes={"/items/{item_id}": CacheRule(ttl=60, tags=("items", "item:{item_id}"))},
        invalidate={"/echo": ["items"]},
        registry=registry,
    )
    async with rooted_client(RequestIdMiddleware(cache)) as client:
        first = await client.get("/api/items/3")
        hit = await client.get("/api/items/3")
        # The tag filled from the path below the root_path reaches the entry.
        await cache.invalidate_tags(["item:3"])
        after_tag = await client.get("/api/items/3")
        # A write to a template declared below the root_path invalidates the route's tags.
        write = await client.post("/api/echo", content=b"x", headers={"Content-Type": "text/plain"})
        after_write = await client.get("/api/items/3")
        other = await client.get("/api/items/4")
    assert first.status_code == 200
    assert first.json()["id"] == "3"
    assert first.headers["x-cache"] == "MISS"
    assert hit.headers["x-cache"] == "HIT"
    assert hit.content == first.content
    assert after_tag.headers["x-cache"] == "MISS"
    assert after_tag.json()["request_id"] != first.json()["request_id"]
    assert write.status_code == 200
    assert after_write.headers["x-cache"] == "MISS"
    assert other.headers["x-cache"] == "MISS"
    assert other.json()["id"] == "4"
    labels = {"route": "/items/{item_id}", "outcome": "hit"}
    assert registry.get_sample_value("prodkit_cache_requests_total", labels) == 1


@pytest.mark.parametrize("framework", ROOTED)
async def test_idempotency_routes_are_matched_below_the_root_path(framework: str) -> None:
    app = IdempotencyMiddleware(
        build_app(framework),
        store=MemoryIdempotencyStore(),
        routes=["/echo"],
        required=["/echo"],
        registry=CollectorRegistry(),
    )
    headers = {"Content-Type": "text/plain"}
    keyed = {**headers, "Idempotency-Key": "key-1", "Authorization": "Bearer t"}
    async with rooted_client(RequestIdMiddleware(app)) as client:
        missing = await client.post("/api/echo", content=b"payload", headers=headers)
        first = await client.post("/api/echo", content=b"payload", headers=keyed)
        again = await client.post("/api/echo", content=b"payload", headers=keyed)
    assert missing.status_code == 400
    assert missing.json()["code"] == "IDEMPOTENCY_KEY_MISSING"
    assert first.headers["idempotency-status"] == "created"
    assert again.headers["idempotency-status"] == "replayed"
    assert again.content == first.content == b"payload"


@pytest.mark.parametrize("framework", ROOTED)
async def test_rate_limit_routes_are_matched_below_the_root_path(
    framework: str, registry: CollectorRegistry
) -> None:
    app = RateLimitMiddleware(
        build_app(framework), routes={"/items/{item_id}": "1/minute"}, registry=registry
    )
    async with rooted_client(RequestIdMiddleware(app)) as client:
        allowed = await client.get("/api/items/1")
        refused = await client.get("/api/items/2")
        elsewhere = await client.get("/api/echo")
    assert allowed.status_code == 200
    assert refused.status_code == 429
    assert elsewhere.status_code != 429


async def test_litestar_mounted_in_starlette_keeps_the_mount_prefix(
    registry: CollectorRegistry, logs: LogOutput
) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    app: ASGIApp = Starlette(routes=[Mount("/v1", build_app("litestar"))])
    app = RateLimitMiddleware(app, routes={"/v1/items/{item_id}": "1/minute"}, registry=registry)
    app = ErrorMiddleware(app)
    app = HTTPMetricsMiddleware(app, registry=registry)
    app = RequestIdMiddleware(AccessLogMiddleware(app))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        routed = await client.get("/v1/items/42")
        refused = await client.get("/v1/items/43")  # answered before any router runs
        missing = await client.get("/v1/no/such/path")
    assert routed.json()["id"] == "42"
    assert counted(registry, "GET", "/v1/items/{item_id}", 200) == 1
    assert access_line(logs, routed)["route"] == "/v1/items/{item_id}"
    # Litestar rewrites the shared scope's path below its root_path; the log keeps the request's.
    assert access_line(logs, routed)["path"] == "/v1/items/42"
    assert refused.status_code == 429
    assert counted(registry, "GET", "/v1/items/{item_id}", 429) == 1
    assert access_line(logs, refused)["route"] == "/v1/items/{item_id}"
    assert counted(registry, "GET", UNMATCHED_ROUTE, 404) == 1
    assert access_line(logs, missing)["route"] == UNMATCHED_ROUTE
