"""Prometheus HTTP metrics with bounded labels, a ``/metrics`` endpoint, and business metrics."""

from __future__ import annotations

import asyncio
import gzip
import hmac
import ipaddress
import os
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from prodkit._core.addresses import ClientAddressResolver
from prodkit._core.collectors import (
    LoopGauge,
    LoopHistogram,
    M,
    counter,
    gauge,
    get_metric,
    histogram,
    loop_gauge,
    loop_histogram,
    loop_metrics_ok,
)
from prodkit._core.exceptions import ConfigurationError
from prodkit._core.headers import get_list_header, scope_header
from prodkit._core.observer import ReceiveWatcher, ResponseObserver
from prodkit._core.outcome import (
    KNOWN_METHODS,
    OTHER_METHOD,
    PathFilter,
    handled_error,
    outcome_status,
    resolve_route,
)
from prodkit._core.problems import send_problem
from prodkit._core.routing import RouteResolver, remember_root_path, set_route_template
from prodkit._core.types import ASGIApp, Receive, Scope, Send

#: Duration buckets in seconds (prometheus-client's defaults, 5 ms to 10 s).
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
#: Request and response size buckets in bytes (64 B to 16 MiB, factor 4).
SIZE_BUCKETS: tuple[float, ...] = tuple(float(64 * 4**i) for i in range(10))

_DURATION_HELP = "HTTP request duration in seconds, until the last body chunk was sent."
_IN_FLIGHT_HELP = "HTTP requests being served."
_REQUEST_SIZE_HELP = "HTTP request body bytes received."
_RESPONSE_SIZE_HELP = "HTTP response body bytes sent."

#: The label value of exception types beyond ``max_exception_types`` distinct names.
OTHER_EXCEPTION = "other"

METRICS_UNAUTHORIZED = "METRICS_UNAUTHORIZED"
METRICS_FORBIDDEN = "METRICS_FORBIDDEN"
METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"

_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


