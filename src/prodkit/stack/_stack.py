"""The stack as a list of layers and the long-lived parts they share: :class:`Stack`.

:meth:`Stack.recommended` fills the list from ``_recommended``; ``_layer`` holds one item of it.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, cast

from prometheus_client import CollectorRegistry

from prodkit._core.callers import Caller
from prodkit._core.drivers import redis_client
from prodkit._core.exceptions import ConfigurationError
from prodkit._core.routing import RouteResolver
from prodkit._core.types import ASGIApp, Receive, Scope, Send
from prodkit.cache import (
    CacheRule,
    CacheStore,
    MemoryCacheStore,
    NearCacheStore,
    RedisCacheStore,
    ResponseCache,
)
from prodkit.health import HealthCheck, HealthMiddleware, redis_check
from prodkit.idempotency import (
    DEFAULT_STORED_HEADERS,
    IdempotencyStore,
    MemoryIdempotencyStore,
    PostgresIdempotencyStore,
    RedisIdempotencyStore,
)
from prodkit.lifecycle import LifespanMiddleware, ShutdownCoordinator
from prodkit.logging import configure_logging
from prodkit.ratelimit import (
    MemoryRateLimitStore,
    RateLimitStore,
    RedisRateLimitStore,
)
from prodkit.settings import StackSettings
from prodkit.stack._layer import Layer
from prodkit.stack._recommended import inner_layers, outer_layers, resolve_routes_with

Hook = Callable[[], Awaitable[None]]
CheckFunc = Callable[[], Awaitable[Any]]
P = ParamSpec("P")


async def _not_built(scope: Scope, receive: Receive, send: Send) -> None:
    raise ConfigurationError("call Stack.build(app) before serving the stack")


class Stack:
    """An ordered list of layers (outermost first) and the long-lived parts they share.

    Edit :attr:`layers` (directly or with :meth:`insert_before`, :meth:`insert_after`,
    :meth:`remove`, :meth:`replace`), then :meth:`build` it around an app. A built ``Stack`` is
    itself an ASGI app: serve it directly. Its lifespan runs the start-up hooks and, at shutdown,
    :meth:`aclose`; call :meth:`aclose` yourself when no lifespan runs (in tests, say).

    Example::

        import asyncio

        import httpx
        from prometheus_client import CollectorRegistry
        from starlette.applications import Starlette
        from starlette.middleware.gzip import GZipMiddleware
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        from prodkit import Layer, Stack, StackSettings

        async def report(request):
            return PlainTextResponse("quarterly figures " * 100)

        stack = Stack.recommended(
            StackSettings(rate_limit="100/minute"),  # or None: read from the environment
            registry=CollectorRegistry(),  # or leave it out: prometheus-client's global one
        )
        stack.remove("security_headers")  # say, the ingress sets them
        stack.insert_before("errors", Layer("gzip", GZipMiddleware, {"minimum_size": 500}))
        stack.build(Starlette(routes=[Route("/report", report)]))  # serve `stack` itself

        async def main():
            transport = httpx.ASGITransport(app=stack)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                response = await client.get("/report")
            await stack.aclose()  # what the lifespan does at shutdown, under a server
            assert stack.names[:6] == [
                "request_id", "access_log", "metrics", "metrics_endpoint", "gzip", "errors"
            ]
            assert response.headers["Content-Encoding"] == "gzip"
            assert response.headers["RateLimit-Policy"] == '"default";q=100;w=60'

        asyncio.run(main())

    Arguments:
        layers: the layers, outermost first.
        settings: the settings the layers were made from (kept for the service to read).
        coordinator: the shutdown coordinator the lifespan installs (signal handling, drain).
        registry: the Prometheus registry the layers record into (``None``: the global one).

    Attributes set by :meth:`recommended` (``None`` otherwise): ``idempotency_store``,
    ``rate_limit_store``, ``cache`` (a :class:`~prodkit.cache.ResponseCache`, when
    ``cache_routes`` were given: ``await stack.cache.invalidate_tags([...])``) and ``redis``
    (the one Redis client every Redis-backed store shares).
    """

    def __init__(
        self,
        layers: Iterable[Layer] = (),
        *,
        settings: StackSettings | None = None,
        coordinator: ShutdownCoordinator | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings if settings is not None else StackSettings()
        self.coordinator = coordinator
        self.registry = registry
        self.idempotency_store: IdempotencyStore | None = None
        self.rate_limit_store: RateLimitStore | None = None
        self.cache: ResponseCache | None = None
        self.redis: Any | None = None
        self._startup: list[Hook] = []
        self._closers: list[Hook] = []
        self._built: dict[str, ASGIApp] = {}
        self._lifespan: LifespanMiddleware | None = None
        self._app: ASGIApp = _not_built
        self._first: ASGIApp = _not_built
        self._closed = False
        self.layers: list[Layer] = []
        for layer in layers:
            self._check_new(layer)
            self.layers.append(layer)

    @classmethod
    def recommended(
        cls,
        settings: StackSettings | None = None,
        *,
        registry: CollectorRegistry | None = None,
        caller: Caller | None = None,
        cache_routes: Mapping[str, CacheRule] | None = None,
        idempotency_routes: Iterable[str] | None = None,
        idempotency_stored_headers: Iterable[str] = (),
        rate_limit_routes: Mapping[str, Any] | None = None,
        cors_allow_headers: Sequence[str] = (),
        health_checks: Iterable[HealthCheck] = (),
        metrics_path: str = "/metrics",
        access_log_exclude: Iterable[str] = (),
        configure_logs: bool = False,
        route_resolver: RouteResolver | None = None,
    ) -> Stack:
        """prodkit's recommended stack, not built yet: read or edit its layers, then :meth:`build`.

        Its layers are named ``request_id``, ``access_log``, ``metrics``, ``metrics_endpoint``,
        ``security_headers``, ``cors`` (when ``settings.cors_origins`` is set), ``errors``,
        ``health``, ``shutdown``, ``request_timeout``, ``concurrency_limit``, ``rate_limit``,
        ``idempotency`` and ``cache`` (when ``cache_routes`` are given), outermost first.

        Arguments:
            settings: the stack's settings; ``None`` reads them from the environment
                (:meth:`StackSettings.from_env`).
            registry: the Prometheus registry for every metric (default: the global one).
            caller: who is calling, as a layer before the stack has authenticated it (the
                example passes ``caller_from_header("X-User-Id")``): scopes idempotency keys,
                ``per_caller`` cache entries and rate-limit quotas (one quota per caller,
                wherever it calls from; a request it names no caller for is limited by its
                client address). Default: idempotency keys and cache entries are scoped by a
                digest of ``Authorization`` (:func:`~prodkit.caller_from_authorization`) and
                quotas are per client address, because a client could invent a fresh
                ``Authorization`` per request to get a fresh quota. A keyed request whose
                caller is ``None`` is refused (``400 IDEMPOTENCY_CALLER_UNKNOWN``), so two
                unidentified callers never share a key.
            cache_routes: ``{template: CacheRule}`` for the response cache (none: no cache).
            idempotency_routes: route templates where ``Idempotency-Key`` is honoured (default
                ``None``: every route).
            idempotency_stored_headers: response headers replayed besides
                :data:`~prodkit.idempotency.DEFAULT_STORED_HEADERS`.
            rate_limit_routes: per-route policies for :class:`~prodkit.RateLimitMiddleware`.
            cors_allow_headers: request headers browsers may send besides
                :data:`~prodkit.cors.DEFAULT_ALLOW_HEADERS` and ``Idempotency-Key``.
            health_checks: dependency checks for ``/readyz`` and ``/healthz``.
            metrics_path: where the Prometheus exposition is served (default ``"/metrics"``).
            access_log_exclude: paths not logged (e.g. ``["/livez"]``).
            configure_logs: call :func:`configure_logging` with the settings' level and format
                (default ``False``, because logging configuration is global to the process).
            route_resolver: names a request's route template (``scope -> str | None``) for
                every layer that labels by route (access log, metrics, concurrency limit);
                for apps prodkit cannot ask, such as a raw ASGI callable.
        """
        settings = StackSettings.from_env() if settings is None else settings
        if configure_logs:
            configure_logging(settings.log_level, settings.log_format)
        coordinator = ShutdownCoordinator(
            drain=settings.shutdown_drain_seconds,
            timeout=settings.shutdown_timeout_seconds,
            registry=registry,
        )
        stack = cls(settings=settings, coordinator=coordinator, registry=registry)
        checks = [*health_checks, *_build_parts(stack, cache_routes)]
        stack.layers += outer_layers(stack, metrics_path, access_log_exclude, cors_allow_headers)
        stack.layers += inner_layers(
            stack,
            checks=checks,
            caller=caller,
            cache_routes=cache_routes,
            idempotency_routes=idempotency_routes,
            stored_headers=(*DEFAULT_STORED_HEADERS, *idempotency_stored_headers),
            rate_limit_routes=rate_limit_routes,
        )
        if route_resolver is not None:
            resolve_routes_with(stack, route_resolver)
        return stack

    # -- the list ------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """The layers' names, outermost first."""
        return [layer.name for layer in self.layers]

    def index(self, name: str) -> int:
        """The position of the layer called ``name``; :class:`ConfigurationError` if absent."""
        for position, layer in enumerate(self.layers):
            if layer.name == name:
                return position
        raise ConfigurationError(f"no layer {name!r} in this stack; its layers are {self.names}")

    def get(self, name: str) -> Layer:
        """The layer called ``name`` (to read its options)."""
        return self.layers[self.index(name)]

    def insert_before(self, name: str, layer: Layer) -> None:
        """Put ``layer`` just outside the layer called ``name``."""
        self._check_new(layer)
        self.layers.insert(self.index(name), layer)

    def insert_after(self, name: str, layer: Layer) -> None:
        """Put ``layer`` just inside the layer called ``name``."""
        self._check_new(layer)
        self.layers.insert(self.index(name) + 1, layer)

    def remove(self, name: str) -> Layer:
        """Take the layer called ``name`` out of the stack; returns it."""
        self._check_unbuilt()
        return self.layers.pop(self.index(name))

    def replace(self, name: str, layer: Layer) -> Layer:
        """Put ``layer`` where the layer called ``name`` is; returns the one it replaced."""
        self._check_unbuilt()
        position = self.index(name)
        if layer.name != name and layer.name in self.names:
            raise ConfigurationError(f"a layer named {layer.name!r} is already in this stack")
        old, self.layers[position] = self.layers[position], layer
        return old

    def _check_new(self, layer: Layer) -> None:
        self._check_unbuilt()
        if any(existing.name == layer.name for existing in self.layers):
            raise ConfigurationError(f"a layer named {layer.name!r} is already in this stack")

    def _check_unbuilt(self) -> None:
        # A change after build() would silently not apply to the app being served.
        if self._lifespan is not None:
            raise ConfigurationError("this stack is built: change its layers before build()")

    # -- the parts -----------------------------------------------------------------------------

    def on_startup(self, hook: Hook) -> None:
        """Run ``hook`` at lifespan start-up (before the app's own start-up), in order added."""
        self._startup.append(hook)
        if self._lifespan is not None:
            self._lifespan.add_hook(hook, None)

    def on_close(self, hook: Hook) -> None:
        """Run ``hook`` in :meth:`aclose`; hooks run last added first."""
        self._closers.append(hook)

    def add_check(
        self,
        name: str,
        func: CheckFunc,
        *,
        critical: bool = True,
        timeout: float | None = None,
        cache_ttl: float | None = None,
    ) -> HealthCheck:
        """Register a health check with the ``health`` layer (see :class:`HealthMiddleware`).

        ``timeout`` and ``cache_ttl`` default to the layer's; together they bound how fast
        readiness follows the dependency (``docs/health.md``). Before :meth:`build` the check
        joins the layer's ``checks`` option; after, the built middleware's checks. Returns the
        check.
        """
        if self._lifespan is not None:
            return self.health.add_check(
                name, func, critical=critical, timeout=timeout, cache_ttl=cache_ttl
            )
        layer = next((c for c in self.layers if c.middleware is HealthMiddleware), None)
        if layer is None:
            raise ConfigurationError("no health layer in this stack to add a check to")
        timing = {k: v for k, v in layer.options.items() if k in ("timeout", "cache_ttl")}
        if timeout is not None:
            timing["timeout"] = timeout
        if cache_ttl is not None:
            timing["cache_ttl"] = cache_ttl
        check = HealthCheck(name, func, critical=critical, **timing)
        options = {**layer.options, "checks": [*layer.options.get("checks", ()), check]}
        self.replace(layer.name, Layer(layer.name, layer.middleware, options))
        return check

    async def aclose(self) -> None:
        """Close every long-lived part (stores, then the Redis client) once.

        The lifespan calls it at shutdown; later calls do nothing. Every closer runs even when
        one fails; the first failure is raised at the end.
        """
        if self._closed:
            return
        self._closed = True
        failure: BaseException | None = None
        for close in reversed(self._closers):
            try:
                await close()
            except Exception as exc:  # the other parts must still close
                failure = failure or exc
        if failure is not None:
            raise failure

    # -- the app -------------------------------------------------------------------------------

    def build(self, app: ASGIApp) -> Stack:
        """Wrap ``app`` in the layers (the first outermost) and a lifespan; returns ``self``.

        A stack is built once: build another ``Stack`` for another app.
        """
        if self._lifespan is not None:
            raise ConfigurationError("this stack is already built; make another for another app")
        built: dict[str, ASGIApp] = {}
        wrapped = app
        for layer in reversed(self.layers):
            wrapped = built[layer.name] = layer.wrap(wrapped)
        lifespan = LifespanMiddleware(wrapped, coordinator=self.coordinator)
        # Registered first so it runs last at shutdown, after any hook added to the lifespan
        # later, and also when a start-up hook fails.
        lifespan.add_hook(None, self.aclose)
        for hook in self._startup:
            lifespan.add_hook(hook, None)
        self._built, self._lifespan, self._app = built, lifespan, lifespan
        self._first = wrapped
        return self

    @property
    def app(self) -> ASGIApp:
        """The built app (the outermost layer inside the lifespan)."""
        return self._app

    @property
    def lifespan(self) -> LifespanMiddleware:
        """The built stack's lifespan middleware (to add start-up and shutdown hooks)."""
        if self._lifespan is None:
            raise ConfigurationError("the stack is not built yet: call build(app) first")
        return self._lifespan

    @property
    def health(self) -> HealthMiddleware:
        """The built health middleware (the first layer that is one)."""
        for layer in self.layers:
            middleware = self._built.get(layer.name)
            if isinstance(middleware, HealthMiddleware):
                return middleware
        raise ConfigurationError("no built health layer: add one and call build(app) first")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Requests go straight to the outermost layer: only the lifespan is the lifespan's.
        app = self._first if scope["type"] != "lifespan" else self._app
        await app(scope, receive, send)


