"""Route templates across frameworks, without importing any of them.

Metrics, logs and per-route options need the *template* of a request's route
(``/api/funds/{id}``), never the raw path, whose values are unbounded. Frameworks record the
matched route on the scope while they route, or can be asked to match a path; this module does
both duck-typed, and picks the framework by the type of the app (``type(app).__module__``), so
prodkit imports none of them:

* Starlette and FastAPI set ``scope["route"]`` (``path_format``) and ``scope["router"]``;
  mounted routers, ``Host`` routes and FastAPI's included routers are walked from the top router
  to join the templates (FastAPI's through its public ``fastapi.routing.iter_route_contexts``);
* Litestar sets ``scope["path_template"]`` and is asked (``asgi_router.handle_routing``) for
  requests rejected before routing;
* Quart's werkzeug ``url_map`` and Django's ``django.urls.resolve`` are asked to match the path;
* a user hook (:data:`RouteResolver`) answers first, for anything else.

**One label syntax everywhere**: the path the app declared, from its root, with every parameter
written ``{name}`` (converters dropped): Starlette's ``/items/{item_id:int}``, Litestar's
``/items/{item_id:int}``, Quart's ``/items/<int:item_id>`` and Django's ``items/<int:item_id>/``
are ``/items/{item_id}``, ``/items/{item_id}``, ``/items/{item_id}`` and ``/items/{item_id}/``.
A mounted app that is not a router is labelled by its mount, ``/static/{path}``. A hook's answer
is used as it is.

Requests that matched no route share one template, :data:`UNMATCHED_ROUTE`, so a 404 flood adds
one metric series, not one per path.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from prodkit._core.exceptions import ConfigurationError
from prodkit._core.state import REQUEST_STATE_KEY, request_state
from prodkit._core.types import Scope

#: The route label of every request that matched no route.
UNMATCHED_ROUTE = "__unmatched__"

#: A hook that returns a request's route template, or ``None`` to let prodkit decide.
RouteResolver = Callable[[Scope], str | None]

_FULL = 2  # starlette.routing.Match.FULL, compared by value to stay import-free
_PARTIAL = 1
# Converters in a framework's own syntax: Starlette/Litestar ``{id:int}``, werkzeug and Django
# ``<int:id>``, Django's regular expressions ``(?P<id>[0-9]+)``.
_BRACED = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*):[^{}]*}")
_ANGLED = re.compile(r"<(?:[^<>:]*:)?([A-Za-z_][A-Za-z0-9_]*)>")
_REGEX_GROUP = re.compile(r"\(\?P<([A-Za-z_][A-Za-z0-9_]*)>(?:[^()]|\([^()]*\))*\)")


def normalise_template(template: str) -> str:
    """Write a framework's route template in prodkit's label syntax: ``/a/{name}``.

    Converters are dropped (``{id:int}``, ``<int:id>`` and ``(?P<id>...)`` become ``{id}``),
    regular-expression anchors removed, and a leading ``/`` added.
    """
    if "{" in template:
        template = _BRACED.sub(r"{\1}", template)
    if "<" in template:
        template = _REGEX_GROUP.sub(r"{\1}", template)
        template = _ANGLED.sub(r"{\1}", template)
    if template[:1] == "^" or template[-1:] == "$":
        template = template.removeprefix("^").removesuffix("$").removesuffix("\\Z")
    return template if template[:1] == "/" else "/" + template


def set_route_template(scope: Scope, template: str) -> None:
    """Name the route of a request that a middleware answers itself (``/readyz``, ``/metrics``).

    Uses the scope key Litestar sets, which :func:`route_template` reads first, so metrics and
    logs label such requests with their path rather than :data:`UNMATCHED_ROUTE`.
    """
    scope["path_template"] = template


def remember_root_path(scope: Scope) -> None:
    """Record the scope's ``root_path`` before the app runs (routers extend it as they mount).

    It is the request state's (:class:`~prodkit.asgi.RequestState`), made here if need be.
    """
    request_state(scope)


def _original_root(scope: Scope, default: str) -> str:
    """The ``root_path`` the outermost prodkit layer saw, or ``default`` without one."""
    state = scope.get(REQUEST_STATE_KEY)
    return default if state is None else str(state.root_path)


def served_root(scope: Scope) -> str:
    """The ``root_path`` that :func:`route_path` strips from the path (``""``: none)."""
    path: str = scope["path"]
    root_path: str = _original_root(scope, "") or scope.get("root_path", "")
    return root_path if root_path and path.startswith(root_path) else ""


def route_path(scope: Scope) -> str:
    """The request's path below the app's ``root_path``: what the app's own routes match.

    ASGI puts the full path in ``path``; an app mounted under ``root_path="/api"`` declares
    ``/health`` and sees ``/api/health``. Options that take paths (``exclude_paths``, health and
    metrics paths, the ``routes`` of rate limits, idempotency and the cache) compare this.
    """
    path: str = scope["path"]
    root_path = served_root(scope)
    return path[len(root_path) :] or "/" if root_path else path


def route_template(scope: Scope, resolver: RouteResolver | None = None) -> str:
    """Return the route template of a request that the app has routed.

    Call it after the app has run (or at least started its response). Order: the user's
    ``resolver``, Litestar's ``path_template``, Starlette/FastAPI's route records; otherwise
    :data:`UNMATCHED_ROUTE` (frameworks that leave no record, Quart and Django, are matched by
    :func:`route_template_before`).
    """
    if resolver is not None:
        found = resolver(scope)
        if found is not None:
            return found
    template = scope.get("path_template")
    if isinstance(template, str) and template:
        template = normalise_template(template) if ":" in template else template
        return _mount_prefix(scope) + template
    route = scope.get("route")
    if route is not None:
        path_format = getattr(route, "path_format", None)
        root_path = scope.get("root_path", "")
        if (
            isinstance(path_format, str)
            and root_path == _original_root(scope, root_path)
            and route.__class__.__module__ != "fastapi.routing"
        ):
            return path_format
        router = scope.get("router")
        if router is not None:
            routing = _routing_scope(scope)
            walked = _walk(router, routing)
            if route.__class__.__module__ == "fastapi.routing" and (
                walked is None or walked[1] is not route
            ):
                # FastAPI reads an included router's routes as it routes: a route added to
                # one after its router was flattened (``_routes_of``) is not in the kept list.
                _FLATTENED.clear()
                walked = _walk(router, routing)
            if walked is not None:
                return walked[0]
        # A mount whose inner routes did not match is a 404, not a route.
        if isinstance(path_format, str) and not path_format.endswith("{path}"):
            return path_format
    return UNMATCHED_ROUTE


def _mount_prefix(scope: Scope) -> str:
    """The path a router mounted the app at, between the original and the current root_path.

    Litestar's ``path_template`` is relative to the Litestar app; mounted inside Starlette
    (``Mount("/v1", litestar_app)``) its label still starts at the outer app's root.
    """
    root_path: str = scope.get("root_path", "")
    original = _original_root(scope, root_path)
    if root_path != original and root_path.startswith(original):
        return root_path[len(original) :].rstrip("/")
    return ""


def _routing_scope(scope: Scope) -> dict[str, Any]:
    return {
        "type": scope.get("type", "http"),
        "path": scope.get("path", "/"),
        "root_path": _original_root(scope, scope.get("root_path", "")),
        "method": scope.get("method", "GET"),
        "headers": scope.get("headers", []),
    }


def _routes_of(router: Any) -> Sequence[Any]:
    """A router's routes, with FastAPI's included routers flattened by FastAPI's public helper.

    Flattening costs time in the number of routes, on every request: the result is kept per
    router, and made again when its route list is another list or has another length (routes
    are added, by ``include_router`` or ``add_route``, not swapped one for one).
    """
    routes = getattr(router, "routes", None)
    if not routes:
        return ()
    kept = _FLATTENED.get(id(router))
    if kept is not None and kept[1] is routes and kept[2] == len(routes):
        return kept[3]
    flattened: Sequence[Any] = routes
    if any(type(route).__module__ == "fastapi.routing" for route in routes):
        fastapi_routing = sys.modules.get("fastapi.routing")
        flatten = getattr(fastapi_routing, "iter_route_contexts", None)
        if flatten is not None:
            flattened = tuple(flatten(routes))
    if len(_FLATTENED) >= _FLATTENED_MAX:
        _FLATTENED.clear()
    _FLATTENED[id(router)] = (router, routes, len(routes), flattened)
    return flattened


# Per router: (router, its route list, that list's length, the flattened routes). The router is
# held so that its id is never reused while the entry lives.
_FLATTENED: dict[int, tuple[Any, Any, int, Sequence[Any]]] = {}
_FLATTENED_MAX = 256


def _walk(router: Any, scope: dict[str, Any], depth: int = 0) -> tuple[str, Any] | None:
    """Match ``scope`` against a Starlette-style router's routes, descending into mounts.

    Returns the template and the innermost route matched (the one a router records as
    ``scope["route"]``; FastAPI's ``original_route`` of a flattened one).
    """
    if depth > 16:
        return None
    partial: tuple[str, Any] | None = None
    for route in _routes_of(router):
        try:
            match, child = route.matches(scope)
        except Exception:  # noqa: S112 - a foreign route type must never break a request
            continue
        level = getattr(match, "value", match)
        if level not in (_FULL, _PARTIAL):
            continue
        found = _template_of(route, child, scope, depth)
        if found is None:
            continue
        if level == _FULL:
            return found
        if partial is None:
            partial = found
    return partial


def _template_of(
    route: Any, child: dict[str, Any], scope: dict[str, Any], depth: int
) -> tuple[str, Any] | None:
    """The template below a route that matched: its own, or its mount's joined with the inner."""
    path_format = getattr(route, "path_format", None)
    if not isinstance(path_format, str):
        # A Host route adds no path of its own: the label is the path below it.
        if getattr(route, "host_format", None) is None:
            return None
        return _walk(route, {**scope, **child}, depth + 1)
    own = getattr(route, "original_route", route)  # FastAPI's RouteContext: the route inside
    if "root_path" not in child:
        return path_format, own
    # A Mount: its path_format ends in "/{path}". An app of another framework (Litestar, Quart,
    # Django) is asked to match the path below the mount; a Starlette router below is walked;
    # any other app (static files, a raw ASGI app) answers the whole mount, its template.
    prefix = path_format.removesuffix("/{path}").rstrip("/")
    foreign = _framework_matcher(getattr(route, "app", None))
    if foreign is not None:
        inner = foreign({**scope, **child})
        return None if inner is None else (prefix + inner, own)
    if getattr(route, "routes", None):
        below = _walk(route, {**scope, **child}, depth + 1)
        return None if below is None else (prefix + below[0], below[1])
    return path_format, own


def find_router(app: Any, max_depth: int = 32) -> Any | None:
    """Follow ``.app`` links from a middleware to the first object with ``routes``, if any."""
    current = app
    for _ in range(max_depth):
        if current is None:
            return None
        if getattr(current, "routes", None) is not None:
            return current
        current = getattr(current, "app", None)
    return None


# -- asking a framework to match a path (before routing, or when it leaves no record) ---------

_Matcher = Callable[[Scope], str | None]


_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


def _litestar_matcher(app: Any) -> _Matcher:
    router = app.asgi_router

    def routed(path: str, method: str | None) -> str | None:
        try:
            template = router.handle_routing(path=path, method=method)[4]
        except Exception as exc:
            return "" if type(exc).__name__ == "MethodNotAllowedException" else None
        return normalise_template(template) if isinstance(template, str) else None

    def match(scope: Scope) -> str | None:
        path = route_path(scope).rstrip("/") or "/"
        method = None if scope.get("type") == "websocket" else scope.get("method", "GET")
        template = routed(path, method)
        if template != "":
            return template
        # 405: the route exists under another method; its template is still the label.
        for other in _METHODS:
            template = routed(path, other)
            if template:
                return template
        return None

    return match


def _werkzeug_matcher(app: Any) -> _Matcher:
    url_map = app.url_map

    def match(scope: Scope) -> str | None:
        adapter = url_map.bind("localhost", url_scheme=scope.get("scheme", "http"))
        websocket = scope.get("type") == "websocket"
        method = None if websocket else scope.get("method", "GET")
        try:
            rule, _ = adapter.match(
                route_path(scope), method=method, return_rule=True, websocket=websocket
            )
        except Exception as exc:
            allowed = getattr(exc, "valid_methods", None)
            if not allowed:
                return None
            # 405: the route exists, under another method; its template is still the label.
            try:
                rule, _ = adapter.match(route_path(scope), method=allowed[0], return_rule=True)
            except Exception:
                return None
        return normalise_template(rule.rule)

    return match


def _django_matcher(app: Any) -> _Matcher | None:
    urls = sys.modules.get("django.urls")
    resolve = getattr(urls, "resolve", None)
    if resolve is None:
        return None

    def match(scope: Scope) -> str | None:
        try:
            found = resolve(route_path(scope))
        except Exception:
            return None
        route = getattr(found, "route", None)
        return normalise_template(route) if isinstance(route, str) else None

    return match


def _starlette_matcher(router: Any) -> _Matcher:
    def match(scope: Scope) -> str | None:
        found = _walk(router, _routing_scope(scope))
        return None if found is None else found[0]

    return match


def _no_match(scope: Scope) -> None:
    return None


def _framework_matcher(app: Any) -> _Matcher | None:
    """The matcher of a Litestar, Quart (or Flask) or Django app, by its type's module."""
    package = type(app).__module__.partition(".")[0]
    if package == "litestar" and hasattr(app, "asgi_router"):
        return _remembered(app, _litestar_matcher)
    if package in ("quart", "flask") and hasattr(app, "url_map"):
        return _remembered(app, _werkzeug_matcher)
    if package == "django":
        return _remembered(app, lambda found: _django_matcher(found) or _no_match)
    return None


def _remembered(app: Any, make: Callable[[Any], _Matcher]) -> _Matcher:
    entry = _FRAMEWORK_MATCHERS.get(id(app))
    if entry is None:
        entry = _FRAMEWORK_MATCHERS[id(app)] = (app, make(app))
    return entry[1]


def _matcher_for(app: Any, max_depth: int = 32) -> _Matcher:
    """Find the framework below a chain of middlewares (``.app`` links) by its type's module."""
    current = app
    for _ in range(max_depth):
        if current is None:
            break
        found = _framework_matcher(current)
        if found is not None:
            return found
        if getattr(current, "routes", None) is not None:
            return _starlette_matcher(current)
        current = getattr(current, "app", None)
    return _no_match


# Apps live as long as the process; the key holds its app so that its id is never reused.
_MATCHERS: dict[int, tuple[Any, _Matcher]] = {}
_FRAMEWORK_MATCHERS: dict[int, tuple[Any, _Matcher]] = {}


def route_template_before(scope: Scope, app: Any, resolver: RouteResolver | None = None) -> str:
    """Return the route template of a request from its path, without running the app.

    For rejections (429, 503, replays) and for frameworks that record no route on the scope.
    Uses the user ``resolver`` first, then asks the framework found below ``app`` (Starlette,
    FastAPI, Litestar, Quart, Django) to match the path; otherwise :data:`UNMATCHED_ROUTE`.
    """
    if resolver is not None:
        found = resolver(scope)
        if found is not None:
            return found
    entry = _MATCHERS.get(id(app))
    if entry is None:
        entry = _MATCHERS[id(app)] = (app, _matcher_for(app))
    template = entry[1](scope)
    return UNMATCHED_ROUTE if template is None else template


# -- templates matched by prodkit itself, for per-route options -----------------------------

_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_]+))?}")
_CONVERTERS = {
    "str": "[^/]+",
    "int": "[0-9]+",
    "float": r"[0-9]+(?:\.[0-9]+)?",
    "uuid": "[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}",
    "path": ".*",
}

