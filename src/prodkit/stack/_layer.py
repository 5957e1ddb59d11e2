"""A layer: one middleware of a stack and its options, as data."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, overload

from prodkit._core.exceptions import ConfigurationError
from prodkit._core.types import ASGIApp

P = ParamSpec("P")


@dataclass(frozen=True, slots=True, init=False)
class Layer:
    """One middleware of a :class:`~prodkit.stack.Stack`, as data: ``middleware(app, **options)``.

    Its options are given as one mapping, or as keywords that a type checker checks against
    the middleware's own signature (as with Starlette's ``Middleware``), so a misspelt or
    mistyped option is an error where the stack is written::

        Layer("gzip", GZipMiddleware, {"minimum_size": 500})
        Layer("request_id", RequestIdMiddleware, header_name="X-Correlation-ID")  # checked

    Arguments:
        name: how the stack's methods find the layer (``"rate_limit"``); unique in a stack.
        middleware: the middleware class, or any callable ``(app, **options) -> ASGI app``.
        *args: the options passed to ``middleware`` after the app: one mapping, or the
            arguments themselves (positional ones are named from its signature).
        **keywords: the options by name (checked against ``middleware``'s signature by a
            type checker).

    Attributes:
        options: the keyword arguments passed to ``middleware`` after the app.
    """

    name: str
    middleware: Callable[..., ASGIApp]
    options: Mapping[str, Any]

    @overload
    def __init__(
        self,
        name: str,
        middleware: Callable[..., ASGIApp],
        options: Mapping[str, Any] = ...,
        /,
    ) -> None: ...

    @overload
    def __init__(
        self,
        name: str,
        middleware: Callable[Concatenate[ASGIApp, P], ASGIApp],
        /,
        *args: P.args,
        **keywords: P.kwargs,
    ) -> None: ...

    def __init__(
        self, name: str, middleware: Callable[..., ASGIApp], /, *args: Any, **keywords: Any
    ) -> None:
        if len(args) == 1 and not keywords and isinstance(args[0], Mapping):
            options = dict(args[0])  # the mapping form
        elif args:
            options = _named(name, middleware, args, keywords)
        else:
            options = keywords
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "middleware", middleware)
        object.__setattr__(self, "options", options)

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """This layer around ``app``: ``middleware(app, **options)``."""
        return self.middleware(app, **self.options)


def _named(
    name: str, middleware: Callable[..., ASGIApp], args: tuple[Any, ...], keywords: dict[str, Any]
) -> dict[str, Any]:
    """A layer's positional options named as ``middleware``'s signature names them."""
    try:
        signature = inspect.signature(middleware)
        bound = signature.bind(None, *args, **keywords)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"layer {name!r}: {exc}; pass its options by keyword") from exc
    options: dict[str, Any] = {}
    for parameter, value in list(bound.arguments.items())[1:]:  # after the app
        kind = signature.parameters[parameter].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            raise ConfigurationError(f"layer {name!r}: pass its options by keyword")
        if kind is inspect.Parameter.VAR_KEYWORD:
            options.update(value)
        else:
            options[parameter] = value
    return options


__all__ = ["Layer"]
