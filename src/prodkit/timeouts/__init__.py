"""Bounds on slow and large request bodies: ``RequestTimeoutMiddleware`` (408 and 413)."""

from __future__ import annotations

from prodkit.timeouts._middleware import (
    BODY_TOO_LARGE,
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    REQUEST_TIMEOUT,
    RequestTimeoutKeywords,
    RequestTimeoutMiddleware,
    RequestTimeoutOptions,
)

__all__ = [
    "BODY_TOO_LARGE",
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_MAX_BODY_BYTES",
    "REQUEST_TIMEOUT",
    "RequestTimeoutKeywords",
    "RequestTimeoutMiddleware",
    "RequestTimeoutOptions",
]