T = TypeVar("T")


def compile_template(template: str) -> re.Pattern[str]:
    """Compile a route template (``/api/funds/{id}``, ``{id:int}``, ``{rest:path}``) to a regex.

    A template ending in ``/*`` matches that prefix and everything below it. Each parameter is
    a named group, so ``match(path).groupdict()`` gives the path parameters.
    """
    if not template.startswith("/"):
        raise ConfigurationError(f"route template {template!r} must start with '/'")
    prefix = template.endswith("/*")
    body = template[:-2] if prefix else template
    pattern = ""
    position = 0
    names: set[str] = set()
    for found in _PARAM.finditer(body):
        pattern += re.escape(body[position : found.start()])
        if found.group(1) in names:
            raise ConfigurationError(
                f"route template {template!r}: parameter {found.group(1)!r} appears twice"
            )
        names.add(found.group(1))
        converter = found.group(2) or "str"
        if converter not in _CONVERTERS:
            raise ConfigurationError(
                f"route template {template!r}: unknown converter {converter!r} "
                f"(use one of {', '.join(sorted(_CONVERTERS))})"
            )
        pattern += f"(?P<{found.group(1)}>{_CONVERTERS[converter]})"
        position = found.end()
    pattern += re.escape(body[position:])
    pattern += "(?:/.*)?" if prefix else ""
    return re.compile(pattern + r"\Z")


