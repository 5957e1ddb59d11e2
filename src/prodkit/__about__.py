"""The installed distribution's version: the git tag it was built from (see pyproject.toml)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

#: The distribution's name on the package index (the import name is ``prodkit``).
DISTRIBUTION = "prodkit-asgi"

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # a source tree on the path without an installed distribution
    __version__ = "0.1.0.dev0"
