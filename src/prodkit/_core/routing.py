"""Route templates across frameworks, without importing any of them.

Metrics, logs and per-route options need the *template* of a request's route
(``/api/funds/{id}``), never the raw path, whose values are unbounded. Frameworks record the
matched route on the scope while they route; this module reads those records duck-typed:

* Starlette and FastAPI set ``scope["route"]`` (``path_format``) and ``scope["router"]``;
  mounted routers and sub-apps are walked from the top router to join the templates;
* Litestar sets ``scope["path_template"]``;
* a user hook can answer first, for anything else.

Requests that matched no route share one template, :data:`UNMATCHED_ROUTE`, so a 404 flood adds
one metric series, not one per path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from prodkit._core.exceptions import ConfigurationError
from prodkit._core.types import Scope

#: The route label of every request that matched no route.
UNMATCHED_ROUTE = "__unmatched__"

#: A hook that returns a request's route template, or ``None`` to let prodkit decide.
RouteResolver = Callable[[Scope], str | None]

_ORIGINAL_ROOT_PATH = "prodkit.root_path"
_FULL = 2  # starlette.routing.Match.FULL, compared by value to stay import-free
_PARTIAL = 1


def set_route_template(scope: Scope, template: str) -> None:
    """Name the route of a request that a middleware answers itself (``/readyz``, ``/metrics``).

    Uses the scope key Litestar sets, which :func:`route_template` reads first, so metrics and
    logs label such requests with their path rather than :data:`UNMATCHED_ROUTE`.
    """
    scope["path_template"] = template


def remember_root_path(scope: Scope) -> None:
    """Record the scope's ``root_path`` before the app runs (routers extend it as they mount)."""
    scope.setdefault(_ORIGINAL_ROOT_PATH, scope.get("root_path", ""))


def route_template(scope: Scope, resolver: RouteResolver | None = None) -> str:
    """Return the route template of a request that the app has routed.

    Call it after the app has run (or at least started its response). Order: the user's
    ``resolver``, Litestar's ``path_template``, Starlette/FastAPI's route records; otherwise
    :data:`UNMATCHED_ROUTE`.
    """
    if resolver is not None:
        found = resolver(scope)
        if found is not None:
            return found
    template = scope.get("path_template")
    if isinstance(template, str) and template:
        return template
    route = scope.get("route")
    if route is not None:
        path_format = getattr(route, "path_format", None)
        root_path = scope.get("root_path", "")
        if isinstance(path_format, str) and root_path == scope.get(_ORIGINAL_ROOT_PATH, root_path):
            return path_format
        router = scope.get("router")
        if router is not None:
            walked = _walk(router, _routing_scope(scope))
            if walked is not None:
                return walked
        # A mount whose inner routes did not match is a 404, not a route.
        if isinstance(path_format, str) and not path_format.endswith("{path}"):
            return path_format
    return UNMATCHED_ROUTE


def _routing_scope(scope: Scope) -> dict[str, Any]:
    return {
        "type": scope.get("type", "http"),
        "path": scope.get("path", "/"),
        "root_path": scope.get(_ORIGINAL_ROOT_PATH, scope.get("root_path", "")),
        "method": scope.get("method", "GET"),
        "headers": scope.get("headers", []),
    }


def _walk(router: Any, scope: dict[str, Any], depth: int = 0) -> str | None:
    """Match ``scope`` against a Starlette-style router's routes, descending into mounts."""
    routes = getattr(router, "routes", None)
    if not routes or depth > 16:
        return None
    partial: str | None = None
    for route in routes:
        try:
            match, child = route.matches(scope)
        except Exception:  # noqa: S112 - a foreign route type must never break a request
            continue
        level = getattr(match, "value", match)
        if level not in (_FULL, _PARTIAL):
            continue
        path_format = getattr(route, "path_format", None)
        if not isinstance(path_format, str):
            continue
        template: str | None = path_format
        if "root_path" in child:  # a Mount: its path_format ends in "/{path}"
            inner = _walk(route, {**scope, **child}, depth + 1)
            prefix = path_format.removesuffix("/{path}").rstrip("/")
            template = None if inner is None else prefix + inner
        if template is None:
            continue
        if level == _FULL:
            return template
        if partial is None:
            partial = template
    return partial


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


def route_template_before(scope: Scope, app: Any, resolver: RouteResolver | None = None) -> str:
    """Return the route template of a request before the app runs (for rejections).

    Uses the user ``resolver`` first, then walks a Starlette-style router found below ``app``;
    otherwise :data:`UNMATCHED_ROUTE`.
    """
    if resolver is not None:
        found = resolver(scope)
        if found is not None:
            return found
    router = find_router(app)
    if router is not None:
        template = _walk(router, _routing_scope(scope))
        if template is not None:
            return template
    return UNMATCHED_ROUTE


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


__all__ = [
    "UNMATCHED_ROUTE",
    "RouteResolver",
    "RouteTable",
    "compile_template",
    "find_router",
    "remember_root_path",
    "route_template",
    "route_template_before",
    "set_route_template",
]
