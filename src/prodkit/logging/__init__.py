"""Structured logging: ``configure_logging``, redaction, and one access line per request."""

from __future__ import annotations

from prodkit._core.redaction import (
    DEFAULT_REDACT_HEADERS,
    DEFAULT_REDACT_KEYS,
    DEFAULT_REDACT_QUERY_PARAMS,
    REDACTED,
    Redactor,
)
from prodkit.logging._access import (
    DEFAULT_LEVELS,
    AccessLogKeywords,
    AccessLogMiddleware,
    AccessLogOptions,
)
from prodkit.logging._config import LogFormat, configure_logging, get_logger

__all__ = [
    "DEFAULT_LEVELS",
    "DEFAULT_REDACT_HEADERS",
    "DEFAULT_REDACT_KEYS",
    "DEFAULT_REDACT_QUERY_PARAMS",
    "REDACTED",
    "AccessLogKeywords",
    "AccessLogMiddleware",
    "AccessLogOptions",
    "LogFormat",
    "Redactor",
    "configure_logging",
    "get_logger",
]
