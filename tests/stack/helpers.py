"""What the stack's tests share: the app under the stack, a layer of their own, the recommended list."""

from __future__ import annotations

import random
from typing import Any

from prometheus_client import CollectorRegistry

from prodkit import (
    AccessLogMiddleware,
    CacheMiddleware,
    ConcurrencyLimitMiddleware,
    CORSMiddleware,
    ErrorMiddleware,
    GracefulShutdownMiddleware,
    HealthMiddleware,
    HTTPMetricsMiddleware,
    IdempotencyMiddleware,
    MetricsEndpointMiddleware,
    RateLimitMiddleware,
    RequestIdMiddleware,
    RequestTimeoutMiddleware,
    SecurityHeadersMiddleware,
    Stack,
    StackSettings,
    caller_from_header,
)
from prodkit.asgi import ASGIApp, Message, Receive, Scope, Send, set_header
from prodkit.cache import CacheRule

CACHE_ROUTES = {"/items/{item_id}": CacheRule(ttl=60, per_caller=True)}
FULL = StackSettings(cors_origins=("https://app.example.com",))

#: Every layer of the recommended stack, outermost first, and its middleware.
RECOMMENDED = [
    ("request_id", RequestIdMiddleware),
    ("access_log", AccessLogMiddleware),
    ("metrics", HTTPMetricsMiddleware),
    ("metrics_endpoint", MetricsEndpointMiddleware),
    ("security_headers", SecurityHeadersMiddleware),
    ("cors", CORSMiddleware),
    ("errors", ErrorMiddleware),
    ("health", HealthMiddleware),
    ("shutdown", GracefulShutdownMiddleware),
    ("request_timeout", RequestTimeoutMiddleware),
    ("concurrency_limit", ConcurrencyLimitMiddleware),
    ("rate_limit", RateLimitMiddleware),
    ("idempotency", IdempotencyMiddleware),
    ("cache", CacheMiddleware),
]

#: DESIGN.md, "Recommended order": request id → access log → metrics → CORS → errors →
#: shutdown/health → concurrency limit → rate limit → idempotency → cache → app.
DESIGN_ORDER = [
    "request_id",
    "access_log",
    "metrics",
    "cors",
    "errors",
    "health",
    "shutdown",
    "concurrency_limit",
    "rate_limit",
    "idempotency",
    "cache",
]


async def items(scope: Scope, receive: Receive, send: Send) -> None:
    """The app under the stack: ``GET /items/{id}`` and ``POST /items`` answer ``{}``."""
    if scope["type"] != "http":
        return
    status = 201 if scope["method"] == "POST" else 200
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": b"{}"})


class Tag:
    """A layer of the test's own: sets ``X-Layer: <value>`` on the response start."""

    def __init__(self, app: ASGIApp, *, value: str) -> None:
        self.app = app
        self.value = value.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def tagging(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                set_header(headers, b"x-layer", self.value)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, tagging)


def recommended(settings: StackSettings = FULL, **options: Any) -> Stack:
    options.setdefault("registry", CollectorRegistry())
    options.setdefault("cache_routes", CACHE_ROUTES)
    return Stack.recommended(settings, caller=caller_from_header("X-User-Id"), **options)


def some_client() -> tuple[str, int]:
    """A client address of the test's own: rate-limit counters in Redis are keyed by it."""
    return (f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}", 4000)
