"""What a finished request came to: its route is resolved once for every layer that labels it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from prodkit import AccessLogMiddleware, HTTPMetricsMiddleware
from prodkit.asgi import Receive, Scope, Send
from prodkit.testing import capture_logs


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def receive() -> dict[str, object]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def test_the_access_log_and_the_metrics_resolve_one_route_once() -> None:
    asked: list[str] = []

    def resolver(scope: Scope) -> str:
        asked.append(scope["path"])
        return "/items/{id}"

    registry = CollectorRegistry()
    layered = AccessLogMiddleware(
        HTTPMetricsMiddleware(app, registry=registry, route_resolver=resolver),
        route_resolver=resolver,
    )
    sent: list[object] = []

    async def send(message: object) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": "GET", "path": "/items/7", "headers": []}
    with capture_logs() as logs:
        await layered(scope, receive, send)
    assert asked == ["/items/7"]
    [line] = [entry for entry in logs if entry["event"] == "request completed"]
    assert line["route"] == "/items/{id}"
    labels = {"method": "GET", "route": "/items/{id}", "status_code": "200"}
    assert registry.get_sample_value("http_request_duration_seconds_count", labels) == 1


async def test_layers_with_different_resolvers_each_get_their_own_answer() -> None:
    registry = CollectorRegistry()
    layered = AccessLogMiddleware(
        HTTPMetricsMiddleware(app, registry=registry, route_resolver=lambda scope: "/metrics-view"),
        route_resolver=lambda scope: "/log-view",
    )

    async def send(message: object) -> None:
        return None

    scope: Scope = {"type": "http", "method": "GET", "path": "/x", "headers": []}
    with capture_logs() as logs:
        await layered(scope, receive, send)
    [line] = [entry for entry in logs if entry["event"] == "request completed"]
    assert line["route"] == "/log-view"
    labels = {"method": "GET", "route": "/metrics-view", "status_code": "200"}
    assert registry.get_sample_value("http_request_duration_seconds_count", labels) == 1
