"""Import the app a server runs in this process (hypercorn; uvicorn and granian import their own)."""

from __future__ import annotations

import importlib
from typing import Any

from prodkit._core.exceptions import ConfigurationError


def load_app(path: str, *, factory: bool) -> Any:
    """The object ``module:attribute`` names, called first when it is a ``factory``.

    Raises :class:`~prodkit.ConfigurationError` when the module or the attribute is not there;
    whatever the module or the factory raise propagates.
    """
    module_name, _, attributes = path.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigurationError(f"cannot import {path!r}: no module {exc.name!r}") from exc
        raise
    for attribute in attributes.split("."):
        try:
            found = getattr(found, attribute)
        except AttributeError as exc:
            raise ConfigurationError(
                f"cannot import {path!r}: {module_name!r} has no attribute {attribute!r}"
            ) from exc
    return found() if factory else found


__all__ = ["load_app"]
