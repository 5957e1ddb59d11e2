"""Errors as RFC 9457 problems: ``ErrorMiddleware``, ``Problem`` and ``FieldError``."""

from __future__ import annotations

from prodkit._core.problems import PROBLEM_CONTENT_TYPE, FieldError, Problem
from prodkit.errors._middleware import (
    DEPENDENCY_UNAVAILABLE,
    INTERNAL_ERROR,
    ErrorKeywords,
    ErrorMiddleware,
    ErrorOptions,
)

__all__ = [
    "DEPENDENCY_UNAVAILABLE",
    "INTERNAL_ERROR",
    "PROBLEM_CONTENT_TYPE",
    "ErrorKeywords",
    "ErrorMiddleware",
    "ErrorOptions",
    "FieldError",
    "Problem",
]
