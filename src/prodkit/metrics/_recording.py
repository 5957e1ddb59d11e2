"""Recording Prometheus metrics for every HTTP request: ``HTTPMetricsMiddleware``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from prodkit._core import options as valid
from prodkit._core.collectors import (
    LoopGauge,
    LoopHistogram,
    counter,
    gauge,
    histogram,
    loop_gauge,
    loop_histogram,
    loop_metrics_ok,
)
from prodkit._core.exceptions import ConfigurationError
from prodkit._core.observer import ReceiveWatcher, ResponseObserver
from prodkit._core.options import build_options
from prodkit._core.outcome import (
    KNOWN_METHODS,
    OTHER_METHOD,
    PathFilter,
    resolve_route,
)
from prodkit._core.routing import RouteResolver
from prodkit._core.state import REQUEST_STATE_KEY, RequestState, request_state
from prodkit._core.types import ASGIApp, Receive, Scope, Send
from prodkit.metrics._conventions import (
    DEFAULT_BUCKETS,
    HTTP_EXCEPTIONS,
    HTTP_EXCEPTIONS_LABELS,
    HTTP_REQUEST_DURATION,
    HTTP_REQUEST_DURATION_LABELS,
    HTTP_REQUEST_SIZE,
    HTTP_REQUESTS_IN_FLIGHT,
    HTTP_REQUESTS_IN_FLIGHT_LABELS,
    HTTP_RESPONSE_SIZE,
    HTTP_SIZE_LABELS,
    SIZE_BUCKETS,
)

_DURATION_HELP = "HTTP request duration in seconds, until the last body chunk was sent."
_IN_FLIGHT_HELP = "HTTP requests being served."
_REQUEST_SIZE_HELP = "HTTP request body bytes received."
_RESPONSE_SIZE_HELP = "HTTP response body bytes sent."
_EXCEPTIONS_HELP = "Exceptions raised by the app while serving HTTP requests, by type name."

#: The label value of exception types beyond ``max_exception_types`` distinct names.
OTHER_EXCEPTION = "other"


@dataclass(frozen=True, kw_only=True, slots=True)
class HTTPMetricsOptions:
    """The options of :class:`HTTPMetricsMiddleware`, checked when made.

    Attributes:
        registry: where the metrics are registered (default: prometheus-client's global
            ``REGISTRY``).
        metric_prefix: put in front of every metric name (default ``""``: the standard
            ``http_*`` names).
        buckets: duration histogram buckets in seconds, increasing (default
            :data:`DEFAULT_BUCKETS`), kept as a tuple.
        size_buckets: size histogram buckets in bytes, increasing (default
            :data:`SIZE_BUCKETS`), kept as a tuple.
        exclude_paths: paths not measured (default ``("/metrics",)``; ``/static/*`` for a
            prefix), kept as a tuple.
        methods: methods kept as label values (RFC 9110's and ``PATCH`` unless given); others
            become ``other``. Kept as a frozen set, upper-cased.
        route_resolver: a hook returning a request's route template.
        max_exception_types: distinct ``exception_type`` values before ``other`` is used
            (default ``50``).

    Raises:
        ConfigurationError: a ``metric_prefix`` that cannot start a metric name, buckets that
            are not increasing numbers, paths or methods that are not, or a
            ``max_exception_types`` below 1.
    """

    registry: CollectorRegistry | None = None
    metric_prefix: str = ""
    buckets: Sequence[float] = DEFAULT_BUCKETS
    size_buckets: Sequence[float] = SIZE_BUCKETS
    exclude_paths: Iterable[str] = ("/metrics",)
    methods: Iterable[str] = KNOWN_METHODS
    route_resolver: RouteResolver | None = None
    max_exception_types: int = 50

    def __post_init__(self) -> None:
        valid.metric_prefix("metric_prefix", self.metric_prefix)
        buckets = valid.increasing_numbers("buckets", self.buckets, example="[0.1, 0.5, 1.0]")
        sizes = valid.increasing_numbers("size_buckets", self.size_buckets, example="[1024.0]")
        paths = valid.path_list("exclude_paths", self.exclude_paths)
        methods = frozenset(
            valid.http_token("methods", method).upper()
            for method in valid.string_list("methods", self.methods)
        )
        valid.positive_int("max_exception_types", self.max_exception_types, example=50)
        object.__setattr__(self, "buckets", buckets)
        object.__setattr__(self, "size_buckets", sizes)
        object.__setattr__(self, "exclude_paths", paths)
        object.__setattr__(self, "methods", methods)


class HTTPMetricsKeywords(TypedDict, total=False):
    """:class:`HTTPMetricsOptions`'s fields as keywords of :class:`HTTPMetricsMiddleware`."""

    registry: CollectorRegistry | None
    metric_prefix: str
    buckets: Sequence[float]
    size_buckets: Sequence[float]
    exclude_paths: Iterable[str]
    methods: Iterable[str]
    route_resolver: RouteResolver | None
    max_exception_types: int


class HTTPMetricsMiddleware:
    """Record Prometheus metrics for every HTTP request, with labels that stay bounded.

    Metrics (names stable; ``metric_prefix`` goes in front, none by default):

    * ``http_request_duration_seconds{method,route,status_code}`` histogram, until the last
      body chunk was sent (streamed responses are timed to their end);
    * ``http_requests_in_flight{method}`` gauge;
    * ``http_request_size_bytes{method,route}`` and ``http_response_size_bytes{method,route}``
      histograms of the body bytes actually received and sent;
    * ``http_exceptions_total{route,exception_type}``: exceptions raised by the app (type names
      only, at most ``max_exception_types`` of them, then ``other``).

    ``route`` is always the route template (``/api/funds/{id}``); every request that matched no
    route shares :data:`~prodkit.asgi.UNMATCHED_ROUTE`, so scanning a million paths adds one series.
    Methods outside the standard ones are counted as ``other``. An exception before the response
    started is recorded as status 500 and re-raised; a client that went away before a response
    as 499. ``lifespan`` and ``websocket`` pass straight through.

    Example::

        import asyncio

        import httpx
        from prometheus_client import CollectorRegistry
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        from prodkit import HTTPMetricsMiddleware

        async def item(request):
            return JSONResponse({"id": request.path_params["item_id"]})

        registry = CollectorRegistry()  # or leave it out: prometheus-client's global one
        app = HTTPMetricsMiddleware(
            Starlette(routes=[Route("/items/{item_id}", item)]), registry=registry
        )

        async def main():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                for item_id in (1, 2, 3):
                    await client.get(f"/items/{item_id}")
            # Three paths, one series: labelled by the route's template.
            labels = {"method": "GET", "route": "/items/{item_id}", "status_code": "200"}
            assert registry.get_sample_value("http_request_duration_seconds_count", labels) == 3

        asyncio.run(main())

    Arguments:
        app: the ASGI app to wrap.
        options: the options as one object (default: made from ``keywords``).
        **keywords: :class:`HTTPMetricsOptions`'s fields by name, instead of ``options``:
            ``HTTPMetricsMiddleware(app, registry=registry)``.

    Raises:
        ConfigurationError: an invalid option (see :class:`HTTPMetricsOptions`), or metric
            names another library registered in ``registry``.
    """

    duration: Histogram | LoopHistogram
    in_flight: Gauge | LoopGauge
    request_size: Histogram | LoopHistogram
    response_size: Histogram | LoopHistogram
    exceptions: Counter

    def __init__(
        self,
        app: ASGIApp,
        *,
        options: HTTPMetricsOptions | None = None,
        **keywords: Unpack[HTTPMetricsKeywords],
    ) -> None:
        self.app = app
        self.options = options = build_options(HTTPMetricsOptions, options, keywords)
        self.exclude_paths = PathFilter(options.exclude_paths)
        self._excluding = bool(self.exclude_paths)
        self.methods = frozenset(options.methods)
        self.route_resolver = options.route_resolver
        self.max_exception_types = options.max_exception_types
        registry, metric_prefix = options.registry, options.metric_prefix
        try:
            self._create_collectors(registry, metric_prefix, options.buckets, options.size_buckets)
        except ValueError as exc:  # another library registered the same names in this registry
            raise ConfigurationError(
                f"{exc}: pass registry= (a CollectorRegistry of prodkit's own) or metric_prefix="
            ) from exc
        # Label children cached per label tuple: .labels() validates and locks on every call.
        self._durations: dict[tuple[str, str, int], Any] = {}
        self._sizes: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._in_flight: dict[str, Any] = {}
        self._exception_types: set[str] = set()

    def _create_collectors(
        self,
        registry: CollectorRegistry | None,
        metric_prefix: str,
        buckets: Sequence[float],
        size_buckets: Sequence[float],
    ) -> None:
        # Outside multiprocess mode the hot metrics take no lock and no validation per
        # observation (see LoopHistogram); prodkit records them only from the event loop.
        loop = loop_metrics_ok()
        make_histogram = loop_histogram if loop else histogram
        self.duration = make_histogram(
            f"{metric_prefix}{HTTP_REQUEST_DURATION}",
            _DURATION_HELP,
            HTTP_REQUEST_DURATION_LABELS,
            registry=registry,
            buckets=buckets,
        )
        in_flight_name = f"{metric_prefix}{HTTP_REQUESTS_IN_FLIGHT}"
        self.in_flight = (
            loop_gauge(
                in_flight_name, _IN_FLIGHT_HELP, HTTP_REQUESTS_IN_FLIGHT_LABELS, registry=registry
            )
            if loop
            # livesum: the requests in flight in the workers that are alive.
            else gauge(
                in_flight_name,
                _IN_FLIGHT_HELP,
                HTTP_REQUESTS_IN_FLIGHT_LABELS,
                registry=registry,
                multiprocess_mode="livesum",
            )
        )
        self.request_size = make_histogram(
            f"{metric_prefix}{HTTP_REQUEST_SIZE}",
            _REQUEST_SIZE_HELP,
            HTTP_SIZE_LABELS,
            registry=registry,
            buckets=size_buckets,
        )
        self.response_size = make_histogram(
            f"{metric_prefix}{HTTP_RESPONSE_SIZE}",
            _RESPONSE_SIZE_HELP,
            HTTP_SIZE_LABELS,
            registry=registry,
            buckets=size_buckets,
        )
        self.exceptions = counter(
            f"{metric_prefix}{HTTP_EXCEPTIONS}",
            _EXCEPTIONS_HELP,
            HTTP_EXCEPTIONS_LABELS,
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self._excluding and self.exclude_paths.excludes(scope)):
            await self.app(scope, receive, send)
            return

        method = scope["method"]
        if method not in self.methods:
            method = OTHER_METHOD
        in_flight = self._in_flight.get(method)
        if in_flight is None:
            in_flight = self._in_flight[method] = self.in_flight.labels(method)
        in_flight.inc()
        # The outermost layer's (its start time is the request's), or one of our own.
        state = scope.get(REQUEST_STATE_KEY) or request_state(scope)
        observer = ResponseObserver.shared(send)
        watcher = ReceiveWatcher.shared(receive)

        error: BaseException | None = None
        try:
            await self.app(scope, watcher, observer)
        except BaseException as exc:
            error = exc
            raise
        finally:
            in_flight.dec()
            state.finish(observer, watcher, error)
            self._record(scope, state, method)

    def _record(self, scope: Scope, state: RequestState, method: str) -> None:
        status: int = state.status  # type: ignore[assignment]
        route = resolve_route(scope, state, self.app, status, self.route_resolver)
        key = (method, route, status)
        duration = self._durations.get(key)
        if duration is None:
            duration = self._durations[key] = self.duration.labels(method, route, str(status))
        duration.observe(state.end - state.start)  # type: ignore[operator]
        sizes = self._sizes.get((method, route))
        if sizes is None:
            sizes = self._sizes[(method, route)] = (
                self.request_size.labels(method, route),
                self.response_size.labels(method, route),
            )
        sizes[0].observe(state.request_bytes)
        sizes[1].observe(state.response_bytes)
        error = state.error
        if error is not None and not isinstance(error, asyncio.CancelledError):
            name = type(error).__name__
            if name not in self._exception_types:
                if len(self._exception_types) >= self.max_exception_types:
                    name = OTHER_EXCEPTION
                else:
                    self._exception_types.add(name)
            self.exceptions.labels(route, name).inc()


__all__ = [
    "OTHER_EXCEPTION",
    "HTTPMetricsKeywords",
    "HTTPMetricsMiddleware",
    "HTTPMetricsOptions",
]
