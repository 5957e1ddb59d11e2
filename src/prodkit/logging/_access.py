"""One structured "request completed" line per HTTP request, whatever happened to it."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypedDict, Unpack

import structlog

from prodkit._core import options as valid
from prodkit._core.addresses import ClientAddressResolver, normalize_ip
from prodkit._core.context import request_id_var
from prodkit._core.exceptions import ConfigurationError
from prodkit._core.observer import ReceiveWatcher, ResponseObserver
from prodkit._core.options import build_options
from prodkit._core.outcome import (
    PathFilter,
    resolve_route,
)
from prodkit._core.redaction import Redactor
from prodkit._core.routing import RouteResolver
from prodkit._core.state import REQUEST_STATE_KEY, RequestState, request_state
from prodkit._core.types import ASGIApp, Receive, Scope, Send
from prodkit.logging._config import get_logger
from prodkit.logging._context import restore_contextvars, snapshot_contextvars
from prodkit.logging._direct import direct_writer

#: The canonical text of a peer address (IPv4-mapped IPv6 becomes IPv4), cached.
_peer_text = lru_cache(maxsize=4096)(normalize_ip)

_LOGGER_NAME = "prodkit.access"
#: The response headers of the outcome fields: ``Idempotency-Status: created|replayed`` and
#: ``X-Cache: HIT|MISS`` (the header contract every layer follows; this room reads the headers
#: the client gets, not another room's code).
_IDEMPOTENCY_STATUS = b"idempotency-status"
_CACHE_STATUS = b"x-cache"
_LEVEL_NAMES = ("debug", "info", "warning", "error", "critical")
#: The numbers structlog's ``is_enabled_for`` takes (the standard library's levels).
_LEVEL_NUMBERS = {name: getattr(logging, name.upper()) for name in _LEVEL_NAMES}

#: Log level by status class (first digit): 1xx-3xx info, 4xx warning, 5xx error.
DEFAULT_LEVELS: Mapping[int, str] = {1: "info", 2: "info", 3: "info", 4: "warning", 5: "error"}


@dataclass(frozen=True, kw_only=True, slots=True)
class AccessLogOptions:
    """The options of :class:`AccessLogMiddleware`, checked when made.

    Attributes:
        logger: a structlog logger (default: structlog's ``prodkit.access`` logger).
        event: the event text (default ``"request completed"``).
        levels: log level per status class (``{4: "warning"}`` merges into
            :data:`DEFAULT_LEVELS`), or a callable ``status -> level name`` (default:
            :data:`DEFAULT_LEVELS`).
        sample_rate: fraction of successful (< 400) requests logged; errors are always logged
            (default ``1.0``: every request).
        exclude_paths: paths not logged at all (``/livez``; ``/static/*`` for a prefix), kept
            as a tuple.
        client_resolver: finds the client address (default: no trusted proxies).
        trusted_proxies: shorthand for ``client_resolver=ClientAddressResolver(trusted_proxies)``
            (a list, or a comma-separated string as in ``TRUSTED_PROXIES``), kept as a tuple.
        request_headers: request headers to log under ``headers`` (secret ones redacted), kept
            as a tuple.
        redactor: redacts the query string and logged headers (default: a
            :class:`~prodkit.logging.Redactor` with its standard lists).
        route_resolver: a hook returning a request's route template (see
            :func:`prodkit.asgi.route_template`).

    Raises:
        ConfigurationError: a ``sample_rate`` outside 0 to 1, a level that is not one, a key
            of ``levels`` that is not a status class, paths or header names that are not, a
            proxy that is not an address or network, or both ``client_resolver`` and
            ``trusted_proxies``.
    """

    logger: Any | None = None
    event: str = "request completed"
    levels: Mapping[int, str] | Callable[[int], str] | None = None
    sample_rate: float = 1.0
    exclude_paths: Iterable[str] = ()
    client_resolver: ClientAddressResolver | None = None
    trusted_proxies: Iterable[str] | str = ()
    request_headers: Iterable[str] = ()
    redactor: Redactor | None = None
    route_resolver: RouteResolver | None = None

    def __post_init__(self) -> None:
        valid.fraction("sample_rate", self.sample_rate, example=0.1)
        if self.levels is not None and not callable(self.levels):
            _check_levels(self.levels)
        object.__setattr__(
            self, "exclude_paths", valid.path_list("exclude_paths", self.exclude_paths)
        )
        proxies = valid.string_list("trusted_proxies", self.trusted_proxies)
        if self.client_resolver is not None and proxies:
            raise ConfigurationError(
                f"trusted_proxies={proxies!r}: given with client_resolver; write either "
                "client_resolver= or trusted_proxies=, not both"
            )
        ClientAddressResolver(proxies)  # refuses what is not an address or a network
        object.__setattr__(self, "trusted_proxies", proxies)
        headers = valid.header_names("request_headers", self.request_headers)
        object.__setattr__(self, "request_headers", headers)


def _check_levels(levels: Mapping[int, str]) -> None:
    if not isinstance(levels, Mapping):
        raise ConfigurationError(
            f"levels={levels!r}: neither a mapping nor a callable; write e.g. "
            "levels={4: 'info'} or a function of the status"
        )
    for klass, name in levels.items():
        valid.one_of(f"levels[{klass!r}]", name, _LEVEL_NAMES)
        if klass not in DEFAULT_LEVELS:
            raise ConfigurationError(
                f"levels={dict(levels)!r}: {klass!r} is not a status class (1 to 5); write "
                "e.g. levels={4: 'info'} for every 4xx"
            )


class AccessLogKeywords(TypedDict, total=False):
    """:class:`AccessLogOptions`'s fields as keywords of :class:`AccessLogMiddleware`."""

    logger: Any | None
    event: str
    levels: Mapping[int, str] | Callable[[int], str] | None
    sample_rate: float
    exclude_paths: Iterable[str]
    client_resolver: ClientAddressResolver | None
    trusted_proxies: Iterable[str] | str
    request_headers: Iterable[str]
    redactor: Redactor | None
    route_resolver: RouteResolver | None


class AccessLogMiddleware:
    """Log exactly one ``request completed`` event per HTTP request through structlog.

    The event has ``request_id``, ``method``, ``route`` (the template, never the raw path),
    ``path``, ``query`` (secret parameters redacted, only when there is one), ``status``,
    ``duration`` (seconds, until the last body chunk was sent), ``bytes`` (response body bytes
    the server accepted) and ``client`` (through :class:`~prodkit.asgi.ClientAddressResolver`), plus
    whatever the app bound with :func:`structlog.contextvars.bind_contextvars` meanwhile. When
    the response says so: ``idempotency_status`` (``created`` or ``replayed``, from its
    ``Idempotency-Status`` header) and ``cache`` (``HIT`` or ``MISS``, from ``X-Cache``).

    The line is written through structlog with only safe values (the query and headers
    redacted, the exception by its type): under any structlog configuration, and as a JSON line
    while structlog is not configured at all.

    * Place it outside the middlewares that can reject (rate limit, shedding, idempotency):
      their 429/503/409 are logged like any response.
    * An exception from the app is logged with ``status`` 500 and ``exc_type`` and re-raised
      (the traceback is :class:`~prodkit.ErrorMiddleware`'s job); a client that went away
      before any response is logged with ``status`` 499.
    * Values bound with structlog's contextvars during the request are undone afterwards, so
      nothing leaks into the next request.
    * ``lifespan`` and ``websocket`` pass straight through.

    Example::

        import asyncio

        import httpx
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        from prodkit import AccessLogMiddleware
        from prodkit.testing import capture_logs

        async def item(request):
            return JSONResponse({"id": request.path_params["item_id"]})

        app = AccessLogMiddleware(Starlette(routes=[Route("/items/{item_id}", item)]))

        async def main():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                with capture_logs() as events:  # what your log lines would hold
                    await client.get("/items/42?api_key=sk-live-4f9c")
            [line] = [event for event in events if event["event"] == "request completed"]
            assert line["route"] == "/items/{item_id}"  # the template, never the raw path
            assert line["status"] == 200
            assert line["query"] == "api_key=[REDACTED]"

        asyncio.run(main())

    Arguments:
        app: the ASGI app to wrap.
        options: the options as one object (default: made from ``keywords``).
        **keywords: :class:`AccessLogOptions`'s fields by name, instead of ``options``:
            ``AccessLogMiddleware(app, exclude_paths=["/livez"])``.

    Raises:
        ConfigurationError: an invalid option (see :class:`AccessLogOptions`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        options: AccessLogOptions | None = None,
        **keywords: Unpack[AccessLogKeywords],
    ) -> None:
        self.app = app
        self.options = options = build_options(AccessLogOptions, options, keywords)
        logger = options.logger
        # The default logger's lines may skip structlog's per-call wrapper (see ``_direct``).
        self._default = logger is None
        self.logger = logger if logger is not None else get_logger(_LOGGER_NAME)
        self.event = options.event
        self._bound: Any = None
        self.sample_rate = options.sample_rate
        self.exclude_paths = PathFilter(options.exclude_paths)
        self._excluding = bool(self.exclude_paths)
        self.client_resolver = options.client_resolver or ClientAddressResolver(
            options.trusted_proxies
        )
        # Without trusted proxies the client is the peer: its canonical text is cached.
        self._direct_client = not self.client_resolver.trusts_any
        self.redactor = options.redactor or Redactor()
        self.route_resolver = options.route_resolver
        self.request_headers = tuple(h.lower().encode("latin-1") for h in options.request_headers)
        self._level_for = self._build_levels(options.levels)

    @staticmethod
    def _build_levels(
        levels: Mapping[int, str] | Callable[[int], str] | None,
    ) -> Callable[[int], str]:
        if callable(levels):
            chosen = levels

            def checked(status: int) -> str:
                name = chosen(status)
                return name if name in _LEVEL_NAMES else "info"

            return checked
        table = {**DEFAULT_LEVELS, **(levels or {})}  # checked by AccessLogOptions
        by_status = {status: table[status // 100] for status in range(100, 600)}
        return lambda status: by_status.get(status, "error")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self._excluding and self.exclude_paths.excludes(scope)):
            await self.app(scope, receive, send)
            return

        # The outermost layer's (its start time is the request's), or one of our own.
        state = scope.get(REQUEST_STATE_KEY) or request_state(scope)
        # Read now: a framework mounted below may rewrite the shared scope's path (Litestar does).
        path = scope.get("path")
        saved = snapshot_contextvars()
        observer = ResponseObserver.shared(send)
        watcher = ReceiveWatcher.shared(receive)
        error: BaseException | None = None
        try:
            await self.app(scope, watcher, observer)
        except BaseException as exc:
            error = exc
            raise
        finally:
            state.finish(observer, watcher, error)
            try:
                self._log(scope, state, path, observer)
            finally:
                restore_contextvars(saved)

    def _log(
        self, scope: Scope, state: RequestState, path: str | None, observer: ResponseObserver
    ) -> None:
        status: int = state.status  # type: ignore[assignment]
        error = state.error
        if (
            status < 400
            and error is None
            and self.sample_rate < 1.0
            and random.random() >= self.sample_rate
        ):
            return
        level = self._level_for(status)
        if error is not None and not isinstance(error, asyncio.CancelledError):
            level = "error"  # e.g. a stream that broke off after a 200 had been sent
        log: Any = None
        direct = self._default
        if direct:
            # prodkit's own line: while structlog is not configured, or configured by
            # ``configure_logging`` and not changed since, written without structlog's
            # per-call wrapper (see ``_direct``; tests/logging/test_direct.py proves the lines
            # equal); True: write it the usual way.
            log = direct_writer(_LOGGER_NAME, level)
            if log is False:
                return  # the configuration filters this level out: build nothing
            direct = log is not True
        if not direct:
            bound = self._bound if self._bound is not None else self._resolve_logger()
            # The level check of structlog's filtering and stdlib bound loggers (structlog >=
            # 25.1), asked of the class: the generic BoundLogger answers any attribute with a
            # logging method of that name.
            if hasattr(type(bound), "is_enabled_for") and not bound.is_enabled_for(
                _LEVEL_NUMBERS[level]
            ):
                return  # the logger drops this level: build nothing
            log = getattr(bound, level)
        if self._direct_client:  # without trusted proxies the client is the peer: cached text
            peer = scope.get("client")
            client = _peer_text(peer[0]) if peer else None
        else:
            client = self.client_resolver.resolve(scope)
        fields: dict[str, Any] = {
            "request_id": request_id_var.get(),
            "method": scope.get("method"),
            "route": resolve_route(scope, state, self.app, status, self.route_resolver),
            "path": path,
            "status": status,
            # round(x, 6), for a fraction of its cost: the same float for every duration.
            "duration": round((state.end - state.start) * 1e6) / 1e6,  # type: ignore[operator]
            "bytes": state.response_bytes,
            "client": client,
        }
        query = scope.get("query_string")
        if query:
            fields["query"] = self.redactor.redact_query(query.decode("latin-1"))
        if self.request_headers:
            fields["headers"] = self._headers(scope)
        if error is not None:
            fields["exc_type"] = type(error).__name__
        for name, value in observer.headers:
            # What an idempotency layer and a cache answered (their response headers, as the
            # client sees them): a replay and a cache hit must not read like a fresh response.
            if name == _IDEMPOTENCY_STATUS:
                fields["idempotency_status"] = value.decode("latin-1")
            elif name == _CACHE_STATUS:
                fields["cache"] = value.decode("latin-1")
        if direct:
            log(self.event, fields)
        else:
            log(self.event, **fields)

    def _resolve_logger(self) -> Any:
        """The bound logger that writes the line, kept when structlog would keep it.

        A bound logger (:class:`structlog.BoundLoggerBase`) never changes: it is kept. The lazy
        proxy that :func:`structlog.get_logger` returns builds a bound logger from the current
        configuration on every call, unless ``cache_logger_on_first_use`` is on, when it keeps
        the first one: the same logger is kept here in that case only.
        """
        logger = self.logger
        if isinstance(logger, structlog.BoundLoggerBase):
            self._bound = logger
            return logger
        bind = getattr(logger, "bind", None)
        if bind is None:
            return logger  # not a structlog logger: its own methods decide
        bound = bind()
        if structlog.get_config()["cache_logger_on_first_use"]:
            self._bound = bound
        return bound

    def _headers(self, scope: Scope) -> dict[str, str]:
        wanted = self.request_headers
        found: dict[str, str] = {}
        for name, value in scope.get("headers") or ():
            if name in wanted:
                key = name.decode("latin-1")
                text = value.decode("latin-1")
                if self.redactor.is_secret_key(key):
                    text = self.redactor.replacement
                found[key] = f"{found[key]}, {text}" if key in found else text
        return found


__all__ = ["DEFAULT_LEVELS", "AccessLogKeywords", "AccessLogMiddleware", "AccessLogOptions"]
