"""prodkit's exception hierarchy: one base error, configuration and backend errors below it.

They are public as ``prodkit.ConfigurationError`` and so on, and name themselves so (in
tracebacks, reprs and pickles): ``prodkit/__init__.py`` sets their ``__module__``.
"""

from __future__ import annotations


class ProdkitError(Exception):
    """Base class of every error prodkit raises itself."""


class ConfigurationError(ProdkitError, ValueError):
    """An option passed to a prodkit component is invalid.

    Raised from ``__init__`` so that a misconfigured service fails at start-up, never on a
    request. The message says which option to change and how.
    """


class MissingDependencyError(ProdkitError, ImportError):
    """An optional driver is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package!r} is not installed; install it with: pip install 'prodkit-asgi[{extra}]'"
        )
        self.package = package
        self.extra = extra

    def __reduce__(self) -> tuple[type[MissingDependencyError], tuple[str, str]]:
        # Rebuilt from its arguments (the default would pass the message as ``package``), so
        # it crosses process boundaries like the other errors.
        return type(self), (self.package, self.extra)


class BackendError(ProdkitError):
    """A store or backend (PostgreSQL, Redis, ...) failed or could not be reached.

    The driver's exception is chained as ``__cause__``.
    """


class BackendUnavailableError(BackendError):
    """The backend is known to be down (for instance an open circuit breaker); no call was made."""


__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "ConfigurationError",
    "MissingDependencyError",
    "ProdkitError",
]
