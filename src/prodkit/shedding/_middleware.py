"""Load shedding: at most N requests in flight per process; the rest get a fast 503 problem."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypedDict, Unpack

from prometheus_client import CollectorRegistry

from prodkit._core import options as valid
from prodkit._core.collectors import DEFAULT_PREFIX, counter
from prodkit._core.options import build_options
from prodkit._core.outcome import PathFilter
from prodkit._core.problems import Problem
from prodkit._core.routing import RouteResolver, route_template_before
from prodkit._core.types import ASGIApp, Receive, Scope, Send

OVERLOADED = "OVERLOADED"

#: Problem type of a shed request, registered by draft-ietf-httpapi-ratelimit-headers
#: ("Temporary Reduced Capacity").
REDUCED_CAPACITY_TYPE = "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity"

#: Paths never shed by default: probes and scrapes must answer when the service is busiest.
DEFAULT_EXCLUDE_PATHS = ("/livez", "/readyz", "/healthz", "/metrics")


@dataclass(frozen=True, kw_only=True, slots=True)
class ConcurrencyLimitOptions:
    """The options of :class:`ConcurrencyLimitMiddleware`, checked when made.

    Attributes:
        max_concurrency: requests in flight at most (``MAX_CONCURRENCY``), per process.
        queue_size: requests that may wait for a slot (default ``0``: reject at once).
        queue_timeout: seconds a queued request waits before it is rejected (default ``0.0``;
            more than 0 when ``queue_size`` is).
        retry_after: the ``Retry-After`` seconds of a 503 (default ``1``).
        exclude_paths: paths never counted or shed (default :data:`DEFAULT_EXCLUDE_PATHS`:
            the health probes and ``/metrics``).
        route_resolver: optional hook for the ``endpoint`` label (see
            :func:`~prodkit.asgi.route_template_before`).
        registry: the Prometheus registry of
            ``{metric_prefix}capacity_rejections_total{endpoint}`` (default: prometheus-client's
            global ``REGISTRY``).
        metric_prefix: put in front of that metric name (default ``"prodkit_"``).

    Raises:
        ConfigurationError: ``max_concurrency`` or ``retry_after`` not an integer of at least
            1, a negative ``queue_size``, a ``queue_timeout`` that is not positive seconds
            while ``queue_size`` is, or ``exclude_paths`` not a list of paths.
    """

    max_concurrency: int
    queue_size: int = 0
    queue_timeout: float = 0.0
    retry_after: int = 1
    exclude_paths: Iterable[str] = DEFAULT_EXCLUDE_PATHS
    route_resolver: RouteResolver | None = None
    registry: CollectorRegistry | None = None
    metric_prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        valid.positive_int("max_concurrency", self.max_concurrency, example=100)
        valid.non_negative_int("queue_size", self.queue_size, example=100)
        if self.queue_size > 0:  # a queue needs a bound on the wait
            valid.positive_seconds("queue_timeout", self.queue_timeout, example=0.5)
        else:
            valid.non_negative_seconds("queue_timeout", self.queue_timeout)
        valid.positive_int("retry_after", self.retry_after, example=1)
        paths = self.exclude_paths
        if not isinstance(paths, str):
            paths = tuple(paths)  # read once, even from a generator
        PathFilter(paths)  # refuses one string, and paths without a leading "/"
        object.__setattr__(self, "exclude_paths", paths)


class ConcurrencyLimitKeywords(TypedDict, total=False):
    """:class:`ConcurrencyLimitOptions`'s fields as keywords of :class:`ConcurrencyLimitMiddleware`.

    ``max_concurrency`` is required unless ``options`` is given: leaving both out is a
    ``TypeError`` when the middleware is made.
    """

    max_concurrency: int
    queue_size: int
    queue_timeout: float
    retry_after: int
    exclude_paths: Iterable[str]
    route_resolver: RouteResolver | None
    registry: CollectorRegistry | None
    metric_prefix: str


class ConcurrencyLimitMiddleware:
    """Cap the HTTP requests this process works on at once; shed the excess with a 503.

    A request past ``max_concurrency`` is answered at once (or after waiting up to
    ``queue_timeout`` in a FIFO queue of ``queue_size``) with a 503
    ``application/problem+json``, ``code`` ``OVERLOADED``, ``Retry-After`` and
    ``Cache-Control: no-store``; the app is not called. Shedding early keeps latency bounded for
    the requests that are served, instead of every request slowing down together. A request
    holds its slot until the app returns (a streamed response until its last chunk).
    WebSocket connections and ``lifespan`` pass straight through.

    Example::

        import asyncio

        import httpx
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        from prodkit import ConcurrencyLimitMiddleware

        started, release = asyncio.Event(), asyncio.Event()

        async def report(request):
            started.set()
            await release.wait()  # a slow request, holding its slot
            return PlainTextResponse("done")

        app = ConcurrencyLimitMiddleware(
            Starlette(routes=[Route("/report", report)]), max_concurrency=1
        )

        async def main():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                first = asyncio.create_task(client.get("/report"))
                await started.wait()
                shed = await client.get("/report")  # over the limit: answered at once
                release.set()
                assert (await first).status_code == 200
            assert shed.status_code == 503 and shed.json()["code"] == "OVERLOADED"
            assert shed.headers["Retry-After"] == "1"

        asyncio.run(main())

    Arguments:
        app: the ASGI app to wrap.
        options: the options as one object (default: made from ``keywords``).
        **keywords: :class:`ConcurrencyLimitOptions`'s fields by name, instead of ``options``:
            ``ConcurrencyLimitMiddleware(app, max_concurrency=100)``.

    Raises:
        ConfigurationError: an invalid option (see :class:`ConcurrencyLimitOptions`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        options: ConcurrencyLimitOptions | None = None,
        **keywords: Unpack[ConcurrencyLimitKeywords],
    ) -> None:
        self.app = app
        self.options = options = build_options(ConcurrencyLimitOptions, options, keywords)
        self.max_concurrency = options.max_concurrency
        self.queue_size = options.queue_size
        self.queue_timeout = options.queue_timeout
        self.retry_after = options.retry_after
        self._excluded = PathFilter(options.exclude_paths)
        self._route_resolver = options.route_resolver
        # Shared by every request of this process: the point of the middleware.
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._rejections = counter(
            f"{options.metric_prefix}capacity_rejections_total",
            "Requests shed with 503 because the process was at its concurrency limit.",
            ["endpoint"],
            registry=options.registry,
        )

    @property
    def in_flight(self) -> int:
        """Requests holding a slot right now."""
        return self._in_flight

    @property
    def queued(self) -> int:
        """Requests waiting for a slot right now."""
        return len(self._waiters)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._excluded.excludes(scope):
            await self.app(scope, receive, send)
            return
        if self._in_flight < self.max_concurrency and not self._waiters:
            self._in_flight += 1
        elif not await self._wait_for_slot():
            endpoint = route_template_before(scope, self.app, self._route_resolver)
            self._rejections.labels(endpoint).inc()
            await Problem(
                503,
                OVERLOADED,
                "The server is at capacity; retry shortly.",
                type=REDUCED_CAPACITY_TYPE,
                headers={"Retry-After": str(self.retry_after)},
            ).send(send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self._release()

    async def _wait_for_slot(self) -> bool:
        """Queue for a slot; ``True`` once one was handed over, ``False`` on a full queue or timeout."""
        if len(self._waiters) >= self.queue_size:
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.queue_timeout):
                await waiter
            return True
        except TimeoutError:
            # The slot may have been handed over just as the timeout fired: then it is ours.
            return waiter.done() and not waiter.cancelled()
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot, but the request went away
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _release(self) -> None:
        """Hand the slot to the oldest waiter, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._in_flight -= 1


__all__ = [
    "DEFAULT_EXCLUDE_PATHS",
    "OVERLOADED",
    "REDUCED_CAPACITY_TYPE",
    "ConcurrencyLimitKeywords",
    "ConcurrencyLimitMiddleware",
    "ConcurrencyLimitOptions",
]
