"""Apps the throughput benchmark serves: one Starlette endpoint, bare and in the full stack."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Gauge, Histogram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from prodkit import StackSettings, caller_from_header, configure_logging
from prodkit.asgi import ASGIApp, Message, Receive, Scope, Send
from prodkit.cache import CacheRule
from prodkit.stack import recommended_stack


async def item(request: Request) -> JSONResponse:
    return JSONResponse({"id": request.path_params["item_id"], "name": "benchmark item"})


def starlette_app() -> Starlette:
    """A bare Starlette app with ``GET /items/{item_id}``."""
    return Starlette(routes=[Route("/items/{item_id}", item)])


def bare() -> ASGIApp:
    """Factory for ``uvicorn --factory``: the bare app."""
    return starlette_app()


def full_stack() -> ASGIApp:
    """Factory for ``uvicorn --factory``: the same app in the whole recommended stack.

    In-memory stores, one JSON access line per request on stdout (the throughput benchmark
    sends a server's output to a file, as it does for uvicorn's own access log), and the route
    cached when ``BENCH_CACHE=1``.
    """
    configure_logging("INFO", "json")
    cache = (
        {"/items/{item_id}": CacheRule(ttl=60)} if os.environ.get("BENCH_CACHE") == "1" else None
    )
    return recommended_stack(
        starlette_app(),
        StackSettings(rate_limit="1000000/second", max_concurrency=10_000),
        cache_routes=cache,
        caller=caller_from_header("X-User-Id"),
    )


#: The response headers the full stack adds to ``GET /items/42`` (its default security headers,
#: the rate limit's two; the request id is added per request).
_FLOOR_HEADERS = [
    (b"ratelimit-policy", b'"default";q=1000000;w=1'),
    (b"ratelimit", b'"default";r=999999;t=0'),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class _Floor:
    """One hand-written layer doing the least the stack's observability does: a random request
    id, the stack's response headers, an in-flight gauge, a duration histogram and a JSON line
    per request. No options, no checks, no redaction, no structlog: a reference for what any
    pure-Python version of the stack cannot go below, not something to serve."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        registry = CollectorRegistry()
        self.in_flight = Gauge("floor_in_flight", "in flight", registry=registry)
        self.duration = Histogram(
            "floor_duration_seconds", "duration", ["route"], registry=registry
        ).labels("/items/{item_id}")
        self.out = sys.stdout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = os.urandom(16).hex()
        header = (b"x-request-id", request_id.encode())
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *_FLOOR_HEADERS, header]
            await send(message)

        self.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            self.in_flight.dec()
            duration = time.perf_counter() - start
            self.duration.observe(duration)
            line: dict[str, Any] = {
                "request_id": request_id,
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration": duration,
                "event": "request completed",
                "timestamp": time.time(),
            }
            self.out.write(orjson.dumps(line).decode() + "\n")
            self.out.flush()


def floor() -> ASGIApp:
    """Factory for ``uvicorn --factory``: the bare app under :class:`_Floor`, the reference
    ``python -m benchmarks.wire --case floor=benchmarks.apps:floor`` measures the stack by."""
    return _Floor(starlette_app())


def funds_example() -> ASGIApp:
    """Factory for ``uvicorn --factory``: the funds example, its logging as ``prodkit serve``
    configures it (``LOG_LEVEL``, ``LOG_FORMAT``), for servers ``prodkit serve`` does not run
    (uvicorn with h11, or with httptools and no head limit)."""
    from examples.funds.app import create_app

    settings = StackSettings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)


def peer_stack() -> ASGIApp:
    """Factory for ``uvicorn --factory``: the same app behind the typical peer packages.

    asgi-correlation-id, a structlog access logger written as ``BaseHTTPMiddleware`` (one JSON
    line per request on stdout, rendered by the same configuration as prodkit's), starlette-
    exporter, slowapi (memory) and Starlette's CORS, outermost first.
    """
    from asgi_correlation_id import CorrelationIdMiddleware
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.middleware import SlowAPIASGIMiddleware
    from slowapi.util import get_remote_address
    from starlette.middleware.cors import CORSMiddleware
    from starlette_exporter import PrometheusMiddleware as ExporterMiddleware

    from benchmarks.bench_observability import peer_logger_base_http

    configure_logging("INFO", "json")
    app = starlette_app()
    limiter = Limiter(key_func=get_remote_address, default_limits=["1000000/second"])
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    app.add_middleware(SlowAPIASGIMiddleware)
    app.add_middleware(CORSMiddleware, allow_origins=["https://app.example"])
    app.add_middleware(ExporterMiddleware, app_name="bench")
    peer_logger_base_http(app)
    app.add_middleware(CorrelationIdMiddleware)
    return app
