"""Load shedding: ``ConcurrencyLimitMiddleware`` answers 503 beyond a number of requests in flight."""

from __future__ import annotations

from prodkit.shedding._middleware import (
    DEFAULT_EXCLUDE_PATHS,
    OVERLOADED,
    ConcurrencyLimitKeywords,
    ConcurrencyLimitMiddleware,
    ConcurrencyLimitOptions,
)

__all__ = [
    "DEFAULT_EXCLUDE_PATHS",
    "OVERLOADED",
    "ConcurrencyLimitKeywords",
    "ConcurrencyLimitMiddleware",
    "ConcurrencyLimitOptions",
]
