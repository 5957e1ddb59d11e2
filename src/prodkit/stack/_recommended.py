"""The recommended layers: which middlewares, in which order, with which options.

``Stack.recommended`` makes a stack's long-lived parts, then asks these for its layers:
:func:`outer_layers` (from the request id down to the errors layer: what every response
passes through) and :func:`inner_layers` (from health down to the cache: what answers, sheds,
limits, replays or caches).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prodkit._core.callers import Caller, caller_from_authorization
from prodkit._core.routing import RouteResolver
from prodkit.cache import CacheMiddleware, CacheRule
from prodkit.cors import DEFAULT_ALLOW_HEADERS, CORSMiddleware
from prodkit.errors import ErrorMiddleware
from prodkit.health import HealthCheck, HealthMiddleware
from prodkit.idempotency import IdempotencyMiddleware
from prodkit.lifecycle import GracefulShutdownMiddleware
from prodkit.logging import AccessLogMiddleware
from prodkit.metrics import HTTPMetricsMiddleware, MetricsEndpointMiddleware
from prodkit.ratelimit import RateLimitMiddleware
from prodkit.requestid import RequestIdMiddleware
from prodkit.security_headers import SecurityHeadersMiddleware
from prodkit.shedding import ConcurrencyLimitMiddleware
from prodkit.stack._layer import Layer
from prodkit.timeouts import RequestTimeoutMiddleware

if TYPE_CHECKING:
    from prodkit.stack._stack import Stack

#: Rate limit when ``RATE_LIMIT`` is unset: generous enough for any single honest client.
DEFAULT_RATE_LIMIT = "6000/minute"
#: In-flight requests per process when ``MAX_CONCURRENCY`` is unset. One Python worker serves
#: a few hundred to a few thousand requests a second, so 100 in flight is at most a fraction
#: of a second of queue: past it a request gets ``503 OVERLOADED`` at once, and the worker is
#: back under its latency target within a second of a spike (with 1,000 it timed out every
#: request for 16 s after one; ``docs/benchmarks.md``). Measure and set ``MAX_CONCURRENCY``
#: to capacity times the latency target.
DEFAULT_MAX_CONCURRENCY = 100


def outer_layers(
    stack: Stack,
    metrics_path: str,
    access_log_exclude: Iterable[str],
    cors_allow_headers: Sequence[str],
) -> list[Layer]:
    """From the request id down to the errors layer: what every response passes through."""
    settings, registry = stack.settings, stack.registry
    layers = [
        Layer("request_id", RequestIdMiddleware),
        Layer(
            "access_log",
            AccessLogMiddleware,
            {"trusted_proxies": settings.trusted_proxies, "exclude_paths": access_log_exclude},
        ),
        Layer(
            "metrics",
            HTTPMetricsMiddleware,
            {"registry": registry, "exclude_paths": (metrics_path,)},
        ),
        Layer(
            "metrics_endpoint",
            MetricsEndpointMiddleware,
            {"path": metrics_path, "registry": registry},
        ),
        Layer("security_headers", SecurityHeadersMiddleware),
    ]
    if settings.cors_origins:
        cors = {
            "allow_origins": settings.cors_origins,
            "allow_headers": [*DEFAULT_ALLOW_HEADERS, "Idempotency-Key", *cors_allow_headers],
        }
        layers.append(Layer("cors", CORSMiddleware, cors))
    layers.append(Layer("errors", ErrorMiddleware))
    return layers


def inner_layers(
    stack: Stack,
    *,
    checks: list[HealthCheck],
    caller: Caller | None,
    cache_routes: Mapping[str, CacheRule] | None,
    idempotency_routes: Iterable[str] | None,
    stored_headers: Sequence[str],
    rate_limit_routes: Mapping[str, Any] | None,
) -> list[Layer]:
    """From health down to the cache: what answers, sheds, limits, replays or caches."""
    settings, registry = stack.settings, stack.registry
    health = {
        "coordinator": stack.coordinator,
        "checks": checks,
        "key": settings.health_key,
        "registry": registry,
    }
    limit = {
        "policy": settings.rate_limit or DEFAULT_RATE_LIMIT,
        "routes": rate_limit_routes,
        "store": stack.rate_limit_store,
        "caller": caller,
        "trusted_proxies": settings.trusted_proxies,
        "registry": registry,
    }
    scope_by = caller_from_authorization if caller is None else caller
    idempotency = {
        "store": stack.idempotency_store,
        "routes": idempotency_routes,
        "caller": scope_by,
        "stored_headers": stored_headers,
        "lease": settings.idempotency_lease_seconds,
        "ttl": settings.idempotency_ttl_seconds,
        "registry": registry,
    }
    concurrency = settings.max_concurrency or DEFAULT_MAX_CONCURRENCY
    layers = [
        Layer("health", HealthMiddleware, health),
        Layer("shutdown", GracefulShutdownMiddleware, {"coordinator": stack.coordinator}),
        Layer(
            "request_timeout",
            RequestTimeoutMiddleware,
            {"body_timeout": settings.body_timeout_seconds},
        ),
        Layer(
            "concurrency_limit",
            ConcurrencyLimitMiddleware,
            {"max_concurrency": concurrency, "registry": registry},
        ),
        Layer("rate_limit", RateLimitMiddleware, limit),
        Layer("idempotency", IdempotencyMiddleware, idempotency),
    ]
    if cache_routes and stack.cache is not None:
        cache = {
            "routes": cache_routes,
            "cache": stack.cache,
            "caller": scope_by,
            "registry": registry,
        }
        layers.append(Layer("cache", CacheMiddleware, cache))
    return layers


# The layers whose middleware takes ``route_resolver=``: every one that labels by route.
_LABELLED = frozenset({AccessLogMiddleware, HTTPMetricsMiddleware, ConcurrencyLimitMiddleware})


def resolve_routes_with(stack: Stack, route_resolver: RouteResolver) -> None:
    """Give ``route_resolver`` to every layer that labels by route."""
    for layer in list(stack.layers):
        if layer.middleware in _LABELLED:
            options = {**layer.options, "route_resolver": route_resolver}
            stack.replace(layer.name, Layer(layer.name, layer.middleware, options))


__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_RATE_LIMIT",
    "inner_layers",
    "outer_layers",
    "resolve_routes_with",
]