def _check_prefix(metric_prefix: str) -> None:
    if metric_prefix and not _NAME.match(metric_prefix):
        raise ConfigurationError(
            f"metric_prefix {metric_prefix!r} is not a valid start of a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"
        )


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
    route shares :data:`~prodkit.UNMATCHED_ROUTE`, so scanning a million paths adds one series.
    Methods outside the standard ones are counted as ``other``. An exception before the response
    started is recorded as status 500 and re-raised; a client that went away before a response
    as 499. ``lifespan`` and ``websocket`` pass straight through.

    Arguments:
        app: the ASGI app to wrap.
        registry: where the metrics are registered (default: prometheus-client's ``REGISTRY``).
        metric_prefix: put in front of every metric name (default none: the standard ``http_*`` names).
        buckets: duration histogram buckets in seconds.
        size_buckets: size histogram buckets in bytes.
        exclude_paths: paths not measured (default ``/metrics``; ``/static/*`` for a metric_prefix).
        methods: methods kept as label values; others become ``other``.
        route_resolver: a hook returning a request's route template.
        max_exception_types: distinct ``exception_type`` values before ``other`` is used.
    """

    duration: Histogram | LoopHistogram
    in_flight: Gauge | LoopGauge
    request_size: Histogram | LoopHistogram
    response_size: Histogram | LoopHistogram

    def __init__(
        self,
        app: ASGIApp,
        *,
        registry: CollectorRegistry | None = None,
        metric_prefix: str = "",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        size_buckets: Sequence[float] = SIZE_BUCKETS,
        exclude_paths: Iterable[str] = ("/metrics",),
        methods: Iterable[str] = KNOWN_METHODS,
        route_resolver: RouteResolver | None = None,
        max_exception_types: int = 50,
    ) -> None:
        _check_prefix(metric_prefix)
        if not buckets or list(buckets) != sorted(buckets):
            raise ConfigurationError("buckets must be a non-empty increasing list of seconds")
        if not size_buckets or list(size_buckets) != sorted(size_buckets):
            raise ConfigurationError("size_buckets must be a non-empty increasing list of bytes")
        if max_exception_types < 1:
            raise ConfigurationError("max_exception_types must be at least 1")
        self.app = app
        self.exclude_paths = PathFilter(exclude_paths)
        self._excluding = bool(self.exclude_paths)
        self.methods = frozenset(m.upper() for m in methods)
        self.route_resolver = route_resolver
        self.max_exception_types = max_exception_types
        # Outside multiprocess mode the hot metrics take no lock and no validation per
        # observation (see LoopHistogram); prodkit records them only from the event loop.
        loop = loop_metrics_ok()
        make_histogram = loop_histogram if loop else histogram
        try:
            self.duration = make_histogram(
                f"{metric_prefix}http_request_duration_seconds",
                _DURATION_HELP,
                ["method", "route", "status_code"],
                registry=registry,
                buckets=buckets,
            )
            in_flight_name = f"{metric_prefix}http_requests_in_flight"
            self.in_flight = (
                loop_gauge(in_flight_name, _IN_FLIGHT_HELP, ["method"], registry=registry)
                if loop
                else gauge(
                    in_flight_name,
                    _IN_FLIGHT_HELP,
                    ["method"],
                    registry=registry,
                    multiprocess_mode="livesum",
                )
            )
            self.request_size = make_histogram(
                f"{metric_prefix}http_request_size_bytes",
                _REQUEST_SIZE_HELP,
                ["method", "route"],
                registry=registry,
                buckets=size_buckets,
            )
            self.response_size = make_histogram(
                f"{metric_prefix}http_response_size_bytes",
                _RESPONSE_SIZE_HELP,
                ["method", "route"],
                registry=registry,
                buckets=size_buckets,
            )
            self.exceptions = counter(
                f"{metric_prefix}http_exceptions_total",
                "Exceptions raised by the app while serving HTTP requests, by type name.",
                ["route", "exception_type"],
                registry=registry,
            )
        except ValueError as exc:  # another library registered the same names in this registry
            raise ConfigurationError(
                f"{exc}: pass registry= (a CollectorRegistry of prodkit's own) or metric_prefix="
            ) from exc
        # Label children cached per label tuple: .labels() validates and locks on every call.
        self._durations: dict[tuple[str, str, int], Any] = {}
        self._sizes: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._in_flight: dict[str, Any] = {}
        self._exception_types: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self._excluding and scope["path"] in self.exclude_paths):
            await self.app(scope, receive, send)
            return

        method = scope["method"]
        if method not in self.methods:
            method = OTHER_METHOD
        in_flight = self._in_flight.get(method)
        if in_flight is None:
            in_flight = self._in_flight[method] = self.in_flight.labels(method)
        in_flight.inc()
        start = time.perf_counter()
        remember_root_path(scope)
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
            error = handled_error(scope, error)
            self._record(
                scope, method, start, observer, watcher.body_bytes, watcher.disconnected, error
            )

    def _record(
        self,
        scope: Scope,
        method: str,
        start: float,
        observer: ResponseObserver,
        received: int,
        disconnected: bool,
        error: BaseException | None,
    ) -> None:
        end = observer.finished_at or time.perf_counter()
        status = outcome_status(observer, disconnected, error)
        route = resolve_route(scope, self.app, status, self.route_resolver)
        key = (method, route, status)
        duration = self._durations.get(key)
        if duration is None:
            duration = self._durations[key] = self.duration.labels(method, route, str(status))
        duration.observe(end - start)
        sizes = self._sizes.get((method, route))
        if sizes is None:
            sizes = self._sizes[(method, route)] = (
                self.request_size.labels(method, route),
                self.response_size.labels(method, route),
            )
        sizes[0].observe(received)
        sizes[1].observe(observer.body_bytes)
        if error is not None and not isinstance(error, asyncio.CancelledError):
            name = type(error).__name__
            if name not in self._exception_types:
                if len(self._exception_types) >= self.max_exception_types:
                    name = OTHER_EXCEPTION
                else:
                    self._exception_types.add(name)
            self.exceptions.labels(route, name).inc()


class MetricsApp:
    """An ASGI app that serves the Prometheus exposition (``GET /metrics``).

    * Text format 0.0.4, or OpenMetrics when the scraper's ``Accept`` asks for it.
    * gzip when ``Accept-Encoding`` allows it.
    * Optional protection: a bearer token (``Authorization: Bearer <token>``; 401 problem
      ``METRICS_UNAUTHORIZED`` otherwise) and/or client networks (403 ``METRICS_FORBIDDEN``).
    * Multiprocess mode: when ``PROMETHEUS_MULTIPROC_DIR`` is set (or ``multiprocess_dir`` is
      given), every scrape aggregates all worker processes' files; ``registry`` is then not used.
      The directory must be emptied before the server starts (see ``docs/metrics.md``).

    Arguments:
        registry: the registry to expose (default prometheus-client's ``REGISTRY``).
        bearer_token: require this token (compared in constant time).
        allowed_clients: addresses/networks allowed to scrape (empty: everyone).
        client_resolver: finds the client address (default: no trusted proxies).
        multiprocess_dir: the multiprocess directory; default ``$PROMETHEUS_MULTIPROC_DIR``.
            Before each scrape, live-gauge files of processes that no longer exist are removed
            (see :func:`remove_dead_process_files`).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        bearer_token: str | None = None,
        allowed_clients: Iterable[str] = (),
        client_resolver: ClientAddressResolver | None = None,
        multiprocess_dir: str | None = None,
    ) -> None:
        from prometheus_client import REGISTRY

        if bearer_token is not None and (not bearer_token or bearer_token != bearer_token.strip()):
            raise ConfigurationError("bearer_token must be a non-empty string without spaces")
        if isinstance(allowed_clients, str):
            allowed_clients = [c for c in allowed_clients.split(",") if c.strip()]
        networks = []
        for entry in allowed_clients:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError as exc:
                raise ConfigurationError(
                    f"allowed_clients: {entry!r} is not an IP address or network"
                ) from exc
        self._networks = tuple(networks)
        self._token = None if bearer_token is None else bearer_token.encode("utf-8")
        self.client_resolver = client_resolver or ClientAddressResolver()
        directory = multiprocess_dir or os.environ.get(_MULTIPROC_ENV) or None
        if directory is not None:
            from prometheus_client.multiprocess import MultiProcessCollector

            if not os.path.isdir(directory):
                raise ConfigurationError(
                    f"multiprocess directory {directory!r} does not exist; create it (empty) "
                    "before the server starts"
                )
            collected = CollectorRegistry()
            MultiProcessCollector(collected, path=directory)  # type: ignore[no-untyped-call]
            self.registry = collected
        else:
            self.registry = registry if registry is not None else REGISTRY
        self.multiprocess_dir = directory

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["method"] not in ("GET", "HEAD"):
            await send_problem(
                send,
                405,
                METHOD_NOT_ALLOWED,
                "The metrics endpoint answers GET and HEAD only.",
                headers={"Allow": "GET, HEAD"},
            )
            return
        if self._networks:
            address = self.client_resolver.resolve_ip(scope)
            if address is None or not any(address in net for net in self._networks):
                await send_problem(
                    send, 403, METRICS_FORBIDDEN, "This client may not read the metrics."
                )
                return
        if self._token is not None and not _authorized(scope, self._token):
            await send_problem(
                send,
                401,
                METRICS_UNAUTHORIZED,
                "The metrics endpoint needs a valid bearer token.",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
            return
        encoder, content_type = _negotiate(scope_header(scope, b"accept"))
        # Collection reads every metric (and, in multiprocess mode, every worker's files):
        # off the event loop, so that a scrape never stalls requests.
        body = await asyncio.to_thread(self._collect, encoder)
        headers = [
            (b"content-type", content_type.encode("latin-1")),
            (b"cache-control", b"no-store"),
            (b"vary", b"Accept, Accept-Encoding"),
        ]
        if _accepts_gzip(scope):
            body = gzip.compress(body, compresslevel=5)
            headers.append((b"content-encoding", b"gzip"))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    def _collect(self, encoder: Any) -> bytes:
        if self.multiprocess_dir is not None:
            remove_dead_process_files(self.multiprocess_dir)
        return bytes(encoder(self.registry))


def _authorized(scope: Scope, token: bytes) -> bool:
    value = scope_header(scope, b"authorization")
    if value is None:
        return False
    scheme, _, credentials = value.partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    return hmac.compare_digest(credentials.strip(), token)


def _negotiate(accept: bytes | None) -> tuple[Any, str]:
    """The exposition format for an ``Accept`` header; the text format for anything unusable."""
    try:
        return choose_encoder(accept.decode("latin-1") if accept else "")
    except (TypeError, ValueError):  # e.g. "version=abc": prometheus-client cannot compare it
        return choose_encoder("")


def _accepts_gzip(scope: Scope) -> bool:
    for member in get_list_header(scope.get("headers") or (), b"accept-encoding"):
        coding, _, params = member.partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            quality = params.strip().lower()
            if not quality.startswith("q="):
                return True
            try:
                return float(quality[2:]) > 0.0
            except ValueError:  # a malformed weight: serve uncompressed rather than fail
                return False
    return False


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class MetricsEndpointMiddleware:
    """Serve :class:`MetricsApp` at ``path`` (``/metrics``) and pass everything else to ``app``.

    Arguments:
        app: the ASGI app to wrap.
        path: where the exposition is served.
        registry, bearer_token, allowed_clients, client_resolver, multiprocess_dir: as for
            :class:`MetricsApp`.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        path: str = "/metrics",
        registry: CollectorRegistry | None = None,
        bearer_token: str | None = None,
        allowed_clients: Iterable[str] = (),
        client_resolver: ClientAddressResolver | None = None,
        multiprocess_dir: str | None = None,
    ) -> None:
        if not path.startswith("/"):
            raise ConfigurationError(f"path {path!r} must start with '/'")
        self.app = app
        self.path = path
        self.metrics_app = MetricsApp(
            registry,
            bearer_token=bearer_token,
            allowed_clients=allowed_clients,
            client_resolver=client_resolver,
            multiprocess_dir=multiprocess_dir,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.path:
            set_route_template(scope, self.path)
            await self.metrics_app(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BusinessMetrics:
    """Get-or-create application metrics in one registry, under one prefix.

    Creating the same metric twice (a module imported again, two app instances in tests) returns
    the existing collector instead of failing with "Duplicated timeseries". Works unchanged in
    multiprocess mode (gauges default to ``livesum``, the sum over live workers).

    Example::

        metrics = BusinessMetrics()
        fund_creations = metrics.counter(
            "fund_creations_total", "Funds created.", ["status", "idempotency_status", "model_version"]
        )
        fund_creations.labels(status="201", idempotency_status="created", model_version="v3").inc()

    Arguments:
        registry: where metrics are registered (default prometheus-client's ``REGISTRY``).
        metric_prefix: put in front of every name (default none).
    """

    def __init__(
        self, *, registry: CollectorRegistry | None = None, metric_prefix: str = ""
    ) -> None:
        _check_prefix(metric_prefix)
        self.registry = registry
        self.metric_prefix = metric_prefix

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        """Return the counter ``metric_prefix + name`` (``_total`` is added in the exposition if missing)."""
        return self._get(Counter, name, documentation, labels)

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        """Return the histogram ``metric_prefix + name``."""
        return self._get(Histogram, name, documentation, labels, buckets=tuple(buckets))

    def gauge(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        *,
        multiprocess_mode: str = "livesum",
    ) -> Gauge:
        """Return the gauge ``metric_prefix + name`` (``multiprocess_mode`` says how workers combine)."""
        return self._get(Gauge, name, documentation, labels, multiprocess_mode=multiprocess_mode)

    def _get(
        self, kind: type[M], name: str, documentation: str, labels: Sequence[str], **extra: Any
    ) -> M:
        if isinstance(labels, str):
            raise ConfigurationError(f"{name}: labels take a list of names, not one string")
        # Classic names only (prometheus-client also accepts UTF-8 ones, which PromQL must quote).
        if not _NAME.match(self.metric_prefix + name):
            raise ConfigurationError(
                f"metric name {self.metric_prefix + name!r} must match [a-zA-Z_:][a-zA-Z0-9_:]*"
            )
        for label in labels:
            if not _LABEL.match(label) or label.startswith("__"):
                raise ConfigurationError(
                    f"{name}: label {label!r} must match [a-zA-Z_][a-zA-Z0-9_]* "
                    "and not start with '__'"
                )
        try:
            return get_metric(
                kind,
                self.metric_prefix + name,
                documentation,
                labels,
                registry=self.registry,
                **extra,
            )
        except ValueError as exc:
            raise ConfigurationError(f"metric {self.metric_prefix + name!r}: {exc}") from exc


def business_counter(
    name: str,
    documentation: str,
    labels: Sequence[str] = (),
    *,
    registry: CollectorRegistry | None = None,
    metric_prefix: str = "",
) -> Counter:
    """Return (creating once) an application counter; see :class:`BusinessMetrics`."""
    return BusinessMetrics(registry=registry, metric_prefix=metric_prefix).counter(
        name, documentation, labels
    )


def business_histogram(
    name: str,
    documentation: str,
    labels: Sequence[str] = (),
    *,
    registry: CollectorRegistry | None = None,
    metric_prefix: str = "",
    buckets: Sequence[float] = DEFAULT_BUCKETS,
) -> Histogram:
    """Return (creating once) an application histogram; see :class:`BusinessMetrics`."""
    return BusinessMetrics(registry=registry, metric_prefix=metric_prefix).histogram(
        name, documentation, labels, buckets=buckets
    )


def business_gauge(
    name: str,
    documentation: str,
    labels: Sequence[str] = (),
    *,
    registry: CollectorRegistry | None = None,
    metric_prefix: str = "",
    multiprocess_mode: str = "livesum",
) -> Gauge:
    """Return (creating once) an application gauge; see :class:`BusinessMetrics`."""
    return BusinessMetrics(registry=registry, metric_prefix=metric_prefix).gauge(
        name, documentation, labels, multiprocess_mode=multiprocess_mode
    )


def mark_process_dead(pid: int, multiprocess_dir: str | None = None) -> None:
    """Remove a dead worker's live gauges from the multiprocess directory (gunicorn ``child_exit``)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, multiprocess_dir or os.environ.get(_MULTIPROC_ENV))  # type: ignore[no-untyped-call]


_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db\Z")


def remove_dead_process_files(multiprocess_dir: str | None = None) -> list[int]:
    """Remove the live-gauge files of worker processes that no longer exist; return their pids.

    prometheus-client sums ``livesum`` gauges (``http_requests_in_flight``) over every file in
    the directory, alive or not: a worker killed mid-request would count its requests as in
    flight forever. gunicorn can call :func:`mark_process_dead` from ``child_exit``; uvicorn's
    ``--workers`` has no such hook, so :class:`MetricsApp` calls this before each scrape.
    """
    directory = multiprocess_dir or os.environ.get(_MULTIPROC_ENV)
    if not directory:
        return []
    dead: set[int] = set()
    for name in os.listdir(directory):
        found = _LIVE_GAUGE_FILE.match(name)
        if found is None:
            continue
        pid = int(found.group(1))
        if pid in dead or _alive(pid):
            continue
        dead.add(pid)
    for pid in sorted(dead):
        mark_process_dead(pid, directory)
    return sorted(dead)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: an existence check, nothing is delivered
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


__all__ = [
    "DEFAULT_BUCKETS",
    "METHOD_NOT_ALLOWED",
    "METRICS_FORBIDDEN",
    "METRICS_UNAUTHORIZED",
    "OTHER_EXCEPTION",
    "SIZE_BUCKETS",
    "BusinessMetrics",
    "HTTPMetricsMiddleware",
    "MetricsApp",
    "MetricsEndpointMiddleware",
    "business_counter",
    "business_gauge",
    "business_histogram",
    "mark_process_dead",
    "remove_dead_process_files",
]
