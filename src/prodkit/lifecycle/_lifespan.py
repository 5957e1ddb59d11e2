"""Run start-up and shutdown hooks around an app's own lifespan, and install shutdown signals."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from prodkit._core.exceptions import ConfigurationError
from prodkit._core.logs import safe_logger
from prodkit._core.options import build_options
from prodkit._core.types import ASGIApp, Message, Receive, Scope, Send
from prodkit.lifecycle._coordinator import ShutdownCoordinator
from prodkit.lifecycle._drain import check_coordinator

Hook = Callable[[], Awaitable[Any]]
ContextFactory = Callable[[], contextlib.AbstractAsyncContextManager[Any]]


@dataclass(frozen=True, kw_only=True, slots=True)
class LifespanOptions:
    """The options of :class:`LifespanMiddleware`, checked when made.

    Attributes:
        coordinator: a :class:`~prodkit.lifecycle.ShutdownCoordinator` whose signal handling is
            installed at start-up and which is marked stopping on ``lifespan.shutdown``
            (default: none, and no signal handling).
        logger: a structlog logger (default: structlog's ``prodkit.lifespan`` logger).

    Raises:
        ConfigurationError: ``coordinator`` is neither ``None`` nor a ``ShutdownCoordinator``.
    """

    coordinator: ShutdownCoordinator | None = None
    logger: Any | None = None

    def __post_init__(self) -> None:
        check_coordinator(self.coordinator, required=False)


class LifespanKeywords(TypedDict, total=False):
    """:class:`LifespanOptions`'s fields as keywords of :class:`LifespanMiddleware`."""

    coordinator: ShutdownCoordinator | None
    logger: Any | None


class LifespanMiddleware:
    """Open resources before the app starts, close them after it stopped (last opened, first closed).

    Start-up, in order: the registered hooks and contexts, in registration order; then the
    wrapped app's own lifespan (Starlette's ``lifespan=``, FastAPI's, Litestar's), if it has
    one; then :meth:`ShutdownCoordinator.install` puts the coordinator's signal handling in
    place (after the server installed its own, which it always does before lifespan start-up;
    once per serving period, whichever middleware calls it first). Shutdown runs the reverse:
    the app's lifespan shutdown, then the hooks' shutdown halves and the contexts' exits, last
    opened first. If a start-up step fails, what was opened is closed again and the server gets
    ``lifespan.startup.failed`` with the error.

    An app that does not handle lifespan (a raw callable that raises or returns on the
    ``lifespan`` scope without answering) is fine: the middleware answers for it.

    Arguments:
        app: the ASGI app to wrap.
        options: the options as one object (default: made from ``keywords``).
        **keywords: :class:`LifespanOptions`'s fields by name, instead of ``options``:
            ``LifespanMiddleware(app, coordinator=coordinator)``.

    Example::

        import asyncio
        import contextlib

        import httpx
        from asgi_lifespan import LifespanManager
        from prometheus_client import CollectorRegistry
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        from prodkit import LifespanMiddleware
        from prodkit.lifecycle import ShutdownCoordinator

        events = []

        async def open_pool():
            events.append("pool opened")  # say, await asyncpg.create_pool(...)

        async def close_pool():
            events.append("pool closed")

        @contextlib.asynccontextmanager
        async def redis_client():
            events.append("redis opened")  # say, a redis.asyncio.Redis
            try:
                yield
            finally:
                events.append("redis closed")

        async def status(request):
            return JSONResponse({"events": events})

        coordinator = ShutdownCoordinator(registry=CollectorRegistry())  # one per process
        app = LifespanMiddleware(
            Starlette(routes=[Route("/status", status)]), coordinator=coordinator
        )
        app.add_hook(open_pool, close_pool)  # async callables: start-up, shutdown
        app.add_context(redis_client)  # a factory of async context managers

        async def main():
            async with LifespanManager(app):  # what the server does: start-up, then shutdown
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                    response = await client.get("/status")
            assert response.json() == {"events": ["pool opened", "redis opened"]}
            assert events[2:] == ["redis closed", "pool closed"]  # last opened, first closed

        asyncio.run(main())
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        options: LifespanOptions | None = None,
        **keywords: Unpack[LifespanKeywords],
    ) -> None:
        self.app = app
        self.options = options = build_options(LifespanOptions, options, keywords)
        self.coordinator = options.coordinator
        self.logger = safe_logger("prodkit.lifespan", options.logger)
        self._steps: list[tuple[Hook | None, Hook | None, ContextFactory | None]] = []

    def add_hook(self, startup: Hook | None = None, shutdown: Hook | None = None) -> None:
        """Register an async ``startup`` and/or ``shutdown`` callable.

        ``shutdown`` runs only if ``startup`` (when given) succeeded, in reverse order of
        registration relative to the other hooks.
        """
        if startup is None and shutdown is None:
            raise ConfigurationError("add_hook needs a startup or a shutdown callable")
        self._steps.append((startup, shutdown, None))

    def on_startup(self, func: Hook) -> Hook:
        """Decorator form of ``add_hook(startup=func)``."""
        self.add_hook(startup=func)
        return func

    def on_shutdown(self, func: Hook) -> Hook:
        """Decorator form of ``add_hook(shutdown=func)``."""
        self.add_hook(shutdown=func)
        return func

    def add_context(self, factory: ContextFactory) -> None:
        """Register an async context manager factory: entered at start-up, exited at shutdown."""
        self._steps.append((None, None, factory))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        message = await receive()
        if message["type"] != "lifespan.startup":  # pragma: no cover - protocol violation
            return
        stack = contextlib.AsyncExitStack()
        try:
            for startup, shutdown, factory in self._steps:
                if factory is not None:
                    await stack.enter_async_context(factory())
                    continue
                if startup is not None:
                    await startup()
                if shutdown is not None:
                    stack.push_async_callback(shutdown)
            app_lifespan = _AppLifespan(self.app, scope)
            stack.push_async_callback(app_lifespan.shutdown)
            await app_lifespan.startup()
        except Exception as exc:
            self.logger.exception("lifespan start-up failed", exc_type=type(exc).__name__)
            with contextlib.suppress(Exception):
                await stack.aclose()
            await send({"type": "lifespan.startup.failed", "message": str(exc) or repr(exc)})
            return
        if self.coordinator is not None:
            # A GracefulShutdownMiddleware inside may have installed it already: a no-op then.
            self.coordinator.install()
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        if self.coordinator is not None:
            self.coordinator.lifespan_shutdown()
        try:
            # The app's lifespan shutdown first, then the hooks, last opened first.
            await stack.aclose()
        except Exception as exc:
            self.logger.exception("lifespan shutdown failed", exc_type=type(exc).__name__)
            await send({"type": "lifespan.shutdown.failed", "message": str(exc) or repr(exc)})
            return
        finally:
            if self.coordinator is not None:
                self.coordinator.stopped()
        await send({"type": "lifespan.shutdown.complete"})


class _AppLifespan:
    """Drive the wrapped app's own lifespan as if this middleware were the server."""

    def __init__(self, app: ASGIApp, scope: Scope) -> None:
        self.app = app
        self.scope = scope
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.outbox: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.supported = True

    async def _run(self) -> None:
        try:
            await self.app(self.scope, self.inbox.get, self.outbox.put)
        except Exception:
            # A raising lifespan before any answer means "lifespan not supported" (ASGI spec);
            # after start-up, it is reported through the shutdown message below.
            await self.outbox.put({"type": "prodkit.lifespan.raised"})
            raise
        await self.outbox.put({"type": "prodkit.lifespan.returned"})

    async def _answer(self) -> Message:
        return await self.outbox.get()

    async def startup(self) -> None:
        self.task = asyncio.create_task(self._run())
        await self.inbox.put({"type": "lifespan.startup"})
        message = await self._answer()
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            return
        if kind == "lifespan.startup.failed":
            raise RuntimeError(message.get("message") or "the app's lifespan start-up failed")
        # The app returned or raised without answering: it does not do lifespan.
        self.supported = False
        with contextlib.suppress(Exception):
            await self.task

    async def shutdown(self) -> None:
        if not self.supported or self.task is None:
            return
        await self.inbox.put({"type": "lifespan.shutdown"})
        message = await self._answer()
        if message["type"] == "lifespan.shutdown.failed":
            raise RuntimeError(message.get("message") or "the app's lifespan shutdown failed")
        with contextlib.suppress(Exception):
            await self.task


__all__ = ["LifespanKeywords", "LifespanMiddleware", "LifespanOptions"]