class RouteTable(Generic[T]):
    """Per-route options keyed by route template, matched against a request's path by prodkit.

    Middlewares that decide before the app runs (rate limits, idempotency, cache) take their
    per-route options as ``{template: value}``; this finds the value and the template for a path
    without the framework's help. A template without parameters that equals the path wins;
    otherwise templates are tried in the order given and the first match wins.
    """

    __slots__ = ("_entries", "_exact")

    def __init__(self, routes: Mapping[str, T] | Iterable[tuple[str, T]] = ()) -> None:
        items = routes.items() if isinstance(routes, Mapping) else routes
        self._entries: list[tuple[str, re.Pattern[str], T]] = []
        self._exact: dict[str, tuple[str, T]] = {}
        for template, value in items:
            self._entries.append((template, compile_template(template), value))
            if not _PARAM.search(template) and not template.endswith("/*"):
                self._exact.setdefault(template, (template, value))

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def match(self, path: str) -> tuple[str, T] | None:
        """Return ``(template, value)`` for the first template matching ``path``, or ``None``."""
        exact = self._exact.get(path)
        if exact is not None:
            return exact
        for template, pattern, value in self._entries:
            if pattern.match(path):
                return template, value
        return None

    def match_request(self, scope: Scope) -> tuple[str, T] | None:
        """Like :meth:`match`, for a request: its full path, else its path below ``root_path``.

        An app served under ``root_path="/api"`` declares ``/funds/{id}`` and receives
        ``/api/funds/1``; both spellings of a template match, the full one first (as
        ``exclude_paths`` do), so a table written either way keeps working.
        """
        path: str = scope["path"]
        found = self.match(path)
        if found is None and scope.get("root_path"):
            below = route_path(scope)
            if below is not path:
                found = self.match(below)
        return found


__all__ = [
    "UNMATCHED_ROUTE",
    "RouteResolver",
    "RouteTable",
    "compile_template",
    "find_router",
    "normalise_template",
    "remember_root_path",
    "route_path",
    "route_template",
    "route_template_before",
    "served_root",
    "set_route_template",
]
