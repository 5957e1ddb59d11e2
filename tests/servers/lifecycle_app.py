"""The app the real-server shutdown tests run (``tests/lifecycle/test_servers.py``).

Configured by environment: ``SHUTDOWN_DRAIN_SECONDS``, ``SHUTDOWN_TIMEOUT_SECONDS``,
``SHUTDOWN_APP_FRAMEWORK`` (``raw``, the default, or ``starlette`` with its own lifespan).
Endpoints: ``/slow?seconds=S``, ``/ok`` (200 ``ok`` with the worker's PID in ``X-PID``),
``/readyz``, ``/livez``, ``/healthz`` through :class:`prodkit.health.HealthMiddleware`.
"""

from __future__ import annotations

import asyncio
import os
from urllib.parse import parse_qs

import structlog

from prodkit.asgi import ASGIApp, Receive, Scope, Send
from prodkit.health import HealthMiddleware
from prodkit.lifecycle import GracefulShutdownMiddleware, LifespanMiddleware, ShutdownCoordinator

structlog.configure(
    processors=[
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
        structlog.processors.JSONRenderer(),
    ]
)


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
                (b"x-pid", str(os.getpid()).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def endpoints(scope: Scope, receive: Receive, send: Send) -> None:
    """``/slow`` and ``/ok``; it does not handle lifespan (LifespanMiddleware answers)."""
    if scope["type"] != "http":
        raise RuntimeError(f"unsupported scope type {scope['type']}")
    if scope["path"] == "/slow":
        seconds = float(parse_qs(scope["query_string"].decode()).get("seconds", ["0"])[0])
        await asyncio.sleep(seconds)
        await _respond(send, 200, b"slept")
    elif scope["path"] == "/ok":
        await _respond(send, 200, b"ok")
    else:
        await _respond(send, 404, b"not found")


def build() -> ASGIApp:
    """The stack under test: lifespan → health → graceful shutdown → endpoints."""
    coordinator = ShutdownCoordinator(
        drain=float(os.environ.get("SHUTDOWN_DRAIN_SECONDS", "1")),
        timeout=float(os.environ.get("SHUTDOWN_TIMEOUT_SECONDS", "4")),
        retry_after=1,
    )
    inner: ASGIApp = endpoints
    if os.environ.get("SHUTDOWN_APP_FRAMEWORK") == "starlette":
        from tests.apps import starlette_app

        framework_app = starlette_app()  # has its own lifespan handling, and /slow

        async def inner(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and scope["path"] == "/ok":
                await endpoints(scope, receive, send)
            else:
                await framework_app(scope, receive, send)

    app: ASGIApp = GracefulShutdownMiddleware(inner, coordinator=coordinator)
    app = HealthMiddleware(app, coordinator=coordinator)
    return LifespanMiddleware(app, coordinator=coordinator)


app = build()
