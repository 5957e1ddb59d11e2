"""Traffic protection: rate limiting (prodkit memory/Redis vs slowapi), CORS (vs Starlette), shedding.

All cases run on the same Starlette app; ``added µs`` is the cost over bare Starlette. Redis
cases run only when ``PRODKIT_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) answers.
Quotas are large enough that no request is ever limited: the figures are the price of the
check on the happy path.
"""

from __future__ import annotations

import os
import socket
import uuid
from urllib.parse import urlsplit

from benchmarks.bench_core import starlette_app
from benchmarks.harness import Case
from prodkit import ConcurrencyLimitMiddleware, CORSMiddleware, SecurityHeadersMiddleware
from prodkit.asgi import ASGIApp
from prodkit.cors import DEFAULT_EXPOSE_HEADERS
from prodkit.ratelimit import RateLimitMiddleware

REDIS_URL = os.environ.get("PRODKIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
HUGE = "1000000000/day"
ORIGIN = "https://app.example.com"
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
HEADERS = ["Content-Type", "Authorization", "Idempotency-Key", "X-Request-ID"]


def _redis_up() -> bool:
    parts = urlsplit(REDIS_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 0.5):
            return True
    except OSError:
        return False


def prodkit_memory() -> ASGIApp:
    return RateLimitMiddleware(starlette_app(), policy=HUGE)


def prodkit_memory_route() -> ASGIApp:
    """The global policy plus one on the route: two decisions and two header members."""
    return RateLimitMiddleware(starlette_app(), policy=HUGE, routes={"/items/{item_id}": HUGE})


def prodkit_redis(reserve: float = 0.01) -> ASGIApp:
    """The Redis store: by default 1 % of the quota reserved per round trip; ``reserve=0``
    makes one ``EVALSHA`` round trip per request."""
    from prodkit.ratelimit import RedisRateLimitStore

    prefix = f"prodkit-bench:{uuid.uuid4().hex}:"
    store = RedisRateLimitStore.from_url(REDIS_URL, key_prefix=prefix, reserve=reserve)
    return RateLimitMiddleware(starlette_app(), policy=HUGE, store=store)


def slowapi_app(storage_uri: str) -> ASGIApp:
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.middleware import SlowAPIASGIMiddleware
    from slowapi.util import get_remote_address

    app = starlette_app()
    limiter = Limiter(key_func=get_remote_address, default_limits=[HUGE], storage_uri=storage_uri)
    app.state.limiter = limiter  # type: ignore[attr-defined]
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[attr-defined]
    app.add_middleware(SlowAPIASGIMiddleware)  # type: ignore[attr-defined]
    return app


def prodkit_cors() -> ASGIApp:
    return CORSMiddleware(
        starlette_app(),
        allow_origins=[ORIGIN],
        allow_methods=METHODS,
        allow_headers=HEADERS,
        expose_headers=DEFAULT_EXPOSE_HEADERS,
    )


def prodkit_cors_pattern() -> ASGIApp:
    return CORSMiddleware(starlette_app(), allow_origins=["https://*.example.com"])


def starlette_cors() -> ASGIApp:
    from starlette.middleware.cors import CORSMiddleware as StarletteCORS

    return StarletteCORS(
        starlette_app(),
        allow_origins=[ORIGIN],
        allow_methods=METHODS,
        allow_headers=HEADERS,
        expose_headers=list(DEFAULT_EXPOSE_HEADERS),
    )


def starlette_cors_regex() -> ASGIApp:
    from starlette.middleware.cors import CORSMiddleware as StarletteCORS

    return StarletteCORS(starlette_app(), allow_origin_regex=r"https://[a-z0-9-]+\.example\.com")


def cases() -> list[Case]:
    """Rate limiting, CORS, load shedding and security headers over bare Starlette."""
    base = "starlette: bare"
    origin = [("Origin", ORIGIN)]
    preflight = [
        ("Origin", ORIGIN),
        ("Access-Control-Request-Method", "PATCH"),
        ("Access-Control-Request-Headers", "content-type"),
    ]
    result = [
        Case(base, starlette_app),
        Case("rate limit: prodkit memory", prodkit_memory, baseline=base),
        Case("rate limit: prodkit memory, + route", prodkit_memory_route, baseline=base),
        Case("rate limit: slowapi memory", lambda: slowapi_app("memory://"), baseline=base),
    ]
    if _redis_up():
        result += [
            Case("rate limit: prodkit redis", prodkit_redis, baseline=base),
            Case(
                "rate limit: prodkit redis, reserve=0",
                lambda: prodkit_redis(reserve=0),
                baseline=base,
            ),
            Case("rate limit: slowapi redis", lambda: slowapi_app(REDIS_URL), baseline=base),
        ]
    result += [
        Case("cors: prodkit, allowed origin", prodkit_cors, headers=origin, baseline=base),
        Case("cors: starlette, allowed origin", starlette_cors, headers=origin, baseline=base),
        Case("cors: prodkit, no origin", prodkit_cors, baseline=base),
        Case("cors: starlette, no origin", starlette_cors, baseline=base),
        Case(
            "cors: prodkit, subdomain pattern", prodkit_cors_pattern, headers=origin, baseline=base
        ),
        Case("cors: starlette, origin regex", starlette_cors_regex, headers=origin, baseline=base),
        Case(
            "cors: prodkit, preflight",
            prodkit_cors,
            method="OPTIONS",
            headers=preflight,
            expect_status=204,
        ),
        Case("cors: starlette, preflight", starlette_cors, method="OPTIONS", headers=preflight),
        Case(
            "shedding: prodkit concurrency limit",
            lambda: ConcurrencyLimitMiddleware(starlette_app(), max_concurrency=100),
            baseline=base,
        ),
        Case(
            "security headers: prodkit",
            lambda: SecurityHeadersMiddleware(starlette_app()),
            baseline=base,
        ),
    ]
    return result
