"""A small service for rollout tests: a baseline or a canary, with a configurable fault rate.

    python -m uvicorn tests.servers.rollout_app:app --host 127.0.0.1 --port PORT

Endpoints: ``GET /api/work`` (200 ``ok``, or a 500 with probability ``FAULT_ERROR_RATE``, after
``FAULT_LATENCY_SECONDS``; faults start ``FAULT_AFTER_SECONDS`` after start-up), ``GET /metrics``, ``GET /readyz`` (503 when ``NOT_READY=1``),
``GET /livez``. Requests are recorded in ``http_request_duration_seconds{method,route,status_code}``
by :class:`DurationRecorder`, a stand-in for prodkit's metrics middleware written here so the
rollout tests do not depend on it.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest

from prodkit._core.routing import remember_root_path, route_template
from prodkit.asgi import ASGIApp, Message, Receive, Scope, Send

Handler = Callable[[Scope], Awaitable[tuple[int, bytes, bytes]]]


class DurationRecorder:
    """Record every HTTP request's duration with its method, route template and status code."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.histogram = Histogram(
            "http_request_duration_seconds",
            "HTTP request duration in seconds.",
            ["method", "route", "status_code"],
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        remember_root_path(scope)
        status = 500
        start = time.perf_counter()

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            self.histogram.labels(scope["method"], route_template(scope), str(status)).observe(
                time.perf_counter() - start
            )


def build_app(
    *, error_rate: float = 0.0, latency: float = 0.0, ready: bool = True, fault_after: float = 0.0
) -> tuple[ASGIApp, CollectorRegistry]:
    """The service and its registry; ``error_rate`` of ``/api/work`` requests answer 500."""
    registry = CollectorRegistry(auto_describe=True)
    faults_from = time.monotonic() + fault_after

    async def work(scope: Scope) -> tuple[int, bytes, bytes]:
        if latency:
            await asyncio.sleep(latency)
        if time.monotonic() >= faults_from and random.random() < error_rate:
            return 500, b"injected fault", b"text/plain"
        return 200, b"ok", b"text/plain"

    async def metrics(scope: Scope) -> tuple[int, bytes, bytes]:
        return 200, generate_latest(registry), CONTENT_TYPE_LATEST.encode()

    async def readyz(scope: Scope) -> tuple[int, bytes, bytes]:
        return (200, b"ready", b"text/plain") if ready else (503, b"not ready", b"text/plain")

    async def livez(scope: Scope) -> tuple[int, bytes, bytes]:
        return 200, b"alive", b"text/plain"

    routes: dict[str, Handler] = {
        "/api/work": work,
        "/metrics": metrics,
        "/readyz": readyz,
        "/livez": livez,
    }

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        handler = routes.get(scope["path"])
        if handler is None:
            status, body, content_type = 404, b"not found", b"text/plain"
        else:
            scope["path_template"] = scope["path"]  # what a router records (Litestar's key)
            status, body, content_type = await handler(scope)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return DurationRecorder(app, registry), registry


app, _registry = build_app(
    error_rate=float(os.environ.get("FAULT_ERROR_RATE", "0")),
    latency=float(os.environ.get("FAULT_LATENCY_SECONDS", "0")),
    ready=os.environ.get("NOT_READY", "") != "1",
    fault_after=float(os.environ.get("FAULT_AFTER_SECONDS", "0")),
)
