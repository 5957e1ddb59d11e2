"""Serving the Prometheus exposition: ``MetricsApp`` and ``MetricsEndpointMiddleware``."""

from __future__ import annotations

import asyncio
import gzip
import hmac
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from prodkit._core import options as valid
from prodkit._core.addresses import ClientAddressResolver, IPNetwork
from prodkit._core.collectors import MULTIPROC_ENV
from prodkit._core.exceptions import ConfigurationError
from prodkit._core.headers import get_list_header, scope_header
from prodkit._core.options import build_options
from prodkit._core.problems import send_problem
from prodkit._core.routing import route_path, set_route_template
from prodkit._core.types import ASGIApp, Receive, Scope, Send
from prodkit.metrics._multiprocess import multiprocess_registry, remove_dead_process_files

METRICS_UNAUTHORIZED = "METRICS_UNAUTHORIZED"
METRICS_FORBIDDEN = "METRICS_FORBIDDEN"
METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"


class MetricsApp:
    """An ASGI app that serves the Prometheus exposition (``GET /metrics``).

    * Text format 0.0.4, or OpenMetrics when the scraper's ``Accept`` asks for it.
    * gzip when ``Accept-Encoding`` allows it.
    * Optional protection: a bearer token (``Authorization: Bearer <token>``; 401 problem
      ``METRICS_UNAUTHORIZED`` otherwise) and/or client networks (403 ``METRICS_FORBIDDEN``).
    * Multiprocess mode: when ``PROMETHEUS_MULTIPROC_DIR`` is set (or ``multiprocess_dir`` is
      given), every scrape aggregates all worker processes' files; ``registry`` is then not used.
      The directory must be emptied before the server starts (see ``docs/metrics.md``).

    Example::

        import asyncio

        import httpx
        from prometheus_client import CollectorRegistry, Counter
        from starlette.applications import Starlette
        from starlette.routing import Route

        from prodkit.metrics import MetricsApp

        registry = CollectorRegistry()
        orders = Counter("orders", "Orders placed.", registry=registry)
        app = Starlette(routes=[Route("/internal/metrics", MetricsApp(registry))])

        async def main():
            orders.inc()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                scrape = await client.get("/internal/metrics")
            assert scrape.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert "orders_total 1.0" in scrape.text

        asyncio.run(main())

    Arguments:
        registry: the registry to expose (default: prometheus-client's global ``REGISTRY``).
        bearer_token: require this token, compared in constant time (default ``None``: none).
        allowed_clients: addresses/networks allowed to scrape (default ``()``: everyone).
        client_resolver: finds the client address (default: no trusted proxies).
        multiprocess_dir: the multiprocess directory (default: ``$PROMETHEUS_MULTIPROC_DIR``).
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

        if bearer_token is not None:
            valid.secret("bearer_token", bearer_token, min_length=1)
        networks = _client_networks(allowed_clients)
        self._networks = networks
        self._token = None if bearer_token is None else bearer_token.encode("utf-8")
        self.client_resolver = client_resolver or ClientAddressResolver()
        directory = multiprocess_dir or os.environ.get(MULTIPROC_ENV) or None
        if directory is not None:
            self.registry = multiprocess_registry(directory)
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


def _client_networks(value: Iterable[str] | str) -> tuple[IPNetwork, ...]:
    """``allowed_clients`` as networks (a list, or a comma-separated string)."""
    networks = []
    for entry in valid.string_list("allowed_clients", value):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise ConfigurationError(
                f"allowed_clients={value!r}: {entry!r} is not an IP address or network; write "
                "addresses or networks, e.g. allowed_clients=['10.0.0.0/8', '::1']"
            ) from exc
    return tuple(networks)


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


@dataclass(frozen=True, kw_only=True, slots=True)
class MetricsEndpointOptions:
    """The options of :class:`MetricsEndpointMiddleware`, checked when made.

    Attributes:
        path: where the exposition is served (default ``"/metrics"``).
        registry: as for :class:`MetricsApp`.
        bearer_token: as for :class:`MetricsApp`.
        allowed_clients: as for :class:`MetricsApp` (a list, or a comma-separated string),
            kept as a tuple.
        client_resolver: as for :class:`MetricsApp`.
        multiprocess_dir: as for :class:`MetricsApp`.

    Raises:
        ConfigurationError: a ``path`` that does not start with ``/``, an empty
            ``bearer_token`` or one with spaces at an end, or ``allowed_clients`` that are not
            addresses or networks.
    """

    path: str = "/metrics"
    registry: CollectorRegistry | None = None
    bearer_token: str | None = None
    allowed_clients: Iterable[str] = ()
    client_resolver: ClientAddressResolver | None = None
    multiprocess_dir: str | None = None

    def __post_init__(self) -> None:
        valid.url_path("path", self.path)
        if self.bearer_token is not None:
            valid.secret("bearer_token", self.bearer_token, min_length=1)
        _client_networks(self.allowed_clients)
        clients = valid.string_list("allowed_clients", self.allowed_clients)
        object.__setattr__(self, "allowed_clients", clients)


class MetricsEndpointKeywords(TypedDict, total=False):
    """:class:`MetricsEndpointOptions`'s fields as keywords of :class:`MetricsEndpointMiddleware`."""

    path: str
    registry: CollectorRegistry | None
    bearer_token: str | None
    allowed_clients: Iterable[str]
    client_resolver: ClientAddressResolver | None
    multiprocess_dir: str | None


