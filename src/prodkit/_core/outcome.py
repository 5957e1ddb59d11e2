"""What a finished request came to (status, route) and which paths a middleware skips."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prodkit._core.options import path_list
from prodkit._core.routing import (
    UNMATCHED_ROUTE,
    RouteResolver,
    route_path,
    route_template,
    route_template_before,
)
from prodkit._core.state import CLIENT_CLOSED_REQUEST, RequestState
from prodkit._core.types import Scope

#: The methods kept as they are in labels; any other becomes :data:`OTHER_METHOD`.
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
#: The label value shared by every method outside the known set.
OTHER_METHOD = "other"


class PathFilter:
    """Exact paths (``/metrics``) and prefixes (``/static/*``) that a middleware leaves alone."""

    __slots__ = ("_exact", "_prefixes")

    def __init__(self, paths: Iterable[str]) -> None:
        exact: set[str] = set()
        prefixes: list[str] = []
        for path in path_list("exclude_paths", paths):
            if path.endswith("/*"):
                prefixes.append(path[:-1])
            else:
                exact.add(path)
        self._exact = frozenset(exact)
        self._prefixes = tuple(prefixes)

    def __bool__(self) -> bool:
        return bool(self._exact or self._prefixes)

    def __contains__(self, path: str) -> bool:
        return path in self._exact or (bool(self._prefixes) and path.startswith(self._prefixes))

    def excludes(self, scope: Scope) -> bool:
        """Whether the request's path is one of these, as the app sees it or in full.

        An app served under a ``root_path`` (``/api``) names its own paths (``/health``), which
        ASGI gives as ``/api/health``: both spellings are left alone.
        """
        path: str = scope["path"]
        # __contains__, inlined: every request of a layer with excluded paths comes here.
        if path in self._exact or (self._prefixes and path.startswith(self._prefixes)):
            return True
        return bool(scope.get("root_path")) and route_path(scope) in self


def resolve_route(
    scope: Scope, state: RequestState, app: Any, status: int, resolver: RouteResolver | None
) -> str:
    """The route template of a finished request, kept on its state.

    A request that an inner middleware rejected (429, 503 ...) never reached the router, so its
    template is found by matching the router below ``app``; a 404 is not looked up again, so that
    a flood of unknown paths costs no routing work twice. The answer is kept on the request's
    state: the access log and the metrics label the same request, and the second asks no router
    again (walking FastAPI's included routers costs more than the rest of both layers).
    """
    key = state._route_key
    if key is not None and key[0] is resolver and key[1] == status:
        return state.route  # type: ignore[return-value]
    template = route_template(scope, resolver)
    if template == UNMATCHED_ROUTE and status != 404:
        template = route_template_before(scope, app, resolver)
    state.route = template
    state._route_key = (resolver, status)
    return template


__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "KNOWN_METHODS",
    "OTHER_METHOD",
    "PathFilter",
    "resolve_route",
]
