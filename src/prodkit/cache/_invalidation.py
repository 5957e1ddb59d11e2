"""Writes that invalidate: a write is fenced on its path's and routes' tags while it runs."""

from __future__ import annotations

from collections.abc import Sequence

from prodkit._core.callers import Caller
from prodkit._core.routing import RouteTable
from prodkit._core.types import ASGIApp, Receive, Scope, Send
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
        """Call ``app`` for a write, its tags fenced from before it starts until it returns.

        Before: the entries are stale and none is stored or served while the write runs, so
        whatever instant its process dies at, a read that starts after its commit finds the
        committed data. After (whatever the status: a 404 retry of a DELETE that committed, or
        a 500 after a commit, changed data too): new versions again, the fence lifted.
        """
        tags = self.tags(scope, scope.get("path", "/"))
        async with self.cache.invalidating(tags):
            await app(scope, receive, send)


__all__ = ["Invalidation"]
