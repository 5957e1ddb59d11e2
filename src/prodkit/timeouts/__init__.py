"""Time bounds on slow clients: ``RequestTimeoutMiddleware`` answers 408 when a body is too slow."""

from __future__ import annotations

from prodkit.timeouts._middleware import (
    DEFAULT_BODY_TIMEOUT,
    REQUEST_TIMEOUT,
    RequestTimeoutMiddleware,
)

__all__ = ["DEFAULT_BODY_TIMEOUT", "REQUEST_TIMEOUT", "RequestTimeoutMiddleware"]
