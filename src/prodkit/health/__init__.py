"""Health endpoints: ``/livez``, ``/readyz`` and ``/healthz`` with dependency checks."""

from __future__ import annotations

from prodkit.health._middleware import (
    CheckResult,
    HealthCheck,
    HealthKeywords,
    HealthMiddleware,
    HealthOptions,
    Readiness,
    postgres_check,
    redis_check,
)

__all__ = [
    "CheckResult",
    "HealthCheck",
    "HealthKeywords",
    "HealthMiddleware",
    "HealthOptions",
    "Readiness",
    "postgres_check",
    "redis_check",
]
