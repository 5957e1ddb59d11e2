"""Track in-flight requests, close keep-alive connections while draining, 503 once the app stops."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TypedDict, Unpack

from prodkit._core.exceptions import ConfigurationError
from prodkit._core.headers import message_headers, set_header
from prodkit._core.observer import on_response_start
from prodkit._core.options import build_options
from prodkit._core.problems import send_problem
from prodkit._core.types import ASGIApp, Message, Receive, Scope, Send
from prodkit.lifecycle._coordinator import ShutdownCoordinator, ShutdownState

SHUTTING_DOWN = "SHUTTING_DOWN"


@dataclass(frozen=True, kw_only=True, slots=True)
class GracefulShutdownOptions:
    """The options of :class:`GracefulShutdownMiddleware`, checked when made.

    Attributes:
        coordinator: the process's :class:`~prodkit.lifecycle.ShutdownCoordinator` (its
            ``retry_after`` is the ``Retry-After`` of the 503).

    Raises:
        ConfigurationError: ``coordinator`` is not a ``ShutdownCoordinator``.
    """

    coordinator: ShutdownCoordinator

    def __post_init__(self) -> None:
        check_coordinator(self.coordinator, required=True)


def check_coordinator(coordinator: object, *, required: bool) -> None:
    """Refuse anything but a :class:`ShutdownCoordinator` (or ``None`` when not ``required``)."""
    if isinstance(coordinator, ShutdownCoordinator) or (coordinator is None and not required):
        return
    raise ConfigurationError(
        f"coordinator={coordinator!r}: not a ShutdownCoordinator; write "
        "coordinator=ShutdownCoordinator(), one per process, shared with the health layer"
    )


class GracefulShutdownKeywords(TypedDict, total=False):
    """:class:`GracefulShutdownOptions`'s fields as keywords of :class:`GracefulShutdownMiddleware`.

    ``coordinator`` is required unless ``options`` is given: leaving both out is a
    ``TypeError`` when the middleware is made.
    """

    coordinator: ShutdownCoordinator


class GracefulShutdownMiddleware:
    """Serve through a drain, then refuse quickly: the requests' side of a graceful shutdown.

    What a request gets follows the state of the process's
    :class:`~prodkit.lifecycle.ShutdownCoordinator`:

    * Running: requests pass through and are tracked as in flight.
    * Draining (a shutdown signal arrived, readiness is 503): requests are still served
      normally; HTTP/1.x responses get ``Connection: close`` so keep-alive clients open their
      next connection elsewhere (RFC 9112 section 9.6).
    * Stopping (the drain is over, the server is closing): a request that still reaches the
      app (on a connection accepted just before the listener closed, say) is served the same
      way, since its client has no other answer coming. Once the server's lifespan shutdown
      began (its resources are closing), or past the hard deadline, it is answered at once
      with a 503 problem ``SHUTTING_DOWN``, ``Retry-After`` and ``Connection: close``.
    * At the coordinator's hard deadline a request still running is cancelled; if its response
      had not started it is answered with the same 503, otherwise the connection is closed.

    The lifespan scope passes through; the middleware only watches it, to call
    :meth:`ShutdownCoordinator.install` once the app's start-up completed and to mark the
    process stopping when ``lifespan.shutdown`` arrives. (Wrap an app that does not support
    lifespan in :class:`~prodkit.lifecycle.LifespanMiddleware`, which calls the same method;
    with both, the signal handling is installed once.) WebSocket connections pass through
    untouched.

    Example::

        import asyncio

        import httpx
        from prometheus_client import CollectorRegistry
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        from prodkit import GracefulShutdownMiddleware
        from prodkit.lifecycle import ShutdownCoordinator

        async def orders(request):
            return JSONResponse({"orders": []})

        coordinator = ShutdownCoordinator(  # one per process, shared with HealthMiddleware
            registry=CollectorRegistry(),  # or leave it out: prometheus-client's global one
        )
        app = GracefulShutdownMiddleware(
            Starlette(routes=[Route("/orders", orders)]), coordinator=coordinator
        )

        async def main():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
                running = await client.get("/orders")
                coordinator.begin_shutdown()  # what SIGTERM does: the drain starts
                draining = await client.get("/orders")
                coordinator.lifespan_shutdown()  # the server closes the app's resources
                stopping = await client.get("/orders")
            coordinator.stopped()  # lifespan shutdown complete
            assert running.status_code == draining.status_code == 200
            assert "Connection" not in running.headers
            assert draining.headers["Connection"] == "close"  # reconnect to another instance
            assert stopping.status_code == 503
            assert stopping.json()["code"] == "SHUTTING_DOWN"
            assert stopping.headers["Retry-After"] == "5"

        asyncio.run(main())

    Arguments:
        app: the ASGI app to wrap.
        options: the options as one object (default: made from ``keywords``).
        **keywords: :class:`GracefulShutdownOptions`'s fields by name, instead of ``options``:
            ``GracefulShutdownMiddleware(app, coordinator=coordinator)``.

    Raises:
        ConfigurationError: an invalid option (see :class:`GracefulShutdownOptions`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        options: GracefulShutdownOptions | None = None,
        **keywords: Unpack[GracefulShutdownKeywords],
    ) -> None:
        self.app = app
        self.options = options = build_options(GracefulShutdownOptions, options, keywords)
        self.coordinator = coordinator = options.coordinator
        retry_after = str(coordinator.retry_after)
        self._headers_http1 = {"Retry-After": retry_after, "Connection": "close"}
        # RFC 9113 section 8.2.2: connection-specific fields are malformed in HTTP/2 and 3.
        self._headers_http2 = {"Retry-After": retry_after}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return

        coordinator = self.coordinator
        close_http1 = scope.get("http_version", "1.1") in ("1.0", "1.1")
        problem_headers = self._headers_http1 if close_http1 else self._headers_http2
        if not coordinator.accepting:
            coordinator.count_rejected()
            await send_problem(
                send,
                503,
                SHUTTING_DOWN,
                "The server is shutting down; retry on another instance.",
                headers=problem_headers,
            )
            return

        # Its status is set once a response start came through this layer.
        observer = on_response_start(send, self._close_http1 if close_http1 else _nothing)
        record = coordinator.request_started(scope)
        try:
            await self.app(scope, receive, observer)
        except asyncio.CancelledError:
            if not record.cancelled_at_deadline or record.task is None:
                raise
            # Our own cancellation at the hard deadline: answer (or end) the request instead
            # of letting the server log a cancelled task as an application error.
            record.task.uncancel()
            if observer.status is None:
                await send_problem(
                    send,
                    503,
                    SHUTTING_DOWN,
                    "The request was cancelled because the server is shutting down.",
                    headers=problem_headers,
                )
        finally:
            coordinator.request_finished(record)

    def _close_http1(self, message: Message) -> None:
        """The start hook of HTTP/1.x responses: ``Connection: close`` once draining began."""
        if self.coordinator.state is not ShutdownState.RUNNING:
            set_header(message_headers(message), b"connection", b"close")

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        coordinator = self.coordinator

        async def watching_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                coordinator.lifespan_shutdown()
            return message

        async def watching_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                coordinator.install()
            elif message["type"] == "lifespan.shutdown.complete":
                coordinator.stopped()
            await send(message)

        await self.app(scope, watching_receive, watching_send)


def _nothing(message: Message) -> None:
    """The start hook of HTTP/2 and 3 responses: connection fields are theirs to refuse."""


__all__ = [
    "SHUTTING_DOWN",
    "GracefulShutdownKeywords",
    "GracefulShutdownMiddleware",
    "GracefulShutdownOptions",
    "check_coordinator",
]