def idempotency_store_for(
    settings: StackSettings,
    *,
    redis: Any | None = None,
    registry: CollectorRegistry | None = None,
) -> IdempotencyStore:
    """The idempotency store ``settings`` choose (memory, PostgreSQL or Redis); nothing connects yet.

    Arguments:
        settings: names the store (``idempotency_store``) and where it lives.
        redis: the Redis client to use for a Redis store (default: a client of its own, made
            by :func:`~prodkit.asgi.redis_client`, which the store closes).
        registry: the Prometheus registry of the PostgreSQL store's cleanup counter.
    """
    # StackSettings guarantees the URL of the store it names (IDEMPOTENCY_STORE=postgres
    # needs DATABASE_URL, redis needs REDIS_URL): it is not checked again here.
    if settings.idempotency_store == "postgres":
        return PostgresIdempotencyStore(
            cast(str, settings.database_url),
            cleanup_interval=settings.idempotency_cleanup_seconds or None,
            registry=registry,
        )
    if settings.idempotency_store == "redis":
        key_prefix = f"{settings.redis_key_prefix}idem:"
        if redis is None:
            return RedisIdempotencyStore.from_url(
                cast(str, settings.redis_url), key_prefix=key_prefix
            )
        return RedisIdempotencyStore(redis, key_prefix=key_prefix)
    return MemoryIdempotencyStore()