class MetricsEndpointMiddleware:
    """Serve :class:`MetricsApp` at ``path`` (``/metrics``) and pass everything else to ``app``.

    Example::

        import asyncio

        import httpx
        from prometheus_client import CollectorRegistry
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        from prodkit import HTTPMetricsMiddleware, MetricsEndpointMiddleware

        async def home(request):
            return PlainTextResponse("hello")

        registry = CollectorRegistry()  # or leave it out on both: the global one
        app = MetricsEndpointMiddleware(
            Starlette(routes=[Route("/", home)]), registry=registry, bearer_token="scrape-4f9c"
        )
        app = HTTPMetricsMiddleware(app, registry=registry)  # what it serves: /metrics excluded

        async def main():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                await client.get("/")
                refused = await client.get("/metrics")
                token = {"Authorization": "Bearer scrape-4f9c"}
                scrape = await client.get("/metrics", headers=token)
            assert refused.status_code == 401 and refused.json()["code"] == "METRICS_UNAUTHORIZED"
            served = 'http_request_duration_seconds_count{method="GET",route="/",status_code="200"}'
            assert f"{served} 1.0" in scrape.text

        asyncio.run(main())

    Arguments:
        app: the ASGI app to wrap.
        options: the options as one object (default: made from ``keywords``).
        **keywords: :class:`MetricsEndpointOptions`'s fields by name, instead of ``options``:
            ``MetricsEndpointMiddleware(app, bearer_token="scrape-4f9c")``.

    Raises:
        ConfigurationError: an invalid option (see :class:`MetricsEndpointOptions`), or a
            ``multiprocess_dir`` that does not exist.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        options: MetricsEndpointOptions | None = None,
        **keywords: Unpack[MetricsEndpointKeywords],
    ) -> None:
        self.app = app
        self.options = options = build_options(MetricsEndpointOptions, options, keywords)
        self.path = options.path
        self.metrics_app = MetricsApp(
            options.registry,
            bearer_token=options.bearer_token,
            allowed_clients=options.allowed_clients,
            client_resolver=options.client_resolver,
            multiprocess_dir=options.multiprocess_dir,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            scope["path"] == self.path
            or (scope.get("root_path") and route_path(scope) == self.path)
        ):
            set_route_template(scope, self.path)
            await self.metrics_app(scope, receive, send)
            return
        await self.app(scope, receive, send)


__all__ = [
    "METHOD_NOT_ALLOWED",
    "METRICS_FORBIDDEN",
    "METRICS_UNAUTHORIZED",
    "MetricsApp",
    "MetricsEndpointKeywords",
    "MetricsEndpointMiddleware",
    "MetricsEndpointOptions",
]
