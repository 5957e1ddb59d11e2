"""CORS: ``CORSMiddleware`` with exact and subdomain origin matching."""

from __future__ import annotations

from prodkit.cors._middleware import (
    CORS_PREFLIGHT_REJECTED,
    DEFAULT_ALLOW_HEADERS,
    DEFAULT_ALLOW_METHODS,
    DEFAULT_EXPOSE_HEADERS,
    CORSKeywords,
    CORSMiddleware,
    CORSOptions,
    OriginMatcher,
)

__all__ = [
    "CORS_PREFLIGHT_REJECTED",
    "DEFAULT_ALLOW_HEADERS",
    "DEFAULT_ALLOW_METHODS",
    "DEFAULT_EXPOSE_HEADERS",
    "CORSKeywords",
    "CORSMiddleware",
    "CORSOptions",
    "OriginMatcher",
]