def _build_parts(stack: Stack, cache_routes: Mapping[str, CacheRule] | None) -> list[HealthCheck]:
    """Create the stack's long-lived parts once; returns the health checks they need."""
    settings = stack.settings
    checks: list[HealthCheck] = []
    if settings.redis_url:
        # One client with short timeouts for every Redis-backed part, which all fail fast (the rate
        # limiter and the cache fail open, idempotency answers 503): a stalled Redis must not
        # hold requests.
        stack.redis = client = redis_client(settings.redis_url)
        # Registered first so it closes last, after the stores that use it.
        stack.on_close(client.aclose)
        # The cache and the rate limiter fail open: a Redis outage degrades the service but
        # does not make it unready.
        checks.append(HealthCheck("redis", redis_check(client), critical=False))
    stack.idempotency_store = idempotency_store_for(
        settings, redis=stack.redis, registry=stack.registry
    )
    prefix = settings.redis_key_prefix
    stack.rate_limit_store = (
        RedisRateLimitStore(stack.redis, key_prefix=f"{prefix}ratelimit:")
        if stack.redis is not None
        else MemoryRateLimitStore()
    )
    if cache_routes:
        cache_store: CacheStore = MemoryCacheStore()
        if stack.redis is not None:
            shared = RedisCacheStore(stack.redis, key_prefix=f"{prefix}cache:")
            cache_store = shared
            if settings.near_cache:
                # Reads served from memory, dropped by Redis when any worker writes
                # (docs/caching.md, "Near cache"), its connection opened at start-up.
                near = cache_store = NearCacheStore(shared, registry=stack.registry)

                async def open_near_cache() -> None:
                    await near.connect()  # a failure is logged and tried again on reads

                stack.on_startup(open_near_cache)
        stack.cache = ResponseCache(cache_store, registry=stack.registry)
        # The cache closes its store after a last try of pending invalidations.
        stack.on_close(stack.cache.aclose)
    stack.on_close(stack.rate_limit_store.aclose)
    stack.on_close(stack.idempotency_store.aclose)
    if isinstance(stack.idempotency_store, PostgresIdempotencyStore):
        stack.on_startup(stack.idempotency_store.ensure_schema)
    return checks


