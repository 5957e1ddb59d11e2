"""The recommended stack: every prodkit middleware, composed in the right order.

Outermost first, and why (see the design notes):

1. lifespan — opens and closes stores, installs the shutdown signal handling;
2. request id — so every later log line, header and error carries it;
3. access log, 4. metrics (and ``/metrics``) — outside everything that can reject, so a 429,
   503 or 409 is logged and counted exactly once;
5. security headers, 6. CORS — outside errors and limits, so a browser can read a 429 or 503;
7. errors — every failure below becomes a problem;
8. health (``/livez``, ``/readyz``, ``/healthz``) and graceful shutdown — probes answer before
   shedding and rate limiting, so they are never throttled;
9. concurrency limit, 10. rate limit;
11. idempotency — outside the cache;
12. response cache — safe methods only (when ``cache_routes`` are given);
13. the app.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from prodkit._core.callers import Caller, caller_from_authorization
from prodkit._core.exceptions import ConfigurationError
from prodkit._core.types import ASGIApp, Receive, Scope, Send
from prodkit.cache import (
    CacheMiddleware,
    CacheRule,
    CacheStore,
    MemoryCacheStore,
    RedisCacheStore,
    ResponseCache,
)
from prodkit.cors._middleware import DEFAULT_ALLOW_HEADERS, CORSMiddleware
from prodkit.errors._middleware import ErrorMiddleware
from prodkit.health._middleware import HealthCheck, HealthMiddleware, redis_check
from prodkit.idempotency import (
    IdempotencyStore,
    MemoryIdempotencyStore,
    PostgresIdempotencyStore,
    RedisIdempotencyStore,
)
from prodkit.idempotency._middleware import DEFAULT_STORED_HEADERS, IdempotencyMiddleware
from prodkit.lifecycle._coordinator import ShutdownCoordinator
from prodkit.lifecycle._drain import GracefulShutdownMiddleware
from prodkit.lifecycle._lifespan import LifespanMiddleware
from prodkit.logging._access import AccessLogMiddleware
from prodkit.logging._config import configure_logging
from prodkit.metrics._middleware import HTTPMetricsMiddleware, MetricsEndpointMiddleware
from prodkit.ratelimit import MemoryRateLimitStore, RateLimitMiddleware, RateLimitStore
from prodkit.requestid._middleware import RequestIdMiddleware
from prodkit.security_headers._middleware import SecurityHeadersMiddleware
from prodkit.settings import StackSettings
from prodkit.shedding._middleware import ConcurrencyLimitMiddleware

#: Rate limit when ``RATE_LIMIT`` is unset: generous enough for any single honest client.
DEFAULT_RATE_LIMIT = "6000/minute"
#: In-flight requests per process when ``MAX_CONCURRENCY`` is unset.
DEFAULT_MAX_CONCURRENCY = 1000


@dataclass
class Stack:
    """The composed app and its parts, so a service can reach them (checks, hooks, stores).

    A ``Stack`` is itself an ASGI app: serve it directly.
    """

    app: ASGIApp
    settings: StackSettings
    coordinator: ShutdownCoordinator
    lifespan: LifespanMiddleware
    health: HealthMiddleware
    idempotency_store: IdempotencyStore
    rate_limit_store: RateLimitStore
    cache: ResponseCache | None = None
    registry: CollectorRegistry | None = None
    closers: list[Callable[[], Any]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    def add_check(self, name: str, func: Any, *, critical: bool = True) -> HealthCheck:
        """Register a health check (see :meth:`HealthMiddleware.add_check`)."""
        return self.health.add_check(name, func, critical=critical)


def idempotency_store_for(settings: StackSettings) -> IdempotencyStore:
    """The idempotency store ``settings`` choose (memory, PostgreSQL or Redis); nothing connects yet."""
    if settings.idempotency_store == "postgres":
        if not settings.database_url:
            raise ConfigurationError("IDEMPOTENCY_STORE=postgres needs DATABASE_URL")
        return PostgresIdempotencyStore(settings.database_url)
    if settings.idempotency_store == "redis":
        if not settings.redis_url:
            raise ConfigurationError("IDEMPOTENCY_STORE=redis needs REDIS_URL")
        return RedisIdempotencyStore(settings.redis_url)
    return MemoryIdempotencyStore()


def _rate_limit_store(settings: StackSettings) -> RateLimitStore:
    if settings.redis_url:
        from prodkit.ratelimit._redis import RedisRateLimitStore

        return RedisRateLimitStore.from_url(settings.redis_url)
    return MemoryRateLimitStore()


def recommended_stack(
    app: ASGIApp,
    settings: StackSettings | None = None,
    *,
    registry: CollectorRegistry | None = None,
    caller: Caller = caller_from_authorization,
    cache_routes: Mapping[str, CacheRule] | None = None,
    idempotency_routes: Iterable[str] | None = None,
    idempotency_stored_headers: Iterable[str] = (),
    rate_limit_routes: Mapping[str, Any] | None = None,
    cors_allow_headers: Sequence[str] = (),
    health_checks: Iterable[HealthCheck] = (),
    metrics_path: str = "/metrics",
    access_log_exclude: Iterable[str] = (),
    configure_logs: bool = True,
    inner: Callable[[ASGIApp], ASGIApp] | None = None,
) -> Stack:
    """Wrap ``app`` in prodkit's recommended stack, configured by ``settings``.

    Arguments:
        app: the application (any ASGI app).
        settings: the stack's settings; ``None`` reads them from the environment
            (:meth:`StackSettings.from_env`).
        registry: the Prometheus registry for every metric (default: the global one).
        caller: who is calling: scopes idempotency keys and ``per_caller`` cache entries
            (default: a digest of ``Authorization``); the example passes
            ``caller_from_header("X-User-Id")``.
        cache_routes: ``{template: CacheRule}`` for the response cache (none: no cache).
        idempotency_routes: route templates where ``Idempotency-Key`` is honoured (default all).
        idempotency_stored_headers: response headers replayed besides the default allow-list.
        rate_limit_routes: per-route policies for :class:`RateLimitMiddleware`.
        cors_allow_headers: request headers browsers may send besides the defaults.
        health_checks: dependency checks for ``/readyz`` and ``/healthz``.
        metrics_path: where ``/metrics`` is served.
        access_log_exclude: paths not logged (e.g. ``["/livez"]``).
        configure_logs: call :func:`configure_logging` with the settings' level and format.
        inner: wraps ``app`` first (innermost), e.g. with the response cache.
    """
    settings = StackSettings.from_env() if settings is None else settings
    if configure_logs:
        configure_logging(settings.log_level, settings.log_format)
    coordinator = ShutdownCoordinator(
        drain=settings.shutdown_drain_seconds,
        timeout=settings.shutdown_timeout_seconds,
        registry=registry,
    )
    idempotency_store = idempotency_store_for(settings)
    rate_limit_store = _rate_limit_store(settings)
    closers: list[Callable[[], Any]] = []

    wrapped = app if inner is None else inner(app)
    cache: ResponseCache | None = None
    if cache_routes:
        cache_store: CacheStore = (
            RedisCacheStore(settings.redis_url) if settings.redis_url else MemoryCacheStore()
        )
        cache = ResponseCache(cache_store, registry=registry)
        wrapped = CacheMiddleware(
            wrapped, routes=cache_routes, cache=cache, caller=caller, registry=registry
        )
    wrapped = IdempotencyMiddleware(
        wrapped,
        store=idempotency_store,
        routes=idempotency_routes,
        caller=caller,
        stored_headers=(*DEFAULT_STORED_HEADERS, *idempotency_stored_headers),
        registry=registry,
    )
    wrapped = RateLimitMiddleware(
        wrapped,
        policy=settings.rate_limit or DEFAULT_RATE_LIMIT,
        routes=rate_limit_routes,
        store=rate_limit_store,
        trusted_proxies=settings.trusted_proxies,
        registry=registry,
    )
    wrapped = ConcurrencyLimitMiddleware(
        wrapped,
        max_concurrency=settings.max_concurrency or DEFAULT_MAX_CONCURRENCY,
        registry=registry,
    )
    wrapped = GracefulShutdownMiddleware(wrapped, coordinator=coordinator)
    health = HealthMiddleware(
        wrapped,
        coordinator=coordinator,
        checks=list(health_checks),
        key=settings.health_key,
        registry=registry,
    )
    wrapped = ErrorMiddleware(health)
    if settings.cors_origins:
        wrapped = CORSMiddleware(
            wrapped,
            allow_origins=settings.cors_origins,
            allow_headers=[*DEFAULT_ALLOW_HEADERS, "Idempotency-Key", *cors_allow_headers],
        )
    wrapped = SecurityHeadersMiddleware(wrapped)
    wrapped = MetricsEndpointMiddleware(wrapped, path=metrics_path, registry=registry)
    wrapped = HTTPMetricsMiddleware(wrapped, registry=registry, exclude_paths=(metrics_path,))
    wrapped = AccessLogMiddleware(
        wrapped, trusted_proxies=settings.trusted_proxies, exclude_paths=access_log_exclude
    )
    wrapped = RequestIdMiddleware(wrapped)
    lifespan = LifespanMiddleware(wrapped, coordinator=coordinator)

    if isinstance(idempotency_store, PostgresIdempotencyStore):
        lifespan.add_hook(idempotency_store.ensure_schema, None)
    stores: list[IdempotencyStore | RateLimitStore | CacheStore] = [
        idempotency_store,
        rate_limit_store,
    ]
    if cache is not None:
        stores.append(cache.store)
    for store in stores:
        lifespan.add_hook(None, store.aclose)
        closers.append(store.aclose)
    if settings.redis_url:
        client = getattr(rate_limit_store, "client", None)
        if client is not None:
            # Redis backs the cache and the rate limiter, which both fail open: a Redis outage
            # degrades the service but does not make it unready.
            health.add_check("redis", redis_check(lambda: client), critical=False)

    return Stack(
        app=lifespan,
        settings=settings,
        coordinator=coordinator,
        lifespan=lifespan,
        health=health,
        idempotency_store=idempotency_store,
        rate_limit_store=rate_limit_store,
        cache=cache,
        registry=registry,
        closers=closers,
    )


__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_RATE_LIMIT",
    "Stack",
    "idempotency_store_for",
    "recommended_stack",
]
