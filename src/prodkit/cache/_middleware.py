"""``CacheMiddleware``: cache-aside for GET/HEAD with single flight, tag invalidation and RFC 9111.

The middleware checks its options and dispatches; the jobs live beside it: what is cached, for
whom and how long (``_rules``), what is stored and how an entry is read, written and sent
(``_entries``), single flight and fenced writes (``_coordination``), the cache every worker
shares (``_cache``) and its stores.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict, Unpack

from prometheus_client import CollectorRegistry, Counter

from prodkit._core import options as valid
from prodkit._core.callers import Caller
from prodkit._core.collectors import DEFAULT_PREFIX, counter
from prodkit._core.exceptions import BackendError, ConfigurationError
from prodkit._core.options import build_options
from prodkit._core.problems import send_problem
from prodkit._core.routing import RouteTable, served_root
from prodkit._core.types import ASGIApp, Receive, Scope, Send
from prodkit.cache._cache import DEFAULT_TAG_TTL, ResponseCache
from prodkit.cache._coordination import Invalidation, SingleFlight
from prodkit.cache._entries import Entries, fetch, miss_send, send_entry
from prodkit.cache._rules import (
    CacheRequest,
    CacheRule,
    Outcome,
    RequestReader,
    Route,
    check_invalidations,
    check_routes,
    delta_seconds,
    invalidation_routes,
    read_routes,
)
from prodkit.cache._store import CacheStore

#: Problem code of a ``Cache-Control: only-if-cached`` request that found nothing (504).
NOT_CACHED = "NOT_CACHED"

#: Safe methods (RFC 9110 section 9.2.1); every other method, unknown ones included, may
#: change the resource, so its non-error response invalidates (RFC 9111 section 4.4).
_SAFE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


@dataclass(frozen=True, kw_only=True, slots=True)
class CacheOptions:
    """The options of :class:`CacheMiddleware`, checked when made.

    Attributes:
        routes: ``{template: CacheRule}`` for the cached routes (``RouteTable`` syntax:
            ``/api/funds/{id}``, ``{id:int}``, a trailing ``/*``).
        cache: the :class:`ResponseCache` to use (share it with code that invalidates).
        store: build a :class:`ResponseCache` over this store instead (default: memory).
        caller: returns the caller of a request (``None``: unknown), for ``per_caller`` routes
            and ``{caller}`` in tags; see :func:`~prodkit.caller_from_header`.
        invalidate: ``{template: [tag templates]}``: tags that a write to a matching path
            fences and invalidates, in addition to the path itself and the tags of a cached
            route there.
        statuses: statuses stored (default ``(200,)``), kept as a sorted tuple.
        max_body_bytes: larger responses are streamed through and not stored (default
            ``1048576``, 1 MiB).
        lock_lease: seconds one worker may compute a missing entry before others give up
            waiting and compute it themselves (default ``10.0``).
        honor_no_cache: a request ``Cache-Control: no-cache`` (or ``max-age=0``) skips the
            read and refreshes the entry (default ``True``); turn off if clients could use
            it to load the app.
        honor_no_store: a request ``Cache-Control: no-store`` bypasses the cache (default
            ``True``).
        registry: the Prometheus registry (default: that of ``cache``).
        metric_prefix: put in front of the metric names (default: that of ``cache``).
        wall_clock: seconds since the epoch (default :func:`time.time`), for when a response
            was stored and its ``Age``; tests inject one.

    Raises:
        ConfigurationError: a rule that is not a :class:`CacheRule`, a ``ttl`` the cache's
            ``tag_ttl`` does not cover, a ``per_caller`` route or a ``{caller}`` tag without
            ``caller``, a tag that names no path parameter, both ``cache`` and ``store``, or
            another invalid option.
    """

    routes: Mapping[str, CacheRule]
    cache: ResponseCache | None = None
    store: CacheStore | None = None
    caller: Caller | None = None
    invalidate: Mapping[str, Sequence[str]] | None = None
    statuses: Iterable[int] = (200,)
    max_body_bytes: int = 1024 * 1024
    lock_lease: float = 10.0
    honor_no_cache: bool = True
    honor_no_store: bool = True
    registry: CollectorRegistry | None = None
    metric_prefix: str | None = None
    wall_clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if self.cache is not None and self.store is not None:
            raise ConfigurationError(
                "cache= and store= were both given: pass cache=ResponseCache(store) or store= alone"
            )
        tag_ttl = DEFAULT_TAG_TTL if self.cache is None else self.cache.tag_ttl
        check_routes(self.routes, self.caller, tag_ttl)
        check_invalidations(self.invalidate or {}, self.caller)
        object.__setattr__(self, "statuses", _statuses(self.statuses))
        valid.positive_int("max_body_bytes", self.max_body_bytes, example=1048576)
        valid.positive_seconds("lock_lease", self.lock_lease, example=10)
        if self.metric_prefix is not None:
            valid.metric_prefix("metric_prefix", self.metric_prefix)


def _statuses(value: Iterable[int]) -> tuple[int, ...]:
    found = tuple(sorted(set(value)))
    if not found or any(
        isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599
        for status in found
    ):
        raise ConfigurationError(
            f"statuses={found!r}: not HTTP status codes from 200 to 599; write e.g. statuses=(200,)"
        )
    return found


class CacheKeywords(TypedDict, total=False):
    """:class:`CacheOptions`'s fields as keywords of :class:`CacheMiddleware`.

    ``routes`` is required unless ``options`` is given: leaving both out is a ``TypeError``
    when the middleware is made.
    """

    routes: Mapping[str, CacheRule]
    cache: ResponseCache | None
    store: CacheStore | None
    caller: Caller | None
    invalidate: Mapping[str, Sequence[str]] | None
    statuses: Iterable[int]
    max_body_bytes: int
    lock_lease: float
    honor_no_cache: bool
    honor_no_store: bool
    registry: CollectorRegistry | None
    metric_prefix: str | None
    wall_clock: Callable[[], float]


class CacheMiddleware:
    """Cache GET/HEAD responses of configured routes (cache-aside) and invalidate on writes.

    Reads (``GET``; ``HEAD`` shares ``GET``'s entries): the entry key is built from the route
    template, the scheme and host (RFC 9111 section 2: the target URI), the path, the query
    (parameters sorted), the caller for ``per_caller`` routes, and the request headers the
    response's ``Vary`` names. A hit is answered with ``X-Cache: HIT`` and ``Age``; a miss
    runs the app, answers with ``X-Cache: MISS`` and stores the response when RFC 9111 allows
    a shared cache to: status in ``statuses``, no ``Set-Cookie``, a well-formed
    ``Cache-Control`` without ``no-store / private / no-cache``, no ``Vary: *``; a request
    with ``Authorization`` or ``Cookie`` is cached on a ``per_caller`` route, and bypasses a
    shared one unless its ``allow_credentials`` is set (section 3.5). Every cached
    response carries a strong ``ETag`` (sha256 of the body unless the app set one), and
    ``If-None-Match`` is answered with ``304`` on hits and misses (RFC 9110 section 13.1.2).

    Stampede protection: concurrent misses for one key in a process share one app call
    (waiters get the same response); across processes a lease lock in the store (``SET NX PX``
    with an owner token) lets one worker compute while the others poll for the entry; a waiter
    still waiting when the lease runs out calls the app itself.

    Freshness (RFC 9111 section 4.2.1): an entry lives for the rule's ``ttl``, shortened by the
    response's ``s-maxage``, else ``max-age``, else ``Expires`` (minus ``Date``); a response
    already stale (``max-age=0``, an ``Expires`` in the past, ``Expires: 0`` or any invalid
    date) is not stored. Entries are never revalidated: a stale entry is simply gone.

    Writes (RFC 9111 section 4.4): a request with any method that is not safe (anything but
    ``GET``, ``HEAD``, ``OPTIONS`` and ``TRACE``, unknown methods included) on a path that a
    cached route (or an ``invalidate`` template) matches is *fenced* on that path's entries and
    the route's tags (:meth:`ResponseCache.invalidating`): they are stale before the app runs,
    nothing carrying them is stored or served while it runs, and they are invalidated again
    when it returns, whatever its status. So no read that starts after the write's commit is
    answered with the data from before it, even if the process dies right after the commit.

    Store failures fail open: the request is served by the app, and the circuit breaker of the
    :class:`ResponseCache` turns a dead store into microseconds per request.

    Hits are cheap: the middleware remembers the keys of recent URLs and the last 1,024 entries
    it decoded (at most 8 MiB of stored bytes, reused only while the store returns the same
    bytes), so a repeated hit neither hashes, parses nor copies the body.

    Example::

        import asyncio

        import httpx
        from prometheus_client import CollectorRegistry, Counter
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        from prodkit import CacheMiddleware
        from prodkit.cache import CacheRule, MemoryCacheStore

        funds = {"1": {"id": 1, "name": "Growth"}}

        async def read_fund(request):
            return JSONResponse(funds[request.path_params["id"]])

        async def rename_fund(request):
            funds[request.path_params["id"]]["name"] = (await request.json())["name"]
            return JSONResponse(funds[request.path_params["id"]])

        app = CacheMiddleware(
            Starlette(
                routes=[
                    Route("/funds/{id}", read_fund, methods=["GET"]),
                    Route("/funds/{id}", rename_fund, methods=["PATCH"]),
                ]
            ),
            routes={"/funds/{id}": CacheRule(ttl=60, tags=("fund:{id}",))},
            store=MemoryCacheStore(),  # one process; a RedisCacheStore for several
            registry=CollectorRegistry(),  # or leave it out: prometheus-client's global one
        )

        async def main():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                miss = await client.get("/funds/1")
                hit = await client.get("/funds/1")
                await client.patch("/funds/1", json={"name": "Value"})  # a write to the path
                after = await client.get("/funds/1")
            assert miss.headers["X-Cache"] == "MISS"  # the app answered, the response is stored
            assert hit.headers["X-Cache"] == "HIT" and hit.json() == miss.json()
            assert hit.headers["Age"].isdigit()  # seconds since it was stored
            assert hit.headers["ETag"] == miss.headers["ETag"]
            assert after.headers["X-Cache"] == "MISS" and after.json()["name"] == "Value"

        asyncio.run(main())

    Arguments:
        app: the ASGI app to wrap.
        options: the options as one object (default: made from ``keywords``).
        **keywords: :class:`CacheOptions`'s fields by name, instead of ``options``:
            ``CacheMiddleware(app, routes={"/funds/{id}": CacheRule(ttl=60)})``.

    Raises:
        ConfigurationError: an invalid option (see :class:`CacheOptions`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        options: CacheOptions | None = None,
        **keywords: Unpack[CacheKeywords],
    ) -> None:
        self.app = app
        self.options = options = build_options(CacheOptions, options, keywords)
        self.cache = cache = _response_cache(options)
        self.caller = caller = options.caller
        self.statuses = frozenset(options.statuses)
        self.max_body_bytes = options.max_body_bytes
        self.lock_lease = options.lock_lease
        self.honor_no_cache = options.honor_no_cache
        self.honor_no_store = options.honor_no_store
        reads = read_routes(options.routes, cache.flushable)
        writes = reads + invalidation_routes(options.invalidate or {})
        self._reads: RouteTable[Route] = RouteTable(reads)
        self._requests = RequestReader(caller, self.statuses)
        self._invalidation = Invalidation(cache, caller, writes)
        self._routes = (reads, writes)
        # The same routes for an app served under a root_path, by root_path (one per mount).
        self._rooted: dict[str, tuple[RouteTable[Route], Invalidation]] = {}
        self._entries = Entries(cache, options.wall_clock)
        self._count = _outcome_counter(options, cache).count  # the cheapest call on every hit
        self._flight = SingleFlight(
            app,
            self._entries,
            self._count,
            lock_lease=options.lock_lease,
            max_body_bytes=options.max_body_bytes,
        )

    async def invalidate_tags(self, tags: Iterable[str]) -> bool:
        """Shortcut for :meth:`ResponseCache.invalidate_tags` of this middleware's cache."""
        return await self.cache.invalidate_tags(tags)

    async def invalidate_path(self, path: str) -> bool:
        """Make every cached entry of ``path`` (all queries, callers, variants) stale."""
        return await self.cache.invalidate_tags(["path:" + path])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        path: str = scope.get("path", "/")
        if method in ("GET", "HEAD"):
            route = self._read_route(scope, path)
            if route is not None:
                await self._read(scope, receive, send, route)
                return
        elif method not in _SAFE:
            invalidation = self._invalidation_of(scope, path)
            if invalidation is not None:
                await invalidation.run(self.app, scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _read_route(self, scope: Scope, path: str) -> Route | None:
        """The cached route a read's path matches, in full or below the ``root_path``."""
        matched = self._reads.match(path)
        if matched is None and scope.get("root_path"):
            root = served_root(scope)
            if root:
                matched = self._under(root)[0].match(path[len(root) :] or "/")
        return None if matched is None else matched[1]

    def _invalidation_of(self, scope: Scope, path: str) -> Invalidation | None:
        """What a write to ``path`` invalidates, in full or below the ``root_path``."""
        if self._invalidation.covers(path):
            return self._invalidation
        root = served_root(scope) if scope.get("root_path") else ""
        if root:
            rooted = self._under(root)[1]
            if rooted.covers(path[len(root) :] or "/"):
                return rooted
        return None

    def _under(self, root_path: str) -> tuple[RouteTable[Route], Invalidation]:
        """The routes of an app served under ``root_path``, which declares them below it.

        They match the path below ``root_path`` (``/funds/1``), as the app's router does, and
        fill tags from the full path (``/api/funds/1``) that reads and writes arrive with.
        """
        found = self._rooted.get(root_path)
        if found is None:
            reads, writes = (
                [(template, route.under(root_path)) for template, route in routes]
                for routes in self._routes
            )
            found = (RouteTable(reads), Invalidation(self.cache, self.caller, writes))
            if len(self._rooted) < 16:  # a root_path is set by the server or a mount: few
                self._rooted[root_path] = found
        return found

    async def _read(self, scope: Scope, receive: Receive, send: Send, route: Route) -> None:
        """A read of a cached route: what its ``Cache-Control`` asks for, else single flight."""
        request = self._requests.read(scope, route)
        if not isinstance(request, CacheRequest):
            self._count(route.template, request)
            await self.app(scope, receive, send)
            return
        directives = request.directives
        max_age: int | None = None
        if directives:  # most reads carry no Cache-Control: nothing to look at
            if self.honor_no_store and "no-store" in directives:
                self._count(route.template, "bypass")
                await self.app(scope, receive, send)
                return
            max_age = delta_seconds(directives.get("max-age"))
            if "only-if-cached" in directives:
                await self._only_if_cached(request, send)
                return
            if self.honor_no_cache and ("no-cache" in directives or max_age == 0):
                await self._refresh(request, receive, send)
                return
        if request.head:
            await self._head(request, receive, send, max_age)
            return
        await self._flight.serve(request, receive, send, max_age)

    async def _only_if_cached(self, request: CacheRequest, send: Send) -> None:
        """RFC 9111 section 5.2.1.7: answer from the cache or with 504, never ask the app."""
        try:
            entry = await self._entries.lookup(request)
        except BackendError:
            entry = None
        if entry is None:
            self._count(request.route.template, "miss")
            await send_problem(
                send, 504, NOT_CACHED, "No stored response for this only-if-cached request."
            )
            return
        self._count(request.route.template, "hit")
        await send_entry(send, request, entry, age=self._entries.age(entry))

    async def _refresh(self, request: CacheRequest, receive: Receive, send: Send) -> None:
        """``Cache-Control: no-cache``: skip the read, call the app, store what it answers."""
        self._count(request.route.template, "miss")
        if request.head:
            await self.app(request.scope, receive, miss_send(send))
            return
        versions = await self._entries.versions_before(request)
        entry = await fetch(
            self.app,
            request,
            receive,
            send,
            max_body_bytes=self.max_body_bytes,
            versions=versions,
            wall_clock=self._entries.wall_clock,
        )
        if entry is not None:  # an unstorable answer leaves the entry as it was
            await self._entries.store(request, entry)

    async def _head(
        self, request: CacheRequest, receive: Receive, send: Send, max_age: int | None
    ) -> None:
        """``HEAD``: answered from ``GET``'s entry; a miss goes to the app and stores nothing."""
        template = request.route.template
        try:
            entry = await self._entries.lookup(request)
        except BackendError:
            self._count(template, "error")
            await self.app(request.scope, receive, miss_send(send))
            return
        entry = self._entries.usable(entry, max_age)
        self._count(template, "miss" if entry is None else "hit")
        if entry is None:
            await self.app(request.scope, receive, miss_send(send))
        else:
            await send_entry(send, request, entry, age=self._entries.age(entry))


def _response_cache(options: CacheOptions) -> ResponseCache:
    """The cache passed in, or one built over ``store`` with the middleware's metrics."""
    if options.cache is not None:
        return options.cache
    prefix = options.metric_prefix
    return ResponseCache(
        options.store,
        registry=options.registry,
        metric_prefix=DEFAULT_PREFIX if prefix is None else prefix,
    )


def _outcome_counter(options: CacheOptions, cache: ResponseCache) -> OutcomeCounter:
    """``{metric_prefix}cache_requests_total{route,outcome}``, in the cache's registry unless
    the options name one."""
    prefix = cache.metric_prefix if options.metric_prefix is None else options.metric_prefix
    return OutcomeCounter(
        counter(
            f"{prefix}cache_requests_total",
            "Requests to cached routes, by route template and outcome "
            "(hit, miss, bypass, error, coalesced).",
            ["route", "outcome"],
            registry=cache.registry if options.registry is None else options.registry,
        )
    )


class OutcomeCounter:
    """``cache_requests_total{route, outcome}``, with its children kept once made."""

    __slots__ = ("_children", "_counter")

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._children: dict[tuple[str, Outcome], Counter] = {}

    def count(self, route: str, outcome: Outcome) -> None:
        """Count one request to ``route`` with ``outcome``."""
        child = self._children.get((route, outcome))
        if child is None:
            # labels() costs more than the rest of a hit; a child is created on first use, as
            # before, so series that never happened are still not exported.
            child = self._children[route, outcome] = self._counter.labels(route, outcome)
        child.inc()


__all__ = ["NOT_CACHED", "CacheKeywords", "CacheMiddleware", "CacheOptions", "OutcomeCounter"]