def _with_app_and_options_of(
    recommended: Callable[P, Stack],
) -> Callable[[Callable[..., Stack]], Callable[Concatenate[ASGIApp, P], Stack]]:
    """Type a function as ``(app, /, <recommended's arguments>) -> Stack``, written once.

    A wrong option is then a type error where the stack is made (as with Starlette's
    ``Middleware``), and ``inspect.signature`` (``help()``, editors) shows every option.
    """

    def sign(function: Callable[..., Stack]) -> Callable[Concatenate[ASGIApp, P], Stack]:
        options = inspect.signature(recommended).parameters.values()
        app = inspect.Parameter("app", inspect.Parameter.POSITIONAL_ONLY, annotation="ASGIApp")
        vars(function)["__signature__"] = inspect.Signature(
            [app, *options], return_annotation="Stack"
        )
        return function

    return sign


@_with_app_and_options_of(Stack.recommended)
def recommended_stack(app: ASGIApp, /, *args: Any, **options: Any) -> Stack:
    """Wrap ``app`` in prodkit's recommended stack: ``Stack.recommended(...).build(app)``.

    The arguments after ``app`` are :meth:`Stack.recommended`'s. To add, move or drop a layer,
    call that instead, edit the list, then :meth:`Stack.build`.

    Example::

        import asyncio

        import httpx
        from prometheus_client import CollectorRegistry
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        from prodkit import StackSettings, recommended_stack

        async def fund(request):
            return JSONResponse({"id": request.path_params["fund_id"]})

        app = recommended_stack(
            Starlette(routes=[Route("/funds/{fund_id}", fund)]),
            StackSettings(rate_limit="100/minute"),  # or None: read from the environment
            registry=CollectorRegistry(),  # or leave it out: prometheus-client's global one
        )

        async def main():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                response = await client.get("/funds/7")
                ready = await client.get("/readyz")
            await app.aclose()  # what the lifespan does at shutdown, under a server
            assert response.json() == {"id": "7"}
            assert len(response.headers["X-Request-ID"]) == 32
            assert response.headers["RateLimit"].startswith('"default";r=99;')
            assert ready.json() == {"status": "pass", "draining": False}

        asyncio.run(main())
    """
    return Stack.recommended(*args, **options).build(app)


__all__ = ["Stack", "idempotency_store_for", "recommended_stack"]
