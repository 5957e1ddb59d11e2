"""What a finished request came to (status, exception, route) and which paths a middleware skips."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from prodkit._core.observer import ResponseObserver
from prodkit._core.options import path_list
from prodkit._core.routing import (
    UNMATCHED_ROUTE,
    RouteResolver,
    route_path,
    route_template,
    route_template_before,
)
from prodkit._core.types import Scope

#: Where :class:`~prodkit.ErrorMiddleware` leaves the exception it answered, for the outer
#: access log and metrics (which then report the exception without seeing it raised).
EXCEPTION_SCOPE_KEY = "prodkit.exception"
# The route a finished request was labelled with, by the resolver and status that chose it.
_ROUTE_KEY = "prodkit.route"

#: The methods kept as they are in labels; any other becomes :data:`OTHER_METHOD`.
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
#: The label value shared by every method outside the known set.
OTHER_METHOD = "other"

#: Status recorded when the client went away before any response started (nginx's convention).
CLIENT_CLOSED_REQUEST = 499


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
        if path in self:
            return True
        return bool(scope.get("root_path")) and route_path(scope) in self


def outcome_status(
    observer: ResponseObserver, disconnected: bool, error: BaseException | None
) -> int:
    """The status to record: the one sent, else 499 when the client left first, else 500."""
    if observer.status is not None:
        return observer.status
    if disconnected or isinstance(error, asyncio.CancelledError):
        return CLIENT_CLOSED_REQUEST
    return 500


def handled_error(scope: Scope, error: BaseException | None) -> BaseException | None:
    """The exception behind the response: raised through us, or answered by an inner
    :class:`~prodkit.ErrorMiddleware`, which leaves it on the scope."""
    return error if error is not None else scope.get(EXCEPTION_SCOPE_KEY)


def resolve_route(scope: Scope, app: Any, status: int, resolver: RouteResolver | None) -> str:
    """The route template of a finished request.

    A request that an inner middleware rejected (429, 503 ...) never reached the router, so its
    template is found by matching the router below ``app``; a 404 is not looked up again, so that
    a flood of unknown paths costs no routing work twice. The answer is kept on the scope: the
    access log and the metrics label the same request, and the second asks no router again
    (walking FastAPI's included routers costs more than the rest of both layers).
    """
    known = scope.get(_ROUTE_KEY)
    if known is not None and known[0] is resolver and known[1] == status:
        return str(known[2])
    template = route_template(scope, resolver)
    if template == UNMATCHED_ROUTE and status != 404:
        template = route_template_before(scope, app, resolver)
    scope[_ROUTE_KEY] = (resolver, status, template)
    return template
