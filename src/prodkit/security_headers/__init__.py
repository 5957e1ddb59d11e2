"""Security headers: ``SecurityHeadersMiddleware`` sets safe defaults the app has not set."""

from __future__ import annotations

from prodkit.security_headers._middleware import (
    DEFAULT_CSP,
    SecurityHeadersKeywords,
    SecurityHeadersMiddleware,
    SecurityHeadersOptions,
)

__all__ = [
    "DEFAULT_CSP",
    "SecurityHeadersKeywords",
    "SecurityHeadersMiddleware",
    "SecurityHeadersOptions",
]
