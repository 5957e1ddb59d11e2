"""Writes that invalidate: a 2xx or 3xx write makes its path's entries and routes' tags stale."""

from __future__ import annotations

from collections.abc import Sequence

from prodkit._core.callers import Caller
from prodkit._core.routing import RouteTable
from prodkit._core.types import ASGIApp, Message, Receive, Scope, Send
from prodkit.cache._cache import ResponseCache
from prodkit.cache._rules import Route


class Invalidation:
    """Runs writes to paths that cached routes (or ``invalidate`` templates) match.

    Arguments:
        cache: where tags are invalidated.
        caller: fills ``{caller}`` in tag templates.
        routes: ``(template, route)`` pairs whose tags a write to a matching path invalidates.
    """

    __slots__ = ("_routes", "_table", "cache", "caller")

    def __init__(
        self, cache: ResponseCache, caller: Caller | None, routes: Sequence[tuple[str, Route]]
    ) -> None:
        self.cache = cache
        self.caller = caller
        self._routes = [route for _, route in routes]
        self._table = RouteTable((template, None) for template, _ in routes)

    def covers(self, path: str) -> bool:
        """Whether a write to ``path`` invalidates anything."""
        return self._table.match(path) is not None

    def tags(self, scope: Scope, path: str) -> list[str]:
        """The tags a successful write to ``path`` invalidates: the path's, then the routes'."""
        caller_name = self.caller(scope) if self.caller is not None else None
        tags = ["path:" + path]
        for route in self._routes:
            rendered = route.render_tags(path, caller_name)
            if rendered is not None:
                tags.extend(rendered)
        return tags

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """Call ``app`` for a write; invalidate before a non-error response reaches the client."""
        tags = self.tags(scope, scope.get("path", "/"))
        await app(scope, receive, _InvalidatingSend(self.cache, tags, send).send)


class _InvalidatingSend:
    """One write's ``send``: invalidates once, when a 2xx or 3xx response starts."""

    __slots__ = ("cache", "downstream", "started", "tags")

    def __init__(self, cache: ResponseCache, tags: list[str], send: Send) -> None:
        self.cache = cache
        self.tags = tags
        self.downstream = send
        self.started = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start" and not self.started:
            self.started = True
            # RFC 9111 section 4.4: any non-error status, so a POST answered 303 See Other
            # invalidates too. Before the client sees the response, so its next read misses.
            if 200 <= int(message["status"]) < 400:
                await self.cache.invalidate_tags(self.tags)
        await self.downstream(message)


__all__ = ["Invalidation"]
